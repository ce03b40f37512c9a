#include "notifier/message.h"

#include "gtest/gtest.h"

namespace concert::notifier {
namespace {

absl::TimeZone Zone(const std::string& name) {
  absl::TimeZone zone;
  EXPECT_TRUE(absl::LoadTimeZone(name, &zone)) << name;
  return zone;
}

TEST(FormatWon, GroupsThousands) {
  EXPECT_EQ(FormatWon(0), "0 won");
  EXPECT_EQ(FormatWon(999), "999 won");
  EXPECT_EQ(FormatWon(1000), "1,000 won");
  EXPECT_EQ(FormatWon(50000), "50,000 won");
  EXPECT_EQ(FormatWon(1234567), "1,234,567 won");
  EXPECT_EQ(FormatWon(-1234), "-1,234 won");
  EXPECT_EQ(FormatWon(INT64_MIN), "-9,223,372,036,854,775,808 won");
}

TEST(FormatLocalTime, UsesTheZone) {
  absl::Time t = absl::FromUnixSeconds(1764064800);  // 2025-11-25 10:00:00 UTC
  EXPECT_EQ(FormatLocalTime(t, Zone("Asia/Seoul")), "2025-11-25 19:00:00");
  EXPECT_EQ(FormatLocalTime(t, absl::UTCTimeZone()), "2025-11-25 10:00:00");
  EXPECT_EQ(FormatLocalTime(t, Zone("America/New_York")), "2025-11-25 05:00:00");
}

TEST(FormatPaymentMessage, SeedText) {
  events::v1::PaymentCompleted e;
  e.set_event_id("0b5f2a52-6f5b-4c4e-9a53-1b2f7f0f6a11");
  e.set_reservation_id(77);
  e.set_user_mail("fan@example.com");
  e.set_concert_title("IU Golden Hour");
  e.mutable_concert_start()->set_seconds(1767261600);  // 2026-01-01 10:00:00 UTC
  e.mutable_paid_at()->set_seconds(1764064800);
  e.mutable_paid_at()->set_nanos(999'000'000);  // shown truncated, not rounded
  e.set_amount_won(50000);
  EXPECT_EQ(FormatPaymentMessage(e, Zone("Asia/Seoul")),
            "🎫 Your concert payment is complete!\n"
            "Reservation holder: fan@example.com\n"
            "Reservation: #77\n"
            "Concert: IU Golden Hour\n"
            "Start: 2026-01-01 19:00:00\n"
            "Paid at: 2025-11-25 19:00:00\n"
            "Amount: 50,000 won\n"
            "Please be seated 10 minutes before the concert starts!!");
}

TEST(CheckPaymentCompletedTest, AnEmptyPayloadIsNotAPayment) {
  events::v1::PaymentCompleted empty;
  ASSERT_TRUE(empty.ParseFromString(""));
  EXPECT_EQ(CheckPaymentCompleted(empty).code(), absl::StatusCode::kInvalidArgument);
  events::v1::PaymentCompleted no_payment;
  no_payment.set_reservation_id(3);
  EXPECT_EQ(CheckPaymentCompleted(no_payment).code(), absl::StatusCode::kInvalidArgument);
  no_payment.set_payment_id(9);
  EXPECT_TRUE(CheckPaymentCompleted(no_payment).ok());
}

}  // namespace
}  // namespace concert::notifier
