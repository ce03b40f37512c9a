// HttpClient against a real HTTP server on loopback: what each kind of answer becomes.
#include "common/http_client.h"

#include <httplib.h>

#include <atomic>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/testing/environment.h"
#include "gtest/gtest.h"

namespace concert {
namespace {

using Outcome = HttpResponse::Outcome;

class HttpClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_.Get("/hello", [](const httplib::Request&, httplib::Response& res) {
      res.status = 418;
      res.set_content("teapot", "text/plain");
    });
    server_.Post("/echo", [this](const httplib::Request& req, httplib::Response& res) {
      ++posts_;
      res.set_content(req.get_header_value("X-Test") + ":" + req.body, "text/plain");
    });
    server_.Get("/big", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(std::string(64 << 10, 'x'), "text/plain");
    });
    server_.Get("/slow", [](const httplib::Request&, httplib::Response& res) {
      absl::SleepFor(absl::Seconds(2));
      res.set_content("late", "text/plain");
    });
    server_.set_keep_alive_max_count(1);  // no idle connection for stop() to wait out
    port_ = server_.bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    ASSERT_TRUE(testing::WaitUntil([this] { return server_.is_running(); }, absl::Seconds(5)));
  }
  void TearDown() override {
    server_.stop();
    thread_.join();
  }
  std::string Url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }

  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::atomic<int> posts_{0};
  HttpClient http_;
};

TEST_F(HttpClientTest, AnyStatusIsAnAnswerWithItsBody) {
  HttpResponse r = http_.Perform({.url = Url("/hello")});
  ASSERT_EQ(r.outcome, Outcome::kAnswered) << r.error;
  EXPECT_EQ(r.status, 418);
  EXPECT_EQ(r.body, "teapot");
  EXPECT_TRUE(r.request_sent);
}

TEST_F(HttpClientTest, PostsTheBodyWithTheHeaders) {
  HttpResponse r =
      http_.Perform({.url = Url("/echo"), .body = "payload", .headers = {"X-Test: yes"}});
  ASSERT_TRUE(r.answered()) << r.error;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "yes:payload");
}

TEST_F(HttpClientTest, AnAnswerOverTheCapIsRefused) {
  HttpResponse r = http_.Perform({.url = Url("/big"), .max_answer_bytes = 1000});
  EXPECT_EQ(r.outcome, Outcome::kTooLarge);
  EXPECT_TRUE(r.request_sent);
  EXPECT_EQ(r.error, "answer larger than 1000 bytes");
  EXPECT_TRUE(http_.Perform({.url = Url("/big"), .max_answer_bytes = 64 << 10}).answered());
}

TEST_F(HttpClientTest, BeforeSendSayingNoSendsNothing) {
  int asked = 0;
  HttpResponse r = http_.Perform({.url = Url("/echo"), .body = "x", .before_send = [&] {
                                    ++asked;
                                    return false;
                                  }});
  EXPECT_EQ(r.outcome, Outcome::kNotSent);
  EXPECT_FALSE(r.request_sent);
  EXPECT_EQ(asked, 1);
  EXPECT_EQ(posts_.load(), 0);
}

TEST_F(HttpClientTest, ATimeoutAfterTheRequestWentOutSaysSo) {
  HttpResponse r = http_.Perform({.url = Url("/slow"), .timeout = absl::Milliseconds(200)});
  EXPECT_EQ(r.outcome, Outcome::kTimeout);
  EXPECT_TRUE(r.request_sent);
}

TEST_F(HttpClientTest, AStopEndsTheCallAtOnce) {
  absl::Notification stop;
  std::thread stopper([&] {
    absl::SleepFor(absl::Milliseconds(200));
    stop.Notify();
  });
  absl::Time start = absl::Now();
  HttpResponse r = http_.Perform({.url = Url("/slow"), .stop = &stop});
  stopper.join();
  EXPECT_EQ(r.outcome, Outcome::kStopped);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1500));
}

TEST_F(HttpClientTest, HttpsOnlyRefusesPlainHttp) {
  HttpResponse r = http_.Perform({.url = Url("/hello"), .https_only = true});
  EXPECT_EQ(r.outcome, Outcome::kConnection);
  EXPECT_FALSE(r.request_sent);
}

TEST(HttpClient, NobodyListeningIsAConnectionErrorBeforeAnythingWasSent) {
  HttpClient http;
  HttpResponse r = http.Perform(
      {.url = "http://127.0.0.1:" + std::to_string(testing::FreePort()) + "/", .body = "x"});
  EXPECT_EQ(r.outcome, Outcome::kConnection);
  EXPECT_FALSE(r.request_sent);
  EXPECT_FALSE(r.error.empty());
}

}  // namespace
}  // namespace concert
