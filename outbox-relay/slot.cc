#include "outbox-relay/slot.h"

#include <poll.h>

#include <algorithm>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/backoff.h"
#include "common/log.h"
#include "common/postgres.h"
#include "common/status.h"
#include "outbox-relay/outbox.h"

namespace concert::relay {
namespace {

// SQLSTATE object_in_use: "replication slot ... is active for PID ...".
constexpr char kObjectInUse[] = "55006";
constexpr char kDuplicateObject[] = "42710";
constexpr char kStandbyPayload[] = "concert.relay/standby";
// How long a transaction waits for the synchronous standby before the session gives up and
// starts again (Postgres' own commits wait as long as it takes).
constexpr absl::Duration kSyncStandbyWait = absl::Seconds(10);
// Where every commit Postgres acknowledged is flushed on the standbys it waited for (NULL while
// too few are connected). See WaitUntilFlushed.
constexpr char kSyncStandbyFlushedSql[] = R"sql(
WITH quorum AS (
  SELECT substring(current_setting('synchronous_standby_names')
                   FROM '^\s*[Aa][Nn][Yy]\s+([0-9]+)')::int AS n)
SELECT CASE WHEN (SELECT n FROM quorum) IS NULL
  THEN (SELECT min(flush_lsn) FROM pg_stat_replication WHERE sync_state = 'sync')
  ELSE (SELECT flush_lsn FROM pg_stat_replication WHERE sync_state = 'quorum'
        ORDER BY flush_lsn DESC OFFSET (SELECT n FROM quorum) - 1 LIMIT 1)
END::text)sql";

std::string ResultError(PGconn* conn, PGresult* res) {
  const char* msg = res != nullptr ? PQresultErrorMessage(res) : PQerrorMessage(conn);
  std::string out = msg != nullptr ? msg : "";
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

bool HasSqlState(PGresult* res, const char* sqlstate) {
  const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  return state != nullptr && std::string(state) == sqlstate;
}

struct SlotOnServer {
  bool exists = false;
  Lsn confirmed = 0;  // 0: unknown
};

// Creates the publication when missing and reads what the server knows of the slot.
absl::StatusOr<SlotOnServer> PreparePublicationAndSlot(const RelayOptions& o,
                                                       pqxx::connection& catalog) {
  SlotOnServer slot_on_server;
  try {
    pqxx::nontransaction tx(catalog);
    pqxx::result pub =
        tx.exec_params("SELECT 1 FROM pg_publication WHERE pubname = $1", o.publication);
    if (pub.empty()) {
      try {
        tx.exec(absl::StrCat("CREATE PUBLICATION ", o.publication, " FOR TABLE ", kOutboxSchema,
                             ".", kOutboxTable, " WITH (publish = 'insert')"));
        log::Info("created publication", {{"publication", o.publication}});
      } catch (const pqxx::sql_error& e) {
        if (e.sqlstate() != kDuplicateObject) throw;  // another relay was quicker
      }
    }
    pqxx::result slot = tx.exec_params(
        "SELECT confirmed_flush_lsn::text, database = current_database() "
        "FROM pg_replication_slots WHERE slot_name = $1",
        o.slot);
    if (!slot.empty()) {
      if (!slot[0][1].as<bool>()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "replication slot ", o.slot, " belongs to another database; choose another "
            "REPLICATION_SLOT"));
      }
      if (!slot[0][0].is_null()) {
        ASSIGN_OR_RETURN(slot_on_server.confirmed, ParseLsn(slot[0][0].c_str()));
      }
    }
    slot_on_server.exists = !slot.empty();
  } catch (const std::exception& e) {
    return Annotate(StatusFromException(e), "preparing publication and slot");
  }
  return slot_on_server;
}

absl::StatusOr<PGconn*> ConnectReplication(const std::string& database_url) {
  // Values in the stream are the server's text output of each column, which session settings
  // can change (bytea_output = 'escape' set on the database or role would make every payload
  // undecodable). Settings given at connection time win over those.
  std::string url = WithConnectDefaults(database_url);
  std::string options = "-c bytea_output=hex";
  char* error = nullptr;
  if (PQconninfoOption* parsed = PQconninfoParse(url.c_str(), &error)) {
    for (PQconninfoOption* opt = parsed; opt->keyword != nullptr; ++opt) {
      if (std::string(opt->keyword) == "options" && opt->val != nullptr) {
        options = absl::StrCat(opt->val, " ", options);
      }
    }
    PQconninfoFree(parsed);
  }
  PQfreemem(error);
  const char* keys[] = {"dbname", "replication", "application_name", "options", nullptr};
  const char* values[] = {url.c_str(), "database", "outbox-relay", options.c_str(), nullptr};
  PGconn* conn = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
    absl::Status error_status = absl::UnavailableError(
        absl::StrCat("replication connection: ", ResultError(conn, nullptr)));
    PQfinish(conn);
    return error_status;
  }
  // libpq prints server notices to stderr by default; every line of ours is JSON.
  PQsetNoticeProcessor(
      conn,
      [](void*, const char* notice) {
        std::string text = notice;
        while (!text.empty() && text.back() == '\n') text.pop_back();
        log::Warn("postgres notice on the replication connection", {{"notice", text}});
      },
      nullptr);
  return conn;
}

}  // namespace

