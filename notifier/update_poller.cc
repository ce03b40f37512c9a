#include "notifier/update_poller.h"

#include <condition_variable>
#include <mutex>
#include <optional>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/backoff.h"
#include "common/log.h"
#include "common/postgres.h"

namespace concert::notifier {
namespace {

using nlohmann::json;

// The advisory lock that elects the one poller per notifier database ("tgupdate" in ASCII).
constexpr int64_t kPollerLockKey = 0x7467757064617465;
constexpr int kMaxCodeLength = 64;
// Updates per getUpdates (the Bot API caps the batch's size, see bot_api.h).
constexpr int kUpdatesPerPoll = 20;
// Every outcome of an update, each counted from 0 (so that increase() sees the first one).
constexpr const char* kOutcomes[] = {"linked",  "expired",  "used",    "unknown_code",
                                     "no_code", "unlinked", "ignored", "retry"};

// What Telegram allows in a deep-link start parameter; anything else cannot be our code.
bool IsCodeShaped(const std::string& code) {
  if (code.empty() || code.size() > kMaxCodeLength) return false;
  return std::all_of(code.begin(), code.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
}

// Whether this session still holds the poller lock; throws when the connection is gone (and
// with it the lock).
bool HoldsLock(pqxx::connection& conn) {
  pqxx::nontransaction tx(conn);
  return tx
      .exec_params1("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                    "AND granted AND pid = pg_backend_pid() AND objsubid = 1 "
                    "AND ((classid::bigint << 32) | objid::bigint) = $1)",
                    kPollerLockKey)[0]
      .as<bool>();
}

}  // namespace

std::optional<BotCommand> ParseCommand(const std::string& text) {
  absl::string_view rest = absl::StripLeadingAsciiWhitespace(text);
  if (!absl::ConsumePrefix(&rest, "/")) return std::nullopt;
  size_t end = std::min(rest.find_first_of(" \t\n"), rest.size());
  std::pair<absl::string_view, absl::string_view> name_and_bot =
      absl::StrSplit(rest.substr(0, end), absl::MaxSplits('@', 1));
  if (name_and_bot.first.empty()) return std::nullopt;
  return BotCommand{.name = std::string(name_and_bot.first),
                    .bot = std::string(name_and_bot.second),
                    .args = std::string(absl::StripAsciiWhitespace(rest.substr(end)))};
}

UpdatePoller::UpdatePoller(UpdatePollerOptions options, LinkClient& links, Sender& replies,
                           Pacer& pacer, metrics::Registry& registry)
    : options_(std::move(options)),
      links_(links),
      replies_(replies),
      pacer_(pacer),
      registry_(registry),
      bot_({.api_base = options_.api_base,
            .token = options_.token,
            .connect_timeout = options_.connect_timeout,
            .timeout = options_.timeout}),
      leader_(registry.GetGauge(
          "notifier_telegram_poller_leader",
          "1 while this replica holds the lock and polls the bot's updates")) {
  for (const char* outcome : kOutcomes) UpdatesCounter(outcome);
}

metrics::Counter& UpdatePoller::UpdatesCounter(const std::string& outcome) {
  return registry_.GetCounter("notifier_telegram_updates_total",
                              "Bot updates handled, by outcome (linked, expired, used, "
                              "unknown_code, no_code, unlinked, ignored, retry)",
                              {{"outcome", outcome}});
}

void UpdatePoller::Run(const absl::Notification& stop) {
  username_ = options_.bot_username;
  Backoff backoff(options_.standby_interval, options_.max_backoff);
  while (username_.empty() && !stop.HasBeenNotified()) {
    BotAnswer me = bot_.GetMe(stop);
    if (me.ok && me.result.is_object() && me.result.contains("username") &&
        me.result["username"].is_string()) {
      username_ = me.result["username"].get<std::string>();
      log::Info("telegram updates: the bot's username from getMe", {{"username", username_}});
      break;
    }
    log::Warn("telegram getMe failed; retrying",
              {{"error", me.ok ? "no username in the answer" : bot_.Describe("getMe", me)}});
    backoff.Wait(stop);
  }
  backoff.Reset();
  bool said_standby = false;
  while (!stop.HasBeenNotified()) {
    try {
      // A connection of its own: the lock is the session's, and ends with it.
      pqxx::connection conn(WithConnectDefaults(options_.database_url));
      {
        // The server's keepalives, as WithConnectDefaults sets the client's: it ends the
        // session of a holder whose host died (see the header).
        pqxx::nontransaction tx(conn);
        tx.exec("SET tcp_keepalives_idle = 10");
        tx.exec("SET tcp_keepalives_interval = 5");
        tx.exec("SET tcp_keepalives_count = 3");
      }
      backoff.Reset();
      while (!stop.HasBeenNotified()) {
        bool locked;
        {
          pqxx::nontransaction tx(conn);
          locked = tx.exec_params1("SELECT pg_try_advisory_lock($1)", kPollerLockKey)[0].as<bool>();
        }
        if (locked) {
          said_standby = false;
          PollWhileLeader(conn, stop);
          break;  // stopping, or the connection (and with it the lock) is in doubt: reconnect
        }
        if (!said_standby) {
          log::Info("telegram updates: another replica polls; standing by");
          said_standby = true;
        }
        stop.WaitForNotificationWithTimeout(options_.standby_interval);
      }
    } catch (const std::exception& e) {
      leader_.Set(0);
      log::Warn("telegram updates: database unavailable; retrying", {{"error", e.what()}});
      backoff.Wait(stop);
    }
  }
  leader_.Set(0);
}

void UpdatePoller::PollWhileLeader(pqxx::connection& conn, const absl::Notification& stop) {
  int64_t offset;
  {
    pqxx::nontransaction tx(conn);
    offset = tx.exec("SELECT next_update_id FROM notification.telegram_updates")[0][0]
                 .as<int64_t>();
  }
  leader_.Set(1);
  log::Info("telegram updates: this replica holds the lock and polls", {{"offset", offset}});
  Backoff backoff(absl::Milliseconds(500), options_.max_backoff);
  while (!stop.HasBeenNotified()) {
    // A broken connection throws here and ends the leadership: a poll by a replica that lost
    // the lock would end the new holder's with 409.
    if (!HoldsLock(conn)) break;
    absl::StatusOr<std::vector<Update>> updates = GetUpdates(offset, stop);
    if (stop.HasBeenNotified()) break;
    bool retry = !updates.ok();
    if (!updates.ok()) {
      log::Warn("telegram getUpdates failed; retrying",
                {{"error", std::string(updates.status().message())}});
    } else if (!updates->empty() && !HoldsLock(conn)) {
      // The session ended while the poll was out (e.g. Postgres restarted): another replica
      // may hold the lock and handle these from the stored offset, so handling them here too
      // would answer them twice.
      break;
    } else {
      // Each update decided in turn; the batch's answers then go at once, each in its chat's
      // queue (in order there) ahead of the notifications.
      std::vector<Answer> answers;
      int64_t decided_until = offset;
      for (const Update& update : *updates) {
        std::optional<LinkReply> reply;
        if (Handle(update, &reply) == Outcome::kRetry) {
          retry = true;
          break;
        }
        if (reply) answers.push_back({update.chat_id, *reply});
        decided_until = update.update_id + 1;
      }
      // A stop before every answer went leaves the batch to the next poller.
      if (!SendAnswers(answers, stop)) break;
      if (decided_until != offset) {
        offset = decided_until;
        pqxx::work tx(conn);
        tx.exec_params("UPDATE notification.telegram_updates SET next_update_id = $1, "
                       "updated_at = now()",
                       offset);
        tx.commit();
      }
    }
    if (retry) {
      backoff.Wait(stop);
    } else {
      backoff.Reset();
    }
  }
  leader_.Set(0);
}

absl::StatusOr<std::vector<UpdatePoller::Update>> UpdatePoller::GetUpdates(
    int64_t offset, const absl::Notification& stop) {
  BotAnswer answer = bot_.GetUpdates(offset, kUpdatesPerPoll, options_.poll_timeout, stop);
  if (answer.http.outcome == HttpResponse::Outcome::kTooLarge) {
    return absl::ResourceExhaustedError(bot_.Describe("getUpdates", answer));
  }
  if (!answer.ok) {
    // 409 (a newer getUpdates with this token, from outside this lock, ended ours) and 5xx pass
    // with time; a 401 needs an operator, and the warning says so.
    return absl::UnavailableError(bot_.Describe("getUpdates", answer));
  }
  if (!answer.result.is_array()) return absl::UnavailableError("getUpdates: result is not a list");
  std::vector<Update> updates;
  for (const json& u : answer.result) {
    if (!u.is_object() || !u.contains("update_id") || !u["update_id"].is_number_integer()) continue;
    Update update;
    update.update_id = u["update_id"].get<int64_t>();
    if (u.contains("message") && u["message"].is_object()) {
      const json& m = u["message"];
      if (m.contains("chat") && m["chat"].is_object() && m["chat"].contains("id") &&
          m["chat"]["id"].is_number_integer() && m.contains("text") && m["text"].is_string()) {
        update.chat_id = m["chat"]["id"].get<int64_t>();
        update.text = m["text"].get<std::string>();
      }
    }
    updates.push_back(std::move(update));
  }
  return updates;
}

UpdatePoller::Outcome UpdatePoller::Handle(const Update& update,
                                           std::optional<LinkReply>* reply_to_send) {
  auto count = [&](const std::string& outcome) { UpdatesCounter(outcome).Increment(); };
  std::optional<BotCommand> command = ParseCommand(update.text);
  if (update.chat_id == 0 || !command || !ForUs(*command)) {
    count("ignored");
    return Outcome::kDone;
  }
  if (command->name == "start") {
    const std::string& code = command->args;
    if (code.empty()) {
      *reply_to_send = LinkReply::kNoCode;
      count("no_code");
      return Outcome::kDone;
    }
    absl::StatusOr<int64_t> user = IsCodeShaped(code)
                                       ? links_.ConfirmLink(code, update.chat_id)
                                       : absl::NotFoundError("not a link code");
    LinkReply reply;
    std::string outcome;
    if (user.ok()) {
      reply = LinkReply::kLinked;
      outcome = "linked";
    } else if (user.status().code() == absl::StatusCode::kNotFound ||
               user.status().code() == absl::StatusCode::kInvalidArgument) {
      reply = LinkReply::kUnknown;
      outcome = "unknown_code";
    } else if (user.status().code() == absl::StatusCode::kFailedPrecondition) {
      bool expired = absl::StrContains(user.status().message(), "expired");
      reply = expired ? LinkReply::kExpired : LinkReply::kUsed;
      outcome = expired ? "expired" : "used";
    } else {
      // payment-server did not decide: keep the update for the next poll.
      log::Warn("confirming a telegram link failed; will retry",
                {{"update_id", update.update_id}, {"error", std::string(user.status().message())}});
      count("retry");
      return Outcome::kRetry;
    }
    log::Info("telegram /start", {{"update_id", update.update_id},
                                  {"chat_id", update.chat_id},
                                  {"outcome", outcome},
                                  {"user_id", user.ok() ? *user : 0}});
    *reply_to_send = reply;
    count(outcome);
    return Outcome::kDone;
  }
  if (command->name == "stop") {
    if (absl::Status s = links_.UnlinkChat(update.chat_id, "stop"); !s.ok()) {
      log::Warn("unlinking a telegram chat failed; will retry",
                {{"update_id", update.update_id}, {"error", std::string(s.message())}});
      count("retry");
      return Outcome::kRetry;
    }
    *reply_to_send = LinkReply::kUnlinked;
    count("unlinked");
    return Outcome::kDone;
  }
  count("ignored");
  return Outcome::kDone;
}

bool UpdatePoller::ForUs(const BotCommand& command) const {
  return command.bot.empty() || absl::EqualsIgnoreCase(command.bot, username_);
}

bool UpdatePoller::SendAnswers(const std::vector<Answer>& answers,
                               const absl::Notification& stop) {
  std::mutex mu;
  std::condition_variable cv;
  size_t ended = 0;
  bool all_went = true;
  for (const Answer& answer : answers) {
    pacer_.Submit(std::to_string(answer.chat_id), Pacer::Priority::kAnswer, stop,
                  [&, answer](bool go, const Pacer::Waits&) {
                    bool went = go && Reply(answer, stop);
                    std::lock_guard lock(mu);
                    all_went = all_went && went;
                    ++ended;
                    cv.notify_one();
                  });
  }
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return ended == answers.size(); });
  return all_went;
}

