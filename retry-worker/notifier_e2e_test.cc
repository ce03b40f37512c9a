// The whole failure loop with real processes: the notifier binary (Telegram pointed at an
// in-process fake Telegram) and the retry-worker binary, on the real Kafka broker and Postgres.
// What is asserted is what a user would notice: messages and requests at the fake Telegram,
// rows in retry.failed_messages, the admin API's answers, the exit status on SIGTERM.
#include <sys/wait.h>

#include <csignal>
#include <map>
#include <memory>
#include <random>
#include <string>

#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>
#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/kafka/admin.h"
#include "common/kafka/headers.h"
#include "common/kafka/producer.h"
#include "common/testing/environment.h"
#include "concert/events/v1/payment_events.pb.h"
#include "concert/ops/v1/failed_messages.grpc.pb.h"
#include "tests/fake_telegram/fake_telegram.h"

namespace concert::retry {
namespace {

using ::concert::testing::BinaryPath;
using ::concert::testing::ChildProcess;
using ::concert::testing::FakeTelegram;
using ::concert::testing::Fault;
using ::concert::testing::FaultMode;
using ::concert::testing::FreePort;
using ::concert::testing::KafkaBootstrap;
using ::concert::testing::ScratchDatabase;
using ::concert::testing::UniqueName;
using ::concert::testing::WaitUntil;

constexpr char kToken[] = "e2e-admin-token";
constexpr int kMaxAttempts = 3;
// Several scheduler passes (RETRY_INTERVAL is 500ms below).
constexpr absl::Duration kSeveralIntervals = absl::Seconds(4);

std::string RandomUuid() {
  static std::mt19937_64 rng(std::random_device{}());
  uint64_t a = rng(), b = rng();
  return absl::StrFormat("%08x-%04x-4%03x-a%03x-%012x", a >> 32, (a >> 16) & 0xffff, a & 0xfff,
                         b >> 52, b & 0xffffffffffffULL);
}

class FailureLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(kafka::EnsureTopics(KafkaBootstrap(), {{topic_, 3}, {dlq_, 1}}).ok());
    ASSERT_TRUE(fake_.Start().ok());
    auto producer = kafka::Producer::Create(kafka::ProducerConfig(KafkaBootstrap(), "e2e-test"));
    ASSERT_TRUE(producer.ok());
    producer_ = std::move(*producer);
    admin_port_ = FreePort();
    notifier_env_ = {
        {"DATABASE_URL", db_.url()},
        {"KAFKA_BOOTSTRAP_SERVERS", KafkaBootstrap()},
        {"KAFKA_GROUP_ID", UniqueName("notification-group")},
        {"PAYMENT_COMPLETED_TOPIC", topic_},
        {"DLQ_TOPIC", dlq_},
        {"TELEGRAM_API_BASE", fake_.base_url()},
        {"TELEGRAM_BOT_TOKEN", "42:e2e-token"},
        {"TELEGRAM_UPDATES", "off"},
        {"TELEGRAM_CHAT_ID", "4242"},
        // One request per delivery attempt: every retry goes through the DLQ loop.
        {"TELEGRAM_RETRIES", "0"},
        {"TELEGRAM_TIMEOUT", "5s"},
        {"GRPC_ADDRESS", absl::StrCat("127.0.0.1:", FreePort())},
        {"METRICS_ADDRESS", absl::StrCat("127.0.0.1:", FreePort())}};
    StartNotifier();
    worker_ = std::make_unique<ChildProcess>(
        BinaryPath("retry-worker"), std::vector<std::string>{},
        std::map<std::string, std::string>{
            {"DATABASE_URL", db_.url()},
            {"KAFKA_BOOTSTRAP_SERVERS", KafkaBootstrap()},
            {"KAFKA_GROUP_ID", UniqueName("retry-group")},
            {"DLQ_TOPIC", dlq_},
            {"ADMIN_TOKEN", kToken},
            {"RETRY_INTERVAL", "500ms"},
            {"RETRY_MAX_ATTEMPTS", std::to_string(kMaxAttempts)},
            {"RETRY_BACKOFF_BASE", "200ms"},
            {"RETRY_BACKOFF_CAP", "1s"},
            {"GRPC_ADDRESS", absl::StrCat("127.0.0.1:", admin_port_)},
            {"METRICS_ADDRESS", absl::StrCat("127.0.0.1:", FreePort())}});
    admin_ = ops::v1::FailedMessageService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", admin_port_), grpc::InsecureChannelCredentials()));
  }

