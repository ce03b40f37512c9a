// The notifier binary end to end: real Kafka, real Postgres (a scratch database), the fake
// Telegram server over real HTTP. Each test has its own topics, group and database.
#include <csignal>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include <grpcpp/grpcpp.h>
#include <librdkafka/rdkafkacpp.h>

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/kafka/admin.h"
#include "common/kafka/cluster.h"
#include "common/kafka/headers.h"
#include "common/kafka/producer.h"
#include "common/testing/environment.h"
#include "concert/events/v1/payment_events.pb.h"
#include "gtest/gtest.h"
#include "notifier/message.h"
#include "tests/fake_telegram/fake_telegram.h"

namespace concert::notifier {
namespace {

using concert::testing::ChildProcess;
using concert::testing::FakeTelegram;
using concert::testing::FaultMode;
using concert::testing::WaitUntil;
using events::v1::PaymentCompleted;

constexpr char kChat[] = "777";

std::string RandomUuid() {
  static std::mt19937_64 rng(std::random_device{}());
  uint64_t a = rng(), b = rng();
  return absl::StrFormat("%08x-%04x-4%03x-a%03x-%012x", a >> 32, (a >> 16) & 0xffff, a & 0xfff,
                         b >> 52, b & 0xffffffffffffULL);
}

absl::TimeZone Seoul() {
  absl::TimeZone zone;
  absl::LoadTimeZone("Asia/Seoul", &zone);
  return zone;
}

struct DlqRecord {
  std::string key, value;
  kafka::Headers headers;
  std::string Header(const std::string& name) const {
    std::string out;
    for (const auto& [n, v] : headers) {
      if (n == name) out = v;
    }
    return out;
  }
};

class NotifierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(kafka::EnsureTopics(bootstrap_, {{topic_, 3}, {dlq_topic_, 1}}).ok());
    ASSERT_TRUE(fake_.Start().ok());
    auto producer = kafka::Producer::Create(kafka::ProducerConfig(bootstrap_, "notifier-test"));
    ASSERT_TRUE(producer.ok());
    producer_ = std::move(*producer);
  }

  // Environment of one notifier process; metrics on its own port (see metrics_port).
  std::map<std::string, std::string> Env(int metrics_port) {
    return {{"DATABASE_URL", db_.url()},
            {"KAFKA_BOOTSTRAP_SERVERS", bootstrap_},
            {"KAFKA_GROUP_ID", group_},
            {"PAYMENT_COMPLETED_TOPIC", topic_},
            {"DLQ_TOPIC", dlq_topic_},
            {"TELEGRAM_API_BASE", fake_.base_url()},
            {"TELEGRAM_BOT_TOKEN", "42:test-token"},
            {"TELEGRAM_CHAT_ID", kChat},
            {"TELEGRAM_UPDATES", "off"},
            {"TELEGRAM_RETRY_BACKOFF", "50ms"},
            {"TELEGRAM_TIMEOUT", "5s"},
            // The fake here answers at once and has no limits; pacing is tested on its own.
            {"TELEGRAM_RATE", "1000"},
            {"TELEGRAM_CHAT_INTERVAL", "10ms"},
            {"NOTIFY_TIME_ZONE", "Asia/Seoul"},
            {"UNCERTAIN_POLICY", "resend"},
            {"GRPC_ADDRESS", grpc_address_},
            {"METRICS_ADDRESS", absl::StrCat("127.0.0.1:", metrics_port)},
            {"LOG_LEVEL", "info"}};
  }

  std::unique_ptr<ChildProcess> StartNotifier(int metrics_port) {
    return std::make_unique<ChildProcess>(concert::testing::BinaryPath("notifier"),
                                          std::vector<std::string>{}, Env(metrics_port));
  }

  PaymentCompleted MakeEvent(int i) {
    PaymentCompleted e;
    e.set_event_id(RandomUuid());
    e.set_payment_id(5000 + i);
    e.set_reservation_id(1000 + i);
    e.set_user_id(i);
    e.set_user_mail(absl::StrCat("user", i, "@example.com"));
    e.set_concert_title(absl::StrCat("Concert #", i % 7));
    e.mutable_concert_start()->set_seconds(1767261600 + i * 60);
    e.mutable_paid_at()->set_seconds(1764064800 + i);
    e.set_amount_won(50000 + i * 1000);
    e.set_seat_id(i);
    return e;
  }

  kafka::Record RecordFor(const PaymentCompleted& e, int attempt = 0) {
    kafka::Record r{.topic = topic_,
                    .key = std::to_string(e.reservation_id()),
                    .value = e.SerializeAsString(),
                    .headers = {{kafka::kEventIdHeader, e.event_id()},
                                {kafka::kEventTypeHeader, "PaymentCompleted"},
                                {kafka::kContentTypeHeader, "application/x-protobuf"}}};
    if (attempt > 0) r.headers.emplace_back(kafka::dlq::kAttempt, std::to_string(attempt));
    return r;
  }

  void Produce(kafka::Record record) {
    ASSERT_TRUE(producer_->ProduceAndWait(std::move(record), absl::Seconds(10)).ok());
  }

  void ProduceAll(const std::vector<PaymentCompleted>& events) {
    for (const auto& e : events) {
      ASSERT_TRUE(producer_->Produce(RecordFor(e), [](const absl::Status&) {}).ok());
    }
    ASSERT_TRUE(producer_->Flush(absl::Seconds(20)).ok());
  }

  // How many messages reached the fake for each text.
  std::map<std::string, int> CountByText() {
    std::map<std::string, int> counts;
    for (const auto& m : fake_.messages()) ++counts[m.text];
    return counts;
  }

