#include "notifier/delivery_store.h"

#include <cctype>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

// '{a,b,c}': a Postgres array literal of ids validated as UUIDs (nothing to quote).
std::string UuidArray(const std::vector<std::string>& ids) {
  return absl::StrCat("{", absl::StrJoin(ids, ","), "}");
}

}  // namespace

DeliveryStore::DeliveryStore(PgPool& pool)
    : pool_(pool),
      first_sights_([this](const std::vector<std::string>& ids) -> Batcher::Answer {
        absl::flat_hash_set<std::string> inserted;
        RETURN_IF_ERROR(pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
          for (const pqxx::row& row : tx.exec_params(
                   "INSERT INTO notification.deliveries (event_id, state, attempts) "
                   "SELECT unnest($1::uuid[]), 'SENDING', 1 ON CONFLICT (event_id) DO NOTHING "
                   "RETURNING event_id::text",
                   UuidArray(ids))) {
            inserted.insert(row[0].as<std::string>());
          }
          return absl::OkStatus();
        }));
        return inserted;
      }),
      sent_([this](const std::vector<std::string>& ids) -> Batcher::Answer {
        RETURN_IF_ERROR(pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
          tx.exec_params(
              "UPDATE notification.deliveries SET state = 'SENT', sent_at = now(), "
              "updated_at = now() WHERE event_id = ANY($1::uuid[])",
              UuidArray(ids));
          return absl::OkStatus();
        }));
        return absl::flat_hash_set<std::string>();
      }) {}

absl::StatusOr<BeginResult> DeliveryStore::Begin(const std::string& event_id,
                                                 UncertainPolicy policy, int incoming_attempt) {
  // First sight, by far the common case: one autocommitted statement, batched.
  ASSIGN_OR_RETURN(bool inserted, first_sights_.Submit(event_id));
  BeginResult result;
  if (inserted) return result;

  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    result = BeginResult();
    // Seen before. The row lock orders us after any other instance working on it.
    pqxx::row row = tx.exec_params1(
        "SELECT state, attempts, coalesce(dead_lettered_attempt, 0) FROM notification.deliveries "
        "WHERE event_id = $1::uuid FOR UPDATE",
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
        "uncertain = uncertain OR $2, updated_at = now() WHERE event_id = $1::uuid",
        event_id, result.uncertain);
    return absl::OkStatus();
  }));
  return result;
}

namespace {

// One autocommitted UPDATE of the event's row.
template <typename... Params>
absl::Status Update(PgPool& pool, const char* sql, const Params&... params) {
  return pool.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    tx.exec_params(sql, params...);
    return absl::OkStatus();
  });
}

}  // namespace

absl::Status DeliveryStore::MarkSent(const std::string& event_id) {
  return sent_.Submit(event_id).status();
}

absl::Status DeliveryStore::MarkFailed(const std::string& event_id, const std::string& error,
                                       bool possibly_delivered) {
  return Update(pool_,
                "UPDATE notification.deliveries SET state = 'FAILED', last_error = $2, "
                "uncertain = uncertain OR $3, updated_at = now() WHERE event_id = $1::uuid",
                event_id, error, possibly_delivered);
}

absl::Status DeliveryStore::MarkDeadLettered(const std::string& event_id, int attempt) {
  return Update(pool_,
                "UPDATE notification.deliveries SET dead_lettered_attempt = $2, "
                "updated_at = now() WHERE event_id = $1::uuid AND state = 'FAILED'",
                event_id, attempt);
}

absl::Status DeliveryStore::MarkSentUncertain(const std::string& event_id,
                                              const std::string& error) {
  return Update(pool_,
                "UPDATE notification.deliveries SET state = 'SENT', uncertain = true, "
                "sent_at = now(), updated_at = now(), last_error = $2 "
                "WHERE event_id = $1::uuid",
                event_id, absl::StrCat("uncertain: not resent (UNCERTAIN_POLICY=skip): ", error));
}

absl::Status DeliveryStore::MarkUndeliverable(const std::string& event_id,
                                              const std::string& reason) {
  return Update(pool_,
                "UPDATE notification.deliveries SET state = 'UNDELIVERABLE', last_error = $2, "
                "updated_at = now() WHERE event_id = $1::uuid",
                event_id, reason);
}

absl::Status DeliveryStore::Release(const std::string& event_id, const std::string& reason) {
  return Update(pool_,
                "UPDATE notification.deliveries SET state = 'FAILED', attempts = attempts - 1, "
                "last_error = $2, updated_at = now() WHERE event_id = $1::uuid",
                event_id, reason);
}

absl::Status DeliveryStore::Ping() {
  return pool_.Transact([](pqxx::work& tx) -> absl::Status {
    tx.exec("SELECT 1");
    return absl::OkStatus();
  });
}

}  // namespace concert::notifier
