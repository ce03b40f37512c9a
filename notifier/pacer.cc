#include "notifier/pacer.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace concert::notifier {
namespace {

// Sleeps until `t`; false when stop was notified first.
bool SleepUntil(absl::Time t, const absl::Notification& stop, absl::Duration* waited) {
  absl::Duration d = t - absl::Now();
  if (d <= absl::ZeroDuration()) return !stop.HasBeenNotified();
  *waited += d;
  return !stop.WaitForNotificationWithTimeout(d);
}

}  // namespace

bool IsGroupChat(const std::string& chat_id) {
  return !chat_id.empty() && (chat_id[0] == '-' || chat_id[0] == '@');
}

Pacer::Bucket Pacer::MakeBucket(double rate, int burst) {
  if (rate <= 0) return {absl::ZeroDuration(), absl::ZeroDuration()};
  absl::Duration interval = absl::Seconds(1.0 / rate);
  return {interval, interval * std::max(burst - 1, 0)};
}

Pacer::Pacer(PacingOptions options)
    : bot_(MakeBucket(options.bot_rate, options.bot_burst)),
      chat_(MakeBucket(options.chat_rate, options.chat_burst)),
      group_(MakeBucket(options.group_rate, options.group_burst)) {}

absl::Time Pacer::Take(const Bucket& bucket, absl::Time now, absl::Time* tat) {
  if (bucket.interval == absl::ZeroDuration()) return now;
  absl::Time at = std::max(now, *tat - bucket.tolerance);
  *tat = std::max(*tat, at) + bucket.interval;
  return at;
}

absl::Time Pacer::ReserveChat(const std::string& chat_id, absl::Time now) {
  const Bucket& bucket = IsGroupChat(chat_id) ? group_ : chat_;
  if (bucket.interval == absl::ZeroDuration()) return now;
  std::lock_guard lock(mu_);
  // A bucket whose arrival time has passed is full again: forgetting it changes nothing.
  if (chat_tat_.size() > 10000 && now - last_sweep_ > absl::Seconds(10)) {
    last_sweep_ = now;
    for (auto it = chat_tat_.begin(); it != chat_tat_.end();) {
      it = it->second < now ? chat_tat_.erase(it) : std::next(it);
    }
  }
  auto [it, inserted] = chat_tat_.try_emplace(chat_id, absl::InfinitePast());
  return Take(bucket, now, &it->second);
}

absl::Time Pacer::ReserveBot(absl::Time now) {
  std::lock_guard lock(mu_);
  return Take(bot_, std::max(now, blocked_until_), &bot_tat_);
}

void Pacer::BlockUntil(absl::Time until) {
  std::lock_guard lock(mu_);
  ++blocks_;
  blocked_until_ = std::max(blocked_until_, until);
  // Slots handed out before the 429 are void; the next ones start after the pause.
  bot_tat_ = std::max(bot_tat_, blocked_until_);
}

void Pacer::Block(absl::Duration retry_after) { BlockUntil(absl::Now() + retry_after); }

bool Pacer::Acquire(const std::string& chat_id, const absl::Notification& stop, Waits* waits) {
  *waits = {};
  if (!SleepUntil(ReserveChat(chat_id, absl::Now()), stop, &waits->chat)) return false;
  while (true) {
    int64_t blocks;
    absl::Time blocked_until;
    {
      std::lock_guard lock(mu_);
      blocks = blocks_;
      blocked_until = blocked_until_;
    }
    absl::Time now = absl::Now();
    absl::Time slot = ReserveBot(now);
    absl::Duration* scope = blocked_until > now ? &waits->flood : &waits->bot;
    if (!SleepUntil(slot, stop, scope)) return false;
    std::lock_guard lock(mu_);
    if (blocks_ == blocks) return true;
    // A 429 arrived while waiting: this slot may fall inside or right after the pause with
    // everyone else's; take a fresh one.
  }
}

}  // namespace concert::notifier
