// The budget's arithmetic, driven with a clock of the test's own (LocalBudget), and the same
// budget shared through Postgres by two replicas (SharedBudget).
#include "notifier/budget.h"

#include <gtest/gtest.h>

#include "common/testing/environment.h"
#include "notifier/delivery_store.h"

namespace concert::notifier {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

absl::Duration Chat(LocalBudget& budget, const std::string& chat, absl::Time now) {
  return budget.ReserveAt({.chats = {chat}}, now).chats[0];
}

absl::Duration Bot(LocalBudget& budget, absl::Time now, int slots = 1) {
  return budget.ReserveAt({.bot_slots = slots}, now).bot_first;
}

TEST(LocalBudgetTest, PrivateChatGetsItsBurstThenOnePerInterval) {
  LocalBudget budget({.chat_rate = 1, .chat_burst = 2});
  EXPECT_EQ(Chat(budget, "42", kT0), absl::ZeroDuration());
  EXPECT_EQ(Chat(budget, "42", kT0), absl::ZeroDuration());
  EXPECT_EQ(Chat(budget, "42", kT0), absl::Seconds(1));
  EXPECT_EQ(Chat(budget, "42", kT0), absl::Seconds(2));
  // Another chat is not held back by this one.
  EXPECT_EQ(Chat(budget, "43", kT0), absl::ZeroDuration());
  // After a quiet spell the burst is back, never more.
  absl::Time later = kT0 + absl::Seconds(10);
  EXPECT_EQ(Chat(budget, "42", later), absl::ZeroDuration());
  EXPECT_EQ(Chat(budget, "42", later), absl::ZeroDuration());
  EXPECT_EQ(Chat(budget, "42", later), absl::Seconds(1));
}

TEST(LocalBudgetTest, GroupsAndChannelsGetTwentyAMinute) {
  LocalBudget budget({.group_rate = 20.0 / 60, .group_burst = 1});
  EXPECT_TRUE(IsGroupChat("-1001234567890"));
  EXPECT_TRUE(IsGroupChat("@concert_news"));
  EXPECT_FALSE(IsGroupChat("42"));
  EXPECT_EQ(Chat(budget, "-100", kT0), absl::ZeroDuration());
  EXPECT_EQ(Chat(budget, "-100", kT0), absl::Seconds(3));
  EXPECT_EQ(Chat(budget, "@news", kT0), absl::ZeroDuration());
  EXPECT_EQ(Chat(budget, "@news", kT0), absl::Seconds(3));
}

TEST(LocalBudgetTest, TheBotsSlotsAreLeasedInRowsAtItsRate) {
  LocalBudget budget({.bot_rate = 30, .bot_burst = 3});
  EXPECT_EQ(budget.max_lease(), 3);  // 100 ms of 30/s
  Budget::Grant first = budget.ReserveAt({.bot_slots = 3}, kT0);
  EXPECT_EQ(first.bot_first, absl::ZeroDuration());
  EXPECT_EQ(first.bot_spacing, absl::Seconds(1) / 30);
  // The next lease starts where the last one ends (less the burst's tolerance).
  absl::Duration second = Bot(budget, kT0, 3);
  EXPECT_LT(absl::AbsDuration(second - absl::Seconds(1) / 30), absl::Microseconds(1));
  // 30 more one by one: the last about a second after the first 3.
  absl::Duration last;
  for (int i = 0; i < 30; ++i) last = Bot(budget, kT0);
  EXPECT_LT(absl::AbsDuration(last - absl::Seconds(1.1)), absl::Milliseconds(1));
}

TEST(LocalBudgetTest, A429PausesTheBotWithoutABurstAfterIt) {
  LocalBudget budget({.bot_rate = 10, .bot_burst = 5});
  EXPECT_EQ(Bot(budget, kT0), absl::ZeroDuration());
  budget.BlockUntil(kT0 + absl::Seconds(5));
  absl::Time now = kT0 + absl::Seconds(1);
  EXPECT_EQ(Bot(budget, now), absl::Seconds(4));
  EXPECT_EQ(Bot(budget, now), absl::Seconds(4) + absl::Milliseconds(100));
  // A shorter pause never shortens a longer one.
  budget.BlockUntil(kT0 + absl::Seconds(2));
  EXPECT_GE(Bot(budget, now), absl::Seconds(4));
}

TEST(LocalBudgetTest, ARateOfZeroIsUnpaced) {
  LocalBudget budget({.bot_rate = 0, .chat_rate = 0, .group_rate = 0});
  EXPECT_FALSE(budget.bot_paced());
  for (int i = 0; i < 100; ++i) {
    Budget::Grant g = budget.ReserveAt({.chats = {"42", "-42"}, .bot_slots = 1}, kT0);
    EXPECT_EQ(g.chats[0], absl::ZeroDuration());
    EXPECT_EQ(g.chats[1], absl::ZeroDuration());
    EXPECT_EQ(g.bot_first, absl::ZeroDuration());
  }
}

class SharedBudgetTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(MigrateSchema(db_.url()).ok()); }

  concert::testing::ScratchDatabase db_{"notifier_budget"};
  PgPool pool_a_{{.url = db_.url(), .size = 1}};
  PgPool pool_b_{{.url = db_.url(), .size = 1}};
};

