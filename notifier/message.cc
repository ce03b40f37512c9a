#include "notifier/message.h"

#include "absl/strings/str_cat.h"

namespace concert::notifier {
namespace {

constexpr char kEllipsis[] = "…";

absl::Time FromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

// The longest prefix of `text` within `max_units` UTF-16 units, cut between characters.
absl::string_view Utf16Prefix(absl::string_view text, size_t max_units) {
  size_t units = 0;
  size_t i = 0;
  while (i < text.size()) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    size_t bytes = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    size_t char_units = bytes == 4 ? 2 : 1;
    if (units + char_units > max_units || i + bytes > text.size()) break;
    units += char_units;
    i += bytes;
  }
  return text.substr(0, i);
}

std::string Compose(const events::v1::PaymentCompleted& event, absl::TimeZone zone,
                    MessageLocale locale, absl::string_view title) {
  // A concert postponed without a date carries no start.
  std::string start = event.has_concert_start()
                          ? FormatLocalTime(FromProto(event.concert_start()), zone)
                          : (locale == MessageLocale::kKorean ? "미정" : "to be announced");
  std::string paid = FormatLocalTime(FromProto(event.paid_at()), zone);
  std::string amount = FormatWon(event.amount_won(), locale);
  if (locale == MessageLocale::kKorean) {
    return absl::StrCat("🎫 콘서트 결제가 완료되었습니다!\n",
                        "예약자 ID: ", event.user_mail(), "\n",
                        ReservationLabel(locale), "#", event.reservation_id(), "\n",
                        "콘서트: ", title, "\n",
                        "시작 날짜: ", start, "\n",
                        "결제 날짜: ", paid, "\n",
                        "결제 금액: ", amount, "\n",
                        "콘서트 시작 10분전에는 꼭 입장 부탁드립니다!!");
  }
  return absl::StrCat("🎫 Your concert payment is complete!\n",
                      "Reservation holder: ", event.user_mail(), "\n",
                      ReservationLabel(locale), "#", event.reservation_id(), "\n",
                      "Concert: ", title, "\n",
                      "Start: ", start, "\n",
                      "Paid at: ", paid, "\n",
                      "Amount: ", amount, "\n",
                      "Please be seated 10 minutes before the concert starts!!");
}

}  // namespace

bool ParseMessageLocale(const std::string& name, MessageLocale* locale) {
  if (name == "ko") {
    *locale = MessageLocale::kKorean;
    return true;
  }
  if (name == "en") {
    *locale = MessageLocale::kEnglish;
    return true;
  }
  return false;
}

size_t Utf16Length(absl::string_view text) {
  size_t units = 0;
  for (unsigned char c : text) {
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    units += c >= 0xF0 ? 2 : 1;
  }
  return units;
}

std::string FormatWon(int64_t amount, MessageLocale locale) {
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
  return absl::StrCat(std::string(grouped.rbegin(), grouped.rend()),
                      locale == MessageLocale::kKorean ? "원" : " won");
}

std::string FormatLocalTime(absl::Time t, absl::TimeZone zone) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", t, zone);
}

absl::string_view ReservationLabel(MessageLocale locale) {
  return locale == MessageLocale::kKorean ? "예약 번호: " : "Reservation: ";
}

std::string FormatPaymentMessage(const events::v1::PaymentCompleted& event, absl::TimeZone zone,
                                 MessageLocale locale) {
  std::string text = Compose(event, zone, locale, event.concert_title());
  size_t length = Utf16Length(text);
  if (length <= kMaxTelegramText) return text;
  // The rest of the message is what the payer needs (seat, times, amount): the title gives way.
  size_t others = length - Utf16Length(event.concert_title()) + Utf16Length(kEllipsis);
  size_t room = others < kMaxTelegramText ? kMaxTelegramText - others : 0;
  std::string title = absl::StrCat(Utf16Prefix(event.concert_title(), room), kEllipsis);
  text = Compose(event, zone, locale, title);
  // Only an absurd mail address is left to overflow; cut the whole text then.
  if (Utf16Length(text) > kMaxTelegramText) {
    text = std::string(Utf16Prefix(text, kMaxTelegramText));
  }
  return text;
}

std::string FormatLinkReply(LinkReply reply, MessageLocale locale) {
  bool ko = locale == MessageLocale::kKorean;
  switch (reply) {
    case LinkReply::kLinked:
      return ko ? "✅ 연결되었습니다. 이제 결제 완료 알림을 이 채팅으로 보내 드립니다."
                : "✅ Linked: your payment notifications will come to this chat.";
    case LinkReply::kExpired:
      return ko ? "⌛ 이 연결 링크는 만료되었습니다. 앱에서 새 링크를 받아 주세요."
                : "⌛ This link has expired. Please get a new one in the app.";
    case LinkReply::kUsed:
      return ko ? "이 연결 링크는 이미 사용되었습니다. 앱에서 새 링크를 받아 주세요."
                : "This link was already used. Please get a new one in the app.";
    case LinkReply::kUnknown:
      return ko ? "죄송합니다, 이 연결 링크를 확인할 수 없습니다. 앱에서 새 링크를 받아 주세요."
                : "Sorry, this link is not valid. Please get a new one in the app.";
    case LinkReply::kNoCode:
      return ko ? "앱의 '텔레그램 연결' 링크로 시작해 주세요."
                : "Please start from the 'Link Telegram' link in the app.";
    case LinkReply::kUnlinked:
      return ko ? "🔕 연결이 해제되었습니다. 이 채팅으로 더 이상 알림을 보내지 않습니다."
                : "🔕 Unlinked: no more notifications in this chat.";
  }
  return "";
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
