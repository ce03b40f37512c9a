#include "notifier/options.h"

#include "absl/strings/str_cat.h"
#include "common/grpc_server.h"
#include "common/kafka/cluster.h"

namespace concert::notifier {
namespace {

// Settings read as words, parsed by Validate.
struct Words {
  std::string time_zone, uncertain_policy, unlinked_policy, message_locale, updates, log_level;
  bool migrate_only = false;
};

// 1 / interval; 0 (unpaced) for a zero interval.
double PerSecond(absl::Duration interval) {
  return interval > absl::ZeroDuration() ? 1 / absl::ToDoubleSeconds(interval) : 0;
}

// Parses the words, derives what depends on other settings and checks what must agree.
void Validate(Settings& s, const Words& w, Options& o) {
  if (!log::ParseLevel(w.log_level, &o.log_level)) {
    s.Fail("LOG_LEVEL", "want debug, info, warn or error");
  }
  if (!absl::LoadTimeZone(w.time_zone, &o.notifier.time_zone)) {
    s.Fail("NOTIFY_TIME_ZONE", absl::StrCat("unknown time zone \"", w.time_zone, "\""));
  }
  if (!ParseUncertainPolicy(w.uncertain_policy, &o.notifier.uncertain_policy)) {
    s.Fail("UNCERTAIN_POLICY", "want resend or skip");
  }
  if (!ParseMessageLocale(w.message_locale, &o.notifier.locale)) {
    s.Fail("MESSAGE_LOCALE", "want ko or en");
  }
  std::string unlinked = w.unlinked_policy;
  if (unlinked.empty()) {
    // Without a bot token the log sender takes every message: there is no chat to skip.
    bool operator_chat = !o.notifier.operator_chat_id.empty() || o.telegram.token.empty();
    unlinked = operator_chat ? "operator" : "skip";
  }
  if (!ParseUnlinkedPolicy(unlinked, &o.notifier.unlinked_policy)) {
    s.Fail("UNLINKED_POLICY", "want operator or skip");
  } else if (!o.telegram.token.empty() &&
             o.notifier.unlinked_policy == UnlinkedPolicy::kOperator &&
             o.notifier.operator_chat_id.empty()) {
    s.Fail("TELEGRAM_CHAT_ID",
           "required when TELEGRAM_BOT_TOKEN is set and UNLINKED_POLICY=operator");
  }
  if (w.updates != "poll" && w.updates != "off") s.Fail("TELEGRAM_UPDATES", "want poll or off");
  o.poll_updates = w.updates == "poll" && !o.telegram.token.empty();
  if (o.poll_updates && o.links.token.empty() && !w.migrate_only) {
    s.Fail("INTERNAL_TOKEN",
           "required to confirm links (TELEGRAM_UPDATES=poll with a bot token; or set "
           "TELEGRAM_UPDATES=off)");
  }
  if (o.links.tls_cert.empty() != o.links.tls_key.empty()) {
    s.Fail(o.links.tls_cert.empty() ? "PAYMENT_SERVER_TLS_CERT_FILE"
                                    : "PAYMENT_SERVER_TLS_KEY_FILE",
           "PAYMENT_SERVER_TLS_CERT_FILE and PAYMENT_SERVER_TLS_KEY_FILE go together");
  }
  if (!o.links.tls_cert.empty() && o.links.tls_ca.empty()) {
    s.Fail("PAYMENT_SERVER_TLS_CERT_FILE", "needs PAYMENT_SERVER_TLS_CA_FILE");
  }
  o.send_lease =
      o.notifier.ownership_recheck_after + o.telegram.total_timeout + absl::Seconds(1);
  // The bot's poller talks to the same bot, with the same timeouts, in the same language.
  o.poller.database_url = o.database_url;
  o.poller.api_base = o.telegram.api_base;
  o.poller.token = o.telegram.token;
  o.poller.connect_timeout = o.telegram.connect_timeout;
  o.poller.timeout = o.telegram.total_timeout;
  o.poller.locale = o.notifier.locale;
}

}  // namespace

Options ReadOptions(Settings& s) {
  Options o;
  Words w;
  w.migrate_only = s.positional().size() == 1 && s.positional()[0] == "migrate";
  o.database_url = s.RequiredString("DATABASE_URL", "Postgres URL (schema `notification`)");
  o.notifier.kafka = kafka::ReadCluster(s);
  o.notifier.group_id = s.String("KAFKA_GROUP_ID", "notification-group", "Consumer group");
  o.notifier.consumer.topic = s.String("PAYMENT_COMPLETED_TOPIC", "payment-completed-topic",
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
  w.unlinked_policy = s.String(
      "UNLINKED_POLICY", "",
      "Payer without a linked chat: operator (TELEGRAM_CHAT_ID) or skip (recorded "
      "undeliverable); empty: operator when TELEGRAM_CHAT_ID is set or there is no bot token "
      "(the log sender takes every message), else skip");
  w.message_locale = s.String("MESSAGE_LOCALE", "ko", "Language of the bot's messages: ko or en");
  w.updates = s.String("TELEGRAM_UPDATES", "poll",
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
  o.pacer.workers = static_cast<int>(
      s.Int("SEND_CONCURRENCY", 32, 1, 1000,
            "Sends in flight at once; about the bot's rate x Telegram's answer time is enough "
            "(records waiting for their chat's slot hold none)"));
  o.notifier.consumer.max_pending = static_cast<int>(
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
  w.time_zone = s.String("NOTIFY_TIME_ZONE", "Asia/Seoul", "Time zone of times in the message");
  o.notifications_file = s.String("NOTIFICATIONS_FILE", o.notifications_file,
                                  "Log sender's output (JSON lines)");
  w.uncertain_policy = s.String("UNCERTAIN_POLICY", "resend",
                                "A send whose outcome is unknown (no answer, or a crash "
                                "mid-send): resend (maybe a duplicate) or skip (maybe lost)");
  o.notifier.consumer.commit_interval =
      s.Duration("COMMIT_INTERVAL", absl::Milliseconds(200), absl::Milliseconds(10),
                 absl::Minutes(1), "How often finished offsets are committed");
  o.grpc_address = s.ListenAddress("GRPC_ADDRESS", o.grpc_address, "Health gRPC address");
  o.metrics_address = s.ListenAddress("METRICS_ADDRESS", o.metrics_address, "Prometheus /metrics");
  w.log_level = s.String("LOG_LEVEL", "info", "debug, info, warn or error");
  Validate(s, w, o);
  return o;
}

}  // namespace concert::notifier
