// A fake Telegram Bot API server for tests, on loopback over real HTTP (cpp-httplib). It accepts
// what the notifier's TelegramSender sends, records every accepted message, and can be told to
// misbehave: answer 5xx, 429 with parameters.retry_after, 400 (a malformed message), 400 "chat
// not found", 403 "bot was blocked by the user", or stall before answering, for the next N
// requests, for one chat only, or always. It also plays the users' side of a bot: a test injects
// a message a user wrote (InjectUserMessage, e.g. "/start <code>"), and the bot receives it
// through getUpdates.
//
// It can also behave like the real API under load (Options::profile, see Profile): answers take
// time, and Telegram's rate limits answer 429 with a flood wait. In-process the default profile is
// instant and limitless, which unit tests rely on; the `fake-telegram` binary defaults to
// Profile::Telegram(), so that benchmarks and end-to-end runs meet the limits a real bot meets.
//
// In-process (gtest):
//
//   FakeTelegram fake({});                       // port 0: the kernel picks one
//   ASSERT_TRUE(fake.Start().ok());
//   env["TELEGRAM_API_BASE"] = fake.base_url();  // http://127.0.0.1:<port>
//   fake.SetFault({.mode = FaultMode::k5xx, .count = 2});
//   ... WaitUntil([&] { return fake.messages().size() == 10; }, ...);
//
//   FakeTelegram real_like({.profile = Profile::Telegram()});  // latency and limits
//
// Standalone (binary `fake-telegram`, for end-to-end tests in other processes; main.cc lists
// every flag):
//
//   fake-telegram --port=8081 [--record=messages.jsonl] [--token=SECRET] [--profile=instant]
//
// What sendMessage does, in order:
//
//   1. Latency: the handler sleeps a time drawn from the profile's lognormal distribution (also
//      before error answers; getMe and getUpdates answer at once). Stop() wakes it.
//   2. Validation (401 for another token when one is set, 400 for a missing chat_id or text),
//      then injected faults (/control/fail). A faulted request takes no token.
//   3. Rate limits, per bot token, decided after the latency, at the moment of acceptance:
//      - a flood wait: after any 429 below, EVERY sendMessage of that token answers 429 until
//        its retry_after has passed (python-telegram-bot's reading of Telegram's 429, the safe
//        one);
//      - token buckets, all of which must hold a token: the bot's (30/s, burst 30), or, for a
//        request with "allow_paid_broadcast": true (form: allow_paid_broadcast=true), the bot's
//        paid one instead (1,000/s, burst 1,000); plus the chat's: a private chat (positive id)
//        1/s with a burst of 3, a group or channel (negative id or "@name") 20/min with a
//        burst of 5.
//      Over a bucket: 429 {"ok":false,"error_code":429,"description":"Too Many Requests: retry
//      after N","parameters":{"retry_after":N}}, N = whole seconds until every needed bucket has
//      a token again (at least 1), and the flood wait starts. A refused request takes no token
//      and is not recorded.
//   4. Accepted: recorded (received_at = arrival, accepted_at = now) and answered 200, except
//      that with the profile's slow_answer_probability the answer is held back for
//      slow_answer_delay first: the message counts as delivered but the client, which gives up
//      earlier, sees a timeout (the real API has no idempotency key either).
//
// HTTP API (both forms):
//
//   POST /bot<token>/sendMessage   body JSON {"chat_id": 42 | "42", "text": "...",
//                                  "allow_paid_broadcast": true} or form-encoded
//                                  chat_id=..&text=..[&allow_paid_broadcast=true];
//                                  200 {"ok":true,"result":{"message_id":N,..}}, the injected
//                                  fault, or 429 from the rate limits above. Missing chat_id/text:
//                                  400. With --token set, another token: 401.
//   POST /control/fail             JSON {"mode":"5xx"|"gateway_5xx"|"429"|"400"|"403"|
//                                               "chat_not_found"|"stall"|"off",
//                                        "count":N        (next N requests; 0 or absent = always),
//                                        "status":503     (for 5xx and gateway_5xx, which
//                                                          delivers, then answers an HTML
//                                                          page; default 500),
//                                        "retry_after":2  (seconds, for 429; default 1),
//                                        "stall_ms":2000  (for stall: sleep, then answer normally),
//                                        "chat_id":"42"   (only requests for this chat)}
//                                  "off" removes every fault (or only that chat's with chat_id).
//                                  An injected 429 starts no flood wait.
//   GET|POST /bot<token>/getMe     {"ok":true,"result":{"id":..,"is_bot":true,"first_name":..,
//                                  "username":..}}; with --token set, another token: 401.
//   GET|POST /bot<token>/getUpdates  offset, timeout (seconds, long poll) as JSON body, form or
//                                  query. Updates with update_id < offset are forgotten; answers
//                                  at once when one is pending, else when one arrives or timeout
//                                  passes. As Telegram does with two bot instances, a newer
//                                  getUpdates ends the one still in flight with 409 "Conflict:
//                                  terminated by other getUpdates request" and polls on.
//   POST /control/updates          JSON {"chat_id": 42, "text": "/start abc"}: a user writes to
//                                  the bot; answers {"ok":true,"update_id":N}.
//   GET  /control/messages[?chat_id=42]  JSON array of accepted messages (to that chat only):
//                                  [{"chat_id":"42","text":"..","token":"..","received_at_ms":..,
//                                    "accepted_at_ms":..,"paid_broadcast":false}]
//   GET  /control/stats            {"requests":N,        sendMessage requests, all answers
//                                   "accepted":N,        recorded messages (slow answers included)
//                                   "faulted":N,         answered with an injected fault
//                                   "rate_limited":{"bot":N,"paid_bot":N,"chat":N,"group":N,
//                                                   "blocked":N,"total":N},
//                                                        429s from the limits, by the bucket that
//                                                        was short (the longest wait when several
//                                                        were); "blocked": refused during a flood
//                                                        wait
//                                   "slow_answers":N,    accepted, answer held back
//                                   "in_flight":N, "peak_in_flight":N,  sendMessage handlers
//                                                        running now and at most so far
//                                   "get_updates":N, "conflicts":N}
//   POST /control/reset            forgets messages, counters, faults, buckets and flood waits.
//
// With --record / Options::record_path each accepted message is also appended as one JSON line
// (same fields as /control/messages) and flushed, so a test can read it after the fact.
//
// Concurrency: the server runs Options::threads handler threads (cpp-httplib's default is a
// handful). Each open connection holds a thread while it is kept alive, so that is also the
// number of clients served at once; latency sleeps hold no lock.
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
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace concert::testing {

enum class FaultMode {
  kOff,
  k5xx,  // the Bot API's own error answer: {"ok":false,"error_code":<status>}, nothing delivered
  k429,
  k400,
  k403,
  kChatNotFound,
  kStall,
  // The message is delivered (recorded), then a gateway in front of the Bot API answers
  // `status` with an HTML page of its own (nginx's 502/504): the client cannot tell.
  kGateway5xx,
};

struct Fault {
  FaultMode mode = FaultMode::kOff;
  // How many requests it applies to; 0 = every request until removed.
  int count = 0;
  int status = 500;                         // for k5xx and kGateway5xx
  int retry_after_seconds = 1;              // for k429
  absl::Duration stall = absl::Seconds(5);  // for kStall: sleep, then answer normally
  // Empty: any chat. Otherwise only requests for this chat id (its text form).
  std::string chat_id;
};

struct TelegramMessage {
  std::string chat_id;  // text form, whether it came as a JSON number or a string
  std::string text;
  std::string token;
  absl::Time received_at;  // when the request arrived
  absl::Time accepted_at;  // when it passed the limits and was recorded (after the latency)
  bool paid_broadcast = false;  // sent with allow_paid_broadcast
};

// How much like the real Bot API sendMessage behaves. The default is instant and limitless;
// Telegram() has the real API's numbers (facts.md, "The Telegram Bot API as it behaves under
// load"). A rate of 0 turns that bucket off. A burst is the bucket's capacity: how many messages
// pass at once after a quiet while (at least 1).
struct Profile {
  // Answer latency: median * exp(latency_spread * N(0,1)), at most latency_max (zero: no cap).
  // A zero median means no latency; a zero spread means every answer takes exactly the median.
  absl::Duration latency_median = absl::ZeroDuration();
  double latency_spread = 0;
  absl::Duration latency_max = absl::ZeroDuration();

  double bot_per_second = 0;  // every message of one bot token
  int bot_burst = 30;
  double paid_bot_per_second = 0;  // instead of the above with allow_paid_broadcast
  int paid_bot_burst = 1000;
  double chat_per_second = 0;  // per private chat (positive chat id)
  int chat_burst = 3;
  double group_per_minute = 0;  // per group or channel (negative chat id or "@name")
  int group_burst = 5;

  // The share of accepted messages whose answer is held back for slow_answer_delay, longer than
  // a client's timeout: delivered, but the sender cannot know.
  double slow_answer_probability = 0;
  absl::Duration slow_answer_delay = absl::Seconds(15);

  // No latency, no limits, no slow answers: the default.
  static Profile Instant() { return {}; }
  // 100 ms median answers (spread 0.5, at most 1 s); 30/s per bot (burst 30), 1,000/s paid
  // (burst 1,000), 1/s per private chat (burst 3), 20/min per group (burst 5); slow answers off
  // (the binary's telegram profile turns them on at 0.002).
  static Profile Telegram();
};

// 429s from the rate limits, by the bucket that was short.
struct RateLimited {
  int bot = 0;
  int paid_bot = 0;
  int chat = 0;
  int group = 0;
  int blocked = 0;  // refused during a flood wait
  int total() const { return bot + paid_bot + chat + group + blocked; }
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
    // Latency, rate limits and slow answers; the default is instant and limitless.
    Profile profile;
    // Handler threads. Each open (kept-alive) connection holds one, so this bounds the clients
    // served at once; 1,000 msg/s at 100 ms answers needs about 100.
    int threads = 512;
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
  // Recorded messages (messages().size()); answers held back by the profile's slow answers.
  int accepted() const;
  int slow_answers() const;
  RateLimited rate_limited() const;
  // The most sendMessage requests handled at once so far.
  int peak_in_flight() const;

  // A user in private chat `chat_id` (the user's id too) writes `text` to the bot; the next
  // getUpdates returns it. Returns its update_id.
  int64_t InjectUserMessage(int64_t chat_id, const std::string& text);
  // getUpdates requests received, and those ended with 409 by a newer one.
  int get_updates() const;
  int conflicts() const;

 private:
  void HandleSend(const httplib::Request& req, httplib::Response& res);
  void HandleFail(const httplib::Request& req, httplib::Response& res);
  void HandleGetUpdates(const httplib::Request& req, httplib::Response& res);
  // The rule for this chat to apply now (consuming one of its count), if any.
  std::optional<Fault> TakeFault(const std::string& chat_id);
  // Sleeps up to `d`; returns early when stopping. Holds no lock while asleep.
  void Stall(absl::Duration d);

  // A refill-on-read token bucket. Absent from its map = full.
  struct Bucket {
    double tokens = 0;
    absl::Time updated;
  };
  // Per bot token: its buckets and flood wait.
  struct Bot {
    std::optional<Bucket> bot, paid;
    absl::Time blocked_until = absl::InfinitePast();
    std::unordered_map<std::string, Bucket> chats;  // private chats and groups, by chat id
    size_t prune_at = 1024;
  };
  enum class Scope { kNone, kBot, kPaidBot, kChat, kGroup, kBlocked };
  struct Admission {
    Scope refused_by = Scope::kNone;  // kNone: accepted, a token taken from each bucket
    int retry_after_seconds = 0;
  };
  // Checks the flood wait and the buckets for one message; called with mu_ held.
  Admission Admit(const std::string& token, const std::string& chat_id, bool paid, absl::Time now);
  absl::Duration SampleLatency();  // mu_ held

  // A sendMessage handler, counted in in_flight_ while it runs.
  class InFlight;

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
  int slow_answers_ = 0;
  int in_flight_ = 0;
  int peak_in_flight_ = 0;
  RateLimited rate_limited_;
  std::map<std::string, Bot> bots_;  // by token
  std::mt19937_64 random_;
  int64_t next_message_id_ = 1;
  // Pending updates (JSON objects, update_id ascending) and the getUpdates long poll.
  std::condition_variable updates_cv_;
  std::vector<std::string> updates_;
  std::vector<int64_t> update_ids_;
  int64_t next_update_id_ = 1;
  int64_t current_poll_ = 0;  // the newest getUpdates request's number
  int get_updates_ = 0;
  int conflicts_ = 0;
};

// "5xx", "429", "400", "403", "chat_not_found", "stall", "off".
bool ParseFaultMode(const std::string& name, FaultMode* mode);

}  // namespace concert::testing

#endif  // CONCERT_TESTS_FAKE_TELEGRAM_FAKE_TELEGRAM_H_
