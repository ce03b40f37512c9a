// The KAFKA_* settings every Kafka-speaking service shares (kafka::ReadCluster): what reaches
// librdkafka, and the one line an operator gets for a mistake, never with a secret in it.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/kafka/cluster.h"
#include "common/testing/settings.h"

namespace concert::kafka {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

Settings Make(std::map<std::string, std::string> env) {
  return testing::SettingsOf("prog", std::move(env));
}

// A file with `content`, removed at the end of the test.
class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    char name[] = "/tmp/kafka_cluster_test_XXXXXX";
    int fd = mkstemp(name);
    path_ = name;
    FILE* f = fdopen(fd, "w");
    fputs(content.c_str(), f);
    fclose(f);
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string ErrorOf(const Settings& s) { return std::string(s.Validate().message()); }

TEST(ReadClusterTest, DefaultsArePlaintextAndTheBrokersReplication) {
  Settings s = Make({});
  Cluster c = ReadCluster(s);
  ASSERT_TRUE(s.Validate().ok()) << s.Validate();
  EXPECT_EQ(c.bootstrap_servers, "127.0.0.1:9092");
  EXPECT_EQ(c.client_properties.at("security.protocol"), "plaintext");
  EXPECT_EQ(c.client_properties.count("sasl.password"), 0u);
  EXPECT_EQ(c.replication_factor, -1);
  EXPECT_EQ(c.min_insync_replicas, 0);
}

TEST(ReadClusterTest, SaslSslWithPasswordFileReachesEveryClient) {
  TempFile ca("-----BEGIN CERTIFICATE-----\n");
  TempFile password("s3cret\n");
  Settings s = Make({{"KAFKA_SECURITY_PROTOCOL", "sasl_ssl"},
                     {"KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"},
                     {"KAFKA_SASL_USERNAME", "relay"},
                     {"KAFKA_SASL_PASSWORD_FILE", password.path()},
                     {"KAFKA_SSL_CA_FILE", ca.path()},
                     {"KAFKA_TOPIC_REPLICATION_FACTOR", "3"},
                     {"KAFKA_TOPIC_MIN_INSYNC_REPLICAS", "2"}});
  Cluster c = ReadCluster(s);
  ASSERT_TRUE(s.Validate().ok()) << s.Validate();
  for (const Config& config : {ProducerConfig(c, "p"), ConsumerConfig(c, "g", "c")}) {
    EXPECT_EQ(config.at("security.protocol"), "sasl_ssl");
    EXPECT_EQ(config.at("sasl.mechanism"), "SCRAM-SHA-256");
    EXPECT_EQ(config.at("sasl.username"), "relay");
    EXPECT_EQ(config.at("sasl.password"), "s3cret");  // the file's line, without its newline
    EXPECT_EQ(config.at("ssl.ca.location"), ca.path());
    EXPECT_TRUE(MakeConf(config).ok());
  }
  EXPECT_EQ(c.replication_factor, 3);
  EXPECT_EQ(c.min_insync_replicas, 2);
}

TEST(ReadClusterTest, FurtherPropertiesAreAppliedLastAndChecked) {
  Settings s = Make({{"KAFKA_PROPERTIES", "debug=security,broker; socket.keepalive.enable=true"}});
  Cluster c = ReadCluster(s);
  ASSERT_TRUE(s.Validate().ok()) << s.Validate();
  EXPECT_EQ(ProducerConfig(c, "p").at("debug"), "security,broker");
  EXPECT_EQ(ConsumerConfig(c, "g", "c").at("socket.keepalive.enable"), "true");

  Settings unknown = Make({{"KAFKA_PROPERTIES", "no.such.property=1"}});
  ReadCluster(unknown);
  EXPECT_THAT(ErrorOf(unknown), HasSubstr("KAFKA_PROPERTIES"));
  EXPECT_THAT(ErrorOf(unknown), HasSubstr("no.such.property"));

  Settings secret = Make({{"KAFKA_PROPERTIES", "my.password=hunter2"}});
  ReadCluster(secret);
  EXPECT_THAT(ErrorOf(secret), HasSubstr("KAFKA_PROPERTIES"));
  EXPECT_THAT(ErrorOf(secret), Not(HasSubstr("hunter2")));

  Settings malformed = Make({{"KAFKA_PROPERTIES", "debug"}});
  ReadCluster(malformed);
  EXPECT_THAT(ErrorOf(malformed), HasSubstr("is not name=value"));
}

TEST(ReadClusterTest, MistakesNameTheSettingAndNeverThePassword) {
  struct Case {
    std::map<std::string, std::string> env;
    std::string names;
  };
  std::vector<Case> cases = {
      {{{"KAFKA_SECURITY_PROTOCOL", "TLS"}}, "KAFKA_SECURITY_PROTOCOL"},
      {{{"KAFKA_SECURITY_PROTOCOL", "SASL_SSL"}, {"KAFKA_SASL_PASSWORD", "hunter2"}},
       "KAFKA_SASL_USERNAME"},
      {{{"KAFKA_SECURITY_PROTOCOL", "SASL_SSL"}, {"KAFKA_SASL_USERNAME", "u"}},
       "KAFKA_SASL_PASSWORD"},
      {{{"KAFKA_SECURITY_PROTOCOL", "SASL_SSL"},
        {"KAFKA_SASL_USERNAME", "u"},
        {"KAFKA_SASL_PASSWORD", "hunter2"},
        {"KAFKA_SASL_MECHANISM", "GSSAPI"}},
       "KAFKA_SASL_MECHANISM"},
      {{{"KAFKA_SASL_USERNAME", "u"}, {"KAFKA_SASL_PASSWORD", "hunter2"}},
       "KAFKA_SECURITY_PROTOCOL"},
      {{{"KAFKA_SECURITY_PROTOCOL", "SSL"}, {"KAFKA_SSL_CA_FILE", "/nonexistent/ca.pem"}},
       "KAFKA_SSL_CA_FILE"},
      {{{"KAFKA_SECURITY_PROTOCOL", "SASL_SSL"},
        {"KAFKA_SASL_USERNAME", "u"},
        {"KAFKA_SASL_PASSWORD_FILE", "/nonexistent/password"}},
       "KAFKA_SASL_PASSWORD_FILE"},
      {{{"KAFKA_TOPIC_REPLICATION_FACTOR", "0"}}, "KAFKA_TOPIC_REPLICATION_FACTOR"},
      {{{"KAFKA_TOPIC_REPLICATION_FACTOR", "2"}, {"KAFKA_TOPIC_MIN_INSYNC_REPLICAS", "3"}},
       "KAFKA_TOPIC_MIN_INSYNC_REPLICAS"},
  };
  for (const Case& c : cases) {
    Settings s = Make(c.env);
    ReadCluster(s);
    EXPECT_THAT(ErrorOf(s), HasSubstr(c.names));
    EXPECT_THAT(ErrorOf(s), Not(HasSubstr("hunter2")));
  }
  TempFile cert("-----BEGIN CERTIFICATE-----\n");
  Settings half = Make({{"KAFKA_SECURITY_PROTOCOL", "SSL"}, {"KAFKA_SSL_CERT_FILE", cert.path()}});
  ReadCluster(half);
  EXPECT_THAT(ErrorOf(half), HasSubstr("KAFKA_SSL_KEY_FILE"));
}

TEST(MakeConfTest, ASecretValueIsNeverInTheError) {
  absl::StatusOr<std::unique_ptr<RdKafka::Conf>> conf =
      MakeConf({{"sasl.password", "hunter2"}, {"acks", "most"}});
  ASSERT_FALSE(conf.ok());
  EXPECT_THAT(std::string(conf.status().message()), HasSubstr("acks"));
  absl::StatusOr<std::unique_ptr<RdKafka::Conf>> secret = MakeConf({{"my.password", "hunter2"}});
  ASSERT_FALSE(secret.ok());
  EXPECT_THAT(std::string(secret.status().message()), Not(HasSubstr("hunter2")));
}

}  // namespace
}  // namespace concert::kafka
