#include "outbox-relay/outbox.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace concert::relay {
namespace {

constexpr char kOutbox[] = "payment.outbox_events";

// Run `body`, converting what libpqxx throws, once: Query for a value, Execute for none.
template <typename T, typename Body>
absl::StatusOr<T> Query(absl::string_view what, Body body) {
  try {
    return body();
  } catch (const std::exception& e) {
    return Annotate(StatusFromException(e), what);
  }
}

template <typename Body>
absl::Status Execute(absl::string_view what, Body body) {
  try {
    body();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return Annotate(StatusFromException(e), what);
  }
}

}  // namespace

const std::vector<Migration>& Migrations() {
  static const std::vector<Migration>* migrations = new std::vector<Migration>{
      {1, "catch_up_and_set_aside", R"sql(
-- One row per replication slot: completed_at stays NULL until every row that was in the
-- outbox when the slot was created has been re-queued (so that the slot streams it).
CREATE TABLE relay.slot_catch_up (
  slot_name     text PRIMARY KEY,
  pending_since timestamptz NOT NULL DEFAULT now(),
  completed_at  timestamptz,
  rows_requeued bigint
);

-- Outbox rows the relay did not send, and why. The row itself stays in payment.outbox_events
-- until an operator re-queues it (outbox-relay requeue) or deletes it.
CREATE TABLE relay.set_aside_events (
  outbox_id     bigint PRIMARY KEY,
  event_id      text NOT NULL,
  event_type    text NOT NULL,
  reason_class  text NOT NULL,
  reason        text NOT NULL,
  record_bytes  bigint NOT NULL,
  times_seen    int NOT NULL DEFAULT 1,
  first_seen_at timestamptz NOT NULL DEFAULT now(),
  last_seen_at  timestamptz NOT NULL DEFAULT now()
);
)sql"},
  };
  return *migrations;
}

absl::Status MigrateSchema(const std::string& database_url) {
  return Migrate(database_url, kRelaySchema, Migrations());
}

absl::Status MarkCatchUpPending(pqxx::connection& conn, const std::string& slot) {
  return Execute("marking the slot's catch-up pending", [&] {
    pqxx::work tx(conn);
    tx.exec_params(
        "INSERT INTO relay.slot_catch_up (slot_name) VALUES ($1) ON CONFLICT (slot_name) "
        "DO UPDATE SET pending_since = now(), completed_at = NULL, rows_requeued = NULL",
        slot);
    tx.commit();
  });
}

absl::StatusOr<bool> CatchUpPending(pqxx::connection& conn, const std::string& slot) {
  return Query<bool>("reading the slot's catch-up", [&] {
    pqxx::nontransaction tx(conn);
    pqxx::result r = tx.exec_params(
        "SELECT completed_at IS NOT NULL FROM relay.slot_catch_up WHERE slot_name = $1", slot);
    return r.empty() || !r[0][0].as<bool>();
  });
}

absl::StatusOr<int64_t> RequeueRows(pqxx::connection& conn, const RequeueOptions& o) {
  return Query<int64_t>("re-queueing outbox rows", [&] {
    pqxx::transaction<pqxx::isolation_level::repeatable_read> tx(conn);
    // NULL cutoff: every row.
    std::optional<std::string> cutoff_micros;
    if (o.older_than) cutoff_micros = std::to_string(absl::ToInt64Microseconds(*o.older_than));
    tx.exec_params(absl::StrCat("CREATE TEMP TABLE relay_requeue ON COMMIT DROP AS SELECT * FROM ",
                                kOutbox,
                                " WHERE $1::bigint IS NULL OR created_at < now() - $1::bigint * "
                                "interval '1 microsecond'"),
                   cutoff_micros);
    pqxx::result moved = tx.exec(
        absl::StrCat("DELETE FROM ", kOutbox, " WHERE id IN (SELECT id FROM relay_requeue)"));
    tx.exec(absl::StrCat("INSERT INTO ", kOutbox, " SELECT * FROM relay_requeue ORDER BY id"));
    tx.exec("DELETE FROM relay.set_aside_events WHERE outbox_id IN (SELECT id FROM relay_requeue)");
    int64_t rows = moved.affected_rows();
    if (!o.completes_catch_up_of.empty()) {
      tx.exec_params(
          "INSERT INTO relay.slot_catch_up (slot_name, completed_at, rows_requeued) "
          "VALUES ($1, now(), $2) ON CONFLICT (slot_name) "
          "DO UPDATE SET completed_at = now(), rows_requeued = $2",
          o.completes_catch_up_of, rows);
    }
    tx.commit();
    return rows;
  });
}

absl::Status RecordSetAside(pqxx::connection& conn, const SetAside& e) {
  return Execute("recording a set-aside event", [&] {
    pqxx::work tx(conn);
    tx.exec_params(
        R"sql(
INSERT INTO relay.set_aside_events
  (outbox_id, event_id, event_type, reason_class, reason, record_bytes)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (outbox_id) DO UPDATE
   SET reason_class = excluded.reason_class, reason = excluded.reason,
       record_bytes = excluded.record_bytes,
       times_seen = relay.set_aside_events.times_seen + 1, last_seen_at = now())sql",
        e.outbox_id, e.event_id, e.event_type, e.reason_class, e.reason, e.record_bytes);
    tx.commit();
  });
}

absl::StatusOr<Stranded> FindStranded(pqxx::connection& conn, absl::Time reference,
                                      absl::Duration after) {
  return Query<Stranded>("looking for stranded outbox rows", [&] {
    pqxx::nontransaction tx(conn);
    std::string cutoff_micros = std::to_string(absl::ToUnixMicros(reference - after));
    pqxx::result r = tx.exec_params(
        absl::StrCat("SELECT id, extract(epoch FROM now() - created_at)::float8, "
                     "count(*) OVER () FROM ",
                     kOutbox,
                     " WHERE created_at < to_timestamp($1::bigint / 1e6) "
                     "ORDER BY created_at, id LIMIT 10"),
        cutoff_micros);
    Stranded out;
    for (const pqxx::row& row : r) {
      out.first_ids.push_back(row[0].as<int64_t>());
      out.oldest_age_seconds = std::max(out.oldest_age_seconds, row[1].as<double>());
      out.rows = row[2].as<int64_t>();
    }
    return out;
  });
}

absl::StatusOr<double> OldestWaitingAgeSeconds(pqxx::connection& conn) {
  return Query<double>("measuring the oldest waiting outbox row", [&] {
    pqxx::nontransaction tx(conn);
    // By id, the primary key: ids follow insertion order, and a backlog is read from its head.
    pqxx::result r = tx.exec(absl::StrCat(
        "SELECT extract(epoch FROM now() - created_at)::float8 FROM ", kOutbox,
        " o WHERE NOT EXISTS (SELECT 1 FROM relay.set_aside_events s WHERE s.outbox_id = o.id) "
        "ORDER BY id LIMIT 1"));
    return r.empty() ? 0.0 : std::max(0.0, r[0][0].as<double>());
  });
}

}  // namespace concert::relay
