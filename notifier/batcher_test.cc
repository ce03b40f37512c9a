// Batcher with a statement of the test's own: every caller answered, concurrent callers share
// batches, errors reach everyone in the batch, a returned id answers one caller.
#include "notifier/batcher.h"

#include <atomic>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace concert::notifier {
namespace {

TEST(BatcherTest, ConcurrentCallersShareStatementsAndEachGetsItsAnswer) {
  std::mutex mu;
  std::vector<size_t> batch_sizes;
  Batcher batcher([&](const std::vector<std::string>& ids) -> Batcher::Answer {
    absl::SleepFor(absl::Milliseconds(20));  // callers pile up meanwhile
    std::lock_guard lock(mu);
    batch_sizes.push_back(ids.size());
    absl::flat_hash_set<std::string> odd;  // the "rows written": odd ids only
    for (const std::string& id : ids) {
      if ((id.back() - '0') % 2 == 1) odd.insert(id);
    }
    return odd;
  });
  constexpr int kCallers = 40;
  std::atomic<int> right{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kCallers; ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<bool> mine = batcher.Submit(absl::StrCat("id", i));
      if (mine.ok() && *mine == (i % 2 == 1)) ++right;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(right.load(), kCallers);
  size_t total = 0;
  for (size_t n : batch_sizes) total += n;
  EXPECT_EQ(total, static_cast<size_t>(kCallers));
  EXPECT_LT(batch_sizes.size(), static_cast<size_t>(kCallers)) << "never batched";
}

TEST(BatcherTest, AFailedStatementFailsEveryCallerInIt) {
  Batcher batcher([](const std::vector<std::string>&) -> Batcher::Answer {
    return absl::UnavailableError("postgres is down");
  });
  absl::StatusOr<bool> mine = batcher.Submit("a");
  EXPECT_EQ(mine.status().code(), absl::StatusCode::kUnavailable);
}

TEST(BatcherTest, AReturnedIdAnswersOneCallerOnly) {
  absl::Notification first_running, release;
  std::atomic<int> calls{0};
  Batcher batcher([&](const std::vector<std::string>& ids) -> Batcher::Answer {
    if (calls++ == 0) {
      first_running.Notify();
      release.WaitForNotification();
    }
    return absl::flat_hash_set<std::string>(ids.begin(), ids.end());
  });
  std::thread blocker([&] { EXPECT_TRUE(*batcher.Submit("other")); });
  first_running.WaitForNotification();
  // Both go into the same (next) batch while the first one runs.
  std::atomic<int> yes{0};
  std::thread a([&] { yes += *batcher.Submit("same"); });
  std::thread b([&] { yes += *batcher.Submit("same"); });
  absl::SleepFor(absl::Milliseconds(100));
  release.Notify();
  a.join();
  b.join();
  blocker.join();
  EXPECT_EQ(yes.load(), 1);
}

}  // namespace
}  // namespace concert::notifier
