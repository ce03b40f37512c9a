// A small Prometheus client (Debian has none for C++): counters, gauges and histograms with
// labels, rendered in the text exposition format and served over HTTP at /metrics.
//
//   auto& sent = metrics::Default().GetCounter("notifier_sent_total", "Messages sent");
//   sent.Increment();
//   metrics::HttpServer server(metrics::Default());
//   RETURN_IF_ERROR(server.Start("127.0.0.1:9103"));
//
// Get* registers on first use and returns the same object for the same name and labels;
// references stay valid for the registry's lifetime. Updating a metric is lock-free.
#ifndef CONCERT_COMMON_METRICS_H_
#define CONCERT_COMMON_METRICS_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace httplib {
class Server;
}

namespace concert::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void Increment(double by = 1) { value_.fetch_add(by, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double by) { value_.fetch_add(by, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);
  // Cumulative counts per bucket (the last is +Inf), the sum and the count.
  std::vector<uint64_t> CumulativeCounts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  const std::vector<double>& upper_bounds() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_.size() + 1 (+Inf)
  std::atomic<double> sum_{0};
};

// Seconds, from 1 ms to 10 s: request and send latencies.
std::vector<double> LatencyBuckets();

class Registry {
 public:
  Counter& GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& GetGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram& GetHistogram(const std::string& name, const std::string& help,
                          std::vector<double> upper_bounds, const Labels& labels = {});
  // `refresh` runs before every Render(): for gauges that mirror other state (pool sizes, lag).
  void OnCollect(std::function<void()> refresh);
  // The text exposition format, version 0.0.4.
  std::string Render() const;

 private:
  struct Family {
    std::string type, help;
    std::map<std::string, std::unique_ptr<Counter>> counters;  // by rendered label set
    std::map<std::string, std::unique_ptr<Gauge>> gauges;
    std::map<std::string, std::unique_ptr<Histogram>> histograms;
  };
  Family& FamilyFor(const std::string& name, const std::string& type, const std::string& help);

  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
  std::vector<std::function<void()>> refreshers_;
};

// The process-wide registry the services use.
Registry& Default();

// Serves GET /metrics from a background thread.
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
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace concert::metrics

#endif  // CONCERT_COMMON_METRICS_H_
