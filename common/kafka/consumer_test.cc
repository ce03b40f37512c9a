// KeyedConsumer against the real local Kafka broker: every key's records in order, offsets
// committed only below the lowest unfinished record, a handler that finishes a record later from
// another thread, lag and health.
#include "common/kafka/consumer.h"

#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/kafka/admin.h"
#include "common/kafka/producer.h"
#include "common/testing/environment.h"

namespace concert::kafka {
namespace {

using ::concert::testing::KafkaBootstrap;
using ::concert::testing::UniqueName;
using ::concert::testing::WaitUntil;

// Keeps what it saw; "stuck" records are abandoned at cancel, others are done, every third one
// from another thread.
class RecordingHandler : public RecordHandler {
 public:
  void Handle(const RdKafka::Message& record, const Assignment& assignment,
              Completion done) override {
    std::string value(static_cast<const char*>(record.payload()), record.len());
    {
      std::lock_guard lock(mu_);
      by_key_[*record.key()].push_back(value);
      ++handled_;
    }
    if (value == "stuck") {
      assignment.cancelled().WaitForNotification();
      done(Completion::kAbandoned);
      return;
    }
    if (handled_ % 3 == 0) {
      std::thread([done = std::move(done)]() mutable {
        absl::SleepFor(absl::Milliseconds(20));
        done(Completion::kDone);
      }).detach();
      return;
    }
    done(Completion::kDone);
  }
  void OnAssigned(const std::vector<int32_t>& partitions) override { ++assignments_; }
  bool Healthy(bool probe, nlohmann::json& details) override { return true; }

  std::map<std::string, std::vector<std::string>> by_key() {
    std::lock_guard lock(mu_);
    return by_key_;
  }
  int handled() {
    std::lock_guard lock(mu_);
    return handled_;
  }
  std::atomic<int> assignments_{0};

 private:
  std::mutex mu_;
  std::map<std::string, std::vector<std::string>> by_key_;
  int handled_ = 0;
};

void ProduceAll(const std::string& topic,
                const std::vector<std::pair<std::string, std::string>>& kv) {
  auto producer = Producer::Create(ProducerConfig(KafkaBootstrap(), "consumer-test"));
  ASSERT_TRUE(producer.ok()) << producer.status();
  for (const auto& [key, value] : kv) {
    ASSERT_TRUE((*producer)
                    ->Produce({.topic = topic, .key = key, .value = value},
                              [](const absl::Status&) {})
                    .ok());
  }
  ASSERT_TRUE((*producer)->Flush(absl::Seconds(30)).ok());
}

int64_t Committed(const std::string& group, const std::string& topic, int32_t partition) {
  auto conf = MakeConf(ConsumerConfig(KafkaBootstrap(), group, "consumer-test-probe"));
  std::string error;
  std::unique_ptr<RdKafka::KafkaConsumer> c(RdKafka::KafkaConsumer::create(conf->get(), error));
  std::vector<RdKafka::TopicPartition*> parts = {RdKafka::TopicPartition::create(topic, partition)};
  c->committed(parts, 10000);
  int64_t offset = parts[0]->offset();
  RdKafka::TopicPartition::destroy(parts);
  c->close();
  return offset;
}

TEST(KeyedConsumerTest, KeysInOrderAndCommitsStopBelowTheUnfinished) {
  std::string topic = UniqueName("keyed");
  std::string group = UniqueName("keyed-group");
  ASSERT_TRUE(EnsureTopics(KafkaBootstrap(), {{topic, 1}}).ok());
  std::vector<std::pair<std::string, std::string>> records;
  for (int i = 0; i < 30; ++i) records.push_back({absl::StrCat("k", i % 5), absl::StrCat(i)});
  records.push_back({"s", "stuck"});  // offset 30
  records.push_back({"t", "after"});  // offset 31: done, but above the unfinished one
  ProduceAll(topic, records);

  RecordingHandler handler;
  metrics::Registry registry;
  KeyedConsumerOptions options{.config = ConsumerConfig(KafkaBootstrap(), group, "consumer-test"),
                               .topic = topic,
                               .concurrency = 4,
                               .metrics_prefix = "keyed_test"};
  auto consumer = KeyedConsumer::Create(options, handler, registry);
  ASSERT_TRUE(consumer.ok()) << consumer.status();
  absl::Notification stop;
  std::vector<bool> health;
  std::thread run([&] { (*consumer)->Run(stop, [&](bool ok) { health.push_back(ok); }); });
  ASSERT_TRUE(WaitUntil([&] { return handler.handled() == 32; }, absl::Seconds(60)));
  EXPECT_TRUE(WaitUntil(
      [&] {
        return registry.GetGauge("keyed_test_pending", "").Value() == 1 &&
               registry.GetGauge("keyed_test_consumer_lag", "").Value() == 2;
      },
      absl::Seconds(10)))
      << "the stuck record pending; lag counts from it";
  stop.Notify();
  run.join();
  consumer->reset();

  for (const auto& [key, values] : handler.by_key()) {
    if (key == "s" || key == "t") continue;
    for (size_t j = 1; j < values.size(); ++j) {
      EXPECT_LT(std::stoi(values[j - 1]), std::stoi(values[j])) << "key " << key;
    }
  }
  EXPECT_EQ(handler.assignments_.load(), 1);
  ASSERT_FALSE(health.empty());
  EXPECT_TRUE(health.front());
  EXPECT_EQ(Committed(group, topic, 0), 30) << "committed up to the abandoned record, not past";
}

// The time without a settled group: counted from the start while the member has no coordinator
// (a cluster that does not answer), back to 0 once it has joined and holds its assignment.
TEST(KeyedConsumerTest, UnsettledSecondsCountUntilTheGroupSettles) {
  std::string topic = UniqueName("settle");
  ASSERT_TRUE(EnsureTopics(KafkaBootstrap(), {{topic, 1}}).ok());
  RecordingHandler handler;
  auto run_for = [&](const std::string& bootstrap, absl::Duration how_long,
                     metrics::Registry& registry) {
    KeyedConsumerOptions options{
        .config = ConsumerConfig(bootstrap, UniqueName("settle-group"), "consumer-test"),
        .topic = topic,
        .metrics_prefix = "settle_test"};
    auto consumer = KeyedConsumer::Create(options, handler, registry);
    ASSERT_TRUE(consumer.ok()) << consumer.status();
    absl::Notification stop;
    std::thread run([&] { (*consumer)->Run(stop); });
    metrics::Gauge& unsettled = registry.GetGauge("settle_test_consumer_unsettled_seconds", "");
    if (how_long > absl::ZeroDuration()) {
      absl::SleepFor(how_long);
      EXPECT_GE(unsettled.Value(), 1.0) << "no coordinator for " << how_long;
    } else {
      EXPECT_TRUE(WaitUntil([&] { return handler.assignments_.load() > 0; }, absl::Seconds(30)));
      EXPECT_TRUE(WaitUntil([&] { return unsettled.Value() == 0; }, absl::Seconds(10)))
          << unsettled.Value();
    }
    stop.Notify();
    run.join();
  };
  metrics::Registry unreachable, reachable;
  // Nothing listens on port 1: no coordinator, ever.
  run_for("127.0.0.1:1", absl::Seconds(3), unreachable);
  run_for(KafkaBootstrap(), absl::ZeroDuration(), reachable);
}

}  // namespace
}  // namespace concert::kafka
