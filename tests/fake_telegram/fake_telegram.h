// A fake Telegram Bot API server for tests, on loopback over real HTTP (cpp-httplib). It accepts
// what the notifier's TelegramSender sends, records every accepted message, and can be told to
// misbehave: answer 5xx, 429 with parameters.retry_after, 400 (a malformed message), 400 "chat
// not found", 403 "bot was blocked by the user", or stall before answering, for the next N
// requests, for one chat only, or always. It also plays the users' side of a bot: a test injects a message a user wrote
// (InjectUserMessage, e.g. "/start <code>"), and the bot receives it through getUpdates.
//
// In-process (gtest):
//
//   FakeTelegram fake({});                       // port 0: the kernel picks one
//   ASSERT_TRUE(fake.Start().ok());
//   env["TELEGRAM_API_BASE"] = fake.base_url();  // http://127.0.0.1:<port>
//   fake.SetFault({.mode = FaultMode::k5xx, .count = 2});
//   ... WaitUntil([&] { return fake.messages().size() == 10; }, ...);
//
// Standalone (binary `fake-telegram`, for end-to-end tests in other processes):
//
//   fake-telegram --port=8081 [--record=messages.jsonl] [--token=SECRET]
//
// HTTP API (both forms):
//
//   POST /bot<token>/sendMessage   body JSON {"chat_id": 42 | "42", "text": "..."} or form-encoded
//                                  chat_id=..&text=..; 200 {"ok":true,"result":{"message_id":N,..}}
//                                  or the injected fault. Missing chat_id/text: 400. With --token
//                                  set, another token: 401.
//   POST /control/fail             JSON {"mode":"5xx"|"429"|"400"|"403"|"chat_not_found"|
//                                               "stall"|"off",
//                                        "count":N        (next N requests; 0 or absent = always),
//                                        "status":503     (for 5xx; default 500),
//                                        "retry_after":2  (seconds, for 429; default 1),
//                                        "stall_ms":2000  (for stall: sleep, then answer normally),
//                                        "chat_id":"42"   (only requests for this chat)}
//                                  "off" removes every fault (or only that chat's with chat_id).
//   GET|POST /bot<token>/getMe     {"ok":true,"result":{"id":..,"is_bot":true,"username":..}}
//   GET|POST /bot<token>/getUpdates  offset, timeout (seconds, long poll) as JSON body, form or
//                                  query. Updates with update_id < offset are forgotten; answers
//                                  at once when one is pending, else when one arrives or timeout
//                                  passes. A second getUpdates while one is in flight gets 409
//                                  Conflict, as Telegram answers two bot instances.
//   POST /control/updates          JSON {"chat_id": 42, "text": "/start abc"}: a user writes to
//                                  the bot; answers {"ok":true,"update_id":N}.
//   GET  /control/messages[?chat_id=42]  JSON array of accepted messages (to that chat only):
//                                  [{"chat_id":"42","text":"..","token":"..","received_at_ms":..}]
//   GET  /control/stats            {"requests":N,"accepted":N,"faulted":N,"get_updates":N,
//                                   "conflicts":N}
//   POST /control/reset            forgets messages, counters and faults.
//
// With --record / Options::record_path each accepted message is also appended as one JSON line
// (same fields as /control/messages) and flushed, so a test can read it after the fact.
//
// Thread-safe: handlers run on the server's thread pool; every accessor locks.
#ifndef CONCERT_TESTS_FAKE_TELEGRAM_FAKE_TELEGRAM_H_
#define CONCERT_TESTS_FAKE_TELEGRAM_FAKE_TELEGRAM_H_

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace concert::testing {

enum class FaultMode { kOff, k5xx, k429, k400, k403, kChatNotFound, kStall };

struct Fault {
  FaultMode mode = FaultMode::kOff;
  // How many requests it applies to; 0 = every request until removed.
  int count = 0;
  int status = 500;                         // for k5xx
  int retry_after_seconds = 1;              // for k429
  absl::Duration stall = absl::Seconds(5);  // for kStall: sleep, then answer normally
  // Empty: any chat. Otherwise only requests for this chat id (its text form).
  std::string chat_id;
};

struct TelegramMessage {
  std::string chat_id;  // text form, whether it came as a JSON number or a string
  std::string text;
  std::string token;
  absl::Time received_at;
};

class FakeTelegram {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 0;  // 0: chosen by the kernel, see port()
    // When set, each accepted message is appended here as a JSON line.
    std::string record_path;
    // When set, requests with another token get 401.
    std::string token;
    // What getMe answers.
    std::string bot_username = "fake_concert_bot";
  };

  explicit FakeTelegram(Options options);
  ~FakeTelegram();  // Stop()
  FakeTelegram(const FakeTelegram&) = delete;
  FakeTelegram& operator=(const FakeTelegram&) = delete;

  absl::Status Start();
  // Wakes stalled handlers and stops serving.
  void Stop();

  int port() const { return port_; }
  // "http://127.0.0.1:<port>", the value for TELEGRAM_API_BASE.
  std::string base_url() const;

  // Adds a fault rule; rules for a chat are checked before the chat-less one. A chat-less rule
  // replaces the previous chat-less rule, a chat rule the previous rule for that chat.
  void SetFault(const Fault& fault);
  void ClearFaults();
  // Clears faults, messages and counters.
  void Reset();

  std::vector<TelegramMessage> messages() const;
  // Accepted messages to one chat (its text form).
  std::vector<TelegramMessage> MessagesTo(const std::string& chat_id) const;
  int requests() const;
  int faulted() const;

  // A user in private chat `chat_id` (the user's id too) writes `text` to the bot; the next
  // getUpdates returns it. Returns its update_id.
  int64_t InjectUserMessage(int64_t chat_id, const std::string& text);
  // getUpdates requests answered, and those refused with 409 because another was in flight.
  int get_updates() const;
  int conflicts() const;

 private:
  void HandleSend(const httplib::Request& req, httplib::Response& res);
  void HandleFail(const httplib::Request& req, httplib::Response& res);
  void HandleGetUpdates(const httplib::Request& req, httplib::Response& res);
  // The rule for this chat to apply now (consuming one of its count), if any.
  std::optional<Fault> TakeFault(const std::string& chat_id);
  // Sleeps up to `d`; returns early when stopping.
  void Stall(absl::Duration d);

  Options options_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;

  mutable std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::optional<Fault> any_chat_fault_;
  std::map<std::string, Fault> chat_faults_;
  std::vector<TelegramMessage> messages_;
  int requests_ = 0;
  int faulted_ = 0;
  int64_t next_message_id_ = 1;
  // Pending updates (JSON objects, update_id ascending) and the getUpdates long poll.
  std::condition_variable updates_cv_;
  std::vector<std::string> updates_;
  std::vector<int64_t> update_ids_;
  int64_t next_update_id_ = 1;
  bool polling_ = false;
  int get_updates_ = 0;
  int conflicts_ = 0;
};

// "5xx", "429", "400", "403", "chat_not_found", "stall", "off".
bool ParseFaultMode(const std::string& name, FaultMode* mode);

}  // namespace concert::testing

#endif  // CONCERT_TESTS_FAKE_TELEGRAM_FAKE_TELEGRAM_H_
