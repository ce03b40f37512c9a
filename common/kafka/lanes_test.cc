// Lanes without Kafka: one key's records strictly in order, different keys in parallel on a
// bounded pool, completions from another thread, and cancelled assignments not started.
#include "common/kafka/lanes.h"

#include <atomic>
#include <mutex>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace concert::kafka {
namespace {

bool WaitUntil(const std::function<bool()>& condition, absl::Duration timeout = absl::Seconds(10)) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return condition();
}

TEST(LanesTest, OneKeyInOrderDifferentKeysInParallel) {
  std::mutex mu;
  std::vector<int64_t> order_a;
  std::atomic<int> running{0}, most{0};
  Lanes lanes(4, [&](Lanes::Job& job, Completion done) {
    int now = ++running;
    most = std::max(most.load(), now);
    absl::SleepFor(absl::Milliseconds(20));
    if (job.offset < 100) {
      std::lock_guard lock(mu);
      order_a.push_back(job.offset);
    }
    --running;
    done(Completion::kDone);
  });
  auto assignment = std::make_shared<Assignment>(0);
  for (int64_t i = 0; i < 10; ++i) lanes.Push("a", {nullptr, assignment, i});
  for (int64_t i = 100; i < 106; ++i) lanes.Push("k" + std::to_string(i), {nullptr, assignment, i});
  ASSERT_TRUE(WaitUntil([&] { return lanes.pending() == 0; }));
  EXPECT_EQ(order_a, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_GT(most.load(), 1) << "different keys went in parallel";
  EXPECT_LE(most.load(), 4) << "never more than the pool";
  std::vector<Lanes::Finished> finished = lanes.TakeFinished();
  ASSERT_EQ(finished.size(), 16u);
  for (const Lanes::Finished& f : finished) EXPECT_TRUE(f.done);
}

TEST(LanesTest, ALaterCompletionHoldsItsKeyButNoWorker) {
  std::mutex mu;
  std::vector<Completion> parked;
  std::atomic<int> handled{0};
  Lanes lanes(1, [&](Lanes::Job& job, Completion done) {
    ++handled;
    if (job.offset == 0) {  // parked: the one worker is free at once
      std::lock_guard lock(mu);
      parked.push_back(std::move(done));
      return;
    }
    done(Completion::kDone);
  });
  auto assignment = std::make_shared<Assignment>(0);
  lanes.Push("slow", {nullptr, assignment, 0});
  lanes.Push("slow", {nullptr, assignment, 1});
  lanes.Push("other", {nullptr, assignment, 2});
  ASSERT_TRUE(WaitUntil([&] { return handled == 2; }));  // 0 parked, 2 done; 1 waits for 0
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(handled, 2);
  EXPECT_EQ(lanes.in_flight(), 1);
  EXPECT_FALSE(lanes.WaitIdle({assignment}, absl::Milliseconds(10)));
  std::thread([&] {
    std::lock_guard lock(mu);
    parked.front()(Completion::kDone);
  }).join();
  ASSERT_TRUE(WaitUntil([&] { return lanes.pending() == 0; }));
  EXPECT_EQ(handled, 3);
  EXPECT_TRUE(lanes.WaitIdle({assignment}, absl::Milliseconds(10)));
}

TEST(LanesTest, CancelledRecordsAreAbandonedUnstartedAndAnUncalledCompletionAbandons) {
  std::atomic<int> handled{0};
  absl::Notification release;
  Lanes lanes(1, [&](Lanes::Job& job, Completion done) {
    ++handled;
    release.WaitForNotification();
    // `done` destroyed uncalled: abandoned.
  });
  auto assignment = std::make_shared<Assignment>(3);
  lanes.Push("k", {nullptr, assignment, 10});
  lanes.Push("k", {nullptr, assignment, 11});
  ASSERT_TRUE(WaitUntil([&] { return handled == 1; }));
  assignment->Cancel();
  release.Notify();
  ASSERT_TRUE(WaitUntil([&] { return lanes.pending() == 0; }));
  EXPECT_EQ(handled, 1) << "the record of a cancelled assignment is not started";
  std::vector<Lanes::Finished> finished = lanes.TakeFinished();
  ASSERT_EQ(finished.size(), 2u);
  EXPECT_FALSE(finished[0].done);
  EXPECT_FALSE(finished[1].done);
  EXPECT_EQ(finished[1].offset, 11);
}

TEST(LanesTest, StopWaitsForCompletionsOutstanding) {
  std::mutex mu;
  std::vector<Completion> parked;
  Lanes lanes(2, [&](Lanes::Job&, Completion done) {
    std::lock_guard lock(mu);
    parked.push_back(std::move(done));
  });
  auto assignment = std::make_shared<Assignment>(0);
  lanes.Push("a", {nullptr, assignment, 0});
  ASSERT_TRUE(WaitUntil([&] { return lanes.in_flight() == 1; }));
  std::thread finisher([&] {
    absl::SleepFor(absl::Milliseconds(100));
    std::lock_guard lock(mu);
    parked.front()(Completion::kAbandoned);
  });
  absl::Time start = absl::Now();
  lanes.Stop();
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(90));
  EXPECT_EQ(lanes.in_flight(), 0);
  finisher.join();
}

}  // namespace
}  // namespace concert::kafka
