#include "retry-worker/worker.h"

#include "absl/strings/str_cat.h"
#include "common/grpc_server.h"
#include "common/kafka/admin.h"
#include "common/kafka/cluster.h"
#include "common/log.h"
#include "common/status.h"
#include "retry-worker/schema.h"

namespace concert::retry {

RetryWorker::RetryWorker(Options options) : options_(std::move(options)) {}

RetryWorker::~RetryWorker() { Stop(); }

absl::Status RetryWorker::Start() {
  if (!serving()) RETURN_IF_ERROR(Serve());
  return Connect();
}

absl::Status RetryWorker::Serve() {
  // Scheduler (1, holding its rows during a pass) + consumer (1) + admin calls + metrics.
  // The pool connects on first use, so Postgres may still be away.
  pool_ = std::make_unique<PgPool>(PgPool::Options{.url = options_.database_url, .size = 6});
  store_ = std::make_unique<FailedMessageStore>(
      *pool_, FailedMessageStore::Options{
                  .max_attempts = options_.max_attempts,
                  .backoff = {.base = options_.backoff_base,
                              .cap = options_.backoff_cap,
                              .jitter_percent = options_.backoff_jitter_percent}});

  std::map<std::string, metrics::Gauge*> gauges;
  for (const char* s : kStatuses) {
    gauges[s] = &registry_.GetGauge("retry_messages", "failed_messages rows by status",
                                    {{"status", s}});
  }
  metrics::Gauge& oldest = registry_.GetGauge(
      "retry_oldest_pending_age_seconds", "Age of the oldest PENDING row (0 when none)");
  metrics::Gauge& db_up = registry_.GetGauge("retry_database_up", "1 when Postgres answered");
  // The counters exist from here at 0, even while Connect() cannot reach Postgres or Kafka:
  // increase() never sees the first event of a series that appears with it.
  DlqConsumer::Metrics{registry_};
  Scheduler::Metrics{registry_};
  registry_.OnCollect([this, gauges, &oldest, &db_up] {
    absl::StatusOr<StatusCounts> counts = store_->Counts();
    db_up.Set(counts.ok() ? 1 : 0);
    if (!counts.ok()) return;
    for (const auto& [status, gauge] : gauges) gauge->Set(counts->by_status[status]);
    oldest.Set(counts->oldest_pending_age_seconds);
  });

  if (options_.auth.any_key()) {
    verifier_ = std::make_unique<jwt::Verifier>(options_.auth);
    RETURN_IF_ERROR(verifier_->Start());
  }
  admin_ = std::make_unique<AdminService>(*store_, options_.admin_token, verifier_.get(),
                                          options_.admin_scope);
  ASSIGN_OR_RETURN(std::unique_ptr<GrpcEndpoint> endpoint,
                   GrpcEndpoint::Start(options_.grpc_address, {admin_.get()}, options_.tls));
  auto metrics_server = std::make_unique<metrics::HttpServer>(registry_);
  RETURN_IF_ERROR(metrics_server->Start(options_.metrics_address));  // `endpoint` shuts down
  metrics_server_ = std::move(metrics_server);
  endpoint_ = std::move(endpoint);
  ReportHealth();  // NOT_SERVING until connected
  return absl::OkStatus();
}

absl::Status RetryWorker::Connect() {
  RETURN_IF_ERROR(MigrateSchema(options_.database_url));
  RETURN_IF_ERROR(kafka::EnsureTopics(options_.kafka, {{options_.dlq_topic, 1}}));

  kafka::Config consumer_config =
      kafka::ConsumerConfig(options_.kafka, options_.group_id, "retry-worker");
  ASSIGN_OR_RETURN(consumer_,
                   DlqConsumer::Create(consumer_config, options_.dlq_topic, *store_, registry_,
                                       [this](bool storing) {
                                         consumer_ok_ = storing;
                                         ReportHealth();
                                       }));
  ASSIGN_OR_RETURN(
      scheduler_,
      Scheduler::Create({.kafka = options_.kafka,
                         .interval = options_.interval,
                         .batch = options_.batch,
                         .publish_timeout = options_.publish_timeout,
                         .on_pass =
                             [this](const absl::Status& s) {
                               // Postgres lost: probes see it. Kafka trouble shows per row in
                               // retry_publish_errors_total and leaves the pass OK.
                               scheduler_ok_ = s.ok();
                               ReportHealth();
                             }},
                        *store_, registry_));

  started_ = true;
  ReportHealth();
  consumer_thread_ = std::thread([this] { consumer_->Run(stop_); });
  scheduler_thread_ = std::thread([this] { scheduler_->Run(stop_); });
  log::Info("retry-worker started", {{"grpc_port", endpoint_->port()},
                                     {"tls", options_.tls.enabled()},
                                     {"client_certificates", !options_.tls.client_ca.empty()},
                                     {"health_port", endpoint_->health_port()},
                                     {"metrics_port", metrics_server_->port()},
                                     {"dlq_topic", options_.dlq_topic},
                                     {"group_id", options_.group_id}});
  return absl::OkStatus();
}

void RetryWorker::ReportHealth() {
  std::lock_guard lock(health_mu_);
  if (endpoint_) endpoint_->SetServing(started_ && consumer_ok_ && scheduler_ok_);
}

void RetryWorker::Stop() {
  if (!serving()) return;
  bool was_started = started_.exchange(false);
  ReportHealth();
  stop_.Notify();
  if (was_started) {
    scheduler_thread_.join();  // the pass in flight finishes and records its acknowledgements
    consumer_thread_.join();
  }
  consumer_.reset();  // leaves the group
  endpoint_->Shutdown(absl::Seconds(5));
  metrics_server_->Stop();
  scheduler_.reset();
  endpoint_.reset();
  log::Info("retry-worker stopped");
}

}  // namespace concert::retry
