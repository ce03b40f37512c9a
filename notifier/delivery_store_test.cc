// The delivery record's state machine against a real Postgres (a scratch database).
#include "notifier/delivery_store.h"

#include <pqxx/pqxx>

#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "common/testing/environment.h"
#include "gtest/gtest.h"

namespace concert::notifier {
namespace {

constexpr char kId[] = "0b5f2a52-6f5b-4c4e-9a53-1b2f7f0f6a11";

class DeliveryStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(MigrateSchema(db_.url()).ok()); }

  std::string State() {
    pqxx::connection conn(db_.url());
    pqxx::work tx(conn);
    pqxx::row r = tx.exec_params1(
        "SELECT state || '/' || attempts || '/' || uncertain FROM notification.deliveries "
        "WHERE event_id = $1::uuid",
        std::string(kId));
    return r[0].as<std::string>();
  }

  concert::testing::ScratchDatabase db_{"notifier_store"};
  PgPool pool_{{.url = db_.url(), .size = 2}};
  DeliveryStore store_{pool_};
};

TEST_F(DeliveryStoreTest, MigrationsAreIdempotent) {
  EXPECT_TRUE(MigrateSchema(db_.url()).ok());
}

TEST_F(DeliveryStoreTest, FirstSightSendsThenDuplicate) {
  auto first = store_.Begin(kId, UncertainPolicy::kResend);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->action, BeginResult::Action::kSend);
  EXPECT_FALSE(first->uncertain);
  EXPECT_EQ(State(), "SENDING/1/false");
  ASSERT_TRUE(*store_.MarkSent(kId, 1));
  EXPECT_EQ(State(), "SENT/1/false");

  auto again = store_.Begin(kId, UncertainPolicy::kResend);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->action, BeginResult::Action::kDuplicate);
  EXPECT_EQ(State(), "SENT/1/false");
}

TEST_F(DeliveryStoreTest, InFlightOnArrivalIsUncertainAndResent) {
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kResend).ok());  // then "crash"
  auto again = store_.Begin(kId, UncertainPolicy::kResend);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->action, BeginResult::Action::kSend);
  EXPECT_TRUE(again->uncertain);
  EXPECT_EQ(again->attempts, 2);
  EXPECT_EQ(State(), "SENDING/2/true");
}

TEST_F(DeliveryStoreTest, InFlightWithSkipPolicyBecomesSentWithoutSending) {
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kSkip).ok());
  auto again = store_.Begin(kId, UncertainPolicy::kSkip);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->action, BeginResult::Action::kSkip);
  EXPECT_TRUE(again->uncertain);
  EXPECT_EQ(State(), "SENT/1/true");
  EXPECT_EQ(store_.Begin(kId, UncertainPolicy::kSkip)->action, BeginResult::Action::kDuplicate);
}

TEST_F(DeliveryStoreTest, FailedMaySendAgain) {
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kResend).ok());
  ASSERT_TRUE(*store_.MarkFailed(kId, 1, "telegram: HTTP 400"));
  EXPECT_EQ(State(), "FAILED/1/false");
  auto retry = store_.Begin(kId, UncertainPolicy::kResend);
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->action, BeginResult::Action::kSend);
  EXPECT_TRUE(retry->retry);
  EXPECT_FALSE(retry->uncertain);
  EXPECT_EQ(State(), "SENDING/2/false");
}

// A send that failed for sure, whose FAILED mark could not be written (stopping with Postgres
// down), went to the DLQ with attempt 1; the retry-worker re-publishes it as attempt 2. Under
// the skip policy it must be sent, not taken as delivered.
TEST_F(DeliveryStoreTest, InFlightButDeadLetteredIsARetryEvenWithSkipPolicy) {
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kSkip).ok());  // SENDING, attempt 1
  auto retry = store_.Begin(kId, UncertainPolicy::kSkip, /*incoming_attempt=*/2);
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->action, BeginResult::Action::kSend);
  EXPECT_FALSE(retry->uncertain);
  EXPECT_EQ(retry->attempts, 2);
  EXPECT_EQ(State(), "SENDING/2/false");
}

TEST_F(DeliveryStoreTest, UnknownOutcomeMarksTheRowUncertain) {
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kResend).ok());
  ASSERT_TRUE(*store_.MarkFailed(kId, 1, "telegram: timeout", /*possibly_delivered=*/true));
  EXPECT_EQ(State(), "FAILED/1/true");
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kResend).ok());
  ASSERT_TRUE(*store_.MarkSentUncertain(kId, 2, "telegram: timeout"));
  EXPECT_EQ(State(), "SENT/2/true");
}

