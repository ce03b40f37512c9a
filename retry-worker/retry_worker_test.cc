// The retry-worker against the real local Kafka broker and Postgres, run in-process: DLQ records
// written here the way the notifier writes them, re-published records read back from the
// original topic, rows read from retry.failed_messages, the admin API over a real gRPC channel.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>
#include <pqxx/pqxx>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/kafka/admin.h"
#include "common/kafka/cluster.h"
#include "common/kafka/headers.h"
#include "common/kafka/producer.h"
#include "common/testing/environment.h"
#include "common/testing/jwt_issuer.h"
#include "concert/ops/v1/failed_messages.grpc.pb.h"
#include "retry-worker/worker.h"

namespace concert::retry {
namespace {

using ::concert::testing::KafkaBootstrap;
using ::concert::testing::ScratchDatabase;
using ::concert::testing::UniqueName;
using ::concert::testing::WaitUntil;
namespace ops = ::concert::ops::v1;

constexpr char kToken[] = "test-admin-token";

struct ReadRecord {
  std::string key, value;
  std::map<std::string, std::string> headers;
  kafka::Headers ordered_headers;  // as on the wire: order and duplicates kept
};

// Every record on `topic`, read by a fresh group: keeps reading until at least `expected` came
// and then `quiet` more passed without new ones (to catch duplicates), or `timeout`.
std::vector<ReadRecord> ReadTopic(const std::string& bootstrap, const std::string& topic,
                                  size_t expected, absl::Duration timeout,
                                  absl::Duration quiet = absl::Seconds(2)) {
  auto conf = kafka::MakeConf(kafka::ConsumerConfig(bootstrap, UniqueName("reader"), "test"));
  std::string error;
  std::unique_ptr<RdKafka::KafkaConsumer> consumer(RdKafka::KafkaConsumer::create(conf->get(), error));
  EXPECT_NE(consumer, nullptr) << error;
  consumer->subscribe({topic});
  std::vector<ReadRecord> out;
  absl::Time deadline = absl::Now() + timeout;
  absl::Time quiet_until = absl::InfiniteFuture();
  while (absl::Now() < deadline && absl::Now() < quiet_until) {
    std::unique_ptr<RdKafka::Message> m(consumer->consume(200));
    if (m->err() != RdKafka::ERR_NO_ERROR) continue;
    ReadRecord r;
    if (m->key()) r.key = *m->key();
    r.value.assign(static_cast<const char*>(m->payload()), m->len());
    r.ordered_headers = kafka::AllHeaders(*m);
    for (auto& [k, v] : r.ordered_headers) r.headers[k] = v;
    out.push_back(std::move(r));
    if (out.size() >= expected) quiet_until = absl::Now() + quiet;
  }
  if (out.size() >= expected && quiet_until == absl::InfiniteFuture()) {
    quiet_until = absl::Now() + quiet;
  }
  consumer->close();
  return out;
}

std::map<std::string, int> CountByEvent(const std::vector<ReadRecord>& records) {
  std::map<std::string, int> counts;
  for (const ReadRecord& r : records) ++counts[r.headers.count("event_id") ? r.headers.at("event_id") : ""];
  return counts;
}

// Replaces the value of every header `name` of `r` (adds one when there is none).
void SetHeader(kafka::Record& r, const std::string& name, const std::string& value) {
  bool found = false;
  for (auto& [n, v] : r.headers) {
    if (n == name) v = value, found = true;
  }
  if (!found) r.headers.emplace_back(name, value);
}

void RemoveHeader(kafka::Record& r, const std::string& name) {
  r.headers.erase(std::remove_if(r.headers.begin(), r.headers.end(),
                                 [&](const auto& h) { return h.first == name; }),
                  r.headers.end());
}

// The value of an unlabelled sample, -1 when absent.
double MetricValue(metrics::Registry& registry, const std::string& name) {
  std::string text = "\n" + registry.Render();
  size_t at = text.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + name.size() + 2));
}

class RetryWorkerTest : public ::testing::Test {
 protected:
  RetryWorkerTest() : db_("retry") {
    dlq_ = UniqueName("dlq");
    original_ = UniqueName("completed");
    EXPECT_TRUE(kafka::EnsureTopics(KafkaBootstrap(), {{original_, 3}, {dlq_, 1}}).ok());
    auto producer = kafka::Producer::Create(kafka::ProducerConfig(KafkaBootstrap(), "test"));
    EXPECT_TRUE(producer.ok());
    producer_ = std::move(*producer);
  }

  Options BaseOptions(const std::string& bootstrap) {
    Options o;
    o.database_url = db_.url();
    o.kafka = bootstrap;
    o.group_id = group_;
    o.dlq_topic = dlq_;
    o.admin_token = kToken;
    o.interval = absl::Milliseconds(300);
    o.max_attempts = 3;
    o.backoff_base = absl::Milliseconds(200);
    o.backoff_cap = absl::Seconds(1);
    o.backoff_jitter_percent = 0;
    o.publish_timeout = absl::Seconds(3);
    o.grpc_address = "127.0.0.1:0";
    o.metrics_address = "127.0.0.1:0";
    return o;
  }
  Options DefaultOptions() { return BaseOptions(KafkaBootstrap()); }

  std::unique_ptr<RetryWorker> StartWorker(const Options& o) {
    auto w = std::make_unique<RetryWorker>(o);
    absl::Status s = w->Start();
    EXPECT_TRUE(s.ok()) << s;
    return w;
  }

