// The notifier's consumer loop: reads PaymentCompleted records from payment-completed-topic in
// group notification-group, turns each into one message through a Sender, keeps the delivery
// record in Postgres (DeliveryStore), and sends what cannot be delivered to the DLQ topic.
//
// Per record, in partition order:
//   decode          -> poison (undecodable payload, missing or invalid event id): DLQ at once
//   Begin           -> SENT or UNDELIVERABLE already: duplicate, skipped and counted
//                      SENDING found: uncertain, counted, UNCERTAIN_POLICY decides
//   route           -> the payer's chat (event.telegram_chat_id); none linked: the operator's
//                      chat, or with UNLINKED_POLICY=skip MarkUndeliverable, counted, done
//   send            -> ok: MarkSent;  the payer's chat blocked the bot or is gone (403, 400
//                      "chat not found"): MarkUndeliverable, UnlinkChat, counted, done (no DLQ:
//                      retrying cannot help);  other failures: MarkFailed, then DLQ (error
//                      class, attempt = the delivery record's send count, possibly-delivered
//                      when uncertain or timed out)
// An offset is committed only after its record's outcome is durable (SENT in Postgres, or the
// DLQ acknowledged the record); commits are batched every commit_interval and made for the
// partitions being revoked inside the (eager) rebalance callback. When Postgres or the DLQ is
// unavailable the record is retried with backoff, never skipped: the consumer seeks back to it,
// so polling (and group membership) goes on meanwhile.
//
//   Notifier notifier(options, store, sender, dlq_producer, metrics::Default(), &links);
//   notifier.Run(StopRequested(), [&](bool ok) { SetServing(*grpc, ok); });
//
// Run() is single-threaded (librdkafka callbacks arrive on its thread); not thread-safe itself.
#ifndef CONCERT_NOTIFIER_NOTIFIER_H_
#define CONCERT_NOTIFIER_NOTIFIER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include <librdkafka/rdkafkacpp.h>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/kafka.h"
#include "common/metrics.h"
#include "notifier/delivery_store.h"
#include "notifier/link_client.h"
#include "notifier/message.h"
#include "notifier/sender.h"

namespace concert::notifier {

// Where a payment of a payer without a linked Telegram chat is announced (UNLINKED_POLICY).
enum class UnlinkedPolicy {
  kOperator,  // the operator's chat (TELEGRAM_CHAT_ID), as before per-payer chats existed
  kSkip,      // nowhere: recorded UNDELIVERABLE and counted, never retried
};
// "operator" or "skip".
bool ParseUnlinkedPolicy(const std::string& name, UnlinkedPolicy* policy);

struct NotifierOptions {
  std::string bootstrap_servers = "127.0.0.1:9092";
  std::string group_id = "notification-group";
  std::string topic = "payment-completed-topic";
  std::string dlq_topic = "payment-notification-dlq";
  std::string client_id = "notifier";
  // Zone of the times in the message text.
  absl::TimeZone time_zone = absl::UTCTimeZone();
  MessageLocale locale = MessageLocale::kKorean;
  // TELEGRAM_CHAT_ID: the operator's chat, for payers without a link under kOperator.
  std::string operator_chat_id;
  UnlinkedPolicy unlinked_policy = UnlinkedPolicy::kOperator;
  UncertainPolicy uncertain_policy = UncertainPolicy::kResend;
  // How often finished offsets are committed (and at every rebalance and at stop). Shorter
  // means fewer redeliveries (duplicates skipped) after a crash; longer, fewer commit requests.
  absl::Duration commit_interval = absl::Milliseconds(200);
  // Wait for one DLQ acknowledgement before trying again.
  absl::Duration dlq_timeout = absl::Seconds(10);
  // Bound of the backoff between retries of a record while Postgres or the DLQ is down.
  absl::Duration max_backoff = absl::Seconds(5);
  // How often Postgres and Kafka are probed for health when nothing else shows their state.
  absl::Duration health_interval = absl::Seconds(5);
};

class Notifier {
 public:
  // `links` (may be null: no INTERNAL_TOKEN) removes the link of a payer's chat that Telegram
  // refuses for good.
  Notifier(NotifierOptions options, DeliveryStore& store, Sender& sender, kafka::Producer& dlq,
           metrics::Registry& registry, LinkClient* links);
  ~Notifier();

  // Consumes until `stop` is notified, then commits what is done and leaves the group.
  // `on_health` is called (on this thread) whenever the health changes: true when consuming
  // with Postgres and Kafka reachable. Fails only when the consumer cannot be created.
  absl::Status Run(const absl::Notification& stop, std::function<void(bool)> on_health = nullptr);

 private:
  enum class Outcome { kDone, kRetry };
  class Rebalancer;

  Outcome Process(const RdKafka::Message& message, const absl::Notification& stop);
  // `possibly_delivered` adds the dead-letter header saying a copy may already be in the chat.
  Outcome ToDlq(const RdKafka::Message& message, const std::string& event_id,
                const std::string& error_class, const std::string& error, int attempt,
                bool possibly_delivered, const absl::Notification& stop);
  // Retries `op` with backoff until it succeeds or (after stop) a few more tries failed.
  bool Persist(const std::function<absl::Status()>& op, const std::string& what,
               const std::string& event_id, const absl::Notification& stop);
  // MarkUndeliverable (retried like every record of an outcome), then counts it by `reason`.
  Outcome Undeliverable(const std::string& event_id, const std::string& reason,
                        const std::string& detail, const absl::Notification& stop);
  void CommitDone(const std::vector<int32_t>* only_partitions);
  void CheckHealth(bool force);
  void ReportHealth();

  NotifierOptions options_;
  DeliveryStore& store_;
  Sender& sender_;
  kafka::Producer& dlq_;
  LinkClient* links_;

  metrics::Counter& sent_;
  metrics::Counter& duplicates_;
  metrics::Counter& uncertain_;
  metrics::Registry& registry_;
  metrics::Histogram& send_seconds_;

  std::unique_ptr<RdKafka::KafkaConsumer> consumer_;
  std::unique_ptr<Rebalancer> rebalancer_;
  // partition -> next offset to commit (one past the last finished record), and what Kafka has.
  std::map<int32_t, int64_t> done_;
  std::map<int32_t, int64_t> committed_;
  absl::Time last_commit_ = absl::InfinitePast();
  absl::Time last_health_check_ = absl::InfinitePast();

  bool postgres_ok_ = true;
  bool kafka_ok_ = false;
  bool dlq_ok_ = true;
  int reported_health_ = -1;
  std::function<void(bool)> on_health_;
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_NOTIFIER_H_
