// Production connections on loopback: a Kafka of the test's own with a SASL_SSL and an
// mTLS listener, and a Postgres with TLS on, certificates made by scripts/tls.sh at test time.
// What a user notices: payments carried end to end over them with each SASL mechanism (PLAIN,
// SCRAM-SHA-256, SCRAM-SHA-512: the SCRAM users made by Kafka's own ConfigCommand, see
// scripts/kafka.sh); a wrong password, an untrusted CA or a missing client certificate give one
// clear line and health NOT_SERVING, the process still up; topics get the configured
// replication, and a factor the cluster cannot satisfy is refused.
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/testing/environment.h"
#include "tests/e2e/system.h"

namespace concert::e2e {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::BinaryPath;
using testing::ChildProcess;
using testing::FreePort;
using testing::PrivateKafka;
using testing::PrivatePostgres;
using testing::UniqueName;
using testing::WaitUntil;

constexpr char kRefusedLine[] = "Kafka refused this service";

// One Kafka and one Postgres for every test of this file (the fixture's and the parameterized
// suite's alike), started once.
class SecureServers : public ::testing::Environment {
 public:
  void SetUp() override;
  void TearDown() override;
};

class SecureConnectionsTest : public ::testing::Test {
 protected:
  friend class SecureServers;

  // Verifies the server's certificate against the test CA, and its name (127.0.0.1).
  static std::string TlsDatabaseUrl() {
    return absl::StrCat(postgres_->url(), "?sslmode=verify-full&sslrootcert=",
                        postgres_->tls_ca_file());
  }
  static std::string Tls(const std::string& file) { return kafka_->tls_dir() + "/" + file; }

  // SASL_SSL settings of a service with the broker's user (PLAIN, SCRAM-SHA-256 or
  // SCRAM-SHA-512; SCRAM against Kafka 4 needs librdkafka 2.6.1 or later, librdkafka#4895).
  static std::map<std::string, std::string> SaslSsl(const std::string& mechanism) {
    return {{"KAFKA_SECURITY_PROTOCOL", "SASL_SSL"},
            {"KAFKA_SASL_MECHANISM", mechanism},
            {"KAFKA_SASL_USERNAME", PrivateKafka::kSaslUser},
            {"KAFKA_SASL_PASSWORD", PrivateKafka::kSaslPassword},
            {"KAFKA_SSL_CA_FILE", Tls("ca.pem")}};
  }

