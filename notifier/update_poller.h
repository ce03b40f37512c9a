// The bot's side of the Telegram link flow: reads what users write to the bot with getUpdates
// long polling and acts on it.
//
//   /start <code>  -> LinkClient::ConfirmLink(code, chat); answers in that chat: linked, or a
//                     polite refusal (expired, used, unknown code). Nothing else happens.
//   /start         -> a hint to start from the app's link
//   /stop          -> LinkClient::UnlinkChat(chat); answers "unlinked"
//   anything else  -> acknowledged, ignored
//
// In groups Telegram's command menu writes "/start@<bot> <code>" and "/stop@<bot>": ours (the
// username from the options, else from getMe at start; any case) is handled like the bare
// command, another bot's is ignored.
//
// Telegram allows one getUpdates poller per bot (a newer getUpdates ends the older one with
// 409), however many notifier replicas run. So the poller first takes a session-level Postgres
// advisory lock on a connection of its own; only the holder polls, the others retry the lock
// every standby_interval. The lock lives as long as that connection: when the holder's process
// dies Postgres ends its session and another replica takes over within seconds; when the holder
// loses its connection it stops polling at once (its lock is gone), and leaves what its last
// poll brought unhandled: the next holder fetches it again from the stored offset. When the
// holder's host dies or drops off the network, nothing closes the connection: TCP keepalives on
// both ends (10 s of silence, then 3 probes 5 s apart; the server's set for this session, as
// the client's are by WithConnectDefaults) end the session, and with it the lock, within about
// 25 s, where the kernels' defaults would take over 2 hours.
//
// The updates of one poll are decided in turn (payment-server's calls), then their answers go
// at once through the notifier's Pacer, each in its chat's queue, ahead of the payment
// notifications waiting there (never as paid broadcasts: `replies` is a sender without them).
// So a group flooded with bare /start (20 answers a minute) holds up no other chat's "linked".
// The batch is acknowledged once every answer went. A 429 pauses every send for its retry_after, then the answer goes
// again, up to reply_attempts times.
//
// The offset (the next update_id to ask for) is a row in notification.telegram_updates,
// written through the lock's connection after each update is handled: a restart or a takeover
// neither replays nor skips updates. An update whose outcome payment-server could not decide
// (unreachable, timeout) is not acknowledged: the poller backs off and asks for it again.
// Telegram's answers are read up to a size cap (bot_api.h): a bigger one is an error, logged and
// retried. getMe and getUpdates go through BotApi with TELEGRAM_CONNECT_TIMEOUT and
// TELEGRAM_TIMEOUT (a long poll waits poll_timeout more); a stop ends a long poll at once.
//
//   UpdatePoller poller(options, links, replies, pacer, metrics::Default());
//   std::thread t([&] { poller.Run(StopRequested()); });
//
// Run() blocks (long polls, database calls) on its own thread until `stop`; the rest is not
// thread-safe.
#ifndef CONCERT_NOTIFIER_UPDATE_POLLER_H_
#define CONCERT_NOTIFIER_UPDATE_POLLER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "notifier/bot_api.h"
#include "notifier/link_client.h"
#include "notifier/message.h"
#include "notifier/pacer.h"
#include "notifier/sender.h"

namespace concert::notifier {

struct UpdatePollerOptions {
  // DATABASE_URL: the notifier's database (the lock and the offset live there).
  std::string database_url;
  // TELEGRAM_API_BASE and TELEGRAM_BOT_TOKEN.
  std::string api_base = "https://api.telegram.org";
  std::string token;
  // TELEGRAM_BOT_USERNAME: the bot's username, which commands in groups name. Empty: asked
  // with getMe when Run starts (retried while Telegram is unreachable).
  std::string bot_username;
  // TELEGRAM_CONNECT_TIMEOUT and TELEGRAM_TIMEOUT, as for the payment messages (bot_api.h); a
  // getUpdates takes poll_timeout longer.
  absl::Duration connect_timeout = absl::Seconds(3);
  absl::Duration timeout = absl::Seconds(10);
  // TELEGRAM_POLL_TIMEOUT: how long one getUpdates waits for an update. Longer means fewer
  // requests.
  absl::Duration poll_timeout = absl::Seconds(25);
  // How often a standby replica tries the lock.
  absl::Duration standby_interval = absl::Seconds(1);
  // Bound of the backoff after a failed poll or an undecided update.
  absl::Duration max_backoff = absl::Seconds(10);
  // Tries of one answer that Telegram refuses with 429. Each waits the retry_after (at most
  // TELEGRAM_MAX_RETRY_AFTER), and later updates wait behind it.
  int reply_attempts = 5;
  MessageLocale locale = MessageLocale::kKorean;
};

// A bot command: "/start@concert_bot abc" is {.name = "start", .bot = "concert_bot",
// .args = "abc"}; .bot is empty without "@".
struct BotCommand {
  std::string name;
  std::string bot;
  std::string args;
};
// nullopt for text that is not a command.
std::optional<BotCommand> ParseCommand(const std::string& text);

class UpdatePoller {
 public:
  // `replies` sends the bot's answers (to the update's chat), paced by `pacer`: the one the
  // notifier's messages of the same bot go through.
  UpdatePoller(UpdatePollerOptions options, LinkClient& links, Sender& replies, Pacer& pacer,
               metrics::Registry& registry);

  void Run(const absl::Notification& stop);

 private:
  enum class Outcome { kDone, kRetry };
  struct Update {
    int64_t update_id = 0;
    int64_t chat_id = 0;  // 0: not a message with text (acknowledged, ignored)
    std::string text;
  };
  // What the bot says in a chat.
  struct Answer {
    int64_t chat_id = 0;
    LinkReply reply;
  };

  // Polls while this replica holds the lock; returns when stopping or the lock is gone.
  void PollWhileLeader(pqxx::connection& conn, const absl::Notification& stop);
  // One getUpdates: the updates of an ok answer, else an error (the token redacted).
  absl::StatusOr<std::vector<Update>> GetUpdates(int64_t offset, const absl::Notification& stop);
  // A command addressed to another bot (by its "@<bot>" suffix) is not ours.
  bool ForUs(const BotCommand& command) const;
  // Decides an update (payment-server's link calls) and what to answer, if anything.
  Outcome Handle(const Update& update, std::optional<LinkReply>* reply);
  // False when `stop` came before the answer went (the update is then not acknowledged: the
  // next poller answers it); a failure of the answer itself is logged.
  bool Reply(const Answer& answer, const absl::Notification& stop);
  // Every answer at once through the Pacer (on its workers); returns when all ended, false
  // when one did not go because `stop` came first.
  bool SendAnswers(const std::vector<Answer>& answers, const absl::Notification& stop);
  // notifier_telegram_updates_total{outcome}.
  metrics::Counter& UpdatesCounter(const std::string& outcome);

  UpdatePollerOptions options_;
  LinkClient& links_;
  Sender& replies_;
  Pacer& pacer_;
  metrics::Registry& registry_;
  BotApi bot_;  // getMe and getUpdates; the answers go through `replies_`
  metrics::Gauge& leader_;
  std::string username_;  // the bot's, set when Run starts
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_UPDATE_POLLER_H_
