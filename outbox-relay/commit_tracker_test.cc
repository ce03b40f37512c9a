#include "outbox-relay/commit_tracker.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace concert::relay {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

TEST(CommitTrackerTest, ConfirmsOnlyAfterEveryEventOfTheCommitIsAcknowledged) {
  CommitTracker t;
  uint64_t tx = t.Begin();
  t.AddEvent(tx, 1);
  t.AddEvent(tx, 2);
  t.End(tx, 0x100);
  t.Acknowledge(tx, 1, absl::OkStatus());
  EXPECT_EQ(t.TakeConfirmable().lsn, 0u);
  t.Acknowledge(tx, 2, absl::OkStatus());
  CommitTracker::Confirmable c = t.TakeConfirmable();
  EXPECT_EQ(c.lsn, 0x100u);
  EXPECT_THAT(c.row_ids, ElementsAre(1, 2));
  EXPECT_TRUE(t.Idle());
}

TEST(CommitTrackerTest, ALaterCommitWaitsForAnEarlierOne) {
  CommitTracker t;
  uint64_t a = t.Begin();
  t.AddEvent(a, 1);
  t.End(a, 0x100);
  uint64_t b = t.Begin();
  t.AddEvent(b, 2);
  t.End(b, 0x200);
  t.Acknowledge(b, 2, absl::OkStatus());
  EXPECT_EQ(t.TakeConfirmable().lsn, 0u);  // b is done, a is not
  t.Acknowledge(a, 1, absl::OkStatus());
  CommitTracker::Confirmable c = t.TakeConfirmable();
  EXPECT_EQ(c.lsn, 0x200u);
  EXPECT_EQ(c.transactions, 2);
  EXPECT_THAT(c.row_ids, ElementsAre(1, 2));
}

TEST(CommitTrackerTest, TheConfirmablePrefixCarriesItsLastCommitTime) {
  CommitTracker t;
  const absl::Time first = absl::FromUnixSeconds(1000), second = absl::FromUnixSeconds(1001);
  uint64_t a = t.Begin();
  t.End(a, 0x100, first);
  uint64_t b = t.Begin();
  t.AddEvent(b, 2);
  t.End(b, 0x200, second);
  EXPECT_EQ(t.TakeConfirmable().committed_at, first);  // b still waits for Kafka
  t.Acknowledge(b, 2, absl::OkStatus());
  EXPECT_EQ(t.TakeConfirmable().committed_at, second);
}

TEST(CommitTrackerTest, AnOpenTransactionIsNotConfirmedEvenWhenAcknowledged) {
  CommitTracker t;
  uint64_t tx = t.Begin();
  t.AddEvent(tx, 1);
  t.Acknowledge(tx, 1, absl::OkStatus());
  EXPECT_EQ(t.TakeConfirmable().lsn, 0u);  // its Commit has not arrived: more rows may follow
  EXPECT_FALSE(t.Idle());
  t.End(tx, 0x300);
  EXPECT_EQ(t.TakeConfirmable().lsn, 0x300u);
}

TEST(CommitTrackerTest, ATransactionWithoutEventsIsConfirmableAtOnce) {
  CommitTracker t;
  uint64_t tx = t.Begin();
  t.End(tx, 0x400);
  CommitTracker::Confirmable c = t.TakeConfirmable();
  EXPECT_EQ(c.lsn, 0x400u);
  EXPECT_THAT(c.row_ids, IsEmpty());
}

TEST(CommitTrackerTest, AFailureStopsAllFurtherConfirmation) {
  CommitTracker t;
  uint64_t a = t.Begin();
  t.AddEvent(a, 1);
  t.End(a, 0x100);
  uint64_t b = t.Begin();
  t.AddEvent(b, 2);
  t.End(b, 0x200);
  t.Acknowledge(a, 1, absl::UnavailableError("broker down"));
  t.Acknowledge(b, 2, absl::OkStatus());
  EXPECT_EQ(t.TakeConfirmable().lsn, 0u);
  EXPECT_EQ(t.failure().code(), absl::StatusCode::kUnavailable);
}

TEST(CommitTrackerTest, CountsPendingEvents) {
  CommitTracker t;
  EXPECT_EQ(t.oldest_pending_since(), absl::InfiniteFuture());
  uint64_t tx = t.Begin();
  t.AddEvent(tx, 1);
  t.AddEvent(tx, 2);
  EXPECT_EQ(t.pending_events(), 2);
  EXPECT_LT(t.oldest_pending_since(), absl::InfiniteFuture());
  t.Acknowledge(tx, 1, absl::OkStatus());
  t.Acknowledge(tx, 2, absl::OkStatus());
  EXPECT_EQ(t.pending_events(), 0);
  EXPECT_EQ(t.oldest_pending_since(), absl::InfiniteFuture());
}

}  // namespace
}  // namespace concert::relay
