// The retry-worker's settings, one field per setting, read from the environment or flags through
// common Settings (so `retry-worker --help` lists them all with their defaults).
//
//   Settings settings("retry-worker", argc, argv);
//   retry::Options options = retry::ReadOptions(settings);
//   settings.ExitIfInvalid();
#ifndef CONCERT_RETRY_WORKER_OPTIONS_H_
#define CONCERT_RETRY_WORKER_OPTIONS_H_

#include <string>

#include "absl/time/time.h"
#include "common/config.h"
#include "common/grpc_server.h"
#include "common/jwt.h"
#include "common/kafka/cluster.h"

namespace concert::retry {

struct Options {
  // DATABASE_URL (required): the Postgres holding schema `retry`.
  std::string database_url;
  // KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, ...: the cluster of the DLQ consumer and
  // the re-publishing producer (kafka::ReadCluster).
  kafka::Cluster kafka;
  // KAFKA_GROUP_ID: the consumer group reading the DLQ.
  std::string group_id = "retry-group";
  // DLQ_TOPIC: where the notifier dead-letters what it could not deliver.
  std::string dlq_topic = "payment-notification-dlq";
  // ADMIN_TOKEN: a static bearer token the admin API accepts (local use); empty: none.
  std::string admin_token;
  // AUTH_*: JWTs the admin API accepts when they carry ADMIN_SCOPE (see common/jwt.h). At least
  // one of ADMIN_TOKEN and a JWT key is required.
  jwt::VerifierOptions auth;
  std::string admin_scope = "concert.admin";
  // RETRY_INTERVAL: how often the scheduler looks for due rows.
  absl::Duration interval = absl::Seconds(30);
  // RETRY_MAX_ATTEMPTS: delivery attempts in total (the original one included) before a
  // message is parked as FAILED (UNCERTAIN when a copy may have been delivered).
  int max_attempts = 3;
  // RETRY_BACKOFF_BASE / RETRY_BACKOFF_CAP: the wait before re-publishing after failed attempt N
  // is at most min(cap, base * 2^(N-1)).
  absl::Duration backoff_base = absl::Seconds(30);
  absl::Duration backoff_cap = absl::Minutes(10);
  // RETRY_BACKOFF_JITTER_PERCENT: how much of that wait is randomised (100 = "full jitter",
  // uniform in [0, wait]; 0 = exactly the wait). Jitter spreads a burst of failures apart.
  int backoff_jitter_percent = 100;
  // RETRY_BATCH: rows claimed (and locked) per scheduler pass.
  int batch = 100;
  // RETRY_PUBLISH_TIMEOUT: how long a re-publish may wait for Kafka's acknowledgement. The
  // claimed rows stay locked meanwhile, so this bounds how long a lock is held.
  absl::Duration publish_timeout = absl::Seconds(10);
  // GRPC_ADDRESS: admin API, reflection and health. Port 0 picks a free port.
  std::string grpc_address = "127.0.0.1:50052";
  // GRPC_TLS_CERT_FILE, GRPC_TLS_KEY_FILE, GRPC_TLS_CLIENT_CA_FILE, GRPC_HEALTH_ADDRESS: TLS or
  // mTLS on GRPC_ADDRESS, and health alone in plaintext for probes (see common/grpc_server.h).
  GrpcTls tls;
  // METRICS_ADDRESS: Prometheus /metrics. Port 0 picks a free port.
  std::string metrics_address = "127.0.0.1:9104";
  // LOG_LEVEL: debug, info, warn or error.
  std::string log_level = "info";
};

// Reads every setting (unconditionally, so --help lists them all); problems are reported by
// settings.Validate() / ExitIfInvalid().
Options ReadOptions(Settings& settings);

}  // namespace concert::retry

#endif  // CONCERT_RETRY_WORKER_OPTIONS_H_
