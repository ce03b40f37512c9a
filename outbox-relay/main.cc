// outbox-relay: reads its settings, serves health (gRPC) and metrics (HTTP), and runs the
// relay until SIGTERM. Settings live in options.{h,cc}, all logic in the relay library.
//
//   outbox-relay                          stream the outbox to Kafka (serve)
//   outbox-relay requeue --older-than=5m  stream outbox rows older than that again (operators,
//                                         after fixing why they were set aside)
#include <cstdio>
#include <cstdlib>

#include "absl/time/time.h"
#include "common/config.h"
#include "common/grpc_server.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/postgres.h"
#include "common/shutdown.h"
#include "outbox-relay/options.h"
#include "outbox-relay/outbox.h"
#include "outbox-relay/relay.h"

namespace {

int Requeue(const std::string& database_url, absl::Duration older_than) {
  if (absl::Status s = concert::relay::MigrateSchema(database_url); !s.ok()) {
    concert::log::Error("requeue failed", {{"error", std::string(s.message())}});
    return 1;
  }
  absl::StatusOr<int64_t> rows = absl::InternalError("not connected");
  try {
    pqxx::connection conn(concert::WithConnectDefaults(database_url));
    rows = concert::relay::RequeueRows(conn, {.older_than = older_than});
  } catch (const std::exception& e) {
    rows = concert::StatusFromException(e);
  }
  if (!rows.ok()) {
    concert::log::Error("requeue failed", {{"error", std::string(rows.status().message())}});
    return 1;
  }
  concert::log::Info("requeued outbox rows; the relay streams them again",
                     {{"rows", *rows}, {"older_than", absl::FormatDuration(older_than)}});
  return 0;
}

// Serves health and metrics while the relay streams, until SIGTERM.
int Serve(const concert::relay::ServiceOptions& options) {
  auto grpc = concert::StartGrpcServer(options.grpc_address, {});
  if (!grpc.ok()) {
    concert::log::Error("cannot start gRPC health",
                        {{"error", std::string(grpc.status().message())}});
    return 1;
  }
  concert::metrics::HttpServer metrics(concert::metrics::Default());
  if (absl::Status st = metrics.Start(options.metrics_address); !st.ok()) {
    concert::log::Error("cannot serve metrics", {{"error", std::string(st.message())}});
    return 1;
  }
  concert::log::Info("started", {{"grpc", options.grpc_address},
                                 {"metrics", options.metrics_address},
                                 {"slot", options.relay.slot},
                                 {"publication", options.relay.publication}});

  grpc::Server& server = **grpc;
  concert::relay::Relay relay(options.relay, concert::metrics::Default(),
                              [&server](bool serving) { concert::SetServing(server, serving); });
  relay.Run(concert::StopRequested());

  concert::SetServing(server, false);
  server.Shutdown(concert::Deadline(absl::Seconds(5)));
  metrics.Stop();
  concert::log::Info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  concert::InstallStopHandler();
  concert::Settings settings("outbox-relay", argc, argv);
  concert::relay::ServiceOptions options = concert::relay::ReadOptions(settings);
  settings.ExitIfInvalid();
  if (absl::Status valid = options.Validate(); !valid.ok()) {
    std::fprintf(stderr, "outbox-relay: %s\n", std::string(valid.message()).c_str());
    return 2;
  }
  concert::log::Init("outbox-relay", options.level);

  const std::vector<std::string>& args = settings.positional();
  std::string command = args.empty() ? "serve" : args[0];
  if (args.size() > 1 || (command != "serve" && command != "requeue")) {
    std::fprintf(stderr, "outbox-relay: unknown command '%s' (commands: serve, requeue)\n",
                 (args.size() > 1 ? args[1] : command).c_str());
    return 2;
  }
  if (command == "requeue") {
    return Requeue(options.relay.database_url, options.requeue_older_than);
  }
  return Serve(options);
}
