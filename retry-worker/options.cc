#include "retry-worker/options.h"

#include "absl/strings/str_cat.h"

namespace concert::retry {

Options ReadOptions(Settings& s) {
  Options o;
  o.database_url = s.RequiredString("DATABASE_URL", "Postgres URL holding schema retry");
  o.kafka = kafka::ReadCluster(s);
  o.group_id = s.String("KAFKA_GROUP_ID", o.group_id, "consumer group reading the DLQ");
  o.dlq_topic = s.String("DLQ_TOPIC", o.dlq_topic, "dead-letter topic the notifier writes");
  o.admin_token = s.String("ADMIN_TOKEN", "", "static bearer token of the admin gRPC API (local use)");
  o.auth = jwt::ReadVerifierOptions(s);
  o.admin_scope = s.String("ADMIN_SCOPE", o.admin_scope,
                           "scope or role a JWT needs for the admin gRPC API");
  if (o.admin_token.empty() && !o.auth.any_key()) {
    s.Fail("ADMIN_TOKEN", "missing; set it, or AUTH_JWKS_FILE, AUTH_JWKS_URL or AUTH_TOKEN_SECRET");
  }
  o.interval = s.Duration("RETRY_INTERVAL", o.interval, absl::Milliseconds(100), absl::Hours(1),
                          "how often due rows are re-published");
  o.max_attempts = static_cast<int>(
      s.Int("RETRY_MAX_ATTEMPTS", o.max_attempts, 1, 1000,
            "delivery attempts in total before parking as FAILED or UNCERTAIN"));
  o.backoff_base =
      s.Duration("RETRY_BACKOFF_BASE", o.backoff_base, absl::Milliseconds(100), absl::Hours(24),
                 "backoff after the first failed attempt, doubled per attempt");
  o.backoff_cap = s.Duration("RETRY_BACKOFF_CAP", o.backoff_cap, absl::Milliseconds(100),
                             absl::Hours(24 * 7), "longest backoff");
  if (o.backoff_base > o.backoff_cap) {
    s.Fail("RETRY_BACKOFF_BASE", absl::StrCat("must not exceed RETRY_BACKOFF_CAP (",
                                              absl::FormatDuration(o.backoff_cap), ")"));
  }
  o.backoff_jitter_percent = static_cast<int>(s.Int(
      "RETRY_BACKOFF_JITTER_PERCENT", o.backoff_jitter_percent, 0, 100,
      "share of the backoff that is random (100 = full jitter)"));
  o.batch = static_cast<int>(s.Int("RETRY_BATCH", o.batch, 1, 10000, "rows claimed per pass"));
  // Also librdkafka's message.timeout.ms (at least 1 s there); claimed rows stay locked
  // meanwhile, hence the small maximum.
  o.publish_timeout =
      s.Duration("RETRY_PUBLISH_TIMEOUT", o.publish_timeout, absl::Seconds(1), absl::Minutes(5),
                 "longest wait for Kafka's acknowledgement of a re-publish");
  o.grpc_address = s.ListenAddress("GRPC_ADDRESS", o.grpc_address, "admin gRPC API + health");
  o.tls = ReadGrpcTls(s);
  o.metrics_address = s.ListenAddress("METRICS_ADDRESS", o.metrics_address, "Prometheus /metrics");
  o.log_level = s.String("LOG_LEVEL", o.log_level, "debug, info, warn or error");
  return o;
}

}  // namespace concert::retry
