// The failover test: the system on a three-node Kafka (each node a combined broker and
// controller, a controller quorum of three; topics created by the services with replication
// factor 3 and min.insync.replicas=2) and on a Postgres primary with a synchronous streaming
// standby, reached through a multi-host URL (target_session_attrs=read-write). Clients pay
// continuously (the fault test's load) while, in shuffled rounds, each kind of fault happens
// once a round:
//   - SIGKILL of the current leader of a partition of the payments topic, restarted later;
//   - a broker paused with SIGSTOP past the broker session timeout (9 s), then resumed;
//   - a rolling restart of all three (clean shutdown, each back in sync before the next);
//   - two brokers SIGKILLed at once (no majority of controllers, no min.insync.replicas:
//     producers must wait), both restarted;
//   - Postgres failover: SIGKILL of the primary, promotion of the standby, the old primary
//     copied afresh (pg_basebackup) as the new standby. The relay's slot does not exist on the
//     promoted server (PostgreSQL 15 has no failover slots): the relay creates it there and
//     re-queues what is still in the outbox.
// After each Kafka fault the test waits until every partition is back in sync, and after every
// fault until payments and notifications flow again (both bounded), so that each stall is the
// fault's own. Then the fault test's checker (payment_check.h) asserts the promise, and the
// summary gives, per fault, how long payments and notifications stalled. The topics the
// services created are checked with Kafka's own TopicCommand first: replication factor 3,
// min.insync.replicas=2.
//
// Two smaller tests on the same cluster and pair: a factor the cluster cannot place is refused
// at start; and a commit that only the primary had (its synchronous standby away) is never
// relayed, so no message announces a payment that the failover undid.
//
//   FAILOVER_TEST_DURATION   seconds of faults at least (default 0: one round only)
//   FAILOVER_TEST_ROUNDS     rounds of every kind of fault at least (default 1)
//   FAILOVER_TEST_SEED       the RNG seed (default: random, printed)
//   FAILOVER_TEST_CLIENTS    paying threads (default 2, each ~3 payments/s)
//   FAILOVER_TEST_KAFKA_PORT first of the six Kafka ports (default 19100)
//   FAILOVER_TEST_PG_PORT    first of the two Postgres ports (default 55460)
#include <signal.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <librdkafka/rdkafkacpp.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/kafka/cluster.h"
#include "tests/e2e/payment_check.h"
#include "tests/e2e/system.h"

