// Delivery: one send's claim on its delivery row, and the one place that drives the state
// machine of DeliveryStore (notifier/delivery_store.h). Deliveries::Begin claims the event
// (SENDING, numbered by the row's attempts); the Delivery it returns concludes that send and no
// other (Mark*, Release, each retried with backoff while Postgres is away), and answers
// StillOurs() before a request leaves.
//
//   ASSIGN_OR_RETURN(Delivery d,
//                    deliveries.Begin(event_id, attempt, assignment.cancelled(), stop));
//   if (d.begin().action != BeginResult::Action::kSend) return;  // duplicate, or skipped
//   notification.still_ours = [&] { return d.StillOurs(); };
//   SendResult r = sender.Send(notification);
//   Recorded recorded = r.ok() ? d.MarkSent() : d.MarkFailed(r.message, r.possibly_delivered);
//
// Fencing (unchanged from DeliveryStore's contract): every outcome names its send; one the row
// has moved past is stale, changes nothing and is counted (notifier_stale_total{stage=
// "outcome"}). StillOurs() answers at once while the claim is younger than
// `ownership_recheck_after` and the partition assigned; otherwise it asks Postgres.
//
// Deliveries is thread-safe; a Delivery belongs to the worker handling its record.
#ifndef CONCERT_NOTIFIER_DELIVERY_H_
#define CONCERT_NOTIFIER_DELIVERY_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "notifier/delivery_store.h"

namespace concert::notifier {

// How a change of a delivery row ended.
enum class Recorded {
  kYes,
  kStale,   // the row had moved on (another worker owns the record): nothing changed
  kGaveUp,  // Postgres stayed unavailable after a stop was requested
};

struct DeliveryOptions {
  UncertainPolicy uncertain_policy = UncertainPolicy::kResend;
  // Bound of the backoff between tries while Postgres is down.
  absl::Duration max_backoff = absl::Seconds(5);
  // A claim older than this (or of a revoked partition) asks Postgres before a request leaves.
  absl::Duration ownership_recheck_after = absl::Seconds(3);
};

class Deliveries;

class Delivery {
 public:
  const std::string& event_id() const { return event_id_; }
  const BeginResult& begin() const { return begin_; }
  // The send this claim concludes (BeginResult::attempts).
  int send() const { return begin_.attempts; }
  // True once Postgres said the row moved on to another worker's send.
  bool lost() const { return lost_; }

  // The sender's still_ours(): true at once while the claim is fresh and the partition still
  // assigned; otherwise asks Postgres, waiting while it is away; false when the row moved on,
  // or when stopping before Postgres answered (the row then stays SENDING for the next Begin).
  bool StillOurs();

  // DeliveryStore's transitions of this send, each retried with backoff until Postgres answers
  // or (after stop) a few more tries failed; a stale answer is logged and counted.
  Recorded MarkSent();
  Recorded MarkSentUncertain(const std::string& error);
  Recorded MarkFailed(const std::string& error, bool possibly_delivered);
  Recorded MarkDeadLettered(int attempt);
  Recorded MarkUndeliverable(const std::string& reason);
  Recorded Release(const std::string& reason);

 private:
  friend class Deliveries;
  using Clock = std::chrono::steady_clock;
  Delivery(Deliveries& deliveries, std::string event_id, BeginResult begin,
           const absl::Notification& cancelled, const absl::Notification& stop);
  Recorded Record(const std::function<absl::StatusOr<bool>()>& change, const char* what);

  Deliveries* deliveries_;
  std::string event_id_;
  BeginResult begin_;
  const absl::Notification* cancelled_;  // the partition's assignment
  const absl::Notification* stop_;
  Clock::time_point confirmed_;  // when the row was last known to be ours
  bool lost_ = false;
};

class Deliveries {
 public:
  Deliveries(DeliveryStore& store, DeliveryOptions options, metrics::Registry& registry);

  // Claims `event_id` (DeliveryStore::Begin), first waiting out another send's lease on the
  // row (kBusy). `cancelled`: the record's partition was revoked (or stopping); `stop`: the
  // process stops. Both must outlive the Delivery. An error is Postgres's (logged), or
  // `cancelled` during that wait: the record is to be tried again.
  absl::StatusOr<Delivery> Begin(const std::string& event_id, int incoming_attempt,
                                 const absl::Notification& cancelled,
                                 const absl::Notification& stop);
  // DeliveryStore::Final: already SENT or UNDELIVERABLE (read only).
  absl::StatusOr<bool> Final(const std::string& event_id) { return store_.Final(event_id); }
  // Asks Postgres now (for health).
  void Probe();
  // Whether Postgres answered the last call (notifier_postgres_up).
  bool postgres_ok() const { return postgres_ok_.load(); }

 private:
  friend class Delivery;
  void SetPostgresOk(bool ok);

  DeliveryStore& store_;
  DeliveryOptions options_;
  metrics::Counter& stale_outcomes_;
  metrics::Gauge& postgres_up_;
  std::atomic<bool> postgres_ok_{true};
};

// notifier_stale_total{stage}: work dropped because its record was taken over.
metrics::Counter& StaleCount(metrics::Registry& registry, const char* stage);

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_DELIVERY_H_
