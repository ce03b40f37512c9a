#include "notifier/delivery_store.h"

#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"

namespace concert::notifier {

const std::vector<Migration>& Migrations() {
  static const std::vector<Migration> kMigrations = {
      {1, "deliveries", R"sql(
CREATE TABLE notification.deliveries (
  event_id      uuid PRIMARY KEY,
  state         text NOT NULL CHECK (state IN ('SENDING', 'SENT', 'FAILED')),
  attempts      int NOT NULL DEFAULT 1,
  -- Set once an event was found SENDING on arrival (a crash or unknown outcome mid-send).
  uncertain     boolean NOT NULL DEFAULT false,
  first_seen_at timestamptz NOT NULL DEFAULT now(),
  sent_at       timestamptz,
  updated_at    timestamptz NOT NULL DEFAULT now(),
  last_error    text
);
CREATE INDEX deliveries_unfinished ON notification.deliveries (state) WHERE state <> 'SENT';
)sql"},
      {2, "telegram_links", R"sql(
-- UNDELIVERABLE: no chat will ever take this message (the payer has no linked chat and
-- UNLINKED_POLICY=skip, or Telegram said the payer's chat is blocked or gone). Final, like SENT.
ALTER TABLE notification.deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE notification.deliveries ADD CONSTRAINT deliveries_state_check
  CHECK (state IN ('SENDING', 'SENT', 'FAILED', 'UNDELIVERABLE'));
DROP INDEX notification.deliveries_unfinished;
CREATE INDEX deliveries_unfinished ON notification.deliveries (state)
  WHERE state NOT IN ('SENT', 'UNDELIVERABLE');

-- The bot's getUpdates offset: the next update_id to ask for. One row, written by whichever
-- notifier holds the poller's advisory lock, so a restart or a takeover neither replays nor
-- skips updates.
CREATE TABLE notification.telegram_updates (
  singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  next_update_id  bigint NOT NULL,
  updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO notification.telegram_updates (next_update_id) VALUES (0);
)sql"},
      {3, "dead_lettered_attempt", R"sql(
-- The attempt number of the dead letter the DLQ acknowledged for this event's last failure:
-- a redelivery of the same record (a rebalance before its offset was committed) is then a
-- duplicate; only the retry-worker's re-publish (a higher attempt) sends again.
ALTER TABLE notification.deliveries ADD COLUMN dead_lettered_attempt int;
)sql"},
      {4, "send_lease", R"sql(
-- Until when the send that holds this SENDING row may still have a request on its way to
-- Telegram: set by Begin and renewed by each ownership check. Another worker takes the row
-- over only after it (NULL: rows written before, free to take).
ALTER TABLE notification.deliveries ADD COLUMN owned_until timestamptz;
)sql"},
      {5, "telegram_budget", R"sql(
-- Telegram's limits for the whole fleet of notifiers (notifier/budget.h): one GCRA bucket per
-- row, "bot" and "chat:<id>", its theoretical arrival time in Postgres's clock.
CREATE TABLE notification.telegram_budget (
  bucket  text PRIMARY KEY,
  tat     timestamptz NOT NULL
);
)sql"},
  };
  return kMigrations;
}

absl::Status MigrateSchema(const std::string& database_url) {
  return Migrate(database_url, kSchema, Migrations());
}

bool ParseUncertainPolicy(const std::string& name, UncertainPolicy* policy) {
  if (name == "resend") {
    *policy = UncertainPolicy::kResend;
    return true;
  }
  if (name == "skip") {
    *policy = UncertainPolicy::kSkip;
    return true;
  }
  return false;
}

bool IsUuid(const std::string& text) {
  if (text.size() != 36) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? text[i] != '-' : !std::isxdigit(static_cast<unsigned char>(text[i]))) return false;
  }
  return true;
}

namespace {

// '{a,b,c}': a Postgres array literal of UUIDs or numbers, validated (nothing to quote).
std::string IdArray(const std::vector<std::string>& ids) {
  return absl::StrCat("{", absl::StrJoin(ids, ","), "}");
}

}  // namespace

DeliveryStore::DeliveryStore(PgPool& pool, absl::Duration send_lease)
    : pool_(pool),
      lease_seconds_(absl::ToDoubleSeconds(send_lease)),
      first_sights_([this](const std::vector<std::string>& ids) -> Batcher::Answer {
        absl::flat_hash_set<std::string> inserted;
        RETURN_IF_ERROR(pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
          for (const pqxx::row& row : tx.exec_params(
                   "INSERT INTO notification.deliveries (event_id, state, attempts, owned_until) "
                   "SELECT unnest($1::uuid[]), 'SENDING', 1, now() + make_interval(secs => $2) "
                   "ON CONFLICT (event_id) DO NOTHING RETURNING event_id::text",
                   IdArray(ids), lease_seconds_)) {
            inserted.insert(row[0].as<std::string>());
          }
          return absl::OkStatus();
        }));
        return inserted;
      }),
      sent_([this](const std::vector<std::string>& keys) -> Batcher::Answer {
        std::vector<std::string> ids, sends;
        for (const std::string& key : keys) {
          std::pair<std::string, std::string> parts = absl::StrSplit(key, '/');
          ids.push_back(std::move(parts.first));
          sends.push_back(std::move(parts.second));
        }
        absl::flat_hash_set<std::string> recorded;
        RETURN_IF_ERROR(pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
          // The second branch reads the rows as they were before the UPDATE: a retry finding
          // its own earlier commit (see "Fencing" in the header).
          for (const pqxx::row& row : tx.exec_params(
                   "WITH s (id, send) AS (SELECT * FROM unnest($1::uuid[], $2::int[])), "
                   "u AS (UPDATE notification.deliveries d SET state = 'SENT', sent_at = now(), "
                   "      updated_at = now() FROM s "
                   "      WHERE d.event_id = s.id AND d.attempts = s.send AND d.state = 'SENDING' "
                   "      RETURNING d.event_id, d.attempts) "
                   "SELECT event_id::text || '/' || attempts FROM u UNION ALL "
                   "SELECT d.event_id::text || '/' || d.attempts FROM notification.deliveries d "
                   "JOIN s ON d.event_id = s.id AND d.attempts = s.send WHERE d.state = 'SENT'",
                   IdArray(ids), IdArray(sends))) {
            recorded.insert(row[0].as<std::string>());
          }
          return absl::OkStatus();
        }, PgPool::Retry::kIdempotent));
        return recorded;
      }),
      finals_([this](const std::vector<std::string>& ids) -> Batcher::Answer {
        absl::flat_hash_set<std::string> settled;
        RETURN_IF_ERROR(pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
          for (const pqxx::row& row : tx.exec_params(
                   "SELECT event_id::text FROM notification.deliveries "
                   "WHERE event_id = ANY($1::uuid[]) AND state IN ('SENT', 'UNDELIVERABLE')",
                   IdArray(ids))) {
            settled.insert(row[0].as<std::string>());
          }
          return absl::OkStatus();
        }, PgPool::Retry::kIdempotent));
        return settled;
      }) {}

