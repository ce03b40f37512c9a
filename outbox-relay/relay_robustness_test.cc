// outbox-relay against bad rows, bad settings and bad timing, on the real Postgres and Kafka:
// a row no Kafka accepts, a row of an unknown type, a database setting that changes the text
// form of bytea, a catch-up of old rows that is interrupted, and a relay that wakes up after
// another took its slot, and a synchronous standby that has only part of a commit. The rules
// they check: a bad row is set aside where an operator sees it (relay.set_aside_events, a
// metric, a log line) and the stream goes on; nothing is lost; nothing is relayed that a
// failover could undo.
#include <libpq-fe.h>

#include "outbox-relay/outbox.h"
#include "outbox-relay/pgoutput.h"
#include "outbox-relay/test_util.h"

namespace concert::relay {
namespace {

using namespace ::concert::relay::testing;  // NOLINT: the helpers of test_util.h

// Inserts one outbox row the way payment-server does, with a payload of its own.
int64_t InsertRow(const std::string& url, const std::string& event_type,
                  const std::string& payload) {
  pqxx::connection c(url);
  pqxx::work tx(c);
  pqxx::row row = tx.exec_params1(
      "INSERT INTO payment.outbox_events (event_id, aggregate_type, aggregate_id, event_type, "
      "payload) VALUES (gen_random_uuid(), 'Reservation', '1', $1, $2) RETURNING id",
      event_type, pqxx::binarystring(payload));
  tx.commit();
  return row[0].as<int64_t>();
}

std::string SetAsideReason(const std::string& url, int64_t row_id) {
  pqxx::connection c(url);
  pqxx::nontransaction tx(c);
  pqxx::result r = tx.exec_params(
      "SELECT reason FROM relay.set_aside_events WHERE outbox_id = $1", row_id);
  return r.empty() ? "" : r[0][0].as<std::string>();
}

double SetAsideCount(InProcessRelay& relay, const std::string& reason) {
  return relay.registry()
      .GetCounter("relay_set_aside_events_total", "", {{"reason", reason}})
      .Value();
}

TEST_F(RelayTest, RowLargerThanKafkaAcceptsIsSetAsideAndTheStreamGoesOn) {
  InProcessRelay relay(Options(db_.url(), KafkaBootstrap(), topic_, slot_));
  ASSERT_TRUE(WaitUntil(
      [&] { return relay.registry().GetGauge("relay_active", "").Value() == 1; },
      absl::Seconds(30)));
  OutboxWriter writer(db_.url());
  std::vector<Event> written = writer.WriteTransaction(3, 3);
  int64_t huge = InsertRow(db_.url(), "PaymentCompleted", std::string(1'500'000, 'x'));
  std::vector<Event> after = writer.WriteTransaction(5, 3);
  written.insert(written.end(), after.begin(), after.end());

  TopicReader reader(KafkaBootstrap(), topic_);
  reader.ReadUntil(
      [&](const std::vector<Received>& r) { return DistinctEventIds(r).size() >= 8; },
      absl::Seconds(30));
  ExpectAllPresent(written, reader.records());
  EXPECT_TRUE(WaitUntil([&] { return OutboxRows(db_.url()) == 1; }, absl::Seconds(30)))
      << "only the oversized row stays in the outbox, for an operator";
  EXPECT_NE(SetAsideReason(db_.url(), huge).find("too large"), std::string::npos)
      << "reason: '" << SetAsideReason(db_.url(), huge) << "'";
  EXPECT_EQ(SetAsideCount(relay, "too_large"), 1);
  EXPECT_EQ(relay.registry().GetCounter("relay_stream_restarts_total", "", {{"cause", "kafka"}})
                .Value(),
            0);
  // The slot moved past the row: the WAL it would otherwise pin is released.
  EXPECT_TRUE(WaitUntil(
      [&] { return relay.registry().GetGauge("relay_bytes_behind", "").Value() < 1'000'000; },
      absl::Seconds(30)))
      << relay.registry().GetGauge("relay_bytes_behind", "").Value();
  relay.Stop();
  DropSlot(db_.url(), slot_);
}

TEST_F(RelayTest, ByteaOutputEscapeOnTheDatabaseDoesNotChangeWhatIsRelayed) {
  {
    pqxx::connection c(db_.url());
    pqxx::nontransaction tx(c);
    tx.exec(absl::StrCat("ALTER DATABASE ", db_.name(), " SET bytea_output = 'escape'"));
  }
  InProcessRelay relay(Options(db_.url(), KafkaBootstrap(), topic_, slot_));
  ASSERT_TRUE(WaitUntil(
      [&] { return relay.registry().GetGauge("relay_active", "").Value() == 1; },
      absl::Seconds(30)));
  OutboxWriter writer(db_.url());
  std::vector<Event> written = writer.WriteTransaction(20, 5);
  TopicReader reader(KafkaBootstrap(), topic_);
  reader.ReadUntil(
      [&](const std::vector<Received>& r) { return DistinctEventIds(r).size() >= 20; },
      absl::Seconds(30));
  ExpectAllPresent(written, reader.records());
  std::map<std::string, std::string> value_of;
  for (const Received& r : reader.records()) value_of[r.headers.at("event_id")] = r.value;
  for (const Event& e : written) EXPECT_EQ(value_of[e.event_id], e.payload) << e.event_id;
  EXPECT_EQ(SetAsideCount(relay, "undecodable"), 0);
  EXPECT_TRUE(WaitUntil([&] { return OutboxRows(db_.url()) == 0; }, absl::Seconds(30)));
  relay.Stop();
  DropSlot(db_.url(), slot_);
}

// The catch-up of rows older than the slot fails half-way (as a kill, a Postgres restart or a
// statement timeout would end it); the next session must finish it.
TEST_F(RelayTest, InterruptedCatchUpOfRowsOlderThanTheSlotIsResumed) {
  OutboxWriter writer(db_.url());
  std::vector<Event> old_rows = writer.WriteTransaction(50, 10);
  // While `fail` is set, re-inserting outbox rows fails; attempts are counted in a sequence
  // (nextval survives the rollback).
  {
    pqxx::connection c(db_.url());
    pqxx::nontransaction tx(c);
    tx.exec(R"sql(
CREATE TABLE requeue_control (fail boolean NOT NULL);
INSERT INTO requeue_control VALUES (true);
CREATE SEQUENCE requeue_attempts;
CREATE FUNCTION interrupt_requeue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT fail FROM requeue_control) THEN
    PERFORM nextval('requeue_attempts');
    RAISE EXCEPTION 'catch-up interrupted by the test';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER interrupt_requeue BEFORE INSERT ON payment.outbox_events
  FOR EACH ROW EXECUTE FUNCTION interrupt_requeue();
)sql");
  }
  InProcessRelay relay(Options(db_.url(), KafkaBootstrap(), topic_, slot_));
  ASSERT_TRUE(WaitUntil(
      [&] {
        return Scalar(db_.url(), "SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
                                 "FROM requeue_attempts") >= 1;
      },
      absl::Seconds(30)))
      << "the relay never tried the catch-up";
  Scalar(db_.url(), "UPDATE requeue_control SET fail = false RETURNING 1");

