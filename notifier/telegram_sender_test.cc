// TelegramSender against the fake Telegram server over real HTTP: what each answer becomes.
#include "notifier/telegram_sender.h"

#include <atomic>
#include <thread>

#include <httplib.h>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/testing/environment.h"
#include "gtest/gtest.h"
#include "tests/fake_telegram/fake_telegram.h"

namespace concert::notifier {
namespace {

using concert::testing::FakeTelegram;
using concert::testing::FaultMode;
using concert::testing::WaitUntil;

constexpr char kToken[] = "123456:SECRET-token";

class TelegramSenderTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(fake_.Start().ok()); }

  TelegramOptions Options() {
    TelegramOptions o;
    o.api_base = fake_.base_url() + "/";  // a trailing slash is tolerated
    o.token = kToken;
    o.retries = 2;
    o.retry_backoff = absl::Milliseconds(20);
    o.total_timeout = absl::Seconds(2);
    return o;
  }

  Notification Note() {
    return {"0b5f2a52-6f5b-4c4e-9a53-1b2f7f0f6a11", "7", "4242", "hello 🎫\nline 2"};
  }

  FakeTelegram fake_{{}};
};

TEST_F(TelegramSenderTest, SendsChatAndText) {
  TelegramSender sender(Options());
  SendResult r = sender.Send(Note());
  ASSERT_TRUE(r.ok()) << r.message;
  auto messages = fake_.messages();
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0].chat_id, "4242");
  EXPECT_EQ(messages[0].text, "hello 🎫\nline 2");
  EXPECT_EQ(messages[0].token, kToken);
}

TEST_F(TelegramSenderTest, ServerErrorsThenSuccessIsOneMessage) {
  fake_.SetFault({.mode = FaultMode::k5xx, .count = 2, .status = 502});
  TelegramSender sender(Options());
  SendResult r = sender.Send(Note());
  EXPECT_TRUE(r.ok()) << r.message;
  EXPECT_EQ(fake_.requests(), 3);
  EXPECT_EQ(fake_.messages().size(), 1u);
}

TEST_F(TelegramSenderTest, PersistentServerErrorIsTransientAfterRetries) {
  fake_.SetFault({.mode = FaultMode::k5xx});
  TelegramSender sender(Options());
  SendResult r = sender.Send(Note());
  EXPECT_EQ(r.kind, SendResult::Kind::kTransient);
  EXPECT_EQ(r.error_class, "telegram_5xx");
  EXPECT_EQ(fake_.requests(), 3);  // 1 + retries
  EXPECT_TRUE(fake_.messages().empty());
}

TEST_F(TelegramSenderTest, BadRequestIsPermanentAtOnce) {
  fake_.SetFault({.mode = FaultMode::k400});
  TelegramSender sender(Options());
  SendResult r = sender.Send(Note());
  EXPECT_EQ(r.kind, SendResult::Kind::kPermanent);
  EXPECT_EQ(r.error_class, "telegram_4xx");
  EXPECT_TRUE(absl::StrContains(r.message, "400")) << r.message;
  EXPECT_EQ(fake_.requests(), 1);
}

TEST_F(TelegramSenderTest, RateLimitIsHandedBackWithRetryAfterWithoutWaiting) {
  fake_.SetFault({.mode = FaultMode::k429, .count = 1, .retry_after_seconds = 7});
  TelegramSender sender(Options());
  SendResult r = sender.Send(Note());
  EXPECT_EQ(r.kind, SendResult::Kind::kRateLimited);
  EXPECT_EQ(r.error_class, "telegram_429");
  EXPECT_EQ(r.retry_after, absl::Seconds(7));
  EXPECT_FALSE(r.possibly_delivered);
  EXPECT_EQ(fake_.requests(), 1);  // the caller's pacing waits, not the sender
  EXPECT_TRUE(fake_.messages().empty());
}

TEST_F(TelegramSenderTest, RetryAfterIsCapped) {
  fake_.SetFault({.mode = FaultMode::k429, .count = 1, .retry_after_seconds = 3600});
  TelegramOptions o = Options();
  o.max_retry_after = absl::Seconds(2);
  TelegramSender sender(o);
  SendResult r = sender.Send(Note());
  EXPECT_EQ(r.kind, SendResult::Kind::kRateLimited);
  EXPECT_EQ(r.retry_after, absl::Seconds(2));
}

TEST_F(TelegramSenderTest, BlockedOrMissingChatIsChatGoneAtOnce) {
  TelegramSender sender(Options());
  for (FaultMode mode : {FaultMode::k403, FaultMode::kChatNotFound}) {
    fake_.Reset();
    fake_.SetFault({.mode = mode, .chat_id = "4242"});
    SendResult r = sender.Send(Note());
    EXPECT_EQ(r.kind, SendResult::Kind::kPermanent);
    EXPECT_EQ(r.error_class, kChatGone) << r.message;
    EXPECT_EQ(fake_.requests(), 1);  // never retried
  }
  // Another chat is unaffected by that chat's rule.
  Notification other = Note();
  other.chat_id = "777";
  EXPECT_TRUE(sender.Send(other).ok());
  EXPECT_EQ(fake_.MessagesTo("777").size(), 1u);
}

