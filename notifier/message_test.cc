#include "notifier/message.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace concert::notifier {
namespace {

absl::TimeZone Zone(const std::string& name) {
  absl::TimeZone zone;
  EXPECT_TRUE(absl::LoadTimeZone(name, &zone)) << name;
  return zone;
}

constexpr MessageLocale kKo = MessageLocale::kKorean;
constexpr MessageLocale kEn = MessageLocale::kEnglish;

TEST(FormatWon, GroupsThousands) {
  EXPECT_EQ(FormatWon(0, kEn), "0 won");
  EXPECT_EQ(FormatWon(999, kEn), "999 won");
  EXPECT_EQ(FormatWon(1000, kEn), "1,000 won");
  EXPECT_EQ(FormatWon(50000, kEn), "50,000 won");
  EXPECT_EQ(FormatWon(1234567, kEn), "1,234,567 won");
  EXPECT_EQ(FormatWon(-1234, kEn), "-1,234 won");
  EXPECT_EQ(FormatWon(INT64_MIN, kEn), "-9,223,372,036,854,775,808 won");
  EXPECT_EQ(FormatWon(50000, kKo), "50,000원");
}

TEST(FormatLocalTime, UsesTheZone) {
  absl::Time t = absl::FromUnixSeconds(1764064800);  // 2025-11-25 10:00:00 UTC
  EXPECT_EQ(FormatLocalTime(t, Zone("Asia/Seoul")), "2025-11-25 19:00:00");
  EXPECT_EQ(FormatLocalTime(t, absl::UTCTimeZone()), "2025-11-25 10:00:00");
  EXPECT_EQ(FormatLocalTime(t, Zone("America/New_York")), "2025-11-25 05:00:00");
}

events::v1::PaymentCompleted SeedEvent() {
  events::v1::PaymentCompleted e;
  e.set_event_id("0b5f2a52-6f5b-4c4e-9a53-1b2f7f0f6a11");
  e.set_reservation_id(77);
  e.set_user_mail("fan@example.com");
  e.set_concert_title("IU Golden Hour");
  e.mutable_concert_start()->set_seconds(1767261600);  // 2026-01-01 10:00:00 UTC
  e.mutable_paid_at()->set_seconds(1764064800);
  e.mutable_paid_at()->set_nanos(999'000'000);  // shown truncated, not rounded
  e.set_amount_won(50000);
  return e;
}

TEST(FormatPaymentMessage, SeedTextInKorean) {
  EXPECT_EQ(FormatPaymentMessage(SeedEvent(), Zone("Asia/Seoul"), kKo),
            "🎫 콘서트 결제가 완료되었습니다!\n"
            "예약자 ID: fan@example.com\n"
            "예약 번호: #77\n"
            "콘서트: IU Golden Hour\n"
            "시작 날짜: 2026-01-01 19:00:00\n"
            "결제 날짜: 2025-11-25 19:00:00\n"
            "결제 금액: 50,000원\n"
            "콘서트 시작 10분전에는 꼭 입장 부탁드립니다!!");
}

TEST(FormatPaymentMessage, SeedTextInEnglish) {
  EXPECT_EQ(FormatPaymentMessage(SeedEvent(), Zone("Asia/Seoul"), kEn),
            "🎫 Your concert payment is complete!\n"
            "Reservation holder: fan@example.com\n"
            "Reservation: #77\n"
            "Concert: IU Golden Hour\n"
            "Start: 2026-01-01 19:00:00\n"
            "Paid at: 2025-11-25 19:00:00\n"
            "Amount: 50,000 won\n"
            "Please be seated 10 minutes before the concert starts!!");
}

// A schedule postponed with no date (starts_at 'infinity') carries no concert_start.
TEST(FormatPaymentMessage, AConcertWithoutADateSaysSo) {
  events::v1::PaymentCompleted e = SeedEvent();
  e.clear_concert_start();
  EXPECT_TRUE(absl::StrContains(FormatPaymentMessage(e, Zone("Asia/Seoul"), kKo),
                                "시작 날짜: 미정\n"));
  EXPECT_TRUE(absl::StrContains(FormatPaymentMessage(e, Zone("Asia/Seoul"), kEn),
                                "Start: to be announced\n"));
}

TEST(FormatPaymentMessage, AnyTitleFitsTelegramsLimitAndOnlyTheTitleIsCut) {
  for (MessageLocale locale : {kKo, kEn}) {
    for (const std::string& unit : {std::string("a"), std::string("가"), std::string("🎵")}) {
      events::v1::PaymentCompleted e = SeedEvent();
      std::string title;
      for (int i = 0; i < 5000; ++i) title += unit;
      e.set_concert_title(title);
      std::string text = FormatPaymentMessage(e, Zone("Asia/Seoul"), locale);
      EXPECT_LE(Utf16Length(text), kMaxTelegramText) << unit;
      EXPECT_GE(Utf16Length(text), kMaxTelegramText - 1) << unit;  // cut no shorter than needed
      EXPECT_NE(text.find("…\n"), std::string::npos);
      EXPECT_NE(text.find("#77\n"), std::string::npos);
      EXPECT_NE(text.find("50,000"), std::string::npos);
      EXPECT_NE(text.find("10"), std::string::npos);
    }
  }
  events::v1::PaymentCompleted short_title = SeedEvent();
  EXPECT_EQ(FormatPaymentMessage(short_title, Zone("Asia/Seoul"), kKo).find("…"),
            std::string::npos);
}

TEST(Utf16Length, CountsLikeTelegram) {
  EXPECT_EQ(Utf16Length("abc"), 3u);
  EXPECT_EQ(Utf16Length("가나"), 2u);
  EXPECT_EQ(Utf16Length("🎫"), 2u);
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
