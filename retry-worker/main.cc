// retry-worker: drains the notification DLQ into retry.failed_messages, re-publishes with
// bounded attempts and backoff, parks what keeps failing, and serves the operators' admin API.
//
//   retry-worker            run until SIGTERM
//   retry-worker migrate    apply schema `retry` and exit
#include <cstdlib>
#include <iostream>

#include "common/backoff.h"
#include "common/config.h"
#include "common/kafka/cluster.h"
#include "common/log.h"
#include "common/shutdown.h"
#include "retry-worker/options.h"
#include "retry-worker/schema.h"
#include "retry-worker/worker.h"

int main(int argc, char** argv) {
  concert::InstallStopHandler();
  concert::Settings settings("retry-worker", argc, argv);
  concert::retry::Options options = concert::retry::ReadOptions(settings);
  settings.ExitIfInvalid();
  concert::log::Level level;
  if (!concert::log::ParseLevel(options.log_level, &level)) {
    std::cerr << "retry-worker: LOG_LEVEL must be debug, info, warn or error\n";
    return 2;
  }
  concert::log::Init("retry-worker", level);

  const auto& positional = settings.positional();
  if (!positional.empty() && positional[0] == "migrate") {
    absl::Status s = concert::retry::MigrateSchema(options.database_url);
    if (!s.ok()) {
      concert::log::Error("migration failed", {{"error", std::string(s.message())}});
      return 1;
    }
    return 0;
  }
  if (!positional.empty()) {
    std::cerr << "retry-worker: unknown command " << positional[0] << " (known: migrate)\n";
    return 2;
  }

  // Postgres or Kafka not there yet (e.g. starting together), or Kafka refusing us: keep
  // trying with backoff while the admin API and health (NOT_SERVING) answer.
  concert::retry::RetryWorker worker(options);
  concert::kafka::RefusalLog refusals;
  concert::Backoff backoff(absl::Seconds(1), absl::Seconds(30));
  while (true) {
    absl::Status s = worker.Start();
    if (s.ok()) {
      concert::StopRequested().WaitForNotification();
      concert::log::Info("stop requested");
      worker.Stop();
      return 0;
    }
    if (!worker.serving() || s.code() == absl::StatusCode::kInvalidArgument) {
      concert::log::Error("cannot start", {{"error", std::string(s.message())}});
      return 1;  // an address taken, or a configuration Kafka rejects: no use retrying
    }
    absl::Duration retry_in = backoff.Next();
    if (!refusals.Report(s, "starting")) {
      concert::log::Error("cannot start; retrying",
                          {{"error", std::string(s.message())},
                           {"retry_in_s", absl::ToDoubleSeconds(retry_in)}});
    }
    if (concert::StopRequested().WaitForNotificationWithTimeout(retry_in)) {
      worker.Stop();
      return 0;
    }
  }
}
