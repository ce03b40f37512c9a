// The notifier's settings, one field per setting, read from the environment or flags through
// common Settings (so `notifier --help` lists them all with their defaults), then validated:
// words parsed (LOG_LEVEL, UNLINKED_POLICY, ...), defaults that depend on other settings derived
// (UNLINKED_POLICY), and settings that must agree checked. Every problem is reported like a bad
// value, naming its setting.
//
//   Settings settings("notifier", argc, argv);
//   notifier::Options options = notifier::ReadOptions(settings);
//   settings.ExitIfInvalid();  // one line naming the setting, exit 2
//
// Not thread-safe; use it from main().
#ifndef CONCERT_NOTIFIER_OPTIONS_H_
#define CONCERT_NOTIFIER_OPTIONS_H_

#include <string>

#include "common/config.h"
#include "common/log.h"
#include "notifier/link_client.h"
#include "notifier/notifier.h"
#include "notifier/pacer.h"
#include "notifier/telegram_sender.h"
#include "notifier/update_poller.h"

namespace concert::notifier {

struct Options {
  // DATABASE_URL (required): the Postgres holding schema `notification`.
  std::string database_url;
  // KAFKA_*, PAYMENT_COMPLETED_TOPIC, TELEGRAM_CHAT_ID, NOTIFY_TIME_ZONE, MESSAGE_LOCALE,
  // UNLINKED_POLICY, UNCERTAIN_POLICY, MAX_PENDING, COMMIT_INTERVAL: the consumer's
  // (notifier.h).
  NotifierOptions notifier;
  // PAYMENT_COMPLETED_PARTITIONS, DLQ_PARTITIONS: partitions when the notifier creates the
  // topics.
  int topic_partitions = 3;
  // DLQ_TOPIC: where what cannot be delivered goes.
  std::string dlq_topic = "payment-notification-dlq";
  int dlq_partitions = 1;
  // TELEGRAM_API_BASE, TELEGRAM_BOT_TOKEN (empty: the log sender), TELEGRAM_CONNECT_TIMEOUT,
  // TELEGRAM_TIMEOUT, TELEGRAM_RETRIES, TELEGRAM_RETRY_BACKOFF, TELEGRAM_MAX_RETRY_AFTER,
  // TELEGRAM_PAID_BROADCAST: the payment messages' sender.
  TelegramOptions telegram;
  // NOTIFICATIONS_FILE: the log sender's output without a bot token.
  std::string notifications_file = ".local/notifications.jsonl";
  // Derived: how long a send's requests may still be on their way after its owner last knew
  // the delivery row was its own (DeliveryStore's lease): the time a check is trusted
  // (ownership_recheck_after), one whole request (TELEGRAM_TIMEOUT) and a second to spare.
  absl::Duration send_lease;
  // TELEGRAM_RATE (TELEGRAM_PAID_RATE with paid broadcasts), TELEGRAM_BURST,
  // TELEGRAM_CHAT_INTERVAL, TELEGRAM_CHAT_BURST, TELEGRAM_GROUP_INTERVAL, TELEGRAM_GROUP_BURST:
  // one budget for every message of the bot, shared by every replica (budget.h).
  PacingOptions pacing;
  // SEND_CONCURRENCY: the Pacer's workers, sends in flight at once.
  PacerOptions pacer;
  // Derived: TELEGRAM_UPDATES=poll with a bot token.
  bool poll_updates = false;
  // TELEGRAM_POLL_TIMEOUT, TELEGRAM_BOT_USERNAME; the database, the bot and its timeouts, and
  // the locale are the ones above.
  UpdatePollerOptions poller;
  // PAYMENT_SERVER_ADDRESS, INTERNAL_TOKEN, PAYMENT_SERVER_TLS_*: payment-server's
  // TelegramLinkService. INTERNAL_TOKEN is required when polling updates.
  LinkClientOptions links;
  // GRPC_ADDRESS: health. METRICS_ADDRESS: Prometheus /metrics.
  std::string grpc_address = "127.0.0.1:50054";
  std::string metrics_address = "127.0.0.1:9103";
  // LOG_LEVEL.
  log::Level log_level = log::Level::kInfo;
};

// Reads every setting (unconditionally, so --help lists them all) and validates them; problems
// are reported by settings.Validate() / ExitIfInvalid().
Options ReadOptions(Settings& settings);

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_OPTIONS_H_