  static PrivateKafka* kafka_;
  static PrivatePostgres* postgres_;
};
PrivateKafka* SecureConnectionsTest::kafka_ = nullptr;
PrivatePostgres* SecureConnectionsTest::postgres_ = nullptr;

void SecureServers::SetUp() {
  SecureConnectionsTest::kafka_ = new PrivateKafka(PrivateKafka::Listeners::kSecured);
  SecureConnectionsTest::postgres_ = new PrivatePostgres(PrivatePostgres::Tls::kOn);
}
void SecureServers::TearDown() {
  delete SecureConnectionsTest::kafka_;
  delete SecureConnectionsTest::postgres_;
}
[[maybe_unused]] ::testing::Environment* const kSecureServers =
    ::testing::AddGlobalTestEnvironment(new SecureServers);

// The payments test once per SASL mechanism of the relay and the notifier.
class SecurePaymentsTest : public SecureConnectionsTest,
                           public ::testing::WithParamInterface<std::string> {};

int CountLines(const std::string& log, const std::string& needle) {
  int n = 0;
  for (absl::string_view line : absl::StrSplit(log, '\n')) n += absl::StrContains(line, needle);
  return n;
}

// Kafka's own TopicCommand, --describe of one topic through the PLAINTEXT listener.
std::string DescribeTopic(const std::string& bootstrap, const std::string& topic) {
  return testing::RunCommandCapturing(
             absl::StrCat(testing::SourceRoot(),
                          "/scripts/kafka.sh run-class org.apache.kafka.tools.TopicCommand "
                          "--bootstrap-server ",
                          bootstrap, " --describe --topic ", topic, " 2>&1"))
      .out;
}

TEST_P(SecurePaymentsTest, PaymentsTravelOverSaslSslAndMutualTlsKafkaAndTlsPostgres) {
  const std::string& mechanism = GetParam();
  std::string password_file = Tls("sasl-password");
  ASSERT_EQ(testing::RunCommand(absl::StrCat("printf '%s\\n' '", PrivateKafka::kSaslPassword,
                                             "' > ", password_file)),
            0);
  SystemOptions options{.database_url = TlsDatabaseUrl(),
                        .kafka_bootstrap = kafka_->sasl_ssl_bootstrap(),
                        .users = 2,
                        .link_chats = true};
  options.relay_env = SaslSsl(mechanism);
  options.notifier_env = SaslSsl(mechanism);
  options.notifier_env.erase("KAFKA_SASL_PASSWORD");
  options.notifier_env["KAFKA_SASL_PASSWORD_FILE"] = password_file;
  // The retry-worker on the listener that demands a client certificate.
  options.retry_env = {{"KAFKA_BOOTSTRAP_SERVERS", kafka_->mtls_bootstrap()},
                       {"KAFKA_SECURITY_PROTOCOL", "SSL"},
                       {"KAFKA_SSL_CA_FILE", Tls("ca.pem")},
                       {"KAFKA_SSL_CERT_FILE", Tls("client.pem")},
                       {"KAFKA_SSL_KEY_FILE", Tls("client.key")}};
  System system(options);
  absl::Status started = system.Start();
  ASSERT_TRUE(started.ok()) << started << "\nlogs: " << system.LogPaths();

  PaymentClient client(system.payment_address());
  std::vector<int64_t> paid;
  auto pay = [&](int user) {
    PayOutcome outcome = client.ReserveAndPay(system.seeded().users[user], system.NextSeat());
    EXPECT_EQ(outcome.kind, PayOutcome::Kind::kAcked) << outcome.message;
    paid.push_back(outcome.reservation_id);
  };
  auto all_delivered = [&] {
    std::map<int64_t, int> got = system.MessagesByReservation();
    for (int64_t r : paid) {
      if (got[r] == 0) return false;
    }
    return true;
  };
  // The first message fails at Telegram (both tries of the notifier's attempt): it travels
  // notifier -> DLQ -> retry-worker -> re-published -> notifier, every hop over TLS.
  system.telegram().SetFault({.mode = testing::FaultMode::k5xx, .count = 2, .status = 503});
  pay(0);
  ASSERT_TRUE(WaitUntil(all_delivered, absl::Seconds(60))) << "logs: " << system.LogPaths();
  EXPECT_EQ(system.telegram().faulted(), 2);
  // (of this run's topic: the database is shared with the runs of the other mechanisms)
  EXPECT_TRUE(WaitUntil(
      [&] {
        return QueryInt(TlsDatabaseUrl(),
                        absl::StrCat("SELECT count(*) FROM retry.failed_messages "
                                     "WHERE status = 'PROCESSED' AND original_topic = '",
                                     system.topic(), "'")) == 1;
      },
      absl::Seconds(10)));
  // Then the straight path, a few times.
  for (int i = 1; i < 6; ++i) pay(i % 2);
  ASSERT_TRUE(WaitUntil(all_delivered, absl::Seconds(60))) << "logs: " << system.LogPaths();
  absl::SleepFor(absl::Seconds(1));  // a late duplicate would arrive now
  for (const auto& [reservation, n] : system.MessagesByReservation()) {
    EXPECT_EQ(n, 1) << "reservation " << reservation;
  }
  EXPECT_EQ(system.MessagesByReservation().size(), paid.size());

  // Every connection of the services to Postgres, the relay's replication one included, is TLS.
  EXPECT_EQ(QueryInt(TlsDatabaseUrl(),
                     "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                     "WHERE a.datname = 'concert' AND NOT s.ssl"),
            0);
  EXPECT_GE(QueryInt(TlsDatabaseUrl(),
                     "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                     "WHERE a.backend_type = 'walsender' AND s.ssl"),
            1);
  // The password is in no log.
  for (absl::string_view path : absl::StrSplit(system.LogPaths(), ' ', absl::SkipEmpty())) {
    std::string log = testing::RunCommandCapturing(absl::StrCat("cat '", path, "'")).out;
    EXPECT_THAT(log, Not(HasSubstr(PrivateKafka::kSaslPassword))) << path;
  }
}

INSTANTIATE_TEST_SUITE_P(Mechanisms, SecurePaymentsTest,
                         ::testing::Values("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return absl::StrReplaceAll(info.param, {{"-", "_"}});
                         });

// One Kafka-speaking service run alone, with topic, group and slot names of its own; `env`
// says how it reaches Kafka.
struct Service {
  std::string binary;
  std::string grpc_address;
  std::string dlq_topic;
  std::unique_ptr<ChildProcess> process;
};

Service StartService(const std::string& binary, const std::string& database_url,
                     std::map<std::string, std::string> env) {
  Service s{.binary = binary, .grpc_address = absl::StrCat("127.0.0.1:", FreePort())};
  std::string name = UniqueName("secure");
  env["DATABASE_URL"] = database_url;
  env["GRPC_ADDRESS"] = s.grpc_address;
  env["METRICS_ADDRESS"] = absl::StrCat("127.0.0.1:", FreePort());
  env["PAYMENT_COMPLETED_TOPIC"] = name + "_completed";
  s.dlq_topic = name + "_dlq";
  env["DLQ_TOPIC"] = s.dlq_topic;
  env["KAFKA_GROUP_ID"] = name;
  env["REPLICATION_SLOT"] = name;
  env["PUBLICATION"] = name;
  env["ADMIN_TOKEN"] = "secure-test-admin";
  env["NOTIFICATIONS_FILE"] = "/dev/null";
  s.process = std::make_unique<ChildProcess>(BinaryPath(binary), std::vector<std::string>{}, env);
  return s;
}

const std::vector<std::string> kKafkaServices = {"outbox-relay", "notifier", "retry-worker"};

TEST_F(SecureConnectionsTest, RefusedConnectionsAreOneClearLineAndNotServing) {
  ASSERT_EQ(testing::RunCommand(absl::StrCat(testing::SourceRoot(), "/scripts/tls.sh ca ",
                                             Tls("other"), " ca")),
            0);
  struct Case {
    std::string name;
    std::map<std::string, std::string> env;
    std::string reason;  // in the one line
  };
  auto wrong_password = [&](const std::string& mechanism) {
    std::map<std::string, std::string> env = SaslSsl(mechanism);
    env["KAFKA_SASL_PASSWORD"] = "not-the-password";
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_->sasl_ssl_bootstrap();
    return env;
  };
  std::map<std::string, std::string> untrusted_ca = SaslSsl("PLAIN");
  untrusted_ca["KAFKA_SSL_CA_FILE"] = Tls("other/ca.pem");
  untrusted_ca["KAFKA_BOOTSTRAP_SERVERS"] = kafka_->sasl_ssl_bootstrap();
  std::map<std::string, std::string> no_certificate = {
      {"KAFKA_BOOTSTRAP_SERVERS", kafka_->mtls_bootstrap()},
      {"KAFKA_SECURITY_PROTOCOL", "SSL"},
      {"KAFKA_SSL_CA_FILE", Tls("ca.pem")}};
  std::vector<Case> cases = {
      {"wrong password, PLAIN", wrong_password("PLAIN"), "Authentication failed"},
      {"wrong password, SCRAM-SHA-256", wrong_password("SCRAM-SHA-256"), "Authentication failed"},
      {"wrong password, SCRAM-SHA-512", wrong_password("SCRAM-SHA-512"), "Authentication failed"},
                             {"untrusted CA", untrusted_ca, "certificate verify failed"},
                             {"no client certificate", no_certificate, "SSL routines"}};

  std::vector<std::pair<std::string, Service>> running;
  for (const Case& c : cases) {
    for (const std::string& binary : kKafkaServices) {
      running.emplace_back(c.name + ", " + binary,
                           StartService(binary, postgres_->url(), c.env));
    }
  }
  // Each says why, once, soon.
  ASSERT_TRUE(WaitUntil(
      [&] {
        for (auto& [name, service] : running) {
          if (CountLines(service.process->ReadLog(), kRefusedLine) == 0) return false;
        }
        return true;
      },
      absl::Seconds(60)));
  // Several retries later: still running, still NOT_SERVING, still that one line.
  absl::SleepFor(absl::Seconds(8));
  for (size_t i = 0; i < running.size(); ++i) {
    auto& [name, service] = running[i];
    const Case& c = cases[i / kKafkaServices.size()];
    std::string log = service.process->ReadLog();
    EXPECT_TRUE(service.process->running()) << name << "\n" << log;
    EXPECT_EQ(testing::HealthStatus(service.grpc_address), 2) << name;
    EXPECT_EQ(CountLines(log, kRefusedLine), 1) << name << "\n" << log;
    EXPECT_THAT(log, HasSubstr(c.reason)) << name << "\n" << log;
    EXPECT_THAT(log, Not(HasSubstr(PrivateKafka::kSaslPassword))) << name;
    EXPECT_THAT(log, Not(HasSubstr("not-the-password"))) << name;
  }
}

TEST_F(SecureConnectionsTest, TopicsGetTheConfiguredReplicationAndAnImpossibleFactorIsRefused) {
  Service durable = StartService("retry-worker", postgres_->url(),
                                 {{"KAFKA_BOOTSTRAP_SERVERS", kafka_->bootstrap()},
                                  {"KAFKA_TOPIC_REPLICATION_FACTOR", "1"},
                                  {"KAFKA_TOPIC_MIN_INSYNC_REPLICAS", "1"}});
  // One broker: three replicas cannot be placed.
  Service impossible = StartService("retry-worker", postgres_->url(),
                                    {{"KAFKA_BOOTSTRAP_SERVERS", kafka_->bootstrap()},
                                     {"KAFKA_TOPIC_REPLICATION_FACTOR", "3"}});
  ASSERT_TRUE(WaitUntil([&] { return testing::HealthStatus(durable.grpc_address) == 1; },
                        absl::Seconds(60)))
      << durable.process->ReadLog();
  ASSERT_TRUE(WaitUntil(
      [&] { return CountLines(impossible.process->ReadLog(), kRefusedLine) == 1; },
      absl::Seconds(60)))
      << impossible.process->ReadLog();

  // Kafka's own tool sees what was asked for; the refused topic does not exist.
  std::string described = DescribeTopic(kafka_->bootstrap(), durable.dlq_topic);
  EXPECT_THAT(described, HasSubstr("ReplicationFactor: 1")) << described;
  EXPECT_THAT(described, HasSubstr("min.insync.replicas=1")) << described;
  EXPECT_THAT(DescribeTopic(kafka_->bootstrap(), impossible.dlq_topic),
              HasSubstr("does not exist"));
  std::string log = impossible.process->ReadLog();
  EXPECT_THAT(log, HasSubstr("replication factor")) << log;
  EXPECT_TRUE(impossible.process->running());
  EXPECT_EQ(testing::HealthStatus(impossible.grpc_address), 2);
}

}  // namespace
}  // namespace concert::e2e
