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
//   - A record that retrying cannot help (error class "poison", no original topic, an attempt
//     header that is no number from 1 to kMaxAttemptNumber) is parked at once, with a note
//     saying why (DlqEntry::park_reason). An operator can still Retry it.
//   - A DISCARDED row stays DISCARDED; later failures only update attempts and the error.
//   - Operator Retry of a parked row: PENDING, due now, attempt_limit = attempts + 1 (exactly
//     one more delivery attempt; if it fails too the row parks again). attempts is untouched.
//
// Parking: a row that runs out of attempts, or cannot be re-published (no original topic, an
// invalid or unknown topic, a record too large), parks as FAILED ("not delivered") unless some
// DLQ record of it said a copy may already have been delivered (possibly_delivered, sticky):
// then it parks as UNCERTAIN ("Telegram may have a copy: check the chat, then Discard or
// Retry"). A re-publish Kafka did not acknowledge for a transient reason (Kafka down) costs no
// attempt but moves the row back by the first backoff, so that a few such rows cannot be
// claimed first on every pass and starve the others.
//
// Bytes: key, payload and the original headers (names and values) are stored as bytes, exactly
// as Kafka carried them, in order with duplicates, and re-published so. The text columns
// (event_id, original_topic, consumer_group, error_class, error_message) hold DisplayText() of
// their header, which Postgres (and proto3 strings) always accept.
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
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/backoff.h"
#include "common/kafka/headers.h"
#include "common/postgres.h"

namespace concert::retry {

inline constexpr char kPending[] = "PENDING";
inline constexpr char kProcessed[] = "PROCESSED";
inline constexpr char kFailed[] = "FAILED";
inline constexpr char kUncertain[] = "UNCERTAIN";
inline constexpr char kDiscarded[] = "DISCARDED";
inline constexpr const char* kStatuses[] = {kPending, kProcessed, kFailed, kUncertain, kDiscarded};
inline constexpr char kPoisonClass[] = "poison";

// Counted by both the DLQ consumer (parked on arrival) and the scheduler (parked on re-publish).
inline constexpr char kParkedMetric[] = "retry_parked_total";
inline constexpr char kParkedMetricHelp[] =
    "Messages parked (FAILED or UNCERTAIN): out of attempts, poison, or not re-publishable";

// Highest attempt number a DLQ record may carry: far above any RETRY_MAX_ATTEMPTS (at most
// 1000) and far below where attempts + 1 overflows an int (or Postgres' int column).
inline constexpr int kMaxAttemptNumber = 1'000'000;

// `bytes` as is when it is valid UTF-8 without NUL; otherwise every NUL and every byte that is
// not part of a valid UTF-8 sequence written as \xNN (lower-case hex), the rest kept. The result
// is always valid UTF-8 without NUL: what a Postgres text column and a proto3 string accept.
std::string DisplayText(absl::string_view bytes);

// What a DLQ record carries, parsed (dlq_consumer.h). Text fields are DisplayText().
struct DlqEntry {
  std::string event_id;
  std::string original_topic;
  int32_t original_partition = -1;
  int64_t original_offset = -1;
  int64_t original_timestamp_ms = -1;
  std::string consumer_group;
  std::string key;
  std::string payload;
  kafka::Headers headers;  // the original record's headers only, as bytes
  std::string error_class;
  std::string error_message;
  // The delivery attempt that failed, 1 to kMaxAttemptNumber; kUnknownAttempt when the header
  // was not a valid number (park_reason then says so).
  int attempt = 1;
  // Not empty: retrying cannot help; park at once with this note.
  std::string park_reason;
  // The sender said a copy may already have been delivered.
  bool possibly_delivered = false;
};
inline constexpr int kUnknownAttempt = 0;

struct FailedMessage {
  int64_t id = 0;
  std::string event_id;
  std::string original_topic;
  int32_t original_partition = -1;
  int64_t original_offset = -1;
  std::string key;
  std::string payload;
  kafka::Headers headers;  // as bytes, in order, duplicates kept: what a re-publish sends
  std::string error_class;
  std::string error_message;
  int attempts = 0;
  std::optional<int> attempt_limit;
  std::string status;
  bool possibly_delivered = false;
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
  bool parked = false;   // became FAILED or UNCERTAIN by this record (log once, count once)
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

  // Publishes the claimed rows; returns one status per row, in order: OK once Kafka
  // acknowledged it, FAILED_PRECONDITION or INVALID_ARGUMENT when it can never succeed (no or
  // an invalid topic, a record too large), anything else for a failure that may pass.
  using PublishBatch = std::function<std::vector<absl::Status>(const std::vector<FailedMessage>&)>;
  struct PassResult {
    int claimed = 0;
    int published = 0;
    int parked = 0;    // could never be re-published
    int deferred = 0;  // not acknowledged for now; due again after the first backoff
  };
  // In one transaction: locks up to `limit` due PENDING rows (FOR UPDATE SKIP LOCKED, so other
  // replicas skip them), calls `publish`, marks the acknowledged rows PROCESSED, parks those that
  // can never be published (see the header comment) and moves the others back by the first
  // backoff, attempts untouched: Kafka being down is not the message's fault.
  absl::StatusOr<PassResult> RepublishDue(int limit, const PublishBatch& publish);
  // True for a publish status that says the row can never be published as it is.
  static bool IsPermanentPublishError(const absl::Status& status);

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
  // FAILED or UNCERTAIN -> PENDING for one more attempt, recorded. NOT_FOUND /
  // FAILED_PRECONDITION.
  absl::StatusOr<FailedMessage> OperatorRetry(int64_t id, const std::string& reason);
  // PENDING, FAILED or UNCERTAIN -> DISCARDED, recorded. NOT_FOUND / FAILED_PRECONDITION.
  absl::StatusOr<FailedMessage> Discard(int64_t id, const std::string& reason);

  absl::StatusOr<StatusCounts> Counts();

 private:
  absl::Duration BackoffAfter(int failed_attempt) const;

  PgPool& pool_;
  Options options_;
};

}  // namespace concert::retry

#endif  // CONCERT_RETRY_WORKER_STORE_H_
