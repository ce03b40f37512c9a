// The notifier's consumer: reads PaymentCompleted records from payment-completed-topic in group
// notification-group, turns each into one message through a Sender, keeps the delivery record in
// Postgres (DeliveryStore), and sends what cannot be delivered to the DLQ topic (DeadLetters).
//
// Concurrency. The consumer thread only reads records and hands them to a pool of `concurrency`
// workers; it never waits for HTTP, so it stays in its group. Records with the same key (one
// reservation) form a lane and are worked on strictly one after another, in offset order;
// different lanes go in parallel. An offset is committed only below the lowest unfinished record
// of its partition (every `commit_interval`, at a revoke and at stop). Beyond `max_pending`
// records read and unfinished, the partitions are paused (polling goes on) until a quarter
// drained.
//
// Per record, in a worker:
//   headers, decode -> poison (another event type or content type, undecodable payload, no or
//                      invalid event id, missing fields): DLQ at once
//   route           -> the payer's chat (event.telegram_chat_id); none linked: the operator's
//                      chat, or with UNLINKED_POLICY=skip UNDELIVERABLE, counted, done
//   pace            -> Pacer: the bot's, the chat's or group's rate, and any 429 pause
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
//   Pacer pacer(pacing);  // shared with the bot's answers (UpdatePoller)
//   Notifier notifier(options, store, sender, pacer, dead_letters, metrics::Default(), &links);
//   notifier.Run(StopRequested(), [&](bool ok) { SetServing(*grpc, ok); });
#ifndef CONCERT_NOTIFIER_NOTIFIER_H_
#define CONCERT_NOTIFIER_NOTIFIER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <librdkafka/rdkafkacpp.h>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/kafka/cluster.h"
#include "common/metrics.h"
#include "notifier/dead_letters.h"
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
  std::string topic = "payment-completed-topic";
  std::string client_id = "notifier";
  // Zone of the times in the message text.
  absl::TimeZone time_zone = absl::UTCTimeZone();
  MessageLocale locale = MessageLocale::kKorean;
  // TELEGRAM_CHAT_ID: the operator's chat, for payers without a link under kOperator.
  std::string operator_chat_id;
  UnlinkedPolicy unlinked_policy = UnlinkedPolicy::kOperator;
  UncertainPolicy uncertain_policy = UncertainPolicy::kResend;
  // Records worked on at once (sends in flight, at most one per reservation).
  int concurrency = 32;
  // Records read and not yet finished before the partitions pause (resumed at three quarters).
  int max_pending = 10000;
  // How often finished offsets are committed (and at every rebalance and at stop). Shorter
  // means fewer redeliveries (duplicates skipped) after a crash; longer, fewer commit requests.
  absl::Duration commit_interval = absl::Milliseconds(200);
  // Bound of the backoff between retries of a record while Postgres or the DLQ is down.
  absl::Duration max_backoff = absl::Seconds(5);
  // How long a revoke waits for records being sent before letting their partitions go.
  absl::Duration revoke_timeout = absl::Seconds(20);
  // A send whose Begin (or last check) is older than this, or whose partition was revoked, asks
  // Postgres that its row is still its own before a request leaves: a process frozen past its
  // consumer session (10 s) may have lost the record to another replica meanwhile.
  absl::Duration ownership_recheck_after = absl::Seconds(3);
  // How often Postgres and Kafka are probed for health when nothing else shows their state.
  absl::Duration health_interval = absl::Seconds(5);
};

class Notifier {
 public:
  // `pacer` holds every send of the bot under Telegram's limits (the bot's other messages go
  // through it too). `links` (may be null: no INTERNAL_TOKEN) removes the link of a payer's
  // chat that Telegram refuses for good.
  Notifier(NotifierOptions options, DeliveryStore& store, Sender& sender, Pacer& pacer,
           DeadLetters& dlq, metrics::Registry& registry, LinkClient* links);
  ~Notifier();

  // Consumes until `stop` is notified, lets the workers finish the records they are on,
  // commits what is finished and leaves the group. `on_health` is called (on this thread)
  // whenever the health changes: true when consuming with Postgres and Kafka reachable. Fails
  // only when the consumer cannot be created. Call once.
  absl::Status Run(const absl::Notification& stop, std::function<void(bool)> on_health = nullptr);

 private:
  enum class Outcome { kDone, kRetry };
  class Rebalancer;
  // One partition's assignment; its records are dropped unstarted once it is revoked.
  struct Assignment {
    int32_t partition = 0;
    // Notified at revoke and at stop: pacing waits end, unstarted records are dropped.
    absl::Notification cancelled;
    int busy = 0;  // records of it a worker is on (guarded by mu_)
  };
  struct Job {
    std::unique_ptr<RdKafka::Message> message;
    std::shared_ptr<Assignment> assignment;
  };
  struct Finished {
    std::shared_ptr<Assignment> assignment;
    int64_t offset = 0;
    bool done = false;  // false: abandoned (stop or revoke), not to be committed
  };
  // The consumer thread's view of a partition.
  struct PartitionState {
    std::shared_ptr<Assignment> assignment;
    std::map<int64_t, int64_t> unfinished;  // offset -> record timestamp (ms)
    int64_t next = -1;                      // one past the highest offset read
    int64_t committed = -1;         // as Kafka confirmed it
    int64_t commit_requested = -1;  // the last offset handed to a background commit
    int64_t high_watermark = -1;  // asked of the broker while paused (nothing fetches then)
  };

