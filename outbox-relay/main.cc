// outbox-relay: reads its settings, serves health (gRPC) and metrics (HTTP), and runs the
// relay until SIGTERM. All logic lives in relay.{h,cc} and outbox.{h,cc}.
//
//   outbox-relay                          stream the outbox to Kafka (serve)
//   outbox-relay requeue --older-than=5m  stream outbox rows older than that again (operators,
//                                         after fixing why they were set aside)
#include <cstdio>
#include <cstdlib>

#include "absl/time/time.h"
#include "common/config.h"
#include "common/grpc_server.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/postgres.h"
#include "common/shutdown.h"
#include "outbox-relay/outbox.h"
#include "outbox-relay/relay.h"

namespace {

int Requeue(const std::string& database_url, absl::Duration older_than) {
  if (absl::Status s = concert::relay::MigrateSchema(database_url); !s.ok()) {
    concert::log::Error("requeue failed", {{"error", std::string(s.message())}});
    return 1;
  }
  absl::StatusOr<int64_t> rows = absl::InternalError("not connected");
  try {
    pqxx::connection conn(concert::WithConnectDefaults(database_url));
    rows = concert::relay::RequeueRows(conn, {.older_than = older_than});
  } catch (const std::exception& e) {
    rows = concert::StatusFromException(e);
  }
  if (!rows.ok()) {
    concert::log::Error("requeue failed", {{"error", std::string(rows.status().message())}});
    return 1;
  }
  concert::log::Info("requeued outbox rows; the relay streams them again",
                     {{"rows", *rows}, {"older_than", absl::FormatDuration(older_than)}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  concert::InstallStopHandler();
  concert::Settings s("outbox-relay", argc, argv);
  concert::relay::RelayOptions o;
  o.database_url = s.RequiredString("DATABASE_URL", "Postgres URL (role with REPLICATION)");
  o.kafka = concert::kafka::ReadCluster(s);
  o.payment_completed_topic = s.String("PAYMENT_COMPLETED_TOPIC", "payment-completed-topic",
                                       "topic for PaymentCompleted events");
  o.topic_partitions = static_cast<int>(
      s.Int("TOPIC_PARTITIONS", 3, 1, 10000, "partitions of PAYMENT_COMPLETED_TOPIC when created"));
  o.dlq_topic = s.String("DLQ_TOPIC", "payment-notification-dlq",
                         "dead-letter topic, created at start when missing");
  o.dlq_partitions =
      static_cast<int>(s.Int("DLQ_PARTITIONS", 1, 1, 10000, "partitions of DLQ_TOPIC when created"));
  o.unknown_event_topic = s.String(
      "UNKNOWN_EVENT_TOPIC", "",
      "topic for event types without one; empty: set aside (relay.set_aside_events), row kept in the outbox");
  o.slot = s.String("REPLICATION_SLOT", "concert_outbox_relay", "logical replication slot");
  o.publication = s.String("PUBLICATION", "concert_outbox", "publication on the outbox table");
  // At most half of Postgres' default wal_sender_timeout (60 s): a longer interval confirms
  // too late to keep the slot's WAL and the outbox small.
  o.status_interval =
      s.Duration("STATUS_INTERVAL", absl::Seconds(1), absl::Milliseconds(100), absl::Seconds(30),
                 "how often the confirmed WAL position is reported and rows deleted");
  o.cleanup_batch = static_cast<int>(
      s.Int("CLEANUP_BATCH", 5000, 1, 1000000, "outbox rows deleted per statement"));
  // librdkafka's message.timeout.ms: 0 would mean "never", and it takes an int32 of ms.
  o.kafka_message_timeout =
      s.Duration("KAFKA_MESSAGE_TIMEOUT", absl::Seconds(60), absl::Seconds(1), absl::Hours(1),
                 "a record unacknowledged this long fails and the stream restarts");
  o.kafka_stall_threshold = s.Duration(
      "KAFKA_STALL_THRESHOLD", absl::Seconds(10), absl::Seconds(1), absl::Hours(1),
      "events waiting longer than this for Kafka make health NOT_SERVING");
  o.backoff_initial =
      s.Duration("BACKOFF_INITIAL", absl::Milliseconds(200), absl::Milliseconds(10),
                 absl::Minutes(1), "first wait before reconnecting after an error");
  o.backoff_max = s.Duration("BACKOFF_MAX", absl::Seconds(10), absl::Milliseconds(100),
                             absl::Minutes(10), "longest wait between reconnects");
  o.standby_poll_interval =
      s.Duration("STANDBY_POLL_INTERVAL", absl::Seconds(1), absl::Milliseconds(100),
                 absl::Minutes(5), "how often a standby tries to take over the slot");
  o.slot_stats_interval =
      s.Duration("SLOT_STATS_INTERVAL", absl::Seconds(10), absl::Seconds(1), absl::Hours(1),
                 "how often the slot's lag, retained WAL and stranded outbox rows are measured");
  o.stranded_after =
      s.Duration("STRANDED_AFTER", absl::Minutes(5), absl::Seconds(1), absl::Hours(24 * 7),
                 "an outbox row left this long behind the stream is counted and logged");
  absl::Duration older_than =
      s.Duration("OLDER_THAN", absl::Minutes(1), absl::ZeroDuration(), absl::Hours(24 * 365),
                 "requeue: only outbox rows created at least this long ago");
  std::string grpc_address =
      s.ListenAddress("GRPC_ADDRESS", "127.0.0.1:50053", "gRPC health service address");
  std::string metrics_address =
      s.ListenAddress("METRICS_ADDRESS", "127.0.0.1:9102", "Prometheus /metrics address");
  std::string log_level = s.String("LOG_LEVEL", "info", "debug, info, warn or error");
  s.ExitIfInvalid();

  concert::log::Level level;
  if (!concert::log::ParseLevel(log_level, &level)) {
    std::fprintf(stderr, "outbox-relay: LOG_LEVEL: unknown level \"%s\"\n", log_level.c_str());
    return 2;
  }
  if (absl::Status valid = concert::relay::ValidateOptions(o); !valid.ok()) {
    std::fprintf(stderr, "outbox-relay: %s\n", std::string(valid.message()).c_str());
    return 2;
  }
  concert::log::Init("outbox-relay", level);

  const std::vector<std::string>& args = s.positional();
  std::string command = args.empty() ? "serve" : args[0];
  if (args.size() > 1 || (command != "serve" && command != "requeue")) {
    std::fprintf(stderr, "outbox-relay: unknown command '%s' (commands: serve, requeue)\n",
                 (args.size() > 1 ? args[1] : command).c_str());
    return 2;
  }
  if (command == "requeue") return Requeue(o.database_url, older_than);

  auto grpc = concert::StartGrpcServer(grpc_address, {});
  if (!grpc.ok()) {
    concert::log::Error("cannot start gRPC health", {{"error", std::string(grpc.status().message())}});
    return 1;
  }
  concert::metrics::HttpServer metrics(concert::metrics::Default());
  if (absl::Status st = metrics.Start(metrics_address); !st.ok()) {
    concert::log::Error("cannot serve metrics", {{"error", std::string(st.message())}});
    return 1;
  }
  concert::log::Info("started", {{"grpc", grpc_address}, {"metrics", metrics_address},
                                 {"slot", o.slot}, {"publication", o.publication}});

  grpc::Server& server = **grpc;
  concert::relay::Relay relay(o, concert::metrics::Default(),
                              [&server](bool serving) { concert::SetServing(server, serving); });
  relay.Run(concert::StopRequested());

  concert::SetServing(server, false);
  server.Shutdown(concert::Deadline(absl::Seconds(5)));
  metrics.Stop();
  concert::log::Info("stopped");
  return 0;
}
