#include "retry-worker/store.h"

#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/paging.h"
#include "common/status.h"

namespace concert::retry {
namespace {

constexpr char kColumns[] = R"sql(
  id, event_id, original_topic, original_partition, original_offset, key, payload,
  headers_raw, error_class, error_message, attempts, attempt_limit, status,
  (extract(epoch FROM next_attempt_at) * 1000000)::bigint,
  (extract(epoch FROM last_retry_at) * 1000000)::bigint,
  (extract(epoch FROM created_at) * 1000000)::bigint,
  (extract(epoch FROM updated_at) * 1000000)::bigint,
  operator_note, possibly_delivered)sql";

// Length of a valid UTF-8 sequence (no overlong forms, surrogates or code points past
// U+10FFFF, as Postgres checks) at the start of `s`, 0 when there is none.
size_t Utf8SequenceLength(absl::string_view s) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  auto continuation = [&](size_t i) { return i < s.size() && (byte(i) & 0xC0) == 0x80; };
  unsigned char b = byte(0);
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return continuation(1) ? 2 : 0;
  if (b >= 0xE0 && b <= 0xEF) {
    if (!continuation(1) || !continuation(2)) return 0;
    if (b == 0xE0 && byte(1) < 0xA0) return 0;   // overlong
    if (b == 0xED && byte(1) >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (b >= 0xF0 && b <= 0xF4) {
    if (!continuation(1) || !continuation(2) || !continuation(3)) return 0;
    if (b == 0xF0 && byte(1) < 0x90) return 0;   // overlong
    if (b == 0xF4 && byte(1) >= 0x90) return 0;  // past U+10FFFF
    return 4;
  }
  return 0;
}

// headers_raw (migration 2): per header, a 4-byte big-endian length and the name, then the
// same for the value. Kafka caps a record far below 4 GiB, so the lengths always fit.
std::string EncodeHeaders(const kafka::Headers& headers) {
  std::string out;
  auto append = [&](const std::string& bytes) {
    uint32_t n = static_cast<uint32_t>(bytes.size());
    for (int shift = 24; shift >= 0; shift -= 8) {
      out.push_back(static_cast<char>((n >> shift) & 0xFF));
    }
    out.append(bytes);
  };
  for (const auto& [name, value] : headers) {
    append(name);
    append(value);
  }
  return out;
}

// The inverse of EncodeHeaders; a truncated tail (never written by us) is dropped.
kafka::Headers DecodeHeaders(absl::string_view in) {
  kafka::Headers out;
  auto take = [&](std::string* bytes) {
    if (in.size() < 4) return false;
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) n = (n << 8) | static_cast<unsigned char>(in[i]);
    in.remove_prefix(4);
    if (in.size() < n) return false;
    bytes->assign(in.data(), n);
    in.remove_prefix(n);
    return true;
  };
  std::string name, value;
  while (take(&name) && take(&value)) out.emplace_back(name, value);
  return out;
}

// The readable copy of the headers in the jsonb column, for SQL: DisplayText of names and
// values, the last value of a repeated name.
std::string HeadersJson(const kafka::Headers& headers) {
  nlohmann::json object = nlohmann::json::object();
  for (const auto& [name, value] : headers) object[DisplayText(name)] = DisplayText(value);
  return object.dump();
}

std::string ParkedStatus(bool possibly_delivered) {
  return possibly_delivered ? kUncertain : kFailed;
}

FailedMessage RowToMessage(const pqxx::row& row) {
  FailedMessage m;
  m.id = row[0].as<int64_t>();
  m.event_id = row[1].as<std::string>();
  m.original_topic = row[2].as<std::string>();
  m.original_partition = row[3].as<int32_t>();
  m.original_offset = row[4].as<int64_t>();
  m.key = pqxx::binarystring(row[5]).str();
  m.payload = pqxx::binarystring(row[6]).str();
  m.headers = DecodeHeaders(pqxx::binarystring(row[7]).str());
  m.error_class = row[8].as<std::string>();
  m.error_message = row[9].as<std::string>();
  m.attempts = row[10].as<int>();
  if (!row[11].is_null()) m.attempt_limit = row[11].as<int>();
  m.status = row[12].as<std::string>();
  m.next_attempt_at = absl::FromUnixMicros(row[13].as<int64_t>());
  if (!row[14].is_null()) m.last_retry_at = absl::FromUnixMicros(row[14].as<int64_t>());
  m.created_at = absl::FromUnixMicros(row[15].as<int64_t>());
  m.updated_at = absl::FromUnixMicros(row[16].as<int64_t>());
  m.operator_note = row[17].as<std::string>();
  m.possibly_delivered = row[18].as<bool>();
  return m;
}

// Tokens are "after:<id>" (base64url), as they always were: pages run newest first, so the next
// page holds the ids below it.
constexpr char kPageList[] = "after";

// Loads and locks one row; NOT_FOUND when absent.
absl::StatusOr<FailedMessage> LockRow(pqxx::work& tx, int64_t id) {
  pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kColumns, " FROM retry.failed_messages WHERE id = $1 FOR UPDATE"), id);
  if (r.empty()) return absl::NotFoundError(absl::StrCat("no failed message with id ", id));
  return RowToMessage(r[0]);
}

