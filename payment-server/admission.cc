#include "payment-server/admission.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/backoff.h"

namespace concert::payment {
namespace {

metrics::Counter& Refused(metrics::Registry& registry, const char* reason) {
  return registry.GetCounter("payment_admission_refused_total",
                             "calls refused before reaching the database, by reason",
                             {{"reason", reason}});
}

}  // namespace

AdmissionQueue::AdmissionQueue(Options options, metrics::Registry& registry)
    : options_(options),
      queued_gauge_(registry.GetGauge("payment_admission_queued",
                                      "calls waiting in the admission queue for a worker")),
      wait_seconds_(registry.GetHistogram(
          "payment_admission_wait_seconds",
          "how long admitted calls waited in the admission queue", metrics::LatencyBuckets())),
      refused_queue_full_(Refused(registry, "queue_full")),
      refused_deadline_(Refused(registry, "deadline")) {
  workers_.reserve(options_.workers);
  for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { Work(); });
}

AdmissionQueue::~AdmissionQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  ready_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

absl::Status AdmissionQueue::Submit(absl::Time deadline,
                                    std::function<void(absl::Status admitted)> work) {
  bool queued = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.size() < static_cast<size_t>(options_.capacity)) {
      queue_.push_back(Entry{absl::Now(), deadline, std::move(work)});
      queued_gauge_.Set(static_cast<double>(queue_.size()));
      queued = true;
    }
  }
  if (queued) {
    // Outside the lock: a worker woken while it is held would only block on it again.
    ready_.notify_one();
    return absl::OkStatus();
  }
  refused_queue_full_.Increment();
  return absl::ResourceExhaustedError(
      absl::StrCat("the admission queue is full (", options_.capacity,
                   " calls waiting for the database); retry after the pushback"));
}

void AdmissionQueue::Work() {
  while (true) {
    Entry entry;
    {
      std::unique_lock<std::mutex> lock(mu_);
      ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      // Stopping still drains the queue: every queued call gets its answer.
      if (queue_.empty()) return;
      entry = std::move(queue_.front());
      queue_.pop_front();
      queued_gauge_.Set(static_cast<double>(queue_.size()));
    }
    absl::Time now = absl::Now();
    wait_seconds_.Observe(absl::ToDoubleSeconds(now - entry.queued_at));
    if (now >= entry.deadline) {
      refused_deadline_.Increment();
      entry.work(absl::DeadlineExceededError(absl::StrCat(
          "the deadline passed after ", absl::FormatDuration(now - entry.queued_at),
          " waiting for the database; nothing was done")));
      continue;
    }
    entry.work(absl::OkStatus());
    // An average over about the last 16 calls; a lost update between workers is harmless.
    int64_t took = absl::ToInt64Nanoseconds(absl::Now() - now);
    int64_t recent = recent_work_ns_.load(std::memory_order_relaxed);
    recent_work_ns_.store(recent + (took - recent) / 16, std::memory_order_relaxed);
  }
}

absl::Duration AdmissionQueue::RetryPushback() const {
  absl::Duration drain = absl::Nanoseconds(recent_work_ns_.load(std::memory_order_relaxed)) *
                         options_.capacity / std::max(options_.workers, 1);
  absl::Duration longest = std::min(drain, options_.max_retry_pushback);
  return std::max(longest * (0.5 + UniformRandom() / 2), absl::Milliseconds(10));
}

}  // namespace concert::payment
