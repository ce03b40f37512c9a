// notifier: one Telegram message per completed payment, in the payer's chat. Reads
// payment-completed-topic, keeps the delivery record in Postgres, sends failures to the DLQ
// (notifier.h); polls the bot's updates for the Telegram link flow on a thread of its own
// (update_poller.h). `notifier --help` lists every setting.
//
//   notifier            run (applies the `notification` schema's migrations first)
//   notifier migrate    apply the migrations and exit
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/backoff.h"
#include "common/config.h"
#include "common/grpc_server.h"
#include "common/kafka/admin.h"
#include "common/kafka/cluster.h"
#include "common/kafka/producer.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/postgres.h"
#include "common/shutdown.h"
#include "notifier/dead_letters.h"
#include "notifier/delivery_store.h"
#include "notifier/link_client.h"
#include "notifier/log_sender.h"
#include "notifier/notifier.h"
#include "notifier/options.h"
#include "notifier/telegram_sender.h"
#include "notifier/update_poller.h"

namespace {

using namespace concert;  // NOLINT: main only

// A failure once running, logged like everything else. (A bad setting is one plain line, by
// Settings::ExitIfInvalid.)
[[noreturn]] void Die(const std::string& message) {
  log::Error(message);
  std::exit(1);
}

// Retries `step` with backoff until it succeeds or a stop is requested. A refusal by Kafka is
// logged once, not at every retry.
bool RetryUntilOk(const std::string& what, const std::function<absl::Status()>& step) {
  Backoff backoff(absl::Milliseconds(200), absl::Seconds(5));
  kafka::RefusalLog refusals;
  while (true) {
    absl::Status s = step();
    if (s.ok()) return true;
    if (!refusals.Report(s, what)) {
      log::Warn(absl::StrCat(what, " failed; retrying"), {{"error", std::string(s.message())}});
    }
    if (!backoff.Wait(StopRequested())) return false;
  }
}

// Builds the parts and runs them until a stop; 1 when the consumer failed.
int Run(notifier::Options& o, grpc::Server& health) {
  int code = 0;
  notifier::DeadLetters dlq({.topic = o.dlq_topic, .group_id = o.notifier.group_id}, [&] {
    return kafka::Producer::Create(
        kafka::ProducerConfig(o.notifier.kafka, "notifier-dlq"));
  });
  // Workers wait for a connection while others hold one: a few suffice, most time is HTTP.
  PgPool pool({.url = o.database_url, .size = std::min(o.pacer.workers, 8)});
  notifier::DeliveryStore store(pool, o.send_lease);
  std::unique_ptr<notifier::Sender> sender;
  if (o.telegram.token.empty()) {
    sender = std::make_unique<notifier::LogSender>(o.notifications_file);
    log::Info("no TELEGRAM_BOT_TOKEN: notifications go to the log sender",
              {{"file", o.notifications_file}});
  } else {
    log::Info("sending through Telegram",
              {{"api_base", notifier::RedactToken(o.telegram.api_base, o.telegram.token)}});
    o.telegram.stop = &StopRequested();
    sender = std::make_unique<notifier::TelegramSender>(o.telegram);
  }
  std::unique_ptr<notifier::LinkClient> links;
  if (!o.links.token.empty()) {
    links = std::make_unique<notifier::LinkClient>(o.links, metrics::Default());
  }
  // One budget per bot, shared by every replica: payment messages and the bot's answers share
  // Telegram's limits. The pacer outlives the consumer, whose records wait in it.
  notifier::SharedBudget budget(pool, o.pacing);
  notifier::Pacer pacer(budget, o.pacer);
  notifier::Notifier worker(o.notifier, store, *sender, pacer, dlq, metrics::Default(),
                            links.get());
  std::unique_ptr<notifier::TelegramSender> replies;
  std::unique_ptr<notifier::UpdatePoller> poller;
  std::thread poller_thread;
  if (o.poll_updates) {
    // The bot's answers are never paid broadcasts: they are few, and free messages suffice.
    notifier::TelegramOptions reply_options = o.telegram;
    reply_options.paid_broadcast = false;
    replies = std::make_unique<notifier::TelegramSender>(reply_options);
    poller = std::make_unique<notifier::UpdatePoller>(o.poller, *links, *replies, pacer,
                                                      metrics::Default());
    // Stops with the process, not after the consumer: a consumer still finishing its sends
    // must not keep the bot's poller lock from the next replica.
    poller_thread = std::thread([&] { poller->Run(StopRequested()); });
  }
  absl::Status run =
      worker.Run(StopRequested(), [&health](bool healthy) { SetServing(health, healthy); });
  if (!run.ok()) {
    log::Error("notifier stopped", {{"error", std::string(run.message())}});
    code = 1;
    // The poller ends as it would on SIGTERM.
    if (!StopRequested().HasBeenNotified()) kill(getpid(), SIGTERM);
  }
  if (poller_thread.joinable()) poller_thread.join();
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  InstallStopHandler();
  Settings s("notifier", argc, argv);
  notifier::Options o = notifier::ReadOptions(s);
  s.ExitIfInvalid();
  log::Init("notifier", o.log_level);

  const std::vector<std::string>& args = s.positional();
  if (!args.empty()) {
    if (args.size() == 1 && args[0] == "migrate") {
      absl::Status m = notifier::MigrateSchema(o.database_url);
      if (!m.ok()) Die(std::string(m.message()));
      log::Info("migrations applied");
      return 0;
    }
    std::fprintf(stderr, "notifier: unknown subcommand \"%s\" (want: migrate)\n", args[0].c_str());
    return 2;
  }

  // Health first, NOT_SERVING until consuming, so probes see us while we wait for dependencies.
  absl::StatusOr<std::unique_ptr<grpc::Server>> grpc = StartGrpcServer(o.grpc_address, {});
  if (!grpc.ok()) Die(absl::StrCat("GRPC_ADDRESS: ", grpc.status().message()));
  SetServing(**grpc, false);
  metrics::HttpServer metrics_server(metrics::Default());
  if (absl::Status m = metrics_server.Start(o.metrics_address); !m.ok()) {
    Die(absl::StrCat("METRICS_ADDRESS: ", m.message()));
  }

  bool ready =
      RetryUntilOk("applying migrations", [&] { return notifier::MigrateSchema(o.database_url); }) &&
      RetryUntilOk("creating topics", [&] {
        return kafka::EnsureTopics(o.notifier.kafka,
                                   {{o.notifier.consumer.topic, o.topic_partitions},
                                    {o.dlq_topic, o.dlq_partitions}});
      });
  int code = ready ? Run(o, **grpc) : 0;
  SetServing(**grpc, false);
  (*grpc)->Shutdown(Deadline(absl::Seconds(5)));
  metrics_server.Stop();
  log::Info("stopped");
  return code;
}
