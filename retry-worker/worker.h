// The whole retry-worker wired together: schema migration, the DLQ consumer thread, the
// scheduler thread, the admin gRPC server (with reflection and health) and /metrics. main()
// is Start() (again, with backoff, while it fails), wait for SIGTERM, Stop(); tests run one or
// two of these in-process.
//
//   RetryWorker worker(options);
//   RETURN_IF_ERROR(worker.Start());
//   StopRequested().WaitForNotification();
//   worker.Stop();  // health NOT_SERVING, finishes the pass in flight, leaves the group
//
// Start() and Stop() from one thread. Each worker has its own metrics registry.
#ifndef CONCERT_RETRY_WORKER_WORKER_H_
#define CONCERT_RETRY_WORKER_WORKER_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "common/metrics.h"
#include "common/postgres.h"
#include "retry-worker/admin_service.h"
#include "retry-worker/dlq_consumer.h"
#include "retry-worker/options.h"
#include "retry-worker/scheduler.h"
#include "retry-worker/store.h"

namespace concert::retry {

class RetryWorker {
 public:
  explicit RetryWorker(Options options);
  ~RetryWorker();  // Stop()
  RetryWorker(const RetryWorker&) = delete;
  RetryWorker& operator=(const RetryWorker&) = delete;

  // Serves the admin API, health and metrics (once), then applies the schema, creates the DLQ
  // topic if missing and starts consuming and re-publishing. Fails when an address cannot be
  // bound (serving() false) or Postgres or Kafka cannot be used (serving() true: health says
  // NOT_SERVING meanwhile; call Start() again to retry).
  absl::Status Start();
  void Stop();
  bool serving() const { return endpoint_ != nullptr; }

  int grpc_port() const { return endpoint_ ? endpoint_->port() : 0; }
  int health_port() const { return endpoint_ ? endpoint_->health_port() : 0; }  // 0: none
  int metrics_port() const { return metrics_server_ ? metrics_server_->port() : 0; }
  metrics::Registry& registry() { return registry_; }
  FailedMessageStore& store() { return *store_; }

 private:
  // Readiness: SERVING while started and both the DLQ consumer and the scheduler can reach
  // Postgres (each reports on its own thread).
  void ReportHealth();
  absl::Status Serve();
  absl::Status Connect();

  Options options_;
  metrics::Registry registry_;
  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<FailedMessageStore> store_;
  std::unique_ptr<jwt::Verifier> verifier_;  // null without AUTH_* keys; outlives admin_
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<DlqConsumer> consumer_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<GrpcEndpoint> endpoint_;
  std::unique_ptr<metrics::HttpServer> metrics_server_;
  absl::Notification stop_;
  std::thread consumer_thread_;
  std::thread scheduler_thread_;
  std::atomic<bool> started_{false};
  std::atomic<bool> consumer_ok_{true};
  std::atomic<bool> scheduler_ok_{true};
  std::mutex health_mu_;  // orders SetServing calls, so the last report wins
};

}  // namespace concert::retry

#endif  // CONCERT_RETRY_WORKER_WORKER_H_
