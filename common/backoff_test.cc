#include "common/backoff.h"

#include <gtest/gtest.h>

namespace concert {
namespace {

TEST(BackoffTest, DoublesPerFailedAttemptUpToTheCap) {
  BackoffPolicy p{.base = absl::Seconds(30), .cap = absl::Minutes(10), .jitter_percent = 0};
  EXPECT_EQ(BackoffDelay(1, p, 0.5), absl::Seconds(30));
  EXPECT_EQ(BackoffDelay(2, p, 0.5), absl::Seconds(60));
  EXPECT_EQ(BackoffDelay(3, p, 0.5), absl::Seconds(120));
  EXPECT_EQ(BackoffDelay(6, p, 0.5), absl::Minutes(10));
  EXPECT_EQ(BackoffDelay(1000, p, 0.5), absl::Minutes(10)) << "no overflow";
  EXPECT_EQ(BackoffDelay(0, p, 0.5), absl::Seconds(30));
}

TEST(BackoffTest, FullJitterSpansZeroToTheWait) {
  BackoffPolicy p{.base = absl::Seconds(10), .cap = absl::Minutes(10), .jitter_percent = 100};
  EXPECT_EQ(BackoffDelay(2, p, 0.0), absl::ZeroDuration());
  EXPECT_EQ(BackoffDelay(2, p, 1.0), absl::Seconds(20));
  EXPECT_EQ(BackoffDelay(2, p, 0.25), absl::Seconds(5));
}

TEST(BackoffTest, PartialJitterKeepsAFloor) {
  BackoffPolicy p{.base = absl::Seconds(10), .cap = absl::Minutes(10), .jitter_percent = 50};
  EXPECT_EQ(BackoffDelay(1, p, 0.0), absl::Seconds(5));
  EXPECT_EQ(BackoffDelay(1, p, 1.0), absl::Seconds(10));
}

TEST(BackoffTest, UniformRandomStaysInRange) {
  for (int i = 0; i < 1000; ++i) {
    double r = UniformRandom();
    ASSERT_GE(r, 0.0);
    ASSERT_LE(r, 1.0);
  }
}

TEST(BackoffTest, ALoopsWaitsDoubleUpToItsMaxAndStartOverAfterReset) {
  Backoff backoff(absl::Milliseconds(100), absl::Milliseconds(500));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(100));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(200));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(400));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(500));
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(500));
  backoff.Reset();
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(100));
}

TEST(BackoffTest, WaitReturnsFalseAtOnceWhenStopped) {
  absl::Notification stop;
  stop.Notify();
  Backoff backoff(absl::Hours(1), absl::Hours(1));
  EXPECT_FALSE(backoff.Wait(stop));
}

TEST(BackoffTest, WaitSleepsAndReturnsTrueWhenNotStopped) {
  absl::Notification stop;
  Backoff backoff(absl::Milliseconds(1), absl::Milliseconds(1));
  EXPECT_TRUE(backoff.Wait(stop));
}

}  // namespace
}  // namespace concert
