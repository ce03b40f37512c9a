// TelegramSender: a payment's message through the Bot API's sendMessage (bot_api.h), {chat_id,
// text} (and allow_paid_broadcast in paid-broadcast mode), with connect and total timeouts:
//   200 ok:true                  -> sent
//   429                          -> kRateLimited with parameters.retry_after (capped at
//                                   max_retry_after): the caller pauses every send, then resends
//   5xx from the Bot API itself  -> up to `retries` more attempts with exponential backoff
//   ({"ok":false,"error_code"}),    (Telegram said no, or never heard us), then transient
//   connection refused              "telegram_5xx" / "connection"
//   timeout, connection broken   -> transient "timeout" / "connection", possibly_delivered, at
//   after the request went out,     once: Telegram has no idempotency key, so only the caller,
//   a gateway's 5xx (502, 504)      after recording the doubt, may send it again ("telegram_5xx"
//   or an oversized answer          for the gateway: it may answer after Telegram delivered)
//   403, 400 "chat not found"    -> permanent kChatGone at once (that chat will never accept)
//   other 4xx, a malformed answer-> permanent "telegram_4xx" at once
// An answer with unexpected JSON types ("ok":"true", "retry_after":"5") is read leniently where
// the meaning is clear and never throws.
// A stop request ends a backoff at once: Send() returns the last transient result.
// Before each request is written (once connected), the notification's still_ours() is asked;
// false: the request is not made and Send() answers kNotOurs.
//
// The bot token is part of the URL; it is never logged and never appears in a SendResult
// (RedactToken replaces it in anything that might carry it).
//
// Thread-safe: concurrent Send()s each use a connection of their own, kept alive between sends.
#ifndef CONCERT_NOTIFIER_TELEGRAM_SENDER_H_
#define CONCERT_NOTIFIER_TELEGRAM_SENDER_H_

#include <functional>
#include <string>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "notifier/bot_api.h"
#include "notifier/sender.h"

namespace concert::notifier {

struct TelegramOptions {
  // Overridden in tests to point at the fake server on loopback.
  std::string api_base = "https://api.telegram.org";
  std::string token;  // required
  absl::Duration connect_timeout = absl::Seconds(3);
  // The whole request, connection included.
  absl::Duration total_timeout = absl::Seconds(10);
  // Extra attempts after a 5xx or a connection that never carried the request.
  int retries = 3;
  // First backoff; doubles each retry.
  absl::Duration retry_backoff = absl::Milliseconds(500);
  // Upper bound of a 429's retry_after that we honour (longer asks are cut to this).
  absl::Duration max_retry_after = absl::Seconds(30);
  // Sets allow_paid_broadcast on every message (Bot API 7.11): up to 1,000 messages/s, paid
  // per message in Stars.
  bool paid_broadcast = false;
  // When set and notified, backoffs end at once (see above).
  const absl::Notification* stop = nullptr;
};

class TelegramSender final : public Sender {
 public:
  explicit TelegramSender(TelegramOptions options);

  SendResult Send(const Notification& notification) override;
  std::string name() const override { return "telegram"; }

 private:
  SendResult SendOnce(const Notification& notification);
  // Sleeps `d`; false when a stop was requested before or during the wait.
  bool Wait(absl::Duration d) const;

  TelegramOptions options_;
  BotApi bot_;
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_TELEGRAM_SENDER_H_