  TopicReader reader(KafkaBootstrap(), topic_);
  reader.ReadUntil(
      [&](const std::vector<Received>& r) { return DistinctEventIds(r).size() >= 50; },
      absl::Seconds(45));
  ExpectAllPresent(old_rows, reader.records());
  EXPECT_TRUE(WaitUntil([&] { return OutboxRows(db_.url()) == 0; }, absl::Seconds(30)));
  relay.Stop();
  DropSlot(db_.url(), slot_);
}

// A row of a type with no topic stays in the outbox; the relay says so in a metric before long,
// and `outbox-relay requeue` streams it again once an operator gave the type a topic.
TEST_F(RelayTest, StrandedRowIsVisibleAndAnOperatorCanRequeueIt) {
  std::string other_topic = UniqueName("relay_other");
  int64_t row;
  {
    RelayOptions o = Options(db_.url(), KafkaBootstrap(), topic_, slot_);
    o.stranded_after = absl::Seconds(1);
    InProcessRelay relay(o);
    ASSERT_TRUE(WaitUntil(
        [&] { return relay.registry().GetGauge("relay_active", "").Value() == 1; },
        absl::Seconds(30)));
    row = InsertRow(db_.url(), "RefundIssued", "refund");
    OutboxWriter writer(db_.url());
    std::vector<Event> normal = writer.WriteTransaction(3, 3);
    TopicReader reader(KafkaBootstrap(), topic_);
    reader.ReadUntil(
        [&](const std::vector<Received>& r) { return DistinctEventIds(r).size() >= 3; },
        absl::Seconds(30));
    ExpectAllPresent(normal, reader.records());
    EXPECT_NE(SetAsideReason(db_.url(), row).find("no topic"), std::string::npos);
    EXPECT_EQ(SetAsideCount(relay, "no_topic"), 1);
    EXPECT_TRUE(WaitUntil(
        [&] { return relay.registry().GetGauge("relay_outbox_stranded_rows", "").Value() == 1; },
        absl::Seconds(30)));
  }
  // The operator routes the type, then re-drives the row.
  auto env = ChildEnv(db_.url(), topic_, slot_, FreePort());
  env["UNKNOWN_EVENT_TOPIC"] = other_topic;
  ChildProcess relay(BinaryPath("outbox-relay"), {}, env);
  ChildProcess requeue(BinaryPath("outbox-relay"), {"requeue", "--older-than=0s"},
                       {{"DATABASE_URL", db_.url()}});
  ASSERT_TRUE(WaitUntil([&] { return !requeue.running(); }, absl::Seconds(30)));
  EXPECT_NE(requeue.ReadLog().find("requeued"), std::string::npos) << requeue.ReadLog();
  TopicReader other(KafkaBootstrap(), other_topic);
  EXPECT_TRUE(other.ReadUntil([](const std::vector<Received>& r) { return r.size() >= 1; },
                              absl::Seconds(30)))
      << relay.ReadLog();
  ASSERT_FALSE(other.records().empty());
  EXPECT_EQ(other.records()[0].value, "refund");
  EXPECT_TRUE(WaitUntil([&] { return OutboxRows(db_.url()) == 0; }, absl::Seconds(30)));
  EXPECT_EQ(SetAsideReason(db_.url(), row), "") << "re-driven rows leave the set-aside list";
  EXPECT_EQ(relay.Stop(SIGTERM), 0);
  DropSlot(db_.url(), slot_);
}

// Under load that never lets the relay go idle, a row left behind is still found: the stream's
// position is the commit time of what it confirmed, not the last moment it had nothing to do.
TEST_F(RelayTest, StrandedRowIsFoundUnderLoadThatNeverLetsTheRelayIdle) {
  std::atomic<bool> stop{false};
  std::thread load([&] {
    OutboxWriter writer(db_.url());
    for (int i = 0; !stop.load() && i < 100'000; ++i) writer.WriteTransaction(20, 10);
  });
  absl::SleepFor(absl::Seconds(1));  // the relay meets a backlog, then a steady stream
  RelayOptions o = Options(db_.url(), KafkaBootstrap(), topic_, slot_);
  o.stranded_after = absl::Seconds(2);
  // Acknowledgements half a second after each send: with a transaction every few milliseconds,
  // something always waits for Kafka.
  o.kafka.client_properties["linger.ms"] = "500";
  InProcessRelay relay(o);
  ASSERT_TRUE(WaitUntil(
      [&] { return relay.registry().GetGauge("relay_active", "").Value() == 1; },
      absl::Seconds(30)));
  InsertRow(db_.url(), "RefundIssued", "left behind");  // set aside: it stays in the outbox
  EXPECT_TRUE(WaitUntil(
      [&] { return relay.registry().GetGauge("relay_outbox_stranded_rows", "").Value() == 1; },
      absl::Seconds(30)));
  stop = true;
  load.join();
  relay.Stop();
  DropSlot(db_.url(), slot_);
}

// What waits in the outbox because Kafka is away ages in relay_outbox_oldest_age_seconds (the
// alert on late events reads it); a set-aside row waits for an operator instead and does not.
TEST_F(RelayTest, OldestWaitingRowAgesWhileKafkaIsAwayButSetAsideRowsDoNotCount) {
  ASSERT_TRUE(relay::MigrateSchema(db_.url()).ok());
  InsertRow(db_.url(), "PaymentCompleted", "waiting for Kafka");
  auto oldest = [](InProcessRelay& relay) {
    return relay.registry().GetGauge("relay_outbox_oldest_age_seconds", "").Value();
  };
  {
    InProcessRelay relay(Options(db_.url(), absl::StrCat("127.0.0.1:", FreePort()), topic_, slot_));
    EXPECT_TRUE(WaitUntil([&] { return oldest(relay) >= 2; }, absl::Seconds(40)))
        << oldest(relay);
  }
  InProcessRelay relay(Options(db_.url(), KafkaBootstrap(), topic_, slot_));
  InsertRow(db_.url(), "RefundIssued", "no topic for it");
  EXPECT_TRUE(WaitUntil([&] { return SetAsideCount(relay, "no_topic") == 1; },
                        absl::Seconds(30)));
  EXPECT_TRUE(WaitUntil([&] { return OutboxRows(db_.url()) == 1; }, absl::Seconds(30)))
      << "the waiting row was not relayed";
  EXPECT_TRUE(WaitUntil([&] { return oldest(relay) == 0; }, absl::Seconds(30))) << oldest(relay);
  relay.Stop();
  DropSlot(db_.url(), slot_);
}

// A relay frozen (SIGSTOP) past wal_sender_timeout loses its walsender; a standby takes the
// slot over and relays what was written meanwhile. When the frozen relay resumes, it must not
// produce what was left buffered on its dead connection.
TEST(RelayFaultTest, FrozenRelayThatLostItsSlotDropsWhatItHadBuffered) {
  concert::testing::PrivatePostgres pg;
  {
    pqxx::connection c(pg.url());
    pqxx::nontransaction tx(c);
    tx.exec("ALTER SYSTEM SET wal_sender_timeout = '2s'");
    tx.exec("SELECT pg_reload_conf()");
  }
  ASSERT_TRUE(payment::MigrateSchema(pg.url()).ok());
  std::string topic = UniqueName("relay_payments"), slot = UniqueName("relay_slot");
  int port_a = FreePort(), port_b = FreePort();
  auto env_a = ChildEnv(pg.url(), topic, slot, port_a);
  ChildProcess a(BinaryPath("outbox-relay"), {}, env_a);
  ASSERT_TRUE(WaitUntil([&] { return MetricValue(port_a, "relay_active") == 1; },
                        absl::Seconds(30)))
      << a.ReadLog();
  ChildProcess b(BinaryPath("outbox-relay"), {}, ChildEnv(pg.url(), topic, slot, port_b));
  ASSERT_TRUE(WaitUntil([&] { return MetricValue(port_b, "relay_active") == 0; },
                        absl::Seconds(30)));

  ASSERT_EQ(::kill(a.pid(), SIGSTOP), 0);
  OutboxWriter writer(pg.url());
  std::vector<Event> written = writer.WriteTransaction(30, 10);  // sent to A's dead socket
  ASSERT_TRUE(WaitUntil([&] { return MetricValue(port_b, "relay_active") == 1; },
                        absl::Seconds(30)))
      << b.ReadLog();
  TopicReader reader(KafkaBootstrap(), topic);
  reader.ReadUntil(
      [&](const std::vector<Received>& r) { return DistinctEventIds(r).size() >= 30; },
      absl::Seconds(30));
  ASSERT_EQ(::kill(a.pid(), SIGCONT), 0);
  // Give A time to do whatever it does on waking up.
  EXPECT_TRUE(WaitUntil([&] { return MetricValue(port_a, "relay_stale_events_dropped_total") > 0; },
                        absl::Seconds(15)))
      << a.ReadLog();
  reader.ReadUntil([](const std::vector<Received>&) { return false; }, absl::Seconds(3));
  EXPECT_EQ(ExpectAllPresent(written, reader.records()), 0)
      << "the frozen relay produced what it had buffered";
  EXPECT_EQ(a.Stop(SIGTERM), 0);
  EXPECT_EQ(b.Stop(SIGTERM), 0);
  DropSlot(pg.url(), slot);
}

// A synchronous standby that reports the flush position a test chooses: a physical replication
// client (as pg_receivewal --synchronous is one), so that the primary's pg_stat_replication
// shows a standby exactly where the test needs it. Until Hold(), it reports all it received as
// flushed, so that the primary's commits do not wait for it.
class SteeredStandby {
 public:
  SteeredStandby(const std::string& url, const std::string& name) {
    conn_ = PQconnectdb(absl::StrCat(url, "?replication=true&application_name=", name).c_str());
    EXPECT_EQ(PQstatus(conn_), CONNECTION_OK) << PQerrorMessage(conn_);
    PGresult* system = PQexec(conn_, "IDENTIFY_SYSTEM");
    EXPECT_EQ(PQresultStatus(system), PGRES_TUPLES_OK) << PQerrorMessage(conn_);
    std::string start = PQgetvalue(system, 0, 2);  // xlogpos
    PQclear(system);
    EXPECT_TRUE(ParseLsn(start).ok()) << start;
    received_ = ParseLsn(start).value_or(0);
    PGresult* copy = PQexec(conn_, absl::StrCat("START_REPLICATION ", start).c_str());
    EXPECT_EQ(PQresultStatus(copy), PGRES_COPY_BOTH) << PQerrorMessage(conn_);
    PQclear(copy);
    thread_ = std::thread([this] { Run(); });
  }
  ~SteeredStandby() {
    stop_ = true;
    thread_.join();
    PQfinish(conn_);
  }
  // Reports `lsn` as flushed from now on, whatever arrives.
  void Hold(Lsn lsn) { held_ = lsn; }
  void Follow() { held_ = 0; }

 private:
  void Run() {
    while (!stop_) {
      PQconsumeInput(conn_);
      char* buf = nullptr;
      int n;
      while ((n = PQgetCopyData(conn_, &buf, /*async=*/1)) > 0) {
        absl::StatusOr<CopyMessage> m = ParseCopyMessage(absl::string_view(buf, n));
        if (m.ok()) {
          if (auto* x = std::get_if<XLogData>(&*m)) {
            received_ = std::max(received_, x->start + x->data.size());
          }
        }
        PQfreemem(buf);
      }
      Lsn held = held_;
      Lsn flushed = held != 0 ? held : received_;
      std::string status = EncodeStandbyStatus(flushed, flushed, flushed, PgNow(), false);
      PQputCopyData(conn_, status.data(), static_cast<int>(status.size()));
      PQflush(conn_);
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

  PGconn* conn_ = nullptr;
  Lsn received_ = 0;
  std::atomic<Lsn> held_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

std::string Text(pqxx::connection& c, const std::string& sql) {
  pqxx::nontransaction tx(c);
  return tx.exec1(sql)[0].as<std::string>();
}

// A standby that flushed past the start of a commit record but not to its end does not have
// the commit (Postgres' own commit waits for its end): relayed then, a failover to that
// standby would leave Telegram a message for a payment that does not exist.
TEST(RelaySyncStandbyTest, RelaysOnlyOnceTheStandbyFlushedTheWholeCommitRecord) {
  concert::testing::PrivatePostgres pg;
  ASSERT_TRUE(payment::MigrateSchema(pg.url()).ok());
  pqxx::connection c(pg.url());
  {
    pqxx::nontransaction tx(c);
    tx.exec("ALTER SYSTEM SET synchronous_standby_names = 'steered'");
    tx.exec("SELECT pg_reload_conf()");
    // Where each commit record ends, as logical decoding reports it.
    tx.exec("SELECT pg_create_logical_replication_slot('commit_probe', 'test_decoding')");
  }
  SteeredStandby standby(pg.url(), "steered");
  std::string topic = UniqueName("relay_payments"), slot = UniqueName("relay_slot");
  InProcessRelay relay(Options(pg.url(), KafkaBootstrap(), topic, slot));
  ASSERT_TRUE(WaitUntil(
      [&] { return relay.registry().GetGauge("relay_active", "").Value() == 1; },
      absl::Seconds(30)));

  absl::StatusOr<Lsn> before = ParseLsn(Text(c, "SELECT pg_current_wal_flush_lsn()::text"));
  ASSERT_TRUE(before.ok());
  standby.Hold(*before);
  std::string xid;
  {
    pqxx::work tx(c);
    // The commit returns without the standby, as if its confirmation were still on the way.
    tx.exec("SET LOCAL synchronous_commit = local");
    xid = tx.exec1("SELECT txid_current()::text")[0].as<std::string>();
    tx.exec_params(
        "INSERT INTO payment.outbox_events (event_id, aggregate_type, aggregate_id, event_type, "
        "payload) VALUES (gen_random_uuid(), 'Reservation', '1', 'PaymentCompleted', $1)",
        pqxx::binarystring(std::string("paid")));
    tx.commit();
  }
  std::string commit_end;
  {
    pqxx::nontransaction tx(c);
    commit_end = tx.exec_params1(
                       "SELECT lsn::text FROM pg_logical_slot_peek_changes('commit_probe', NULL, "
                       "NULL) WHERE xid::text = $1 AND data LIKE 'COMMIT%'",
                       xid)[0]
                     .as<std::string>();
  }
  absl::StatusOr<Lsn> end = ParseLsn(commit_end);
  ASSERT_TRUE(end.ok()) << commit_end;
  standby.Hold(*end - 1);  // past the commit record's start, short of its end

  TopicReader reader(KafkaBootstrap(), topic);
  reader.ReadUntil([](const std::vector<Received>&) { return false; }, absl::Seconds(3));
  EXPECT_TRUE(reader.records().empty())
      << "relayed a commit the synchronous standby had flushed only up to "
      << FormatLsn(*end - 1) << " of " << commit_end;
  standby.Follow();
  EXPECT_TRUE(reader.ReadUntil([](const std::vector<Received>& r) { return !r.empty(); },
                               absl::Seconds(30)))
      << "not relayed once the standby had the commit";
  relay.Stop();
  DropSlot(pg.url(), slot);
  DropSlot(pg.url(), "commit_probe");
}

}  // namespace
}  // namespace concert::relay