absl::StatusOr<FailedMessage> ReadRow(pqxx::work& tx, int64_t id) {
  pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kColumns, " FROM retry.failed_messages WHERE id = $1"), id);
  if (r.empty()) return absl::NotFoundError(absl::StrCat("no failed message with id ", id));
  return RowToMessage(r[0]);
}

}  // namespace

std::string DisplayText(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  while (!bytes.empty()) {
    size_t n = bytes[0] == '\0' ? 0 : Utf8SequenceLength(bytes);
    if (n == 0) {
      absl::StrAppend(&out, "\\x",
                      absl::Hex(static_cast<unsigned char>(bytes[0]), absl::kZeroPad2));
      n = 1;
    } else {
      out.append(bytes.data(), n);
    }
    bytes.remove_prefix(n);
  }
  return out;
}

FailedMessageStore::FailedMessageStore(PgPool& pool, Options options)
    : pool_(pool), options_(std::move(options)) {}

absl::Duration FailedMessageStore::BackoffAfter(int failed_attempt) const {
  return BackoffDelay(failed_attempt, options_.backoff, options_.random());
}

absl::StatusOr<RecordOutcome> FailedMessageStore::Record(const DlqEntry& e) {
  RecordOutcome out;
  absl::Status status = pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    out = RecordOutcome();
    bool park_at_once = !e.park_reason.empty();
    int attempt = std::max(e.attempt, 1);
    int64_t delay_us = absl::ToInt64Microseconds(BackoffAfter(attempt));
    bool park_new = park_at_once || attempt >= options_.max_attempts;
    std::string new_status = park_new ? ParkedStatus(e.possibly_delivered) : kPending;
    pqxx::result inserted = tx.exec_params(
        R"sql(
INSERT INTO retry.failed_messages
  (event_id, original_topic, original_partition, original_offset, original_timestamp_ms,
   consumer_group, key, payload, headers, headers_raw, error_class, error_message, attempts,
   status, next_attempt_at, operator_note, possibly_delivered)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13, $14,
        now() + $15::bigint * interval '1 microsecond', $16, $17)
ON CONFLICT (event_id) DO NOTHING
RETURNING id)sql",
        e.event_id, e.original_topic, e.original_partition, e.original_offset,
        e.original_timestamp_ms, e.consumer_group, pqxx::binarystring(e.key),
        pqxx::binarystring(e.payload), HeadersJson(e.headers),
        pqxx::binarystring(EncodeHeaders(e.headers)), e.error_class, e.error_message, attempt,
        new_status, park_new ? 0 : delay_us, e.park_reason, e.possibly_delivered);
    if (!inserted.empty()) {
      out.id = inserted[0][0].as<int64_t>();
      out.status = new_status;
      out.inserted = true;
      out.parked = park_new;
      return absl::OkStatus();
    }

    pqxx::row row = tx.exec_params1(
        "SELECT id, attempts, coalesce(attempt_limit, $2), status, possibly_delivered "
        "FROM retry.failed_messages WHERE event_id = $1 FOR UPDATE",
        e.event_id, options_.max_attempts);
    out.id = row[0].as<int64_t>();
    int stored_attempts = row[1].as<int>();
    int limit = row[2].as<int>();
    out.status = row[3].as<std::string>();
    bool possibly_delivered = row[4].as<bool>() || e.possibly_delivered;
    if (e.attempt != kUnknownAttempt && e.attempt <= stored_attempts) {
      // Already stored (a redelivered DLQ record) or older than what we know: re-arming the row
      // here could publish the same attempt twice.
      out.ignored = true;
      return absl::OkStatus();
    }
    int attempts = std::max(stored_attempts, e.attempt);
    std::string next_status = out.status;
    if (out.status != kDiscarded) {
      bool park = park_at_once || attempts >= limit;
      next_status = park ? ParkedStatus(possibly_delivered) : kPending;
      out.parked = park;
    }
    tx.exec_params(
        R"sql(
UPDATE retry.failed_messages
   SET attempts = $2, error_class = $3, error_message = $4, status = $5,
       next_attempt_at = CASE WHEN $5 = 'PENDING'
                              THEN now() + $6::bigint * interval '1 microsecond'
                              ELSE next_attempt_at END,
       original_partition = $7, original_offset = $8, original_timestamp_ms = $9,
       operator_note = CASE WHEN $10 <> '' AND $5 <> 'DISCARDED' THEN $10 ELSE operator_note END,
       possibly_delivered = $11,
       updated_at = now()
 WHERE id = $1)sql",
        out.id, attempts, e.error_class, e.error_message, next_status, delay_us,
        e.original_partition, e.original_offset, e.original_timestamp_ms, e.park_reason,
        possibly_delivered);
    out.status = next_status;
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return out;
}