bool UpdatePoller::Reply(const Answer& to, const absl::Notification& stop) {
  // The decision is made and durable at payment-server. Asked again, payment-server answers a
  // retried update the same way, so an answer cut short by a stop leaves the update to the
  // next poller; one that failed otherwise is logged, and the update acknowledged.
  int64_t chat_id = to.chat_id;
  Notification answer{.event_id = "",
                      .reservation_id = "",
                      .chat_id = std::to_string(chat_id),
                      .text = FormatLinkReply(to.reply, options_.locale)};
  SendResult sent;
  for (int attempt = 1; attempt <= options_.reply_attempts; ++attempt) {
    Pacer::Waits waits;
    // The first slot is the one the Pacer granted this answer.
    if (attempt > 1 &&
        !pacer_.Acquire(answer.chat_id, Pacer::Priority::kAnswer, stop, &waits)) {
      return false;
    }
    sent = replies_.Send(answer);
    if (sent.kind != SendResult::Kind::kRateLimited) break;
    // Telegram asks the whole bot to wait: the notifier's messages pause too.
    pacer_.Block(sent.retry_after);
    log::Warn("telegram rate limit on the bot's answer: every send pauses",
              {{"chat_id", chat_id},
               {"attempt", attempt},
               {"retry_after_ms", absl::ToInt64Milliseconds(sent.retry_after)}});
  }
  if (!sent.ok()) {
    log::Warn("telegram reply failed", {{"chat_id", chat_id}, {"error", sent.message}});
  }
  return true;
}

}  // namespace concert::notifier