namespace concert::e2e {
namespace {

using ::testing::HasSubstr;
using testing::KafkaCluster;
using testing::PostgresPair;
using testing::WaitUntil;

void Log(const std::string& line) { LogLine("failover", line); }

enum class Fault {
  kKillLeader,
  kPauseBroker,
  kRollingRestart,
  kTwoBrokersDown,
  kPostgresFailover,
};
constexpr int kFaultKinds = 5;

const char* FaultName(Fault fault) {
  switch (fault) {
    case Fault::kKillLeader: return "SIGKILL partition leader";
    case Fault::kPauseBroker: return "SIGSTOP broker past session";
    case Fault::kRollingRestart: return "rolling restart of 3 brokers";
    case Fault::kTwoBrokersDown: return "two brokers SIGKILLed";
    case Fault::kPostgresFailover: return "Postgres primary SIGKILL+promote";
  }
  return "?";
}

// What the cluster's metadata says about one partition.
struct PartitionState {
  int32_t partition = -1;
  int32_t leader = -1;  // node id, -1 when none
  size_t in_sync = 0;
};

// The partitions of `topic` as any reachable node reports them; empty when none answers.
std::vector<PartitionState> Partitions(const std::string& bootstrap, const std::string& topic) {
  // Quiet: a node that is down is the point of this test, not news.
  auto conf = kafka::MakeConf({{"bootstrap.servers", bootstrap}, {"log_level", "0"}});
  if (!conf.ok()) return {};
  std::string error;
  std::unique_ptr<RdKafka::Producer> client(RdKafka::Producer::create((*conf).get(), error));
  if (client == nullptr) return {};
  std::unique_ptr<RdKafka::Topic> handle(
      RdKafka::Topic::create(client.get(), topic, nullptr, error));
  RdKafka::Metadata* metadata = nullptr;
  if (handle == nullptr ||
      client->metadata(false, handle.get(), &metadata, 5000) != RdKafka::ERR_NO_ERROR) {
    return {};
  }
  std::unique_ptr<RdKafka::Metadata> owned(metadata);
  std::vector<PartitionState> out;
  for (const RdKafka::TopicMetadata* t : *metadata->topics()) {
    for (const RdKafka::PartitionMetadata* p : *t->partitions()) {
      out.push_back({p->id(), p->leader(), p->isrs()->size()});
    }
  }
  return out;
}

// True once every partition of every topic has a leader and all three replicas in sync.
bool WaitInSync(const KafkaCluster& cluster, const std::vector<std::string>& topics,
                absl::Duration timeout) {
  return WaitUntil(
      [&] {
        for (const std::string& topic : topics) {
          std::vector<PartitionState> partitions = Partitions(cluster.bootstrap(), topic);
          if (partitions.empty()) return false;
          for (const PartitionState& p : partitions) {
            if (p.leader < 0 || p.in_sync < KafkaCluster::kNodes) return false;
          }
        }
        return true;
      },
      timeout, absl::Seconds(1));
}

size_t AckedCount(const PaymentLoad& load) {
  size_t n = 0;
  for (const PayOutcome& o : load.Outcomes()) n += o.kind == PayOutcome::Kind::kAcked;
  return n;
}

// Kafka's own Java consumer (its ConsoleConsumer, with the notifiers' session timeout and
// heartbeat) in a group of its own, reading the payments topic through the faults: the
// reference for how long a consumer group stalls. bash stamps each record it prints with the
// time it arrived (EPOCHREALTIME, no fork per line); the tool flushes after every record.
class ReferenceConsumer {
 public:
  ReferenceConsumer(const std::string& bootstrap, const std::string& topic)
      : process_("/usr/bin/setsid",
                 {"bash", "-c",
                  absl::StrCat("trap 'kill -- -$$' TERM; ", testing::SourceRoot(),
                               "/scripts/kafka.sh run-class "
                               "org.apache.kafka.tools.consumer.ConsoleConsumer "
                               "--bootstrap-server ", bootstrap, " --topic ", topic,
                               " --group failover-java-reference "
                               "--consumer-property session.timeout.ms=20000 "
                               "--consumer-property heartbeat.interval.ms=1000 "
                               "--property print.value=false --property print.offset=true "
                               "| while IFS= read -r line; do echo \"read $EPOCHREALTIME\"; "
                               "done & wait")},
                 {}) {}

  // Stops it; when each record arrived.
  std::vector<absl::Time> Stop() {
    process_.Stop(SIGTERM, absl::Seconds(20));
    std::vector<absl::Time> reads;
    for (absl::string_view line : absl::StrSplit(process_.ReadLog(), '\n')) {
      double seconds = 0;
      if (absl::ConsumePrefix(&line, "read ") && absl::SimpleAtod(line, &seconds)) {
        reads.push_back(absl::FromUnixMicros(static_cast<int64_t>(seconds * 1e6)));
      }
    }
    return reads;
  }

 private:
  testing::ChildProcess process_;
};

class FailoverTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    int kafka_port = static_cast<int>(EnvInt("FAILOVER_TEST_KAFKA_PORT", 19100));
    int pg_port = static_cast<int>(EnvInt("FAILOVER_TEST_PG_PORT", 55460));
    kafka_ = new KafkaCluster(kafka_port);
    postgres_ = new PostgresPair(pg_port, pg_port + 1);
  }
  static void TearDownTestSuite() {
    delete kafka_;
    delete postgres_;
  }
  void SetUp() override {
    ASSERT_FALSE(HasFailure()) << "the Kafka cluster or the Postgres pair did not start";
  }

