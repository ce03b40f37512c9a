// The poison test: normal payments run all along while every kind of bad record and bad setting
// is injected at each stage (the outbox, the payment topic, the dead-letter topic, the admin
// API). Afterwards every normal payment must have exactly one message, every bad input must be
// found with its reason where an operator looks (relay.set_aside_events, the retry-worker's
// failed messages, a status code), no stage may have stopped serving normal payments for long,
// and nothing may be left PENDING or in flight. It prints a table: bad input, stage, where it
// ended up.
#include <stdio.h>

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <pqxx/pqxx>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/kafka/headers.h"
#include "common/kafka/producer.h"
#include "concert/events/v1/payment_events.pb.h"
#include "tests/e2e/system_test.h"

namespace concert::e2e {
namespace {

using testing::KafkaBootstrap;
using testing::WaitUntil;

// Pays one seat after another on a thread of its own until stopped; remembers when each
// acknowledged payment was acknowledged.
class BackgroundPayer {
 public:
  explicit BackgroundPayer(System& system) : system_(system) {
    thread_ = std::thread([this] {
      PaymentClient client(system_.payment_address());
      const std::vector<User>& users = system_.seeded().users;
      for (int i = 0; !stop_.load() && i < 5000; ++i) {
        int64_t seat = system_.NextSeat();
        if (seat == 0) break;
        PayOutcome outcome = client.ReserveAndPay(users[i % users.size()], seat);
        std::lock_guard lock(mu_);
        if (outcome.kind == PayOutcome::Kind::kAcked) {
          acked_at_[outcome.reservation_id] = absl::Now();
        } else {
          ++not_acked_;
        }
        absl::SleepFor(absl::Milliseconds(100));
      }
    });
  }
  ~BackgroundPayer() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::map<int64_t, absl::Time> acked_at() {
    std::lock_guard lock(mu_);
    return acked_at_;
  }
  int not_acked() {
    std::lock_guard lock(mu_);
    return not_acked_;
  }

 private:
  System& system_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::map<int64_t, absl::Time> acked_at_;
  int not_acked_ = 0;
  std::thread thread_;
};

// One bad input: what it is, the stage it was given to, and how to find where it ended up
// (empty while it is nowhere yet).
struct BadInput {
  std::string what;
  std::string stage;
  std::function<std::string()> where;
  std::string found;
};

std::string QueryText(const std::string& url, const std::string& sql) {
  std::vector<std::vector<std::string>> rows = QueryRows(url, sql);
  return rows.empty() || rows[0].empty() ? "" : rows[0][0];
}

class PoisonTest : public SystemTest {
 protected:
  PoisonTest() : SystemTest("poison") {}

  // An outbox row written by hand, as a buggy writer could; returns its id.
  int64_t InsertOutboxRow(const std::string& marker, const std::string& event_type,
                          const std::string& payload) {
    pqxx::connection c(db_.url());
    pqxx::work tx(c);
    int64_t id = tx.exec_params1(
                       "INSERT INTO payment.outbox_events (event_id, aggregate_type, "
                       "aggregate_id, event_type, payload) VALUES (gen_random_uuid(), "
                       "'Reservation', $1, $2, $3) RETURNING id",
                       marker, event_type, pqxx::binarystring(payload))[0]
                     .as<int64_t>();
    tx.commit();
    return id;
  }

  // Where a record keyed `marker` ended up in the retry-worker: "<status> (<class>): <reason>".
  std::function<std::string()> InRetryWorker(const std::string& marker) {
    std::string url = db_.url();
    return [url, marker] {
      return QueryText(url, absl::StrCat("SELECT 'failed_messages ' || status || ' (' || "
                                         "error_class || '): ' || left(trim(error_message || ' ' "
                                         "|| operator_note), 70) FROM "
                                         "retry.failed_messages WHERE key = '",
                                         marker, "'::bytea AND status <> 'PENDING'"));
    };
  }

