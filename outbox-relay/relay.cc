#include "outbox-relay/relay.h"

#include <libpq-fe.h>
#include <poll.h>

#include <map>
#include <optional>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/postgres.h"
#include "common/status.h"
#include "outbox-relay/commit_tracker.h"
#include "outbox-relay/outbox.h"
#include "outbox-relay/pgoutput.h"

namespace concert::relay {
namespace {

constexpr char kOutboxSchema[] = "payment";
constexpr char kOutboxTable[] = "outbox_events";
constexpr char kPaymentCompleted[] = "PaymentCompleted";
// SQLSTATE object_in_use: "replication slot ... is active for PID ...".
constexpr char kObjectInUse[] = "55006";
constexpr char kDuplicateObject[] = "42710";
// Longer than any wait inside the streaming loop (a poll is 100 ms), far shorter than Postgres'
// wal_sender_timeout (60 s by default).
constexpr absl::Duration kPauseCheckAfter = absl::Seconds(2);
// How long a transaction waits for the synchronous standby before the session gives up and
// starts again (Postgres' own commits wait as long as it takes).
constexpr absl::Duration kSyncStandbyWait = absl::Seconds(10);
// Where every commit Postgres acknowledged is flushed on the standbys it waited for (NULL while
// too few are connected). See WaitForSyncStandby.
constexpr char kSyncStandbyFlushedSql[] = R"sql(
WITH quorum AS (
  SELECT substring(current_setting('synchronous_standby_names')
                   FROM '^\s*[Aa][Nn][Yy]\s+([0-9]+)')::int AS n)
SELECT CASE WHEN (SELECT n FROM quorum) IS NULL
  THEN (SELECT min(flush_lsn) FROM pg_stat_replication WHERE sync_state = 'sync')
  ELSE (SELECT flush_lsn FROM pg_stat_replication WHERE sync_state = 'quorum'
        ORDER BY flush_lsn DESC OFFSET (SELECT n FROM quorum) - 1 LIMIT 1)
END::text)sql";

// Marks a session that ended because the slot is held by another relay.
absl::Status StandbyStatus(absl::string_view message) {
  absl::Status s = absl::FailedPreconditionError(message);
  s.SetPayload("concert.relay/standby", absl::Cord("1"));
  return s;
}
bool IsStandby(const absl::Status& s) {
  return s.GetPayload("concert.relay/standby").has_value();
}
// Marks a session that ended because of Kafka (the producer is then recreated).
absl::Status KafkaStatus(const absl::Status& cause) {
  absl::Status s = cause;
  s.SetPayload("concert.relay/kafka", absl::Cord("1"));
  return s;
}
bool IsKafka(const absl::Status& s) { return s.GetPayload("concert.relay/kafka").has_value(); }

std::string ResultError(PGconn* conn, PGresult* res) {
  const char* msg = res != nullptr ? PQresultErrorMessage(res) : PQerrorMessage(conn);
  std::string out = msg != nullptr ? msg : "";
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::vector<double> AgeBuckets() {
  std::vector<double> b = metrics::LatencyBuckets();
  for (double extra : {30.0, 60.0, 300.0, 1800.0}) {
    if (b.empty() || b.back() < extra) b.push_back(extra);
  }
  return b;
}

}  // namespace

struct Relay::Metrics {
  explicit Metrics(metrics::Registry& r)
      : registry(r),
        events(r.GetCounter("relay_events_total", "Outbox events acknowledged by Kafka")),
        delivery_errors(r.GetCounter("relay_delivery_errors_total",
                                     "Kafka deliveries that failed (each restarts the stream)")),
        deleted(r.GetCounter("relay_outbox_rows_deleted_total",
                             "Outbox rows deleted after Kafka acknowledged them")),
        restarts_postgres(r.GetCounter("relay_stream_restarts_total",
                                       "Streaming sessions ended by an error",
                                       {{"cause", "postgres"}})),
        restarts_kafka(r.GetCounter("relay_stream_restarts_total",
                                    "Streaming sessions ended by an error", {{"cause", "kafka"}})),
        confirmed_lsn(r.GetGauge("relay_confirmed_lsn",
                                 "WAL position last confirmed to Postgres (bytes)")),
        server_lsn(r.GetGauge("relay_server_lsn", "Server's WAL end as last reported (bytes)")),
        bytes_behind(r.GetGauge("relay_bytes_behind",
                                "Server's current WAL position minus the slot's confirmed "
                                "position (bytes), as the server reports them")),
        retained_wal(r.GetGauge("relay_slot_retained_wal_bytes",
                                "WAL the slot keeps on the server (current LSN - restart_lsn)")),
        pending(r.GetGauge("relay_pending_events", "Events sent and not yet acknowledged")),
        active(r.GetGauge("relay_active", "1 while this relay holds the slot and streams")),
        postgres_up(r.GetGauge("relay_postgres_up", "1 while the replication stream is open")),
        kafka_up(r.GetGauge("relay_kafka_up", "0 while Kafka is unreachable or stalled")),
        event_age(r.GetHistogram("relay_event_age_seconds",
                                 "Commit time to send time of each event", AgeBuckets())),
        commit_to_ack(r.GetHistogram("relay_commit_to_ack_seconds",
                                     "Commit time to Kafka acknowledgement of each event",
                                     AgeBuckets())),
        stranded_rows(r.GetGauge("relay_outbox_stranded_rows",
                                 "Outbox rows still there long after the stream passed them")),
        oldest_stranded(r.GetGauge("relay_outbox_oldest_stranded_age_seconds",
                                   "Age of the oldest stranded outbox row (0 when none)")),
        oldest_waiting(r.GetGauge("relay_outbox_oldest_age_seconds",
                                  "Age of the oldest outbox row waiting to be relayed, "
                                  "set-aside rows not counted (0 when none waits)")),
        stale_dropped(r.GetCounter(
            "relay_stale_events_dropped_total",
            "Events received on a replication connection that was lost while the relay was "
            "paused, dropped unsent (the slot's new holder relays them)")) {
    // At 0 from the start: increase() never sees the first event of a series that appears
    // with it, and the first set-aside row is the one an operator must hear of.
    for (const char* reason_class : {"no_topic", "undecodable", "too_large"}) {
      set_aside(reason_class);
    }
  }