  // Every Kafka-speaking service creates its topics replicated like this.
  static std::map<std::string, std::string> Replicated() {
    return {{"KAFKA_TOPIC_REPLICATION_FACTOR", "3"}, {"KAFKA_TOPIC_MIN_INSYNC_REPLICAS", "2"}};
  }

  static KafkaCluster* kafka_;
  static PostgresPair* postgres_;
};
KafkaCluster* FailoverTest::kafka_ = nullptr;
PostgresPair* FailoverTest::postgres_ = nullptr;

TEST_F(FailoverTest, AFactorTheClusterCannotPlaceIsRefusedAtStart) {
  std::string dlq = testing::UniqueName("failover_impossible_dlq");
  std::string grpc_address = absl::StrCat("127.0.0.1:", testing::FreePort());
  testing::ChildProcess worker(
      testing::BinaryPath("retry-worker"), {},
      {{"DATABASE_URL", postgres_->url()},  // the retry-worker's schema, nothing else
       {"KAFKA_BOOTSTRAP_SERVERS", kafka_->bootstrap()},
       {"KAFKA_TOPIC_REPLICATION_FACTOR", "4"},
       {"KAFKA_GROUP_ID", testing::UniqueName("failover_impossible")},
       {"DLQ_TOPIC", dlq},
       {"GRPC_ADDRESS", grpc_address},
       {"METRICS_ADDRESS", absl::StrCat("127.0.0.1:", testing::FreePort())},
       {"ADMIN_TOKEN", "failover-test-admin"}});
  ASSERT_TRUE(WaitUntil([&] { return absl::StrContains(worker.ReadLog(), "Kafka refused"); },
                        absl::Seconds(60)))
      << worker.ReadLog();
  std::string log = worker.ReadLog();
  EXPECT_THAT(log, HasSubstr("replication factor")) << log;
  EXPECT_TRUE(worker.running());
  EXPECT_EQ(testing::HealthStatus(grpc_address), 2);
  // Kafka's own tool: the topic was not created with fewer replicas instead.
  EXPECT_THAT(kafka_->Describe(dlq), HasSubstr("does not exist"));
}

// A payment whose commit reached the primary but not the synchronous standby was never
// acknowledged (its client still waits); when the primary then dies and the standby takes
// over, it never happened. No message may announce it.
TEST_F(FailoverTest, NoMessageForACommitOnlyTheDeadPrimaryHad) {
  const std::string database = postgres_->CreateDatabase("failover_sync");
  const std::string url = postgres_->url(database);
  SystemOptions options{.database_url = url,
                        .kafka_bootstrap = kafka_->bootstrap(),
                        .users = 2,
                        .link_chats = true};
  options.relay_env = Replicated();
  options.notifier_env = Replicated();
  options.retry_env = Replicated();
  System system(options);
  absl::Status started = system.Start();
  ASSERT_TRUE(started.ok()) << started;
  const User& user = system.seeded().users[0];
  auto messages_for = [&](int64_t reservation) {
    std::map<int64_t, int> messages = system.MessagesByReservation();
    return messages.count(reservation) > 0 ? messages[reservation] : 0;
  };
  PaymentClient client(system.payment_address(), absl::Seconds(5), absl::Seconds(20));
  PayOutcome before = client.ReserveAndPay(user, system.NextSeat());
  ASSERT_EQ(before.kind, PayOutcome::Kind::kAcked) << before.message;
  ASSERT_TRUE(WaitUntil([&] { return messages_for(before.reservation_id) == 1; },
                        absl::Seconds(60)));

  // The standby goes away: the primary still writes each commit, and waits for the standby.
  v1::Reservation reservation;
  ASSERT_TRUE(client.Reserve(user, system.NextSeat(), &reservation).ok());
  const int old_primary = postgres_->primary();
  ASSERT_TRUE(postgres_->Stop(postgres_->standby()));
  PaymentClient impatient(system.payment_address(), absl::Seconds(3), absl::ZeroDuration());
  v1::Payment payment;
  grpc::Status paid = impatient.Pay(user, reservation.reservation_id(), &payment);
  // From here until the failover below restores a standby, only EXPECTs: the next test needs
  // the pair whole.
  EXPECT_FALSE(paid.ok()) << "acknowledged without the synchronous standby";
  EXPECT_EQ(QueryInt(postgres_->server_url(old_primary, database),
                     absl::StrCat("SELECT count(*) FROM payment.outbox_events WHERE "
                                  "aggregate_id = '", reservation.reservation_id(), "'")),
            0)
      << "visible before the standby confirmed it";
  // Time enough for the relay. (The notifiers cannot record a delivery either while the
  // standby is away: a relayed event would be sent after the failover, found below.)
  absl::SleepFor(absl::Seconds(8));
  EXPECT_EQ(messages_for(reservation.reservation_id()), 0);

  // The primary dies; the standby, which never had the payment, takes over.
  ASSERT_TRUE(postgres_->KillPrimary());
  ASSERT_TRUE(postgres_->Start(postgres_->standby()));
  ASSERT_TRUE(postgres_->PromoteStandby());
  ASSERT_TRUE(postgres_->RebuildStandby());
  EXPECT_EQ(QueryInt(url,
                     absl::StrCat("SELECT count(*) FROM payment.payments WHERE reservation_id = ",
                                  reservation.reservation_id())),
            0);
  PayOutcome after = client.ReserveAndPay(user, system.NextSeat());
  ASSERT_EQ(after.kind, PayOutcome::Kind::kAcked) << after.message;
  EXPECT_TRUE(WaitUntil([&] { return messages_for(after.reservation_id) == 1; },
                        absl::Seconds(90)));
  EXPECT_EQ(messages_for(reservation.reservation_id()), 0)
      << "a message for a payment that never happened: the relay sent on a commit the "
         "synchronous standby did not have";
  EXPECT_EQ(messages_for(before.reservation_id), 1);
}

