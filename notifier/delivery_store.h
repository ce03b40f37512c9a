// The `notification` schema and the delivery record that makes one message per payment out of
// Kafka's at-least-once delivery. A record per event id moves
//
//   (none) --Begin--> SENDING --MarkSent--> SENT
//                        |  \--MarkUndeliverable--> UNDELIVERABLE (no chat takes it; final)
//                        |  \--MarkFailed--> FAILED --Begin (a retry)--> SENDING
//                        |                      \--MarkDeadLettered: a redelivery of the same
//                        |                         attempt is a duplicate
//                        |  \--MarkSentUncertain--> SENT (outcome unknown, skip policy)
//                        |  \--Release--> FAILED, this send not counted (never went out)
//                        \--Begin again (found SENDING: we died mid-send, or its outcome is
//                           unknown) --> "uncertain": resend (SENDING, attempts+1) or, with
//                           the skip policy, SENT without sending.
//
// Fencing: a send is numbered by the row's `attempts` when its Begin committed SENDING, and every
// Mark* and Release names the send it concludes. It changes the row only while the row is still
// SENDING for that send and otherwise changes nothing and answers false: a worker that paused
// past its consumer session (or lost its partition) and wakes with a late result must not undo
// what the record's new owner did (Begin again -> attempts+1, then SENT). A retry of a Mark*
// whose first try committed unseen (a broken connection) finds its own outcome and answers true.
//
// Leases: a send may still have a request on its way to Telegram for a while after its owner
// last knew the row was its own, and a frozen owner wakes mid-send. So Begin and each
// StillSending set the row's `owned_until` to now + `send_lease`, and a Begin that finds the
// row SENDING for another send before that time does not take it over: kBusy, try again after
// `busy_for`. The lease must cover the owner's whole last request: the time it trusts a check
// (ownership_recheck_after) plus a request's timeout. A dead letter proves its send is over:
// the retry-worker's re-publish never waits.
//
// Begin commits SENDING *before* the send, so a crash between sending and MarkSent leaves
// evidence: the redelivered record finds SENDING and the notifier counts it as uncertain
// instead of silently sending twice (or silently dropping). A send whose outcome is unknown
// (MarkFailed with possibly_delivered) sets `uncertain` too: every possible duplicate has its
// row marked.
//
// Thread-safe (PgPool is); every call blocks on Postgres. The first Begin of an event and the
// Mark* calls are one statement each, one round trip; the first Begin and MarkSent of
// concurrent callers are batched into one statement (Batcher).
#ifndef CONCERT_NOTIFIER_DELIVERY_STORE_H_
#define CONCERT_NOTIFIER_DELIVERY_STORE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/postgres.h"
#include "notifier/batcher.h"

namespace concert::notifier {

inline constexpr char kSchema[] = "notification";

const std::vector<Migration>& Migrations();
// Migrate(url, "notification", Migrations()).
absl::Status MigrateSchema(const std::string& database_url);

// What to do with an event found SENDING when it arrives.
enum class UncertainPolicy {
  // Send again: a possible duplicate message, never a lost one (default).
  kResend,
  // Mark it SENT without sending: never a duplicate, but a lost message if the first send
  // did not reach Telegram.
  kSkip,
};
// "resend" or "skip".
bool ParseUncertainPolicy(const std::string& name, UncertainPolicy* policy);

struct BeginResult {
  enum class Action {
    kSend,       // SENDING is committed: send now, then MarkSent / MarkFailed
    kDuplicate,  // already SENT or UNDELIVERABLE, or FAILED and dead-lettered: skip
    kSkip,       // uncertain and the policy is skip: now SENT, do not send
    kBusy,       // SENDING under another send's lease: nothing changed, try after busy_for
  };
  Action action = Action::kSend;
  // Found SENDING on arrival.
  bool uncertain = false;
  // Found FAILED (a retry of an earlier failure).
  bool retry = false;
  // Send attempts including this one.
  int attempts = 1;
  // kBusy: how long the other send's lease still runs.
  absl::Duration busy_for;
};

class DeliveryStore {
 public:
  // `send_lease`: see "Leases" above; zero takes over a row found SENDING at once.
  explicit DeliveryStore(PgPool& pool, absl::Duration send_lease = absl::ZeroDuration());

  // `event_id` must be a UUID (the caller validates it). `incoming_attempt` is the attempt
  // number the record carries (1 unless the retry-worker re-published it after a dead letter):
  // a row found SENDING with fewer attempts than that is not uncertain, since the dead letter
  // proves how its last send ended (only a send known not to have been delivered is
  // dead-lettered without its FAILED mark).
  absl::StatusOr<BeginResult> Begin(const std::string& event_id, UncertainPolicy policy,
                                    int incoming_attempt = 1);
  // The Mark* calls and Release conclude send number `send` (BeginResult::attempts): true when
  // recorded, false when the row has moved on (stale: nothing changed, see "Fencing" above).
  absl::StatusOr<bool> MarkSent(const std::string& event_id, int send);
  // `possibly_delivered`: the send's outcome is unknown (sets `uncertain`).
  absl::StatusOr<bool> MarkFailed(const std::string& event_id, int send, const std::string& error,
                                  bool possibly_delivered = false);
  // The DLQ acknowledged the dead letter of this FAILED send, numbered `attempt`: until a record
  // with a higher attempt arrives (the retry-worker's), Begin takes it as a duplicate.
  absl::StatusOr<bool> MarkDeadLettered(const std::string& event_id, int send, int attempt);
  // The send's outcome is unknown and UNCERTAIN_POLICY=skip: SENT, uncertain, never resent.
  absl::StatusOr<bool> MarkSentUncertain(const std::string& event_id, int send,
                                         const std::string& error);
  // Begin was committed but nothing was sent (stopping during a 429 pause): FAILED, and the
  // send is not counted, so the next Begin resends it as an ordinary retry.
  absl::StatusOr<bool> Release(const std::string& event_id, int send, const std::string& reason);
  // Final: no retry, no DLQ. `reason` is kept in last_error.
  absl::StatusOr<bool> MarkUndeliverable(const std::string& event_id, int send,
                                         const std::string& reason);
  // Whether the row is still SENDING for send number `send`, renewing its lease when it is:
  // asked before a request goes out when the worker may have been paused or lost its partition
  // since its Begin.
  absl::StatusOr<bool> StillSending(const std::string& event_id, int send);
  // Whether the event is SENT or UNDELIVERABLE already (a record read again after a
  // rebalance): read only, batched across concurrent callers.
  absl::StatusOr<bool> Final(const std::string& event_id);
  // SELECT 1, for health.
  absl::Status Ping();

 private:
  PgPool& pool_;
  const double lease_seconds_;
  // The two writes every message makes, batched across concurrent callers.
  Batcher first_sights_;  // INSERT SENDING ... ON CONFLICT DO NOTHING: returns the inserted
  Batcher sent_;          // SENDING -> SENT, ids as "<event id>/<send>"
  Batcher finals_;        // SELECT of the events SENT or UNDELIVERABLE
};

// True for the canonical 8-4-4-4-12 hex form.
bool IsUuid(const std::string& text);

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_DELIVERY_STORE_H_
