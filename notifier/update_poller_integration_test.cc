// The bot's update poller against the real Postgres (its lock and offset), the fake Telegram over
// real HTTP, and an in-process TelegramLinkService of our own that records the calls it gets.
#include "notifier/update_poller.h"

#include <httplib.h>

#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <pqxx/pqxx>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/testing/environment.h"
#include "concert/internal/v1/telegram_link.grpc.pb.h"
#include "gtest/gtest.h"
#include "notifier/delivery_store.h"
#include "notifier/telegram_sender.h"
#include "tests/fake_telegram/fake_telegram.h"

namespace concert::notifier {
namespace {

using concert::testing::FakeTelegram;
using concert::testing::WaitUntil;

constexpr char kToken[] = "123456:SECRET-token";
constexpr char kCode[] = "good_code";

// payment-server's side: kCode links user 1, any other code is unknown; records each call.
class FakeLinkService final : public internal::v1::TelegramLinkService::Service {
 public:
  grpc::Status ConfirmLink(grpc::ServerContext*, const internal::v1::ConfirmLinkRequest* request,
                           internal::v1::ConfirmLinkResponse* response) override {
    Record(absl::StrCat("ConfirmLink ", request->code(), " ", request->chat_id()));
    if (request->code() != kCode) return {grpc::StatusCode::NOT_FOUND, "no such code"};
    response->set_user_id(1);
    return grpc::Status::OK;
  }
  grpc::Status UnlinkChat(grpc::ServerContext*, const internal::v1::UnlinkChatRequest* request,
                          internal::v1::UnlinkChatResponse*) override {
    Record(absl::StrCat("UnlinkChat ", request->chat_id()));
    return grpc::Status::OK;
  }

  std::vector<std::string> calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }

 private:
  void Record(std::string call) {
    std::lock_guard lock(mu_);
    calls_.push_back(std::move(call));
  }

  mutable std::mutex mu_;
  std::vector<std::string> calls_;
};

class UpdatePollerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(MigrateSchema(db_.url()).ok());
    ASSERT_TRUE(telegram_.Start().ok());
    replies_ = std::make_unique<TelegramSender>(
        TelegramOptions{.api_base = telegram_.base_url(), .token = kToken});
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&link_service_);
    link_server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    links_ = std::make_unique<LinkClient>(
        LinkClientOptions{.address = absl::StrCat("127.0.0.1:", port), .token = "internal"},
        registry_);
  }

  void TearDown() override {
    if (!stop_.HasBeenNotified()) stop_.Notify();
    if (thread_.joinable()) thread_.join();
    link_server_->Shutdown();
  }

  UpdatePollerOptions Options() {
    UpdatePollerOptions o;
    o.database_url = db_.url();
    o.api_base = telegram_.base_url();
    o.token = kToken;
    o.poll_timeout = absl::Seconds(2);
    o.standby_interval = absl::Milliseconds(100);
    o.max_backoff = absl::Milliseconds(500);
    o.locale = MessageLocale::kEnglish;
    return o;
  }

  void StartPoller(UpdatePollerOptions options) {
    poller_ = std::make_unique<UpdatePoller>(std::move(options), *links_, *replies_, pacer_,
                                             registry_);
    thread_ = std::thread([this] { poller_->Run(stop_); });
  }

  // The bot's answers in `chat`, as the fake Telegram recorded them.
  std::vector<std::string> Answers(int64_t chat) {
    std::vector<std::string> texts;
    for (const auto& m : telegram_.MessagesTo(std::to_string(chat))) texts.push_back(m.text);
    return texts;
  }

  int64_t NextUpdateId() {
    pqxx::connection conn(db_.url());
    pqxx::nontransaction tx(conn);
    return tx.exec1("SELECT next_update_id FROM notification.telegram_updates")[0].as<int64_t>();
  }

  concert::testing::ScratchDatabase db_{"update_poller"};
  FakeTelegram telegram_{{.bot_username = "Concert_Bot"}};
  FakeLinkService link_service_;
  std::unique_ptr<grpc::Server> link_server_;
  metrics::Registry registry_;
  std::unique_ptr<LinkClient> links_;
  std::unique_ptr<TelegramSender> replies_;
  LocalBudget budget_{{.bot_rate = 1000,
                       .bot_burst = 100,
                       .chat_rate = 1000,
                       .chat_burst = 100,
                       .group_rate = 1000,
                       .group_burst = 100}};
  Pacer pacer_{budget_, {.workers = 1}, registry_};
  absl::Notification stop_;
  std::unique_ptr<UpdatePoller> poller_;
  std::thread thread_;
};

// What Telegram's command menu writes in a group: "/cmd@<bot>". Ours (named by getMe, in any
// case) is handled like "/cmd"; another bot's is not ours to answer.
TEST_F(UpdatePollerTest, CommandsAddressedToOurBotAreHandledAndToAnotherBotIgnored) {
  StartPoller(Options());
  telegram_.InjectUserMessage(-100, "/start@other_bot good_code");
  telegram_.InjectUserMessage(-100, "/stop@other_bot");
  telegram_.InjectUserMessage(-100, "/start@concert_bot good_code");
  int64_t last = telegram_.InjectUserMessage(-100, "/stop@CONCERT_BOT");
  ASSERT_TRUE(WaitUntil([&] { return NextUpdateId() == last + 1; }, absl::Seconds(20)));
  EXPECT_EQ(link_service_.calls(),
            (std::vector<std::string>{"ConfirmLink good_code -100", "UnlinkChat -100"}));
  std::vector<std::string> answers = Answers(-100);
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_TRUE(absl::StartsWith(answers[0], "✅ Linked")) << answers[0];
  EXPECT_TRUE(absl::StartsWith(answers[1], "🔕 Unlinked")) << answers[1];
}