  // Workers.
  void Work();
  // Process() until done, or abandoned at stop or revoke; true when done.
  bool Complete(const Job& job);
  Outcome Process(const Job& job);
  Outcome Send(const Job& job, const events::v1::PaymentCompleted& event,
               const std::string& event_id, int attempt);
  // Pacer::Acquire for `chat_id`, its waits counted by scope; false when cancelled.
  bool Pace(const std::string& chat_id, const Job& job);
  Outcome ToDlq(const RdKafka::Message& message, DeadLetter letter);
  // How a change of a delivery row ended.
  enum class Recorded {
    kYes,
    kStale,   // the row had moved on (another worker owns the record): nothing changed
    kGaveUp,  // Postgres stayed unavailable after a stop was requested
  };
  // A stale change leaves the record to its new owner: done here. Given up: tried again.
  static Outcome OutcomeOf(Recorded recorded) {
    return recorded == Recorded::kGaveUp ? Outcome::kRetry : Outcome::kDone;
  }
  // Retries `change` (a DeliveryStore Mark*/Release) with backoff until Postgres answers or
  // (after stop) a few more tries failed; a stale answer is logged and counted.
  Recorded Record(const std::function<absl::StatusOr<bool>()>& change, const std::string& what,
                  const std::string& event_id);
  // One send's claim on its delivery row (SENDING with attempts == send).
  struct Claim {
    using Clock = std::chrono::steady_clock;
    std::string event_id;
    int send = 0;
    Clock::time_point confirmed;  // when the row was last known to be ours
    bool lost = false;            // Postgres said the row moved on
  };
  // The sender's still_ours(): true at once while the claim is fresh and the partition still
  // assigned; otherwise (a pause, a long 429 wait, a revoke) asks Postgres, waiting while it is
  // away; false when the row moved on, or when stopping before Postgres answered.
  bool StillOurs(const Job& job, Claim& claim);
  // MarkUndeliverable (retried like every record of an outcome), then counts it by `reason`.
  Outcome Undeliverable(const std::string& event_id, int send, const std::string& reason,
                        const std::string& detail);
  void SetPostgresOk(bool ok);

  // Consumer thread.
  void Enqueue(std::unique_ptr<RdKafka::Message> message);
  void TakeFinished();
  void FlowControl();
  // Commits what is finished. kWait for a revoke or a stop (the next owner starts from it);
  // the periodic commit does not wait: it would hold this thread while Kafka is away.
  enum class Commit { kWait, kInBackground };
  void CommitDone(const std::vector<int32_t>* only_partitions, Commit how);
  void Revoke(const std::vector<int32_t>& partitions);
  static void Cancel(Assignment& assignment);
  void CheckHealth(bool force);
  void ReportHealth();
  void UpdateGauges();

  NotifierOptions options_;
  DeliveryStore& store_;
  Sender& sender_;
  DeadLetters& dlq_;
  LinkClient* links_;
  Pacer& pacer_;
  const absl::Notification* stop_ = nullptr;

  metrics::Registry& registry_;
  metrics::Counter& sent_;
  metrics::Counter& duplicates_;
  metrics::Counter& uncertain_;
  metrics::Counter& stale_sends_;     // not sent: the record was taken over meanwhile
  metrics::Counter& stale_outcomes_;  // an outcome not recorded: the record was taken over
  metrics::Histogram& send_seconds_;
  metrics::Gauge& in_flight_gauge_;
  metrics::Gauge& pending_gauge_;
  metrics::Gauge& lag_gauge_;
  metrics::Gauge& oldest_age_gauge_;
  metrics::Gauge& postgres_up_gauge_;
  metrics::Gauge& kafka_up_gauge_;
  // By scope and by chat kind, looked up once: they count on the hot path.
  metrics::Counter& pacing_wait_bot_;
  metrics::Counter& pacing_wait_chat_;
  metrics::Counter& pacing_wait_group_;
  metrics::Counter& pacing_wait_flood_;
  metrics::Counter& rate_limited_private_;
  metrics::Counter& rate_limited_group_;

  // Shared between the consumer thread and the workers.
  std::mutex mu_;
  std::condition_variable work_cv_;  // a lane became ready, or stopping
  std::condition_variable idle_cv_;  // a worker finished a record
  std::unordered_map<std::string, std::deque<Job>> lanes_;  // key -> its records, in order
  std::deque<std::string> ready_;  // lanes whose first record no worker is on yet
  std::vector<Finished> finished_;
  int pending_ = 0;    // records in lanes
  int in_flight_ = 0;  // records a worker is on
  bool stopping_ = false;
  std::vector<std::thread> workers_;
  std::atomic<bool> postgres_ok_{true};

  // Consumer thread only.
  std::unique_ptr<RdKafka::KafkaConsumer> consumer_;
  std::unique_ptr<Rebalancer> rebalancer_;
  std::map<int32_t, PartitionState> partitions_;
  bool paused_ = false;
  absl::Time last_commit_ = absl::InfinitePast();
  absl::Time last_health_check_ = absl::InfinitePast();
  absl::Time last_gauges_ = absl::InfinitePast();
  absl::Time last_watermark_query_ = absl::InfinitePast();
  bool kafka_ok_ = false;
  int reported_health_ = -1;
  std::function<void(bool)> on_health_;
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_NOTIFIER_H_
