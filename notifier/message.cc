#include "notifier/message.h"

#include "absl/strings/str_cat.h"

namespace concert::notifier {
namespace {

absl::Time FromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

}  // namespace

std::string FormatWon(int64_t amount) {
  // Work on the magnitude as unsigned so INT64_MIN does not overflow.
  bool negative = amount < 0;
  uint64_t magnitude = negative ? 0 - static_cast<uint64_t>(amount) : static_cast<uint64_t>(amount);
  std::string digits = std::to_string(magnitude);
  std::string grouped;
  int since_comma = 0;
  for (auto it = digits.rbegin(); it != digits.rend(); ++it) {
    if (since_comma == 3) {
      grouped.push_back(',');
      since_comma = 0;
    }
    grouped.push_back(*it);
    ++since_comma;
  }
  if (negative) grouped.push_back('-');
  return absl::StrCat(std::string(grouped.rbegin(), grouped.rend()), " won");
}

std::string FormatLocalTime(absl::Time t, absl::TimeZone zone) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", t, zone);
}

std::string FormatPaymentMessage(const events::v1::PaymentCompleted& event, absl::TimeZone zone) {
  return absl::StrCat("🎫 Your concert payment is complete!\n",
                      "Reservation holder: ", event.user_mail(), "\n",
                      "Reservation: #", event.reservation_id(), "\n",
                      "Concert: ", event.concert_title(), "\n",
                      "Start: ", FormatLocalTime(FromProto(event.concert_start()), zone), "\n",
                      "Paid at: ", FormatLocalTime(FromProto(event.paid_at()), zone), "\n",
                      "Amount: ", FormatWon(event.amount_won()), "\n",
                      "Please be seated 10 minutes before the concert starts!!");
}

absl::Status CheckPaymentCompleted(const events::v1::PaymentCompleted& event) {
  if (event.reservation_id() <= 0) {
    return absl::InvalidArgumentError("incomplete event: reservation_id is not positive");
  }
  if (event.payment_id() <= 0) {
    return absl::InvalidArgumentError("incomplete event: payment_id is not positive");
  }
  return absl::OkStatus();
}

}  // namespace concert::notifier