TEST_F(DeliveryStoreTest, ReleaseUndoesABeginThatSentNothing) {
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kResend).ok());
  ASSERT_TRUE(*store_.Release(kId, 1, "not sent: stopped during a 429 pause"));
  auto again = store_.Begin(kId, UncertainPolicy::kSkip);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->action, BeginResult::Action::kSend);
  EXPECT_FALSE(again->uncertain);
  EXPECT_EQ(State(), "SENDING/1/false");
}

TEST_F(DeliveryStoreTest, ARedeliveryOfADeadLetteredFailureIsADuplicate) {
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kResend).ok());
  ASSERT_TRUE(*store_.MarkFailed(kId, 1, "telegram: HTTP 502"));
  ASSERT_TRUE(*store_.MarkDeadLettered(kId, 1, 1));
  // The same record again (its offset was not committed before a rebalance).
  EXPECT_EQ(store_.Begin(kId, UncertainPolicy::kResend)->action, BeginResult::Action::kDuplicate);
  // The retry-worker's re-publish, attempt 2, sends.
  auto retry = store_.Begin(kId, UncertainPolicy::kResend, 2);
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->action, BeginResult::Action::kSend);
  EXPECT_EQ(retry->attempts, 2);
}

// A worker paused mid-send (past its consumer session) while another took the record over and
// delivered it: whatever the first one reports when it wakes changes nothing.
TEST_F(DeliveryStoreTest, AStaleSendChangesNothingOnceTakenOver) {
  ASSERT_EQ(store_.Begin(kId, UncertainPolicy::kResend)->attempts, 1);  // worker A, then paused
  auto takeover = store_.Begin(kId, UncertainPolicy::kResend);         // worker B
  ASSERT_TRUE(takeover.ok());
  ASSERT_EQ(takeover->attempts, 2);
  EXPECT_FALSE(*store_.StillSending(kId, 1));
  EXPECT_TRUE(*store_.StillSending(kId, 2));
  ASSERT_TRUE(*store_.MarkSent(kId, 2));
  EXPECT_EQ(State(), "SENT/2/true");

  EXPECT_FALSE(*store_.StillSending(kId, 1));
  EXPECT_FALSE(*store_.MarkFailed(kId, 1, "telegram: timeout", /*possibly_delivered=*/true));
  EXPECT_FALSE(*store_.MarkSent(kId, 1));
  EXPECT_FALSE(*store_.MarkSentUncertain(kId, 1, "telegram: timeout"));
  EXPECT_FALSE(*store_.MarkUndeliverable(kId, 1, "chat gone"));
  EXPECT_FALSE(*store_.Release(kId, 1, "not sent"));
  EXPECT_FALSE(*store_.MarkDeadLettered(kId, 1, 1));
  EXPECT_EQ(State(), "SENT/2/true");
  EXPECT_EQ(store_.Begin(kId, UncertainPolicy::kResend)->action, BeginResult::Action::kDuplicate);
}

// The fault run's "copy after confirmed SENT": worker A, woken from a freeze, checked that the
// row was still its own and sent; worker B took the row over a moment later and sent too, and
// B's copy was confirmed before A's arrived. Under a lease, B waits until every request A may
// still have on its way has ended, and A's every check renews the lease.
TEST_F(DeliveryStoreTest, ARowIsNotTakenOverWhileItsSendersLeaseRuns) {
  DeliveryStore leased(pool_, absl::Seconds(2));
  ASSERT_EQ(leased.Begin(kId, UncertainPolicy::kResend)->attempts, 1);  // worker A
  absl::Time claimed = absl::Now();

  auto early = leased.Begin(kId, UncertainPolicy::kResend);  // worker B, at once
  ASSERT_TRUE(early.ok());
  EXPECT_EQ(early->action, BeginResult::Action::kBusy);
  EXPECT_GT(early->busy_for, absl::Seconds(1));
  EXPECT_LE(early->busy_for, absl::Seconds(2));
  // The same under the skip policy: marking it SENT could not stop A's request either.
  EXPECT_EQ(leased.Begin(kId, UncertainPolicy::kSkip)->action, BeginResult::Action::kBusy);
  EXPECT_EQ(State(), "SENDING/1/false");

  // A checks again a second later: the lease runs from the check.
  absl::SleepFor(absl::Seconds(1) - (absl::Now() - claimed));
  ASSERT_TRUE(*leased.StillSending(kId, 1));
  absl::SleepFor(absl::Milliseconds(1500));  // past the Begin's lease, not the check's
  EXPECT_EQ(leased.Begin(kId, UncertainPolicy::kResend)->action, BeginResult::Action::kBusy);

  absl::SleepFor(absl::Milliseconds(700));  // the check's lease is over
  auto takeover = leased.Begin(kId, UncertainPolicy::kResend);
  ASSERT_TRUE(takeover.ok());
  EXPECT_EQ(takeover->action, BeginResult::Action::kSend);
  EXPECT_TRUE(takeover->uncertain);
  EXPECT_EQ(takeover->attempts, 2);
  EXPECT_FALSE(*leased.StillSending(kId, 1));  // A's next check: not its own any more
}