absl::StatusOr<bool> DeliveryStore::Final(const std::string& event_id) {
  return finals_.Submit(absl::AsciiStrToLower(event_id));
}

absl::StatusOr<BeginResult> DeliveryStore::Begin(const std::string& event_id,
                                                 UncertainPolicy policy, int incoming_attempt) {
  // First sight, by far the common case: one autocommitted statement, batched.
  // Keys as Postgres prints a uuid (lower case), to match what the statement returns.
  ASSIGN_OR_RETURN(bool inserted, first_sights_.Submit(absl::AsciiStrToLower(event_id)));
  BeginResult result;
  if (inserted) return result;

  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    result = BeginResult();
    // Seen before. The row lock orders us after any other instance working on it.
    pqxx::row row = tx.exec_params1(
        "SELECT state, attempts, coalesce(dead_lettered_attempt, 0), "
        "       greatest(extract(epoch FROM owned_until - now()), 0)::float8 "
        "FROM notification.deliveries WHERE event_id = $1::uuid FOR UPDATE",
        event_id);
    std::string state = row[0].as<std::string>();
    int attempts = row[1].as<int>();
    bool dead_lettered = state == "FAILED" && incoming_attempt <= row[2].as<int>();
    if (state == "SENT" || state == "UNDELIVERABLE" || dead_lettered) {
      result.action = BeginResult::Action::kDuplicate;
      result.attempts = attempts;
      return absl::OkStatus();
    }
    result.uncertain = state == "SENDING" && attempts >= incoming_attempt;
    result.retry = !result.uncertain;
    double owned_for = row[3].is_null() ? 0 : row[3].as<double>();
    if (result.uncertain && owned_for > 0) {
      // Its sender may still have a request on the way: taking over now could put a second
      // copy next to it, even after ours is confirmed.
      result.action = BeginResult::Action::kBusy;
      result.attempts = attempts;
      result.busy_for = absl::Seconds(owned_for);
      return absl::OkStatus();
    }
    if (result.uncertain && policy == UncertainPolicy::kSkip) {
      result.action = BeginResult::Action::kSkip;
      result.attempts = attempts;
      tx.exec_params(
          "UPDATE notification.deliveries SET state = 'SENT', uncertain = true, sent_at = now(), "
          "updated_at = now(), last_error = 'uncertain: not resent (UNCERTAIN_POLICY=skip)' "
          "WHERE event_id = $1::uuid",
          event_id);
      return absl::OkStatus();
    }
    result.attempts = attempts + 1;
    tx.exec_params(
        "UPDATE notification.deliveries SET state = 'SENDING', attempts = attempts + 1, "
        "uncertain = uncertain OR $2, updated_at = now(), "
        "owned_until = now() + make_interval(secs => $3) WHERE event_id = $1::uuid",
        event_id, result.uncertain, lease_seconds_);
    return absl::OkStatus();
  }));
  return result;
}