  // A DLQ record as the notifier writes it.
  kafka::Record DlqRecord(const std::string& event_id, int attempt,
                          const std::string& error_class = "telegram_5xx",
                          const std::string& error_message = "503 from Telegram") {
    kafka::Record r{.topic = dlq_, .key = "res-" + event_id, .value = "payload-" + event_id};
    if (!event_id.empty()) r.headers.emplace_back("event_id", event_id);
    r.headers.emplace_back("event_type", "PaymentCompleted");
    r.headers.emplace_back("content-type", "application/x-protobuf");
    r.headers.emplace_back("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    r.headers.emplace_back(kafka::dlq::kOriginalTopic, original_);
    r.headers.emplace_back(kafka::dlq::kOriginalPartition, "2");
    r.headers.emplace_back(kafka::dlq::kOriginalOffset, std::to_string(100 + attempt));
    r.headers.emplace_back(kafka::dlq::kOriginalTimestamp, "1764000000000");
    r.headers.emplace_back(kafka::dlq::kOriginalTimestampType, "CreateTime");
    r.headers.emplace_back(kafka::dlq::kOriginalConsumerGroup, "notification-group");
    r.headers.emplace_back(kafka::dlq::kErrorClass, error_class);
    r.headers.emplace_back(kafka::dlq::kErrorMessage, error_message);
    r.headers.emplace_back(kafka::dlq::kAttempt, std::to_string(attempt));
    return r;
  }
  void Produce(kafka::Record r, const std::string& bootstrap = "") {
    kafka::Producer* p = producer_.get();
    std::unique_ptr<kafka::Producer> other;
    if (!bootstrap.empty()) {
      other = std::move(*kafka::Producer::Create(kafka::ProducerConfig(bootstrap, "test")));
      p = other.get();
    }
    absl::Status s = p->ProduceAndWait(std::move(r), absl::Seconds(30));
    ASSERT_TRUE(s.ok()) << s;
  }
  void ProduceDlq(const std::string& event_id, int attempt,
                  const std::string& error_class = "telegram_5xx",
                  const std::string& error_message = "503 from Telegram",
                  const std::string& bootstrap = "") {
    Produce(DlqRecord(event_id, attempt, error_class, error_message), bootstrap);
  }

  // One column of the row for `event_id` ("" when there is none).
  std::string Column(const std::string& event_id, const std::string& column) {
    pqxx::connection c(db_.url());
    pqxx::work tx(c);
    pqxx::result r = tx.exec_params(
        absl::StrCat("SELECT (", column, ")::text FROM retry.failed_messages WHERE event_id = $1"),
        event_id);
    if (r.empty() || r[0][0].is_null()) return "";
    return r[0][0].as<std::string>();
  }
  int64_t Scalar(const std::string& sql) {
    pqxx::connection c(db_.url());
    pqxx::work tx(c);
    return tx.exec1(sql)[0].as<int64_t>();
  }
  bool StatusIs(const std::string& event_id, const std::string& status,
                absl::Duration timeout = absl::Seconds(30)) {
    return WaitUntil([&] { return Column(event_id, "status") == status; }, timeout);
  }

  std::unique_ptr<ops::FailedMessageService::Stub> Admin(RetryWorker& w) {
    return ops::FailedMessageService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", w.grpc_port()), grpc::InsecureChannelCredentials()));
  }
  static void Authorize(grpc::ClientContext& ctx, const std::string& token = kToken) {
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", token));
  }

  ScratchDatabase db_;
  std::string dlq_, original_;
  std::string group_ = UniqueName("retry-group");
  std::unique_ptr<kafka::Producer> producer_;
};

TEST_F(RetryWorkerTest, DlqRecordBecomesOneRowThatAccumulatesAttempts) {
  Options o = DefaultOptions();
  o.backoff_base = absl::Hours(1);  // nothing gets re-published during this test
  o.backoff_cap = absl::Hours(1);
  auto worker = StartWorker(o);

  ProduceDlq("ev-1", 1, "telegram_5xx", "503 first");
  ASSERT_TRUE(StatusIs("ev-1", "PENDING"));
  EXPECT_EQ(Column("ev-1", "original_topic"), original_);
  EXPECT_EQ(Column("ev-1", "original_partition"), "2");
  EXPECT_EQ(Column("ev-1", "original_offset"), "101");
  EXPECT_EQ(Column("ev-1", "consumer_group"), "notification-group");
  EXPECT_EQ(Column("ev-1", "convert_from(key, 'UTF8')"), "res-ev-1");
  EXPECT_EQ(Column("ev-1", "convert_from(payload, 'UTF8')"), "payload-ev-1");
  EXPECT_EQ(Column("ev-1", "headers->>'event_id'"), "ev-1");
  EXPECT_EQ(Column("ev-1", "headers->>'traceparent'"),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  EXPECT_EQ(Column("ev-1", "headers->>'content-type'"), "application/x-protobuf");
  EXPECT_EQ(Column("ev-1", "headers ? 'kafka_dlt-original-topic'"), "false");
  EXPECT_EQ(Column("ev-1", "headers ? 'retry_topic-attempts'"), "false");
  EXPECT_EQ(Column("ev-1", "error_class"), "telegram_5xx");
  EXPECT_EQ(Column("ev-1", "error_message"), "503 first");
  EXPECT_EQ(Column("ev-1", "attempts"), "1");
  EXPECT_EQ(Column("ev-1", "next_attempt_at > now() + interval '50 minutes'"), "true");

  ProduceDlq("ev-1", 2, "timeout", "no answer in 10s");
  ASSERT_TRUE(WaitUntil([&] { return Column("ev-1", "attempts") == "2"; }, absl::Seconds(30)));
  EXPECT_EQ(Column("ev-1", "error_class"), "timeout");
  EXPECT_EQ(Column("ev-1", "error_message"), "no answer in 10s");
  EXPECT_EQ(Column("ev-1", "status"), "PENDING");
  // A redelivered older record changes nothing.
  ProduceDlq("ev-1", 1, "telegram_5xx", "stale");
  ProduceDlq("ev-2", 1);  // a marker: once it is stored, the stale one was processed too
  ASSERT_TRUE(StatusIs("ev-2", "PENDING"));
  EXPECT_EQ(Column("ev-1", "error_message"), "no answer in 10s");
  EXPECT_EQ(Scalar("SELECT count(*) FROM retry.failed_messages WHERE event_id = 'ev-1'"), 1);
}

TEST_F(RetryWorkerTest, RepublishesToTheOriginalTopicWithTheNextAttempt) {
  auto worker = StartWorker(DefaultOptions());
  ProduceDlq("ev-1", 1);
  ASSERT_TRUE(StatusIs("ev-1", "PROCESSED"));
  EXPECT_NE(Column("ev-1", "last_retry_at"), "");
  EXPECT_EQ(Column("ev-1", "attempts"), "1");

  std::vector<ReadRecord> records = ReadTopic(KafkaBootstrap(), original_, 1, absl::Seconds(30));
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].key, "res-ev-1");
  EXPECT_EQ(records[0].value, "payload-ev-1");
  EXPECT_EQ(records[0].headers["event_id"], "ev-1");
  EXPECT_EQ(records[0].headers["event_type"], "PaymentCompleted");
  EXPECT_EQ(records[0].headers["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  EXPECT_EQ(records[0].headers[kafka::dlq::kAttempt], "2");
  for (const auto& [name, value] : records[0].headers) {
    EXPECT_FALSE(absl::StartsWith(name, "kafka_dlt-")) << name;
  }
  EXPECT_EQ(MetricValue(worker->registry(), "retry_republished_total"), 1);

  // The re-published attempt 2 failed too: the row is re-armed and goes out as attempt 3.
  ProduceDlq("ev-1", 2);
  ASSERT_TRUE(WaitUntil([&] { return Column("ev-1", "attempts") == "2" &&
                                     Column("ev-1", "status") == "PROCESSED"; },
                        absl::Seconds(30)));
  records = ReadTopic(KafkaBootstrap(), original_, 2, absl::Seconds(30));
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1].headers[kafka::dlq::kAttempt], "3");
}

