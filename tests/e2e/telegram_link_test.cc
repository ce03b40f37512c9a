// The Telegram link flow end to end, as payers notice it: LinkTelegram in the app, Start in
// Telegram (injected at the fake Telegram, which the notifier polls with getUpdates), then each
// payment's message in the payer's own chat. Real processes, Postgres, Kafka and HTTP.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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

  // The user presses Start on `link` in private chat `chat`; waits for the bot's one answer
  // there and returns its text ("" when none came).
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
  StartSystem({.users = kLinkedUsers + 1});  // the last one never links
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
  StartSystem({.notifiers = 2,
               .users = 3,
               .notifier_env = {{"UNLINKED_POLICY", "skip"}}});
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

}  // namespace
}  // namespace concert::e2e