absl::Status StandbyStatus(absl::string_view message) {
  absl::Status s = absl::FailedPreconditionError(message);
  s.SetPayload(kStandbyPayload, absl::Cord("1"));
  return s;
}

bool IsStandby(const absl::Status& status) {
  return status.GetPayload(kStandbyPayload).has_value();
}

absl::StatusOr<std::unique_ptr<SlotStream>> SlotStream::Open(const RelayOptions& o,
                                                             pqxx::connection& catalog) {
  ASSIGN_OR_RETURN(SlotOnServer on_server, PreparePublicationAndSlot(o, catalog));
  ASSIGN_OR_RETURN(PGconn* conn, ConnectReplication(o.database_url));
  std::unique_ptr<SlotStream> stream(new SlotStream(o.slot, conn));
  stream->start_ = on_server.confirmed;
  if (!on_server.exists) RETURN_IF_ERROR(stream->CreateSlot(catalog));
  RETURN_IF_ERROR(stream->CatchUpIfPending(catalog));
  RETURN_IF_ERROR(stream->Start(o.publication));
  return stream;
}

SlotStream::~SlotStream() {
  ReleaseMessage();
  PQfinish(conn_);
}

// The catch-up is marked pending before the slot exists, so that a relay that dies between
// creating the slot and finishing the catch-up leaves the work to the next session.
absl::Status SlotStream::CreateSlot(pqxx::connection& catalog) {
  RETURN_IF_ERROR(MarkCatchUpPending(catalog, slot_));
  std::string sql =
      absl::StrCat("CREATE_REPLICATION_SLOT ", slot_, " LOGICAL pgoutput NOEXPORT_SNAPSHOT");
  PGresult* res = PQexec(conn_, sql.c_str());
  absl::Status status;
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    if (!HasSqlState(res, kDuplicateObject)) {
      status = absl::UnavailableError(absl::StrCat("creating slot: ", ResultError(conn_, res)));
    }
    PQclear(res);
    return status;  // or created meanwhile by another relay
  }
  // consistent_point: where the new slot starts; confirming from it on is safe.
  if (PQntuples(res) > 0 && PQnfields(res) > 1 && !PQgetisnull(res, 0, 1)) {
    absl::StatusOr<Lsn> start = ParseLsn(PQgetvalue(res, 0, 1));
    if (start.ok()) start_ = *start;
  }
  PQclear(res);
  log::Info("created replication slot", {{"slot", slot_}});
  return absl::OkStatus();
}

// A new slot streams only what commits after its creation. Rows already in the outbox then
// (written while no slot existed) are re-queued so that they are streamed too. Until that has
// committed, every session tries again: an interrupted catch-up is resumed, never skipped.
absl::Status SlotStream::CatchUpIfPending(pqxx::connection& catalog) {
  ASSIGN_OR_RETURN(bool pending, CatchUpPending(catalog, slot_));
  if (!pending) return absl::OkStatus();
  ASSIGN_OR_RETURN(int64_t rows, RequeueRows(catalog, {.completes_catch_up_of = slot_}));
  log::Info("caught up with outbox rows older than the slot",
            {{"slot", slot_}, {"rows_requeued", rows}});
  return absl::OkStatus();
}

absl::Status SlotStream::Start(const std::string& publication) {
  std::string sql = absl::StrCat("START_REPLICATION SLOT ", slot_, " LOGICAL ", FormatLsn(start_),
                                 " (proto_version '1', publication_names '", publication, "')");
  PGresult* res = PQexec(conn_, sql.c_str());
  if (PQresultStatus(res) != PGRES_COPY_BOTH) {
    bool in_use = HasSqlState(res, kObjectInUse);
    std::string message = ResultError(conn_, res);
    PQclear(res);
    if (in_use) return StandbyStatus(message);
    return absl::UnavailableError(absl::StrCat("starting replication: ", message));
  }
  PQclear(res);
  return absl::OkStatus();
}

void SlotStream::ReleaseMessage() {
  if (message_ != nullptr) PQfreemem(message_);
  message_ = nullptr;
}

absl::StatusOr<std::optional<absl::string_view>> SlotStream::Next() {
  ReleaseMessage();
  int n = PQgetCopyData(conn_, &message_, /*async=*/1);
  if (n > 0) return absl::string_view(message_, n);
  if (n == 0) return std::nullopt;
  if (n == -1) {
    PGresult* res = PQgetResult(conn_);
    std::string message = ResultError(conn_, res);
    PQclear(res);
    return absl::UnavailableError(absl::StrCat("replication stream ended: ", message));
  }
  return absl::UnavailableError(absl::StrCat("replication stream: ", ResultError(conn_, nullptr)));
}

