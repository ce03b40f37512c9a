// TelegramSender: POST {api_base}/bot{token}/sendMessage with JSON {chat_id, text} (the
// notification's chat) through
// libcurl, with connect and total timeouts and a bounded retry policy:
//   200 ok:true                  -> sent
//   429                          -> sleep min(parameters.retry_after, max_retry_after), retry
//                                   (at most max_rate_limit_waits times, then transient
//                                   "telegram_429")
//   5xx, timeout, connection err -> up to `retries` more attempts with exponential backoff,
//                                   then transient "telegram_5xx" / "timeout" / "connection"
//   403, 400 "chat not found"    -> permanent kChatGone at once (that chat will never accept)
//   other 4xx                    -> permanent "telegram_4xx" at once
// A stop request ends any of those waits at once: Send() returns the last transient result, so
// the message takes the DLQ route instead of holding up a graceful stop for up to 30 s.
// Telegram has no idempotency key: a request that timed out may still have been delivered, so
// a retry after a timeout can repeat a message. That is the price of not losing one.
//
// The bot token is part of the URL; it is never logged and never appears in a SendResult
// (RedactToken replaces it in anything that might carry it).
//
// Thread-safe: each Send() uses its own curl handle.
#ifndef CONCERT_NOTIFIER_TELEGRAM_SENDER_H_
#define CONCERT_NOTIFIER_TELEGRAM_SENDER_H_

#include <string>

#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "notifier/sender.h"

namespace concert::notifier {

struct TelegramOptions {
  // Overridden in tests to point at the fake server on loopback.
  std::string api_base = "https://api.telegram.org";
  std::string token;  // required
  absl::Duration connect_timeout = absl::Seconds(3);
  // The whole request, connection included.
  absl::Duration total_timeout = absl::Seconds(10);
  // Extra attempts after a 5xx, timeout or connection error.
  int retries = 3;
  // First backoff; doubles each retry.
  absl::Duration retry_backoff = absl::Milliseconds(500);
  // Upper bound of a 429's retry_after that we honour (longer asks are cut to this).
  absl::Duration max_retry_after = absl::Seconds(30);
  // 429 answers waited out per Send() before giving up as transient.
  int max_rate_limit_waits = 5;
  // When set and notified, waits between attempts end at once (see above).
  const absl::Notification* stop = nullptr;
};

class TelegramSender final : public Sender {
 public:
  explicit TelegramSender(TelegramOptions options);

  SendResult Send(const Notification& notification) override;
  std::string name() const override { return "telegram"; }

 private:
  struct Attempt {
    SendResult result;
    absl::Duration retry_after;  // for 429
    bool rate_limited = false;
  };
  Attempt SendOnce(const std::string& body);
  // Sleeps `d`; false when a stop was requested before or during the wait.
  bool Wait(absl::Duration d) const;

  TelegramOptions options_;
  std::string url_;
};

// `text` with every occurrence of `token` replaced by "<redacted>".
std::string RedactToken(absl::string_view text, absl::string_view token);

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_TELEGRAM_SENDER_H_