  bool AllDelivered(const std::vector<PaymentCompleted>& events) {
    auto counts = CountByText();
    for (const auto& e : events) {
      if (counts[FormatPaymentMessage(e, Seoul(), MessageLocale::kKorean)] == 0) return false;
    }
    return true;
  }

  double Metric(int port, const std::string& name, const std::string& label_filter = "") {
    return concert::testing::ScrapeMetric(port, name, label_filter);
  }

  // -1 until the notifier has created the schema.
  int CountRows(const std::string& where) {
    try {
      pqxx::connection conn(db_.url());
      pqxx::work tx(conn);
      return tx.exec1("SELECT count(*) FROM notification.deliveries WHERE " + where)[0].as<int>();
    } catch (const pqxx::sql_error&) {
      return -1;
    }
  }

  // Reads the DLQ topic from the start until `n` records arrived or `timeout` passed.
  std::vector<DlqRecord> ReadDlq(size_t n, absl::Duration timeout) {
    std::vector<DlqRecord> out;
    auto conf = kafka::MakeConf(kafka::ConsumerConfig(
        bootstrap_, concert::testing::UniqueName("dlqreader"), "dlq-reader"));
    EXPECT_TRUE(conf.ok());
    std::string error;
    std::unique_ptr<RdKafka::KafkaConsumer> consumer(
        RdKafka::KafkaConsumer::create(conf->get(), error));
    EXPECT_TRUE(consumer) << error;
    consumer->subscribe({dlq_topic_});
    absl::Time deadline = absl::Now() + timeout;
    while (out.size() < n && absl::Now() < deadline) {
      std::unique_ptr<RdKafka::Message> m(consumer->consume(200));
      if (m->err() != RdKafka::ERR_NO_ERROR) continue;
      DlqRecord r;
      if (m->key() != nullptr) r.key = *m->key();
      r.value.assign(static_cast<const char*>(m->payload()), m->len());
      r.headers = kafka::AllHeaders(*m);
      out.push_back(std::move(r));
    }
    consumer->close();
    return out;
  }

  // The group's committed offset for `partition` of the input topic (-1001 when none).
  int64_t CommittedOffset(int32_t partition) {
    auto conf = kafka::MakeConf(kafka::ConsumerConfig(bootstrap_, group_, "offset-reader"));
    std::string error;
    std::unique_ptr<RdKafka::KafkaConsumer> consumer(
        RdKafka::KafkaConsumer::create(conf->get(), error));
    std::vector<RdKafka::TopicPartition*> parts = {
        RdKafka::TopicPartition::create(topic_, partition)};
    consumer->committed(parts, 5000);
    int64_t offset = parts[0]->offset();
    RdKafka::TopicPartition::destroy(parts);
    consumer->close();
    return offset;
  }

  std::string bootstrap_ = concert::testing::KafkaBootstrap();
  concert::testing::ScratchDatabase db_{"notifier"};
  std::string topic_ = concert::testing::UniqueName("paid");
  std::string dlq_topic_ = concert::testing::UniqueName("dlq");
  std::string group_ = concert::testing::UniqueName("notification");
  FakeTelegram fake_{{}};
  std::unique_ptr<kafka::Producer> producer_;
  // Shared by the test's notifiers; a test running two uses Env(...) and overrides it.
  std::string grpc_address_ = absl::StrCat("127.0.0.1:", concert::testing::FreePort());
};

TEST_F(NotifierTest, EachEventOneMessageAndRedeliveriesAreDuplicates) {
  constexpr int kEvents = 60;
  std::vector<PaymentCompleted> events;
  for (int i = 0; i < kEvents; ++i) events.push_back(MakeEvent(i));
  int metrics_port = concert::testing::FreePort();
  auto notifier = StartNotifier(metrics_port);
  EXPECT_TRUE(WaitUntil([&] { return concert::testing::HealthStatus(grpc_address_) == 1; },
                        absl::Seconds(30)));
  ProduceAll(events);

  ASSERT_TRUE(WaitUntil([&] { return fake_.messages().size() >= kEvents; }, absl::Seconds(60)))
      << fake_.messages().size() << " messages; log: " << notifier->log_path();
  auto counts = CountByText();
  for (const auto& e : events) {
    EXPECT_EQ(counts[FormatPaymentMessage(e, Seoul(), MessageLocale::kKorean)], 1) << e.event_id();
  }
  for (const auto& m : fake_.messages()) {
    EXPECT_EQ(m.chat_id, kChat);
    EXPECT_EQ(m.token, "42:test-token");
  }

  // The same events once more: every one is a duplicate, no new message.
  ProduceAll(events);
  EXPECT_TRUE(WaitUntil([&] { return Metric(metrics_port, "notifier_duplicates_total") == kEvents; },
                        absl::Seconds(60)))
      << Metric(metrics_port, "notifier_duplicates_total");
  EXPECT_EQ(fake_.messages().size(), static_cast<size_t>(kEvents));
  EXPECT_EQ(Metric(metrics_port, "notifier_sent_total"), kEvents);
  EXPECT_EQ(CountRows("state = 'SENT'"), kEvents);
  EXPECT_EQ(CountRows("true"), kEvents);
  // Offsets are committed: all 2 x kEvents records over the 3 partitions.
  EXPECT_TRUE(WaitUntil(
      [&] { return CommittedOffset(0) + CommittedOffset(1) + CommittedOffset(2) == 2 * kEvents; },
      absl::Seconds(20)));
  EXPECT_EQ(notifier->Stop(SIGTERM), 0) << "clean exit on SIGTERM";
}

