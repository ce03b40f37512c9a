// Pacer: keeps the notifier under Telegram's limits, so that a healthy run sees almost no 429,
// and holds every send while a 429's retry_after runs.
//
// Three kinds of token bucket, kept as GCRA "theoretical arrival times" (one absl::Time each):
// the bot (all chats together, 30/s; 1,000/s with paid broadcasts), each private chat (1/s with
// a small burst) and each group or channel (a negative chat id or "@name": 20/min). A send
// first reserves a slot of its chat and waits for it, then a slot of the bot and waits for that,
// so that messages queued for one busy chat never hold back the bot's slots for other chats.
// A 429 (Block) moves every later slot past retry_after; sends already waiting for a bot slot
// take a new one after it, so the bot does not burst the moment the pause ends.
//
//   Pacer pacer(options);
//   Pacer::Waits waits;
//   if (!pacer.Acquire(chat_id, stop, &waits)) return;  // stop requested while waiting
//   SendResult r = sender.Send(n);
//   if (r.kind == SendResult::Kind::kRateLimited) pacer.Block(r.retry_after);
//
// Thread-safe. Idle chats' buckets are forgotten.
#ifndef CONCERT_NOTIFIER_PACER_H_
#define CONCERT_NOTIFIER_PACER_H_

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace concert::notifier {

// A rate of 0 (or less) leaves that bucket out: no pacing of that kind, for a Bot API stand-in
// without limits.
struct PacingOptions {
  // Messages per second across all chats, and how many may go at once after a quiet spell.
  double bot_rate = 30;
  int bot_burst = 5;
  // Per private chat.
  double chat_rate = 1;
  int chat_burst = 2;
  // Per group or channel, per second (20/min).
  double group_rate = 20.0 / 60;
  int group_burst = 3;
};

// A chat id naming a group, supergroup or channel: negative, or a public "@username".
bool IsGroupChat(const std::string& chat_id);

class Pacer {
 public:
  explicit Pacer(PacingOptions options);

  // How long one Acquire waited, by what held it.
  struct Waits {
    absl::Duration chat;   // the chat's own slot (private chat or group)
    absl::Duration bot;    // the bot's rate across chats
    absl::Duration flood;  // a 429's retry_after
  };

  // Waits until a message to `chat_id` may go, and takes its slots. False when `stop` was
  // notified first (the slots taken stay taken).
  bool Acquire(const std::string& chat_id, const absl::Notification& stop, Waits* waits);
  // Telegram answered 429: nothing of this bot goes before now + retry_after.
  void Block(absl::Duration retry_after);

  // The building blocks of Acquire, without waiting (unit tests drive them with their own
  // clock): the time a message to `chat_id` may go, given the request at `now`, taking it.
  absl::Time ReserveChat(const std::string& chat_id, absl::Time now);
  // The time the next bot slot is free, not before `now` nor before a 429's pause, taking it.
  absl::Time ReserveBot(absl::Time now);
  void BlockUntil(absl::Time until);

 private:
  struct Bucket {
    absl::Duration interval;   // 1 / rate; zero: unlimited
    absl::Duration tolerance;  // (burst - 1) * interval
  };
  static Bucket MakeBucket(double rate, int burst);
  // GCRA: the earliest time at or after `now` the bucket allows, and its arrival time moved on.
  static absl::Time Take(const Bucket& bucket, absl::Time now, absl::Time* tat);

  const Bucket bot_;
  const Bucket chat_;
  const Bucket group_;
  std::mutex mu_;
  absl::Time bot_tat_ = absl::InfinitePast();
  absl::Time blocked_until_ = absl::InfinitePast();
  int64_t blocks_ = 0;  // Block() calls so far: a waiting send re-takes its bot slot after one
  std::unordered_map<std::string, absl::Time> chat_tat_;
  absl::Time last_sweep_ = absl::InfinitePast();
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_PACER_H_