  void StartNotifier() {
    notifier_ = std::make_unique<ChildProcess>(BinaryPath("notifier"), std::vector<std::string>{},
                                               notifier_env_);
  }

  // A PaymentCompleted event on the original topic, as the outbox relay writes it.
  std::string ProducePayment() {
    events::v1::PaymentCompleted e;
    e.set_event_id(RandomUuid());
    e.set_payment_id(7001);
    e.set_reservation_id(3001);
    e.set_user_id(11);
    e.set_user_mail("fan@example.com");
    e.set_concert_title("Retry Symphony");
    e.mutable_concert_start()->set_seconds(1767261600);
    e.mutable_paid_at()->set_seconds(1764064800);
    e.set_amount_won(99000);
    e.set_seat_id(17);
    kafka::Record r{.topic = topic_,
                    .key = "3001",
                    .value = e.SerializeAsString(),
                    .headers = {{kafka::kEventIdHeader, e.event_id()},
                                {kafka::kEventTypeHeader, "PaymentCompleted"},
                                {kafka::kContentTypeHeader, "application/x-protobuf"}}};
    absl::Status s = producer_->ProduceAndWait(std::move(r), absl::Seconds(10));
    EXPECT_TRUE(s.ok()) << s;
    return e.event_id();
  }

  std::string Column(const std::string& event_id, const std::string& column) {
    try {
      pqxx::connection c(db_.url());
      pqxx::work tx(c);
      pqxx::result r = tx.exec_params(
          absl::StrCat("SELECT (", column, ")::text FROM retry.failed_messages WHERE event_id = $1"),
          event_id);
      if (r.empty() || r[0][0].is_null()) return "";
      return r[0][0].as<std::string>();
    } catch (const std::exception&) {
      return "";  // schema not there yet
    }
  }

  int64_t DeliveryAttempts(const std::string& event_id) {
    pqxx::connection c(db_.url());
    pqxx::work tx(c);
    return tx.exec_params1("SELECT attempts FROM notification.deliveries WHERE event_id = $1::uuid",
                           event_id)[0]
        .as<int64_t>();
  }

  void ExpectCleanStop(ChildProcess& process) {
    int status = process.Stop(SIGTERM, absl::Seconds(20));
    ASSERT_NE(status, -1) << "did not exit after SIGTERM";
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << process.ReadLog();
  }

  ScratchDatabase db_{"retry_e2e"};
  std::string topic_ = UniqueName("completed");
  std::string dlq_ = UniqueName("dlq");
  FakeTelegram fake_{{}};
  std::unique_ptr<kafka::Producer> producer_;
  int admin_port_ = 0;
  std::map<std::string, std::string> notifier_env_;
  std::unique_ptr<ChildProcess> notifier_;
  std::unique_ptr<ChildProcess> worker_;
  std::unique_ptr<ops::v1::FailedMessageService::Stub> admin_;
};

TEST_F(FailureLoopTest, FailsOnceThenIsDeliveredExactlyOnceAfterARetry) {
  fake_.SetFault({.mode = FaultMode::k5xx, .count = 1, .status = 503});
  std::string event_id = ProducePayment();

  ASSERT_TRUE(WaitUntil([&] { return fake_.messages().size() == 1; }, absl::Seconds(60)))
      << notifier_->ReadLog() << worker_->ReadLog();
  ASSERT_TRUE(WaitUntil([&] { return Column(event_id, "status") == "PROCESSED"; },
                        absl::Seconds(30)));
  EXPECT_EQ(Column(event_id, "attempts"), "1");
  EXPECT_EQ(Column(event_id, "error_class"), "telegram_5xx");
  absl::SleepFor(kSeveralIntervals);
  EXPECT_EQ(fake_.messages().size(), 1u) << "delivered exactly once";
  EXPECT_EQ(fake_.requests(), 2) << "the failed attempt and the retried one";
  EXPECT_EQ(Column(event_id, "status"), "PROCESSED");
  ExpectCleanStop(*worker_);
}

