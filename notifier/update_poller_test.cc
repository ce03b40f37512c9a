#include "notifier/update_poller.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace concert::notifier {
namespace {

MATCHER_P3(IsCommand, name, bot, args, "") {
  return arg.has_value() && arg->name == name && arg->bot == bot && arg->args == args;
}

TEST(ParseCommand, ReadsTheNameTheAddresseeAndTheArguments) {
  EXPECT_THAT(ParseCommand("/start abc_DEF-1"), IsCommand("start", "", "abc_DEF-1"));
  EXPECT_THAT(ParseCommand("  /start   abc  "), IsCommand("start", "", "abc"));
  EXPECT_THAT(ParseCommand("/start@concert_bot abc"), IsCommand("start", "concert_bot", "abc"));
  EXPECT_THAT(ParseCommand("/start"), IsCommand("start", "", ""));
  EXPECT_THAT(ParseCommand("/start@concert_bot"), IsCommand("start", "concert_bot", ""));
  EXPECT_THAT(ParseCommand("/stop@Concert_Bot\n"), IsCommand("stop", "Concert_Bot", ""));
  EXPECT_THAT(ParseCommand("/startle abc"), IsCommand("startle", "", "abc"));
  EXPECT_EQ(ParseCommand("hello /start"), std::nullopt);
  EXPECT_EQ(ParseCommand("/ start"), std::nullopt);
  EXPECT_EQ(ParseCommand("/@concert_bot"), std::nullopt);
}

}  // namespace
}  // namespace concert::notifier
