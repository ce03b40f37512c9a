// The Telegram link flow end to end, as payers notice it: LinkTelegram in the app, Start in
// Telegram (injected at the fake Telegram, which the notifier polls with getUpdates), then each
// payment's message in the payer's own chat. Real processes, Postgres, Kafka and HTTP.
#include <unistd.h>

#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tests/e2e/system_test.h"

namespace concert::e2e {
namespace {

using ::testing::HasSubstr;
using testing::WaitUntil;

constexpr char kLinked[] = "✅ 연결되었습니다";
constexpr char kExpired[] = "만료되었습니다";
constexpr char kUsed[] = "이미 사용되었습니다";
constexpr char kUnknown[] = "확인할 수 없습니다";
constexpr char kUnlinked[] = "🔕 연결이 해제되었습니다";
constexpr char kNoCode[] = "앱의";

// The keepalive timer of the loopback TCP connection from port `local` to port `remote`, as
// the kernel shows it in /proc/net/tcp: the time until its next probe. nullopt while another
// timer (a retransmission) or none runs, or when there is no such connection.
std::optional<absl::Duration> KeepaliveTimer(int local, int remote) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);  // the header
  auto port = [](const std::string& address) {
    return std::stoi(address.substr(address.find(':') + 1), nullptr, 16);
  };
  while (std::getline(in, line)) {
    std::vector<std::string> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (fields.size() < 6 || port(fields[1]) != local || port(fields[2]) != remote) continue;
    // "tr:tm->when": timer 2 is the keepalive timer; "when" is in clock ticks.
    std::vector<std::string> timer = absl::StrSplit(fields[5], ':');
    if (timer.size() != 2 || std::stoi(timer[0], nullptr, 16) != 2) return std::nullopt;
    return absl::Seconds(std::stoll(timer[1], nullptr, 16)) / sysconf(_SC_CLK_TCK);
  }
  return std::nullopt;
}

class TelegramLinkTest : public SystemTest {
 protected:
  TelegramLinkTest() : SystemTest("e2e") {}

  // The system, and a client app talking to it.
  void StartSystem(SystemOptions options) {
    SystemTest::StartSystem(std::move(options));
    if (HasFatalFailure()) return;
    client_ = std::make_unique<PaymentClient>(system_->payment_address());
  }

  std::vector<testing::TelegramMessage> Chat(int64_t chat) {
    return system_->telegram().MessagesTo(std::to_string(chat));
  }

  // The user writes `text` in private chat `chat` (what pressing Start on a link sends, or a
  // command); waits for the bot's one answer there and returns its text ("" when none came).
  std::string PressStart(int64_t chat, const std::string& text) {
    size_t before = Chat(chat).size();
    system_->telegram().InjectUserMessage(chat, text);
    if (!WaitUntil([&] { return Chat(chat).size() > before; }, absl::Seconds(30))) return "";
    return Chat(chat).back().text;
  }

  // LinkTelegram, then Start from `chat`; expects the confirmation.
  void Link(const User& user, int64_t chat) {
    v1::TelegramLink link;
    grpc::Status s = client_->LinkTelegram(user, &link);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_THAT(link.link(), HasSubstr(absl::StrCat("https://t.me/", kBotUsername, "?start=")));
    EXPECT_THAT(PressStart(chat, StartCommand(link)), HasSubstr(kLinked));
    v1::Account account;
    ASSERT_TRUE(client_->GetAccount(user, &account).ok());
    EXPECT_TRUE(account.telegram_linked());
  }

  int64_t Pay(const User& user) {
    PayOutcome paid = client_->ReserveAndPay(user, system_->NextSeat());
    EXPECT_EQ(paid.kind, PayOutcome::Kind::kAcked) << paid.message;
    return paid.reservation_id;
  }

  bool HasPaymentMessage(int64_t chat, int64_t reservation) {
    for (const testing::TelegramMessage& m : Chat(chat)) {
      if (absl::StrContains(m.text, absl::StrCat("예약 번호: #", reservation, "\n"))) return true;
    }
    return false;
  }

  int64_t Query(const std::string& sql) { return QueryInt(db_.url(), sql); }

  std::unique_ptr<PaymentClient> client_;
};