TEST_F(TelegramSenderTest, TimeoutAfterTheRequestWentOutIsPossiblyDeliveredAndNeverRetried) {
  // The fake accepts the message, then answers too late: it is in the chat.
  fake_.SetFault({.mode = FaultMode::kStall, .stall = absl::Seconds(3)});
  TelegramOptions o = Options();
  o.total_timeout = absl::Milliseconds(300);
  o.retries = 2;
  TelegramSender sender(o);
  SendResult r = sender.Send(Note());
  EXPECT_EQ(r.kind, SendResult::Kind::kTransient);
  EXPECT_EQ(r.error_class, "timeout");
  EXPECT_TRUE(r.possibly_delivered);
  EXPECT_EQ(fake_.requests(), 1);  // a resend could be a second copy: the caller decides
  EXPECT_FALSE(absl::StrContains(r.message, "SECRET")) << r.message;
}

TEST_F(TelegramSenderTest, ServerErrorIsNotPossiblyDelivered) {
  fake_.SetFault({.mode = FaultMode::k5xx});
  TelegramOptions o = Options();
  o.retries = 0;
  TelegramSender sender(o);
  SendResult r = sender.Send(Note());
  EXPECT_EQ(r.error_class, "telegram_5xx");
  EXPECT_FALSE(r.possibly_delivered);
}

// Answers with JSON types Telegram does not use must not abort the process.
TEST(TelegramSenderAnswers, UnexpectedJsonTypesAreReadLeniently) {
  httplib::Server server;
  std::atomic<int> calls{0};
  server.Post(R"(/bot[^/]+/sendMessage)", [&](const httplib::Request&, httplib::Response& res) {
    switch (calls++) {
      case 0:
        res.status = 429;
        res.set_content(R"({"ok":false,"error_code":"429","parameters":{"retry_after":"5"}})",
                        "application/json");
        break;
      case 1:
        res.status = 429;
        res.set_content(R"({"ok":false,"parameters":{"retry_after":[1]},"description":7})",
                        "application/json");
        break;
      case 2:
        res.status = 200;
        res.set_content(R"({"ok":"true","result":"yes"})", "application/json");
        break;
      default:
        res.status = 200;
        res.set_content(R"({"ok":null})", "application/json");
    }
  });
  server.set_keep_alive_max_count(1);  // no idle connection for stop() to wait out
  int port = server.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread thread([&] { server.listen_after_bind(); });
  ASSERT_TRUE(WaitUntil([&] { return server.is_running(); }, absl::Seconds(5)));
  TelegramOptions o;
  o.api_base = "http://127.0.0.1:" + std::to_string(port);
  o.token = kToken;
  TelegramSender sender(o);
  Notification note{"0b5f2a52-6f5b-4c4e-9a53-1b2f7f0f6a11", "7", "4242", "hi"};

  SendResult r = sender.Send(note);
  EXPECT_EQ(r.kind, SendResult::Kind::kRateLimited);
  EXPECT_EQ(r.retry_after, absl::Seconds(5));
  r = sender.Send(note);
  EXPECT_EQ(r.kind, SendResult::Kind::kRateLimited);
  EXPECT_EQ(r.retry_after, absl::Seconds(1));  // unreadable: the smallest pause
  EXPECT_TRUE(sender.Send(note).ok());
  r = sender.Send(note);
  EXPECT_EQ(r.kind, SendResult::Kind::kPermanent);
  EXPECT_EQ(r.error_class, "telegram_4xx");
  server.stop();
  thread.join();
}

TEST_F(TelegramSenderTest, NobodyListeningIsConnectionErrorWithoutToken) {
  TelegramOptions o = Options();
  o.api_base = "http://127.0.0.1:" + std::to_string(concert::testing::FreePort());
  o.retries = 1;
  TelegramSender sender(o);
  SendResult r = sender.Send(Note());
  EXPECT_EQ(r.kind, SendResult::Kind::kTransient);
  EXPECT_EQ(r.error_class, "connection");
  EXPECT_FALSE(r.possibly_delivered);  // nothing ever reached a server
  EXPECT_FALSE(absl::StrContains(r.message, "SECRET")) << r.message;
}

TEST(RedactToken, ReplacesEveryOccurrence) {
  EXPECT_EQ(RedactToken("https://x/botT0K/sendMessage T0K", "T0K"),
            "https://x/bot<redacted>/sendMessage <redacted>");
  EXPECT_EQ(RedactToken("nothing", ""), "nothing");
}

}  // namespace
}  // namespace concert::notifier
