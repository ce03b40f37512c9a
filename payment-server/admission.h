// Where payment-server's hot calls wait at a concert's opening: a bounded FIFO queue in front of
// a fixed set of worker threads, one per database connection. A waiting call costs a queue entry,
// not a thread, so thousands of callers wait for their turn instead of being refused; only a full
// queue refuses. A call whose deadline passes while it waits is dropped before it touches the
// database.
//
//   AdmissionQueue queue({.workers = 8, .capacity = 4096}, registry);
//   absl::Status queued = queue.Submit(deadline, [](absl::Status admitted) {
//     if (!admitted.ok()) return Answer(admitted);  // DEADLINE_EXCEEDED: do no work
//     Answer(DoBlockingDatabaseWork());
//   });
//   if (!queued.ok()) Answer(queued, queue.RetryPushback());  // RESOURCE_EXHAUSTED: full
//
// Thread-safe. Work runs on the queue's own threads, so it may block (gRPC's callback threads
// must not). The destructor runs what is still queued, then joins the workers.
#ifndef CONCERT_PAYMENT_SERVER_ADMISSION_H_
#define CONCERT_PAYMENT_SERVER_ADMISSION_H_

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/metrics.h"

namespace concert::payment {

class AdmissionQueue {
 public:
  struct Options {
    // Threads running admitted work: DB_POOL_SIZE, so that an admitted call finds a connection
    // free and waits here, where its deadline is honoured, rather than in the pool.
    int workers = 8;
    // ADMISSION_QUEUE_SIZE: calls waiting at most. Sized for a spike: a refusal is a payer told
    // "no" while a wait of a second would have served them.
    int capacity = 4096;
    // ADMISSION_RETRY_PUSHBACK: the longest RetryPushback().
    absl::Duration max_retry_pushback = absl::Seconds(1);
  };

  // Metrics: payment_admission_queued (gauge), payment_admission_wait_seconds (histogram),
  // payment_admission_refused_total{reason} (queue_full, deadline; both exist from the start).
  AdmissionQueue(Options options, metrics::Registry& registry);
  ~AdmissionQueue();
  AdmissionQueue(const AdmissionQueue&) = delete;
  AdmissionQueue& operator=(const AdmissionQueue&) = delete;

  // Queues `work`, which a worker later calls with OK, or with DEADLINE_EXCEEDED when `deadline`
  // passed while it waited (the work must then only answer). RESOURCE_EXHAUSTED, and `work` is
  // never called, when `capacity` calls already wait.
  absl::Status Submit(absl::Time deadline, std::function<void(absl::Status admitted)> work);

  // What a refused call is asked to wait before it retries (grpc-retry-pushback-ms): the time a
  // full queue is expected to take to drain at the pace work ran lately (capacity x the recent
  // time per call / workers), at most max_retry_pushback, then drawn at random between half and
  // all of that, so that refused clients come back spread out, not together; at least 10 ms.
  absl::Duration RetryPushback() const;

 private:
  struct Entry {
    absl::Time queued_at;
    absl::Time deadline;
    std::function<void(absl::Status)> work;
  };
  void Work();
  // A moving average of how long one call's work took (nanoseconds); workers update it.
  std::atomic<int64_t> recent_work_ns_{1000000};

  const Options options_;
  metrics::Gauge& queued_gauge_;
  metrics::Histogram& wait_seconds_;
  metrics::Counter& refused_queue_full_;
  metrics::Counter& refused_deadline_;
  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<Entry> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace concert::payment

#endif  // CONCERT_PAYMENT_SERVER_ADMISSION_H_