  // Events set aside, by reason class ("no_topic", "undecodable", "too_large").
  metrics::Counter& set_aside(const std::string& reason_class) {
    return registry.GetCounter("relay_set_aside_events_total",
                               "Events not relayed; their rows stay in the outbox, listed in "
                               "relay.set_aside_events",
                               {{"reason", reason_class}});
  }

  // The slot's lag and retained WAL as the server sees them, and the oldest row waiting in
  // the outbox: true whatever state the stream is in (restarting, waiting for Kafka, standby).
  void MeasureSlot(pqxx::connection& conn, const std::string& slot);

  metrics::Registry& registry;
  metrics::Counter& events;
  metrics::Counter& delivery_errors;
  metrics::Counter& deleted;
  metrics::Counter& restarts_postgres;
  metrics::Counter& restarts_kafka;
  metrics::Gauge& confirmed_lsn;
  metrics::Gauge& server_lsn;
  metrics::Gauge& bytes_behind;
  metrics::Gauge& retained_wal;
  metrics::Gauge& pending;
  metrics::Gauge& active;
  metrics::Gauge& postgres_up;
  metrics::Gauge& kafka_up;
  metrics::Histogram& event_age;
  metrics::Histogram& commit_to_ack;
  metrics::Gauge& stranded_rows;
  metrics::Gauge& oldest_stranded;
  metrics::Gauge& oldest_waiting;
  metrics::Counter& stale_dropped;
};

// One streaming session: a catalog connection, a replication connection and a tracker. Any
// error ends it; Relay::Run starts a new one from the slot's confirmed position.
class Relay::Session {
 public:
  Session(Relay& relay) : relay_(relay), o_(relay.options_), m_(*relay.metrics_) {}
  ~Session() {
    if (repl_ != nullptr) PQfinish(repl_);
  }

  // Returns when `stop` is notified (after finishing in-flight work) or on an error.
  absl::Status Run(const absl::Notification& stop);

 private:
  struct OutboxColumns {
    int id = -1, event_id = -1, aggregate_id = -1, event_type = -1, payload = -1, headers = -1;
  };

  absl::Status Prepare();
  absl::Status ConnectReplication();
  absl::Status CreateSlot();
  absl::Status CatchUpIfPending();
  absl::Status StartStreaming();
  absl::Status Handle(absl::string_view copy_data);
  absl::Status HandleInsert(const Insert& insert);
  // Records why an event is not relayed; the stream goes on without it.
  absl::Status SetAsideEvent(const SetAside& entry);
  absl::Status Periodic(bool force_status);
  absl::Status CleanupAndConfirm();
  absl::Status SendStatus(bool reply_requested);
  void MeasureSlot();
  void MeasureStranded();
  absl::Status EnsureStillHoldingSlot();
  absl::Status WaitForSyncStandby(Lsn commit_end);
  absl::Status Drain(const absl::Notification& stop);

  Relay& relay_;
  const RelayOptions& o_;
  Metrics& m_;
  std::unique_ptr<pqxx::connection> catalog_;
  PGconn* repl_ = nullptr;
  bool slot_exists_ = false;
  // The server has synchronous_standby_names set: a transaction is relayed only once the
  // synchronous standby has it (WaitForSyncStandby).
  bool sync_replication_ = false;
  // With sync_replication_, the open transaction's inserts: only its Commit says where its
  // commit record ends. pgoutput sends a transaction whole once it committed, so holding them
  // costs no time, and memory only for the size of one transaction.
  std::vector<Insert> held_inserts_;
  Lsn standby_flushed_ = 0;  // the synchronous standby's flush position, as last read
  std::shared_ptr<CommitTracker> tracker_ = std::make_shared<CommitTracker>();

