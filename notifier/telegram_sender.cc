#include "notifier/telegram_sender.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/backoff.h"
#include "common/log.h"

namespace concert::notifier {

TelegramSender::TelegramSender(TelegramOptions options)
    : options_(std::move(options)),
      bot_({.api_base = options_.api_base,
            .token = options_.token,
            .connect_timeout = options_.connect_timeout,
            .timeout = options_.total_timeout}) {}

SendResult TelegramSender::SendOnce(const Notification& notification) {
  BotAnswer answer = bot_.SendMessage(notification.chat_id, notification.text,
                                      options_.paid_broadcast, notification.still_ours);
  const HttpResponse& http = answer.http;
  using Outcome = HttpResponse::Outcome;
  if (http.outcome == Outcome::kNotSent) return SendResult::NotOurs();
  if (!http.answered()) {
    // Telegram has no idempotency key: once the request may have reached it, only the caller,
    // after recording the doubt, may send it again. An oversized answer is not Telegram's.
    return SendResult::Transient(http.outcome == Outcome::kTimeout ? "timeout" : "connection",
                                 absl::StrCat("telegram: ", http.error), http.request_sent);
  }
  if (http.status == 200) {
    if (answer.ok) return SendResult::Sent();
    // A 200 without ok:true is not something Telegram does; retrying will not fix it.
    return SendResult::Permanent("telegram_4xx", "telegram: 200 without ok:true");
  }
  std::string message = absl::StrCat("telegram: HTTP ", http.status,
                                     answer.description.empty() ? "" : ": ", answer.description);
  if (http.status == 429) {
    return SendResult::RateLimited(message, std::min(answer.retry_after, options_.max_retry_after));
  }
  if (http.status >= 500) {
    // A gateway's 5xx may come after Telegram accepted the message.
    return SendResult::Transient("telegram_5xx", message,
                                 /*possibly_delivered=*/!answer.bot_api_error);
  }
  if (http.status == 403 ||
      (http.status == 400 && absl::StrContains(answer.description, "chat not found"))) {
    return SendResult::Permanent(kChatGone, message);
  }
  return SendResult::Permanent("telegram_4xx", message);
}

bool TelegramSender::Wait(absl::Duration d) const {
  if (options_.stop == nullptr) {
    absl::SleepFor(d);
    return true;
  }
  return !options_.stop->WaitForNotificationWithTimeout(d);
}

SendResult TelegramSender::Send(const Notification& notification) {
  // Doubling without a cap of its own: at most `retries` (10) waits.
  Backoff backoff(options_.retry_backoff, absl::InfiniteDuration());
  for (int failures = 0;; ++failures) {
    SendResult result = SendOnce(notification);
    if (result.kind != SendResult::Kind::kTransient || result.possibly_delivered ||
        failures >= options_.retries) {
      return result;
    }
    absl::Duration wait = backoff.Next();
    log::Warn("telegram send failed before reaching the chat; retrying",
              {{"event_id", notification.event_id},
               {"error_class", result.error_class},
               {"error", result.message},
               {"attempt", failures + 1},
               {"backoff_ms", absl::ToInt64Milliseconds(wait)}});
    if (!Wait(wait)) return result;
  }
}

}  // namespace concert::notifier
