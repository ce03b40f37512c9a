// End-to-end tests through all four services as real processes, the shared Postgres (a scratch
// database) and Kafka (topics of their own), and the fake Telegram: what a user of the system
// sees is one message per payment, whatever Telegram or a poison record does.
#include <stdio.h>

#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/kafka/headers.h"
#include "common/kafka/producer.h"
#include "tests/e2e/system_test.h"

namespace concert::e2e {
namespace {

using ::testing::HasSubstr;
using testing::KafkaBootstrap;
using testing::WaitUntil;

std::string FormatThousands(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// Pays `count` seats round-robin over the seeded users (the poor user excluded); every
// payment must be acknowledged. Returns reservation id -> user.
std::map<int64_t, User> PayMany(System& system, int count) {
  PaymentClient client(system.payment_address());
  std::map<int64_t, User> paid;
  const std::vector<User>& users = system.seeded().users;
  for (int i = 0; i < count; ++i) {
    const User& user = users[i % system.options().users];
    PayOutcome outcome = client.ReserveAndPay(user, system.NextSeat());
    EXPECT_EQ(outcome.kind, PayOutcome::Kind::kAcked)
        << "payment " << i << ": " << outcome.code << " " << outcome.message;
    if (outcome.kind == PayOutcome::Kind::kAcked) paid[outcome.reservation_id] = user;
  }
  return paid;
}

// True when every reservation in `paid` has at least one message.
bool AllDelivered(System& system, const std::map<int64_t, User>& paid) {
  std::map<int64_t, int> got = system.MessagesByReservation();
  for (const auto& [reservation, user] : paid) {
    if (got[reservation] == 0) return false;
  }
  return true;
}

void ExpectEachExactlyOnce(System& system, const std::map<int64_t, User>& paid) {
  std::map<int64_t, int> got = system.MessagesByReservation();
  for (const auto& [reservation, user] : paid) {
    EXPECT_EQ(got[reservation], 1) << "messages for reservation " << reservation;
  }
  int total = 0;
  for (const auto& [reservation, n] : got) total += n;
  EXPECT_EQ(total, static_cast<int>(paid.size())) << "messages for no payment of this test";
}

class EndToEndTest : public SystemTest {
 protected:
  EndToEndTest() : SystemTest("e2e") {}
};

TEST_F(EndToEndTest, EveryPaymentBecomesExactlyOneMessageWithItsDetails) {
  constexpr int kPayments = 50;
  ASSERT_NO_FATAL_FAILURE(StartSystem({.users = 5, .link_chats = true}));
  std::map<int64_t, User> paid = PayMany(*system_, kPayments);
  ASSERT_EQ(paid.size(), kPayments);

  ASSERT_TRUE(WaitUntil([&] { return AllDelivered(*system_, paid); }, absl::Seconds(120)))
      << "delivered " << system_->MessagesByReservation().size() << " of " << kPayments;
  absl::SleepFor(absl::Seconds(2));  // a late duplicate would arrive now
  ExpectEachExactlyOnce(*system_, paid);

  // Content: the seed's Korean message with the holder, the concert, the amount and the
  // reservation, sent to the payer's own chat.
  std::string amount =
      absl::StrCat("결제 금액: ", FormatThousands(system_->options().seat_price_won), "원");
  for (const testing::TelegramMessage& m : system_->telegram().messages()) {
    int64_t reservation = 0;
    for (const auto& [id, user] : paid) {
      if (m.text.find(absl::StrCat("예약 번호: #", id, "\n")) != std::string::npos) {
        reservation = id;
      }
    }
    ASSERT_NE(reservation, 0) << m.text;
    EXPECT_EQ(m.chat_id, std::to_string(paid[reservation].chat_id));
    EXPECT_THAT(m.text, HasSubstr("🎫 콘서트 결제가 완료되었습니다!\n"));
    EXPECT_THAT(m.text, HasSubstr(absl::StrCat("예약자 ID: ", paid[reservation].mail)));
    EXPECT_THAT(m.text, HasSubstr(absl::StrCat("콘서트: ", system_->seeded().concert_title)));
    EXPECT_THAT(m.text, HasSubstr(amount));
  }
  // The notifier's durable record agrees: every event SENT, none uncertain.
  EXPECT_EQ(QueryInt(db_.url(), "SELECT count(*) FROM notification.deliveries WHERE state = 'SENT'"),
            kPayments);
  EXPECT_EQ(QueryInt(db_.url(), "SELECT count(*) FROM notification.deliveries WHERE uncertain"), 0);
}

TEST_F(EndToEndTest, TransientTelegramFailuresAreDeliveredByTheRetryWorker) {
  ASSERT_NO_FATAL_FAILURE(StartSystem({.users = 2}));
  // Each notifier attempt makes 2 requests (TELEGRAM_RETRIES=1): the first messages fail both,
  // go to the DLQ, and only the retry-worker's re-publish can deliver them.
  system_->telegram().SetFault({.mode = testing::FaultMode::k5xx, .count = 6, .status = 503});
  std::map<int64_t, User> paid = PayMany(*system_, 6);
  ASSERT_EQ(paid.size(), 6u);

  ASSERT_TRUE(WaitUntil([&] { return AllDelivered(*system_, paid); }, absl::Seconds(120)))
      << "delivered " << system_->MessagesByReservation().size() << " of 6";
  absl::SleepFor(absl::Seconds(2));
  ExpectEachExactlyOnce(*system_, paid);
  EXPECT_EQ(system_->telegram().faulted(), 6);

  // The retried ones are visible to operators as PROCESSED, none left PENDING or FAILED.
  AdminClient admin(system_->admin_address(), system_->admin_token());
  std::vector<ops::v1::FailedMessage> processed;
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::vector<ops::v1::FailedMessage> all;
        if (!admin.List(ops::v1::FAILED_MESSAGE_STATUS_UNSPECIFIED, &all).ok()) return false;
        processed.clear();
        for (const auto& m : all) {
          if (m.status() != ops::v1::FAILED_MESSAGE_STATUS_PROCESSED) return false;
          processed.push_back(m);
        }
        return !processed.empty();
      },
      absl::Seconds(30)));
  for (const auto& m : processed) {
    EXPECT_EQ(m.original_topic(), system_->topic());
    EXPECT_EQ(m.error_class(), "telegram_5xx");
  }
}

