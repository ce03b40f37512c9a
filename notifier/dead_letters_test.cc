// DeadLetters against a real Kafka: the dead letter's headers, and a producer that hit a fatal
// error is replaced instead of failing every dead letter after it.
#include "notifier/dead_letters.h"

#include <librdkafka/rdkafka.h>

#include <gtest/gtest.h>

#include "common/kafka/admin.h"
#include "common/testing/environment.h"

namespace concert::notifier {
namespace {

using concert::testing::KafkaBootstrap;
using concert::testing::UniqueName;

class DeadLettersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(kafka::EnsureTopics(bootstrap_, {{topic_, 1}, {dlq_topic_, 1}}).ok());
    auto producer = kafka::Producer::Create(kafka::ProducerConfig(bootstrap_, "test"));
    ASSERT_TRUE(producer.ok());
    ASSERT_TRUE((*producer)
                    ->ProduceAndWait({.topic = topic_, .key = "k", .value = "payload",
                                      .headers = {{"event_id", "e-1"}}},
                                     absl::Seconds(10))
                    .ok());
  }

  // Reads `topic` from the start: up to `n` records within `timeout`. The consumer lives as
  // long as the test (librdkafka waits for every message of a handle before destroying it).
  std::vector<std::unique_ptr<RdKafka::Message>> Read(const std::string& topic, size_t n,
                                                      absl::Duration timeout) {
    auto conf = kafka::MakeConf(kafka::ConsumerConfig(bootstrap_, UniqueName("reader"), "reader"));
    std::string error;
    RdKafka::KafkaConsumer* consumer =
        consumers_.emplace_back(RdKafka::KafkaConsumer::create(conf->get(), error)).get();
    consumer->subscribe({topic});
    std::vector<std::unique_ptr<RdKafka::Message>> out;
    for (absl::Time deadline = absl::Now() + timeout; out.size() < n && absl::Now() < deadline;) {
      std::unique_ptr<RdKafka::Message> m(consumer->consume(200));
      if (m->err() == RdKafka::ERR_NO_ERROR) out.push_back(std::move(m));
    }
    return out;
  }

  std::vector<std::unique_ptr<RdKafka::KafkaConsumer>> consumers_;
  std::string bootstrap_ = KafkaBootstrap();
  std::string topic_ = UniqueName("paid");
  std::string dlq_topic_ = UniqueName("dlq");
};

TEST_F(DeadLettersTest, AFatalProducerErrorIsFollowedByANewProducer) {
  std::vector<kafka::Producer*> created;
  DeadLetters dlq({.topic = dlq_topic_, .group_id = "g"}, [&] {
    auto p = kafka::Producer::Create(kafka::ProducerConfig(bootstrap_, "dlq"));
    if (p.ok()) created.push_back(p->get());
    return p;
  });
  auto originals = Read(topic_, 1, absl::Seconds(30));
  ASSERT_EQ(originals.size(), 1u);
  absl::Notification stop;
  DeadLetter letter{.event_id = "e-1", .error_class = "telegram_5xx", .error = "HTTP 502",
                    .attempt = 2, .possibly_delivered = true};
  ASSERT_TRUE(dlq.Send(*originals[0], letter, stop).ok());
  ASSERT_EQ(created.size(), 1u);

  // What the idempotent producer does when it loses its sequence: every produce fails after.
  ASSERT_EQ(rd_kafka_test_fatal_error(created[0]->handle().c_ptr(),
                                      RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, "test"),
            RD_KAFKA_RESP_ERR_NO_ERROR);
  ASSERT_FALSE(created[0]->FatalError().ok());
  ASSERT_TRUE(dlq.Send(*originals[0], letter, stop).ok());
  EXPECT_EQ(created.size(), 2u);
  EXPECT_TRUE(dlq.healthy());

  auto letters = Read(dlq_topic_, 2, absl::Seconds(30));
  ASSERT_EQ(letters.size(), 2u);
  for (const auto& m : letters) {
    EXPECT_EQ(std::string(static_cast<const char*>(m->payload()), m->len()), "payload");
    EXPECT_EQ(kafka::HeaderValue(*m, "event_id"), "e-1");
    EXPECT_EQ(kafka::HeaderValue(*m, kafka::dlq::kErrorClass), "telegram_5xx");
    EXPECT_EQ(kafka::HeaderValue(*m, kafka::dlq::kAttempt), "2");
    EXPECT_EQ(kafka::HeaderValue(*m, kafka::dlq::kPossiblyDelivered), "true");
    EXPECT_EQ(kafka::HeaderValue(*m, kafka::dlq::kOriginalTopic), topic_);
    EXPECT_EQ(kafka::HeaderValue(*m, kafka::dlq::kOriginalConsumerGroup), "g");
  }
}

}  // namespace
}  // namespace concert::notifier