namespace {

// Concludes send number `send` of the event: one autocommitted statement that sets the row to
// `state` (and `set`, SQL over $3...) only while it is SENDING for that send, and answers
// whether the row is now in `state` for it: updated now, or by an earlier try of this same call
// whose answer was lost (the outer SELECT reads the row as it was before the UPDATE).
// `attempts_after` is the row's attempts once concluded ("$2", or "$2 - 1" for a release).
template <typename... Params>
absl::StatusOr<bool> Conclude(PgPool& pool, const char* state, const char* set,
                              const char* attempts_after, const std::string& event_id, int send,
                              const Params&... params) {
  std::string sql = absl::StrCat(
      "WITH u AS (UPDATE notification.deliveries SET state = '", state, "', ", set,
      ", updated_at = now() WHERE event_id = $1::uuid AND state = 'SENDING' AND attempts = $2 "
      "RETURNING 1) "
      "SELECT EXISTS (SELECT 1 FROM u) OR EXISTS (SELECT 1 FROM notification.deliveries "
      "WHERE event_id = $1::uuid AND state = '", state, "' AND attempts = ", attempts_after, ")");
  bool concluded = false;
  RETURN_IF_ERROR(pool.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    pqxx::row row = tx.exec_params1(sql, event_id, send, params...);
    concluded = row[0].as<bool>();
    return absl::OkStatus();
  }, PgPool::Retry::kIdempotent));
  return concluded;
}

}  // namespace

absl::StatusOr<bool> DeliveryStore::MarkSent(const std::string& event_id, int send) {
  return sent_.Submit(absl::StrCat(absl::AsciiStrToLower(event_id), "/", send));
}

absl::StatusOr<bool> DeliveryStore::MarkFailed(const std::string& event_id, int send,
                                               const std::string& error,
                                               bool possibly_delivered) {
  return Conclude(pool_, "FAILED", "last_error = $3, uncertain = uncertain OR $4", "$2",
                  event_id, send, error, possibly_delivered);
}

absl::StatusOr<bool> DeliveryStore::MarkDeadLettered(const std::string& event_id, int send,
                                                     int attempt) {
  // Not a transition: a note on the FAILED row of this same send, idempotent by itself.
  bool noted = false;
  RETURN_IF_ERROR(pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    noted = tx.exec_params("UPDATE notification.deliveries SET dead_lettered_attempt = $3, "
                           "updated_at = now() "
                           "WHERE event_id = $1::uuid AND state = 'FAILED' AND attempts = $2",
                           event_id, send, attempt)
                .affected_rows() > 0;
    return absl::OkStatus();
  }, PgPool::Retry::kIdempotent));
  return noted;
}

absl::StatusOr<bool> DeliveryStore::MarkSentUncertain(const std::string& event_id, int send,
                                                      const std::string& error) {
  return Conclude(pool_, "SENT", "uncertain = true, sent_at = now(), last_error = $3", "$2",
                  event_id, send,
                  absl::StrCat("uncertain: not resent (UNCERTAIN_POLICY=skip): ", error));
}

absl::StatusOr<bool> DeliveryStore::MarkUndeliverable(const std::string& event_id, int send,
                                                      const std::string& reason) {
  return Conclude(pool_, "UNDELIVERABLE", "last_error = $3", "$2", event_id, send, reason);
}

absl::StatusOr<bool> DeliveryStore::Release(const std::string& event_id, int send,
                                            const std::string& reason) {
  return Conclude(pool_, "FAILED", "attempts = attempts - 1, last_error = $3", "$2 - 1", event_id,
                  send, reason);
}

absl::StatusOr<bool> DeliveryStore::StillSending(const std::string& event_id, int send) {
  bool sending = false;
  RETURN_IF_ERROR(pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    sending = !tx.exec_params("UPDATE notification.deliveries "
                              "SET owned_until = now() + make_interval(secs => $3) "
                              "WHERE event_id = $1::uuid AND state = 'SENDING' AND attempts = $2 "
                              "RETURNING 1",
                              event_id, send, lease_seconds_)
                   .empty();
    return absl::OkStatus();
  }, PgPool::Retry::kIdempotent));
  return sending;
}

absl::Status DeliveryStore::Ping() {
  return pool_.Transact([](pqxx::work& tx) -> absl::Status {
    tx.exec("SELECT 1");
    return absl::OkStatus();
  });
}

}  // namespace concert::notifier
