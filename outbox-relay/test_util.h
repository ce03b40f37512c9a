// What the relay's integration tests share: writing outbox rows as payment-server does,
// reading a topic back, running a relay in this process or as a child process, and reading
// its metrics. Test-only.
#ifndef CONCERT_OUTBOX_RELAY_TEST_UTIL_H_
#define CONCERT_OUTBOX_RELAY_TEST_UTIL_H_

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <httplib.h>
#include <librdkafka/rdkafkacpp.h>
#include <pqxx/pqxx>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/kafka/cluster.h"
#include "common/kafka/headers.h"
#include "common/metrics.h"
#include "common/testing/environment.h"
#include "concert/events/v1/payment_events.pb.h"
#include "outbox-relay/relay.h"
#include "payment-server/schema.h"

namespace concert::relay::testing {

using ::concert::testing::BinaryPath;
using ::concert::testing::ChildProcess;
using ::concert::testing::FreePort;
using ::concert::testing::KafkaBootstrap;
using ::concert::testing::ScratchDatabase;
using ::concert::testing::UniqueName;
using ::concert::testing::WaitUntil;

inline constexpr char kTraceparent[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

inline std::string NewUuid() {
  static std::mt19937_64 rng(std::random_device{}());
  static std::mutex mu;
  std::lock_guard lock(mu);
  uint64_t a = rng(), b = rng();
  return absl::StrFormat("%08x-%04x-4%03x-a%03x-%012x", a >> 32, (a >> 16) & 0xffff, a & 0xfff,
                         b >> 52, b & 0xffffffffffffULL);
}

struct Event {
  std::string event_id;
  int64_t reservation_id = 0;
  int64_t seq = 0;  // payment_id: increasing in commit order
  std::string payload;
};

// Writes outbox rows exactly as payment-server does: one PaymentCompleted per row.
class OutboxWriter {
 public:
  explicit OutboxWriter(std::string url) : url_(std::move(url)) {}

  // One transaction with `count` events for reservations seq % reservations. Returns the
  // events when the commit succeeded; throws on failure.
  std::vector<Event> WriteTransaction(int count, int reservations) {
    if (!conn_ || !conn_->is_open()) {
      conn_ = std::make_unique<pqxx::connection>(url_);
      conn_->prepare("insert",
                     "INSERT INTO payment.outbox_events (event_id, aggregate_type, aggregate_id, "
                     "event_type, payload, headers) VALUES ($1, 'Reservation', $2, "
                     "'PaymentCompleted', $3, $4::jsonb)");
    }
    std::vector<Event> events;
    pqxx::work tx(*conn_);
    for (int i = 0; i < count; ++i) {
      Event e;
      e.seq = ++seq_;
      e.reservation_id = 1 + e.seq % reservations;
      e.event_id = NewUuid();
      concert::events::v1::PaymentCompleted p;
      p.set_event_id(e.event_id);
      p.set_payment_id(e.seq);
      p.set_reservation_id(e.reservation_id);
      p.set_user_id(7);
      p.set_concert_title("Relay Night");
      p.set_amount_won(50000);
      e.payload = p.SerializeAsString();
      tx.exec_prepared("insert", e.event_id, std::to_string(e.reservation_id),
                       pqxx::binarystring(e.payload),
                       absl::StrCat("{\"traceparent\":\"", kTraceparent, "\"}"));
      events.push_back(std::move(e));
    }
    tx.commit();
    return events;
  }

  void Reset() { conn_.reset(); }

 private:
  std::string url_;
  std::unique_ptr<pqxx::connection> conn_;
  int64_t seq_ = 0;
};

struct Received {
  std::string key, value;
  std::map<std::string, std::string> headers;
  int32_t partition = 0;
  int64_t offset = 0;
  absl::Time received_at;
};

// Reads a topic from the beginning with a group of its own.
class TopicReader {
 public:
  TopicReader(const std::string& bootstrap, const std::string& topic) {
    kafka::Config config =
        kafka::ConsumerConfig(bootstrap, UniqueName("relay_test"), "relay-test");
    config["fetch.wait.max.ms"] = "10";
    auto conf = kafka::MakeConf(config);
    std::string error;
    consumer_.reset(RdKafka::KafkaConsumer::create(conf->get(), error));
    EXPECT_NE(consumer_, nullptr) << error;
    consumer_->subscribe({topic});
  }
  ~TopicReader() { consumer_->close(); }

  // Polls until `done(records)` or the timeout. `done` is called after each batch of
  // messages, not each message (it may look at all records).
  bool ReadUntil(const std::function<bool(const std::vector<Received>&)>& done,
                 absl::Duration timeout) {
    absl::Time deadline = absl::Now() + timeout;
    size_t checked = static_cast<size_t>(-1);
    while (true) {
      if (checked != records_.size() || records_.empty()) {
        if (done(records_)) return true;
        checked = records_.size();
      }
      for (int i = 0; i < 2000; ++i) {
        std::unique_ptr<RdKafka::Message> m(consumer_->consume(i == 0 ? 100 : 0));
        if (m->err() != RdKafka::ERR_NO_ERROR) break;
        Add(*m);
      }
      if (absl::Now() > deadline) return done(records_);
    }
  }
  const std::vector<Received>& records() const { return records_; }

 private:
  void Add(RdKafka::Message& msg) {
    RdKafka::Message* m = &msg;
    {
      Received r;
      r.key = m->key() != nullptr ? *m->key() : "";
      r.value.assign(static_cast<const char*>(m->payload()), m->len());
      for (const auto& [k, v] : kafka::AllHeaders(*m)) r.headers[k] = v;
      r.partition = m->partition();
      r.offset = m->offset();
      r.received_at = absl::Now();
      records_.push_back(std::move(r));
    }
  }

  std::unique_ptr<RdKafka::KafkaConsumer> consumer_;
  std::vector<Received> records_;
};

inline std::set<std::string> DistinctEventIds(const std::vector<Received>& records) {
  std::set<std::string> ids;
  for (const Received& r : records) ids.insert(r.headers.count("event_id") ? r.headers.at("event_id") : "");
  return ids;
}

// Every expected event id appears; prints and returns the number of duplicates.
inline int64_t ExpectAllPresent(const std::vector<Event>& expected, const std::vector<Received>& got) {
  std::set<std::string> ids = DistinctEventIds(got);
  int64_t missing = 0;
  for (const Event& e : expected) missing += ids.count(e.event_id) == 0;
  int64_t duplicates = static_cast<int64_t>(got.size()) - static_cast<int64_t>(ids.size());
  std::printf("[relay] expected %zu events, received %zu records, distinct %zu, missing %lld, "
              "duplicates %lld\n",
              expected.size(), got.size(), ids.size(), static_cast<long long>(missing),
              static_cast<long long>(duplicates));
  EXPECT_EQ(missing, 0);
  return duplicates;
}

inline int64_t Scalar(const std::string& url, const std::string& sql) {
  pqxx::connection c(url);
  pqxx::nontransaction tx(c);
  pqxx::result r = tx.exec(sql);
  return r[0][0].is_null() ? -1 : r[0][0].as<int64_t>();
}

inline int64_t OutboxRows(const std::string& url) {
  return Scalar(url, "SELECT count(*) FROM payment.outbox_events");
}

inline void DropSlot(const std::string& url, const std::string& slot) {
  try {
    pqxx::connection c(url);
    pqxx::nontransaction tx(c);
    tx.exec_params(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE slot_name = $1 AND NOT active",
        slot);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "dropping slot " << slot << ": " << e.what();
  }
}

// A relay running in this process, on a thread of its own.
class InProcessRelay {
 public:
  explicit InProcessRelay(RelayOptions options) : relay_(std::move(options), registry_) {
    thread_ = std::thread([this] { relay_.Run(stop_); });
  }
  ~InProcessRelay() { Stop(); }
  void Stop() {
    if (!thread_.joinable()) return;
    stop_.Notify();
    thread_.join();
  }
  metrics::Registry& registry() { return registry_; }

 private:
  metrics::Registry registry_;
  absl::Notification stop_;
  Relay relay_;
  std::thread thread_;
};

inline RelayOptions Options(const std::string& db_url, const std::string& bootstrap,
                     const std::string& topic, const std::string& slot) {
  RelayOptions o;
  o.database_url = db_url;
  o.kafka = bootstrap;
  o.payment_completed_topic = topic;
  o.dlq_topic = topic + "_dlq";
  o.slot = slot;
  o.publication = "relay_test_pub";
  o.backoff_max = absl::Seconds(2);
  o.slot_stats_interval = absl::Seconds(1);
  return o;
}

inline std::map<std::string, std::string> ChildEnv(const std::string& db_url, const std::string& topic,
                                            const std::string& slot, int metrics_port) {
  return {{"DATABASE_URL", db_url},
          {"KAFKA_BOOTSTRAP_SERVERS", KafkaBootstrap()},
          {"PAYMENT_COMPLETED_TOPIC", topic},
          {"DLQ_TOPIC", topic + "_dlq"},
          {"REPLICATION_SLOT", slot},
          {"PUBLICATION", "relay_test_pub"},
          {"GRPC_ADDRESS", "127.0.0.1:0"},
          {"METRICS_ADDRESS", absl::StrCat("127.0.0.1:", metrics_port)},
          {"BACKOFF_MAX", "2s"},
          {"STANDBY_POLL_INTERVAL", "500ms"}};
}

// The value of an unlabelled metric on a relay's /metrics, or -1.
inline double MetricValue(int port, const std::string& name) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(1);
  auto res = client.Get("/metrics");
  if (!res || res->status != 200) return -1;
  size_t at = 0;
  while ((at = res->body.find(name + " ", at)) != std::string::npos) {
    if (at == 0 || res->body[at - 1] == '\n') {
      size_t end = res->body.find('\n', at);
      double v = -1;
      if (absl::SimpleAtod(res->body.substr(at + name.size() + 1, end - at - name.size() - 1), &v)) {
        return v;
      }
    }
    ++at;
  }
  return -1;
}

// Per key, the payment sequence numbers (commit order) must increase along the partition.
inline void ExpectCommitOrderPerKey(const std::vector<Received>& records) {
  std::map<std::string, int64_t> last;
  std::set<std::string> seen;
  int64_t violations = 0;
  for (const Received& r : records) {  // in offset order per partition; a key has one partition
    if (!seen.insert(r.headers.at("event_id")).second) continue;  // a replayed duplicate
    concert::events::v1::PaymentCompleted p;
    ASSERT_TRUE(p.ParseFromString(r.value));
    if (last.count(r.key) && p.payment_id() <= last[r.key]) ++violations;
    last[r.key] = p.payment_id();
  }
  EXPECT_EQ(violations, 0) << "records of one reservation out of commit order";
}

class RelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(payment::MigrateSchema(db_.url()).ok());
    topic_ = UniqueName("relay_payments");
    slot_ = UniqueName("relay_slot");
  }
  ScratchDatabase db_{"relay"};
  std::string topic_, slot_;
};

}  // namespace concert::relay::testing

#endif  // CONCERT_OUTBOX_RELAY_TEST_UTIL_H_
