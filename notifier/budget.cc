#include "notifier/budget.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"

namespace concert::notifier {
namespace {

constexpr absl::Duration kLeaseWindow = absl::Milliseconds(100);
// Rows of chats idle this long are full buckets again: forgetting them changes nothing.
constexpr absl::Duration kSweepEvery = absl::Seconds(30);
constexpr char kBotBucket[] = "bot";


// '{"a","b"}': a Postgres array literal of text, each element quoted.
std::string TextArray(const std::vector<std::string>& items) {
  std::vector<std::string> quoted;
  quoted.reserve(items.size());
  for (const std::string& item : items) {
    std::string q = "\"";
    for (char c : item) {
      if (c == '"' || c == '\\') q += '\\';
      q += c;
    }
    quoted.push_back(q + "\"");
  }
  return absl::StrCat("{", absl::StrJoin(quoted, ","), "}");
}

std::string FloatArray(const std::vector<double>& values) {
  return absl::StrCat("{", absl::StrJoin(values, ","), "}");
}

}  // namespace

bool IsGroupChat(const std::string& chat_id) {
  return !chat_id.empty() && (chat_id[0] == '-' || chat_id[0] == '@');
}

Budget::Bucket Budget::MakeBucket(double rate, int burst) {
  if (rate <= 0) return {absl::ZeroDuration(), absl::ZeroDuration()};
  absl::Duration interval = absl::Seconds(1.0 / rate);
  return {interval, interval * std::max(burst - 1, 0)};
}

Budget::Budget(PacingOptions options)
    : bot_(MakeBucket(options.bot_rate, options.bot_burst)),
      chat_(MakeBucket(options.chat_rate, options.chat_burst)),
      group_(MakeBucket(options.group_rate, options.group_burst)) {}

int Budget::max_lease() const {
  if (!bot_paced()) return 1;
  return std::max(1, static_cast<int>(kLeaseWindow / bot_.interval));
}

const Budget::Bucket& Budget::ChatBucket(const std::string& chat_id) const {
  return IsGroupChat(chat_id) ? group_ : chat_;
}

absl::Time Budget::Take(const Bucket& bucket, absl::Time now, int n, absl::Time* tat) {
  if (bucket.interval == absl::ZeroDuration()) return now;
  absl::Time at = std::max(now, *tat - bucket.tolerance);
  *tat = std::max(*tat, now) + bucket.interval * n;
  return at;
}

Budget::Grant LocalBudget::ReserveAt(const Request& request, absl::Time now) {
  std::lock_guard lock(mu_);
  Grant grant;
  for (const std::string& chat : request.chats) {
    auto [it, inserted] = chat_tat_.try_emplace(chat, absl::InfinitePast());
    grant.chats.push_back(Take(ChatBucket(chat), now, 1, &it->second) - now);
  }
  if (request.bot_slots > 0) grant.bot_first = Take(bot_, now, request.bot_slots, &bot_tat_) - now;
  grant.bot_spacing = bot_.interval;
  return grant;
}

void LocalBudget::BlockUntil(absl::Time until) {
  std::lock_guard lock(mu_);
  // The next slot is `until`, and the burst does not start over right after the pause.
  bot_tat_ = std::max(bot_tat_, until + bot_.tolerance);
}

SharedBudget::SharedBudget(PgPool& pool, PacingOptions options)
    : Budget(options), pool_(pool) {}

absl::StatusOr<Budget::Grant> SharedBudget::Reserve(const Request& request) {
  // One row per paced bucket: its key, the step its tat moves by, and its tolerance.
  std::vector<std::string> buckets;
  std::vector<double> steps, tolerances;
  std::vector<int> row_of_chat(request.chats.size(), -1);
  for (size_t i = 0; i < request.chats.size(); ++i) {
    const Bucket& bucket = ChatBucket(request.chats[i]);
    if (bucket.interval == absl::ZeroDuration()) continue;
    row_of_chat[i] = static_cast<int>(buckets.size());
    buckets.push_back(absl::StrCat("chat:", request.chats[i]));
    steps.push_back(absl::ToDoubleSeconds(bucket.interval));
    tolerances.push_back(absl::ToDoubleSeconds(bucket.tolerance));
  }
  int bot_row = -1;
  if (request.bot_slots > 0 && bot_paced()) {
    bot_row = static_cast<int>(buckets.size());
    buckets.push_back(kBotBucket);
    steps.push_back(absl::ToDoubleSeconds(bot_.interval * request.bot_slots));
    tolerances.push_back(absl::ToDoubleSeconds(bot_.tolerance));
  }
  Grant grant;
  grant.chats.assign(request.chats.size(), absl::ZeroDuration());
  grant.bot_spacing = bot_.interval;
  if (buckets.empty()) return grant;

  bool sweep = false;
  {
    std::lock_guard lock(mu_);
    if (absl::Now() - last_sweep_ >= kSweepEvery) {
      last_sweep_ = absl::Now();
      sweep = true;
    }
  }
  std::vector<double> delays(buckets.size(), 0);
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    // GCRA per row, in Postgres's time: tat' = max(tat, now) + step, and the first slot is at
    // max(now, tat - tolerance) = max(now, tat' - step - tolerance).
    pqxx::result rows = tx.exec_params(
        "WITH req (bucket, step, tolerance) AS ("
        "  SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[])), "
        "up AS ("
        "  INSERT INTO notification.telegram_budget AS b (bucket, tat) "
        // In one order in every replica: two rounds over the same rows never deadlock.
        "  SELECT bucket, now() + make_interval(secs => step) FROM req ORDER BY bucket "
        "  ON CONFLICT (bucket) DO UPDATE SET tat = greatest(b.tat, now()) + (excluded.tat - now()) "
        "  RETURNING b.bucket, extract(epoch FROM b.tat - now())::float8 AS ahead) "
        "SELECT up.bucket, greatest(up.ahead - req.step - req.tolerance, 0) "
        "FROM up JOIN req USING (bucket)",
        TextArray(buckets), FloatArray(steps), FloatArray(tolerances));
    std::unordered_map<std::string, double> by_bucket;
    for (const pqxx::row& row : rows) by_bucket[row[0].as<std::string>()] = row[1].as<double>();
    for (size_t i = 0; i < buckets.size(); ++i) delays[i] = by_bucket[buckets[i]];
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  for (size_t i = 0; i < request.chats.size(); ++i) {
    if (row_of_chat[i] >= 0) grant.chats[i] = absl::Seconds(delays[row_of_chat[i]]);
  }
  if (bot_row >= 0) grant.bot_first = absl::Seconds(delays[bot_row]);

  if (sweep) {
    absl::Status swept = pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
      tx.exec_params(
          "DELETE FROM notification.telegram_budget WHERE bucket <> $1 "
          "AND tat < now() - make_interval(secs => $2)",
          kBotBucket, absl::ToDoubleSeconds(kSweepEvery));
      return absl::OkStatus();
    });
    if (!swept.ok()) {
      log::Warn("forgetting idle chats' budget rows failed",
                {{"error", std::string(swept.message())}});
    }
  }
  return grant;
}

absl::Status SharedBudget::Block(absl::Duration retry_after) {
  if (!bot_paced()) return absl::OkStatus();
  return pool_.Execute(
      [&](pqxx::nontransaction& tx) -> absl::Status {
        tx.exec_params(
            "INSERT INTO notification.telegram_budget AS b (bucket, tat) "
            "VALUES ($1, now() + make_interval(secs => $2)) "
            "ON CONFLICT (bucket) DO UPDATE SET tat = greatest(b.tat, excluded.tat)",
            kBotBucket, absl::ToDoubleSeconds(retry_after + bot_.tolerance));
        return absl::OkStatus();
      },
      PgPool::Retry::kIdempotent);
}

}  // namespace concert::notifier
