// BotApi: the notifier's one client of the Telegram Bot API (sendMessage, getUpdates, getMe),
// over common/http_client.h, with one set of timeouts (TELEGRAM_CONNECT_TIMEOUT,
// TELEGRAM_TIMEOUT; a long poll gets its wait on top) and one reading of Telegram's answer:
//
//   {"ok":true,"result":...}
//   {"ok":false,"error_code":429,"description":"Too Many Requests: retry after 5",
//    "parameters":{"retry_after":5}}
//
// It says what came back and leaves the meaning to the caller (TelegramSender decides what a
// payment message's answer means, UpdatePoller what a poll's does):
//
//   BotApi bot({.api_base = "https://api.telegram.org", .token = token});
//   BotAnswer a = bot.SendMessage("4242", "hello", /*paid_broadcast=*/false, still_ours);
//   if (a.ok) ...; else if (a.http.status == 429) Pause(a.retry_after);
//
// Answers are read leniently where the meaning is clear ("ok":"true", "retry_after":"5") and
// never throw. Answers are capped in size: 1 MiB, and 4 MiB for a batch of updates (20 updates
// with the longest texts stay far below); a bigger one is an error (kTooLarge). The token is
// part of every URL; nothing BotApi returns carries it (Redact()), and no proxy from the
// environment is used: the token goes to api_base only.
//
// Thread-safe: concurrent calls each use a connection of their own, kept alive between calls.
#ifndef CONCERT_NOTIFIER_BOT_API_H_
#define CONCERT_NOTIFIER_BOT_API_H_

#include <cstdint>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/http_client.h"

namespace concert::notifier {

struct BotApiOptions {
  // TELEGRAM_API_BASE: overridden in tests to point at the fake server on loopback.
  std::string api_base = "https://api.telegram.org";
  // TELEGRAM_BOT_TOKEN.
  std::string token;
  // TELEGRAM_CONNECT_TIMEOUT.
  absl::Duration connect_timeout = absl::Seconds(3);
  // TELEGRAM_TIMEOUT: a whole call, connection included; a getUpdates long poll may take its
  // wait longer.
  absl::Duration timeout = absl::Seconds(10);
};

// One call's outcome: the transfer (`http`: answered or not, status, whether the request may
// have reached Telegram, libcurl's error with the token redacted) and, when answered, the
// Bot API's fields.
struct BotAnswer {
  HttpResponse http;
  // "ok": true (or "true").
  bool ok = false;
  // "result" of an ok answer; null otherwise.
  nlohmann::json result;
  // "description", the token redacted; empty when absent.
  std::string description;
  // Whether the answer is the Bot API's own refusal ({"ok":false,"error_code":<the HTTP
  // status>}): Telegram handled the request. A gateway in front of it (a 502 or 504 page) says
  // nothing about whether Telegram acted on it.
  bool bot_api_error = false;
  // "parameters.retry_after" in whole seconds (rounded up), a number or a numeric string; 1 s
  // when absent or unreadable.
  absl::Duration retry_after = absl::Seconds(1);
};

class BotApi {
 public:
  explicit BotApi(BotApiOptions options);

  // sendMessage {chat_id, text} (and allow_paid_broadcast). `still_ours` (may be empty) is
  // asked once connected, right before the request is written; false: nothing is sent
  // (http.outcome kNotSent).
  BotAnswer SendMessage(const std::string& chat_id, const std::string& text, bool paid_broadcast,
                        const std::function<bool()>& still_ours);
  // getUpdates from `offset`, at most `limit` message updates, waiting up to `wait` for one;
  // `stop` ends the wait at once (http.outcome kStopped).
  BotAnswer GetUpdates(int64_t offset, int limit, absl::Duration wait,
                       const absl::Notification& stop);
  // getMe: the bot's own user (its "username").
  BotAnswer GetMe(const absl::Notification& stop);

  // `text` without the token (see RedactToken).
  std::string Redact(absl::string_view text) const;
  // "<method>: HTTP <status> <description>", or "<method>: <transfer error>": for logs.
  std::string Describe(absl::string_view method, const BotAnswer& answer) const;

 private:
  // {api_base}/bot{token}/{method}{query}, with the timeouts and proxy rule of every call.
  BotAnswer Call(absl::string_view method, absl::string_view query, HttpRequest request);

  BotApiOptions options_;
  std::string base_;  // {api_base}/bot{token}/
  HttpClient http_;
};

// `text` with every occurrence of `token` replaced by "<redacted>".
std::string RedactToken(absl::string_view text, absl::string_view token);

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_BOT_API_H_