  std::map<uint32_t, OutboxColumns> relations_;  // outbox relation ids -> column positions
  std::optional<uint64_t> tx_;
  int64_t tx_commit_time_ = 0;

  Lsn received_ = 0;        // highest WAL position seen in the stream
  Lsn server_end_ = 0;      // the server's WAL end as last reported
  Lsn confirmed_ = 0;       // what we report as flushed; 0 until known
  Lsn acked_lsn_ = 0;       // acknowledged by Kafka, confirmed once to_delete_ is deleted
  std::vector<int64_t> to_delete_;
  // Every outbox row committed before this moment has been streamed and deleted (or set
  // aside), so one committed well before it and still in the outbox was left behind: the
  // commit time of the last confirmed transaction, or the last moment nothing received was
  // waiting for Kafka or deletion.
  absl::Time streamed_through_ = absl::InfinitePast();
  absl::Time confirmable_committed_at_ = absl::InfinitePast();  // of what to_delete_ holds
  absl::Time last_loop_ = absl::InfinitePast();  // see kPauseCheckAfter
  absl::Time next_status_ = absl::InfinitePast();
  absl::Time next_slot_stats_ = absl::InfinitePast();
};

absl::Status Relay::Session::Prepare() {
  if (!relay_.schema_ready_) {
    RETURN_IF_ERROR(MigrateSchema(o_.database_url));
    relay_.schema_ready_ = true;
  }
  try {
    catalog_ = std::make_unique<pqxx::connection>(WithConnectDefaults(o_.database_url));
    pqxx::nontransaction tx(*catalog_);
    sync_replication_ =
        tx.exec1("SELECT current_setting('synchronous_standby_names') <> ''")[0].as<bool>();
    pqxx::result pub =
        tx.exec_params("SELECT 1 FROM pg_publication WHERE pubname = $1", o_.publication);
    if (pub.empty()) {
      try {
        tx.exec(absl::StrCat("CREATE PUBLICATION ", o_.publication, " FOR TABLE ", kOutboxSchema,
                             ".", kOutboxTable, " WITH (publish = 'insert')"));
        log::Info("created publication", {{"publication", o_.publication}});
      } catch (const pqxx::sql_error& e) {
        if (e.sqlstate() != kDuplicateObject) throw;  // another relay was quicker
      }
    }
    pqxx::result slot = tx.exec_params(
        "SELECT confirmed_flush_lsn::text, database = current_database() "
        "FROM pg_replication_slots WHERE slot_name = $1",
        o_.slot);
    if (!slot.empty()) {
      if (!slot[0][1].as<bool>()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "replication slot ", o_.slot, " belongs to another database; choose another "
            "REPLICATION_SLOT"));
      }
      if (!slot[0][0].is_null()) {
        ASSIGN_OR_RETURN(confirmed_, ParseLsn(slot[0][0].c_str()));
      }
    }
    slot_exists_ = !slot.empty();
  } catch (const std::exception& e) {
    return Annotate(StatusFromException(e), "preparing publication and slot");
  }
  return absl::OkStatus();
}

absl::Status Relay::Session::ConnectReplication() {
  // Values in the stream are the server's text output of each column, which session settings
  // can change (bytea_output = 'escape' set on the database or role would make every payload
  // undecodable). Settings given at connection time win over those.
  std::string url = WithConnectDefaults(o_.database_url);
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
  repl_ = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  if (repl_ == nullptr || PQstatus(repl_) != CONNECTION_OK) {
    return absl::UnavailableError(
        absl::StrCat("replication connection: ", ResultError(repl_, nullptr)));
  }
  // libpq prints server notices to stderr by default; every line of ours is JSON.
  PQsetNoticeProcessor(
      repl_,
      [](void*, const char* notice) {
        std::string text = notice;
        while (!text.empty() && text.back() == '\n') text.pop_back();
        log::Warn("postgres notice on the replication connection", {{"notice", text}});
      },
      nullptr);
  return absl::OkStatus();
}

// The catch-up is marked pending before the slot exists, so that a relay that dies between
// creating the slot and finishing the catch-up leaves the work to the next session.
absl::Status Relay::Session::CreateSlot() {
  RETURN_IF_ERROR(MarkCatchUpPending(*catalog_, o_.slot));
  std::string sql = absl::StrCat("CREATE_REPLICATION_SLOT ", o_.slot,
                                 " LOGICAL pgoutput NOEXPORT_SNAPSHOT");
  PGresult* res = PQexec(repl_, sql.c_str());
  absl::Status status;
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (state == nullptr || std::string(state) != kDuplicateObject) {
      status = absl::UnavailableError(absl::StrCat("creating slot: ", ResultError(repl_, res)));
    }
    PQclear(res);
    return status;  // or created meanwhile by another relay
  }
  // consistent_point: where the new slot starts; confirming from it on is safe.
  if (PQntuples(res) > 0 && PQnfields(res) > 1 && !PQgetisnull(res, 0, 1)) {
    absl::StatusOr<Lsn> start = ParseLsn(PQgetvalue(res, 0, 1));
    if (start.ok()) confirmed_ = *start;
  }
  PQclear(res);
  log::Info("created replication slot", {{"slot", o_.slot}});
  return absl::OkStatus();
}

