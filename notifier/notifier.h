// The notifier's consumer: reads PaymentCompleted records from payment-completed-topic in group
// notification-group, turns each into one message through a Sender, keeps the delivery record in
// Postgres (DeliveryStore), and sends what cannot be delivered to the DLQ topic (DeadLetters).
//
// Concurrency: a KeyedConsumer (common/kafka/consumer.h). Its thread only reads records and
// hands them to a few workers that decode and route them; it never waits for HTTP, so it stays
// in its group. Records with the same key (one reservation) are worked on strictly one after
// another, in offset order; different reservations go in parallel. A routed record waits for
// its chat's and the bot's slots in the Pacer (notifier/pacer.h), in its chat's queue and on no
// thread, and is sent on one of the Pacer's SEND_CONCURRENCY workers. An offset is committed
// only below the lowest unfinished record of its partition (every `consumer.commit_interval`, at
// a revoke and at stop). Beyond `consumer.max_pending` records read and unfinished (waiting in
// the Pacer included), the partitions are paused (polling goes on) until a quarter drained. The
// delivery row of each send is one Delivery's (notifier/delivery.h).
//
// Per record:
//   headers, decode -> poison (another event type or content type, undecodable payload, no or
//                      invalid event id, missing fields): DLQ at once
//   route           -> the payer's chat (event.telegram_chat_id); none linked: the operator's
//                      chat, or with UNLINKED_POLICY=skip UNDELIVERABLE, counted, done
//   already final?  -> SENT or UNDELIVERABLE (a record read again after a rebalance): duplicate,
//                      skipped and counted before it spends a slot (one batched read)
//   pace            -> Pacer: the chat's or group's slot and the bot's, from the budget every
//                      replica shares (notifier/budget.h), and any 429 pause
//   Begin           -> SENT or UNDELIVERABLE already: duplicate, skipped and counted
//                      SENDING found: uncertain, counted, UNCERTAIN_POLICY decides
//   send            -> ok: MarkSent
//                      429: every send pauses for retry_after, then this one goes again (not a
//                      failed attempt, nothing to the DLQ)
//                      the payer's chat blocked the bot or is gone (403, 400 "chat not found"):
//                      UNDELIVERABLE, the link removed, counted, done (no DLQ)
//                      outcome unknown (timeout, connection broken after the request went out):
//                      uncertain, counted; UNCERTAIN_POLICY=skip: SENT, never resent; resend:
//                      FAILED and DLQ with kafka_dlt-possibly-delivered
//                      other failures: FAILED, then DLQ (error class, attempt = the delivery
//                      record's send count)
// Fencing: a send is its Begin's (the row SENDING with that attempt number). Right before each
// request leaves, a send whose claim is older than `ownership_recheck_after` (a freeze, a long
// 429 pause) or whose partition was revoked asks Postgres that the row is still its own; every
// outcome is written only onto its own send. A worker frozen past its consumer session wakes
// to find the record taken over: it sends nothing and records nothing (notifier_stale_total).
// When Postgres or the DLQ is unavailable the record is retried with backoff in its lane, never
// skipped. A known outcome is written before the record counts as finished; at stop, a send
// known to have failed goes to the DLQ even when its FAILED mark could not be written (the dead
// letter's attempt number tells the next Begin it was not delivered).
//
//   SharedBudget budget(pool, pacing);
//   Pacer pacer(budget, {.workers = 32});  // shared with the bot's answers (UpdatePoller)
//   Notifier notifier(options, store, sender, pacer, dead_letters, metrics::Default(), &links);
//   notifier.Run(StopRequested(), [&](bool ok) { SetServing(*grpc, ok); });
#ifndef CONCERT_NOTIFIER_NOTIFIER_H_
#define CONCERT_NOTIFIER_NOTIFIER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <librdkafka/rdkafkacpp.h>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/kafka/cluster.h"
#include "common/kafka/consumer.h"
#include "common/metrics.h"
#include "concert/events/v1/payment_events.pb.h"
#include "notifier/dead_letters.h"
#include "notifier/delivery.h"
#include "notifier/delivery_store.h"
#include "notifier/link_client.h"
#include "notifier/message.h"
#include "notifier/pacer.h"
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
  kafka::Cluster kafka;
  std::string group_id = "notification-group";
  std::string client_id = "notifier";
  // Zone of the times in the message text.
  absl::TimeZone time_zone = absl::UTCTimeZone();
  MessageLocale locale = MessageLocale::kKorean;
  // TELEGRAM_CHAT_ID: the operator's chat, for payers without a link under kOperator.
  std::string operator_chat_id;
  UnlinkedPolicy unlinked_policy = UnlinkedPolicy::kOperator;
  UncertainPolicy uncertain_policy = UncertainPolicy::kResend;
  // How the records are read: their order per reservation, how many are decoded and routed at
  // once (sends in flight are the Pacer's), pausing, commits, revokes (`config` is filled from
  // `kafka`, `group_id` and `client_id`).
  kafka::KeyedConsumerOptions consumer{.topic = "payment-completed-topic",
                                       .concurrency = 4,
                                       .metrics_prefix = "notifier"};
  // Bound of the backoff between retries of a record while Postgres or the DLQ is down.
  absl::Duration max_backoff = absl::Seconds(5);
  // A send whose Begin (or last check) is older than this, or whose partition was revoked, asks
  // Postgres that its row is still its own before a request leaves: a process frozen past its
  // consumer session (20 s) may have lost the record to another replica meanwhile.
  absl::Duration ownership_recheck_after = absl::Seconds(3);
};

