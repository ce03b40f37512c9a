// The texts the bot writes: the seed's payment message, built from the PaymentCompleted event,
// and the short answers of the Telegram link flow, in Korean (the seed's language, default) or
// English. Times are shown in a configurable zone (default Asia/Seoul) as yyyy-MM-dd HH:mm:ss;
// amounts in won with thousands separators.
//
//   absl::TimeZone seoul;
//   absl::LoadTimeZone("Asia/Seoul", &seoul);
//   std::string text = FormatPaymentMessage(event, seoul, MessageLocale::kKorean);
//
// Pure functions; thread-safe.
#ifndef CONCERT_NOTIFIER_MESSAGE_H_
#define CONCERT_NOTIFIER_MESSAGE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "concert/events/v1/payment_events.pb.h"

namespace concert::notifier {

enum class MessageLocale { kKorean, kEnglish };
// "ko" or "en" (MESSAGE_LOCALE).
bool ParseMessageLocale(const std::string& name, MessageLocale* locale);

// Telegram's limit on a message's text, in UTF-16 code units (how the Bot API counts).
inline constexpr size_t kMaxTelegramText = 4096;

// 50000 -> "50,000원" (ko) or "50,000 won" (en); -1234 -> "-1,234원".
std::string FormatWon(int64_t amount, MessageLocale locale);

// "2026-11-25 19:30:00" in `zone`.
std::string FormatLocalTime(absl::Time t, absl::TimeZone zone);

// The full message, lines separated by '\n'. Korean, the seed's words plus the reservation:
//   🎫 콘서트 결제가 완료되었습니다!
//   예약자 ID: <user_mail>
//   예약 번호: #<reservation_id>
//   콘서트: <concert_title>
//   시작 날짜: <concert_start> ("미정" when the event has none: a concert without a date)
//   결제 날짜: <paid_at>
//   결제 금액: <amount>원
//   콘서트 시작 10분전에는 꼭 입장 부탁드립니다!!
// English: the same lines ("🎫 Your concert payment is complete!", "Reservation holder:",
// "Reservation: #", "Concert:", "Start:", "Paid at:", "Amount: <amount> won", "Please be
// seated 10 minutes before the concert starts!!"). However long the concert title (or mail),
// the text stays within kMaxTelegramText: the title is cut and ends with "…".
std::string FormatPaymentMessage(const events::v1::PaymentCompleted& event, absl::TimeZone zone,
                                 MessageLocale locale);

// The label before "#<reservation_id>" in FormatPaymentMessage ("예약 번호: " / "Reservation: ").
absl::string_view ReservationLabel(MessageLocale locale);

// The bot's answers in a chat, one short message each.
enum class LinkReply {
  kLinked,        // /start <code> accepted: payments will come here
  kExpired,       // the code expired: ask the app for a new link
  kUsed,          // the code was used already
  kUnknown,       // forged or mistyped code
  kNoCode,        // /start without a code: open the link from the app
  kUnlinked,      // /stop: no more notifications here
};
std::string FormatLinkReply(LinkReply reply, MessageLocale locale);

// UTF-16 code units of UTF-8 `text` (a 4-byte sequence counts 2), how Telegram measures.
size_t Utf16Length(absl::string_view text);

// OK when the event names what the message is about (a positive reservation and payment id);
// otherwise INVALID_ARGUMENT naming what is missing. An empty or foreign payload can parse as
// a PaymentCompleted with every field at its default: it must not become a message.
absl::Status CheckPaymentCompleted(const events::v1::PaymentCompleted& event);

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_MESSAGE_H_