bool FailedMessageStore::IsPermanentPublishError(const absl::Status& status) {
  return status.code() == absl::StatusCode::kFailedPrecondition ||
         status.code() == absl::StatusCode::kInvalidArgument;
}

absl::StatusOr<FailedMessageStore::PassResult> FailedMessageStore::RepublishDue(
    int limit, const PublishBatch& publish) {
  PassResult result;
  bool published = false;
  absl::Status status = pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    if (published) {
      // Transact retries a body whose connection broke; after a publish that would publish
      // the same attempt again. The rows stay PENDING and go out on a later pass.
      return absl::UnknownError("connection lost after re-publishing; rows stay PENDING");
    }
    result = PassResult();
    pqxx::result rows = tx.exec_params(
        absl::StrCat("SELECT ", kColumns, R"sql( FROM retry.failed_messages
 WHERE status = 'PENDING' AND next_attempt_at <= now()
 ORDER BY next_attempt_at, id
 LIMIT $1
 FOR UPDATE SKIP LOCKED)sql"),
        limit);
    if (rows.empty()) return absl::OkStatus();
    std::vector<FailedMessage> claimed;
    for (const pqxx::row& row : rows) claimed.push_back(RowToMessage(row));
    result.claimed = static_cast<int>(claimed.size());
    published = true;
    std::vector<absl::Status> acks = publish(claimed);
    try {
      for (size_t i = 0; i < claimed.size(); ++i) {
        absl::Status ack = i < acks.size() ? acks[i] : absl::UnknownError("no publish result");
        if (ack.ok()) {
          tx.exec_params(
              "UPDATE retry.failed_messages SET status = 'PROCESSED', last_retry_at = now(), "
              "updated_at = now() WHERE id = $1",
              claimed[i].id);
          ++result.published;
        } else if (IsPermanentPublishError(ack)) {
          tx.exec_params(
              "UPDATE retry.failed_messages SET status = $2, last_retry_at = now(), "
              "operator_note = $3, updated_at = now() WHERE id = $1",
              claimed[i].id, ParkedStatus(claimed[i].possibly_delivered),
              absl::StrCat("parked: cannot be re-published (", DisplayText(ack.message()),
                           "); fix the cause, then Retry"));
          ++result.parked;
        } else {
          tx.exec_params(
              "UPDATE retry.failed_messages SET next_attempt_at = now() + $2::bigint * "
              "interval '1 microsecond', updated_at = now() WHERE id = $1",
              claimed[i].id, absl::ToInt64Microseconds(BackoffAfter(1)));
          ++result.deferred;
        }
      }
    } catch (const std::exception& ex) {
      return absl::UnknownError(absl::StrCat("recording re-published rows: ",
                                             StatusFromException(ex).message()));
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return result;
}

absl::StatusOr<FailedMessageStore::Page> FailedMessageStore::List(const std::string& status_filter,
                                                                  int page_size,
                                                                  const std::string& page_token) {
  // The previous page's last (lowest) id; 0 for the first page.
  ASSIGN_OR_RETURN(std::optional<int64_t> last_id,
                   DecodePageToken(kPageList, page_token, 1, INT64_MAX));
  Page page;
  absl::Status status = pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    page = Page();
    pqxx::result rows = tx.exec_params(
        absl::StrCat("SELECT ", kColumns, R"sql( FROM retry.failed_messages
 WHERE ($1 = '' OR status = $1) AND ($2::bigint = 0 OR id < $2::bigint)
 ORDER BY id DESC
 LIMIT $3)sql"),
        status_filter, last_id.value_or(0), page_size + 1);
    for (const pqxx::row& row : rows) {
      if (static_cast<int>(page.messages.size()) == page_size) {
        page.next_page_token = EncodePageToken(kPageList, page.messages.back().id);
        break;
      }
      page.messages.push_back(RowToMessage(row));
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return page;
}

absl::StatusOr<FailedMessage> FailedMessageStore::Get(int64_t id) {
  absl::StatusOr<FailedMessage> out = absl::NotFoundError("");
  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    out = ReadRow(tx, id);
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<FailedMessage> FailedMessageStore::OperatorRetry(int64_t id,
                                                               const std::string& reason) {
  absl::StatusOr<FailedMessage> out = absl::NotFoundError("");
  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    ASSIGN_OR_RETURN(FailedMessage m, LockRow(tx, id));
    if (m.status != kFailed && m.status != kUncertain) {
      return absl::FailedPreconditionError(absl::StrCat(
          "only a FAILED or UNCERTAIN (parked) message can be retried; message ", id, " is ",
          m.status));
    }
    tx.exec_params(
        "INSERT INTO retry.operator_actions (message_id, action, reason, status_before, "
        "attempts_before) VALUES ($1, 'RETRY', $2, $3, $4)",
        id, reason, m.status, m.attempts);
    tx.exec_params(
        "UPDATE retry.failed_messages SET status = 'PENDING', next_attempt_at = now(), "
        "attempt_limit = attempts + 1, operator_note = $2, updated_at = now() WHERE id = $1",
        id, absl::StrCat("RETRY: ", reason));
    out = ReadRow(tx, id);
    return out.status();
  }));
  return out;
}

