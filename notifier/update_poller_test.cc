#include "notifier/update_poller.h"

#include "gtest/gtest.h"

namespace concert::notifier {
namespace {

TEST(StartCode, ReadsTheDeepLinkPayload) {
  EXPECT_EQ(StartCode("/start abc_DEF-1"), "abc_DEF-1");
  EXPECT_EQ(StartCode("  /start   abc  "), "abc");
  EXPECT_EQ(StartCode("/start@concert_bot abc"), "abc");
  EXPECT_EQ(StartCode("/start"), "");
  EXPECT_EQ(StartCode("/start@concert_bot"), "");
  EXPECT_EQ(StartCode("/startle abc"), std::nullopt);
  EXPECT_EQ(StartCode("/stop"), std::nullopt);
  EXPECT_EQ(StartCode("hello"), std::nullopt);
}

}  // namespace
}  // namespace concert::notifier