TEST_F(TelegramLinkTest, EachPayerGetsTheMessageInTheirOwnChatAndGoneChatsAreUnlinked) {
  constexpr int kLinkedUsers = 3;
  // The last user never links.
  ASSERT_NO_FATAL_FAILURE(StartSystem({.users = kLinkedUsers + 1}));
  const std::vector<User>& users = system_->seeded().users;
  const int64_t operator_chat = std::stoll(kChatId);
  auto chat_of = [](int i) { return int64_t{7001} + i; };
  for (int i = 0; i < kLinkedUsers; ++i) Link(users[i], chat_of(i));

  std::map<int64_t, int64_t> reservation_of_chat;
  for (int i = 0; i < kLinkedUsers; ++i) reservation_of_chat[chat_of(i)] = Pay(users[i]);
  int64_t unlinked_reservation = Pay(users[kLinkedUsers]);
  ASSERT_TRUE(WaitUntil(
      [&] {
        for (const auto& [chat, reservation] : reservation_of_chat) {
          if (!HasPaymentMessage(chat, reservation)) return false;
        }
        return HasPaymentMessage(operator_chat, unlinked_reservation);
      },
      absl::Seconds(60)));
  absl::SleepFor(absl::Seconds(2));  // a stray or duplicate message would arrive now
  // Each linked chat: its confirmation and its payer's one message, in Korean with the seed's
  // fields. The operator's chat: only the unlinked payer's. Nothing anywhere else.
  for (int i = 0; i < kLinkedUsers; ++i) {
    std::vector<testing::TelegramMessage> chat = Chat(chat_of(i));
    ASSERT_EQ(chat.size(), 2u) << "chat " << chat_of(i);
    const std::string& text = chat[1].text;
    EXPECT_THAT(text, HasSubstr("🎫 콘서트 결제가 완료되었습니다!\n"));
    EXPECT_THAT(text, HasSubstr(absl::StrCat("예약자 ID: ", users[i].mail, "\n")));
    EXPECT_THAT(text, HasSubstr(absl::StrCat("예약 번호: #", reservation_of_chat[chat_of(i)])));
    EXPECT_THAT(text, HasSubstr(absl::StrCat("콘서트: ", system_->seeded().concert_title)));
    EXPECT_THAT(text, HasSubstr("결제 금액: 50,000원\n"));
    EXPECT_THAT(text, HasSubstr("콘서트 시작 10분전에는 꼭 입장 부탁드립니다!!"));
  }
  ASSERT_EQ(Chat(operator_chat).size(), 1u);
  EXPECT_EQ(system_->telegram().messages().size(), 2u * kLinkedUsers + 1);

  // Refusals: a used code (the first user's, from another chat), a forged one and an expired
  // one each get one polite answer in that chat, and link nothing.
  v1::TelegramLink expiring;
  ASSERT_TRUE(client_->LinkTelegram(users[kLinkedUsers], &expiring).ok());
  QueryInt(db_.url(), "WITH e AS (UPDATE payment.telegram_link_codes SET expires_at = now() "
                      "WHERE used_at IS NULL RETURNING 1) SELECT count(*) FROM e");
  EXPECT_THAT(PressStart(8001, StartCommand(expiring)), HasSubstr(kExpired));
  EXPECT_THAT(PressStart(8002, "/start AAAAforgedAAAAcodeAAAAthatAAAAneverAAAAexisted"),
              HasSubstr(kUnknown));
  EXPECT_THAT(PressStart(8003, "/start not a code!"), HasSubstr(kUnknown));
  v1::TelegramLink again;
  ASSERT_TRUE(client_->LinkTelegram(users[0], &again).ok());
  ASSERT_THAT(PressStart(chat_of(0), StartCommand(again)), HasSubstr(kLinked));  // same chat
  EXPECT_THAT(PressStart(8004, StartCommand(again)), HasSubstr(kUsed));
  v1::Account account;
  ASSERT_TRUE(client_->GetAccount(users[kLinkedUsers], &account).ok());
  EXPECT_FALSE(account.telegram_linked());
  EXPECT_EQ(Query("SELECT count(*) FROM payment.telegram_links"), kLinkedUsers);
  // Nor moved: the first payer's code, used again from 8004, left them on their own chat.
  EXPECT_EQ(Query(absl::StrCat("SELECT chat_id FROM payment.telegram_links WHERE user_id = ",
                               users[0].id)),
            chat_of(0));
  for (int64_t chat : {8001, 8002, 8003, 8004}) EXPECT_EQ(Chat(chat).size(), 1u) << chat;

  // The first payer blocked the bot (403), the second's chat is gone (400): their next
  // payments are recorded undeliverable, their links removed, and nothing is retried.
  system_->telegram().SetFault({.mode = testing::FaultMode::k403, .chat_id = "7001"});
  system_->telegram().SetFault({.mode = testing::FaultMode::kChatNotFound, .chat_id = "7002"});
  int faulted_before = system_->telegram().faulted();
  Pay(users[0]);
  Pay(users[1]);
  ASSERT_TRUE(WaitUntil(
      [&] {
        return Query("SELECT count(*) FROM notification.deliveries "
                     "WHERE state = 'UNDELIVERABLE'") == 2;
      },
      absl::Seconds(60)));
  ASSERT_TRUE(WaitUntil(
      [&] { return Query("SELECT count(*) FROM payment.telegram_links") == kLinkedUsers - 2; },
      absl::Seconds(20)));
  absl::SleepFor(absl::Seconds(5));  // a retry would come now (retry-worker runs every 1 s)
  EXPECT_EQ(system_->telegram().faulted() - faulted_before, 2) << "one attempt each";
  EXPECT_EQ(Query("SELECT count(*) FROM notification.deliveries WHERE state = 'UNDELIVERABLE' "
                  "AND (last_error LIKE '%blocked%' OR last_error LIKE '%chat not found%')"),
            2);
  EXPECT_EQ(Query("SELECT count(*) FROM retry.failed_messages"), 0) << "nothing went to the DLQ";
  EXPECT_EQ(system_->Metric(Service::kNotifier, 0, "notifier_undeliverable_total",
                            "reason=\"chat_gone\""),
            2);
  // Unlinked now: the first payer's next payment takes the unlinked route (the operator).
  system_->telegram().ClearFaults();
  int64_t after_block = Pay(users[0]);
  EXPECT_TRUE(WaitUntil([&] { return HasPaymentMessage(operator_chat, after_block); },
                        absl::Seconds(60)));
}