// Two replicas reserve from one budget: what one takes, the other does not get.
TEST_F(SharedBudgetTest, TwoReplicasShareEachChatAndTheBot) {
  PacingOptions pacing{
      .bot_rate = 10, .bot_burst = 1, .chat_rate = 1, .chat_burst = 1, .group_burst = 1};
  SharedBudget a(pool_a_, pacing), b(pool_b_, pacing);

  absl::StatusOr<Budget::Grant> first = a.Reserve({.chats = {"42", "-100"}, .bot_slots = 3});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_LT(first->chats[0], absl::Milliseconds(50));
  EXPECT_LT(first->chats[1], absl::Milliseconds(50));
  EXPECT_LT(first->bot_first, absl::Milliseconds(50));
  EXPECT_EQ(first->bot_spacing, absl::Milliseconds(100));

  absl::StatusOr<Budget::Grant> second = b.Reserve({.chats = {"42", "-100", "43"}, .bot_slots = 1});
  ASSERT_TRUE(second.ok()) << second.status();
  // Chat 42's next message a second later, the group's 3 s later, chat 43 at once; the bot's
  // next slot after the three that replica A leased.
  EXPECT_NEAR(absl::ToDoubleSeconds(second->chats[0]), 1.0, 0.1);
  EXPECT_NEAR(absl::ToDoubleSeconds(second->chats[1]), 3.0, 0.1);
  EXPECT_LT(second->chats[2], absl::Milliseconds(50));
  EXPECT_NEAR(absl::ToDoubleSeconds(second->bot_first), 0.3, 0.1);
}

TEST_F(SharedBudgetTest, A429AtOneReplicaPausesTheOther) {
  PacingOptions pacing{.bot_rate = 30, .bot_burst = 5};
  SharedBudget a(pool_a_, pacing), b(pool_b_, pacing);
  ASSERT_TRUE(a.Block(absl::Seconds(2)).ok());
  absl::StatusOr<Budget::Grant> grant = b.Reserve({.bot_slots = 2});
  ASSERT_TRUE(grant.ok()) << grant.status();
  EXPECT_NEAR(absl::ToDoubleSeconds(grant->bot_first), 2.0, 0.1);
  // An unpaced chat costs no row.
  absl::StatusOr<Budget::Grant> unpaced =
      SharedBudget(pool_b_, {.chat_rate = 0}).Reserve({.chats = {"7"}});
  ASSERT_TRUE(unpaced.ok());
  EXPECT_EQ(unpaced->chats[0], absl::ZeroDuration());
}

}  // namespace
}  // namespace concert::notifier