// TELEGRAM_BOT_USERNAME, when set, names the bot instead of getMe.
TEST_F(UpdatePollerTest, TheUsernameSettingNamesTheBot) {
  UpdatePollerOptions options = Options();
  options.bot_username = "renamed_bot";
  StartPoller(options);
  telegram_.InjectUserMessage(-100, "/stop@concert_bot");
  int64_t last = telegram_.InjectUserMessage(-100, "/stop@Renamed_Bot");
  ASSERT_TRUE(WaitUntil([&] { return NextUpdateId() == last + 1; }, absl::Seconds(20)));
  EXPECT_EQ(link_service_.calls(), std::vector<std::string>{"UnlinkChat -100"});
  EXPECT_EQ(Answers(-100).size(), 1u);
}

// Without the setting, a Telegram unreachable at start delays the poller, which asks getMe
// again until it answers (the answers go to the first fake, through `replies_`).
TEST_F(UpdatePollerTest, GetMeIsAskedAgainUntilTelegramAnswers) {
  int port = concert::testing::FreePort();
  UpdatePollerOptions options = Options();
  options.api_base = absl::StrCat("http://127.0.0.1:", port);
  StartPoller(options);
  absl::SleepFor(absl::Seconds(1));
  FakeTelegram late({.port = port, .bot_username = "Concert_Bot"});
  ASSERT_TRUE(late.Start().ok());
  int64_t last = late.InjectUserMessage(-100, "/stop@concert_bot");
  ASSERT_TRUE(WaitUntil([&] { return NextUpdateId() == last + 1; }, absl::Seconds(20)));
  EXPECT_EQ(link_service_.calls(), std::vector<std::string>{"UnlinkChat -100"});
  EXPECT_EQ(Answers(-100).size(), 1u);
}

// A leader whose session ended (a Postgres crash or restart) while its long poll was out no
// longer holds the lock: it must not act on what that poll brings, or the next leader, which
// starts from the stored offset, answers the same update again.
TEST_F(UpdatePollerTest, ALeaderThatLostItsSessionDropsTheBatchItFetched) {
  StartPoller(Options());
  auto holder = [&] {
    pqxx::connection conn(db_.url());
    pqxx::nontransaction tx(conn);
    pqxx::result r = tx.exec(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid = x'74677570'::int AND objid = x'64617465'::int AND objsubid = 1 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())");
    return r.empty() ? 0 : r[0][0].as<int>();
  };
  ASSERT_TRUE(WaitUntil([&] { return holder() != 0; }, absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(300));  // its first poll is out
  {
    pqxx::connection conn(db_.url());
    pqxx::nontransaction(conn).exec_params("SELECT pg_terminate_backend($1)", holder());
  }
  telegram_.InjectUserMessage(42, "/start good_code");
  ASSERT_TRUE(WaitUntil([&] { return !Answers(42).empty(); }, absl::Seconds(20)));
  absl::SleepFor(absl::Seconds(2));  // a second answer would come now
  EXPECT_EQ(Answers(42).size(), 1u);
  EXPECT_EQ(link_service_.calls(), std::vector<std::string>{"ConfirmLink good_code 42"});
}

// An answer over the cap is refused before it is all read: nothing in it is acted on, and the
// poller asks again.
TEST_F(UpdatePollerTest, AnOversizedGetUpdatesAnswerIsRefusedAndAskedAgain) {
  httplib::Server huge;
  std::mutex mu;
  int polls = 0;
  huge.Get(R"(/bot[^/]*/getMe)", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"ok":true,"result":{"id":1,"is_bot":true,"first_name":"Bot",)"
                    R"("username":"concert_bot"}})",
                    "application/json");
  });
  huge.Get(R"(/bot[^/]*/getUpdates)", [&](const httplib::Request&, httplib::Response& res) {
    {
      std::lock_guard lock(mu);
      ++polls;
    }
    res.set_content(absl::StrCat(R"({"ok":true,"result":[{"update_id":1,"message":{"message_id":1,)"
                                 R"("chat":{"id":42,"type":"private"},"text":"/stop","padding":")",
                                 std::string(8 << 20, 'x'), R"("}}]})"),
                    "application/json");
  });
  int port = huge.bind_to_any_port("127.0.0.1");
  std::thread server([&] { huge.listen_after_bind(); });
  UpdatePollerOptions options = Options();
  options.api_base = absl::StrCat("http://127.0.0.1:", port);
  StartPoller(options);
  bool asked_again = WaitUntil(
      [&] {
        std::lock_guard lock(mu);
        return polls >= 2;
      },
      absl::Seconds(20));
  stop_.Notify();
  thread_.join();
  huge.stop();
  server.join();
  EXPECT_TRUE(asked_again);
  EXPECT_TRUE(link_service_.calls().empty());
  EXPECT_TRUE(Answers(42).empty());
  EXPECT_EQ(NextUpdateId(), 0);
}

// Prometheus' increase() misses a counter's first increment unless the series was already
// there: every outcome exists at 0 before any update.
TEST_F(UpdatePollerTest, EveryOutcomeCounterExistsAtZeroFromTheStart) {
  UpdatePoller poller(Options(), *links_, *replies_, pacer_, registry_);
  std::string text = registry_.Render();
  for (const char* outcome : {"linked", "expired", "used", "unknown_code", "no_code", "unlinked",
                              "ignored", "retry"}) {
    EXPECT_TRUE(absl::StrContains(
        text, absl::StrCat("notifier_telegram_updates_total{outcome=\"", outcome, "\"} 0")))
        << outcome << " in\n"
        << text;
  }
}

}  // namespace
}  // namespace concert::notifier
