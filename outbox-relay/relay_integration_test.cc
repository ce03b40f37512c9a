// outbox-relay against the real Postgres (logical replication) and the real Kafka broker.
// Each test has its own scratch database (so its own publication and slot) and its own topics.
// Fault tests use a private Postgres or Kafka, never the shared ones.
#include "outbox-relay/test_util.h"

namespace concert::relay {
namespace {

using namespace ::concert::relay::testing;  // NOLINT: the helpers of test_util.h

TEST_F(RelayTest, ThousandPaymentsArriveWithKeyValueHeadersInCommitOrderAndOutboxEmpties) {
  std::vector<Event> written;
  {
    InProcessRelay relay(Options(db_.url(), KafkaBootstrap(), topic_, slot_));
    // Rows written before the slot exists are re-queued, but not in order with rows that
    // raced the slot's creation: start writing once the relay streams.
    ASSERT_TRUE(WaitUntil(
        [&] { return relay.registry().GetGauge("relay_active", "").Value() == 1; },
        absl::Seconds(30)));
    OutboxWriter writer(db_.url());
    for (int i = 0; i < 1000; ++i) {
      std::vector<Event> one = writer.WriteTransaction(1, 50);
      written.insert(written.end(), one.begin(), one.end());
    }
    TopicReader reader(KafkaBootstrap(), topic_);
    ASSERT_TRUE(reader.ReadUntil(
        [&](const std::vector<Received>& r) { return DistinctEventIds(r).size() >= 1000; },
        absl::Seconds(60)));
    ExpectAllPresent(written, reader.records());

    std::map<std::string, const Event*> by_id;
    for (const Event& e : written) by_id[e.event_id] = &e;
    for (const Received& r : reader.records()) {
      const Event* e = by_id.at(r.headers.at("event_id"));
      EXPECT_EQ(r.key, std::to_string(e->reservation_id));
      EXPECT_EQ(r.value, e->payload);
      EXPECT_EQ(r.headers.at("event_type"), "PaymentCompleted");
      EXPECT_EQ(r.headers.at("content-type"),
                "application/x-protobuf; messageType=concert.events.v1.PaymentCompleted");
      EXPECT_EQ(r.headers.at("traceparent"), kTraceparent);
    }
    ExpectCommitOrderPerKey(reader.records());

    EXPECT_TRUE(WaitUntil([&] { return OutboxRows(db_.url()) == 0; }, absl::Seconds(30)))
        << OutboxRows(db_.url()) << " rows left in the outbox";
    EXPECT_GE(relay.registry().GetCounter("relay_events_total", "").Value(), 1000);
  }
  DropSlot(db_.url(), slot_);
}

TEST_F(RelayTest, OneTransactionWithTenThousandRowsIsRelayedCompletely) {
  {
    InProcessRelay relay(Options(db_.url(), KafkaBootstrap(), topic_, slot_));
    ASSERT_TRUE(WaitUntil(
        [&] {
          return relay.registry().GetGauge("relay_active", "").Value() == 1;
        },
        absl::Seconds(30)));
    OutboxWriter writer(db_.url());
    std::vector<Event> written = writer.WriteTransaction(10000, 300);
    absl::Time committed = absl::Now();
    TopicReader reader(KafkaBootstrap(), topic_);
    ASSERT_TRUE(reader.ReadUntil(
        [&](const std::vector<Received>& r) { return DistinctEventIds(r).size() >= 10000; },
        absl::Seconds(90)));
    absl::Duration took = reader.records().back().received_at - committed;
    std::printf("[relay] one transaction of 10000 rows: all consumed %.2f s after commit "
                "(%.0f events/s, including the test consumer)\n",
                absl::ToDoubleSeconds(took), 10000 / absl::ToDoubleSeconds(took));
    ExpectAllPresent(written, reader.records());
    ExpectCommitOrderPerKey(reader.records());
    EXPECT_TRUE(WaitUntil([&] { return OutboxRows(db_.url()) == 0; }, absl::Seconds(30)));
  }
  DropSlot(db_.url(), slot_);
}

TEST_F(RelayTest, QuietOutboxBusyDatabaseKeepsTheSlotMoving) {
  {
    InProcessRelay relay(Options(db_.url(), KafkaBootstrap(), topic_, slot_));
    OutboxWriter writer(db_.url());
    std::vector<Event> one = writer.WriteTransaction(1, 1);
    TopicReader reader(KafkaBootstrap(), topic_);
    ASSERT_TRUE(reader.ReadUntil([](const std::vector<Received>& r) { return r.size() >= 1; },
                                 absl::Seconds(30)));
    // Other tables write ~tens of MB of WAL; the outbox gets nothing.
    {
      pqxx::connection c(db_.url());
      pqxx::nontransaction tx(c);
      tx.exec("CREATE TABLE busy (id bigserial PRIMARY KEY, filler text)");
      for (int i = 0; i < 5; ++i) {
        tx.exec("INSERT INTO busy (filler) SELECT repeat('x', 200) FROM generate_series(1, 20000)");
      }
    }
    std::string after_busy_sql = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn";
    int64_t busy_end = Scalar(db_.url(), after_busy_sql);
    std::string confirmed_sql = absl::StrCat(
        "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots "
        "WHERE slot_name = '", slot_, "'");
    std::string restart_sql = absl::StrCat(
        "SELECT (restart_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots "
        "WHERE slot_name = '", slot_, "'");
    EXPECT_TRUE(WaitUntil([&] { return Scalar(db_.url(), confirmed_sql) >= busy_end; },
                          absl::Seconds(30)))
        << "confirmed_flush_lsn stayed at " << Scalar(db_.url(), confirmed_sql) << " < "
        << busy_end;
    // restart_lsn follows once the server decoded a running-transactions record after the
    // busy writes (a checkpoint writes one) and we confirmed past it.
    Scalar(db_.url(), "SELECT 1 FROM (SELECT txid_current()) t");
    { pqxx::connection c(db_.url()); pqxx::nontransaction tx(c); tx.exec("CHECKPOINT"); }
    EXPECT_TRUE(WaitUntil(
        [&] {
          Scalar(db_.url(), "SELECT txid_current()");  // a little WAL to make the server send
          return Scalar(db_.url(), restart_sql) >= busy_end;
        },
        absl::Seconds(60)))
        << "restart_lsn stayed at " << Scalar(db_.url(), restart_sql) << " < " << busy_end;
    std::printf("[relay] quiet outbox: busy writes ended at %lld, slot confirmed %lld, "
                "restart %lld\n", static_cast<long long>(busy_end),
                static_cast<long long>(Scalar(db_.url(), confirmed_sql)),
                static_cast<long long>(Scalar(db_.url(), restart_sql)));
  }
  DropSlot(db_.url(), slot_);
}

// Keeps writing small transactions until told to stop; keeps what committed.
class BackgroundWriter {
 public:
  BackgroundWriter(std::string url, int per_tx, absl::Duration pause)
      : writer_(std::move(url)) {
    thread_ = std::thread([this, per_tx, pause] {
      while (!stop_.load()) {
        try {
          std::vector<Event> got = writer_.WriteTransaction(per_tx, 40);
          std::lock_guard lock(mu_);
          written_.insert(written_.end(), got.begin(), got.end());
        } catch (const std::exception&) {
          // Postgres down (or the commit's outcome unknown): such events may or may not
          // exist; only committed ones are expected.
          writer_.Reset();
          absl::SleepFor(absl::Milliseconds(200));
        }
        absl::SleepFor(pause);
      }
    });
  }
  ~BackgroundWriter() { Stop(); }
  std::vector<Event> Stop() {
    if (thread_.joinable()) {
      stop_ = true;
      thread_.join();
    }
    std::lock_guard lock(mu_);
    return written_;
  }
  size_t count() {
    std::lock_guard lock(mu_);
    return written_.size();
  }