TEST_F(RetryWorkerTest, LastAttemptAndPoisonAreParkedAndNeverRepublished) {
  auto worker = StartWorker(DefaultOptions());
  ProduceDlq("ev-last", 3);  // RETRY_MAX_ATTEMPTS = 3: this was the last attempt
  ProduceDlq("", 1, "poison", "cannot parse PaymentCompleted");
  std::string poison_id = absl::StrCat("poison:", original_, ":2:101");
  ASSERT_TRUE(StatusIs("ev-last", "FAILED"));
  ASSERT_TRUE(StatusIs(poison_id, "FAILED"));
  EXPECT_TRUE(absl::StrContains(Column(poison_id, "operator_note"), "poison"));
  EXPECT_EQ(Column(poison_id, "error_class"), "poison");

  absl::SleepFor(absl::Milliseconds(300) * 8);  // several scheduler passes
  EXPECT_EQ(Column("ev-last", "status"), "FAILED");
  EXPECT_TRUE(ReadTopic(KafkaBootstrap(), original_, 1, absl::Seconds(3)).empty());
  std::string metrics = worker->registry().Render();
  EXPECT_EQ(MetricValue(worker->registry(), "retry_parked_total"), 2) << metrics;
  EXPECT_NE(metrics.find("retry_messages{status=\"FAILED\"} 2"), std::string::npos) << metrics;
}