absl::StatusOr<FailedMessage> FailedMessageStore::Discard(int64_t id, const std::string& reason) {
  absl::StatusOr<FailedMessage> out = absl::NotFoundError("");
  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    ASSIGN_OR_RETURN(FailedMessage m, LockRow(tx, id));
    if (m.status != kPending && m.status != kFailed && m.status != kUncertain) {
      return absl::FailedPreconditionError(
          absl::StrCat("only a PENDING, FAILED or UNCERTAIN message can be discarded; message ",
                       id, " is ", m.status));
    }
    tx.exec_params(
        "INSERT INTO retry.operator_actions (message_id, action, reason, status_before, "
        "attempts_before) VALUES ($1, 'DISCARD', $2, $3, $4)",
        id, reason, m.status, m.attempts);
    tx.exec_params(
        "UPDATE retry.failed_messages SET status = 'DISCARDED', operator_note = $2, "
        "updated_at = now() WHERE id = $1",
        id, absl::StrCat("DISCARD: ", reason));
    out = ReadRow(tx, id);
    return out.status();
  }));
  return out;
}

absl::StatusOr<StatusCounts> FailedMessageStore::Counts() {
  StatusCounts counts;
  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    counts = StatusCounts();
    for (const char* s : kStatuses) counts.by_status[s] = 0;
    for (const pqxx::row& row :
         tx.exec("SELECT status, count(*) FROM retry.failed_messages GROUP BY status")) {
      counts.by_status[row[0].as<std::string>()] = row[1].as<int64_t>();
    }
    pqxx::row oldest = tx.exec1(
        "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::double precision "
        "FROM retry.failed_messages WHERE status = 'PENDING'");
    counts.oldest_pending_age_seconds = oldest[0].as<double>();
    return absl::OkStatus();
  }));
  return counts;
}

}  // namespace concert::retry
