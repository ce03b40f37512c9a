// What `jq` sees: every line a binary writes to stderr is one JSON object, including what the
// libraries inside it report (librdkafka's broker errors, gRPC's own errors).
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/testing/environment.h"

namespace concert::e2e {
namespace {

using testing::BinaryPath;
using testing::CommandOutput;
using testing::FreePort;
using testing::RunCommandCapturing;
using testing::ScratchDatabase;

// Runs `binary` with a clean environment plus `env` for `seconds`, then SIGTERM (SIGKILL 10 s
// later); returns its stderr. `exec`: no shell is left to add a "Killed" line of its own.
std::string StderrOf(const std::string& binary, const std::vector<std::string>& env, int seconds) {
  std::string command = "exec env -i PATH=/usr/bin:/bin";
  for (const std::string& e : env) absl::StrAppend(&command, " '", e, "'");
  absl::StrAppend(&command, " timeout -k 10 ", seconds, " ", BinaryPath(binary),
                  " 2>&1 >/dev/null");
  return RunCommandCapturing(command).out;
}

// The lines that are not JSON objects; and how many came from librdkafka.
struct Parsed {
  std::vector<std::string> not_json;
  int kafka_lines = 0;
  int lines = 0;
};
Parsed Parse(const std::string& text) {
  Parsed p;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    ++p.lines;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      p.not_json.emplace_back(line);
    } else if (j.contains("kafka_client")) {
      ++p.kafka_lines;
    }
  }
  return p;
}

class LogJsonTest : public ::testing::TestWithParam<std::string> {};

// Kafka is down (nothing listens on its port): librdkafka reports every failed connection (the
// admin client's lines at the debug level, hence LOG_LEVEL).
TEST_P(LogJsonTest, EveryLineIsJsonWhileKafkaIsDown) {
  ScratchDatabase db("log_json");
  std::vector<std::string> env = {
      "DATABASE_URL=" + db.url(),
      absl::StrCat("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:", FreePort()),
      absl::StrCat("GRPC_ADDRESS=127.0.0.1:", FreePort()),
      absl::StrCat("METRICS_ADDRESS=127.0.0.1:", FreePort()),
      "ADMIN_TOKEN=log-json-test",
      "LOG_LEVEL=debug",
      "REPLICATION_SLOT=" + db.name(),
  };
  Parsed p = Parse(StderrOf(GetParam(), env, 8));
  EXPECT_THAT(p.not_json, ::testing::IsEmpty());
  EXPECT_GT(p.kafka_lines, 0) << "no librdkafka line in " << p.lines << " lines";
}

INSTANTIATE_TEST_SUITE_P(Binaries, LogJsonTest,
                         ::testing::Values("outbox-relay", "notifier", "retry-worker"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

// Another process holds the gRPC port: gRPC's own error lines, then ours.
TEST(LogJsonGrpcTest, EveryLineIsJsonWhenTheGrpcPortIsTaken) {
  int holder = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(holder, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(holder, 1), 0);
  socklen_t len = sizeof addr;
  getsockname(holder, reinterpret_cast<sockaddr*>(&addr), &len);

  std::vector<std::string> env = {
      "DATABASE_URL=postgresql://concert:concert@127.0.0.1:1/nothing",
      absl::StrCat("GRPC_ADDRESS=127.0.0.1:", ntohs(addr.sin_port)),
      absl::StrCat("METRICS_ADDRESS=127.0.0.1:", FreePort()),
  };
  Parsed p = Parse(StderrOf("notifier", env, 8));
  close(holder);
  EXPECT_GT(p.lines, 0);
  EXPECT_THAT(p.not_json, ::testing::IsEmpty());
}

}  // namespace
}  // namespace concert::e2e