TEST_F(TelegramLinkTest, OneReplicaPollsAndAnotherTakesOverAndNoUpdateIsLost) {
  ASSERT_NO_FATAL_FAILURE(StartSystem(
      {.notifiers = 2, .users = 3, .notifier_env = {{"UNLINKED_POLICY", "skip"}}}));
  auto leaders = [&] {
    std::vector<int> out;
    for (int i = 0; i < 2; ++i) {
      if (system_->Metric(Service::kNotifier, i, "notifier_telegram_poller_leader") == 1) {
        out.push_back(i);
      }
    }
    return out;
  };
  ASSERT_TRUE(WaitUntil([&] { return leaders().size() == 1; }, absl::Seconds(30)));
  int leader = leaders()[0];
  for (int i = 0; i < 5; ++i) {  // and it stays one, with no 409 at Telegram
    absl::SleepFor(absl::Seconds(1));
    EXPECT_EQ(leaders(), std::vector<int>{leader});
  }
  EXPECT_EQ(system_->telegram().conflicts(), 0);

  // The holder's lock lasts as long as its session. Should its host die (rather than its
  // process, which closes the socket), Postgres notices only by TCP keepalives: both ends of
  // the lock's connection probe after 10 s of silence (not the kernel's 2 hours), so that the
  // session and its lock end within about half a minute and the other replica takes over.
  int server_port = static_cast<int>(Query("SELECT inet_server_port()"));
  int holder_port = static_cast<int>(Query(
      "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
      "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = x'74677570'::int "
      "AND l.objid = x'64617465'::int AND l.objsubid = 1 "
      "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"));
  for (auto [local, remote] : std::vector<std::pair<int, int>>{{server_port, holder_port},
                                                                {holder_port, server_port}}) {
    std::optional<absl::Duration> probe;
    ASSERT_TRUE(WaitUntil([&] { return (probe = KeepaliveTimer(local, remote)).has_value(); },
                          absl::Seconds(10)))
        << "no keepalive on the connection from port " << local << " to " << remote;
    EXPECT_LE(*probe, absl::Seconds(10)) << "from port " << local << " to " << remote;
  }

  const std::vector<User>& users = system_->seeded().users;
  Link(users[0], 9001);

  system_->Kill(Service::kNotifier, leader);
  int survivor = 1 - leader;
  ASSERT_TRUE(WaitUntil(
      [&] {
        return system_->Metric(Service::kNotifier, survivor,
                               "notifier_telegram_poller_leader") == 1;
      },
      absl::Seconds(20)))
      << "the other replica did not take over polling";
  // The link flow works through the survivor, and the updates are neither replayed (no second
  // confirmation in chat 9001) nor skipped.
  Link(users[1], 9002);
  EXPECT_EQ(Chat(9001).size(), 1u);
  int64_t reservation = Pay(users[1]);
  EXPECT_TRUE(WaitUntil([&] { return HasPaymentMessage(9002, reservation); }, absl::Seconds(60)));

  // UNLINKED_POLICY=skip: an unlinked payer's payment reaches no chat, is recorded and counted.
  size_t messages_before = system_->telegram().messages().size();
  Pay(users[2]);
  ASSERT_TRUE(WaitUntil(
      [&] {
        return system_->Metric(Service::kNotifier, survivor, "notifier_undeliverable_total",
                               "reason=\"no_link\"") == 1;
      },
      absl::Seconds(60)));
  EXPECT_EQ(Query("SELECT count(*) FROM notification.deliveries WHERE state = 'UNDELIVERABLE' "
                  "AND last_error LIKE '%no linked Telegram chat%'"),
            1);
  absl::SleepFor(absl::Seconds(2));
  EXPECT_EQ(system_->telegram().messages().size(), messages_before);

  // payment-server away: the Start is not acknowledged and not answered, but kept; once it is
  // back, the same update links the chat.
  v1::TelegramLink late;
  ASSERT_TRUE(client_->LinkTelegram(users[2], &late).ok());
  system_->Kill(Service::kPaymentServer);
  system_->telegram().InjectUserMessage(9003, StartCommand(late));
  absl::SleepFor(absl::Seconds(5));
  EXPECT_TRUE(Chat(9003).empty()) << "answered without payment-server";
  system_->Restart(Service::kPaymentServer);
  ASSERT_TRUE(WaitUntil([&] { return !Chat(9003).empty(); }, absl::Seconds(60)));
  EXPECT_THAT(Chat(9003)[0].text, HasSubstr(kLinked));
  EXPECT_EQ(Chat(9003).size(), 1u);
}