// The handler of KeyedConsumer (common/kafka/consumer.h) for payment-completed-topic: decode,
// route, pace, send, record. The consumer keeps each reservation's records in order and their
// offsets; the delivery row of each send is Delivery's (notifier/delivery.h).
class Notifier : private kafka::RecordHandler {
 public:
  // `pacer` holds every send of the bot under Telegram's limits (the bot's other messages go
  // through it too). `links` (may be null: no INTERNAL_TOKEN) removes the link of a payer's
  // chat that Telegram refuses for good.
  Notifier(NotifierOptions options, DeliveryStore& store, Sender& sender, Pacer& pacer,
           DeadLetters& dlq, metrics::Registry& registry, LinkClient* links);
  ~Notifier() override;

  // Consumes until `stop` is notified, lets the workers finish the records they are on,
  // commits what is finished and leaves the group. `on_health` is called (on this thread)
  // whenever the health changes: true when consuming with Postgres and Kafka reachable. Fails
  // only when the consumer cannot be created. Call once.
  absl::Status Run(const absl::Notification& stop, std::function<void(bool)> on_health = nullptr);

 private:
  enum class Outcome {
    kDone,
    kRetry,
    kPace,  // decoded and routed: to wait for its slots in the Pacer, then Send()
  };
  struct Record;
  // Where a decoded record goes.
  struct Routed {
    events::v1::PaymentCompleted event;
    int attempt = 1;         // the record's retry_topic-attempts
    int64_t payer_chat = 0;  // the payer's linked chat; 0: none
    std::string chat_id;     // the payer's, or the operator's
    bool unlinked_skip = false;  // no chat: UNDELIVERABLE (UNLINKED_POLICY=skip)
  };
  // A stale change leaves the record to its new owner: done here. Given up: tried again.
  static Outcome OutcomeOf(Recorded recorded) {
    return recorded == Recorded::kGaveUp ? Outcome::kRetry : Outcome::kDone;
  }

  // kafka::RecordHandler: Start().
  void Handle(const RdKafka::Message& message, const kafka::Assignment& assignment,
              kafka::Completion done) override;
  bool Healthy(bool probe, nlohmann::json& details) override;

  // Process(), then the Pacer runs Send() once the chat's and the bot's slots are free; Finish().
  void Start(std::shared_ptr<Record> record);
  // Done: completes the record. Retry (Postgres or the DLQ down): Start() again after a
  // backoff, or abandoned when its partition goes first.
  void Finish(std::shared_ptr<Record> record, Outcome outcome);
  // Headers, decode, poison -> DLQ; route; an unlinked payer under UNLINKED_POLICY=skip is
  // recorded at once (Send), the others are kPace.
  Outcome Process(Record& record, Routed* routed);
  // Begin, then Deliver().
  Outcome Send(Record& record, const Routed& routed);
  // The request (again after each 429) and its outcome, onto `delivery`'s row. `payer_chat`:
  // the payer's linked chat, 0 for the operator's.
  Outcome Deliver(const RdKafka::Message& message, const kafka::Assignment& assignment,
                  Delivery& delivery, Notification& notification, int64_t payer_chat,
                  int attempt);
  // A failed send: FAILED (or SENT uncertain under UNCERTAIN_POLICY=skip), then the DLQ.
  Outcome Fail(const RdKafka::Message& message, Delivery& delivery, const SendResult& result,
               int attempt);
  // After a 429, on the worker that holds the send: waits for fresh slots; false when
  // cancelled.
  bool Pace(const std::string& chat_id, const kafka::Assignment& assignment);
  // notifier_pacing_wait_seconds_total by scope.
  void CountWaits(const std::string& chat_id, const Pacer::Waits& waits);
  Outcome ToDlq(const RdKafka::Message& message, DeadLetter letter);
  // MarkUndeliverable, then counts it by `reason`.
  Outcome Undeliverable(Delivery& delivery, const std::string& reason, const std::string& detail);

  NotifierOptions options_;
  Deliveries deliveries_;
  Sender& sender_;
  DeadLetters& dlq_;
  LinkClient* links_;
  Pacer& pacer_;
  const absl::Notification* stop_ = nullptr;

  metrics::Registry& registry_;
  kafka::ConsumerGauges consumer_gauges_;  // registered at 0 before Kafka is reached
  metrics::Counter& sent_;
  metrics::Counter& duplicates_;
  metrics::Counter& uncertain_;
  metrics::Counter& stale_sends_;  // not sent: the record was taken over meanwhile
  metrics::Histogram& send_seconds_;
  // By scope and by chat kind, looked up once: they count on the hot path.
  metrics::Counter& pacing_wait_bot_;
  metrics::Counter& pacing_wait_chat_;
  metrics::Counter& pacing_wait_group_;
  metrics::Counter& pacing_wait_flood_;
  metrics::Counter& rate_limited_private_;
  metrics::Counter& rate_limited_group_;
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_NOTIFIER_H_
