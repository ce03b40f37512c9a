#include "retry-worker/worker.h"

#include "absl/strings/str_cat.h"
#include "common/grpc_server.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/status.h"
#include "retry-worker/schema.h"

namespace concert::retry {

RetryWorker::RetryWorker(Options options) : options_(std::move(options)) {}

RetryWorker::~RetryWorker() { Stop(); }

absl::Status RetryWorker::Start() {
  RETURN_IF_ERROR(MigrateSchema(options_.database_url));
  RETURN_IF_ERROR(kafka::EnsureTopics(options_.kafka_bootstrap_servers, {{options_.dlq_topic, 1}}));

  // Scheduler (1, holding its rows during a pass) + consumer (1) + admin calls + metrics.
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
  registry_.OnCollect([this, gauges, &oldest, &db_up] {
    absl::StatusOr<StatusCounts> counts = store_->Counts();
    db_up.Set(counts.ok() ? 1 : 0);
    if (!counts.ok()) return;
    for (const auto& [status, gauge] : gauges) gauge->Set(counts->by_status[status]);
    oldest.Set(counts->oldest_pending_age_seconds);
  });

  kafka::Config consumer_config = kafka::ConsumerConfig(
      options_.kafka_bootstrap_servers, options_.group_id, "retry-worker");
  ASSIGN_OR_RETURN(consumer_,
                   DlqConsumer::Create(consumer_config, options_.dlq_topic, *store_, registry_,
                                       [this](bool storing) {
                                         consumer_ok_ = storing;
                                         ReportHealth();
                                       }));
  ASSIGN_OR_RETURN(
      scheduler_,
      Scheduler::Create({.bootstrap_servers = options_.kafka_bootstrap_servers,
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

  admin_ = std::make_unique<AdminService>(*store_, options_.admin_token);
  ASSIGN_OR_RETURN(server_, StartGrpcServer(options_.grpc_address, {admin_.get()}, &grpc_port_,
                                            nullptr, options_.tls));
  auto stop_servers = [this] {
    for (auto* server : {&server_, &health_server_}) {
      if (*server != nullptr) (*server)->Shutdown(Deadline(absl::Seconds(1)));
      server->reset();
    }
  };
  if (!options_.tls.health_address.empty()) {
    absl::StatusOr<std::unique_ptr<grpc::Server>> health =
        StartGrpcServer(options_.tls.health_address, {}, &health_port_);
    if (!health.ok()) {
      stop_servers();
      return health.status();
    }
    health_server_ = std::move(*health);
  }
  metrics_server_ = std::make_unique<metrics::HttpServer>(registry_);
  if (absl::Status s = metrics_server_->Start(options_.metrics_address); !s.ok()) {
    stop_servers();
    return s;
  }

  started_ = true;
  ReportHealth();
  consumer_thread_ = std::thread([this] { consumer_->Run(stop_); });
  scheduler_thread_ = std::thread([this] { scheduler_->Run(stop_); });
  log::Info("retry-worker started", {{"grpc_port", grpc_port_},
                                     {"tls", options_.tls.enabled()},
                                     {"client_certificates", !options_.tls.client_ca.empty()},
                                     {"health_port", health_port_},
                                     {"metrics_port", metrics_server_->port()},
                                     {"dlq_topic", options_.dlq_topic},
                                     {"group_id", options_.group_id}});
  return absl::OkStatus();
}

void RetryWorker::ReportHealth() {
  std::lock_guard lock(health_mu_);
  bool serving = started_ && consumer_ok_ && scheduler_ok_;
  if (server_) SetServing(*server_, serving);
  if (health_server_) SetServing(*health_server_, serving);
}

void RetryWorker::Stop() {
  if (!started_) return;
  started_ = false;
  ReportHealth();
  stop_.Notify();
  scheduler_thread_.join();  // the pass in flight finishes and records its acknowledgements
  consumer_thread_.join();
  consumer_.reset();  // leaves the group
  server_->Shutdown(Deadline(absl::Seconds(5)));
  if (health_server_) health_server_->Shutdown(Deadline(absl::Seconds(1)));
  metrics_server_->Stop();
  scheduler_.reset();
  log::Info("retry-worker stopped");
}

}  // namespace concert::retry