TEST_F(EndToEndTest, PermanentTelegramFailureIsParkedVisibleAndRetryable) {
  ASSERT_NO_FATAL_FAILURE(StartSystem({.users = 2}));
  system_->telegram().SetFault({.mode = testing::FaultMode::k400, .count = 0});
  std::map<int64_t, User> paid = PayMany(*system_, 2);
  ASSERT_EQ(paid.size(), 2u);

  // RETRY_MAX_ATTEMPTS=3: the first attempt and two re-publishes, then parked as FAILED.
  AdminClient admin(system_->admin_address(), system_->admin_token());
  std::vector<ops::v1::FailedMessage> failed;
  ASSERT_TRUE(WaitUntil(
      [&] {
        return admin.List(ops::v1::FAILED_MESSAGE_STATUS_FAILED, &failed).ok() &&
               failed.size() == 2;
      },
      absl::Seconds(120)))
      << "parked: " << failed.size();
  for (const auto& m : failed) {
    EXPECT_EQ(m.attempts(), 3) << m.event_id();
    EXPECT_EQ(m.error_class(), "telegram_4xx");
    EXPECT_EQ(m.original_topic(), system_->topic());
  }
  EXPECT_TRUE(system_->telegram().messages().empty());
  EXPECT_EQ(QueryInt(db_.url(),
                     "SELECT count(*) FROM retry.failed_messages WHERE status = 'PENDING'"),
            0);

  // Parked means parked: nothing more is attempted.
  int requests = system_->telegram().requests();
  absl::SleepFor(absl::Seconds(5));
  EXPECT_EQ(system_->telegram().requests(), requests);

  // The admin API refuses another token.
  AdminClient intruder(system_->admin_address(), "not-the-token");
  std::vector<ops::v1::FailedMessage> ignored;
  EXPECT_EQ(intruder.List(ops::v1::FAILED_MESSAGE_STATUS_FAILED, &ignored).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  // Telegram fixed; an operator re-arms both and each arrives once.
  system_->telegram().ClearFaults();
  for (const auto& m : failed) {
    ops::v1::FailedMessage after;
    grpc::Status s = admin.Retry(m.id(), "telegram fixed", &after);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_TRUE(WaitUntil([&] { return AllDelivered(*system_, paid); }, absl::Seconds(60)));
  absl::SleepFor(absl::Seconds(2));
  ExpectEachExactlyOnce(*system_, paid);
}

// The DLQ's records as Kafka's console consumer prints them (key, headers, value per line),
// read from the beginning, at most `max` records, bounded in time. Kafka's own tool rather than
// a librdkafka consumer: destroying a short-lived consumer of librdkafka 2.0.2 here sometimes hung
// (joining its broker thread), and a test must not hang.
std::string ReadTopicWithConsoleConsumer(const std::string& topic, int max) {
  std::string command = absl::StrCat(
      "timeout -s KILL 90 ", testing::SourceRoot(),
      "/scripts/kafka.sh run-class org.apache.kafka.tools.consumer.ConsoleConsumer"
      " --bootstrap-server ", KafkaBootstrap(), " --topic ", topic,
      " --from-beginning --max-messages ", max, " --timeout-ms 30000",
      " --property print.key=true --property print.headers=true 2>/dev/null");
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
  pclose(pipe);
  return out;
}

TEST_F(EndToEndTest, PoisonRecordGoesToTheDlqAndIsParkedWhileDeliveriesGoOn) {
  ASSERT_NO_FATAL_FAILURE(StartSystem({.users = 2}));
  // Before the poison, a payment, so we know the pipeline runs.
  std::map<int64_t, User> before = PayMany(*system_, 2);
  ASSERT_TRUE(WaitUntil([&] { return AllDelivered(*system_, before); }, absl::Seconds(60)));

  // Straight into the payment topic, on every partition, bypassing the outbox.
  auto producer = kafka::Producer::Create(kafka::ProducerConfig(KafkaBootstrap(), "e2e-poison"));
  ASSERT_TRUE(producer.ok()) << producer.status();
  std::string poison_key = testing::UniqueName("poison");
  for (int partition = 0; partition < 3; ++partition) {
    kafka::Record record;
    record.topic = system_->topic();
    record.partition = partition;
    record.key = poison_key;
    record.value = "\xff\xff\xff this is not a PaymentCompleted";
    absl::Status sent = (*producer)->ProduceAndWait(record, absl::Seconds(10));
    ASSERT_TRUE(sent.ok()) << sent;
  }

  std::map<int64_t, User> after = PayMany(*system_, 6);
  ASSERT_EQ(after.size(), 6u);
  std::map<int64_t, User> all = before;
  all.insert(after.begin(), after.end());
  ASSERT_TRUE(WaitUntil([&] { return AllDelivered(*system_, all); }, absl::Seconds(60)));

  // Parked at once (retrying cannot fix it) and visible to operators.
  AdminClient admin(system_->admin_address(), system_->admin_token());
  std::vector<ops::v1::FailedMessage> failed;
  ASSERT_TRUE(WaitUntil(
      [&] {
        return admin.List(ops::v1::FAILED_MESSAGE_STATUS_FAILED, &failed).ok() &&
               failed.size() == 3;
      },
      absl::Seconds(60)))
      << "parked: " << failed.size();
  for (const auto& m : failed) {
    EXPECT_EQ(m.error_class(), "poison");
    EXPECT_EQ(m.key(), poison_key);
    EXPECT_EQ(m.original_topic(), system_->topic());
  }
  EXPECT_EQ(QueryInt(db_.url(), "SELECT count(*) FROM retry.failed_messages "
                                "WHERE status = 'FAILED' AND error_class = 'poison'"),
            3);

  // The DLQ holds the original records with their context.
  // The DLQ holds the original records with their context in headers.
  std::string dlq = ReadTopicWithConsoleConsumer(system_->dlq_topic(), 3);
  int poison_in_dlq = 0;
  for (absl::string_view line : absl::StrSplit(dlq, '\n', absl::SkipEmpty())) {
    if (line.find(poison_key) == absl::string_view::npos) continue;
    ++poison_in_dlq;
    EXPECT_THAT(std::string(line),
                HasSubstr(absl::StrCat(kafka::dlq::kOriginalTopic, ":", system_->topic())));
    EXPECT_THAT(std::string(line), HasSubstr(absl::StrCat(kafka::dlq::kErrorClass, ":poison")));
    EXPECT_THAT(std::string(line), HasSubstr(absl::StrCat(kafka::dlq::kOriginalConsumerGroup,
                                                          ":", system_->notifier_group())));
  }
  EXPECT_EQ(poison_in_dlq, 3) << dlq;
  ExpectEachExactlyOnce(*system_, all);
}

}  // namespace
}  // namespace concert::e2e
