// Budget: Telegram's limits for one bot, as slots that senders reserve before a message goes.
// Telegram counts per bot and per chat, not per process, so the budget of a fleet of notifiers
// is one: SharedBudget keeps it in Postgres, where every replica reserves from the same rows.
//
// Each limit is a GCRA bucket kept as one "theoretical arrival time" (tat): the bot's (all chats
// together: 30/s, or 1,000/s with paid broadcasts), each private chat's (1/s with a small burst)
// and each group's or channel's (a negative chat id or "@name": 20/min). A reservation names the
// chats whose next message is ready and asks for n slots of the bot; it answers, for each, how
// long from now until that slot. A slot is used at its time, never earlier and not much later:
// one used late and the next on time would add up to a burst the bucket never granted (the
// Pacer reserves again when a slot passed unused). A slot never used is only lost.
//
// The bot's slots are leased a few at a time (the Pacer asks for as many as it can use within
// about 100 ms), so that 1,000 messages a second are a few dozen updates of the bot's row, not a
// thousand. A replica that dies loses only its lease. A 429 (Block) moves the bot's next slot
// past retry_after for every replica, without a burst after it.
//
//   SharedBudget budget(pool, pacing);
//   ASSIGN_OR_RETURN(Budget::Grant g, budget.Reserve({.chats = {"42", "-100"}, .bot_slots = 2}));
//   // g.chats[0], g.chats[1]: when each chat's message may go; the bot's two slots are at
//   // g.bot_first and g.bot_first + g.bot_spacing.
//
// Thread-safe.
#ifndef CONCERT_NOTIFIER_BUDGET_H_
#define CONCERT_NOTIFIER_BUDGET_H_

#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/postgres.h"

namespace concert::notifier {

// A rate of 0 (or less) leaves that bucket out: no pacing of that kind, for a Bot API stand-in
// without limits. The rates are the whole fleet's: every replica reserves from one budget.
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

class Budget {
 public:
  struct Request {
    std::vector<std::string> chats;  // distinct; one message each
    int bot_slots = 0;
  };
  struct Grant {
    std::vector<absl::Duration> chats;  // from now, per Request::chats
    absl::Duration bot_first;           // from now; meaningless without bot slots
    absl::Duration bot_spacing;         // between the bot's slots; zero: the bot is unpaced
  };

  explicit Budget(PacingOptions options);
  virtual ~Budget() = default;

  virtual absl::StatusOr<Grant> Reserve(const Request& request) = 0;
  // Telegram answered 429: nothing of this bot goes before now + retry_after.
  virtual absl::Status Block(absl::Duration retry_after) = 0;

  // The most bot slots worth leasing at once: about 100 ms of the bot's rate.
  int max_lease() const;
  bool bot_paced() const { return bot_.interval > absl::ZeroDuration(); }

 protected:
  struct Bucket {
    absl::Duration interval;   // 1 / rate; zero: unlimited
    absl::Duration tolerance;  // (burst - 1) * interval
  };
  static Bucket MakeBucket(double rate, int burst);
  const Bucket& ChatBucket(const std::string& chat_id) const;
  // GCRA: the time at or after `now` the first of `n` slots is free, and `tat` moved on.
  static absl::Time Take(const Bucket& bucket, absl::Time now, int n, absl::Time* tat);

  const Bucket bot_;
  const Bucket chat_;
  const Bucket group_;
};

// The budget in Postgres, table notification.telegram_budget (one row per bucket: "bot" and
// "chat:<id>"): every reservation is one statement. Times come from Postgres's clock and are
// answered as durations from now, so the replicas' clocks need not agree. Idle chats' rows are
// deleted now and then.
class SharedBudget : public Budget {
 public:
  SharedBudget(PgPool& pool, PacingOptions options);
  absl::StatusOr<Grant> Reserve(const Request& request) override;
  absl::Status Block(absl::Duration retry_after) override;

 private:
  PgPool& pool_;
  std::mutex mu_;
  absl::Time last_sweep_ = absl::Now();
};

// The same arithmetic in memory, for one process alone (tests, and the scheduler's own).
class LocalBudget : public Budget {
 public:
  explicit LocalBudget(PacingOptions options) : Budget(options) {}
  absl::StatusOr<Grant> Reserve(const Request& request) override {
    return ReserveAt(request, absl::Now());
  }
  absl::Status Block(absl::Duration retry_after) override {
    BlockUntil(absl::Now() + retry_after);
    return absl::OkStatus();
  }
  // With a clock of the caller's own.
  Grant ReserveAt(const Request& request, absl::Time now);
  void BlockUntil(absl::Time until);

 private:
  std::mutex mu_;
  absl::Time bot_tat_ = absl::InfinitePast();
  std::unordered_map<std::string, absl::Time> chat_tat_;
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_BUDGET_H_