 private:
  OutboxWriter writer_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<Event> written_;
  std::thread thread_;
};

TEST_F(RelayTest, KillNineMidStreamThenRestartLosesNothing) {
  int metrics_port = FreePort();
  auto env = ChildEnv(db_.url(), topic_, slot_, metrics_port);
  auto relay = std::make_unique<ChildProcess>(BinaryPath("outbox-relay"),
                                              std::vector<std::string>{}, env);
  ASSERT_TRUE(WaitUntil([&] { return MetricValue(metrics_port, "relay_active") == 1; },
                        absl::Seconds(30)))
      << relay->ReadLog();
  BackgroundWriter writer(db_.url(), 5, absl::Milliseconds(2));
  ASSERT_TRUE(WaitUntil([&] { return writer.count() >= 2000; }, absl::Seconds(60)));
  relay->Stop(SIGKILL);
  ASSERT_TRUE(WaitUntil([&] { return writer.count() >= 3000; }, absl::Seconds(60)));
  relay = std::make_unique<ChildProcess>(BinaryPath("outbox-relay"), std::vector<std::string>{},
                                         env);
  std::vector<Event> written = writer.Stop();
  TopicReader reader(KafkaBootstrap(), topic_);
  std::set<std::string> want;
  for (const Event& e : written) want.insert(e.event_id);
  reader.ReadUntil(
      [&](const std::vector<Received>& r) {
        std::set<std::string> got = DistinctEventIds(r);
        return std::includes(got.begin(), got.end(), want.begin(), want.end());
      },
      absl::Seconds(60));
  ExpectAllPresent(written, reader.records());
  EXPECT_TRUE(WaitUntil([&] { return OutboxRows(db_.url()) == 0; }, absl::Seconds(30)));
  EXPECT_EQ(relay->Stop(SIGTERM), 0) << relay->ReadLog();
  DropSlot(db_.url(), slot_);
}

TEST_F(RelayTest, StandbyTakesOverWhenTheActiveRelayDies) {
  int port_a = FreePort(), port_b = FreePort();
  auto a = std::make_unique<ChildProcess>(BinaryPath("outbox-relay"), std::vector<std::string>{},
                                          ChildEnv(db_.url(), topic_, slot_, port_a));
  ASSERT_TRUE(WaitUntil([&] { return MetricValue(port_a, "relay_active") == 1; },
                        absl::Seconds(30)))
      << a->ReadLog();
  ChildProcess b(BinaryPath("outbox-relay"), {}, ChildEnv(db_.url(), topic_, slot_, port_b));
  ASSERT_TRUE(WaitUntil([&] { return MetricValue(port_b, "relay_active") == 0; },
                        absl::Seconds(30)));
  absl::SleepFor(absl::Seconds(2));
  EXPECT_EQ(MetricValue(port_b, "relay_active"), 0) << "the standby must not stream";
  EXPECT_NE(b.ReadLog().find("standby"), std::string::npos) << b.ReadLog();

  OutboxWriter writer(db_.url());
  std::vector<Event> written = writer.WriteTransaction(100, 10);
  a->Stop(SIGKILL);
  std::vector<Event> more = writer.WriteTransaction(100, 10);
  written.insert(written.end(), more.begin(), more.end());
  EXPECT_TRUE(WaitUntil([&] { return MetricValue(port_b, "relay_active") == 1; },
                        absl::Seconds(30)))
      << b.ReadLog();
  TopicReader reader(KafkaBootstrap(), topic_);
  reader.ReadUntil(
      [&](const std::vector<Received>& r) { return DistinctEventIds(r).size() >= 200; },
      absl::Seconds(30));
  ExpectAllPresent(written, reader.records());
  EXPECT_EQ(b.Stop(SIGTERM), 0);
  DropSlot(db_.url(), slot_);
}

TEST(RelayFaultTest, KafkaStoppedAndRestartedMidStreamLosesNothing) {
  ScratchDatabase db("relay_kafka");
  ASSERT_TRUE(payment::MigrateSchema(db.url()).ok());
  concert::testing::PrivateKafka kafka;
  std::string topic = UniqueName("relay_payments"), slot = UniqueName("relay_slot");
  {
    RelayOptions o = Options(db.url(), kafka.bootstrap(), topic, slot);
    // Short, so that the outage outlasts it: deliveries fail and the stream is replayed.
    o.kafka_message_timeout = absl::Seconds(5);
    o.kafka_stall_threshold = absl::Seconds(2);
    InProcessRelay relay(o);
    ASSERT_TRUE(WaitUntil(
        [&] { return relay.registry().GetGauge("relay_active", "").Value() == 1; },
        absl::Seconds(60)));
    BackgroundWriter writer(db.url(), 5, absl::Milliseconds(5));
    ASSERT_TRUE(WaitUntil([&] { return writer.count() >= 500; }, absl::Seconds(30)));
    ASSERT_TRUE(kafka.Stop());
    absl::SleepFor(absl::Seconds(10));
    EXPECT_EQ(relay.registry().GetGauge("relay_kafka_up", "").Value(), 0);
    // One retry: on this shared 2-core machine a broker start occasionally fails at once.
    ASSERT_TRUE(kafka.Start() || kafka.Start());
    size_t before = writer.count();
    ASSERT_TRUE(WaitUntil([&] { return writer.count() >= before + 500; }, absl::Seconds(60)));
    std::vector<Event> written = writer.Stop();
    TopicReader reader(kafka.bootstrap(), topic);
    std::set<std::string> want;
    for (const Event& e : written) want.insert(e.event_id);
    reader.ReadUntil(
        [&](const std::vector<Received>& r) {
          std::set<std::string> got = DistinctEventIds(r);
          return std::includes(got.begin(), got.end(), want.begin(), want.end());
        },
        absl::Seconds(60));
    ExpectAllPresent(written, reader.records());
    std::printf("[relay] delivery errors during the outage: %.0f\n",
                relay.registry().GetCounter("relay_delivery_errors_total", "").Value());
  }
  DropSlot(db.url(), slot);
}

TEST(RelayFaultTest, PostgresRestartedMidStreamLosesNothing) {
  concert::testing::PrivatePostgres pg;
  ASSERT_TRUE(payment::MigrateSchema(pg.url()).ok());
  std::string topic = UniqueName("relay_payments"), slot = UniqueName("relay_slot");
  {
    InProcessRelay relay(Options(pg.url(), KafkaBootstrap(), topic, slot));
    ASSERT_TRUE(WaitUntil(
        [&] { return relay.registry().GetGauge("relay_active", "").Value() == 1; },
        absl::Seconds(30)));
    BackgroundWriter writer(pg.url(), 5, absl::Milliseconds(5));
    ASSERT_TRUE(WaitUntil([&] { return writer.count() >= 500; }, absl::Seconds(30)));
    ASSERT_TRUE(pg.Stop(/*immediate=*/true));
    absl::SleepFor(absl::Seconds(3));
    EXPECT_EQ(relay.registry().GetGauge("relay_active", "").Value(), 0);
    ASSERT_TRUE(pg.Start());
    size_t before = writer.count();
    ASSERT_TRUE(WaitUntil([&] { return writer.count() >= before + 1000; }, absl::Seconds(60)));
    std::vector<Event> written = writer.Stop();
    TopicReader reader(KafkaBootstrap(), topic);
    std::set<std::string> want;
    for (const Event& e : written) want.insert(e.event_id);
    reader.ReadUntil(
        [&](const std::vector<Received>& r) {
          std::set<std::string> got = DistinctEventIds(r);
          return std::includes(got.begin(), got.end(), want.begin(), want.end());
        },
        absl::Seconds(60));
    ExpectAllPresent(written, reader.records());
    EXPECT_TRUE(WaitUntil([&] { return OutboxRows(pg.url()) == 0; }, absl::Seconds(30)));
  }
  DropSlot(pg.url(), slot);
}

// Not a test: measures throughput and latency for the report. Run with
//   relay_integration_test --gtest_also_run_disabled_tests --gtest_filter='*Measure*'
TEST_F(RelayTest, DISABLED_MeasureThroughputAndLatency) {
  RelayOptions o = Options(db_.url(), KafkaBootstrap(), topic_, slot_);
  {
    // Create the slot, then stop: the backlog is written while no relay runs.
    InProcessRelay relay(o);
    ASSERT_TRUE(WaitUntil(
        [&] { return relay.registry().GetGauge("relay_active", "").Value() == 1; },
        absl::Seconds(30)));
  }
  OutboxWriter writer(db_.url());
  std::vector<Event> backlog;
  for (int i = 0; i < 10000; ++i) {
    std::vector<Event> one = writer.WriteTransaction(1, 300);
    backlog.insert(backlog.end(), one.begin(), one.end());
  }
  TopicReader reader(KafkaBootstrap(), topic_);
  reader.ReadUntil([](const std::vector<Received>& r) { return false; }, absl::Seconds(2));
  absl::Time start = absl::Now();
  InProcessRelay relay(o);
  ASSERT_TRUE(WaitUntil(
      [&] { return relay.registry().GetCounter("relay_events_total", "").Value() >= 10000; },
      absl::Seconds(120), absl::Milliseconds(5)));
  double secs = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf("[measure] backlog of 10000 single-row transactions: %.2f s from relay start to "
              "all acknowledged = %.0f events/s\n",
              secs, 10000 / secs);

  // Steady rate: 200 commits/s, one event each, for 10 s; latency = commit returned ->
  // record consumed by this test.
  std::map<std::string, absl::Time> committed_at;
  // The reader consumes on its own thread while the writes go on (it owns its records).
  std::thread consume([&] {
    reader.ReadUntil(
        [&](const std::vector<Received>& r) { return DistinctEventIds(r).size() >= 12000; },
        absl::Seconds(60));
  });
  absl::Time next = absl::Now();
  for (int i = 0; i < 2000; ++i) {
    absl::SleepFor(next - absl::Now());
    next += absl::Milliseconds(5);
    std::vector<Event> one = writer.WriteTransaction(1, 300);
    committed_at[one[0].event_id] = absl::Now();
  }
  consume.join();
  std::vector<double> ms;
  for (const Received& r : reader.records()) {
    auto it = committed_at.find(r.headers.at("event_id"));
    if (it != committed_at.end()) ms.push_back(absl::ToDoubleMilliseconds(r.received_at - it->second));
  }
  std::sort(ms.begin(), ms.end());
  ASSERT_FALSE(ms.empty());
  std::printf("[measure] steady 200 events/s, %zu events: commit->consumed p50 %.1f ms, "
              "p99 %.1f ms, max %.1f ms\n",
              ms.size(), ms[ms.size() / 2], ms[ms.size() * 99 / 100], ms.back());
  relay.Stop();
  DropSlot(db_.url(), slot_);
}

}  // namespace
}  // namespace concert::relay