TEST_F(TelegramLinkTest, StopInTheChatOrUnlinkInTheAppEndsTheLinkAndTheNextPaymentIsUnlinked) {
  // UNLINKED_POLICY unset, TELEGRAM_CHAT_ID set: unlinked payers go to the operator's chat.
  ASSERT_NO_FATAL_FAILURE(StartSystem({.users = 2}));
  const std::vector<User>& users = system_->seeded().users;
  const int64_t operator_chat = std::stoll(kChatId);
  Link(users[0], 7101);
  Link(users[1], 7102);

  // /stop in the chat, in the form Telegram's command menu writes in groups (a /stop meant for
  // another bot is not ours): one answer there, and the app sees the link gone.
  system_->telegram().InjectUserMessage(7101, "/stop@another_bot");
  EXPECT_THAT(PressStart(7101, absl::StrCat("/stop@", kBotUsername)), HasSubstr(kUnlinked));
  v1::Account account;
  ASSERT_TRUE(client_->GetAccount(users[0], &account).ok());
  EXPECT_FALSE(account.telegram_linked());
  // UnlinkTelegram in the app: it says it removed one, and nothing is said in the chat.
  v1::UnlinkTelegramResponse unlinked;
  grpc::Status s = client_->UnlinkTelegram(users[1], &unlinked);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(unlinked.unlinked());
  ASSERT_TRUE(client_->GetAccount(users[1], &account).ok());
  EXPECT_FALSE(account.telegram_linked());
  EXPECT_EQ(Query("SELECT count(*) FROM payment.telegram_links"), 0);

  // Their next payments follow UNLINKED_POLICY: the operator's chat, not theirs.
  int64_t after_stop = Pay(users[0]);
  int64_t after_unlink = Pay(users[1]);
  ASSERT_TRUE(WaitUntil(
      [&] {
        return HasPaymentMessage(operator_chat, after_stop) &&
               HasPaymentMessage(operator_chat, after_unlink);
      },
      absl::Seconds(60)));
  absl::SleepFor(absl::Seconds(2));  // a stray message would arrive now
  EXPECT_EQ(Chat(7101).size(), 2u) << "the confirmation and the /stop answer only";
  EXPECT_EQ(Chat(7102).size(), 1u) << "the confirmation only";
  EXPECT_EQ(Chat(operator_chat).size(), 2u);
}