TEST_F(FailoverTest, OneMessagePerPaymentThroughBrokerAndPrimaryFailures) {
  const int64_t duration_s = EnvInt("FAILOVER_TEST_DURATION", 0);
  const int64_t min_rounds = std::max<int64_t>(1, EnvInt("FAILOVER_TEST_ROUNDS", 1));
  const uint64_t seed = static_cast<uint64_t>(
      EnvInt("FAILOVER_TEST_SEED", static_cast<int64_t>(std::random_device{}() & 0x7fffffff)));
  const int clients =
      static_cast<int>(std::clamp<int64_t>(EnvInt("FAILOVER_TEST_CLIENTS", 2), 1, 8));
  Log(absl::StrCat("seed ", seed, " (FAILOVER_TEST_SEED to repeat), at least ", duration_s,
                   " s and ", min_rounds, " rounds of faults, ", clients, " clients"));
  std::mt19937_64 rng(seed);
  auto uniform_ms = [&](int lo, int hi) {
    return absl::Milliseconds(std::uniform_int_distribution<int>(lo, hi)(rng));
  };
  auto random_node = [&] { return static_cast<int>(rng() % KafkaCluster::kNodes); };

  const std::string url = postgres_->url(postgres_->CreateDatabase("failover"));
  SystemOptions options = PayingSystemOptions(url, kafka_->bootstrap());
  options.poor_user_payments = 3;
  options.seats = static_cast<int>((duration_s + 300 * min_rounds) * 4 * clients + 2000);
  options.relay_env = Replicated();
  options.notifier_env = Replicated();
  options.retry_env = Replicated();
  options.retry_env["RETRY_MAX_ATTEMPTS"] = "8";
  options.retry_env["RETRY_BACKOFF_CAP"] = "5s";
  System system(options);
  absl::Status started = system.Start();
  ASSERT_TRUE(started.ok()) << started;
  Log(absl::StrCat("system up; logs: ", system.LogPaths()));

  // Issue 15's leftover, seen by Kafka's own tool: the topics the services created.
  const std::vector<std::string> topics = {system.topic(), system.dlq_topic()};
  for (const std::string& topic : topics) {
    std::string described = kafka_->Describe(topic);
    EXPECT_THAT(described, HasSubstr("ReplicationFactor: 3")) << described;
    EXPECT_THAT(described, HasSubstr("min.insync.replicas=2")) << described;
  }
  ASSERT_TRUE(WaitInSync(*kafka_, topics, absl::Seconds(60)));

  ReferenceConsumer reference(kafka_->bootstrap(), system.topic());
  PaymentLoad load(system, clients);
  std::map<Fault, int> faults;
  std::vector<FaultSpan> spans;
  std::vector<std::string> unexpected_exits, not_back_in_sync, not_flowing;
  absl::Time faults_end = absl::Now() + absl::Seconds(duration_s);
  std::vector<Fault> bag;
  int rounds = 0;
  absl::SleepFor(uniform_ms(3000, 6000));
  while (true) {
    if (bag.empty()) {
      if (rounds >= min_rounds && absl::Now() >= faults_end) break;
      ++rounds;
      for (int k = 0; k < kFaultKinds; ++k) bag.push_back(static_cast<Fault>(k));
      std::shuffle(bag.begin(), bag.end(), rng);
    }
    Fault fault = bag.back();
    bag.pop_back();
    ++faults[fault];
    spans.push_back({FaultName(fault), absl::Now(), absl::InfiniteFuture()});
    switch (fault) {
      case Fault::kKillLeader: {
        std::vector<PartitionState> partitions = Partitions(kafka_->bootstrap(), system.topic());
        int partition = -1, node = random_node();
        if (!partitions.empty()) {
          const PartitionState& chosen = partitions[rng() % partitions.size()];
          partition = chosen.partition;
          if (chosen.leader > 0) node = chosen.leader - 1;
        }
        Log(absl::StrCat(FaultName(fault), ": node ", kafka_->node_id(node), " (partition ",
                         partition, ")"));
        EXPECT_TRUE(kafka_->Kill(node));
        absl::SleepFor(uniform_ms(2000, 8000));
        EXPECT_TRUE(kafka_->Start(node)) << "node " << kafka_->node_id(node);
        break;
      }
      case Fault::kPauseBroker: {
        int node = random_node();
        Log(absl::StrCat(FaultName(fault), ": node ", kafka_->node_id(node)));
        EXPECT_TRUE(kafka_->Pause(node));
        absl::SleepFor(uniform_ms(12000, 16000));
        EXPECT_TRUE(kafka_->Resume(node));
        break;
      }
      case Fault::kRollingRestart:
        Log(FaultName(fault));
        for (int node = 0; node < KafkaCluster::kNodes; ++node) {
          EXPECT_TRUE(kafka_->Stop(node)) << "node " << kafka_->node_id(node);
          EXPECT_TRUE(kafka_->Start(node)) << "node " << kafka_->node_id(node);
          if (!WaitInSync(*kafka_, topics, absl::Seconds(120))) {
            not_back_in_sync.push_back(absl::StrCat("rolling restart, node ", node));
          }
        }
        break;
      case Fault::kTwoBrokersDown: {
        int spared = random_node();
        int a = (spared + 1) % KafkaCluster::kNodes, b = (spared + 2) % KafkaCluster::kNodes;
        Log(absl::StrCat(FaultName(fault), ": nodes ", kafka_->node_id(a), " and ",
                         kafka_->node_id(b)));
        EXPECT_TRUE(kafka_->Kill(a));
        EXPECT_TRUE(kafka_->Kill(b));
        absl::SleepFor(uniform_ms(3000, 10000));
        bool a_up = false;
        std::thread starting([&] { a_up = kafka_->Start(a); });
        EXPECT_TRUE(kafka_->Start(b)) << "node " << kafka_->node_id(b);
        starting.join();
        EXPECT_TRUE(a_up) << "node " << kafka_->node_id(a);
        break;
      }
      case Fault::kPostgresFailover: {
        Log(absl::StrCat(FaultName(fault), ": primary was server ", postgres_->primary()));
        EXPECT_TRUE(postgres_->KillPrimary());
        absl::SleepFor(uniform_ms(1000, 3000));  // an operator's or a manager's reaction time
        EXPECT_TRUE(postgres_->PromoteStandby());
        EXPECT_TRUE(postgres_->RebuildStandby()) << "old primary not rebuilt as the standby";
        break;
      }
    }
    if (fault != Fault::kPostgresFailover && !WaitInSync(*kafka_, topics, absl::Seconds(120))) {
      not_back_in_sync.push_back(FaultName(fault));
      Log(absl::StrCat("NOT BACK IN SYNC after ", FaultName(fault)));
    }
    spans.back().end = absl::Now();
    // The next fault only once payments and notifications flow again, so that each stall is
    // this fault's own.
    size_t acked = AckedCount(load), delivered = system.telegram().messages().size();
    bool flowing = WaitUntil(
        [&] {
          return AckedCount(load) > acked && system.telegram().messages().size() > delivered;
        },
        absl::Seconds(180), absl::Milliseconds(200));
    if (!flowing) not_flowing.push_back(FaultName(fault));
    Log(absl::StrCat(FaultName(fault), " done in ",
                     absl::ToInt64Seconds(spans.back().end - spans.back().start), " s, ",
                     flowing ? "flowing again after " : "NOT FLOWING AGAIN after ",
                     absl::ToInt64Seconds(absl::Now() - spans.back().end), " s more"));
    for (const std::string& dead : system.CheckUnexpectedExits()) {
      Log(absl::StrCat("UNEXPECTED EXIT: ", dead));
      unexpected_exits.push_back(dead);
    }
    absl::SleepFor(uniform_ms(2000, 6000));
  }
  Log("faults stop; clients stop");
  load.Stop();
  for (const std::string& dead : system.CheckUnexpectedExits()) {
    Log(absl::StrCat("UNEXPECTED EXIT: ", dead));
    unexpected_exits.push_back(dead);
  }
  absl::Time faults_stopped = absl::Now();

  PromiseCheck check = CheckPromise(system, url, load.Outcomes());
  std::vector<absl::Time> reference_reads = reference.Stop();
  Log(absl::StrCat("Kafka's Java consumer read ", reference_reads.size(), " records"));
  EXPECT_FALSE(reference_reads.empty()) << "the reference consumer read nothing";
  std::vector<Stall> stalls =
      MeasureStalls(spans, load.Outcomes(), system, faults_stopped, &reference_reads);

  std::string faults_line;
  int total_faults = 0;
  for (int k = 0; k < kFaultKinds; ++k) {
    Fault f = static_cast<Fault>(k);
    absl::StrAppend(&faults_line, "\n  ", absl::StrFormat("%-36s %d", FaultName(f), faults[f]));
    total_faults += faults[f];
  }
  std::ostringstream summary;
  summary << "\n=================== FAILOVER TEST SUMMARY ==================\n"
          << "seed " << seed << ", " << rounds << " rounds of faults in "
          << absl::ToInt64Seconds(faults_stopped - spans.front().start) << " s, " << clients
          << " clients; Kafka: 3 combined broker+controller nodes, RF 3, min.insync 2; "
          << "Postgres: primary + synchronous standby\n"
          << "faults (" << total_faults << "):" << faults_line << "\n"
          << check.Summary()
          << "unexpected service exits:      " << unexpected_exits.size() << "\n"
          << "Kafka not back in sync:        " << not_back_in_sync.size() << "\n"
          << "not flowing again in 3 min:    " << not_flowing.size() << "\n"
          << StallReport(spans, stalls, spans.front().start)
          << "============================================================\n";
  std::cout << summary.str() << std::flush;

  check.ExpectKept();
  EXPECT_TRUE(unexpected_exits.empty()) << unexpected_exits.front();
  EXPECT_TRUE(not_back_in_sync.empty()) << not_back_in_sync.front();
  EXPECT_TRUE(not_flowing.empty()) << not_flowing.front();
  if (HasFailure()) {
    std::cout << "service logs: " << system.LogPaths() << "\nKafka and Postgres state: "
              << kafka_->dir() << " " << postgres_->dir() << std::endl;
  }
}

}  // namespace
}  // namespace concert::e2e
