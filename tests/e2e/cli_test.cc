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

// Runs `binary` with a clean environment plus `env` (bounded to 20 s); its `out` is stderr only.
CommandOutput RunBinary(const std::string& binary, const std::vector<std::string>& env) {
  std::string command = "env -i PATH=/usr/bin:/bin";
  for (const std::string& e : env) absl::StrAppend(&command, " '", e, "'");
  absl::StrAppend(&command, " timeout -s KILL 20 ", BinaryPath(binary), " 2>&1 >/dev/null");
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
          "AUTH_TOKEN_SECRET=cli-test-secret", "ADMIN_TOKEN=cli-test-admin"};
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