TEST_F(NotifierTest, TwoInstancesShareTheWorkWithoutRepeats) {
  constexpr int kEvents = 200;
  std::vector<PaymentCompleted> events;
  for (int i = 0; i < kEvents; ++i) events.push_back(MakeEvent(i));
  // Slow sends, so A is still busy when B joins (a rebalance mid-stream).
  fake_.SetFault({.mode = FaultMode::kStall, .stall = absl::Milliseconds(15)});
  int port_a = concert::testing::FreePort();
  auto a = StartNotifier(port_a);
  ProduceAll({events.begin(), events.begin() + kEvents / 2});
  int port_b = concert::testing::FreePort();
  grpc_address_ = absl::StrCat("127.0.0.1:", concert::testing::FreePort());
  auto b = StartNotifier(port_b);
  // Once B holds partitions, the second half is split between the two.
  ASSERT_TRUE(WaitUntil([&] { return absl::StrContains(b->ReadLog(), "partitions assigned"); },
                        absl::Seconds(30)))
      << b->log_path();
  ProduceAll({events.begin() + kEvents / 2, events.end()});

  ASSERT_TRUE(WaitUntil([&] { return AllDelivered(events); }, absl::Seconds(90)))
      << fake_.messages().size() << " messages; logs: " << a->log_path() << " " << b->log_path();
  absl::SleepFor(absl::Seconds(2));  // a late repeat would show up by now
  auto counts = CountByText();
  for (const auto& e : events) EXPECT_EQ(counts[FormatPaymentMessage(e, Seoul(), MessageLocale::kKorean)], 1);
  EXPECT_EQ(fake_.messages().size(), static_cast<size_t>(kEvents));
  EXPECT_EQ(Metric(port_a, "notifier_uncertain_total") + Metric(port_b, "notifier_uncertain_total"),
            0);
  EXPECT_GT(Metric(port_b, "notifier_sent_total"), 0) << "the second instance got a share";
}

TEST_F(NotifierTest, KillNineThenRestartLosesNothingAndRepeatsOnlyUncertain) {
  constexpr int kEvents = 60;
  std::vector<PaymentCompleted> events;
  for (int i = 0; i < kEvents; ++i) events.push_back(MakeEvent(i));
  // Slow sends, so the kill lands in the middle of one (sent at the fake, not yet recorded).
  fake_.SetFault({.mode = FaultMode::kStall, .stall = absl::Milliseconds(150)});
  auto first = StartNotifier(concert::testing::FreePort());
  ProduceAll(events);
  ASSERT_TRUE(WaitUntil([&] { return fake_.requests() >= 10; }, absl::Seconds(60)));
  absl::SleepFor(absl::Milliseconds(75));
  first->Stop(SIGKILL);
  absl::SleepFor(absl::Milliseconds(300));  // let the stalled request land at the fake
  fake_.ClearFaults();

  int port = concert::testing::FreePort();
  auto second = StartNotifier(port);
  ASSERT_TRUE(WaitUntil([&] { return AllDelivered(events); }, absl::Seconds(90)))
      << second->log_path();
  absl::SleepFor(absl::Seconds(1));

  std::string log = second->ReadLog();
  int repeats = 0;
  for (const auto& e : events) {
    int n = CountByText()[FormatPaymentMessage(e, Seoul(), MessageLocale::kKorean)];
    EXPECT_GE(n, 1);
    EXPECT_LE(n, 2);
    if (n > 1) {
      ++repeats;
      EXPECT_TRUE(absl::StrContains(log, absl::StrCat("\"event_id\":\"", e.event_id(), "\""))
                  && absl::StrContains(log, "uncertain delivery"))
          << "repeated without being counted as uncertain: " << e.event_id();
    }
  }
  EXPECT_GE(Metric(port, "notifier_uncertain_total"), repeats);
  EXPECT_EQ(CountRows("state = 'SENT'"), kEvents);
  std::printf("kill -9: %d repeated message(s), %g counted uncertain\n", repeats,
              Metric(port, "notifier_uncertain_total"));
}

TEST_F(NotifierTest, ServerErrorsThenSuccessIsOneMessage) {
  fake_.SetFault({.mode = FaultMode::k5xx, .count = 2, .status = 503});
  PaymentCompleted e = MakeEvent(1);
  int port = concert::testing::FreePort();
  auto notifier = StartNotifier(port);
  Produce(RecordFor(e));
  ASSERT_TRUE(WaitUntil([&] { return CountRows("state = 'SENT'") == 1; }, absl::Seconds(60)));
  EXPECT_EQ(fake_.messages().size(), 1u);
  EXPECT_EQ(fake_.requests(), 3);
  EXPECT_EQ(Metric(port, "notifier_dlq_total"), 0);
}

// However many 429s come in a row, each is a pause of retry_after, not a failed attempt: the
// message goes out once Telegram lets it, and nothing reaches the dead-letter topic.
TEST_F(NotifierTest, RateLimitsInARowAreWaitedOutWithoutADeadLetter) {
  fake_.SetFault({.mode = FaultMode::k429, .count = 7, .retry_after_seconds = 1});
  PaymentCompleted e = MakeEvent(2);
  auto notifier = StartNotifier(concert::testing::FreePort());
  absl::Time produced = absl::Now();
  Produce(RecordFor(e));
  ASSERT_TRUE(WaitUntil([&] { return fake_.messages().size() == 1; }, absl::Seconds(90)))
      << notifier->log_path();
  EXPECT_GE(fake_.messages()[0].received_at - produced, absl::Seconds(7));
  EXPECT_EQ(fake_.requests(), 8);
  EXPECT_TRUE(ReadDlq(1, absl::Seconds(3)).empty());
}