// A dead letter proves its send is over: the retry-worker's re-publish of a send found SENDING
// (its FAILED mark unwritten) does not wait for the lease.
TEST_F(DeliveryStoreTest, ARepublishedDeadLetterDoesNotWaitForTheLease) {
  DeliveryStore leased(pool_, absl::Seconds(30));
  ASSERT_TRUE(leased.Begin(kId, UncertainPolicy::kResend).ok());
  auto retry = leased.Begin(kId, UncertainPolicy::kResend, /*incoming_attempt=*/2);
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->action, BeginResult::Action::kSend);
  EXPECT_EQ(retry->attempts, 2);
}

// A record read again after a rebalance is known final before it is paced: SENT and
// UNDELIVERABLE only (a FAILED or SENDING row still goes through Begin).
TEST_F(DeliveryStoreTest, FinalIsSentOrUndeliverableOnly) {
  constexpr char kOther[] = "0b7f3c3e-2f5a-4c1e-9f3a-6f1d2c3b4a5e";
  EXPECT_FALSE(*store_.Final(kId));  // never seen
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kResend).ok());
  EXPECT_FALSE(*store_.Final(kId));  // SENDING
  ASSERT_TRUE(*store_.MarkSent(kId, 1));
  EXPECT_TRUE(*store_.Final(kId));
  ASSERT_TRUE(store_.Begin(kOther, UncertainPolicy::kResend).ok());
  ASSERT_TRUE(*store_.MarkFailed(kOther, 1, "telegram: 500"));
  EXPECT_FALSE(*store_.Final(kOther));
  ASSERT_TRUE(store_.Begin(kOther, UncertainPolicy::kResend).ok());
  ASSERT_TRUE(*store_.MarkUndeliverable(kOther, 2, "chat gone"));
  EXPECT_TRUE(*store_.Final(absl::AsciiStrToUpper(kOther)));
}

// A stale failure must not undo the new owner's own failure either (its dead letter is the one
// the retry-worker follows).
TEST_F(DeliveryStoreTest, AStaleFailureDoesNotTouchTheNewOwnersFailure) {
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kResend).ok());
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kResend).ok());
  ASSERT_TRUE(*store_.MarkFailed(kId, 2, "telegram: HTTP 400"));
  EXPECT_FALSE(*store_.MarkFailed(kId, 1, "telegram: timeout"));
  EXPECT_FALSE(*store_.MarkDeadLettered(kId, 1, 1));
  ASSERT_TRUE(*store_.MarkDeadLettered(kId, 2, 2));
  EXPECT_EQ(State(), "FAILED/2/true");
}

// A Mark* retried after its first try committed unseen (a broken connection) finds its own
// outcome: recorded, not stale.
TEST_F(DeliveryStoreTest, ARepeatedMarkOfTheSameSendIsRecorded) {
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kResend).ok());
  ASSERT_TRUE(*store_.MarkFailed(kId, 1, "telegram: HTTP 400"));
  EXPECT_TRUE(*store_.MarkFailed(kId, 1, "telegram: HTTP 400"));
  ASSERT_TRUE(store_.Begin(kId, UncertainPolicy::kResend).ok());
  ASSERT_TRUE(*store_.MarkSent(kId, 2));
  EXPECT_TRUE(*store_.MarkSent(kId, 2));
  EXPECT_EQ(State(), "SENT/2/false");
}

TEST(IsUuid, CanonicalFormOnly) {
  EXPECT_TRUE(IsUuid(kId));
  EXPECT_TRUE(IsUuid("0B5F2A52-6F5B-4C4E-9A53-1B2F7F0F6A11"));
  EXPECT_FALSE(IsUuid(""));
  EXPECT_FALSE(IsUuid("0b5f2a52x6f5b-4c4e-9a53-1b2f7f0f6a11"));
  EXPECT_FALSE(IsUuid("0b5f2a52-6f5b-4c4e-9a53-1b2f7f0f6a1g"));
}

TEST(ParseUncertainPolicy, Names) {
  UncertainPolicy p;
  EXPECT_TRUE(ParseUncertainPolicy("skip", &p));
  EXPECT_EQ(p, UncertainPolicy::kSkip);
  EXPECT_TRUE(ParseUncertainPolicy("resend", &p));
  EXPECT_EQ(p, UncertainPolicy::kResend);
  EXPECT_FALSE(ParseUncertainPolicy("maybe", &p));
}

}  // namespace
}  // namespace concert::notifier
