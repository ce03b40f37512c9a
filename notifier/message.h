// The notification text for one completed payment: the seed's message, in English, built from
// the PaymentCompleted event. Times are shown in a configurable zone (default Asia/Seoul) as
// yyyy-MM-dd HH:mm:ss; amounts in won with thousands separators.
//
//   absl::TimeZone seoul;
//   absl::LoadTimeZone("Asia/Seoul", &seoul);
//   std::string text = FormatPaymentMessage(event, seoul);
//
// Pure functions; thread-safe.
#ifndef CONCERT_NOTIFIER_MESSAGE_H_
#define CONCERT_NOTIFIER_MESSAGE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "concert/events/v1/payment_events.pb.h"

namespace concert::notifier {

// 50000 -> "50,000 won"; -1234 -> "-1,234 won".
std::string FormatWon(int64_t amount);

// "2026-11-25 19:30:00" in `zone`.
std::string FormatLocalTime(absl::Time t, absl::TimeZone zone);

// The full message, lines separated by '\n':
//   🎫 Your concert payment is complete!
//   Reservation holder: <user_mail>
//   Reservation: #<reservation_id>
//   Concert: <concert_title>
//   Start: <concert_start>
//   Paid at: <paid_at>
//   Amount: <amount> won
//   Please be seated 10 minutes before the concert starts!!
std::string FormatPaymentMessage(const events::v1::PaymentCompleted& event, absl::TimeZone zone);

// OK when the event names what the message is about (a positive reservation and payment id);
// otherwise INVALID_ARGUMENT naming what is missing. An empty or foreign payload can parse as
// a PaymentCompleted with every field at its default: it must not become a message.
absl::Status CheckPaymentCompleted(const events::v1::PaymentCompleted& event);

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_MESSAGE_H_
