// /metrics over real HTTP on loopback: what a Prometheus scraper sees, also while other clients
// misbehave.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/metrics.h"

namespace concert::metrics {
namespace {

using ::testing::HasSubstr;

// Prometheus' default scrape_timeout: a scrape slower than this is a failed scrape.
constexpr int kScrapeTimeoutSeconds = 10;

int ConnectToLoopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

httplib::Result Scrape(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(kScrapeTimeoutSeconds);
  client.set_read_timeout(kScrapeTimeoutSeconds);
  client.set_write_timeout(kScrapeTimeoutSeconds);
  return client.Get("/metrics");
}

TEST(MetricsHttpServerTest, ServesMetricsOverHttp) {
  Registry r;
  r.GetCounter("hits_total", "Hits").Increment(7);
  HttpServer server(r);
  ASSERT_TRUE(server.Start("127.0.0.1:0").ok());
  ASSERT_GT(server.port(), 0);
  httplib::Result res = Scrape(server.port());
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->body, HasSubstr("# HELP hits_total Hits\n"));
  EXPECT_THAT(res->body, HasSubstr("hits_total 7\n"));
  server.Stop();
}

TEST(MetricsHttpServerTest, AnAddressInUseIsAnError) {
  Registry r;
  HttpServer first(r);
  ASSERT_TRUE(first.Start("127.0.0.1:0").ok());
  HttpServer second(r);
  absl::Status status = second.Start(absl::StrCat("127.0.0.1:", first.port()));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
}

// Slow clients (a stuck sidecar, a port scanner, a slowloris) each open a connection and send
// a header line every 2 s, never finishing their request. A scrape must still be answered.
TEST(MetricsHttpServerTest, SlowClientsDoNotStarveAScrape) {
  constexpr int kSlowClients = 16;
  Registry r;
  r.GetCounter("hits_total", "Hits").Increment(7);
  HttpServer server(r);
  ASSERT_TRUE(server.Start("127.0.0.1:0").ok());

  std::vector<int> slow;
  for (int i = 0; i < kSlowClients; ++i) {
    int fd = ConnectToLoopback(server.port());
    ASSERT_GE(fd, 0);
    slow.push_back(fd);
    const std::string start = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    send(fd, start.data(), start.size(), MSG_NOSIGNAL);
  }
  absl::Notification scraped;
  std::thread trickle([&] {
    // At most 30 rounds (60 s), far beyond the scrape's own bound.
    for (int round = 0; round < 30; ++round) {
      if (scraped.WaitForNotificationWithTimeout(absl::Seconds(2))) return;
      for (int fd : slow) send(fd, "X-Slow: 1\r\n", 11, MSG_NOSIGNAL);
    }
  });

  absl::Time start = absl::Now();
  httplib::Result res = Scrape(server.port());
  absl::Duration took = absl::Now() - start;
  scraped.Notify();
  trickle.join();
  for (int fd : slow) close(fd);

  ASSERT_TRUE(res) << "no answer to a scrape within " << kScrapeTimeoutSeconds << " s while "
                   << kSlowClients
                   << " clients trickled headers: " << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->body, HasSubstr("hits_total 7\n"));
  std::cout << "scrape answered after " << took << " with " << kSlowClients << " slow clients\n";
}

}  // namespace
}  // namespace concert::metrics