// In a spike the partitions are paused (MAX_PENDING queued) and nothing fetches, so librdkafka's
// cached end of each partition stands still; the lag an operator reads must still grow.
TEST_F(NotifierTest, ConsumerLagKeepsCountingWhileThePartitionsArePaused) {
  fake_.SetFault({.mode = FaultMode::kStall, .stall = absl::Seconds(2)});
  int metrics_port = concert::testing::FreePort();
  auto env = Env(metrics_port);
  env["MAX_PENDING"] = "10";
  env["SEND_CONCURRENCY"] = "1";
  ChildProcess notifier(concert::testing::BinaryPath("notifier"), {}, env);
  std::vector<PaymentCompleted> first, later;
  for (int i = 0; i < 20; ++i) first.push_back(MakeEvent(i));
  for (int i = 20; i < 60; ++i) later.push_back(MakeEvent(i));
  ProduceAll(first);
  ASSERT_TRUE(WaitUntil([&] { return Metric(metrics_port, "notifier_pending") >= 10; },
                        absl::Seconds(30)))
      << notifier.log_path();
  ProduceAll(later);  // behind the pause: about one send finishes every 2 s meanwhile
  EXPECT_TRUE(WaitUntil([&] { return Metric(metrics_port, "notifier_consumer_lag") >= 45; },
                        absl::Seconds(20)))
      << "lag " << Metric(metrics_port, "notifier_consumer_lag") << ", sent "
      << Metric(metrics_port, "notifier_sent_total") << ", pending "
      << Metric(metrics_port, "notifier_pending");
}

TEST_F(NotifierTest, PermanentErrorsAndPoisonGoToDlqAndOffsetsMoveOn) {
  int port = concert::testing::FreePort();
  PaymentCompleted rejected = MakeEvent(1), retried_rejected = MakeEvent(2), good = MakeEvent(3);
  // Everything on partition 0 (same key), in this order.
  auto on_p0 = [](kafka::Record r) {
    r.partition = 0;
    r.key = "1001";
    return r;
  };
  fake_.SetFault({.mode = FaultMode::k400, .count = 2});
  Produce(on_p0(RecordFor(rejected)));                   // offset 0: telegram_4xx, attempt 1
  Produce(on_p0(RecordFor(retried_rejected, 3)));        // offset 1: telegram_4xx, attempt 3
  Produce(on_p0({.topic = topic_, .value = "\xff\xff not a protobuf",
                 .headers = {{"traceparent", "00-abc-def-01"}}}));  // offset 2: undecodable
  PaymentCompleted no_id = MakeEvent(4);
  no_id.clear_event_id();
  Produce(on_p0({.topic = topic_, .value = no_id.SerializeAsString()}));  // offset 3: no id
  Produce(on_p0(RecordFor(good)));                                         // offset 4: sent
  auto notifier = StartNotifier(port);

  std::vector<DlqRecord> dlq = ReadDlq(4, absl::Seconds(60));
  ASSERT_EQ(dlq.size(), 4u) << notifier->log_path();
  EXPECT_EQ(dlq[0].value, rejected.SerializeAsString());
  EXPECT_EQ(dlq[0].key, "1001");
  EXPECT_EQ(dlq[0].Header(kafka::kEventIdHeader), rejected.event_id());
  EXPECT_EQ(dlq[0].Header(kafka::kEventTypeHeader), "PaymentCompleted");
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kOriginalTopic), topic_);
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kOriginalPartition), "0");
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kOriginalOffset), "0");
  EXPECT_FALSE(dlq[0].Header(kafka::dlq::kOriginalTimestamp).empty());
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kOriginalTimestampType), "CREATE_TIME");
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kOriginalConsumerGroup), group_);
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kErrorClass), "telegram_4xx");
  EXPECT_TRUE(absl::StrContains(dlq[0].Header(kafka::dlq::kErrorMessage), "400"));
  EXPECT_FALSE(absl::StrContains(dlq[0].Header(kafka::dlq::kErrorMessage), "test-token"));
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kAttempt), "1");

  EXPECT_EQ(dlq[1].Header(kafka::dlq::kErrorClass), "telegram_4xx");
  EXPECT_EQ(dlq[1].Header(kafka::dlq::kAttempt), "3") << "attempt carried forward";
  EXPECT_EQ(dlq[1].Header(kafka::dlq::kOriginalOffset), "1");

  EXPECT_EQ(dlq[2].Header(kafka::dlq::kErrorClass), "poison");
  EXPECT_EQ(dlq[2].Header(kafka::dlq::kErrorMessage), "undecodable payload");
  EXPECT_EQ(dlq[2].Header("traceparent"), "00-abc-def-01");
  EXPECT_EQ(dlq[2].value, "\xff\xff not a protobuf");
  EXPECT_EQ(dlq[3].Header(kafka::dlq::kErrorClass), "poison");
  EXPECT_EQ(dlq[3].Header(kafka::dlq::kErrorMessage), "missing event id");
  EXPECT_EQ(dlq[3].Header(kafka::dlq::kOriginalOffset), "3");

  // The records after them were processed and the offsets moved past all five.
  ASSERT_TRUE(WaitUntil([&] { return fake_.messages().size() == 1; }, absl::Seconds(30)));
  EXPECT_EQ(fake_.messages()[0].text, FormatPaymentMessage(good, Seoul(), MessageLocale::kKorean));
  EXPECT_TRUE(WaitUntil([&] { return CommittedOffset(0) == 5; }, absl::Seconds(20)))
      << CommittedOffset(0);
  EXPECT_EQ(Metric(port, "notifier_dlq_total", "reason=\"poison\""), 2);
  EXPECT_EQ(Metric(port, "notifier_dlq_total", "reason=\"telegram_4xx\""), 2);
  EXPECT_EQ(CountRows("state = 'FAILED'"), 2);

  // The retry-worker re-publishes: the failed event may be sent now; a re-publish of an event
  // already sent is a duplicate, not a second message.
  Produce(on_p0(RecordFor(rejected, 2)));
  Produce(on_p0(RecordFor(good, 2)));
  ASSERT_TRUE(WaitUntil([&] { return Metric(port, "notifier_duplicates_total") == 1; },
                        absl::Seconds(30)));
  ASSERT_EQ(fake_.messages().size(), 2u);
  EXPECT_EQ(fake_.messages()[1].text, FormatPaymentMessage(rejected, Seoul(), MessageLocale::kKorean));
  EXPECT_EQ(CountRows("state = 'SENT'"), 2);
  EXPECT_EQ(CountRows("state = 'FAILED'"), 1);
}

