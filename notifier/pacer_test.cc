// The pacer's arithmetic, driven with a clock of the test's own: slots per bot, per private
// chat and per group, bursts, and a 429's pause.
#include "notifier/pacer.h"

#include <gtest/gtest.h>

namespace concert::notifier {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

TEST(PacerTest, PrivateChatGetsItsBurstThenOnePerInterval) {
  Pacer pacer({.chat_rate = 1, .chat_burst = 2});
  EXPECT_EQ(pacer.ReserveChat("42", kT0), kT0);
  EXPECT_EQ(pacer.ReserveChat("42", kT0), kT0);
  EXPECT_EQ(pacer.ReserveChat("42", kT0), kT0 + absl::Seconds(1));
  EXPECT_EQ(pacer.ReserveChat("42", kT0), kT0 + absl::Seconds(2));
  // Another chat is not held back by this one.
  EXPECT_EQ(pacer.ReserveChat("43", kT0), kT0);
  // After a quiet spell the burst is back, never more.
  EXPECT_EQ(pacer.ReserveChat("42", kT0 + absl::Seconds(10)), kT0 + absl::Seconds(10));
  EXPECT_EQ(pacer.ReserveChat("42", kT0 + absl::Seconds(10)), kT0 + absl::Seconds(10));
  EXPECT_EQ(pacer.ReserveChat("42", kT0 + absl::Seconds(10)), kT0 + absl::Seconds(11));
}

TEST(PacerTest, GroupsAndChannelsGetTwentyAMinute) {
  Pacer pacer({.group_rate = 20.0 / 60, .group_burst = 1});
  EXPECT_TRUE(IsGroupChat("-1001234567890"));
  EXPECT_TRUE(IsGroupChat("@concert_news"));
  EXPECT_FALSE(IsGroupChat("42"));
  EXPECT_EQ(pacer.ReserveChat("-100", kT0), kT0);
  EXPECT_EQ(pacer.ReserveChat("-100", kT0), kT0 + absl::Seconds(3));
  EXPECT_EQ(pacer.ReserveChat("@news", kT0), kT0);
  EXPECT_EQ(pacer.ReserveChat("@news", kT0), kT0 + absl::Seconds(3));
}

TEST(PacerTest, BotSlotsAreSpacedAcrossChatsAtItsRate) {
  Pacer pacer({.bot_rate = 30, .bot_burst = 3});
  for (int i = 0; i < 3; ++i) EXPECT_EQ(pacer.ReserveBot(kT0), kT0);
  absl::Time last = kT0;
  for (int i = 0; i < 30; ++i) last = pacer.ReserveBot(kT0);
  // 3 at once, then 30 more at 1/30 s apart: the last one a second after the burst.
  EXPECT_LT(absl::AbsDuration(last - (kT0 + absl::Seconds(1))), absl::Microseconds(1));
}

TEST(PacerTest, A429PausesTheBotAndSlotsStartAfterIt) {
  Pacer pacer({.bot_rate = 10, .bot_burst = 1});
  EXPECT_EQ(pacer.ReserveBot(kT0), kT0);
  pacer.BlockUntil(kT0 + absl::Seconds(5));
  EXPECT_EQ(pacer.ReserveBot(kT0 + absl::Seconds(1)), kT0 + absl::Seconds(5));
  EXPECT_EQ(pacer.ReserveBot(kT0 + absl::Seconds(1)), kT0 + absl::Seconds(5) + absl::Milliseconds(100));
  // A shorter pause never shortens a longer one.
  pacer.BlockUntil(kT0 + absl::Seconds(2));
  EXPECT_GE(pacer.ReserveBot(kT0 + absl::Seconds(1)), kT0 + absl::Seconds(5));
}

TEST(PacerTest, ARateOfZeroIsUnpaced) {
  Pacer pacer({.bot_rate = 0, .chat_rate = 0, .group_rate = 0});
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(pacer.ReserveBot(kT0), kT0);
    EXPECT_EQ(pacer.ReserveChat("42", kT0), kT0);
    EXPECT_EQ(pacer.ReserveChat("-42", kT0), kT0);
  }
  // A 429 still pauses everything.
  pacer.BlockUntil(kT0 + absl::Seconds(3));
  EXPECT_EQ(pacer.ReserveBot(kT0), kT0 + absl::Seconds(3));
}

TEST(PacerTest, AcquireEndsAtOnceWhenCancelled) {
  Pacer pacer({.chat_rate = 0.001, .chat_burst = 1});
  absl::Notification stop;
  Pacer::Waits waits;
  ASSERT_TRUE(pacer.Acquire("42", stop, &waits));  // the burst: no wait
  stop.Notify();
  EXPECT_FALSE(pacer.Acquire("42", stop, &waits));  // the next slot is ~17 minutes away
}

}  // namespace
}  // namespace concert::notifier