  std::function<std::string()> InRelaySetAside(int64_t outbox_id) {
    std::string url = db_.url();
    return [url, outbox_id] {
      return QueryText(url, absl::StrCat("SELECT 'relay.set_aside_events (' || reason_class || "
                                         "'): ' || left(reason, 60) FROM relay.set_aside_events "
                                         "WHERE outbox_id = ",
                                         outbox_id));
    };
  }

  absl::Status Produce(kafka::Record record) {
    if (producer_ == nullptr) {
      auto created = kafka::Producer::Create(kafka::ProducerConfig(KafkaBootstrap(), "poison"));
      if (!created.ok()) return created.status();
      producer_ = *std::move(created);
    }
    return producer_->ProduceAndWait(std::move(record), absl::Seconds(10));
  }

  std::unique_ptr<kafka::Producer> producer_;
};

TEST_F(PoisonTest, BadRecordsAtEveryStageAreSetAsideWithTheirReasonWhilePaymentsFlow) {
  // Payers in chats of their own, each well under Telegram's 1 message/s per chat.
  ASSERT_NO_FATAL_FAILURE(
      StartSystem({.users = 16,
                   .seats = 2000,
                   .link_chats = true,
                   .relay_env = {{"STRANDED_AFTER", "2s"}, {"SLOT_STATS_INTERVAL", "1s"}}}));
  BackgroundPayer payer(*system_);
  ASSERT_TRUE(WaitUntil([&] { return !system_->MessagesByReservation().empty(); },
                        absl::Seconds(60)));

  std::vector<BadInput> bad;
  const std::string topic = system_->topic(), dlq = system_->dlq_topic();
  events::v1::PaymentCompleted valid;
  valid.set_event_id("00000000-0000-4000-8000-000000000000");
  valid.set_payment_id(1);
  valid.set_reservation_id(1);
  const std::string valid_bytes = valid.SerializeAsString();

  // ---- the outbox (what the relay reads) ----
  // A database setting that changes how bytea reads, picked up by the relay's next session.
  {
    pqxx::connection c(db_.url());
    pqxx::nontransaction tx(c);
    tx.exec(absl::StrCat("ALTER DATABASE ", db_.name(), " SET bytea_output = 'escape'"));
  }
  system_->Kill(Service::kRelay);
  system_->Restart(Service::kRelay);
  const absl::Time relay_reconnected = absl::Now();
  bad.push_back({"database setting bytea_output = escape", "outbox-relay", [&] {
                   std::map<int64_t, int> got = system_->MessagesByReservation();
                   int notified = 0;
                   for (const auto& [reservation, at] : payer.acked_at()) {
                     if (at > relay_reconnected && got[reservation] > 0) ++notified;
                   }
                   if (notified == 0) return std::string();
                   return absl::StrCat("ignored: ", notified,
                                       " payments relayed by the session started under it");
                 }});
  auto outbox = [&](const std::string& what, const std::string& type, const std::string& payload,
                    bool relay_keeps_it) {
    std::string marker = testing::UniqueName("poison_outbox");
    int64_t id = InsertOutboxRow(marker, type, payload);
    bad.push_back({what, "outbox-relay",
                   relay_keeps_it ? InRelaySetAside(id) : InRetryWorker(marker)});
  };
  outbox("payload larger than Kafka accepts (1.5 MB)", "PaymentCompleted",
         std::string(1'500'000, 'x'), true);
  outbox("event type with no topic", "SeatRefunded", valid_bytes, true);
  outbox("empty payload", "PaymentCompleted", "", false);
  outbox("garbage payload", "PaymentCompleted", "\xff\xfe\x00 not protobuf", false);
  outbox("truncated payload", "PaymentCompleted", valid_bytes.substr(0, valid_bytes.size() / 2),
         false);
  outbox("JSON instead of protobuf", "PaymentCompleted", R"({"event_id":"x","amount":1})", false);

  // ---- the payment topic (what the notifier reads) ----
  auto topic_record = [&](const std::string& what, const std::string& value,
                          kafka::Headers headers) {
    std::string marker = testing::UniqueName("poison_topic");
    absl::Status sent = Produce({.topic = topic, .key = marker, .value = value,
                                 .headers = std::move(headers)});
    ASSERT_TRUE(sent.ok()) << what << ": " << sent;
    bad.push_back({what, "notifier", InRetryWorker(marker)});
  };
  topic_record("empty record, no headers", "", {});
  topic_record("garbage value, headers not UTF-8", "\x08\xff\xff",
               {{kafka::kEventIdHeader, "\xff\xfe"}, {"traceparent", "\xc3\x28"}});
  topic_record("attempt header 2147483647", "garbage",
               {{kafka::dlq::kAttempt, "2147483647"}});
  topic_record("attempt header not a number", "garbage", {{kafka::dlq::kAttempt, "-x1"}});
  topic_record("event id not a UUID", [] {
    events::v1::PaymentCompleted p;
    p.set_event_id("not-a-uuid");
    p.set_reservation_id(1);
    p.set_payment_id(1);
    return p.SerializeAsString();
  }(), {});
  topic_record("900 kB of garbage", std::string(900'000, '\x01'), {});

  // ---- the dead-letter topic (what the retry-worker reads) ----
  auto dlq_record = [&](const std::string& what, const std::string& value,
                        kafka::Headers headers) {
    std::string marker = testing::UniqueName("poison_dlq");
    absl::Status sent = Produce({.topic = dlq, .key = marker, .value = value,
                                 .headers = std::move(headers)});
    ASSERT_TRUE(sent.ok()) << what << ": " << sent;
    bad.push_back({what, "retry-worker", InRetryWorker(marker)});
  };
  dlq_record("no headers at all", valid_bytes, {});
  dlq_record("event id and original topic not UTF-8", valid_bytes,
             {{kafka::kEventIdHeader, "\xff\x00\xfe"},
              {kafka::dlq::kOriginalTopic, "\xc3\x28"},
              {kafka::dlq::kErrorMessage, "bad \xff bytes"}});
  dlq_record("attempt 2147483647", valid_bytes,
             {{kafka::kEventIdHeader, "11111111-1111-4111-8111-111111111111"},
              {kafka::dlq::kOriginalTopic, topic},
              {kafka::dlq::kAttempt, "2147483647"}});
  dlq_record("attempt, partition and offset past 64 bits", valid_bytes,
             {{kafka::kEventIdHeader, "22222222-2222-4222-8222-222222222222"},
              {kafka::dlq::kOriginalTopic, topic},
              {kafka::dlq::kOriginalPartition, "99999999999999999999"},
              {kafka::dlq::kOriginalOffset, "-99999999999999999999"},
              {kafka::dlq::kAttempt, "99999999999999999999"}});
  dlq_record("original topic that cannot exist", valid_bytes,
             {{kafka::kEventIdHeader, "33333333-3333-4333-8333-333333333333"},
              {kafka::dlq::kOriginalTopic, "no such topic!"},
              {kafka::dlq::kErrorClass, "telegram_5xx"},
              {kafka::dlq::kAttempt, "1"}});

  // ---- the admin API ----
  {
    auto channel = grpc::CreateChannel(system_->admin_address(),
                                       grpc::InsecureChannelCredentials());
    auto stub = ops::v1::FailedMessageService::NewStub(channel);
    // A well-formed token past 2^31 is a page like any other (here an empty one); the others
    // are not tokens this API makes.
    for (const std::string& token : {std::string("after:9999999999"),
                                     std::string("after:99999999999999999999"),
                                     std::string("after:-1"), std::string("\xff")}) {
      grpc::ClientContext context;
      context.AddMetadata("authorization", absl::StrCat("Bearer ", system_->admin_token()));
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
      ops::v1::ListFailedMessagesRequest request;
      request.set_page_token(absl::WebSafeBase64Escape(token));
      ops::v1::ListFailedMessagesResponse response;
      grpc::Status status = stub->List(&context, request, &response);
      bad.push_back({absl::StrCat("List page token ", absl::CHexEscape(token)), "admin API",
                     [status] {
                       return absl::StrCat("gRPC status ", status.error_code(), ": ",
                                           status.error_message());
                     }});
      EXPECT_EQ(status.error_code(), token == "after:9999999999"
                                         ? grpc::StatusCode::OK
                                         : grpc::StatusCode::INVALID_ARGUMENT)
          << token << ": " << status.error_message();
    }
  }

  // Normal payments keep flowing for a while after the last injection.
  size_t acked_before = payer.acked_at().size();
  ASSERT_TRUE(WaitUntil([&] { return payer.acked_at().size() >= acked_before + 30; },
                        absl::Seconds(60)));
  payer.Stop();
  std::map<int64_t, absl::Time> acked = payer.acked_at();

  // Every bad input accounted for.
  auto all_found = [&] {
    bool all = true;
    for (BadInput& b : bad) {
      if (b.found.empty()) b.found = b.where();
      all = all && !b.found.empty();
    }
    return all;
  };
  // Every normal payment notified.
  auto all_notified = [&] {
    std::map<int64_t, int> got = system_->MessagesByReservation();
    for (const auto& [reservation, at] : acked) {
      if (got[reservation] == 0) return false;
    }
    return true;
  };
  bool found = WaitUntil(all_found, absl::Seconds(90), absl::Milliseconds(500));
  bool notified = WaitUntil(all_notified, absl::Seconds(60));
  bool settled = WaitUntil(
      [&] {
        return QueryInt(db_.url(), "SELECT count(*) FROM retry.failed_messages "
                                   "WHERE status = 'PENDING'") == 0 &&
               QueryInt(db_.url(), "SELECT count(*) FROM notification.deliveries "
                                   "WHERE state = 'SENDING'") == 0;
      },
      absl::Seconds(60));

  printf("\n===== POISON TEST =====\n%-48s %-14s %s\n", "bad input", "stage", "ended up");
  for (const BadInput& b : bad) {
    printf("%-48s %-14s %s\n", absl::CHexEscape(b.what).c_str(), b.stage.c_str(),
           b.found.empty() ? "NOWHERE" : absl::CHexEscape(b.found).c_str());
  }

  EXPECT_TRUE(found) << "some bad input is nowhere an operator looks (table above)";
  EXPECT_TRUE(notified) << "some normal payment was never notified";
  EXPECT_TRUE(settled) << "rows left PENDING or deliveries left SENDING";

  // Exactly one message per payment, none for anything else, and none late.
  std::map<int64_t, int> messages = system_->MessagesByReservation();
  std::map<int64_t, absl::Time> first_message;
  for (const testing::TelegramMessage& m : system_->telegram().messages()) {
    int64_t id = ReservationIn(m.text);
    if (id != 0 && !first_message.count(id)) first_message[id] = m.received_at;
  }
  absl::Duration slowest;
  for (const auto& [reservation, at] : acked) {
    EXPECT_EQ(messages[reservation], 1) << "reservation " << reservation;
    ASSERT_TRUE(first_message.count(reservation)) << "reservation " << reservation;
    slowest = std::max(slowest, first_message[reservation] - at);
  }
  int total = 0;
  for (const auto& [reservation, n] : messages) total += n;
  EXPECT_EQ(total, static_cast<int>(acked.size())) << "messages for no payment";
  printf("normal payments: %zu acknowledged, %d not acknowledged, %d messages; slowest "
         "payment-to-message %s\n=======================\n",
         acked.size(), payer.not_acked(), total, absl::FormatDuration(slowest).c_str());
  // No stage stopped serving normal records for longer than its longest backoff (10 s) plus
  // the way through the pipeline.
  EXPECT_LT(slowest, absl::Seconds(20));

  // Nothing but the set-aside rows stays in the outbox.
  const std::string left_in_outbox =
      "SELECT count(*) FROM payment.outbox_events o WHERE NOT EXISTS "
      "(SELECT 1 FROM relay.set_aside_events s WHERE s.outbox_id = o.id)";
  EXPECT_TRUE(WaitUntil([&] { return QueryInt(db_.url(), left_in_outbox) == 0; },
                        absl::Seconds(30)))
      << QueryInt(db_.url(), left_in_outbox) << " rows neither relayed nor set aside";
}

}  // namespace
}  // namespace concert::e2e
