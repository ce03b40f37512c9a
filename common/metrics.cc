#include "common/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <exception>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace concert::metrics {
namespace {

// civetweb worker threads: each serves one connection at a time. With kRequestTimeout, N slow
// clients delay a scrape by at most about N / kServerThreads * kRequestTimeout.
constexpr int kServerThreads = 8;
// How long a client may take to send its whole request header (civetweb measures it from the
// connection's start, so trickling bytes does not extend it). Prometheus sends the request at
// once; two seconds is plenty on any network a scraper sits on.
constexpr int kRequestTimeoutMs = 2000;

}  // namespace

// What the exposer and Render() collect: runs the OnCollect refreshers, then the registry.
class Registry::Collector : public prometheus::Collectable {
 public:
  explicit Collector(std::shared_ptr<prometheus::Registry> registry)
      : registry_(std::move(registry)) {}

  void Add(std::function<void()> refresh) {
    std::lock_guard lock(mu_);
    refreshers_.push_back(std::move(refresh));
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<std::function<void()>> refreshers;
    {
      std::lock_guard lock(mu_);
      refreshers = refreshers_;
    }
    for (const auto& refresh : refreshers) refresh();
    return registry_->Collect();
  }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  mutable std::mutex mu_;
  std::vector<std::function<void()>> refreshers_;
};

std::vector<double> LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

Registry::Registry()
    : registry_(std::make_shared<prometheus::Registry>()),
      collector_(std::make_shared<Collector>(registry_)) {}

Registry::~Registry() = default;

Counter& Registry::GetCounter(const std::string& name, const std::string& help,
                              const Labels& labels) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(*registry_).Add(labels);
}

Gauge& Registry::GetGauge(const std::string& name, const std::string& help, const Labels& labels) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(*registry_).Add(labels);
}

Histogram& Registry::GetHistogram(const std::string& name, const std::string& help,
                                  std::vector<double> upper_bounds, const Labels& labels) {
  return prometheus::BuildHistogram()
      .Name(name)
      .Help(help)
      .Register(*registry_)
      .Add(labels, Histogram::BucketBoundaries(std::move(upper_bounds)));
}

void Registry::OnCollect(std::function<void()> refresh) { collector_->Add(std::move(refresh)); }

std::string Registry::Render() const {
  return prometheus::TextSerializer().Serialize(collector_->Collect());
}

Registry& Default() {
  static Registry* registry = new Registry();
  return *registry;
}

HttpServer::HttpServer(Registry& registry) : registry_(registry) {}

HttpServer::~HttpServer() { Stop(); }

absl::Status HttpServer::Start(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(std::vector<std::string>{
        "listening_ports", address,
        "num_threads", absl::StrCat(kServerThreads),
        "request_timeout_ms", absl::StrCat(kRequestTimeoutMs)});
  } catch (const std::exception& e) {
    // civetweb throws when it cannot parse or bind the address.
    return absl::UnavailableError(
        absl::StrCat("cannot listen for metrics on ", address, ": ", e.what()));
  }
  exposer_->RegisterCollectable(registry_.collector_);
  std::vector<int> ports = exposer_->GetListeningPorts();
  port_ = ports.empty() ? 0 : ports.front();
  return absl::OkStatus();
}

void HttpServer::Stop() { exposer_.reset(); }

}  // namespace concert::metrics