TEST_F(RetryWorkerTest, AdminApiListsGetsRetriesAndDiscards) {
  Options o = DefaultOptions();
  auto worker = StartWorker(o);
  // Three parked rows (their last attempt failed).
  for (int i = 1; i <= 3; ++i) ProduceDlq(absl::StrCat("parked-", i), 3);
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(StatusIs(absl::StrCat("parked-", i), "FAILED"));
  auto admin = Admin(*worker);

  {  // No token, wrong token: UNAUTHENTICATED.
    grpc::ClientContext ctx;
    ops::ListFailedMessagesResponse resp;
    EXPECT_EQ(admin->List(&ctx, {}, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    grpc::ClientContext bad;
    Authorize(bad, "wrong");
    EXPECT_EQ(admin->List(&bad, {}, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  // List FAILED, newest first, two per page.
  ops::ListFailedMessagesRequest req;
  req.set_status(ops::FAILED_MESSAGE_STATUS_FAILED);
  req.set_page_size(2);
  ops::ListFailedMessagesResponse page1, page2;
  {
    grpc::ClientContext ctx;
    Authorize(ctx);
    ASSERT_TRUE(admin->List(&ctx, req, &page1).ok());
  }
  ASSERT_EQ(page1.messages_size(), 2);
  EXPECT_EQ(page1.messages(0).event_id(), "parked-3");
  EXPECT_EQ(page1.messages(1).event_id(), "parked-2");
  EXPECT_EQ(page1.messages(0).attempts(), 3);
  EXPECT_EQ(page1.messages(0).headers().at("event_id"), "parked-3");
  ASSERT_FALSE(page1.next_page_token().empty());
  req.set_page_token(page1.next_page_token());
  {
    grpc::ClientContext ctx;
    Authorize(ctx);
    ASSERT_TRUE(admin->List(&ctx, req, &page2).ok());
  }
  ASSERT_EQ(page2.messages_size(), 1);
  EXPECT_EQ(page2.messages(0).event_id(), "parked-1");
  EXPECT_TRUE(page2.next_page_token().empty());
  {
    grpc::ClientContext ctx;
    Authorize(ctx);
    ops::ListFailedMessagesRequest pending;
    pending.set_status(ops::FAILED_MESSAGE_STATUS_PENDING);
    ops::ListFailedMessagesResponse none;
    ASSERT_TRUE(admin->List(&ctx, pending, &none).ok());
    EXPECT_EQ(none.messages_size(), 0);
  }
  {
    grpc::ClientContext ctx;
    Authorize(ctx);
    ops::ListFailedMessagesRequest bad_token;
    bad_token.set_page_token("garbage");
    ops::ListFailedMessagesResponse resp;
    EXPECT_EQ(admin->List(&ctx, bad_token, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }

  int64_t id1 = page2.messages(0).id();
  {  // Get, and Get of an unknown id.
    grpc::ClientContext ctx;
    Authorize(ctx);
    ops::GetFailedMessageRequest get;
    get.set_id(id1);
    ops::FailedMessage m;
    ASSERT_TRUE(admin->Get(&ctx, get, &m).ok());
    EXPECT_EQ(m.event_id(), "parked-1");
    EXPECT_EQ(m.status(), ops::FAILED_MESSAGE_STATUS_FAILED);
    EXPECT_EQ(m.key(), "res-parked-1");
    EXPECT_EQ(m.original_topic(), original_);
    grpc::ClientContext ctx2;
    Authorize(ctx2);
    get.set_id(999999);
    EXPECT_EQ(admin->Get(&ctx2, get, &m).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {  // Retry of a FAILED row: delivered once more, as attempt 4, recorded.
    grpc::ClientContext ctx;
    Authorize(ctx);
    ops::RetryFailedMessageRequest retry;
    retry.set_id(id1);
    retry.set_reason("telegram fixed");
    ops::FailedMessage m;
    ASSERT_TRUE(admin->Retry(&ctx, retry, &m).ok());
    EXPECT_EQ(m.status(), ops::FAILED_MESSAGE_STATUS_PENDING);
    EXPECT_TRUE(absl::StrContains(m.operator_note(), "telegram fixed"));
  }
  ASSERT_TRUE(StatusIs("parked-1", "PROCESSED"));
  std::vector<ReadRecord> records = ReadTopic(KafkaBootstrap(), original_, 1, absl::Seconds(30));
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].headers["event_id"], "parked-1");
  EXPECT_EQ(records[0].headers[kafka::dlq::kAttempt], "4");
  EXPECT_EQ(Scalar(absl::StrCat("SELECT count(*) FROM retry.operator_actions WHERE message_id = ",
                                id1, " AND action = 'RETRY' AND reason = 'telegram fixed'")),
            1);
  // That one more attempt failed too: parked again, not re-published by itself.
  ProduceDlq("parked-1", 4);
  ASSERT_TRUE(StatusIs("parked-1", "FAILED"));
  EXPECT_EQ(Column("parked-1", "attempts"), "4");

  {  // Retry of a row that is not FAILED: FAILED_PRECONDITION.
    ProduceDlq("pending-1", 1);
    ASSERT_TRUE(StatusIs("pending-1", "PROCESSED"));
    grpc::ClientContext ctx;
    Authorize(ctx);
    ops::RetryFailedMessageRequest retry;
    retry.set_id(std::stoll(Column("pending-1", "id")));
    ops::FailedMessage m;
    EXPECT_EQ(admin->Retry(&ctx, retry, &m).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  int64_t id2 = page1.messages(1).id();
  {  // Discard a FAILED row: recorded; twice: FAILED_PRECONDITION; unknown id: NOT_FOUND.
    grpc::ClientContext ctx;
    Authorize(ctx);
    ops::DiscardFailedMessageRequest discard;
    discard.set_id(id2);
    discard.set_reason("customer refunded");
    ops::FailedMessage m;
    ASSERT_TRUE(admin->Discard(&ctx, discard, &m).ok());
    EXPECT_EQ(m.status(), ops::FAILED_MESSAGE_STATUS_DISCARDED);
    grpc::ClientContext again;
    Authorize(again);
    EXPECT_EQ(admin->Discard(&again, discard, &m).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
    grpc::ClientContext missing;
    Authorize(missing);
    discard.set_id(999999);
    EXPECT_EQ(admin->Discard(&missing, discard, &m).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  EXPECT_EQ(Column("parked-2", "status"), "DISCARDED");
  EXPECT_EQ(Scalar(absl::StrCat("SELECT count(*) FROM retry.operator_actions WHERE message_id = ",
                                id2, " AND action = 'DISCARD' AND reason = 'customer refunded'")),
            1);
  // A later failure of a discarded event does not bring it back.
  ProduceDlq("parked-2", 5);
  ASSERT_TRUE(WaitUntil([&] { return Column("parked-2", "attempts") == "5"; }, absl::Seconds(30)));
  EXPECT_EQ(Column("parked-2", "status"), "DISCARDED");
}

TEST_F(RetryWorkerTest, KafkaDownDuringAPassLeavesRowsPendingUntilItIsBack) {
  concert::testing::PrivateKafka kafka;
  std::string bootstrap = kafka.bootstrap();
  ASSERT_TRUE(kafka::EnsureTopics(bootstrap, {{original_, 3}, {dlq_, 1}}).ok());
  Options o = BaseOptions(bootstrap);
  o.backoff_base = absl::Seconds(6);  // due after Kafka has been stopped
  o.backoff_cap = absl::Seconds(6);
  o.publish_timeout = absl::Seconds(2);
  auto worker = StartWorker(o);
  for (int i = 1; i <= 3; ++i) ProduceDlq(absl::StrCat("down-", i), 1, "timeout", "slow", bootstrap);
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(StatusIs(absl::StrCat("down-", i), "PENDING"));
  ASSERT_TRUE(kafka.Stop());

  // The due rows were tried and not acknowledged.
  ASSERT_TRUE(WaitUntil([&] {
    return MetricValue(worker->registry(), "retry_publish_errors_total") > 0;
  }, absl::Seconds(60)));
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(Column(absl::StrCat("down-", i), "status"), "PENDING");
    EXPECT_EQ(Column(absl::StrCat("down-", i), "attempts"), "1");
  }

  ASSERT_TRUE(kafka.Start());
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(StatusIs(absl::StrCat("down-", i), "PROCESSED", absl::Seconds(120)));
  std::map<std::string, int> counts = CountByEvent(ReadTopic(bootstrap, original_, 3, absl::Seconds(60)));
  EXPECT_EQ(counts, (std::map<std::string, int>{{"down-1", 1}, {"down-2", 1}, {"down-3", 1}}));
  worker->Stop();
}

TEST_F(RetryWorkerTest, TwoWorkersNeverPublishOneAttemptTwice) {
  Options o = DefaultOptions();
  o.interval = absl::Milliseconds(50);
  o.batch = 5;
  Options o2 = o;
  auto first = StartWorker(o);
  auto second = StartWorker(o2);
  constexpr int kEvents = 40;
  for (int i = 0; i < kEvents; ++i) ProduceDlq(absl::StrCat("two-", i), 1);
  ASSERT_TRUE(WaitUntil([&] {
    return Scalar("SELECT count(*) FROM retry.failed_messages WHERE status = 'PROCESSED'") == kEvents;
  }, absl::Seconds(60)));
  std::map<std::string, int> counts = CountByEvent(ReadTopic(KafkaBootstrap(), original_, kEvents, absl::Seconds(60)));
  EXPECT_EQ(counts.size(), static_cast<size_t>(kEvents));
  for (const auto& [event, n] : counts) EXPECT_EQ(n, 1) << event;
  // Both took part (batch 5, passes every 50 ms): otherwise the test proves nothing.
  double a = MetricValue(first->registry(), "retry_republished_total");
  double b = MetricValue(second->registry(), "retry_republished_total");
  EXPECT_EQ(a + b, kEvents);
  EXPECT_GT(a, 0);
  EXPECT_GT(b, 0);
}

// Issue 12: header names and values are bytes. Ones that are not UTF-8 (or hold a NUL) are
// stored, shown by the admin API, and re-published byte for byte, in order, duplicates kept;
// and the records after them are stored too. (librdkafka's C++ API takes header names as C
// strings, so a NUL can only be tested in values.)
TEST_F(RetryWorkerTest, HeadersThatAreNotUtf8AreStoredAndRepublishedByteForByte) {
  auto worker = StartWorker(DefaultOptions());
  const std::string kBinary("\xff\xfe\x00z", 4);
  kafka::Record binary =
      DlqRecord("ev-bytes", 1, "telegram_5xx", std::string("boom \xff\x00 end", 11));
  binary.headers.insert(binary.headers.begin() + 4, {{"x-bin", kBinary},
                                                     {"x-dup", "1"},
                                                     {"x-dup", "2"},
                                                     {"n\xff" "me", "v"}});
  SetHeader(binary, kafka::dlq::kOriginalConsumerGroup, "group-\xc3");
  Produce(binary);
  // An event id that is no text at all, on a record parked at once (its last attempt).
  const std::string kOddId("ev-\xff\x00-odd", 9);
  Produce(DlqRecord(kOddId, 3));
  ProduceDlq("ev-after", 3);

  ASSERT_TRUE(StatusIs("ev-after", "FAILED")) << "the consumer stopped at a record before";
  ASSERT_TRUE(StatusIs("ev-bytes", "PROCESSED"));
  EXPECT_EQ(Scalar("SELECT count(*) FROM retry.failed_messages"), 3);
  std::vector<ReadRecord> records = ReadTopic(KafkaBootstrap(), original_, 1, absl::Seconds(30));
  ASSERT_EQ(records.size(), 1u);
  kafka::Headers expected;
  for (const auto& [name, value] : binary.headers) {
    if (!absl::StartsWith(name, "kafka_dlt-") && name != kafka::dlq::kAttempt) {
      expected.emplace_back(name, value);
    }
  }
  expected.emplace_back(kafka::dlq::kAttempt, "2");
  EXPECT_EQ(records[0].ordered_headers, expected);

  // The admin API answers for every row (its string fields must be valid UTF-8).
  auto admin = Admin(*worker);
  grpc::ClientContext ctx;
  Authorize(ctx);
  ops::ListFailedMessagesResponse all;
  grpc::Status listed = admin->List(&ctx, {}, &all);
  ASSERT_TRUE(listed.ok()) << listed.error_message();
  ASSERT_EQ(all.messages_size(), 3);
  EXPECT_EQ(all.messages(1).event_id(), "ev-\\xff\\x00-odd");
  EXPECT_EQ(all.messages(2).error_message(), "boom \\xff\\x00 end");
  kafka::Headers raw;
  for (const ops::Header& h : all.messages(2).raw_headers()) raw.emplace_back(h.name(), h.value());
  expected.pop_back();  // the attempt header is the re-publish's own
  EXPECT_EQ(raw, expected);
}

// Issue 12: a record Postgres rejects for what it holds is parked with the reason and the
// consumer goes on; the stage stays healthy.
TEST_F(RetryWorkerTest, UnstorableRecordIsParkedWithItsReasonAndTheConsumerGoesOn) {
  auto worker = StartWorker(DefaultOptions());
  {
    pqxx::connection c(db_.url());
    pqxx::work tx(c);
    tx.exec(R"sql(
CREATE FUNCTION retry.reject_for_test() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.event_id = 'ev-unstorable' THEN RAISE EXCEPTION 'rejected by the test trigger'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER reject_for_test BEFORE INSERT OR UPDATE ON retry.failed_messages
  FOR EACH ROW EXECUTE FUNCTION retry.reject_for_test();)sql");
    tx.commit();
  }
  ProduceDlq("ev-unstorable", 1);
  ProduceDlq("ev-after", 3);
  ASSERT_TRUE(StatusIs("ev-after", "FAILED")) << "the consumer stopped at the unstorable record";
  std::string parked_id = absl::StrCat("unstorable:", dlq_, ":0:0");
  EXPECT_EQ(Column(parked_id, "status"), "FAILED");
  EXPECT_EQ(Column(parked_id, "error_class"), "unstorable");
  EXPECT_TRUE(absl::StrContains(Column(parked_id, "error_message"), "rejected by the test trigger"))
      << Column(parked_id, "error_message");
  EXPECT_EQ(Column(parked_id, "convert_from(payload, 'UTF8')"), "payload-ev-unstorable");
  EXPECT_EQ(MetricValue(worker->registry(), "retry_dlq_unstorable_total"), 1);
  EXPECT_EQ(concert::testing::HealthStatus(absl::StrCat("127.0.0.1:", worker->grpc_port())), 1);
}

// A Postgres that answers but cannot serve (disk full, read-only after a failover, out of
// connections) is a stage failure too: the dead letter waits and is then stored as it came,
// never parked as unstorable.
TEST_F(RetryWorkerTest, PostgresThatCannotServeIsWaitedForNotBlamedOnTheRecord) {
  auto worker = StartWorker(DefaultOptions());
  std::string address = absl::StrCat("127.0.0.1:", worker->grpc_port());
  {
    pqxx::connection c(db_.url());
    pqxx::work tx(c);
    tx.exec(R"sql(
CREATE TABLE retry.refusal_for_test (sqlstate text NOT NULL);
CREATE FUNCTION retry.refuse_for_test() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE state text;
BEGIN
  SELECT sqlstate INTO state FROM retry.refusal_for_test;
  IF state IS NOT NULL THEN RAISE EXCEPTION 'server cannot serve' USING ERRCODE = state; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_for_test BEFORE INSERT OR UPDATE ON retry.failed_messages
  FOR EACH ROW EXECUTE FUNCTION retry.refuse_for_test();)sql");
    tx.commit();
  }
  auto refuse = [&](const std::string& sqlstate) {
    pqxx::connection c(db_.url());
    pqxx::work tx(c);
    tx.exec("DELETE FROM retry.refusal_for_test");
    if (!sqlstate.empty()) {
      tx.exec_params("INSERT INTO retry.refusal_for_test VALUES ($1)", sqlstate);
    }
    tx.commit();
  };
  // disk full, too many connections, read-only transaction
  for (const std::string sqlstate : {"53100", "53300", "25006"}) {
    SCOPED_TRACE(sqlstate);
    std::string id = "ev-" + sqlstate;
    refuse(sqlstate);
    ProduceDlq(id, 1);
    EXPECT_TRUE(WaitUntil([&] { return concert::testing::HealthStatus(address) == 2; },
                          absl::Seconds(30)));
    refuse("");
    ASSERT_TRUE(WaitUntil([&] { return !Column(id, "status").empty(); }, absl::Seconds(30)));
    EXPECT_EQ(Column(id, "original_topic"), original_);
    EXPECT_EQ(Column(id, "error_class"), "telegram_5xx");
  }
  EXPECT_EQ(Scalar("SELECT count(*) FROM retry.failed_messages WHERE event_id LIKE 'unstorable:%'"),
            0);
  EXPECT_EQ(MetricValue(worker->registry(), "retry_dlq_unstorable_total"), 0);
}

// Issue 12: Postgres down is a stage failure: the consumer waits (nothing skipped) and health
// says NOT_SERVING until it is back, whatever the scheduler's last pass saw.
TEST_F(RetryWorkerTest, PostgresDownMakesTheConsumerWaitAndHealthNotServing) {
  concert::testing::PrivatePostgres postgres;
  Options o = DefaultOptions();
  o.database_url = postgres.url();
  o.interval = absl::Hours(1);  // one scheduler pass, at start: health is the consumer's
  auto worker = StartWorker(o);
  std::string address = absl::StrCat("127.0.0.1:", worker->grpc_port());
  ASSERT_TRUE(WaitUntil([&] { return concert::testing::HealthStatus(address) == 1; },
                        absl::Seconds(10)));
  ASSERT_TRUE(postgres.Stop());
  ProduceDlq("ev-while-down", 3);
  EXPECT_TRUE(WaitUntil([&] { return concert::testing::HealthStatus(address) == 2; },
                        absl::Seconds(60)));
  ASSERT_TRUE(postgres.Start());
  EXPECT_TRUE(WaitUntil([&] { return concert::testing::HealthStatus(address) == 1; },
                        absl::Seconds(60)));
  EXPECT_TRUE(WaitUntil([&] {
    pqxx::connection c(postgres.url());
    pqxx::work tx(c);
    return tx.exec("SELECT 1 FROM retry.failed_messages WHERE event_id = 'ev-while-down'")
               .size() == 1;
  }, absl::Seconds(30))) << "the record was skipped";
}

// Issue 27: the counters the alerts and the dashboard read exist at 0 from the start, also
// while Postgres keeps the worker from connecting: increase() never sees the first event of a
// series that appears with it.
TEST_F(RetryWorkerTest, CountersExistAtZeroBeforePostgresIsReached) {
  Options o = DefaultOptions();
  o.database_url =
      absl::StrCat("postgresql://concert:concert@127.0.0.1:", concert::testing::FreePort(), "/x");
  RetryWorker worker(o);
  EXPECT_FALSE(worker.Start().ok());
  ASSERT_TRUE(worker.serving());
  for (const char* name : {"retry_dlq_records_total", "retry_dlq_store_errors_total",
                           "retry_dlq_unstorable_total", "retry_republished_total",
                           "retry_publish_errors_total", "retry_parked_total"}) {
    EXPECT_EQ(MetricValue(worker.registry(), name), 0) << name;
  }
}

// Issue 12: a row whose re-publish cannot succeed (no original topic, a topic that does not
// exist, a record too large) is parked with the reason instead of being claimed first on every
// pass, so it never starves the rows behind it.
TEST_F(RetryWorkerTest, UnpublishableRowsAreParkedAndDoNotStarveTheOthers) {
  Options o = DefaultOptions();
  o.batch = 2;
  auto worker = StartWorker(o);
  auto admin = Admin(*worker);
  // Two poison rows without an original topic, parked, then re-armed by an operator.
  for (const char* id : {"no-topic-1", "no-topic-2"}) {
    kafka::Record r = DlqRecord(id, 1, "poison", "undecodable payload");
    RemoveHeader(r, kafka::dlq::kOriginalTopic);
    Produce(r);
    ASSERT_TRUE(StatusIs(id, "FAILED"));
    grpc::ClientContext ctx;
    Authorize(ctx);
    ops::RetryFailedMessageRequest retry;
    retry.set_id(std::stoll(Column(id, "id")));
    ops::FailedMessage m;
    ASSERT_TRUE(admin->Retry(&ctx, retry, &m).ok());
  }
  kafka::Record missing_topic = DlqRecord("missing-topic", 1);
  SetHeader(missing_topic, kafka::dlq::kOriginalTopic, UniqueName("no_such_topic"));
  Produce(missing_topic);
  kafka::Record too_large = DlqRecord("too-large", 1);
  too_large.value = std::string(1100 * 1000, 'x');  // over the producer's message.max.bytes
  {
    kafka::Config config = kafka::ProducerConfig(KafkaBootstrap(), "test");
    config["message.max.bytes"] = "2000000";
    auto big = kafka::Producer::Create(config);
    ASSERT_TRUE(big.ok());
    ASSERT_TRUE((*big)->ProduceAndWait(too_large, absl::Seconds(30)).ok());
  }
  ProduceDlq("good", 1);

  EXPECT_TRUE(StatusIs("good", "PROCESSED", absl::Seconds(60))) << "starved";
  for (const char* id : {"no-topic-1", "no-topic-2", "missing-topic", "too-large"}) {
    EXPECT_TRUE(StatusIs(id, "FAILED", absl::Seconds(60))) << id << ": " << Column(id, "status");
    EXPECT_EQ(Column(id, "attempts"), "1") << id;
    EXPECT_TRUE(absl::StrContains(Column(id, "operator_note"), "cannot be re-published"))
        << id << ": " << Column(id, "operator_note");
  }
  EXPECT_TRUE(absl::StrContains(Column("too-large", "operator_note"), "too large"))
      << Column("too-large", "operator_note");
  EXPECT_EQ(CountByEvent(ReadTopic(KafkaBootstrap(), original_, 1, absl::Seconds(30))),
            (std::map<std::string, int>{{"good", 1}}));
}

// Issue 12: an attempt header that is no number in range is parked with the reason (never
// re-published as some other attempt, never an INTERNAL later).
TEST_F(RetryWorkerTest, OutOfRangeAttemptHeadersAreParkedWithAReason) {
  auto worker = StartWorker(DefaultOptions());
  const std::map<std::string, std::string> kBad = {{"max-int", "2147483647"},
                                                   {"negative", "-3"},
                                                   {"zero", "0"},
                                                   {"garbage", "3x"},
                                                   {"two-to-63", "9223372036854775808"}};
  for (const auto& [id, attempt] : kBad) {
    kafka::Record r = DlqRecord(id, 1);
    SetHeader(r, kafka::dlq::kAttempt, attempt);
    Produce(r);
  }
  ProduceDlq("good", 1);
  ASSERT_TRUE(StatusIs("good", "PROCESSED"));
  for (const auto& [id, attempt] : kBad) {
    EXPECT_EQ(Column(id, "status"), "FAILED") << id;
    EXPECT_TRUE(absl::StrContains(Column(id, "operator_note"), attempt))
        << id << ": " << Column(id, "operator_note");
  }
  // An operator can still act on them.
  auto admin = Admin(*worker);
  grpc::ClientContext ctx;
  Authorize(ctx);
  ops::RetryFailedMessageRequest retry;
  retry.set_id(std::stoll(Column("max-int", "id")));
  ops::FailedMessage m;
  grpc::Status status = admin->Retry(&ctx, retry, &m);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// Issue 15: operators authenticate with their identity provider's JWTs: a token carrying the
// admin scope may act, a valid token without it is PERMISSION_DENIED, a bad one
// UNAUTHENTICATED; the static ADMIN_TOKEN still works beside them, and is refused once unset.
TEST_F(RetryWorkerTest, AdminApiAcceptsJwtsWithTheAdminScope) {
  testing::TestIssuer idp;
  idp.AddKey("ops-key", testing::TestIssuer::kEs256);
  std::string jwks = ::testing::TempDir() + "/" + UniqueName("jwks") + ".json";
  std::ofstream(jwks) << idp.Jwks();
  Options o = DefaultOptions();
  o.auth.jwks_file = jwks;
  o.auth.issuer = "https://idp.example.test/";
  auto worker = StartWorker(o);
  auto admin = Admin(*worker);
  auto list_with = [&](const std::string& token) {
    grpc::ClientContext ctx;
    Authorize(ctx, token);
    ops::ListFailedMessagesResponse resp;
    return admin->List(&ctx, {}, &resp).error_code();
  };
  nlohmann::json claims = {{"sub", "operator-7"},
                           {"iss", o.auth.issuer},
                           {"exp", absl::ToUnixSeconds(absl::Now() + absl::Minutes(5))},
                           {"scope", "openid concert.admin"}};
  EXPECT_EQ(list_with(idp.Sign("ops-key", claims)), grpc::StatusCode::OK);
  nlohmann::json roles = claims;  // Keycloak-style roles instead of a scope
  roles.erase("scope");
  roles["roles"] = {"concert.admin"};
  EXPECT_EQ(list_with(idp.Sign("ops-key", roles)), grpc::StatusCode::OK);
  nlohmann::json user = claims;
  user["scope"] = "openid";
  EXPECT_EQ(list_with(idp.Sign("ops-key", user)), grpc::StatusCode::PERMISSION_DENIED);
  nlohmann::json expired = claims;
  expired["exp"] = absl::ToUnixSeconds(absl::Now() - absl::Hours(1));
  EXPECT_EQ(list_with(idp.Sign("ops-key", expired)), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(list_with(kToken), grpc::StatusCode::OK) << "the static token still works";
  EXPECT_EQ(list_with("wrong-token"), grpc::StatusCode::UNAUTHENTICATED);
  worker->Stop();

  o.admin_token.clear();
  auto jwt_only = StartWorker(o);
  admin = Admin(*jwt_only);
  EXPECT_EQ(list_with(kToken), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(list_with(idp.Sign("ops-key", claims)), grpc::StatusCode::OK);
  std::remove(jwks.c_str());
}

// Issue 12: page tokens are ids as 64-bit integers: past 2^31 rows they still work, and a token
// this API could not have made is INVALID_ARGUMENT, never INTERNAL.
TEST_F(RetryWorkerTest, PageTokensWorkPastTwoToTheThirtyFirstAndBadOnesAreInvalid) {
  auto worker = StartWorker(DefaultOptions());
  Scalar("SELECT setval('retry.failed_messages_id_seq', 3000000000)");
  for (int i = 1; i <= 3; ++i) ProduceDlq(absl::StrCat("big-", i), 3);
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(StatusIs(absl::StrCat("big-", i), "FAILED"));
  auto admin = Admin(*worker);
  auto list = [&](const std::string& token, int page_size, ops::ListFailedMessagesResponse* out) {
    grpc::ClientContext ctx;
    Authorize(ctx);
    ops::ListFailedMessagesRequest req;
    req.set_page_size(page_size);
    req.set_page_token(token);
    return admin->List(&ctx, req, out);
  };
  ops::ListFailedMessagesResponse page1, page2, after_large;
  ASSERT_TRUE(list("", 2, &page1).ok());
  ASSERT_EQ(page1.messages_size(), 2);
  EXPECT_GT(page1.messages(0).id(), int64_t{1} << 31);
  grpc::Status second = list(page1.next_page_token(), 2, &page2);
  ASSERT_TRUE(second.ok()) << second.error_message();
  ASSERT_EQ(page2.messages_size(), 1);
  EXPECT_EQ(page2.messages(0).event_id(), "big-1");

  grpc::Status large = list(absl::WebSafeBase64Escape("after:9999999999"), 10, &after_large);
  ASSERT_TRUE(large.ok()) << large.error_message();
  EXPECT_EQ(after_large.messages_size(), 3);
  for (const char* bad :
       {"after:99999999999999999999", "after:-5", "after:0", "after:", "before:7"}) {
    ops::ListFailedMessagesResponse ignored;
    EXPECT_EQ(list(absl::WebSafeBase64Escape(bad), 10, &ignored).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT)
        << bad;
  }
}

// Issue 12: FAILED means "not delivered". Once a dead letter says a copy may already have been
// delivered the row keeps saying so, and out of attempts it parks as UNCERTAIN, which the admin
// API lists, retries and discards, and the gauge counts.
TEST_F(RetryWorkerTest, PossiblyDeliveredIsStickyAndParksAsUncertain) {
  Options o = DefaultOptions();
  o.backoff_base = absl::Hours(1);  // nothing is re-published by itself here
  o.backoff_cap = absl::Hours(1);
  auto worker = StartWorker(o);
  kafka::Record maybe = DlqRecord("maybe", 1, "timeout", "no answer in 10s");
  SetHeader(maybe, kafka::dlq::kPossiblyDelivered, "true");
  Produce(maybe);
  ASSERT_TRUE(StatusIs("maybe", "PENDING"));
  EXPECT_EQ(Column("maybe", "possibly_delivered"), "true");
  ProduceDlq("maybe", 3);  // the last attempt, a plain 5xx: the earlier doubt still stands
  ProduceDlq("surely-not", 3);
  ASSERT_TRUE(StatusIs("maybe", "UNCERTAIN"));
  ASSERT_TRUE(StatusIs("surely-not", "FAILED"));
  EXPECT_NE(worker->registry().Render().find("retry_messages{status=\"UNCERTAIN\"} 1"),
            std::string::npos);

  auto admin = Admin(*worker);
  ops::ListFailedMessagesResponse uncertain;
  {
    grpc::ClientContext ctx;
    Authorize(ctx);
    ops::ListFailedMessagesRequest req;
    req.set_status(ops::FAILED_MESSAGE_STATUS_UNCERTAIN);
    ASSERT_TRUE(admin->List(&ctx, req, &uncertain).ok());
  }
  ASSERT_EQ(uncertain.messages_size(), 1);
  EXPECT_EQ(uncertain.messages(0).event_id(), "maybe");
  EXPECT_TRUE(uncertain.messages(0).possibly_delivered());
  EXPECT_EQ(uncertain.messages(0).attempts(), 3);
  {  // Retry re-arms it; Discard closes it.
    grpc::ClientContext ctx;
    Authorize(ctx);
    ops::RetryFailedMessageRequest retry;
    retry.set_id(uncertain.messages(0).id());
    retry.set_reason("not in the chat");
    ops::FailedMessage m;
    ASSERT_TRUE(admin->Retry(&ctx, retry, &m).ok());
    EXPECT_EQ(m.status(), ops::FAILED_MESSAGE_STATUS_PENDING);
    grpc::ClientContext discard_ctx;
    Authorize(discard_ctx);
    ops::DiscardFailedMessageRequest discard;
    discard.set_id(uncertain.messages(0).id());
    ASSERT_TRUE(admin->Discard(&discard_ctx, discard, &m).ok());
    EXPECT_EQ(m.status(), ops::FAILED_MESSAGE_STATUS_DISCARDED);
  }
}

}  // namespace
}  // namespace concert::retry
