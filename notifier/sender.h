// The one small interface behind which a notification leaves the process, and what a send
// attempt can end as. Two implementations: TelegramSender (the Bot API over HTTPS) and
// LogSender (a JSON line to a file and to the log, the default without a bot token).
//
//   SendResult r = sender.Send({.event_id = id, .reservation_id = "7", .chat_id = "42",
//                               .text = text});
//   if (!r.ok()) dlq(r.error_class, r.status.message());
//
// Implementations are thread-safe: the notifier sends from many threads at once.
#ifndef CONCERT_NOTIFIER_SENDER_H_
#define CONCERT_NOTIFIER_SENDER_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace concert::notifier {

struct Notification {
  std::string event_id;
  std::string reservation_id;
  // Where it goes: a numeric chat id or "@channel" (the log sender records it only).
  std::string chat_id;
  std::string text;
  // Asked right before each request leaves (in-process retries included); false: the send is no
  // longer this worker's to make (it was paused, or its partition revoked, and another worker
  // took the record over), so the request is not made and Send() answers kNotOurs. Unset: always
  // ours.
  std::function<bool()> still_ours;
};

// The error class of a send to a chat that will never accept one: Telegram's 403 "bot was
// blocked by the user" or 400 "chat not found".
inline constexpr char kChatGone[] = "telegram_chat_gone";

// The outcome of Send(), after the in-process retries the sender makes itself (only of
// requests that cannot have reached the chat).
struct SendResult {
  enum class Kind {
    kSent,
    // Retrying the same request will fail again (4xx other than 429): DLQ at once.
    kPermanent,
    // Failed for now (5xx, timeout, connection): DLQ, and the retry-worker tries again later.
    kTransient,
    // 429: nothing was delivered; every send of the bot must pause for retry_after, then this
    // one goes again. Not a failed attempt.
    kRateLimited,
    // Not sent: `still_ours` said no before a request left. Earlier requests of this Send(), if
    // any, are known not to have been delivered (only those are retried in process).
    kNotOurs,
  };
  Kind kind = Kind::kSent;
  // For the DLQ's error-class header and the dlq metric: "telegram_4xx", kChatGone,
  // "telegram_5xx", "timeout", "connection", "telegram_429", "io". Empty when sent.
  std::string error_class;
  // Never contains the bot token.
  std::string message;
  // A failure after a request went out whose answer never came (a timeout, a connection broken
  // after the request was written): the message may be in the chat. Telegram has no idempotency
  // key, so sending again may duplicate it.
  bool possibly_delivered = false;
  // kRateLimited: how long Telegram asked every request of the bot to wait.
  absl::Duration retry_after;

  bool ok() const { return kind == Kind::kSent; }
  static SendResult Sent() { return {}; }
  static SendResult Permanent(std::string error_class, std::string message) {
    return {Kind::kPermanent, std::move(error_class), std::move(message)};
  }
  static SendResult Transient(std::string error_class, std::string message,
                              bool possibly_delivered = false) {
    return {Kind::kTransient, std::move(error_class), std::move(message), possibly_delivered};
  }
  static SendResult RateLimited(std::string message, absl::Duration retry_after) {
    return {Kind::kRateLimited, "telegram_429", std::move(message), false, retry_after};
  }
  static SendResult NotOurs() {
    return {Kind::kNotOurs, "", "not sent: the record is no longer this worker's"};
  }
};

class Sender {
 public:
  virtual ~Sender() = default;
  // Blocks until the notification is delivered or given up on (bounded by the sender's
  // timeouts and retries). Never sleeps for a 429: it returns kRateLimited to the caller,
  // whose pacing makes every send wait.
  virtual SendResult Send(const Notification& notification) = 0;
  // "telegram" or "log", for logs.
  virtual std::string name() const = 0;
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_SENDER_H_
