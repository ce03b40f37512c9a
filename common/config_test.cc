#include "common/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/testing/settings.h"

namespace concert {
namespace {

using ::testing::HasSubstr;

Settings Make(std::vector<const char*> args, std::map<std::string, std::string> env = {}) {
  return testing::SettingsOf("prog", std::move(env), std::move(args));
}

TEST(SettingsTest, FlagWinsOverEnvironmentWhichWinsOverDefault) {
  Settings s = Make({"--pool-size=9"}, {{"POOL_SIZE", "7"}, {"HOLD", "2m"}});
  EXPECT_EQ(s.Int("POOL_SIZE", 4, 1, 100, "pool"), 9);
  EXPECT_EQ(s.Duration("HOLD", absl::Minutes(5), absl::Seconds(1), absl::Hours(1), "hold"),
            absl::Minutes(2));
  EXPECT_EQ(s.String("NAME", "dflt", "name"), "dflt");
  EXPECT_TRUE(s.Validate().ok());
}

TEST(SettingsTest, FlagWithSeparateValueAndPositionalArguments) {
  Settings s = Make({"mint-token", "--user-id", "42"});
  EXPECT_EQ(s.Int("USER_ID", 0, 1, 1000, "user"), 42);
  EXPECT_THAT(s.positional(), ::testing::ElementsAre("mint-token"));
}

TEST(SettingsTest, UnparsableKafkaServersNamesTheSetting) {
  Settings s = Make({}, {{"KAFKA_BOOTSTRAP_SERVERS", "localhost"}});
  s.KafkaBootstrapServers("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "brokers");
  absl::Status status = s.Validate();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("KAFKA_BOOTSTRAP_SERVERS"));
  EXPECT_THAT(status.message(), HasSubstr("'localhost' is not host:port"));
}

TEST(SettingsTest, KafkaServerListAcceptsSeveralHosts) {
  Settings s = Make({}, {{"KAFKA_BOOTSTRAP_SERVERS", "a:1,b.example:9092, [::1]:9093"}});
  s.KafkaBootstrapServers("KAFKA_BOOTSTRAP_SERVERS", "", "brokers");
  EXPECT_TRUE(s.Validate().ok()) << s.Validate();
}

TEST(SettingsTest, ASecretShorterThanItsMinimumIsRefusedWithoutShowingIt) {
  Settings short_one = Make({}, {{"API_SECRET", "hunter2"}});
  EXPECT_EQ(short_one.Secret("API_SECRET", 32, "secret"), "hunter2");
  absl::Status status = short_one.Validate();
  EXPECT_THAT(status.message(), HasSubstr("invalid setting API_SECRET"));
  EXPECT_THAT(status.message(), HasSubstr("at least 32"));
  EXPECT_THAT(status.message(), ::testing::Not(HasSubstr("hunter2")));

  Settings unset = Make({});
  EXPECT_EQ(unset.Secret("API_SECRET", 32, "secret"), "");
  EXPECT_TRUE(unset.Validate().ok());
  Settings long_enough = Make({}, {{"API_SECRET", std::string(32, 'k')}});
  long_enough.Secret("API_SECRET", 32, "secret");
  EXPECT_TRUE(long_enough.Validate().ok());
}

TEST(SettingsTest, MissingRequiredSettingIsAnError) {
  Settings s = Make({});
  s.RequiredString("DATABASE_URL", "db");
  EXPECT_THAT(s.Validate().message(), HasSubstr("invalid setting DATABASE_URL"));
  EXPECT_THAT(s.Validate().message(), HasSubstr("required"));
}

TEST(SettingsTest, BadValuesAreRejected) {
  EXPECT_FALSE([] {
    Settings s = Make({"--pool-size=zero"});
    s.Int("POOL_SIZE", 4, 1, 100, "");
    return s.Validate().ok();
  }());
  EXPECT_THAT([] {
    Settings s = Make({"--pool-size=1000"});
    s.Int("POOL_SIZE", 4, 1, 100, "");
    return std::string(s.Validate().message());
  }(), HasSubstr("'1000' is outside the allowed range 1 to 100"));
  EXPECT_FALSE([] {
    Settings s = Make({"--interval=soon"});
    s.Duration("INTERVAL", absl::Seconds(1), absl::Seconds(1), absl::Hours(1), "");
    return s.Validate().ok();
  }());
  EXPECT_FALSE([] {
    Settings s = Make({"--verbose=perhaps"});
    s.Bool("VERBOSE", false, "");
    return s.Validate().ok();
  }());
  EXPECT_FALSE([] {
    Settings s = Make({"--listen=nowhere"});
    s.ListenAddress("LISTEN", "127.0.0.1:0", "");
    return s.Validate().ok();
  }());
}

TEST(SettingsTest, PlainNumbersAreSecondsAndBooleansHaveSynonyms) {
  Settings s = Make({"--interval=1.5", "--verbose=yes"});
  EXPECT_EQ(s.Duration("INTERVAL", absl::Seconds(1), absl::Seconds(1), absl::Hours(1), ""),
            absl::Milliseconds(1500));
  EXPECT_TRUE(s.Bool("VERBOSE", false, ""));
}

// The first problem Validate() reports after reading INTERVAL = `value` within [100ms, 30s].
std::string IntervalProblem(const char* value) {
  Settings s = Make({}, {{"INTERVAL", value}});
  s.Duration("INTERVAL", absl::Seconds(1), absl::Milliseconds(100), absl::Seconds(30), "");
  return std::string(s.Validate().message());
}

TEST(SettingsTest, InfiniteAndNanDurationsAreRejectedWithTheAllowedRange) {
  // absl::SimpleAtod and absl::ParseDuration both accept these.
  for (const char* value : {"inf", "-inf", "infinity", "nan", "NaN"}) {
    SCOPED_TRACE(value);
    std::string problem = IntervalProblem(value);
    EXPECT_THAT(problem, HasSubstr("invalid setting INTERVAL (--interval)"));
    EXPECT_THAT(problem, HasSubstr("100ms to 30s"));
  }
  EXPECT_THAT(IntervalProblem("nan"), HasSubstr("'nan' is not a duration"));
}

TEST(SettingsTest, DurationsOutsideTheirRangeAreRejected) {
  EXPECT_THAT(IntervalProblem("0"), HasSubstr("'0' is outside the allowed range 100ms to 30s"));
  EXPECT_THAT(IntervalProblem("0s"), HasSubstr("'0s' is outside the allowed range 100ms to 30s"));
  EXPECT_THAT(IntervalProblem("99ms"), HasSubstr("outside the allowed range"));
  EXPECT_THAT(IntervalProblem("72h"), HasSubstr("'72h' is outside the allowed range 100ms to 30s"));
  EXPECT_THAT(IntervalProblem("-1s"), HasSubstr("outside the allowed range"));
}

TEST(SettingsTest, DurationRangeIncludesItsBounds) {
  for (const char* value : {"100ms", "0.1", "30s", "30"}) {
    EXPECT_EQ(IntervalProblem(value), "") << value;
  }
}

TEST(SettingsTest, HelpShowsTheAllowedRange) {
  Settings s = Make({"--help"});
  s.Duration("STATUS_INTERVAL", absl::Seconds(1), absl::Milliseconds(100), absl::Seconds(30), "");
  s.Int("POOL_SIZE", 8, 1, 64, "connections");
  s.String("NAME", "x", "a name");
  EXPECT_THAT(s.Help(), HasSubstr("STATUS_INTERVAL  --status-interval  [default: 1s]  "
                                  "[allowed: 100ms to 30s]\n"));
  EXPECT_THAT(s.Help(), HasSubstr("POOL_SIZE  --pool-size  [default: 8]  [allowed: 1 to 64]\n"));
  EXPECT_THAT(s.Help(), HasSubstr("NAME  --name  [default: x]\n"));
}

TEST(SettingsTest, UnknownFlagIsAnError) {
  Settings s = Make({"--databse-url=x"});
  s.String("DATABASE_URL", "", "db");
  EXPECT_THAT(s.Validate().message(), HasSubstr("unknown flag --databse-url"));
}

TEST(SettingsTest, HelpListsEverySettingWithItsDefault) {
  Settings s = Make({"--help"});
  s.String("TELEGRAM_API_BASE", "https://api.telegram.org", "Bot API base");
  s.Int("POOL_SIZE", 8, 1, 64, "connections");
  EXPECT_TRUE(s.help_requested());
  EXPECT_THAT(s.Help(), HasSubstr("TELEGRAM_API_BASE  --telegram-api-base  [default: https://api.telegram.org]"));
  EXPECT_THAT(s.Help(), HasSubstr("POOL_SIZE  --pool-size  [default: 8]"));
}

}  // namespace
}  // namespace concert