// The bot's answers are paced with the notifier's messages, and a 429 on one is waited out and
// sent again (a bounded number of times), so that a confirmation is not lost to a busy bot.
// They are never paid broadcasts, even when payment messages are.
TEST_F(TelegramLinkTest, ABotAnswerRateLimitedGoesAfterRetryAfterAndIsNeverPaid) {
  ASSERT_NO_FATAL_FAILURE(
      StartSystem({.users = 2, .notifier_env = {{"TELEGRAM_PAID_BROADCAST", "true"}}}));
  const std::vector<User>& users = system_->seeded().users;
  system_->telegram().SetFault(
      {.mode = testing::FaultMode::k429, .count = 2, .retry_after_seconds = 1, .chat_id = "7201"});
  Link(users[0], 7201);
  EXPECT_EQ(system_->telegram().faulted(), 2);
  int64_t reservation = Pay(users[0]);
  ASSERT_TRUE(WaitUntil([&] { return HasPaymentMessage(7201, reservation); }, absl::Seconds(60)));
  std::vector<testing::TelegramMessage> chat = Chat(7201);
  ASSERT_EQ(chat.size(), 2u);
  EXPECT_THAT(chat[0].text, HasSubstr(kLinked));

  // A chat Telegram keeps answering 429: the answer is given up after a few tries (5), the link
  // stands, and the bot goes on to the next update meanwhile.
  system_->telegram().SetFault(
      {.mode = testing::FaultMode::k429, .retry_after_seconds = 1, .chat_id = "7202"});
  v1::TelegramLink link;
  ASSERT_TRUE(client_->LinkTelegram(users[1], &link).ok());
  int faulted_before = system_->telegram().faulted();
  system_->telegram().InjectUserMessage(7202, StartCommand(link));
  EXPECT_THAT(PressStart(7203, "/start"), HasSubstr(kNoCode));
  auto tries = [&] { return system_->telegram().faulted() - faulted_before; };
  EXPECT_TRUE(WaitUntil([&] { return tries() >= 5; }, absl::Seconds(30))) << tries();
  v1::Account account;
  ASSERT_TRUE(client_->GetAccount(users[1], &account).ok());
  EXPECT_TRUE(account.telegram_linked());
  absl::SleepFor(absl::Seconds(3));  // another try would come now
  EXPECT_EQ(tries(), 5);
  EXPECT_TRUE(Chat(7202).empty());

  // Payment messages went as paid broadcasts, the bot's answers did not.
  for (const testing::TelegramMessage& m : system_->telegram().messages()) {
    EXPECT_EQ(m.paid_broadcast, ReservationIn(m.text) != 0) << m.chat_id << ": " << m.text;
  }
}

// A notifier whose INTERNAL_TOKEN payment-server does not know cannot confirm links. It keeps
// the update and asks again (an operator has to fix the setting), and says so: one error line
// in its log, and every refused call counted.
TEST_F(TelegramLinkTest, RefusedLinkCallsAreRetriedLoggedOnceAndCounted) {
  ASSERT_NO_FATAL_FAILURE(StartSystem(
      {.users = 1, .notifier_env = {{"INTERNAL_TOKEN", "not-payment-servers-internal-token"}}}));
  const User& user = system_->seeded().users[0];
  v1::TelegramLink link;
  ASSERT_TRUE(client_->LinkTelegram(user, &link).ok());
  system_->telegram().InjectUserMessage(7301, StartCommand(link));
  ASSERT_TRUE(WaitUntil(
      [&] {
        return system_->Metric(Service::kNotifier, 0, "notifier_link_call_failures_total",
                               "code=\"UNAUTHENTICATED\"") >= 3;
      },
      absl::Seconds(60)))
      << system_->LogPaths();
  int errors = 0;
  for (absl::string_view line : absl::StrSplit(system_->Log(Service::kNotifier), '\n')) {
    if (absl::StrContains(line, "\"level\":\"error\"") &&
        absl::StrContains(line, "UNAUTHENTICATED") && absl::StrContains(line, "INTERNAL_TOKEN")) {
      ++errors;
    }
  }
  EXPECT_EQ(errors, 1) << system_->LogPaths();
  EXPECT_TRUE(Chat(7301).empty());
  v1::Account account;
  ASSERT_TRUE(client_->GetAccount(user, &account).ok());
  EXPECT_FALSE(account.telegram_linked());
}

}  // namespace
}  // namespace concert::e2e