// A new slot streams only what commits after its creation. Rows already in the outbox then
// (written while no slot existed) are re-queued so that they are streamed too. Until that has
// committed, every session tries again: an interrupted catch-up is resumed, never skipped.
absl::Status Relay::Session::CatchUpIfPending() {
  ASSIGN_OR_RETURN(bool pending, CatchUpPending(*catalog_, o_.slot));
  if (!pending) return absl::OkStatus();
  ASSIGN_OR_RETURN(int64_t rows,
                   RequeueRows(*catalog_, {.completes_catch_up_of = o_.slot}));
  log::Info("caught up with outbox rows older than the slot",
            {{"slot", o_.slot}, {"rows_requeued", rows}});
  return absl::OkStatus();
}

absl::Status Relay::Session::StartStreaming() {
  std::string sql = absl::StrCat("START_REPLICATION SLOT ", o_.slot, " LOGICAL ",
                                 FormatLsn(confirmed_), " (proto_version '1', publication_names '",
                                 o_.publication, "')");
  PGresult* res = PQexec(repl_, sql.c_str());
  if (PQresultStatus(res) != PGRES_COPY_BOTH) {
    const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    std::string message = ResultError(repl_, res);
    PQclear(res);
    if (state != nullptr && std::string(state) == kObjectInUse) return StandbyStatus(message);
    return absl::UnavailableError(absl::StrCat("starting replication: ", message));
  }
  PQclear(res);
  return absl::OkStatus();
}

absl::Status Relay::Session::Run(const absl::Notification& stop) {
  RETURN_IF_ERROR(Prepare());
  RETURN_IF_ERROR(ConnectReplication());
  if (!slot_exists_) RETURN_IF_ERROR(CreateSlot());
  RETURN_IF_ERROR(CatchUpIfPending());
  RETURN_IF_ERROR(StartStreaming());

  m_.active.Set(1);
  m_.postgres_up.Set(1);
  if (confirmed_ != 0) m_.confirmed_lsn.Set(static_cast<double>(confirmed_));
  log::Info("streaming", {{"slot", o_.slot}, {"from", FormatLsn(confirmed_)}});
  relay_.SetHealth(true);

  int since_periodic = 0;
  last_loop_ = absl::Now();
  while (!stop.HasBeenNotified()) {
    // A gap this long means the process was paused (SIGSTOP, a frozen VM) or starved: Postgres
    // may have ended our walsender and given the slot to a standby meanwhile. What is buffered
    // on the connection must then not be produced.
    absl::Time now = absl::Now();
    if (now - last_loop_ > kPauseCheckAfter) RETURN_IF_ERROR(EnsureStillHoldingSlot());
    last_loop_ = now;
    char* buf = nullptr;
    int n = PQgetCopyData(repl_, &buf, /*async=*/1);
    if (n > 0) {
      absl::Status s = Handle(absl::string_view(buf, n));
      PQfreemem(buf);
      RETURN_IF_ERROR(s);
      // A long burst must not starve status updates and failure checks.
      if (++since_periodic >= 1000) {
        since_periodic = 0;
        RETURN_IF_ERROR(Periodic(false));
      }
      continue;
    }
    if (n == -1) {
      PGresult* res = PQgetResult(repl_);
      std::string message = ResultError(repl_, res);
      PQclear(res);
      return absl::UnavailableError(absl::StrCat("replication stream ended: ", message));
    }
    if (n == -2) {
      return absl::UnavailableError(
          absl::StrCat("replication stream: ", ResultError(repl_, nullptr)));
    }
    RETURN_IF_ERROR(Periodic(false));
    pollfd fd{PQsocket(repl_), POLLIN, 0};
    ::poll(&fd, 1, 100);
    if (PQconsumeInput(repl_) == 0) {
      return absl::UnavailableError(
          absl::StrCat("replication connection: ", ResultError(repl_, nullptr)));
    }
  }
  return Drain(stop);
}

// Stop requested: wait (bounded) for Kafka's answers to what was sent, confirm what they
// cover, and leave. Whatever is not confirmed is sent again by the next relay.
absl::Status Relay::Session::Drain(const absl::Notification&) {
  relay_.SetHealth(false);
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (tracker_->pending_events() > 0 && tracker_->failure().ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  absl::Status s = Periodic(/*force_status=*/true);
  log::Info("stream stopped", {{"confirmed", FormatLsn(confirmed_)}});
  return s;
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
absl::Status Relay::Session::WaitForSyncStandby(Lsn commit_end) {
  if (standby_flushed_ >= commit_end) return absl::OkStatus();
  absl::Time deadline = absl::Now() + kSyncStandbyWait;
  absl::Duration pause = absl::Milliseconds(1);
  while (true) {
    try {
      pqxx::nontransaction tx(*catalog_);
      pqxx::row row = tx.exec1(kSyncStandbyFlushedSql);
      if (!row[0].is_null()) {
        ASSIGN_OR_RETURN(standby_flushed_, ParseLsn(row[0].c_str()));
      }
    } catch (const std::exception& e) {
      return Annotate(StatusFromException(e), "reading the synchronous standby's position");
    }
    if (standby_flushed_ >= commit_end) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat(
          "no synchronous standby confirmed the transaction whose commit ends at ",
          FormatLsn(commit_end), " within ", absl::FormatDuration(kSyncStandbyWait),
          " (none connected, or the relay's role lacks pg_monitor to see it): not relaying "
          "what a failover could undo"));
    }
    absl::SleepFor(pause);
    pause = std::min(pause * 2, absl::Milliseconds(100));
  }
}

