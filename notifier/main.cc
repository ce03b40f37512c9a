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
#include "common/config.h"
#include "common/grpc_server.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/postgres.h"
#include "common/shutdown.h"
#include "notifier/dead_letters.h"
#include "notifier/delivery_store.h"
#include "notifier/link_client.h"
#include "notifier/log_sender.h"
#include "notifier/notifier.h"
#include "notifier/telegram_sender.h"
#include "notifier/update_poller.h"

namespace {

using namespace concert;  // NOLINT: main only

struct Options {
  std::string database_url;
  notifier::NotifierOptions notifier;
  int topic_partitions = 3;
  std::string dlq_topic;
  int dlq_partitions = 1;
  notifier::TelegramOptions telegram;
  std::string time_zone;
  std::string notifications_file;
  std::string uncertain_policy;
  std::string unlinked_policy;
  std::string message_locale;
  notifier::PacingOptions pacing;
  std::string updates;
  notifier::UpdatePollerOptions poller;
  notifier::LinkClientOptions links;
  std::string grpc_address;
  std::string metrics_address;
  std::string log_level;
};

// A bad setting (code 2) is one plain line, as for every binary; a failure once running is
// logged like everything else.
[[noreturn]] void Die(const std::string& message, int code) {
  if (code == 2) {
    std::fprintf(stderr, "notifier: %s\n", message.c_str());
  } else {
    log::Error(message);
  }
  std::exit(code);
}

// Retries `step` with backoff until it succeeds or a stop is requested. A refusal by Kafka is
// logged once, not at every retry.
bool RetryUntilOk(const std::string& what, const std::function<absl::Status()>& step) {
  absl::Duration backoff = absl::Milliseconds(200);
  kafka::RefusalLog refusals;
  while (true) {
    absl::Status s = step();
    if (s.ok()) return true;
    if (!refusals.Report(s, what)) {
      log::Warn(absl::StrCat(what, " failed; retrying"), {{"error", std::string(s.message())}});
    }
    if (StopRequested().WaitForNotificationWithTimeout(backoff)) return false;
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
}

// 1 / interval; 0 (unpaced) for a zero interval.
double PerSecond(absl::Duration interval) {
  return interval > absl::ZeroDuration() ? 1 / absl::ToDoubleSeconds(interval) : 0;
}

}  // namespace

int main(int argc, char** argv) {
  InstallStopHandler();
  Settings s("notifier", argc, argv);
  Options o;
  o.database_url = s.RequiredString("DATABASE_URL", "Postgres URL (schema `notification`)");
  o.notifier.kafka = kafka::ReadCluster(s);
  o.notifier.group_id = s.String("KAFKA_GROUP_ID", "notification-group", "Consumer group");
  o.notifier.topic = s.String("PAYMENT_COMPLETED_TOPIC", "payment-completed-topic",
                              "Topic of PaymentCompleted events");
  o.topic_partitions = static_cast<int>(s.Int("PAYMENT_COMPLETED_PARTITIONS", 3, 1, 1000,
                                              "Partitions when the notifier creates the topic"));
  o.dlq_topic = s.String("DLQ_TOPIC", "payment-notification-dlq", "Dead-letter topic");
  o.dlq_partitions = static_cast<int>(
      s.Int("DLQ_PARTITIONS", 1, 1, 1000, "Partitions when the notifier creates the DLQ topic"));
  o.telegram.api_base = s.String("TELEGRAM_API_BASE", "https://api.telegram.org",
                                 "Telegram Bot API base URL (tests point it at a fake)");
  o.telegram.token = s.String("TELEGRAM_BOT_TOKEN", "",
                              "Bot token; empty: the log sender writes NOTIFICATIONS_FILE instead");
  o.notifier.operator_chat_id =
      s.String("TELEGRAM_CHAT_ID", "",
               "Operator's chat: payments of payers without a linked chat (UNLINKED_POLICY)");
  o.unlinked_policy = s.String(
      "UNLINKED_POLICY", "",
      "Payer without a linked chat: operator (TELEGRAM_CHAT_ID) or skip (recorded "
      "undeliverable); empty: operator when TELEGRAM_CHAT_ID is set or there is no bot token "
      "(the log sender takes every message), else skip");
  o.message_locale = s.String("MESSAGE_LOCALE", "ko", "Language of the bot's messages: ko or en");
  o.updates = s.String("TELEGRAM_UPDATES", "poll",
                       "The bot's updates (the link flow): poll (getUpdates, one replica at a "
                       "time) or off; needs a bot token and INTERNAL_TOKEN");
  o.poller.poll_timeout =
      s.Duration("TELEGRAM_POLL_TIMEOUT", o.poller.poll_timeout, absl::Seconds(1),
                 absl::Seconds(50), "How long one getUpdates long poll waits");
  o.poller.bot_username = s.String("TELEGRAM_BOT_USERNAME", "",
                                   "The bot's username, named by commands in groups; empty: getMe");
  o.links.address =
      s.String("PAYMENT_SERVER_ADDRESS", o.links.address,
               "payment-server's INTERNAL_GRPC_ADDRESS, where its TelegramLinkService listens");
  o.links.token = s.Secret("INTERNAL_TOKEN", kMinSharedSecretBytes,
                           "Bearer secret of payment-server's TelegramLinkService (same value)");
  o.links.tls_ca = ReadPemFileSetting(
      s, "PAYMENT_SERVER_TLS_CA_FILE",
      "PEM CA that signed payment-server's certificate; set: TLS to PAYMENT_SERVER_ADDRESS");
  o.links.tls_cert = ReadPemFileSetting(
      s, "PAYMENT_SERVER_TLS_CERT_FILE",
      "PEM client certificate for payment-server's mTLS (with PAYMENT_SERVER_TLS_KEY_FILE)");
  o.links.tls_key = ReadPemFileSetting(s, "PAYMENT_SERVER_TLS_KEY_FILE",
                                       "PEM private key of PAYMENT_SERVER_TLS_CERT_FILE");
  if (o.links.tls_cert.empty() != o.links.tls_key.empty()) {
    s.Fail(o.links.tls_cert.empty() ? "PAYMENT_SERVER_TLS_CERT_FILE"
                                    : "PAYMENT_SERVER_TLS_KEY_FILE",
           "PAYMENT_SERVER_TLS_CERT_FILE and PAYMENT_SERVER_TLS_KEY_FILE go together");
  }
  if (!o.links.tls_cert.empty() && o.links.tls_ca.empty()) {
    s.Fail("PAYMENT_SERVER_TLS_CERT_FILE", "needs PAYMENT_SERVER_TLS_CA_FILE");
  }
  // libcurl reads 0 as "its default" (300 s) for the connect timeout and "never" for the whole.
  o.telegram.connect_timeout =
      s.Duration("TELEGRAM_CONNECT_TIMEOUT", absl::Seconds(3), absl::Milliseconds(100),
                 absl::Minutes(1), "Telegram connect timeout");
  o.telegram.total_timeout =
      s.Duration("TELEGRAM_TIMEOUT", absl::Seconds(10), absl::Milliseconds(100), absl::Minutes(5),
                 "Telegram whole-request timeout");
  // The backoff doubles per retry while the record's lane waits: at most
  // 10 s * (2^10 - 1), about 3 hours, and a SIGTERM cuts it short.
  o.telegram.retries = static_cast<int>(
      s.Int("TELEGRAM_RETRIES", 3, 0, 10,
            "In-process retries after the Bot API's own 5xx or a connection that never carried "
            "the request"));
  o.telegram.retry_backoff =
      s.Duration("TELEGRAM_RETRY_BACKOFF", absl::Milliseconds(500), absl::Milliseconds(10),
                 absl::Seconds(10), "First backoff between those retries (doubles)");
  o.telegram.max_retry_after =
      s.Duration("TELEGRAM_MAX_RETRY_AFTER", absl::Seconds(30), absl::Seconds(1), absl::Hours(1),
                 "Longest 429 retry_after honoured (every send pauses that long)");
  o.notifier.concurrency = static_cast<int>(
      s.Int("SEND_CONCURRENCY", 32, 1, 1000,
            "Records worked on at once, at most one per reservation (sends in flight); about "
            "rate x answer time is enough"));
  o.notifier.max_pending = static_cast<int>(
      s.Int("MAX_PENDING", 10000, 10, 1000000,
            "Records read and unfinished before the consumer pauses its partitions (about 1 KiB "
            "each)"));
  o.telegram.paid_broadcast =
      s.Bool("TELEGRAM_PAID_BROADCAST", false,
             "Send with allow_paid_broadcast (paid per message in Stars) at TELEGRAM_PAID_RATE");
  int64_t bot_rate = s.Int("TELEGRAM_RATE", 30, 0, 1000000,
                           "Messages per second across chats; 0: unpaced (a stand-in without "
                           "limits)");
  int64_t paid_rate = s.Int("TELEGRAM_PAID_RATE", 1000, 0, 1000000,
                            "Messages per second across chats with TELEGRAM_PAID_BROADCAST");
  o.pacing.bot_rate = static_cast<double>(o.telegram.paid_broadcast ? paid_rate : bot_rate);
  o.pacing.bot_burst = static_cast<int>(
      s.Int("TELEGRAM_BURST", 5, 1, 1000, "Messages at once across chats after a quiet spell"));
  absl::Duration chat_interval =
      s.Duration("TELEGRAM_CHAT_INTERVAL", absl::Seconds(1), absl::ZeroDuration(),
                 absl::Minutes(10),
                 "Least time between messages to one private chat, on average; 0: unpaced");
  o.pacing.chat_rate = PerSecond(chat_interval);
  o.pacing.chat_burst = static_cast<int>(
      s.Int("TELEGRAM_CHAT_BURST", 2, 1, 100, "Messages at once to one private chat"));
  absl::Duration group_interval =
      s.Duration("TELEGRAM_GROUP_INTERVAL", absl::Seconds(3), absl::ZeroDuration(),
                 absl::Minutes(10),
                 "Least time between messages to one group or channel, on average (3s: "
                 "20/min); 0: unpaced");
  o.pacing.group_rate = PerSecond(group_interval);
  o.pacing.group_burst = static_cast<int>(
      s.Int("TELEGRAM_GROUP_BURST", 3, 1, 100, "Messages at once to one group or channel"));
  o.time_zone = s.String("NOTIFY_TIME_ZONE", "Asia/Seoul", "Time zone of times in the message");
  o.notifications_file = s.String("NOTIFICATIONS_FILE", ".local/notifications.jsonl",
                                  "Log sender's output (JSON lines)");
  o.uncertain_policy = s.String("UNCERTAIN_POLICY", "resend",
                                "A send whose outcome is unknown (no answer, or a crash "
                                "mid-send): resend (maybe a duplicate) or skip (maybe lost)");
  o.notifier.commit_interval =
      s.Duration("COMMIT_INTERVAL", absl::Milliseconds(200), absl::Milliseconds(10),
                 absl::Minutes(1), "How often finished offsets are committed");
  o.grpc_address = s.ListenAddress("GRPC_ADDRESS", "127.0.0.1:50054", "Health gRPC address");
  o.metrics_address = s.ListenAddress("METRICS_ADDRESS", "127.0.0.1:9103", "Prometheus /metrics");
  o.log_level = s.String("LOG_LEVEL", "info", "debug, info, warn or error");
  s.ExitIfInvalid();

  log::Level level;
  if (!log::ParseLevel(o.log_level, &level)) Die("LOG_LEVEL: want debug, info, warn or error", 2);
  if (!absl::LoadTimeZone(o.time_zone, &o.notifier.time_zone)) {
    Die(absl::StrCat("NOTIFY_TIME_ZONE: unknown time zone \"", o.time_zone, "\""), 2);
  }
  if (!notifier::ParseUncertainPolicy(o.uncertain_policy, &o.notifier.uncertain_policy)) {
    Die("UNCERTAIN_POLICY: want resend or skip", 2);
  }
  if (!notifier::ParseMessageLocale(o.message_locale, &o.notifier.locale)) {
    Die("MESSAGE_LOCALE: want ko or en", 2);
  }
  o.poller.locale = o.notifier.locale;
  if (o.unlinked_policy.empty()) {
    // Without a bot token the log sender takes every message: there is no chat to skip.
    bool operator_chat = !o.notifier.operator_chat_id.empty() || o.telegram.token.empty();
    o.unlinked_policy = operator_chat ? "operator" : "skip";
  }
  if (!notifier::ParseUnlinkedPolicy(o.unlinked_policy, &o.notifier.unlinked_policy)) {
    Die("UNLINKED_POLICY: want operator or skip", 2);
  }
  if (!o.telegram.token.empty() &&
      o.notifier.unlinked_policy == notifier::UnlinkedPolicy::kOperator &&
      o.notifier.operator_chat_id.empty()) {
    Die("TELEGRAM_CHAT_ID: required when TELEGRAM_BOT_TOKEN is set and UNLINKED_POLICY=operator",
        2);
  }
  if (o.updates != "poll" && o.updates != "off") Die("TELEGRAM_UPDATES: want poll or off", 2);
  bool poll_updates = o.updates == "poll" && !o.telegram.token.empty();
  bool migrate_only = s.positional().size() == 1 && s.positional()[0] == "migrate";
  if (poll_updates && o.links.token.empty() && !migrate_only) {
    Die("INTERNAL_TOKEN: required to confirm links (TELEGRAM_UPDATES=poll with a bot token; "
        "or set TELEGRAM_UPDATES=off)", 2);
  }
  log::Init("notifier", level);

  const std::vector<std::string>& args = s.positional();
  if (!args.empty()) {
    if (args.size() == 1 && args[0] == "migrate") {
      absl::Status m = notifier::MigrateSchema(o.database_url);
      if (!m.ok()) Die(std::string(m.message()), 1);
      log::Info("migrations applied");
      return 0;
    }
    Die(absl::StrCat("unknown subcommand \"", args[0], "\" (want: migrate)"), 2);
  }

  // Health first, NOT_SERVING until consuming, so probes see us while we wait for dependencies.
  absl::StatusOr<std::unique_ptr<grpc::Server>> grpc = StartGrpcServer(o.grpc_address, {});
  if (!grpc.ok()) Die(absl::StrCat("GRPC_ADDRESS: ", grpc.status().message()), 1);
  SetServing(**grpc, false);
  metrics::HttpServer metrics_server(metrics::Default());
  if (absl::Status m = metrics_server.Start(o.metrics_address); !m.ok()) {
    Die(absl::StrCat("METRICS_ADDRESS: ", m.message()), 1);
  }

  bool ready =
      RetryUntilOk("applying migrations", [&] { return notifier::MigrateSchema(o.database_url); }) &&
      RetryUntilOk("creating topics", [&] {
        return kafka::EnsureTopics(o.notifier.kafka,
                                   {{o.notifier.topic, o.topic_partitions},
                                    {o.dlq_topic, o.dlq_partitions}});
      });
  int code = 0;
  if (ready) {
    notifier::DeadLetters dlq({.topic = o.dlq_topic, .group_id = o.notifier.group_id}, [&] {
      return kafka::Producer::Create(
          kafka::ProducerConfig(o.notifier.kafka, "notifier-dlq"));
    });
    // Workers wait for a connection while others hold one: a few suffice, most time is HTTP.
    PgPool pool({.url = o.database_url, .size = std::min(o.notifier.concurrency, 8)});
    notifier::DeliveryStore store(pool);
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
    // One pacer per bot: payment messages and the bot's answers share Telegram's limits.
    notifier::Pacer pacer(o.pacing);
    notifier::Notifier worker(o.notifier, store, *sender, pacer, dlq, metrics::Default(),
                              links.get());
    std::unique_ptr<notifier::TelegramSender> replies;
    std::unique_ptr<notifier::UpdatePoller> poller;
    std::thread poller_thread;
    if (poll_updates) {
      o.poller.database_url = o.database_url;
      o.poller.api_base = o.telegram.api_base;
      o.poller.token = o.telegram.token;
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
    grpc::Server& server = **grpc;
    absl::Status run =
        worker.Run(StopRequested(), [&server](bool healthy) { SetServing(server, healthy); });
    if (!run.ok()) {
      log::Error("notifier stopped", {{"error", std::string(run.message())}});
      code = 1;
      // The poller ends as it would on SIGTERM.
      if (!StopRequested().HasBeenNotified()) kill(getpid(), SIGTERM);
    }
    if (poller_thread.joinable()) poller_thread.join();
  }
  SetServing(**grpc, false);
  (*grpc)->Shutdown(Deadline(absl::Seconds(5)));
  metrics_server.Stop();
  log::Info("stopped");
  return code;
}
