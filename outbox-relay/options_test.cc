#include "outbox-relay/options.h"

#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/testing/settings.h"

namespace concert::relay {
namespace {

using ::testing::HasSubstr;

Settings FromEnv(std::map<std::string, std::string> env) {
  return testing::SettingsOf("outbox-relay", std::move(env));
}

TEST(RelayOptionsTest, DefaultsAreTheStructsAndValid) {
  Settings s = FromEnv({{"DATABASE_URL", "postgresql://relay@127.0.0.1/concert"}});
  ServiceOptions o = ReadOptions(s);
  ASSERT_TRUE(s.Validate().ok()) << s.Validate();
  EXPECT_EQ(o.relay.slot, RelayOptions().slot);
  EXPECT_EQ(o.relay.status_interval, absl::Seconds(1));
  EXPECT_EQ(o.relay.backoff_initial, absl::Milliseconds(200));
  EXPECT_EQ(o.requeue_older_than, absl::Minutes(1));
  EXPECT_EQ(o.metrics_address, "127.0.0.1:9102");
  EXPECT_TRUE(o.Validate().ok());
}

TEST(RelayOptionsTest, ValidateDerivesTheLogLevel) {
  Settings s = FromEnv({{"DATABASE_URL", "x"}, {"LOG_LEVEL", "warn"}});
  ServiceOptions o = ReadOptions(s);
  ASSERT_TRUE(o.Validate().ok());
  EXPECT_EQ(o.level, log::Level::kWarn);
}

TEST(RelayOptionsTest, ValidateNamesTheSettingsThatCannotBeUsed) {
  std::vector<std::pair<std::map<std::string, std::string>, std::string>> cases = {
      {{{"BACKOFF_INITIAL", "20s"}, {"BACKOFF_MAX", "10s"}}, "BACKOFF_MAX"},
      {{{"REPLICATION_SLOT", "Slot"}}, "REPLICATION_SLOT"},
      {{{"PUBLICATION", "9pub"}}, "PUBLICATION"},
      {{{"PAYMENT_COMPLETED_TOPIC", ""}}, "PAYMENT_COMPLETED_TOPIC"},
      {{{"LOG_LEVEL", "loud"}}, "LOG_LEVEL"}};
  for (auto& [env, setting] : cases) {
    SCOPED_TRACE(setting);
    env["DATABASE_URL"] = "x";
    Settings s = FromEnv(env);
    ServiceOptions o = ReadOptions(s);
    ASSERT_TRUE(s.Validate().ok()) << s.Validate();  // each value alone is within range
    absl::Status valid = o.Validate();
    EXPECT_EQ(valid.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(valid.message(), HasSubstr(setting));
  }
}

TEST(RelayOptionsTest, OutOfRangeIsReportedBySettings) {
  Settings s = FromEnv({{"DATABASE_URL", "x"}, {"CLEANUP_BATCH", "0"}});
  ReadOptions(s);
  EXPECT_THAT(s.Validate().message(), HasSubstr("CLEANUP_BATCH"));
}

}  // namespace
}  // namespace concert::relay