// Headers that name another event or encoding make a record poison, however well its payload
// happens to parse; so does a payload without the fields a message needs.
TEST_F(NotifierTest, ForeignOrIncompleteRecordsArePoisonNotMessages) {
  int port = concert::testing::FreePort();
  auto on_p0 = [](kafka::Record r) {
    r.partition = 0;
    r.key = "2002";
    return r;
  };
  PaymentCompleted refund = MakeEvent(1), json = MakeEvent(2), good = MakeEvent(3);
  kafka::Record other_type = on_p0(RecordFor(refund));
  other_type.headers[1].second = "PaymentRefunded";
  kafka::Record other_encoding = on_p0(RecordFor(json));
  other_encoding.headers[2].second = "application/json";
  PaymentCompleted empty;
  empty.set_event_id(RandomUuid());
  Produce(other_type);
  Produce(other_encoding);
  Produce(on_p0({.topic = topic_, .value = empty.SerializeAsString()}));
  Produce(on_p0(RecordFor(good)));
  auto notifier = StartNotifier(port);

  std::vector<DlqRecord> dlq = ReadDlq(3, absl::Seconds(60));
  ASSERT_EQ(dlq.size(), 3u) << notifier->log_path();
  for (const DlqRecord& r : dlq) EXPECT_EQ(r.Header(kafka::dlq::kErrorClass), "poison");
  EXPECT_TRUE(absl::StrContains(dlq[0].Header(kafka::dlq::kErrorMessage), "PaymentRefunded"));
  EXPECT_TRUE(absl::StrContains(dlq[1].Header(kafka::dlq::kErrorMessage), "application/json"));
  EXPECT_TRUE(absl::StrContains(dlq[2].Header(kafka::dlq::kErrorMessage), "reservation_id"));
  ASSERT_TRUE(WaitUntil([&] { return fake_.messages().size() == 1; }, absl::Seconds(30)));
  EXPECT_EQ(fake_.messages()[0].text, FormatPaymentMessage(good, Seoul(), MessageLocale::kKorean));
  EXPECT_TRUE(WaitUntil([&] { return CommittedOffset(0) == 4; }, absl::Seconds(20)));
}

// A record the DLQ producer cannot take (over its 1 MB message.max.bytes) is set aside by
// reference, and the records behind it go on.
TEST_F(NotifierTest, ARecordTooLargeForTheDlqIsSetAsideByReference) {
  int port = concert::testing::FreePort();
  kafka::Record huge{.topic = topic_, .partition = 1, .key = "3003",
                     .value = std::string(1100 * 1000, 'x')};
  {
    kafka::Config config = kafka::ProducerConfig(bootstrap_, "big");
    config["message.max.bytes"] = "2000000";
    auto big = kafka::Producer::Create(config);
    ASSERT_TRUE(big.ok());
    ASSERT_TRUE((*big)->ProduceAndWait(huge, absl::Seconds(30)).ok());
  }
  PaymentCompleted good = MakeEvent(4);
  kafka::Record after = RecordFor(good);
  after.partition = 1;
  after.key = "3003";
  Produce(after);
  auto notifier = StartNotifier(port);

  std::vector<DlqRecord> dlq = ReadDlq(1, absl::Seconds(60));
  ASSERT_EQ(dlq.size(), 1u) << notifier->log_path();
  EXPECT_TRUE(dlq[0].value.empty());
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kErrorClass), "poison");
  EXPECT_EQ(dlq[0].Header("kafka_dlt-original-value-bytes"), "1100000");
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kOriginalOffset), "0");
  EXPECT_TRUE(absl::StrContains(dlq[0].Header(kafka::dlq::kErrorMessage), "too large"));
  ASSERT_TRUE(WaitUntil([&] { return fake_.messages().size() == 1; }, absl::Seconds(30)))
      << notifier->log_path();
  EXPECT_TRUE(WaitUntil([&] { return CommittedOffset(1) == 2; }, absl::Seconds(20)));
}