// After a pause: ask the server who holds the slot. If it is not our walsender (or the server
// cannot say), drop what is buffered on the connection, counting its events, and end the
// session; the next one starts from the confirmed position or waits as a standby.
absl::Status Relay::Session::EnsureStillHoldingSlot() {
  absl::Status holding;
  try {
    pqxx::nontransaction tx(*catalog_);
    pqxx::result r = tx.exec_params(
        "SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1", o_.slot);
    int holder = r.empty() ? 0 : r[0][0].as<int>();
    if (holder == PQbackendPID(repl_)) return absl::OkStatus();
    holding = StandbyStatus(absl::StrCat("slot ", o_.slot, " was taken over while this relay was "
                                         "paused (now held by walsender pid ", holder, ")"));
  } catch (const std::exception& e) {
    holding = Annotate(StatusFromException(e), "checking the slot after a pause");
  }
  int64_t dropped = 0;
  // Bounded: a connection that is still alive could keep sending.
  for (absl::Time deadline = absl::Now() + absl::Seconds(2); absl::Now() < deadline;) {
    PQconsumeInput(repl_);
    char* buf = nullptr;
    int n = PQgetCopyData(repl_, &buf, /*async=*/1);
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
  m_.stale_dropped.Increment(static_cast<double>(dropped));
  log::Warn("lost the replication slot while paused; dropped what was buffered",
            {{"slot", o_.slot}, {"events_dropped", dropped},
             {"detail", std::string(holding.message())}});
  return holding;
}

absl::Status Relay::Session::Handle(absl::string_view copy_data) {
  ASSIGN_OR_RETURN(CopyMessage message, ParseCopyMessage(copy_data));
  if (auto* k = std::get_if<Keepalive>(&message)) {
    server_end_ = std::max(server_end_, k->wal_end);
    // Nothing received is waiting for Kafka or for deletion, so every transaction that
    // committed before the server's current send position has been relayed: had one touched
    // the outbox, its Begin/Insert/Commit would have arrived before this keepalive, which the
    // server sends in stream order. Confirming that position lets the slot release WAL written
    // by other tables while the outbox is quiet. A transaction still in progress is not
    // skipped: it commits after this position and is decoded from its own start, which the
    // server keeps (restart_lsn) independently of what we confirm.
    if (tracker_->Idle() && to_delete_.empty() && acked_lsn_ <= confirmed_ &&
        k->wal_end > confirmed_ && confirmed_ != 0) {
      confirmed_ = k->wal_end;
    }
    if (k->reply_requested) RETURN_IF_ERROR(SendStatus(false));
    return absl::OkStatus();
  }
  const XLogData& x = std::get<XLogData>(message);
  received_ = std::max(received_, x.start);
  server_end_ = std::max(server_end_, x.wal_end);
  ASSIGN_OR_RETURN(Message msg, DecodeMessage(x.data));
  if (auto* b = std::get_if<Begin>(&msg)) {
    tx_ = tracker_->Begin();
    tx_commit_time_ = b->commit_time;
  } else if (auto* c = std::get_if<Commit>(&msg)) {
    if (!tx_) return absl::InternalError("Commit without Begin in the replication stream");
    if (sync_replication_) {
      RETURN_IF_ERROR(WaitForSyncStandby(c->end_lsn));
      for (const Insert& held : held_inserts_) RETURN_IF_ERROR(HandleInsert(held));
      held_inserts_.clear();
    }
    tracker_->End(*tx_, c->end_lsn, FromPgTime(tx_commit_time_));
    received_ = std::max(received_, c->end_lsn);
    tx_.reset();
  } else if (auto* r = std::get_if<Relation>(&msg)) {
    if (r->schema == kOutboxSchema && r->name == kOutboxTable) {
      OutboxColumns cols;
      for (int i = 0; i < static_cast<int>(r->columns.size()); ++i) {
        const std::string& name = r->columns[i].name;
        if (name == "id") cols.id = i;
        if (name == "event_id") cols.event_id = i;
        if (name == "aggregate_id") cols.aggregate_id = i;
        if (name == "event_type") cols.event_type = i;
        if (name == "payload") cols.payload = i;
        if (name == "headers") cols.headers = i;
      }
      if (cols.id < 0 || cols.event_id < 0 || cols.aggregate_id < 0 || cols.event_type < 0 ||
          cols.payload < 0) {
        return absl::FailedPreconditionError(
            "payment.outbox_events lacks a column the relay needs (id, event_id, aggregate_id, "
            "event_type, payload)");
      }
      relations_[r->id] = cols;
    }
  } else if (auto* ins = std::get_if<Insert>(&msg)) {
    if (!sync_replication_) return HandleInsert(*ins);
    held_inserts_.push_back(std::move(*ins));
  }
  return absl::OkStatus();
}

absl::Status Relay::Session::HandleInsert(const Insert& insert) {
  auto rel = relations_.find(insert.relation_id);
  if (rel == relations_.end()) return absl::OkStatus();  // not the outbox (publication changed)
  if (!tx_) return absl::InternalError("Insert outside a transaction in the replication stream");
  const OutboxColumns& c = rel->second;
  auto text = [&](int index) -> std::string {
    if (index < 0 || index >= static_cast<int>(insert.values.size())) return "";
    return insert.values[index].value_or("");
  };
  int64_t row_id = 0;
  std::string event_id = text(c.event_id);
  std::string event_type = text(c.event_type);
  auto set_aside = [&](const char* reason_class, std::string reason, int64_t bytes) {
    return SetAsideEvent({.outbox_id = row_id, .event_id = event_id, .event_type = event_type,
                          .reason_class = reason_class, .reason = std::move(reason),
                          .record_bytes = bytes});
  };
  // The id column is bigint: only a changed table could make this fail, and then no row can
  // be deleted or re-queued by id either.
  if (!absl::SimpleAtoi(text(c.id), &row_id)) {
    return absl::FailedPreconditionError(
        absl::StrCat("payment.outbox_events.id is not an integer: '", text(c.id), "'"));
  }
  absl::StatusOr<std::string> payload = DecodeByteaHex(text(c.payload));
  if (!payload.ok()) {
    return set_aside("undecodable", absl::StrCat("payload: ", payload.status().message()),
                     static_cast<int64_t>(text(c.payload).size()));
  }

  kafka::Record record;
  if (event_type == kPaymentCompleted) {
    record.topic = o_.payment_completed_topic;
  } else if (!o_.unknown_event_topic.empty()) {
    record.topic = o_.unknown_event_topic;
  } else {
    return set_aside("no_topic",
                     absl::StrCat("no topic for event type '", event_type,
                                  "' (set UNKNOWN_EVENT_TOPIC, then requeue)"),
                     static_cast<int64_t>(payload->size()));
  }
  record.key = text(c.aggregate_id);
  record.value = *std::move(payload);
  record.headers = {
      {kafka::kEventIdHeader, event_id},
      {kafka::kEventTypeHeader, event_type},
      {kafka::kContentTypeHeader,
       absl::StrCat("application/x-protobuf; messageType=concert.events.v1.", event_type)}};
  if (c.headers >= 0) {
    nlohmann::json headers = nlohmann::json::parse(text(c.headers), nullptr, false);
    if (headers.is_object()) {
      for (const auto& [name, value] : headers.items()) {
        if (!value.is_string() || name == kafka::kEventIdHeader ||
            name == kafka::kEventTypeHeader || name == kafka::kContentTypeHeader) {
          continue;
        }
        record.headers.emplace_back(name, value.get<std::string>());
      }
    }
  }

  int64_t record_bytes = static_cast<int64_t>(record.key.size() + record.value.size());
  for (const auto& [name, value] : record.headers) {
    record_bytes += static_cast<int64_t>(name.size() + value.size());
  }
  absl::Time commit_time = FromPgTime(tx_commit_time_);
  m_.event_age.Observe(absl::ToDoubleSeconds(absl::Now() - commit_time));
  uint64_t tx = *tx_;
  tracker_->AddEvent(tx, row_id);
  std::shared_ptr<CommitTracker> tracker = tracker_;
  Metrics* m = &m_;
  absl::Status produced = relay_.producer_->Produce(
      std::move(record), [tracker, tx, row_id, commit_time, m](const absl::Status& status) {
        if (status.ok()) {
          m->events.Increment();
          m->commit_to_ack.Observe(absl::ToDoubleSeconds(absl::Now() - commit_time));
        } else {
          m->delivery_errors.Increment();
          // The first failure of a session is enough to explain the restart.
          if (tracker->failure().ok()) {
            log::Warn("kafka delivery failed; the stream will be replayed",
                      {{"error", std::string(status.message())}});
          }
        }
        tracker->Acknowledge(tx, row_id, status);
      });
  if (!produced.ok()) {
    if (kafka::IsRecordRejected(produced)) {
      // Never queued: the transaction confirms without it, and its row stays.
      tracker_->Withdraw(tx);
      return set_aside("too_large", std::string(produced.message()), record_bytes);
    }
    tracker_->Acknowledge(tx, row_id, produced);
    return KafkaStatus(produced);
  }
  return absl::OkStatus();
}

absl::Status Relay::Session::SetAsideEvent(const SetAside& entry) {
  RETURN_IF_ERROR(RecordSetAside(*catalog_, entry));
  m_.set_aside(entry.reason_class).Increment();
  log::Error("event set aside, not relayed; its row stays in the outbox",
             {{"reason", entry.reason}, {"reason_class", entry.reason_class},
              {"event_id", entry.event_id}, {"event_type", entry.event_type},
              {"row_id", entry.outbox_id}, {"record_bytes", entry.record_bytes}});
  return absl::OkStatus();
}

absl::Status Relay::Session::Periodic(bool force_status) {
  if (absl::Status failed = tracker_->failure(); !failed.ok()) return KafkaStatus(failed);
  absl::Time now = absl::Now();
  bool stalled = now - tracker_->oldest_pending_since() > o_.kafka_stall_threshold;
  m_.kafka_up.Set(stalled ? 0 : 1);
  relay_.SetHealth(!stalled);
  m_.pending.Set(static_cast<double>(tracker_->pending_events()));
  if (force_status || now >= next_status_) {
    next_status_ = now + o_.status_interval;
    RETURN_IF_ERROR(CleanupAndConfirm());
    RETURN_IF_ERROR(SendStatus(false));
  }
  if (tracker_->Idle() && to_delete_.empty()) streamed_through_ = now;
  if (now >= next_slot_stats_) {
    next_slot_stats_ = now + o_.slot_stats_interval;
    MeasureSlot();
    MeasureStranded();
  }
  return absl::OkStatus();
}

// Deletes the rows of acknowledged transactions, then confirms them. In that order, so that a
// crash in between leaves nothing behind: the unconfirmed transactions are streamed again and
// their rows (already gone or not) deleted again. Only ids Kafka acknowledged are deleted.
absl::Status Relay::Session::CleanupAndConfirm() {
  CommitTracker::Confirmable c = tracker_->TakeConfirmable();
  if (c.transactions > 0) {
    acked_lsn_ = std::max(acked_lsn_, c.lsn);
    confirmable_committed_at_ = std::max(confirmable_committed_at_, c.committed_at);
    to_delete_.insert(to_delete_.end(), c.row_ids.begin(), c.row_ids.end());
  }
  while (!to_delete_.empty()) {
    size_t n = std::min(to_delete_.size(), static_cast<size_t>(o_.cleanup_batch));
    std::string ids = absl::StrCat("{", absl::StrJoin(to_delete_.begin(), to_delete_.begin() + n, ","), "}");
    try {
      pqxx::nontransaction tx(*catalog_);
      pqxx::result r = tx.exec_params(
          absl::StrCat("DELETE FROM ", kOutboxSchema, ".", kOutboxTable,
                       " WHERE id = ANY($1::bigint[])"),
          ids);
      m_.deleted.Increment(static_cast<double>(r.affected_rows()));
    } catch (const std::exception& e) {
      return Annotate(StatusFromException(e), "deleting relayed outbox rows");
    }
    to_delete_.erase(to_delete_.begin(), to_delete_.begin() + n);
  }
  if (acked_lsn_ > confirmed_) confirmed_ = acked_lsn_;
  streamed_through_ = std::max(streamed_through_, confirmable_committed_at_);
  return absl::OkStatus();
}

absl::Status Relay::Session::SendStatus(bool reply_requested) {
  if (confirmed_ != 0) {
    m_.confirmed_lsn.Set(static_cast<double>(confirmed_));
    m_.server_lsn.Set(static_cast<double>(server_end_));
  }
  // Before the first confirmation we know (a brand-new slot) report 0: "no position", which
  // leaves the slot as it is rather than moving it.
  std::string msg = EncodeStandbyStatus(std::max(received_, confirmed_), confirmed_, confirmed_,
                                        PgNow(), reply_requested);
  if (PQputCopyData(repl_, msg.data(), static_cast<int>(msg.size())) != 1 || PQflush(repl_) != 0) {
    return absl::UnavailableError(
        absl::StrCat("sending status update: ", ResultError(repl_, nullptr)));
  }
  return absl::OkStatus();
}

void Relay::Session::MeasureSlot() { m_.MeasureSlot(*catalog_, o_.slot); }

void Relay::Session::MeasureStranded() {
  if (streamed_through_ == absl::InfinitePast()) return;  // nothing streamed yet
  absl::StatusOr<Stranded> stranded =
      FindStranded(*catalog_, streamed_through_, o_.stranded_after);
  if (!stranded.ok()) {
    log::Warn("looking for stranded outbox rows failed",
              {{"error", std::string(stranded.status().message())}});
    return;
  }
  bool changed = m_.stranded_rows.Value() != static_cast<double>(stranded->rows);
  m_.stranded_rows.Set(static_cast<double>(stranded->rows));
  m_.oldest_stranded.Set(stranded->oldest_age_seconds);
  if (stranded->rows > 0 && changed) {
    log::Warn("outbox rows left behind by the stream (see relay.set_aside_events; "
              "`outbox-relay requeue` streams them again)",
              {{"rows", stranded->rows}, {"oldest_ids", stranded->first_ids},
               {"oldest_age_seconds", stranded->oldest_age_seconds}});
  }
}

void Relay::Metrics::MeasureSlot(pqxx::connection& conn, const std::string& slot) {
  if (absl::StatusOr<double> age = OldestWaitingAgeSeconds(conn); age.ok()) {
    oldest_waiting.Set(*age);
  }
  try {
    pqxx::nontransaction tx(conn);
    pqxx::result r = tx.exec_params(
        "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint, "
        "(pg_current_wal_lsn() - confirmed_flush_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = $1",
        slot);
    if (r.empty()) return;
    if (!r[0][0].is_null()) retained_wal.Set(r[0][0].as<double>());
    if (!r[0][1].is_null()) bytes_behind.Set(r[0][1].as<double>());
  } catch (const std::exception& e) {
    log::Warn("measuring the slot failed", {{"error", e.what()}});
  }
}

Relay::Relay(RelayOptions options, metrics::Registry& registry,
             std::function<void(bool)> on_health)
    : options_(std::move(options)),
      metrics_(std::make_unique<Metrics>(registry)),
      on_health_(std::move(on_health)) {}

Relay::~Relay() = default;

void Relay::SetHealth(bool serving) {
  if (health_reported_ && serving == serving_) return;
  health_reported_ = true;
  serving_ = serving;
  if (on_health_) on_health_(serving);
}

void Relay::MeasureSlotFromOutside() {
  absl::Time now = absl::Now();
  if (now < next_outside_measure_) return;
  next_outside_measure_ = now + options_.slot_stats_interval;
  try {
    pqxx::connection conn(WithConnectDefaults(options_.database_url));
    metrics_->MeasureSlot(conn, options_.slot);
  } catch (const std::exception&) {
    // Postgres is down: relay_postgres_up already says so.
  }
}

absl::Status Relay::PrepareKafka() {
  if (!kafka_suspect_ && producer_ != nullptr) return absl::OkStatus();
  // Creating the topics doubles as the probe that Kafka is back.
  std::vector<kafka::TopicSpec> topics = {
      {.name = options_.payment_completed_topic, .partitions = options_.topic_partitions},
      {.name = options_.dlq_topic, .partitions = options_.dlq_partitions}};
  if (!options_.unknown_event_topic.empty()) {
    topics.push_back({.name = options_.unknown_event_topic, .partitions = 1});
  }
  RETURN_IF_ERROR(kafka::EnsureTopics(options_.kafka, topics, absl::Seconds(10)));
  // A producer whose delivery failed is replaced: its queue may hold records that are now
  // out of order with the replay.
  producer_.reset();
  kafka::Config config = kafka::ProducerConfig(options_.kafka, "outbox-relay");
  config["message.timeout.ms"] =
      std::to_string(absl::ToInt64Milliseconds(options_.kafka_message_timeout));
  ASSIGN_OR_RETURN(producer_, kafka::Producer::Create(config));
  kafka_suspect_ = false;
  return absl::OkStatus();
}

void Relay::Run(const absl::Notification& stop) {
  metrics_->active.Set(0);
  SetHealth(false);
  absl::Duration backoff = options_.backoff_initial;
  bool standby_logged = false;
  while (!stop.HasBeenNotified()) {
    absl::Status status = PrepareKafka();
    metrics_->kafka_up.Set(status.ok() ? 1 : 0);
    absl::Time started = absl::Now();
    if (status.ok()) {
      Session session(*this);
      status = session.Run(stop);
    } else {
      status = KafkaStatus(status);
    }
    metrics_->active.Set(0);
    metrics_->postgres_up.Set(0);
    metrics_->pending.Set(0);
    SetHealth(false);
    if (stop.HasBeenNotified()) break;

    MeasureSlotFromOutside();
    absl::Duration wait;
    if (IsStandby(status)) {
      metrics_->postgres_up.Set(1);
      if (!standby_logged) {
        log::Info("slot held by another relay; waiting as standby",
                  {{"slot", options_.slot}, {"detail", std::string(status.message())}});
        standby_logged = true;
      }
      wait = options_.standby_poll_interval;
    } else {
      standby_logged = false;
      if (IsKafka(status)) {
        metrics_->restarts_kafka.Increment();
        metrics_->kafka_up.Set(0);
        kafka_suspect_ = true;
      } else {
        metrics_->restarts_postgres.Increment();
      }
      // A session that streamed for a while was healthy: start the backoff over.
      if (absl::Now() - started > absl::Seconds(30)) backoff = options_.backoff_initial;
      wait = backoff;
      backoff = std::min(backoff * 2, options_.backoff_max);
      if (!refusals_.Report(status, "preparing Kafka")) {
        log::Warn("stream interrupted; restarting from the confirmed position",
                  {{"error", std::string(status.message())},
                   {"retry_in_ms", absl::ToInt64Milliseconds(wait)}});
      }
    }
    stop.WaitForNotificationWithTimeout(wait);
  }
  producer_.reset();  // flushes what is still queued
}

}  // namespace concert::relay
