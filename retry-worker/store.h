// Every SQL statement of the retry-worker, over schema `retry` (schema.h): recording DLQ
// records, claiming due rows for re-publishing, and the operators' List/Get/Retry/Discard.
//
// Attempt counting (the whole notifier -> DLQ -> retry-worker loop):
//   - A DLQ record says which delivery attempt N failed (retry_topic-attempts, 1 for the
//     original delivery). The row keeps the highest N seen in `attempts`.
//   - N >= limit (RETRY_MAX_ATTEMPTS, or the operator's attempt_limit after a Retry): the row is
//     parked as FAILED and never re-published by itself. Otherwise it is PENDING until
//     now + backoff(N), and the scheduler re-publishes it with attempt number N+1.
//   So with RETRY_MAX_ATTEMPTS=3 a message that always fails is delivered 3 times in total:
//   the original plus 2 re-publishes.
//   - A record with N <= the stored attempts is a redelivery of a DLQ record already stored
//     (or older than the row): it changes nothing, so a redelivered record never re-arms a
//     PROCESSED row for a second publish of the same attempt.
//   - error class "poison" (the payload cannot be parsed): retrying cannot help, so the row is
//     parked as FAILED at once, with a note saying why. An operator can still Retry it.
//   - A DISCARDED row stays DISCARDED; later failures only update attempts and the error.
//   - Operator Retry of a FAILED row: PENDING, due now, attempt_limit = attempts + 1 (exactly
//     one more delivery attempt; if it fails too the row parks again). attempts is untouched.
//
// Thread-safe (the pool is); every call blocks on Postgres.
#ifndef CONCERT_RETRY_WORKER_STORE_H_
#define CONCERT_RETRY_WORKER_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/kafka.h"
#include "common/postgres.h"
#include "retry-worker/backoff.h"

namespace concert::retry {

inline constexpr char kPending[] = "PENDING";
inline constexpr char kProcessed[] = "PROCESSED";
inline constexpr char kFailed[] = "FAILED";
inline constexpr char kDiscarded[] = "DISCARDED";
inline constexpr char kPoisonClass[] = "poison";

// What a DLQ record carries, parsed (dlq_consumer.h).
struct DlqEntry {
  std::string event_id;
  std::string original_topic;
  int32_t original_partition = -1;
  int64_t original_offset = -1;
  int64_t original_timestamp_ms = -1;
  std::string consumer_group;
  std::string key;
  std::string payload;
  kafka::Headers headers;  // the original record's headers only
  std::string error_class;
  std::string error_message;
  int attempt = 1;  // the delivery attempt that failed
};

struct FailedMessage {
  int64_t id = 0;
  std::string event_id;
  std::string original_topic;
  int32_t original_partition = -1;
  int64_t original_offset = -1;
  std::string key;
  std::string payload;
  std::map<std::string, std::string> headers;
  std::string error_class;
  std::string error_message;
  int attempts = 0;
  std::optional<int> attempt_limit;
  std::string status;
  absl::Time next_attempt_at;
  std::optional<absl::Time> last_retry_at;
  absl::Time created_at;
  absl::Time updated_at;
  std::string operator_note;
};

struct RecordOutcome {
  int64_t id = 0;
  std::string status;
  bool inserted = false;
  bool parked = false;   // became FAILED by this record (log once, count once)
  bool ignored = false;  // a redelivered or stale record: nothing changed
};

struct StatusCounts {
  std::map<std::string, int64_t> by_status;  // every status, 0 when none
  double oldest_pending_age_seconds = 0;
};

class FailedMessageStore {
 public:
  struct Options {
    int max_attempts = 3;
    BackoffPolicy backoff;
    // Source of randomness for the jitter; UniformRandom by default.
    std::function<double()> random = UniformRandom;
  };

  FailedMessageStore(PgPool& pool, Options options);

  // Stores one DLQ record: inserts or updates the row of its event (see the header comment).
  absl::StatusOr<RecordOutcome> Record(const DlqEntry& entry);

  // Publishes one claimed row; returns OK once Kafka acknowledged it. Called for all rows of a
  // batch; `acknowledged` must be filled with one status per row, in order.
  using PublishBatch = std::function<std::vector<absl::Status>(const std::vector<FailedMessage>&)>;
  struct PassResult {
    int claimed = 0;
    int published = 0;
    int failed = 0;
  };
  // In one transaction: locks up to `limit` due PENDING rows (FOR UPDATE SKIP LOCKED, so other
  // replicas skip them), calls `publish`, and marks PROCESSED only the acknowledged rows. The
  // others stay PENDING with attempts untouched: Kafka being down is not the message's fault.
  absl::StatusOr<PassResult> RepublishDue(int limit, const PublishBatch& publish);

  struct Page {
    std::vector<FailedMessage> messages;
    std::string next_page_token;
  };
  // Newest first; status "" for all. page_token is what a previous page returned.
  // INVALID_ARGUMENT for a malformed token.
  absl::StatusOr<Page> List(const std::string& status, int page_size,
                            const std::string& page_token);
  // NOT_FOUND when there is no such row.
  absl::StatusOr<FailedMessage> Get(int64_t id);
  // FAILED -> PENDING for one more attempt, recorded. NOT_FOUND / FAILED_PRECONDITION.
  absl::StatusOr<FailedMessage> OperatorRetry(int64_t id, const std::string& reason);
  // PENDING or FAILED -> DISCARDED, recorded. NOT_FOUND / FAILED_PRECONDITION.
  absl::StatusOr<FailedMessage> Discard(int64_t id, const std::string& reason);

  absl::StatusOr<StatusCounts> Counts();

 private:
  absl::Duration BackoffAfter(int failed_attempt) const;

  PgPool& pool_;
  Options options_;
};

}  // namespace concert::retry

#endif  // CONCERT_RETRY_WORKER_STORE_H_