absl::Status SlotStream::AwaitData(absl::Duration timeout) {
  pollfd fd{PQsocket(conn_), POLLIN, 0};
  ::poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  if (PQconsumeInput(conn_) == 0) {
    return absl::UnavailableError(
        absl::StrCat("replication connection: ", ResultError(conn_, nullptr)));
  }
  return absl::OkStatus();
}

absl::Status SlotStream::SendStatus(Lsn received, Lsn confirmed, bool reply_requested) {
  std::string msg = EncodeStandbyStatus(std::max(received, confirmed), confirmed, confirmed,
                                        PgNow(), reply_requested);
  if (PQputCopyData(conn_, msg.data(), static_cast<int>(msg.size())) != 1 || PQflush(conn_) != 0) {
    return absl::UnavailableError(
        absl::StrCat("sending status update: ", ResultError(conn_, nullptr)));
  }
  return absl::OkStatus();
}

absl::Status SlotStream::EnsureStillHolding(pqxx::connection& catalog,
                                            metrics::Counter& stale_dropped) {
  absl::Status holding;
  try {
    pqxx::nontransaction tx(catalog);
    pqxx::result r = tx.exec_params(
        "SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1", slot_);
    int holder = r.empty() ? 0 : r[0][0].as<int>();
    if (holder == PQbackendPID(conn_)) return absl::OkStatus();
    holding = StandbyStatus(absl::StrCat("slot ", slot_, " was taken over while this relay was "
                                         "paused (now held by walsender pid ", holder, ")"));
  } catch (const std::exception& e) {
    holding = Annotate(StatusFromException(e), "checking the slot after a pause");
  }
  ReleaseMessage();
  int64_t dropped = 0;
  // Bounded: a connection that is still alive could keep sending.
  for (absl::Time deadline = absl::Now() + absl::Seconds(2); absl::Now() < deadline;) {
    PQconsumeInput(conn_);
    char* buf = nullptr;
    int n = PQgetCopyData(conn_, &buf, /*async=*/1);
    if (n <= 0) break;
    absl::StatusOr<CopyMessage> copy = ParseCopyMessage(absl::string_view(buf, n));
    if (copy.ok()) {
      if (auto* x = std::get_if<XLogData>(&*copy)) {
        absl::StatusOr<Message> msg = DecodeMessage(x->data);
        if (msg.ok()) {
          dropped += std::holds_alternative<Insert>(*msg);  // the publication's only table
        }
      }
    }
    PQfreemem(buf);
  }
  stale_dropped.Increment(static_cast<double>(dropped));
  log::Warn("lost the replication slot while paused; dropped what was buffered",
            {{"slot", slot_}, {"events_dropped", dropped},
             {"detail", std::string(holding.message())}});
  return holding;
}

absl::StatusOr<bool> SyncStandby::Configured(pqxx::connection& catalog) {
  try {
    pqxx::nontransaction tx(catalog);
    return tx.exec1("SELECT current_setting('synchronous_standby_names') <> ''")[0].as<bool>();
  } catch (const std::exception& e) {
    return Annotate(StatusFromException(e), "preparing publication and slot");
  }
}

// PostgreSQL before 17 decodes a transaction once the primary flushed its commit, while the
// committing client still waits for the synchronous standby. Relayed then, an event could
// outlive its payment: the primary dies, the standby that never had the commit is promoted,
// and Telegram has a message for a payment that does not exist. So a transaction is relayed
// only once the synchronous standby flushed WAL up to its commit record's end, as Postgres
// waits for it (a standby can stop inside a record, which then is not there after a
// promotion), and as Postgres counts it: the slowest of the synchronous standbys
// (FIRST n, or a plain list), or with quorum commit (ANY n) the n-th most advanced of the
// quorum. Standbys are read from pg_stat_replication: the relay's role needs pg_monitor (or
// pg_read_all_stats) to see their positions. PostgreSQL 17's synchronized_standby_slots makes
// the server hold the stream back instead.
absl::Status SyncStandby::WaitUntilFlushed(Lsn commit_end) {
  if (flushed_ >= commit_end) return absl::OkStatus();
  absl::Time deadline = absl::Now() + kSyncStandbyWait;
  // A commit usually reaches the standby within milliseconds: ask often at first.
  Backoff backoff(absl::Milliseconds(1), absl::Milliseconds(100));
  while (true) {
    try {
      pqxx::nontransaction tx(catalog_);
      pqxx::row row = tx.exec1(kSyncStandbyFlushedSql);
      if (!row[0].is_null()) {
        ASSIGN_OR_RETURN(flushed_, ParseLsn(row[0].c_str()));
      }
    } catch (const std::exception& e) {
      return Annotate(StatusFromException(e), "reading the synchronous standby's position");
    }
    if (flushed_ >= commit_end) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat(
          "no synchronous standby confirmed the transaction whose commit ends at ",
          FormatLsn(commit_end), " within ", absl::FormatDuration(kSyncStandbyWait),
          " (none connected, or the relay's role lacks pg_monitor to see it): not relaying "
          "what a failover could undo"));
    }
    absl::SleepFor(backoff.Next());
  }
}

}  // namespace concert::relay
