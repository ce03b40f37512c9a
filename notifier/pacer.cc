#include "notifier/pacer.h"

#include <algorithm>

#include "absl/time/clock.h"
#include "common/backoff.h"
#include "common/log.h"

namespace concert::notifier {
namespace {

// How often waiting sends are checked for a revoke or a stop.
constexpr absl::Duration kSweepEvery = absl::Milliseconds(50);
// A leased slot of the bot unused this long after its time is dropped, and a chat's slot is
// reserved again: a slot used late followed by the next on time would add to a burst.
constexpr absl::Duration kSlotGrace = absl::Milliseconds(200);
constexpr absl::Duration kChatSlotGrace = absl::Milliseconds(500);
// Chats claimed in one round at most.
constexpr size_t kMaxClaims = 256;

}  // namespace

struct Pacer::Granted {
  absl::Notification done;
  bool go = false;
  Waits waits;
};

Pacer::Pacer(Budget& budget, PacerOptions options, metrics::Registry& registry)
    : budget_(budget),
      options_(options),
      waiting_gauge_(registry.GetGauge("notifier_pacer_waiting",
                                       "Messages of the bot waiting for their chat's or the "
                                       "bot's slot under Telegram's limits")),
      budget_errors_(registry.GetCounter("notifier_budget_errors_total",
                                         "Reservations of Telegram's budget in Postgres that "
                                         "failed (nothing is sent until one succeeds)")) {
  idle_workers_ = std::max(options_.workers, 1);
  for (int i = 0; i < idle_workers_; ++i) workers_.emplace_back([this] { Work(); });
  dispatcher_ = std::thread([this] { Dispatch(); });
}

Pacer::~Pacer() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  dispatch_cv_.notify_all();
  dispatcher_.join();
  // Whatever still waits ends unsent; granted sends already queued still run.
  std::vector<std::function<void()>> ended;
  {
    std::lock_guard lock(mu_);
    for (auto& [chat_id, chat] : chats_) {
      for (auto* queue : {&chat.answers, &chat.notifications}) {
        for (Request& r : *queue) {
          if (r.granted) {
            r.granted->done.Notify();
          } else {
            ended.push_back([send = std::move(r.send)] { send(false, {}); });
          }
        }
      }
    }
    chats_.clear();
    waiting_ = 0;
  }
  for (auto& end : ended) end();
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void Pacer::Submit(const std::string& chat_id, Priority priority,
                   const absl::Notification& cancelled, Send send) {
  Enqueue(chat_id, {.priority = priority, .cancelled = &cancelled, .send = std::move(send)});
}

bool Pacer::Acquire(const std::string& chat_id, Priority priority, const absl::Notification& stop,
                    Waits* waits) {
  auto granted = std::make_shared<Granted>();
  Enqueue(chat_id, {.priority = priority, .cancelled = &stop, .granted = granted});
  granted->done.WaitForNotification();
  *waits = granted->waits;
  return granted->go;
}

void Pacer::Block(absl::Duration retry_after) {
  {
    std::lock_guard lock(mu_);
    blocked_until_ = std::max(blocked_until_, absl::Now() + retry_after);
    bot_slots_.clear();  // leased before the 429: void
  }
  dispatch_cv_.notify_one();
  // The other replicas learn it from the budget; should Postgres not take it, their next 429
  // tells them.
  if (absl::Status s = budget_.Block(retry_after); !s.ok()) {
    log::Warn("could not share a 429's pause with the other replicas",
              {{"error", std::string(s.message())}});
  }
}

int Pacer::waiting() const {
  std::lock_guard lock(mu_);
  return waiting_;
}

void Pacer::Enqueue(const std::string& chat_id, Request request) {
  {
    std::lock_guard lock(mu_);
    request.seq = next_seq_++;
    request.submitted = absl::Now();
    auto [it, inserted] = chats_.try_emplace(chat_id);
    Chat& chat = it->second;
    bool answer = request.priority == Priority::kAnswer;
    (answer ? chat.answers : chat.notifications).push_back(std::move(request));
    ++waiting_;
    waiting_gauge_.Set(waiting_);
    if (inserted) {
      chat.stage = Stage::kToClaim;
      Refile(chat_id, chat);
    } else if (answer) {
      Refile(chat_id, chat);  // an answer may be the chat's new head
    }
  }
  dispatch_cv_.notify_one();
}

void Pacer::Unfile(const std::string& chat_id, Chat& chat) {
  Key key{std::get<0>(chat.key), std::get<1>(chat.key), chat_id};
  switch (chat.stage) {
    case Stage::kToClaim:
      to_claim_.erase(key);
      break;
    case Stage::kReady:
      ready_.erase(key);
      break;
    case Stage::kTimed:
      timed_.erase({chat.ready_at, chat_id});
      break;
    case Stage::kClaiming:
      break;
  }
}

void Pacer::Refile(const std::string& chat_id, Chat& chat) {
  Unfile(chat_id, chat);
  if (chat.empty()) {
    // A claim on its way stays: the chat is forgotten when it comes back.
    if (chat.stage != Stage::kClaiming) chats_.erase(chat_id);
    return;
  }
  const Request& head = chat.head();
  chat.key = {static_cast<int>(head.priority), head.seq};
  Key key{static_cast<int>(head.priority), head.seq, chat_id};
  switch (chat.stage) {
    case Stage::kToClaim:
      to_claim_.insert(key);
      break;
    case Stage::kReady:
      ready_.insert(key);
      break;
    case Stage::kTimed:
      timed_.insert({chat.ready_at, chat_id});
      break;
    case Stage::kClaiming:
      break;
  }
}

void Pacer::DropStaleSlots(absl::Time now) {
  while (!bot_slots_.empty() && bot_slots_.front() < now - kSlotGrace) bot_slots_.pop_front();
}

int Pacer::BotSlotsWanted(absl::Time now) {
  if (!budget_.bot_paced() || blocked_until_ > now) return 0;
  DropStaleSlots(now);
  // The next lease once the last one is due: about 100 ms of the bot's rate ahead, no more.
  if (!bot_slots_.empty() && bot_slots_.back() > now) return 0;
  int can_go = 0;
  int workers = idle_workers_;
  int enough = static_cast<int>(bot_slots_.size()) + budget_.max_lease();
  for (const Key& key : ready_) {
    if (can_go >= enough) break;
    if (std::get<0>(key) == static_cast<int>(Priority::kAnswer)) {
      ++can_go;
    } else if (workers > 0) {
      --workers;
      ++can_go;
    } else {
      break;  // only notifications follow, and no worker is free for them
    }
  }
  return std::min(std::max(can_go - static_cast<int>(bot_slots_.size()), 0), budget_.max_lease());
}

Pacer::Waits Pacer::WaitsOf(const Request& request, const Chat& chat, absl::Time now,
                            absl::Time blocked_until) {
  Waits waits;
  absl::Time claimed = std::max(request.submitted, chat.claimed_at);
  absl::Time slot = std::max(claimed, chat.ready_at);
  waits.chat = slot - claimed;
  if (blocked_until > slot) waits.flood = std::min(blocked_until, now) - slot;
  waits.bot = std::max(now - request.submitted - waits.chat - waits.flood, absl::ZeroDuration());
  return waits;
}

void Pacer::GrantReady(absl::Time now) {
  bool paced = budget_.bot_paced();
  if (paced) DropStaleSlots(now);
  for (auto it = ready_.begin(); it != ready_.end();) {
    std::string chat_id = std::get<2>(*it);
    Chat& chat = chats_.at(chat_id);
    bool answer = std::get<0>(*it) == static_cast<int>(Priority::kAnswer);
    if (!answer && idle_workers_ == 0) break;  // only notifications follow
    if (blocked_until_ > now) break;
    if (now - chat.ready_at > kChatSlotGrace) {
      // Its slot passed while the bot or the workers were busy: reserve a fresh one.
      it = ready_.erase(it);
      chat.stage = Stage::kToClaim;
      Refile(chat_id, chat);
      continue;
    }
    if (paced) {
      if (bot_slots_.empty() || bot_slots_.front() > now) break;
      bot_slots_.pop_front();
    }
    it = ready_.erase(it);
    std::deque<Request>& queue = chat.answers.empty() ? chat.notifications : chat.answers;
    Request request = std::move(queue.front());
    queue.pop_front();
    --waiting_;
    Waits waits = WaitsOf(request, chat, now, blocked_until_);
    chat.stage = Stage::kToClaim;  // its next message needs a slot of its own
    Refile(chat_id, chat);
    if (request.granted) {
      request.granted->go = true;
      request.granted->waits = waits;
      request.granted->done.Notify();
    } else {
      --idle_workers_;
      runnable_.push_back([send = std::move(request.send), waits] { send(true, waits); });
      work_cv_.notify_one();
    }
  }
  waiting_gauge_.Set(waiting_);
}

void Pacer::SweepCancelled(std::vector<std::function<void()>>* ended) {
  std::vector<std::string> changed;
  for (auto& [chat_id, chat] : chats_) {
    bool removed = false;
    for (auto* queue : {&chat.answers, &chat.notifications}) {
      for (auto r = queue->begin(); r != queue->end();) {
        if (!r->cancelled->HasBeenNotified()) {
          ++r;
          continue;
        }
        if (r->granted) {
          r->granted->done.Notify();  // go = false
        } else {
          ended->push_back([send = std::move(r->send)] { send(false, {}); });
        }
        r = queue->erase(r);
        --waiting_;
        removed = true;
      }
    }
    if (removed) changed.push_back(chat_id);
  }
  for (const std::string& chat_id : changed) Refile(chat_id, chats_.at(chat_id));
  waiting_gauge_.Set(waiting_);
}

bool Pacer::ReserveRound(std::unique_lock<std::mutex>& lock,
                         const std::vector<std::string>& claiming, int bot_slots) {
  lock.unlock();
  absl::StatusOr<Budget::Grant> grant = budget_.Reserve({.chats = claiming, .bot_slots = bot_slots});
  absl::Time got = absl::Now();
  lock.lock();
  if (!grant.ok()) {
    budget_errors_.Increment();
    log::Warn("reserving Telegram's budget failed; sends wait",
              {{"error", std::string(grant.status().message())}});
  }
  for (size_t i = 0; i < claiming.size(); ++i) {
    Chat& chat = chats_.at(claiming[i]);
    if (grant.ok()) {
      chat.claimed_at = got;
      chat.ready_at = got + grant->chats[i];
      chat.stage = chat.ready_at <= got ? Stage::kReady : Stage::kTimed;
    } else {
      chat.stage = Stage::kToClaim;
    }
    Refile(claiming[i], chat);
  }
  if (grant.ok()) {
    for (int k = 0; k < bot_slots; ++k) {
      bot_slots_.push_back(got + grant->bot_first + grant->bot_spacing * k);
    }
  }
  return grant.ok();
}

void Pacer::Dispatch() {
  std::unique_lock lock(mu_);
  Backoff backoff(absl::Milliseconds(100), absl::Seconds(5));
  absl::Time next_sweep = absl::Now();
  absl::Time budget_retry_at = absl::InfinitePast();
  while (!stopping_) {
    absl::Time now = absl::Now();
    if (now >= next_sweep) {
      next_sweep = now + kSweepEvery;
      std::vector<std::function<void()>> ended;
      SweepCancelled(&ended);
      if (!ended.empty()) {
        lock.unlock();
        for (auto& end : ended) end();
        lock.lock();
        continue;
      }
    }
    while (!timed_.empty() && timed_.begin()->first <= now) {
      std::string chat_id = timed_.begin()->second;
      Chat& chat = chats_.at(chat_id);
      Unfile(chat_id, chat);
      chat.stage = Stage::kReady;
      Refile(chat_id, chat);
    }
    GrantReady(now);

    if (now >= budget_retry_at) {
      // Chats are claimed only as their messages could go soon (a free worker and, paced, a
      // slot of the bot within the next lease), so that a slot is used when it is due; answers
      // always.
      int capacity = idle_workers_;
      if (budget_.bot_paced()) {
        capacity = std::min(capacity, budget_.max_lease() + static_cast<int>(bot_slots_.size()));
      }
      int notifications = capacity - static_cast<int>(ready_.size());
      std::vector<std::string> claiming;
      for (auto it = to_claim_.begin(); it != to_claim_.end() && claiming.size() < kMaxClaims;) {
        if (std::get<0>(*it) != static_cast<int>(Priority::kAnswer) && notifications-- <= 0) break;
        const std::string& chat_id = std::get<2>(*it);
        chats_.at(chat_id).stage = Stage::kClaiming;
        claiming.push_back(chat_id);
        it = to_claim_.erase(it);
      }
      int bot_slots = BotSlotsWanted(now);
      if (!claiming.empty() || bot_slots > 0) {
        if (ReserveRound(lock, claiming, bot_slots)) {
          backoff.Reset();
        } else {
          budget_retry_at = absl::Now() + backoff.Next();
        }
        continue;
      }
    }

    absl::Time wake = waiting_ > 0 ? next_sweep : absl::InfiniteFuture();
    if (!timed_.empty()) wake = std::min(wake, timed_.begin()->first);
    bool grantable = !ready_.empty() && (idle_workers_ > 0 || std::get<0>(*ready_.begin()) ==
                                                                  static_cast<int>(Priority::kAnswer));
    if (blocked_until_ > now) {
      wake = std::min(wake, blocked_until_);
    } else if (grantable && !bot_slots_.empty()) {
      wake = std::min(wake, std::max(bot_slots_.front(), now));
    }
    if (budget_retry_at > now && (!to_claim_.empty() || !ready_.empty())) {
      wake = std::min(wake, budget_retry_at);
    }
    if (wake == absl::InfiniteFuture()) {
      dispatch_cv_.wait(lock);
    } else if (wake > now) {
      dispatch_cv_.wait_for(lock, absl::ToChronoNanoseconds(wake - now));
    }
  }
}

void Pacer::Work() {
  std::unique_lock lock(mu_);
  while (true) {
    work_cv_.wait(lock, [&] { return stopping_ || !runnable_.empty(); });
    if (runnable_.empty()) return;
    std::function<void()> job = std::move(runnable_.front());
    runnable_.pop_front();
    lock.unlock();
    job();
    lock.lock();
    ++idle_workers_;
    dispatch_cv_.notify_one();
  }
}

}  // namespace concert::notifier
