#include "outbox-relay/relay_metrics.h"

#include <vector>

#include "common/log.h"
#include "outbox-relay/outbox.h"

namespace concert::relay {
namespace {

std::vector<double> AgeBuckets() {
  std::vector<double> b = metrics::LatencyBuckets();
  for (double extra : {30.0, 60.0, 300.0, 1800.0}) {
    if (b.empty() || b.back() < extra) b.push_back(extra);
  }
  return b;
}

}  // namespace

RelayMetrics::RelayMetrics(metrics::Registry& r)
    : registry(r),
      events(r.GetCounter("relay_events_total", "Outbox events acknowledged by Kafka")),
      delivery_errors(r.GetCounter("relay_delivery_errors_total",
                                   "Kafka deliveries that failed (each restarts the stream)")),
      deleted(r.GetCounter("relay_outbox_rows_deleted_total",
                           "Outbox rows deleted after Kafka acknowledged them")),
      restarts_postgres(r.GetCounter("relay_stream_restarts_total",
                                     "Streaming sessions ended by an error",
                                     {{"cause", "postgres"}})),
      restarts_kafka(r.GetCounter("relay_stream_restarts_total",
                                  "Streaming sessions ended by an error", {{"cause", "kafka"}})),
      confirmed_lsn(r.GetGauge("relay_confirmed_lsn",
                               "WAL position last confirmed to Postgres (bytes)")),
      server_lsn(r.GetGauge("relay_server_lsn", "Server's WAL end as last reported (bytes)")),
      bytes_behind(r.GetGauge("relay_bytes_behind",
                              "Server's current WAL position minus the slot's confirmed "
                              "position (bytes), as the server reports them")),
      retained_wal(r.GetGauge("relay_slot_retained_wal_bytes",
                              "WAL the slot keeps on the server (current LSN - restart_lsn)")),
      pending(r.GetGauge("relay_pending_events", "Events sent and not yet acknowledged")),
      active(r.GetGauge("relay_active", "1 while this relay holds the slot and streams")),
      postgres_up(r.GetGauge("relay_postgres_up", "1 while the replication stream is open")),
      kafka_up(r.GetGauge("relay_kafka_up", "0 while Kafka is unreachable or stalled")),
      event_age(r.GetHistogram("relay_event_age_seconds",
                               "Commit time to send time of each event", AgeBuckets())),
      commit_to_ack(r.GetHistogram("relay_commit_to_ack_seconds",
                                   "Commit time to Kafka acknowledgement of each event",
                                   AgeBuckets())),
      stranded_rows(r.GetGauge("relay_outbox_stranded_rows",
                               "Outbox rows still there long after the stream passed them")),
      oldest_stranded(r.GetGauge("relay_outbox_oldest_stranded_age_seconds",
                                 "Age of the oldest stranded outbox row (0 when none)")),
      oldest_waiting(r.GetGauge("relay_outbox_oldest_age_seconds",
                                "Age of the oldest outbox row waiting to be relayed, "
                                "set-aside rows not counted (0 when none waits)")),
      stale_dropped(r.GetCounter(
          "relay_stale_events_dropped_total",
          "Events received on a replication connection that was lost while the relay was "
          "paused, dropped unsent (the slot's new holder relays them)")) {
  // At 0 from the start: increase() never sees the first event of a series that appears
  // with it, and the first set-aside row is the one an operator must hear of.
  for (const char* reason_class : {"no_topic", "undecodable", "too_large"}) {
    set_aside(reason_class);
  }
}

metrics::Counter& RelayMetrics::set_aside(const std::string& reason_class) {
  return registry.GetCounter("relay_set_aside_events_total",
                             "Events not relayed; their rows stay in the outbox, listed in "
                             "relay.set_aside_events",
                             {{"reason", reason_class}});
}

void RelayMetrics::MeasureSlot(pqxx::connection& conn, const std::string& slot) {
  if (absl::StatusOr<double> age = OldestWaitingAgeSeconds(conn); age.ok()) {
    oldest_waiting.Set(*age);
  }
  try {
    pqxx::nontransaction tx(conn);
    pqxx::result r = tx.exec_params(
        "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint, "
        "(pg_current_wal_lsn() - confirmed_flush_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = $1",
        slot);
    if (r.empty()) return;
    if (!r[0][0].is_null()) retained_wal.Set(r[0][0].as<double>());
    if (!r[0][1].is_null()) bytes_behind.Set(r[0][1].as<double>());
  } catch (const std::exception& e) {
    log::Warn("measuring the slot failed", {{"error", e.what()}});
  }
}

}  // namespace concert::relay
