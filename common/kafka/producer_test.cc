// Against the real local Kafka broker (scripts/kafka.sh): an idempotent producer with acks=all
// and a consumer group that commits by hand.
#include "common/kafka/producer.h"

#include <gtest/gtest.h>

#include "common/kafka/admin.h"
#include "common/kafka/cluster.h"
#include "common/kafka/headers.h"
#include "common/testing/environment.h"

namespace concert::kafka {
namespace {

using ::concert::testing::KafkaBootstrap;
using ::concert::testing::UniqueName;

std::unique_ptr<RdKafka::KafkaConsumer> Subscribe(const std::string& topic, const std::string& group) {
  auto conf = MakeConf(ConsumerConfig(KafkaBootstrap(), group, "kafka-test"));
  EXPECT_TRUE(conf.ok());
  std::string error;
  std::unique_ptr<RdKafka::KafkaConsumer> consumer(RdKafka::KafkaConsumer::create(conf->get(), error));
  EXPECT_NE(consumer, nullptr) << error;
  EXPECT_EQ(consumer->subscribe({topic}), RdKafka::ERR_NO_ERROR);
  return consumer;
}

// Polls until a record arrives or `timeout` passes.
std::unique_ptr<RdKafka::Message> NextRecord(RdKafka::KafkaConsumer& consumer, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    std::unique_ptr<RdKafka::Message> m(consumer.consume(200));
    if (m->err() == RdKafka::ERR_NO_ERROR) return m;
  }
  return nullptr;
}

TEST(KafkaTest, RoundTripKeepsKeyValueAndHeadersAndCommittedOffsets) {
  std::string topic = UniqueName("roundtrip");
  std::string group = UniqueName("group");
  ASSERT_TRUE(EnsureTopics(KafkaBootstrap(), {{topic, 3}}).ok());
  ASSERT_TRUE(EnsureTopics(KafkaBootstrap(), {{topic, 3}}).ok()) << "existing topic is fine";

  Config config = ProducerConfig(KafkaBootstrap(), "kafka-test");
  EXPECT_EQ(config.at("enable.idempotence"), "true");
  EXPECT_EQ(config.at("acks"), "all");
  auto producer = Producer::Create(config);
  ASSERT_TRUE(producer.ok()) << producer.status();
  std::string binary_value("\x00\x01payload\xff", 11);
  ASSERT_TRUE((*producer)->ProduceAndWait({.topic = topic, .key = "res-7", .value = binary_value,
                                            .headers = {{"event_id", "e-1"}, {"traceparent", "00-ab-cd-01"}}},
                                           absl::Seconds(30)).ok());
  ASSERT_TRUE((*producer)->ProduceAndWait({.topic = topic, .key = "res-7", .value = "second"},
                                           absl::Seconds(30)).ok());

  auto consumer = Subscribe(topic, group);
  auto first = NextRecord(*consumer, absl::Seconds(30));
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(*first->key(), "res-7");
  EXPECT_EQ(std::string(static_cast<const char*>(first->payload()), first->len()), binary_value);
  EXPECT_EQ(HeaderValue(*first, "event_id"), "e-1");
  EXPECT_EQ(HeaderValue(*first, "traceparent"), "00-ab-cd-01");
  EXPECT_EQ(HeaderValue(*first, "missing"), std::nullopt);
  EXPECT_EQ(first->timestamp().type, RdKafka::MessageTimestamp::MSG_TIMESTAMP_CREATE_TIME);
  // Commit only the first record, then leave the group.
  ASSERT_EQ(consumer->commitSync(first.get()), RdKafka::ERR_NO_ERROR);
  consumer->close();

  // The same key went to the same partition, so the group resumes exactly at the second.
  auto again = Subscribe(topic, group);
  auto second = NextRecord(*again, absl::Seconds(30));
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(second->payload()), second->len()), "second");
  EXPECT_EQ(second->partition(), first->partition());
  EXPECT_EQ(second->offset(), first->offset() + 1);
  again->close();
}

TEST(KafkaTest, UnreachableBrokerFailsDeliveryWithinTheTimeout) {
  Config config = ProducerConfig("127.0.0.1:1", "kafka-test");
  config["message.timeout.ms"] = "1500";
  auto producer = Producer::Create(config);
  ASSERT_TRUE(producer.ok());
  absl::Status s = (*producer)->ProduceAndWait({.topic = "nowhere", .key = "k", .value = "v"},
                                               absl::Seconds(20));
  EXPECT_FALSE(s.ok());
}

TEST(KafkaTest, BadConfigurationIsReportedWithTheKey) {
  auto conf = MakeConf({{"acks", "most"}});
  ASSERT_FALSE(conf.ok());
  EXPECT_NE(conf.status().message().find("acks"), std::string::npos);
}

}  // namespace
}  // namespace concert::kafka
