// The Pacer's scheduling over an in-memory budget: a busy chat waits in its own queue, answers
// go first, a cancelled send ends at once, a 429 pauses everything.
#include "notifier/pacer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include "absl/time/clock.h"

namespace concert::notifier {
namespace {

// What the Pacer handed out, in order.
class Log {
 public:
  Pacer::Send Record(const std::string& what) {
    return [this, what](bool go, const Pacer::Waits& waits) {
      std::lock_guard lock(mu_);
      (go ? granted_ : ended_).push_back(what);
      if (go) waits_.push_back(waits);
    };
  }
  std::vector<Pacer::Waits> waits() {
    std::lock_guard lock(mu_);
    return waits_;
  }
  std::vector<std::string> granted() {
    std::lock_guard lock(mu_);
    return granted_;
  }
  std::vector<std::string> ended() {
    std::lock_guard lock(mu_);
    return ended_;
  }
  bool WaitFor(size_t granted, absl::Duration timeout) {
    absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (this->granted().size() >= granted) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> granted_, ended_;
  std::vector<Pacer::Waits> waits_;
};

// Forty messages for one group (20/min) queued ahead of private chats' used to hold every
// worker; now they wait in the group's queue and the private chats go at the bot's rate.
TEST(PacerTest, ABusyGroupDoesNotHoldBackPrivateChats) {
  LocalBudget budget({.bot_rate = 200, .bot_burst = 5, .chat_rate = 1, .chat_burst = 1,
                      .group_rate = 20.0 / 60, .group_burst = 1});
  Pacer pacer(budget, {.workers = 2});
  absl::Notification never;
  Log log;
  for (int i = 0; i < 40; ++i) {
    pacer.Submit("-100", Pacer::Priority::kNotification, never, log.Record("group"));
  }
  for (int i = 0; i < 20; ++i) {
    pacer.Submit(std::to_string(i + 1), Pacer::Priority::kNotification, never,
                 log.Record("private"));
  }
  ASSERT_TRUE(log.WaitFor(21, absl::Seconds(5))) << log.granted().size();
  std::vector<std::string> granted = log.granted();
  EXPECT_EQ(std::count(granted.begin(), granted.end(), "group"), 1);  // the next in 3 s
  EXPECT_EQ(pacer.waiting(), 39);
}

// Within one chat the order of submission holds; a chat's second message waits for its slot.
TEST(PacerTest, OneChatsMessagesGoInOrderAtItsRate) {
  LocalBudget budget({.bot_rate = 0, .chat_rate = 20, .chat_burst = 1});
  Pacer pacer(budget, {.workers = 4});
  absl::Notification never;
  Log log;
  for (int i = 0; i < 5; ++i) {
    pacer.Submit("42", Pacer::Priority::kNotification, never, log.Record(std::to_string(i)));
  }
  ASSERT_TRUE(log.WaitFor(5, absl::Seconds(5)));
  EXPECT_EQ(log.granted(), (std::vector<std::string>{"0", "1", "2", "3", "4"}));
}

// A user waiting for the bot's answer is served before the backlog of notifications.
TEST(PacerTest, AnAnswerGoesBeforeWaitingNotifications) {
  LocalBudget budget({.bot_rate = 10, .bot_burst = 1, .chat_rate = 0});
  Pacer pacer(budget, {.workers = 4});
  absl::Notification never;
  Log log;
  for (int i = 0; i < 20; ++i) {
    pacer.Submit(std::to_string(i + 1), Pacer::Priority::kNotification, never,
                 log.Record("notification"));
  }
  ASSERT_TRUE(log.WaitFor(1, absl::Seconds(5)));
  Pacer::Waits waits;
  ASSERT_TRUE(pacer.Acquire("777", Pacer::Priority::kAnswer, never, &waits));
  // At 10/s, at most a slot or two went to notifications meanwhile.
  EXPECT_LE(log.granted().size(), 3u);
  EXPECT_GE(pacer.waiting(), 17);
}

// What held a send is counted where it was: its own chat's slot, or the bot's rate (the queue
// of other chats' messages before its chat was even reserved).
TEST(PacerTest, WaitsAreTheChatsOrTheBots) {
  absl::Notification never;
  {
    LocalBudget budget({.bot_rate = 0, .chat_rate = 2, .chat_burst = 1});
    Pacer pacer(budget, {.workers = 2});
    Log log;
    pacer.Submit("42", Pacer::Priority::kNotification, never, log.Record("a"));
    pacer.Submit("42", Pacer::Priority::kNotification, never, log.Record("b"));
    ASSERT_TRUE(log.WaitFor(2, absl::Seconds(5)));
    Pacer::Waits second = log.waits()[1];
    EXPECT_GT(second.chat, absl::Milliseconds(300));  // 500 ms after the first
    EXPECT_LT(second.bot, absl::Milliseconds(100));
  }
  {
    LocalBudget budget({.bot_rate = 5, .bot_burst = 1, .chat_rate = 0});
    Pacer pacer(budget, {.workers = 2});
    Log log;
    for (int i = 0; i < 4; ++i) {
      pacer.Submit(std::to_string(i + 1), Pacer::Priority::kNotification, never,
                   log.Record("x"));
    }
    ASSERT_TRUE(log.WaitFor(4, absl::Seconds(5)));
    Pacer::Waits last = log.waits()[3];
    EXPECT_GT(last.bot, absl::Milliseconds(400));  // the 4th slot at 5/s: 600 ms
    EXPECT_LT(last.chat, absl::Milliseconds(100));
  }
}

TEST(PacerTest, ACancelledSendEndsAtOnceAndUnsent) {
  LocalBudget budget({.chat_rate = 0.001, .chat_burst = 1});
  Pacer pacer(budget, {.workers = 1});
  absl::Notification never, revoked;
  Log log;
  pacer.Submit("42", Pacer::Priority::kNotification, never, log.Record("first"));
  pacer.Submit("42", Pacer::Priority::kNotification, revoked, log.Record("second"));  // ~17 min
  ASSERT_TRUE(log.WaitFor(1, absl::Seconds(5)));
  revoked.Notify();
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (log.ended().empty() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(log.ended(), std::vector<std::string>{"second"});
  EXPECT_EQ(pacer.waiting(), 0);

  absl::Notification stop;
  stop.Notify();
  Pacer::Waits waits;
  EXPECT_FALSE(pacer.Acquire("42", Pacer::Priority::kAnswer, stop, &waits));
}

TEST(PacerTest, A429PausesEverySendForItsRetryAfter) {
  LocalBudget budget({.bot_rate = 0, .chat_rate = 0, .group_rate = 0});
  Pacer pacer(budget, {.workers = 2});
  absl::Notification never;
  Pacer::Waits waits;
  absl::Time blocked = absl::Now();
  pacer.Block(absl::Milliseconds(300));
  ASSERT_TRUE(pacer.Acquire("42", Pacer::Priority::kAnswer, never, &waits));
  EXPECT_GE(absl::Now() - blocked, absl::Milliseconds(300));
  EXPECT_GT(waits.flood, absl::Milliseconds(200));
}

TEST(PacerTest, DestroyingThePacerEndsWhatWaits) {
  LocalBudget budget({.group_rate = 0.001, .group_burst = 1});
  absl::Notification never;
  Log log;
  {
    Pacer pacer(budget, {.workers = 1});
    pacer.Submit("-1", Pacer::Priority::kNotification, never, log.Record("a"));
    pacer.Submit("-1", Pacer::Priority::kNotification, never, log.Record("b"));
    ASSERT_TRUE(log.WaitFor(1, absl::Seconds(5)));
  }
  EXPECT_EQ(log.granted(), std::vector<std::string>{"a"});
  EXPECT_EQ(log.ended(), std::vector<std::string>{"b"});
}

}  // namespace
}  // namespace concert::notifier