// A request that went out and timed out may be in the chat: it is counted and marked uncertain
// before anything sends it again, and its dead letter says so. Never resent in process.
TEST_F(NotifierTest, ATimedOutSendIsCountedUncertainAndNotResentInProcess) {
  int port = concert::testing::FreePort();
  fake_.SetFault({.mode = FaultMode::kStall, .count = 1, .stall = absl::Seconds(3)});
  auto env = Env(port);
  env["TELEGRAM_TIMEOUT"] = "1s";
  ChildProcess notifier(concert::testing::BinaryPath("notifier"), {}, env);
  PaymentCompleted e = MakeEvent(5);
  Produce(RecordFor(e));

  std::vector<DlqRecord> dlq = ReadDlq(1, absl::Seconds(60));
  ASSERT_EQ(dlq.size(), 1u) << notifier.log_path();
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kErrorClass), "timeout");
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kPossiblyDelivered), "true");
  EXPECT_EQ(Metric(port, "notifier_uncertain_total"), 1);
  EXPECT_EQ(CountRows("uncertain AND state = 'FAILED'"), 1);
  // The stalled request lands; nothing else was sent.
  ASSERT_TRUE(WaitUntil([&] { return fake_.messages().size() == 1; }, absl::Seconds(10)));
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(fake_.requests(), 1);
}

// With UNCERTAIN_POLICY=skip the same doubt ends the delivery: SENT (uncertain), no resend.
TEST_F(NotifierTest, ATimedOutSendUnderSkipPolicyIsNeverResent) {
  int port = concert::testing::FreePort();
  fake_.SetFault({.mode = FaultMode::kStall, .count = 1, .stall = absl::Seconds(3)});
  auto env = Env(port);
  env["TELEGRAM_TIMEOUT"] = "1s";
  env["UNCERTAIN_POLICY"] = "skip";
  ChildProcess notifier(concert::testing::BinaryPath("notifier"), {}, env);
  Produce(RecordFor(MakeEvent(6)));
  ASSERT_TRUE(WaitUntil([&] { return CountRows("uncertain AND state = 'SENT'") == 1; },
                        absl::Seconds(60)))
      << notifier.log_path();
  EXPECT_EQ(Metric(port, "notifier_uncertain_total"), 1);
  EXPECT_TRUE(ReadDlq(1, absl::Seconds(3)).empty());
  EXPECT_EQ(fake_.requests(), 1);
}

// A gateway's 504 can come after Telegram delivered the message: it is a doubt like a timeout
// (counted, the row marked, the dead letter says so), never resent in process.
TEST_F(NotifierTest, AGatewayErrorAfterDeliveryIsUncertainAndNotResentInProcess) {
  int port = concert::testing::FreePort();
  fake_.SetFault({.mode = FaultMode::kGateway5xx, .count = 1, .status = 504});
  auto notifier = StartNotifier(port);
  Produce(RecordFor(MakeEvent(7)));

  std::vector<DlqRecord> dlq = ReadDlq(1, absl::Seconds(60));
  ASSERT_EQ(dlq.size(), 1u) << notifier->log_path();
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kErrorClass), "telegram_5xx");
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kPossiblyDelivered), "true");
  EXPECT_EQ(Metric(port, "notifier_uncertain_total"), 1);
  EXPECT_EQ(CountRows("uncertain AND state = 'FAILED'"), 1);
  EXPECT_EQ(fake_.messages().size(), 1u);
  EXPECT_EQ(fake_.requests(), 1);
}

// A notifier frozen between a failed request and its in-process retry (SIGSTOP: a suspended VM,
// a throttled container) past its consumer session: another replica takes the record over,
// sends it and records SENT. Woken, the first must neither send again nor touch the row.
TEST_F(NotifierTest, AFrozenNotifierWakesWithoutUndoingItsSuccessor) {
  int port_a = concert::testing::FreePort(), port_b = concert::testing::FreePort();
  fake_.SetFault({.mode = FaultMode::k5xx, .count = 1, .status = 500});
  auto env_a = Env(port_a);
  env_a["TELEGRAM_RETRY_BACKOFF"] = "2s";  // the retry waits long enough to freeze A in it
  ChildProcess a(concert::testing::BinaryPath("notifier"), {}, env_a);
  PaymentCompleted e = MakeEvent(8);
  Produce(RecordFor(e));
  ASSERT_TRUE(WaitUntil([&] { return fake_.requests() == 1; }, absl::Seconds(60)))
      << a.log_path();
  ASSERT_EQ(kill(a.pid(), SIGSTOP), 0);

  auto env_b = Env(port_b);
  env_b["GRPC_ADDRESS"] = absl::StrCat("127.0.0.1:", concert::testing::FreePort());
  ChildProcess b(concert::testing::BinaryPath("notifier"), {}, env_b);
  // B gets the partition once A's session expired, finds the row SENDING (A's), resends.
  bool taken_over = WaitUntil([&] { return CountRows("state = 'SENT'") == 1; },
                              absl::Seconds(90));
  kill(a.pid(), SIGCONT);
  ASSERT_TRUE(taken_over) << b.log_path();
  EXPECT_EQ(fake_.messages().size(), 1u);

  // A wakes into its retry. Its partition is gone and its send no longer its own.
  bool fenced = WaitUntil(
      [&] { return Metric(port_a, "notifier_stale_total", "stage=\"send\"") >= 1; },
      absl::Seconds(20));
  absl::SleepFor(absl::Seconds(2));
  EXPECT_EQ(fake_.messages().size(), 1u) << "a copy after the successor's confirmed delivery";
  EXPECT_TRUE(fenced) << a.log_path();
  EXPECT_EQ(CountRows("state = 'SENT' AND attempts = 2"), 1);
  EXPECT_TRUE(ReadDlq(1, absl::Seconds(3)).empty());
}

