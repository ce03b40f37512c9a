// ReadOptions: the defaults that depend on other settings, and the settings that must agree.
#include "notifier/options.h"

#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/testing/settings.h"

namespace concert::notifier {
namespace {

using ::testing::HasSubstr;

constexpr char kSecret[] = "0123456789abcdef0123456789abcdef";

// Reads the notifier's options from `env` (DATABASE_URL added) and `args`; the problem, if any,
// in *error.
Options Read(std::map<std::string, std::string> env, std::string* error,
             std::vector<const char*> args = {}) {
  env.emplace("DATABASE_URL", "postgresql://127.0.0.1:1/x");
  Settings s = testing::SettingsOf("notifier", std::move(env), std::move(args));
  Options o = ReadOptions(s);
  absl::Status valid = s.Validate();
  *error = std::string(valid.message());
  return o;
}

TEST(NotifierOptions, UnlinkedPolicyDerivesFromTheTokenAndTheOperatorChat) {
  std::string error;
  EXPECT_EQ(Read({}, &error).notifier.unlinked_policy, UnlinkedPolicy::kOperator);
  EXPECT_EQ(error, "");
  Options skip = Read({{"TELEGRAM_BOT_TOKEN", "1:t"}, {"INTERNAL_TOKEN", kSecret}}, &error);
  EXPECT_EQ(error, "");
  EXPECT_EQ(skip.notifier.unlinked_policy, UnlinkedPolicy::kSkip);
  Options to_operator = Read(
      {{"TELEGRAM_BOT_TOKEN", "1:t"}, {"INTERNAL_TOKEN", kSecret}, {"TELEGRAM_CHAT_ID", "42"}},
      &error);
  EXPECT_EQ(error, "");
  EXPECT_EQ(to_operator.notifier.unlinked_policy, UnlinkedPolicy::kOperator);
}

TEST(NotifierOptions, SettingsThatDisagreeNameTheSetting) {
  std::string error;
  Read({{"TELEGRAM_BOT_TOKEN", "1:t"}, {"INTERNAL_TOKEN", kSecret},
        {"UNLINKED_POLICY", "operator"}},
       &error);
  EXPECT_THAT(error, HasSubstr("TELEGRAM_CHAT_ID"));
  Read({{"UNLINKED_POLICY", "sometimes"}}, &error);
  EXPECT_THAT(error, HasSubstr("UNLINKED_POLICY"));
  Read({{"LOG_LEVEL", "loud"}}, &error);
  EXPECT_THAT(error, HasSubstr("LOG_LEVEL"));
  Read({{"TELEGRAM_UPDATES", "push"}}, &error);
  EXPECT_THAT(error, HasSubstr("TELEGRAM_UPDATES"));
}

TEST(NotifierOptions, PollingUpdatesNeedsTheInternalTokenExceptToMigrate) {
  std::string error;
  Options o = Read({{"TELEGRAM_BOT_TOKEN", "1:t"}, {"TELEGRAM_CHAT_ID", "42"}}, &error);
  EXPECT_THAT(error, HasSubstr("INTERNAL_TOKEN"));
  Read({{"TELEGRAM_BOT_TOKEN", "1:t"}, {"TELEGRAM_CHAT_ID", "42"}}, &error, {"migrate"});
  EXPECT_EQ(error, "");
  o = Read({{"TELEGRAM_BOT_TOKEN", "1:t"}, {"TELEGRAM_CHAT_ID", "42"},
            {"TELEGRAM_UPDATES", "off"}},
           &error);
  EXPECT_EQ(error, "");
  EXPECT_FALSE(o.poll_updates);
  o = Read({}, &error);
  EXPECT_FALSE(o.poll_updates) << "no bot, no updates";
}

TEST(NotifierOptions, ThePollerTalksToTheSameBotWithTheSameTimeouts) {
  std::string error;
  Options o = Read({{"TELEGRAM_BOT_TOKEN", "1:t"},
                    {"INTERNAL_TOKEN", kSecret},
                    {"TELEGRAM_API_BASE", "http://127.0.0.1:9"},
                    {"TELEGRAM_CONNECT_TIMEOUT", "1500ms"},
                    {"TELEGRAM_TIMEOUT", "7s"},
                    {"MESSAGE_LOCALE", "en"}},
                   &error);
  ASSERT_EQ(error, "");
  EXPECT_TRUE(o.poll_updates);
  EXPECT_EQ(o.poller.api_base, "http://127.0.0.1:9");
  EXPECT_EQ(o.poller.token, "1:t");
  EXPECT_EQ(o.poller.database_url, o.database_url);
  EXPECT_EQ(o.poller.connect_timeout, absl::Milliseconds(1500));
  EXPECT_EQ(o.poller.timeout, absl::Seconds(7));
  EXPECT_EQ(o.telegram.connect_timeout, absl::Milliseconds(1500));
  EXPECT_EQ(o.poller.locale, MessageLocale::kEnglish);
}

}  // namespace
}  // namespace concert::notifier
