// Prometheus metrics for the services, on prometheus-cpp (Debian's prometheus-cpp-dev): counters,
// gauges and histograms with labels, served at /metrics by prometheus-cpp's civetweb exposer.
//
//   auto& sent = metrics::Default().GetCounter("notifier_sent_total", "Messages sent");
//   sent.Increment();
//   metrics::HttpServer server(metrics::Default());
//   RETURN_IF_ERROR(server.Start("127.0.0.1:9103"));
//
// Get* registers on first use and returns the same object for the same name and labels (the
// help text of the first registration is kept); references stay valid for the registry's
// lifetime. Names and label names must be valid Prometheus names (prometheus-cpp throws
// otherwise: a programming error). Updating a metric is lock-free; everything is thread-safe.
#ifndef CONCERT_COMMON_METRICS_H_
#define CONCERT_COMMON_METRICS_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/labels.h>

#include "absl/status/status.h"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace concert::metrics {

// Label name -> value. Rendered in name order, whatever the order they are given in.
using Labels = prometheus::Labels;
using Counter = prometheus::Counter;
using Gauge = prometheus::Gauge;
using Histogram = prometheus::Histogram;

// Seconds, from 1 ms to 10 s: request and send latencies.
std::vector<double> LatencyBuckets();

class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  Counter& GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& GetGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  // `upper_bounds` ascending; +Inf is implied.
  Histogram& GetHistogram(const std::string& name, const std::string& help,
                          std::vector<double> upper_bounds, const Labels& labels = {});
  // `refresh` runs before every collection (a scrape or Render()): for gauges that mirror other
  // state (pool sizes, lag). It runs on the scraping thread.
  void OnCollect(std::function<void()> refresh);
  // The text exposition format, version 0.0.4, as a scrape would see it.
  std::string Render() const;

 private:
  friend class HttpServer;
  class Collector;

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<Collector> collector_;  // what an HttpServer exposes
};

// The process-wide registry the services use.
Registry& Default();

// Serves GET /metrics from background threads. A slow or stalled client holds one of a few
// threads for at most a couple of seconds (civetweb's request_timeout_ms), so a scrape answers
// even while slow clients keep connecting.
class HttpServer {
 public:
  explicit HttpServer(Registry& registry);
  ~HttpServer();
  // "host:port"; port 0 picks a free one (see port()).
  absl::Status Start(const std::string& address);
  int port() const { return port_; }
  void Stop();

 private:
  Registry& registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace concert::metrics

#endif  // CONCERT_COMMON_METRICS_H_