// SIGTERM while hundreds of records wait for one chat's pace: the notifier ends within seconds
// (records no worker started are released, not sent), and a successor delivers every one.
TEST_F(NotifierTest, SigtermWithABacklogForOneChatStopsPromptlyAndLosesNothing) {
  constexpr int kEvents = 300;
  std::vector<PaymentCompleted> events;
  for (int i = 0; i < kEvents; ++i) events.push_back(MakeEvent(100 + i));
  int port = concert::testing::FreePort();
  auto env = Env(port);
  env["TELEGRAM_CHAT_INTERVAL"] = "3s";  // every payer is unlinked: all go to the operator's chat
  env["MAX_PENDING"] = "100";            // and the consumer pauses its partitions
  ChildProcess slow(concert::testing::BinaryPath("notifier"), {}, env);
  ProduceAll(events);
  // Read and waiting (a few go out meanwhile, one per 3 s).
  ASSERT_TRUE(WaitUntil([&] { return Metric(port, "notifier_pending") >= 90; },
                        absl::Seconds(60)))
      << slow.log_path();

  int status = slow.Stop(SIGTERM, absl::Seconds(10));
  ASSERT_NE(status, -1) << "still running 10 s after SIGTERM; " << slow.log_path();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slow.log_path();

  auto successor = StartNotifier(concert::testing::FreePort());
  ASSERT_TRUE(WaitUntil([&] { return AllDelivered(events); }, absl::Seconds(90)))
      << successor->log_path();
  EXPECT_EQ(fake_.messages().size(), static_cast<size_t>(kEvents));
}

// Against a Telegram with its real latency and limits: many sends in flight across
// reservations, each reservation's messages in order, and pacing keeps the limits (no 429).
TEST_F(NotifierTest, ConcurrentSendsKeepEachReservationInOrderAndTelegramsLimits) {
  FakeTelegram::Options options;
  options.profile = concert::testing::Profile::Telegram();
  FakeTelegram telegram(options);
  ASSERT_TRUE(telegram.Start().ok());
  constexpr int kReservations = 12, kPerReservation = 4;
  std::vector<kafka::Record> records;
  std::vector<std::vector<std::string>> texts(kReservations);
  for (int n = 0; n < kPerReservation; ++n) {
    for (int r = 0; r < kReservations; ++r) {
      PaymentCompleted e = MakeEvent(r * 10 + n);
      e.set_reservation_id(9000 + r);
      // A chat per reservation: its messages are paced at 1/s, the others go meanwhile.
      e.set_telegram_chat_id(500 + r);
      texts[r].push_back(FormatPaymentMessage(e, Seoul(), MessageLocale::kKorean));
      records.push_back(RecordFor(e));
    }
  }
  auto env = Env(concert::testing::FreePort());
  env["TELEGRAM_API_BASE"] = telegram.base_url();
  env.erase("TELEGRAM_RATE");
  env.erase("TELEGRAM_CHAT_INTERVAL");
  ChildProcess notifier(concert::testing::BinaryPath("notifier"), {}, env);
  for (auto& r : records) ASSERT_TRUE(producer_->Produce(r, [](const absl::Status&) {}).ok());
  ASSERT_TRUE(producer_->Flush(absl::Seconds(20)).ok());

  ASSERT_TRUE(WaitUntil([&] { return telegram.messages().size() >= records.size(); },
                        absl::Seconds(90)))
      << telegram.messages().size() << " messages; log: " << notifier.log_path();
  for (int r = 0; r < kReservations; ++r) {
    std::vector<std::string> got;
    for (const auto& m : telegram.MessagesTo(std::to_string(500 + r))) got.push_back(m.text);
    EXPECT_EQ(got, texts[r]) << "reservation " << 9000 + r << " out of order or incomplete";
  }
  EXPECT_EQ(telegram.rate_limited().total(), 0) << "pacing let a 429 through";
  EXPECT_GT(telegram.peak_in_flight(), 1) << "one send at a time";
}

TEST_F(NotifierTest, WithoutTokenTheLogSenderWritesJsonLines) {
  std::string file = (std::filesystem::temp_directory_path() /
                      concert::testing::UniqueName("notifications") / "out.jsonl")
                         .string();
  auto env = Env(concert::testing::FreePort());
  env["TELEGRAM_BOT_TOKEN"] = "";
  env["TELEGRAM_CHAT_ID"] = "";
  env["NOTIFICATIONS_FILE"] = file;
  ChildProcess notifier(concert::testing::BinaryPath("notifier"), {}, env);
  PaymentCompleted e = MakeEvent(9);
  Produce(RecordFor(e));
  std::vector<std::string> lines;
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::ifstream in(file);
        lines.clear();
        for (std::string line; std::getline(in, line);) lines.push_back(line);
        return lines.size() == 1;
      },
      absl::Seconds(30)))
      << notifier.log_path();
  auto json = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(json["event_id"], e.event_id());
  EXPECT_EQ(json["text"], FormatPaymentMessage(e, Seoul(), MessageLocale::kKorean));
  EXPECT_TRUE(fake_.messages().empty());
  EXPECT_TRUE(absl::StrContains(notifier.ReadLog(), "notification (log sender)"));
  std::filesystem::remove_all(std::filesystem::path(file).parent_path());
}

