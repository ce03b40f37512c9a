// What an operator sees when a setting is wrong: each binary stops at once with a non-zero exit
// code and ONE line on stderr that names the setting.
#include <stdio.h>
#include <sys/wait.h>

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/testing/environment.h"

namespace concert::e2e {
namespace {

using ::testing::HasSubstr;
using testing::BinaryPath;
using testing::CommandOutput;
using testing::FreePort;
using testing::RunCommandCapturing;

// Runs `binary` with a clean environment plus `env`, killed after `limit_seconds` (a bad
// setting stops it at once); its `out` is stderr only.
CommandOutput RunBinary(const std::string& binary, const std::vector<std::string>& env,
                        int limit_seconds = 20) {
  std::string command = "env -i PATH=/usr/bin:/bin";
  for (const std::string& e : env) absl::StrAppend(&command, " '", e, "'");
  absl::StrAppend(&command, " timeout -s KILL ", limit_seconds, " ", BinaryPath(binary),
                  " 2>&1 >/dev/null");
  return RunCommandCapturing(command);
}

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

// Settings that are valid, so that only the one under test is wrong; ports that are free, so
// that a binary that wrongly starts disturbs nobody.
std::vector<std::string> ValidEnv() {
  return {absl::StrCat("GRPC_ADDRESS=127.0.0.1:", FreePort()),
          absl::StrCat("METRICS_ADDRESS=127.0.0.1:", FreePort()),
          "AUTH_TOKEN_SECRET=cli-test-secret-of-at-least-32-bytes", "ADMIN_TOKEN=cli-test-admin"};
}

class CliTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CliTest, MissingDatabaseUrlIsOneLineNamingIt) {
  std::vector<std::string> env = ValidEnv();
  env.push_back("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092");
  CommandOutput run = RunBinary(GetParam(), env);
  EXPECT_NE(run.exit_code, 0);
  EXPECT_EQ(Lines(run.out).size(), 1u) << run.out;
  EXPECT_THAT(run.out, HasSubstr("DATABASE_URL"));
}

TEST_P(CliTest, UnparsableKafkaBootstrapIsOneLineNamingIt) {
  if (GetParam() == "payment-server") GTEST_SKIP() << "payment-server does not use Kafka";
  std::vector<std::string> env = ValidEnv();
  env.push_back("DATABASE_URL=postgresql://concert:concert@127.0.0.1:1/nothing");
  env.push_back("KAFKA_BOOTSTRAP_SERVERS=localhost");
  CommandOutput run = RunBinary(GetParam(), env);
  EXPECT_NE(run.exit_code, 0);
  EXPECT_EQ(Lines(run.out).size(), 1u) << run.out;
  EXPECT_THAT(run.out, HasSubstr("KAFKA_BOOTSTRAP_SERVERS"));
}

// Durations that parse but would misbehave: infinite or NaN (absl accepts both), zero
// intervals that would busy-loop, intervals too long to do their job (a relay confirming its
// WAL position every three days; Postgres drops a silent replication client after 60 s), and a
// timeout librdkafka rejects (message.timeout.ms is an int32 of milliseconds).
std::vector<std::string> OutOfRangeSettings(const std::string& binary) {
  if (binary == "payment-server") {
    return {"RESERVATION_HOLD=inf", "DB_ACQUIRE_TIMEOUT=nan", "HEALTH_CHECK_INTERVAL=0",
            "SHUTDOWN_GRACE=1000h", "DB_POOL_SIZE=0"};
  }
  if (binary == "outbox-relay") {
    return {"KAFKA_MESSAGE_TIMEOUT=inf", "KAFKA_MESSAGE_TIMEOUT=600h", "STATUS_INTERVAL=0",
            "STATUS_INTERVAL=72h",       "STANDBY_POLL_INTERVAL=nan",  "BACKOFF_INITIAL=0",
            "SLOT_STATS_INTERVAL=0"};
  }
  if (binary == "notifier") {
    return {"COMMIT_INTERVAL=0", "TELEGRAM_TIMEOUT=0", "TELEGRAM_RETRY_BACKOFF=inf",
            "TELEGRAM_CONNECT_TIMEOUT=nan"};
  }
  return {"RETRY_INTERVAL=0", "RETRY_BACKOFF_BASE=nan", "RETRY_PUBLISH_TIMEOUT=inf",
          "RETRY_BACKOFF_CAP=0"};
}

TEST_P(CliTest, OutOfRangeValueIsExitTwoWithOneLineNamingTheSettingAndItsRange) {
  for (const std::string& setting : OutOfRangeSettings(GetParam())) {
    SCOPED_TRACE(setting);
    std::vector<std::string> env = ValidEnv();
    env.push_back("DATABASE_URL=postgresql://concert:concert@127.0.0.1:1/nothing");
    env.push_back(setting);
    CommandOutput run = RunBinary(GetParam(), env, /*limit_seconds=*/5);
    EXPECT_EQ(run.exit_code, 2) << run.out;
    ASSERT_EQ(Lines(run.out).size(), 1u) << run.out;
    EXPECT_THAT(run.out, HasSubstr(setting.substr(0, setting.find('='))));
    EXPECT_THAT(run.out, HasSubstr("allowed"));
  }
}

// Settings each valid alone that contradict each other (a first backoff longer than the
// longest): the same one line and exit 2. Binaries without such a pair have none.
std::vector<std::string> ContradictorySettings(const std::string& binary) {
  if (binary == "outbox-relay") return {"BACKOFF_INITIAL=20s", "BACKOFF_MAX=10s"};
  if (binary == "retry-worker") return {"RETRY_BACKOFF_BASE=20m", "RETRY_BACKOFF_CAP=10m"};
  return {};
}

TEST_P(CliTest, ContradictorySettingsAreExitTwoWithOneLineNamingThem) {
  std::vector<std::string> pair = ContradictorySettings(GetParam());
  if (pair.empty()) GTEST_SKIP() << "no settings that must agree";
  std::vector<std::string> env = ValidEnv();
  env.push_back("DATABASE_URL=postgresql://concert:concert@127.0.0.1:1/nothing");
  env.insert(env.end(), pair.begin(), pair.end());
  CommandOutput run = RunBinary(GetParam(), env, /*limit_seconds=*/5);
  EXPECT_EQ(run.exit_code, 2) << run.out;
  ASSERT_EQ(Lines(run.out).size(), 1u) << run.out;
  for (const std::string& setting : pair) {
    EXPECT_THAT(run.out, HasSubstr(setting.substr(0, setting.find('='))));
  }
}

// The shared Kafka security settings (kafka::ReadCluster) in every Kafka-speaking binary: a
// mistake is exit 2 with one line naming the setting, and the password is never in it.
TEST_P(CliTest, KafkaSecurityMistakeIsExitTwoWithOneLineAndNoPassword) {
  if (GetParam() == "payment-server") GTEST_SKIP() << "payment-server does not use Kafka";
  std::vector<std::vector<std::string>> mistakes = {
      {"KAFKA_SECURITY_PROTOCOL=SASL_SSL", "KAFKA_SASL_PASSWORD=hunter2"},  // no username
      {"KAFKA_SECURITY_PROTOCOL=SSL", "KAFKA_SSL_CA_FILE=/nonexistent/ca.pem"},
      {"KAFKA_PROPERTIES=sasl.password=hunter2;no.such.property=1"}};
  std::vector<std::string> named = {"KAFKA_SASL_USERNAME", "KAFKA_SSL_CA_FILE", "KAFKA_PROPERTIES"};
  for (size_t i = 0; i < mistakes.size(); ++i) {
    SCOPED_TRACE(named[i]);
    std::vector<std::string> env = ValidEnv();
    env.push_back("DATABASE_URL=postgresql://concert:concert@127.0.0.1:1/nothing");
    env.insert(env.end(), mistakes[i].begin(), mistakes[i].end());
    CommandOutput run = RunBinary(GetParam(), env, /*limit_seconds=*/5);
    EXPECT_EQ(run.exit_code, 2) << run.out;
    ASSERT_EQ(Lines(run.out).size(), 1u) << run.out;
    EXPECT_THAT(run.out, HasSubstr(named[i]));
    EXPECT_THAT(run.out, ::testing::Not(HasSubstr("hunter2")));
  }
}

// Security settings that would let anyone in: a shared secret shorter than 32 bytes (HS256
// needs 256 bits, and a short token can be guessed) and a JWKS fetched over plain HTTP without
// the explicit opt-out. The same one line and exit 2, never showing the secret.
std::vector<std::string> WeakSecuritySettings(const std::string& binary) {
  const std::string http_jwks = "AUTH_JWKS_URL=http://127.0.0.1:1/jwks.json";
  if (binary == "payment-server") {
    return {"AUTH_TOKEN_SECRET=hunter2", "INTERNAL_TOKEN=hunter2", http_jwks};
  }
  if (binary == "notifier") return {"INTERNAL_TOKEN=hunter2"};
  if (binary == "retry-worker") return {"AUTH_TOKEN_SECRET=hunter2", http_jwks};
  return {};
}

TEST_P(CliTest, WeakSecuritySettingIsExitTwoWithOneLineNamingIt) {
  std::vector<std::string> settings = WeakSecuritySettings(GetParam());
  if (settings.empty()) GTEST_SKIP() << "no tokens or JWKS";
  for (const std::string& setting : settings) {
    SCOPED_TRACE(setting);
    std::vector<std::string> env = ValidEnv();
    env.push_back("DATABASE_URL=postgresql://concert:concert@127.0.0.1:1/nothing");
    env.push_back(setting);
    CommandOutput run = RunBinary(GetParam(), env, /*limit_seconds=*/5);
    EXPECT_EQ(run.exit_code, 2) << run.out;
    ASSERT_EQ(Lines(run.out).size(), 1u) << run.out;
    EXPECT_THAT(run.out, HasSubstr(setting.substr(0, setting.find('='))));
    EXPECT_THAT(run.out, ::testing::Not(HasSubstr("hunter2")));
  }
}

INSTANTIATE_TEST_SUITE_P(Binaries, CliTest,
                         ::testing::Values("payment-server", "outbox-relay", "notifier",
                                           "retry-worker"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace concert::e2e
