// TelegramSender against the fake Telegram server over real HTTP: what each answer becomes.
#include "notifier/telegram_sender.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
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

TEST_F(TelegramSenderTest, PaidBroadcastIsAskedForOnlyWhenConfigured) {
  TelegramSender plain(Options());
  ASSERT_TRUE(plain.Send(Note()).ok());
  TelegramOptions o = Options();
  o.paid_broadcast = true;
  TelegramSender paid(o);
  ASSERT_TRUE(paid.Send(Note()).ok());
  auto messages = fake_.messages();
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_FALSE(messages[0].paid_broadcast);
  EXPECT_TRUE(messages[1].paid_broadcast);
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

// A gateway in front of the Bot API (nginx's 504 page) may answer after Telegram delivered: the
// message may be in the chat, so it is never resent in process.
TEST_F(TelegramSenderTest, GatewayErrorAfterDeliveryIsPossiblyDeliveredAndNeverRetried) {
  fake_.SetFault({.mode = FaultMode::kGateway5xx, .count = 1, .status = 504});
  TelegramSender sender(Options());
  SendResult r = sender.Send(Note());
  EXPECT_EQ(r.kind, SendResult::Kind::kTransient);
  EXPECT_EQ(r.error_class, "telegram_5xx");
  EXPECT_TRUE(r.possibly_delivered) << r.message;
  EXPECT_EQ(fake_.requests(), 1);
  EXPECT_EQ(fake_.messages().size(), 1u);
}

// Before every request (retries included) the send asks whether it is still its own; a "no"
// sends nothing more.
TEST_F(TelegramSenderTest, NoRequestLeavesOnceTheSendIsNoLongerOurs) {
  fake_.SetFault({.mode = FaultMode::k5xx, .count = 1, .status = 500});
  TelegramSender sender(Options());
  Notification note = Note();
  int asked = 0;
  note.still_ours = [&] { return ++asked == 1; };  // ours for the first request only
  SendResult r = sender.Send(note);
  EXPECT_EQ(r.kind, SendResult::Kind::kNotOurs) << r.message;
  EXPECT_EQ(asked, 2);
  EXPECT_EQ(fake_.requests(), 1);
  EXPECT_TRUE(fake_.messages().empty());

  note.still_ours = [] { return false; };
  EXPECT_EQ(sender.Send(note).kind, SendResult::Kind::kNotOurs);
  EXPECT_EQ(fake_.requests(), 1);
}

// A plain HTTP server of the test's own on loopback, for answers the fake Telegram never gives.
class AnswerServer {
 public:
  // `handler` answers every sendMessage.
  explicit AnswerServer(httplib::Server::Handler handler) {
    server_.Post(R"(/bot[^/]+/sendMessage)", std::move(handler));
    server_.set_keep_alive_max_count(1);  // no idle connection for stop() to wait out
    port_ = server_.bind_to_any_port("127.0.0.1");
    EXPECT_GT(port_, 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    EXPECT_TRUE(WaitUntil([this] { return server_.is_running(); }, absl::Seconds(5)));
  }
  ~AnswerServer() {
    server_.stop();
    thread_.join();
  }
  // Options of a sender talking to this server.
  TelegramOptions Options() const {
    TelegramOptions o;
    o.api_base = "http://127.0.0.1:" + std::to_string(port_);
    o.token = kToken;
    return o;
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

// An answer no Bot API gives (megabytes) is cut off, not read into memory without bound; the
// request went out, so it is a doubt.
TEST(TelegramSenderAnswers, AnOversizedAnswerIsRefusedAndPossiblyDelivered) {
  AnswerServer server([&](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(8 << 20, ' ') + R"({"ok":true})", "application/json");
  });
  TelegramSender sender(server.Options());
  SendResult r = sender.Send({"0b5f2a52-6f5b-4c4e-9a53-1b2f7f0f6a11", "7", "4242", "hi"});
  EXPECT_EQ(r.kind, SendResult::Kind::kTransient);
  EXPECT_TRUE(r.possibly_delivered);
  EXPECT_TRUE(absl::StrContains(r.message, "answer larger than")) << r.message;
}

// Answers with JSON types Telegram does not use must not abort the process.
TEST(TelegramSenderAnswers, UnexpectedJsonTypesAreReadLeniently) {
  std::atomic<int> calls{0};
  AnswerServer server([&](const httplib::Request&, httplib::Response& res) {
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
  TelegramSender sender(server.Options());
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
}

// A server that answers the first request of a connection and closes the connection, without
// a word, on its second: the moment a kept-alive connection dies after a request went out.
class ClosesOnSecondRequest {
 public:
  ClosesOnSecondRequest() {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    EXPECT_EQ(bind(listener_, reinterpret_cast<sockaddr*>(&address), length), 0);
    EXPECT_EQ(listen(listener_, 8), 0);
    getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~ClosesOnSecondRequest() {
    shutdown(listener_, SHUT_RDWR);
    close(listener_);
    thread_.join();
  }
  int port() const { return port_; }
  int requests() const { return requests_.load(); }

 private:
  // Reads one request (headers and a Content-Length body); false when the peer went away.
  static bool ReadRequest(int fd) {
    std::string data;
    char buffer[4096];
    size_t need = std::string::npos;
    while (need == std::string::npos || data.size() < need) {
      ssize_t n = read(fd, buffer, sizeof(buffer));
      if (n <= 0) return false;
      data.append(buffer, static_cast<size_t>(n));
      size_t end = data.find("\r\n\r\n");
      size_t field = data.find("Content-Length: ");
      if (need == std::string::npos && end != std::string::npos && field != std::string::npos) {
        need = end + 4 + std::stoul(data.substr(field + 16));
      }
    }
    return true;
  }
  void Serve() {
    for (int connections = 0; connections < 4; ++connections) {  // bounded: the test needs 2
      int fd = accept(listener_, nullptr, nullptr);
      if (fd < 0) return;
      for (int on_this = 0; ReadRequest(fd); ++on_this) {
        ++requests_;
        if (on_this == 1) break;  // the second request of a connection: close, no answer
        const std::string answer =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
            "\r\n{\"ok\":true}";
        if (write(fd, answer.data(), answer.size()) < 0) break;
      }
      close(fd);
    }
  }

  int listener_ = -1;
  int port_ = 0;
  std::atomic<int> requests_{0};
  std::thread thread_;
};

TEST(TelegramSenderConnections, RequestOnAConnectionThatDiesUnansweredIsPossiblyDelivered) {
  ClosesOnSecondRequest server;
  TelegramOptions o;
  o.api_base = "http://127.0.0.1:" + std::to_string(server.port());
  o.token = kToken;
  o.retries = 2;
  o.retry_backoff = absl::Milliseconds(20);
  TelegramSender sender(o);
  Notification note{"0b5f2a52-6f5b-4c4e-9a53-1b2f7f0f6a11", "7", "4242", "hi"};
  ASSERT_TRUE(sender.Send(note).ok());
  SendResult r = sender.Send(note);  // goes out on the kept-alive connection, which then dies
  EXPECT_EQ(r.kind, SendResult::Kind::kTransient);
  EXPECT_TRUE(r.possibly_delivered) << r.message;
  EXPECT_EQ(server.requests(), 2) << "the request was sent again without anybody knowing";
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
