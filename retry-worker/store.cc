#include "retry-worker/store.h"

#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace concert::retry {
namespace {

constexpr char kColumns[] = R"sql(
  id, event_id, original_topic, original_partition, original_offset, key, payload,
  headers::text, error_class, error_message, attempts, attempt_limit, status,
  (extract(epoch FROM next_attempt_at) * 1000000)::bigint,
  (extract(epoch FROM last_retry_at) * 1000000)::bigint,
  (extract(epoch FROM created_at) * 1000000)::bigint,
  (extract(epoch FROM updated_at) * 1000000)::bigint,
  operator_note)sql";

constexpr char kPoisonNote[] =
    "parked at once: a poison message cannot succeed by retrying; fix the cause, then Retry";

std::string HeadersJson(const kafka::Headers& headers) {
  nlohmann::json object = nlohmann::json::object();
  for (const auto& [name, value] : headers) object[name] = value;
  // Header values are bytes; a non-UTF-8 one must not make the whole record unstorable.
  return object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
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
  nlohmann::json headers = nlohmann::json::parse(row[7].as<std::string>(), nullptr, false);
  if (headers.is_object()) {
    for (const auto& [name, value] : headers.items()) {
      if (value.is_string()) m.headers[name] = value.get<std::string>();
    }
  }
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
  return m;
}

std::string PageToken(int64_t last_id) {
  return absl::WebSafeBase64Escape(absl::StrCat("after:", last_id));
}

absl::StatusOr<int64_t> ParsePageToken(const std::string& token) {
  if (token.empty()) return 0;
  std::string decoded;
  int64_t id = 0;
  if (!absl::WebSafeBase64Unescape(token, &decoded) || !absl::StartsWith(decoded, "after:") ||
      !absl::SimpleAtoi(absl::string_view(decoded).substr(6), &id) || id <= 0) {
    return absl::InvalidArgumentError("page_token is not one this API returned");
  }
  return id;
}

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

FailedMessageStore::FailedMessageStore(PgPool& pool, Options options)
    : pool_(pool), options_(std::move(options)) {}

absl::Duration FailedMessageStore::BackoffAfter(int failed_attempt) const {
  return BackoffDelay(failed_attempt, options_.backoff, options_.random());
}

absl::StatusOr<RecordOutcome> FailedMessageStore::Record(const DlqEntry& e) {
  RecordOutcome out;
  absl::Status status = pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    out = RecordOutcome();
    bool poison = e.error_class == kPoisonClass;
    int64_t delay_us = absl::ToInt64Microseconds(BackoffAfter(e.attempt));
    bool park_new = poison || e.attempt >= options_.max_attempts;
    pqxx::result inserted = tx.exec_params(
        R"sql(
INSERT INTO retry.failed_messages
  (event_id, original_topic, original_partition, original_offset, original_timestamp_ms,
   consumer_group, key, payload, headers, error_class, error_message, attempts, status,
   next_attempt_at, operator_note)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13,
        now() + $14::bigint * interval '1 microsecond', $15)
ON CONFLICT (event_id) DO NOTHING
RETURNING id)sql",
        e.event_id, e.original_topic, e.original_partition, e.original_offset,
        e.original_timestamp_ms, e.consumer_group, pqxx::binarystring(e.key),
        pqxx::binarystring(e.payload), HeadersJson(e.headers), e.error_class, e.error_message,
        e.attempt, park_new ? kFailed : kPending, park_new ? 0 : delay_us,
        poison ? kPoisonNote : "");
    if (!inserted.empty()) {
      out.id = inserted[0][0].as<int64_t>();
      out.status = park_new ? kFailed : kPending;
      out.inserted = true;
      out.parked = park_new;
      return absl::OkStatus();
    }

    pqxx::row row = tx.exec_params1(
        "SELECT id, attempts, coalesce(attempt_limit, $2), status FROM retry.failed_messages "
        "WHERE event_id = $1 FOR UPDATE",
        e.event_id, options_.max_attempts);
    out.id = row[0].as<int64_t>();
    int stored_attempts = row[1].as<int>();
    int limit = row[2].as<int>();
    out.status = row[3].as<std::string>();
    if (e.attempt <= stored_attempts) {
      // Already stored (a redelivered DLQ record) or older than what we know: re-arming the row
      // here could publish the same attempt twice.
      out.ignored = true;
      return absl::OkStatus();
    }
    std::string next_status = out.status;
    if (out.status != kDiscarded) {
      bool park = poison || e.attempt >= limit;
      next_status = park ? kFailed : kPending;
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
       operator_note = CASE WHEN $10 THEN $11 ELSE operator_note END,
       updated_at = now()
 WHERE id = $1)sql",
        out.id, e.attempt, e.error_class, e.error_message, next_status, delay_us,
        e.original_partition, e.original_offset, e.original_timestamp_ms,
        poison && next_status == kFailed, std::string(kPoisonNote));
    out.status = next_status;
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return out;
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
        if (i < acks.size() && acks[i].ok()) {
          tx.exec_params(
              "UPDATE retry.failed_messages SET status = 'PROCESSED', last_retry_at = now(), "
              "updated_at = now() WHERE id = $1",
              claimed[i].id);
          ++result.published;
        } else {
          ++result.failed;
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
  ASSIGN_OR_RETURN(int64_t after, ParsePageToken(page_token));
  Page page;
  absl::Status status = pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    page = Page();
    pqxx::result rows = tx.exec_params(
        absl::StrCat("SELECT ", kColumns, R"sql( FROM retry.failed_messages
 WHERE ($1 = '' OR status = $1) AND ($2 = 0 OR id < $2)
 ORDER BY id DESC
 LIMIT $3)sql"),
        status_filter, after, page_size + 1);
    for (const pqxx::row& row : rows) {
      if (static_cast<int>(page.messages.size()) == page_size) {
        page.next_page_token = PageToken(page.messages.back().id);
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
    if (m.status != kFailed) {
      return absl::FailedPreconditionError(absl::StrCat(
          "only a FAILED (parked) message can be retried; message ", id, " is ", m.status));
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
    if (m.status != kPending && m.status != kFailed) {
      return absl::FailedPreconditionError(absl::StrCat(
          "only a PENDING or FAILED message can be discarded; message ", id, " is ", m.status));
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
    for (const char* s : {kPending, kProcessed, kFailed, kDiscarded}) counts.by_status[s] = 0;
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