TEST_F(FailureLoopTest, AlwaysFailingIsAttemptedMaxTimesParkedAndDeliveredAfterAdminRetry) {
  fake_.SetFault({.mode = FaultMode::k400});  // every request, until cleared
  std::string event_id = ProducePayment();

  ASSERT_TRUE(WaitUntil([&] { return Column(event_id, "status") == "FAILED"; }, absl::Seconds(90)))
      << notifier_->ReadLog() << worker_->ReadLog();
  EXPECT_EQ(Column(event_id, "attempts"), std::to_string(kMaxAttempts));
  EXPECT_EQ(Column(event_id, "error_class"), "telegram_4xx");
  absl::SleepFor(kSeveralIntervals);
  EXPECT_EQ(fake_.requests(), kMaxAttempts) << "1 original delivery + 2 re-publishes, no more";
  EXPECT_TRUE(fake_.messages().empty());
  EXPECT_EQ(Column(event_id, "status"), "FAILED");

  // Telegram is healthy again; an operator re-arms the parked row.
  fake_.ClearFaults();
  int64_t id = std::stoll(Column(event_id, "id"));
  {
    grpc::ClientContext unauthenticated;
    ops::v1::RetryFailedMessageRequest request;
    request.set_id(id);
    request.set_reason("bot unblocked");
    ops::v1::FailedMessage reply;
    EXPECT_EQ(admin_->Retry(&unauthenticated, request, &reply).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(Column(event_id, "status"), "FAILED");

    grpc::ClientContext context;
    context.AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status status = admin_->Retry(&context, request, &reply);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(reply.status(), ops::v1::FAILED_MESSAGE_STATUS_PENDING);
  }
  ASSERT_TRUE(WaitUntil([&] { return fake_.messages().size() == 1; }, absl::Seconds(60)));
  ASSERT_TRUE(WaitUntil([&] { return Column(event_id, "status") == "PROCESSED"; },
                        absl::Seconds(30)));
  absl::SleepFor(kSeveralIntervals);
  EXPECT_EQ(fake_.messages().size(), 1u);
  EXPECT_EQ(fake_.requests(), kMaxAttempts + 1);
  EXPECT_NE(fake_.messages()[0].text.find("Retry Symphony"), std::string::npos);
  ExpectCleanStop(*worker_);
}

// Issue 12: the fault run's story. Telegram accepted the message, the notifier was SIGKILLed
// before it recorded SENT; the redelivered event was found SENDING, sent again, and Telegram
// failed from then on. The row must not say FAILED ("not delivered") while the chat has the
// message, and both records must count the same attempts.
TEST_F(FailureLoopTest, CopyAcceptedBeforeACrashParksUncertainWithTheNotifiersAttemptCount) {
  // The first request is accepted, but only after a while: the notifier is killed meanwhile.
  fake_.SetFault({.mode = FaultMode::kStall, .count = 1, .stall = absl::Seconds(3)});
  std::string event_id = ProducePayment();
  ASSERT_TRUE(WaitUntil([&] { return fake_.requests() == 1; }, absl::Seconds(60)))
      << notifier_->ReadLog();
  notifier_->Stop(SIGKILL);
  ASSERT_TRUE(WaitUntil([&] { return fake_.messages().size() == 1; }, absl::Seconds(10)));
  fake_.SetFault({.mode = FaultMode::k5xx, .status = 502});  // every request from now on
  StartNotifier();

  ASSERT_TRUE(WaitUntil([&] {
    std::string status = Column(event_id, "status");
    return status != "" && status != "PENDING" && status != "PROCESSED";
  }, absl::Seconds(120))) << notifier_->ReadLog() << worker_->ReadLog();
  EXPECT_EQ(Column(event_id, "status"), "UNCERTAIN");
  EXPECT_EQ(fake_.messages().size(), 1u);
  EXPECT_EQ(Column(event_id, "attempts"), std::to_string(DeliveryAttempts(event_id)));
  EXPECT_EQ(Column(event_id, "attempts"), std::to_string(kMaxAttempts));
}

}  // namespace
}  // namespace concert::retry
