// The relay's Prometheus series, registered (at 0) when a Relay is built, and the measurements
// of the slot that hold whatever state the stream is in.
//
//   RelayMetrics m(metrics::Default());
//   m.events.Increment();
//   m.set_aside("too_large").Increment();
//   m.MeasureSlot(catalog, "concert_outbox_relay");  // retained WAL, lag, oldest waiting row
//
// The series are thread-safe (common/metrics.h): Kafka's delivery callbacks update them from
// librdkafka's thread. MeasureSlot runs on the connection it is given.
#ifndef CONCERT_OUTBOX_RELAY_RELAY_METRICS_H_
#define CONCERT_OUTBOX_RELAY_RELAY_METRICS_H_

#include <string>

#include <pqxx/pqxx>

#include "common/metrics.h"

namespace concert::relay {

struct RelayMetrics {
  explicit RelayMetrics(metrics::Registry& registry);

  // Events set aside, by reason class ("no_topic", "undecodable", "too_large").
  metrics::Counter& set_aside(const std::string& reason_class);

  // The slot's lag and retained WAL as the server sees them, and the oldest row waiting in
  // the outbox: true whatever state the stream is in (restarting, waiting for Kafka, standby).
  // Failures are logged; the series then keep their last value.
  void MeasureSlot(pqxx::connection& conn, const std::string& slot);

  metrics::Registry& registry;
  metrics::Counter& events;
  metrics::Counter& delivery_errors;
  metrics::Counter& deleted;
  metrics::Counter& restarts_postgres;
  metrics::Counter& restarts_kafka;
  metrics::Gauge& confirmed_lsn;
  metrics::Gauge& server_lsn;
  metrics::Gauge& bytes_behind;
  metrics::Gauge& retained_wal;
  metrics::Gauge& pending;
  metrics::Gauge& active;
  metrics::Gauge& postgres_up;
  metrics::Gauge& kafka_up;
  metrics::Histogram& event_age;
  metrics::Histogram& commit_to_ack;
  metrics::Gauge& stranded_rows;
  metrics::Gauge& oldest_stranded;
  metrics::Gauge& oldest_waiting;
  metrics::Counter& stale_dropped;
};

}  // namespace concert::relay

#endif  // CONCERT_OUTBOX_RELAY_RELAY_METRICS_H_
