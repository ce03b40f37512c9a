// Pacer: schedules every message of the bot under Telegram's limits (Budget, notifier/budget.h),
// so that a healthy fleet sees almost no 429, and no busy chat holds up the others.
//
// A send waits in its chat's queue, not on a thread: the Pacer hands it to one of its workers
// only once its chat's slot and a slot of the bot are both free. Forty messages for one group
// (20/min) wait in that group's queue while private chats' messages go at the bot's rate. Among
// the chats whose slot is free, answers the bot owes a user (Priority::kAnswer: someone is
// looking at the screen) go before notifications, then the oldest first; within one chat,
// answers first, then in the order submitted. A 429 (Block) pauses the whole bot, every replica
// included, for its retry_after.
//
//   Pacer pacer(budget, {.workers = 32});
//   pacer.Submit(chat_id, Pacer::Priority::kNotification, assignment.cancelled(),
//                [&](bool go, const Pacer::Waits& waits) { if (go) Send(...); else ...; });
//   // The bot's answers, on the caller's thread (no worker):
//   if (!pacer.Acquire(chat_id, Pacer::Priority::kAnswer, stop, &waits)) return;  // stopped
//   SendResult r = replies.Send(answer);
//   if (r.kind == SendResult::Kind::kRateLimited) pacer.Block(r.retry_after);
//
// Slots come from the Budget in rounds, one call each: the chats whose next message could go
// soon (a free worker and a slot of the bot within the next lease; answers always) and a lease
// of the bot's slots sized to what can go now, so that every slot is used when it is due. While
// the Budget is unavailable (Postgres down) nothing is sent; sends wait, and a cancelled one
// ends at once.
//
// Thread-safe. Destroying the Pacer ends every waiting send with go = false.
#ifndef CONCERT_NOTIFIER_PACER_H_
#define CONCERT_NOTIFIER_PACER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "notifier/budget.h"

namespace concert::notifier {

struct PacerOptions {
  // Sends in flight at once (SEND_CONCURRENCY): about the bot's rate times Telegram's answer
  // time is enough.
  int workers = 32;
};

class Pacer {
 public:
  enum class Priority { kAnswer = 0, kNotification = 1 };
  // How long one send waited, by what held it.
  struct Waits {
    absl::Duration chat;   // its chat's slot (private chat or group)
    absl::Duration bot;    // the bot's rate across chats, or a free worker
    absl::Duration flood;  // a 429's retry_after
  };
  // Called once: go = true on a worker when the slots are free; go = false, at once, when
  // `cancelled` was notified first or the Pacer is destroyed.
  using Send = std::function<void(bool go, const Waits& waits)>;

  Pacer(Budget& budget, PacerOptions options, metrics::Registry& registry = metrics::Default());
  ~Pacer();
  Pacer(const Pacer&) = delete;
  Pacer& operator=(const Pacer&) = delete;

  // `cancelled` must outlive the call of `send`.
  void Submit(const std::string& chat_id, Priority priority, const absl::Notification& cancelled,
              Send send);
  // Waits on this thread until a message to `chat_id` may go, taking its slots; false when
  // `stop` was notified first.
  bool Acquire(const std::string& chat_id, Priority priority, const absl::Notification& stop,
               Waits* waits);
  // Telegram answered 429: nothing of this bot goes before now + retry_after, in any replica.
  void Block(absl::Duration retry_after);

  // Sends waiting for their slots.
  int waiting() const;

 private:
  struct Granted;  // Acquire's meeting point with the scheduling thread
  struct Request {
    uint64_t seq;
    Priority priority;
    const absl::Notification* cancelled;
    Send send;  // empty for Acquire
    std::shared_ptr<Granted> granted;  // Acquire's
    absl::Time submitted;
  };
  // Where a chat with waiting requests stands.
  enum class Stage { kToClaim, kClaiming, kTimed, kReady };
  struct Chat {
    std::deque<Request> answers, notifications;
    Stage stage = Stage::kToClaim;
    absl::Time claimed_at;  // kTimed, kReady: when its slot was reserved
    absl::Time ready_at;    // kTimed, kReady: when its slot is free
    std::tuple<int, uint64_t> key;  // of the head, as filed in to_claim_ or ready_
    const Request& head() const { return answers.empty() ? notifications.front() : answers.front(); }
    bool empty() const { return answers.empty() && notifications.empty(); }
  };
  using Key = std::tuple<int, uint64_t, std::string>;  // priority, head's seq, chat

  void Enqueue(const std::string& chat_id, Request request);
  // Files `chat` by its head in the set of its stage (unfiled first); erases it when empty.
  void Refile(const std::string& chat_id, Chat& chat);
  void Unfile(const std::string& chat_id, Chat& chat);
  void Dispatch();      // the scheduling thread
  // One call of the Budget for `claiming` and `bot_slots`, without the lock (held on entry and
  // on return); false when the Budget failed.
  bool ReserveRound(std::unique_lock<std::mutex>& lock, const std::vector<std::string>& claiming,
                    int bot_slots);
  void Work();          // a worker
  // Under the lock. Hands out every request that may go now.
  void GrantReady(absl::Time now);
  // Ends the requests whose `cancelled` was notified; their calls go to `ended`, to be made
  // without the lock.
  void SweepCancelled(std::vector<std::function<void()>>* ended);
  // Bot slots that the ready requests could use now, beyond those leased.
  int BotSlotsWanted(absl::Time now);
  void DropStaleSlots(absl::Time now);
  // A request's wait until `now`: for its chat's slot from the moment it was reserved, for the
  // bot (and a worker) before that and after, for a 429's pause while that ran.
  static Waits WaitsOf(const Request& request, const Chat& chat, absl::Time now,
                       absl::Time blocked_until);

  Budget& budget_;
  const PacerOptions options_;
  metrics::Gauge& waiting_gauge_;
  metrics::Counter& budget_errors_;

  mutable std::mutex mu_;
  std::condition_variable dispatch_cv_;  // work for the scheduling thread
  std::condition_variable work_cv_;      // work for the workers
  bool stopping_ = false;
  uint64_t next_seq_ = 0;
  int waiting_ = 0;
  std::unordered_map<std::string, Chat> chats_;
  std::set<Key> to_claim_;  // chats whose head needs its chat's slot
  std::set<std::pair<absl::Time, std::string>> timed_;  // slot reserved, free later
  std::set<Key> ready_;     // slot free: waiting for the bot (and a worker)
  std::deque<absl::Time> bot_slots_;  // leased, not yet used
  absl::Time blocked_until_ = absl::InfinitePast();
  int idle_workers_ = 0;
  std::deque<std::function<void()>> runnable_;
  std::vector<std::thread> workers_;
  std::thread dispatcher_;
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_PACER_H_