// UNLINKED_POLICY unset with a bot token and no TELEGRAM_CHAT_ID: a payer without a linked chat
// is skipped (recorded undeliverable, counted, sent nowhere); a linked payer's message goes out.
TEST_F(NotifierTest, WithABotAndNoOperatorChatUnlinkedPayersAreSkippedByDefault) {
  int metrics_port = concert::testing::FreePort();
  auto env = Env(metrics_port);
  env["TELEGRAM_CHAT_ID"] = "";
  ASSERT_EQ(env.count("UNLINKED_POLICY"), 0u);
  ChildProcess notifier(concert::testing::BinaryPath("notifier"), {}, env);
  PaymentCompleted unlinked = MakeEvent(1);
  PaymentCompleted linked = MakeEvent(2);
  linked.set_telegram_chat_id(5002);
  Produce(RecordFor(unlinked));
  Produce(RecordFor(linked));
  ASSERT_TRUE(WaitUntil(
      [&] {
        return Metric(metrics_port, "notifier_undeliverable_total", "reason=\"no_link\"") == 1 &&
               fake_.MessagesTo("5002").size() == 1;
      },
      absl::Seconds(60)))
      << notifier.log_path();
  EXPECT_EQ(CountRows("state = 'UNDELIVERABLE' AND last_error LIKE '%no linked Telegram chat%'"),
            1);
  absl::SleepFor(absl::Seconds(2));  // a message to any other chat would arrive now
  EXPECT_EQ(fake_.messages().size(), 1u);
}

TEST_F(NotifierTest, BadConfigurationStopsAtStartNamingTheSetting) {
  auto expect_refused = [&](const std::map<std::string, std::string>& changes,
                            const std::string& setting) {
    auto env = Env(concert::testing::FreePort());
    for (const auto& [name, value] : changes) env[name] = value;
    ChildProcess notifier(concert::testing::BinaryPath("notifier"), {}, env);
    ASSERT_TRUE(WaitUntil([&] { return !notifier.running(); }, absl::Seconds(10))) << setting;
    int status = notifier.Stop(SIGTERM);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << setting;
    EXPECT_TRUE(absl::StrContains(notifier.ReadLog(), setting)) << notifier.ReadLog();
    EXPECT_FALSE(absl::StrContains(notifier.ReadLog(), "test-token"));
  };
  // Payers without a chat go to the operator's chat: there must be one.
  expect_refused({{"TELEGRAM_CHAT_ID", ""}, {"UNLINKED_POLICY", "operator"}}, "TELEGRAM_CHAT_ID");
  expect_refused({{"UNLINKED_POLICY", "someone"}}, "UNLINKED_POLICY");
  expect_refused({{"MESSAGE_LOCALE", "fr"}}, "MESSAGE_LOCALE");
  // Polling the bot's updates confirms links at payment-server, which needs the shared secret.
  expect_refused({{"TELEGRAM_UPDATES", "poll"}}, "INTERNAL_TOKEN");
  expect_refused({{"TELEGRAM_UPDATES", "sometimes"}}, "TELEGRAM_UPDATES");
}

// The same tests' tools on a Kafka of its own, which the test stops and starts.
class NotifierKafkaOutageTest : public NotifierTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(kafka_.Start());
    bootstrap_ = kafka_.bootstrap();
    NotifierTest::SetUp();
  }
  concert::testing::PrivateKafka kafka_;
};

// A dead letter produced while Kafka is down waits for its one copy's delivery report; it is
// never queued again beside it (which became duplicate dead letters once Kafka came back).
// notifier_kafka_up says what happened meanwhile.
TEST_F(NotifierKafkaOutageTest, ADeadLetterWaitsForKafkaAsOneCopy) {
  // Every answer comes after 4 s and is a 400: Kafka goes down while the send is out.
  FakeTelegram::Options options;
  options.profile.latency_median = absl::Seconds(4);
  FakeTelegram telegram(options);
  ASSERT_TRUE(telegram.Start().ok());
  telegram.SetFault({.mode = FaultMode::k400});
  int metrics_port = concert::testing::FreePort();
  auto env = Env(metrics_port);
  env["TELEGRAM_API_BASE"] = telegram.base_url();
  ChildProcess notifier(concert::testing::BinaryPath("notifier"), {}, env);
  PaymentCompleted e = MakeEvent(7);
  Produce(RecordFor(e));
  ASSERT_TRUE(WaitUntil([&] { return telegram.requests() >= 1; }, absl::Seconds(60)))
      << notifier.log_path();
  EXPECT_EQ(Metric(metrics_port, "notifier_kafka_up"), 1);
  EXPECT_EQ(Metric(metrics_port, "notifier_postgres_up"), 1);
  ASSERT_TRUE(kafka_.Stop());
  // Longer than any wait for one acknowledgement the notifier ever had (10 s), twice over.
  absl::Time back_at = absl::Now() + absl::Seconds(25);
  EXPECT_TRUE(WaitUntil([&] { return Metric(metrics_port, "notifier_kafka_up") == 0; },
                        absl::Seconds(20)))
      << "the notifier did not say Kafka is away";
  absl::SleepFor(back_at - absl::Now());
  ASSERT_TRUE(kafka_.Start());
  EXPECT_TRUE(WaitUntil([&] { return Metric(metrics_port, "notifier_kafka_up") == 1; },
                        absl::Seconds(60)));

  std::vector<DlqRecord> dlq = ReadDlq(3, absl::Seconds(30));
  ASSERT_GE(dlq.size(), 1u) << notifier.log_path();
  EXPECT_EQ(dlq.size(), 1u) << "duplicate dead letters";
  EXPECT_EQ(dlq[0].Header(kafka::dlq::kErrorClass), "telegram_4xx");
  EXPECT_EQ(telegram.requests(), 1);
}

}  // namespace
}  // namespace concert::notifier
