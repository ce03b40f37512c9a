// Every call of the public API (reserving, paying, the lists, the account) against the real
// Postgres through a real gRPC channel (in-process): rows, balances, pages and status codes a
// user would notice.
#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <thread>
#include <vector>

#include <google/protobuf/io/coded_stream.h>
#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/grpc_server.h"
#include "common/testing/environment.h"
#include "concert/events/v1/payment_events.pb.h"
#include "payment-server/demo.h"
#include "payment-server/server.h"
#include "payment-server/test_util.h"
#include "common/jwt.h"

namespace concert::payment {
namespace {

using ::concert::payment::testing::Exec;
using ::concert::testing::HealthStatus;
using ::concert::payment::testing::QueryInt;
using ::concert::payment::testing::QueryString;
using ::concert::testing::ScratchDatabase;
using ::concert::testing::WaitUntil;

constexpr char kSecret[] = "payments-test-secret";
constexpr char kInternalToken[] = "payments-test-internal";
constexpr char kBot[] = "concert_test_bot";

std::string Auth(int64_t user_id, absl::Duration ttl = absl::Hours(1)) {
  return absl::StrCat("Bearer ", jwt::MintHs256(kSecret,
                                                {.subject = absl::StrCat(user_id),
                                                 .expires_at = absl::Now() + ttl},
                                                absl::Now()));
}

// A server of its own on a given database, with channels and stubs to it. TelegramLinkService
// is called where the notifier calls it: the internal server (the public one without it).
class Client {
 public:
  explicit Client(PaymentServer& server)
      : channel_(server.grpc_server().InProcessChannel(grpc::ChannelArguments())),
        payments_(v1::PaymentService::NewStub(channel_)),
        reservations_(v1::ReservationService::NewStub(channel_)),
        concerts_(v1::ConcertService::NewStub(channel_)),
        accounts_(v1::AccountService::NewStub(channel_)),
        links_(internal::v1::TelegramLinkService::NewStub(
            server.internal_grpc_server() != nullptr
                ? server.internal_grpc_server()->InProcessChannel(grpc::ChannelArguments())
                : channel_)) {}

  grpc::Status Reserve(const std::string& auth, int64_t seat_id, v1::Reservation* out = nullptr) {
    grpc::ClientContext context;
    Prepare(context, auth);
    v1::ReserveSeatRequest request;
    request.set_seat_id(seat_id);
    v1::Reservation ignored;
    return reservations_->ReserveSeat(&context, request, out ? out : &ignored);
  }

  grpc::Status Pay(const std::string& auth, int64_t reservation_id, v1::Payment* out = nullptr,
                   const std::string& traceparent = "") {
    grpc::ClientContext context;
    Prepare(context, auth);
    if (!traceparent.empty()) context.AddMetadata("traceparent", traceparent);
    v1::PayConcertRequest request;
    request.set_reservation_id(reservation_id);
    v1::Payment ignored;
    return payments_->PayConcert(&context, request, out ? out : &ignored);
  }

  grpc::Status Get(const std::string& auth, int64_t payment_id, v1::Payment* out = nullptr) {
    grpc::ClientContext context;
    Prepare(context, auth);
    v1::GetPaymentRequest request;
    request.set_payment_id(payment_id);
    v1::Payment ignored;
    return payments_->GetPayment(&context, request, out ? out : &ignored);
  }

  grpc::Status ListConcerts(const std::string& auth, int32_t page_size,
                            const std::string& page_token, v1::ListConcertsResponse* out) {
    grpc::ClientContext context;
    Prepare(context, auth);
    v1::ListConcertsRequest request;
    request.set_page_size(page_size);
    request.set_page_token(page_token);
    return concerts_->ListConcerts(&context, request, out);
  }

  grpc::Status ListSeats(const std::string& auth, int64_t schedule_id, int32_t page_size,
                         const std::string& page_token, v1::ListSeatsResponse* out) {
    grpc::ClientContext context;
    Prepare(context, auth);
    v1::ListSeatsRequest request;
    request.set_schedule_id(schedule_id);
    request.set_page_size(page_size);
    request.set_page_token(page_token);
    return concerts_->ListSeats(&context, request, out);
  }

  grpc::Status GetAccount(const std::string& auth, v1::Account* out) {
    grpc::ClientContext context;
    Prepare(context, auth);
    return accounts_->GetAccount(&context, v1::GetAccountRequest(), out);
  }

  grpc::Status ListPayments(const std::string& auth, int32_t page_size,
                            const std::string& page_token, v1::ListPaymentsResponse* out) {
    grpc::ClientContext context;
    Prepare(context, auth);
    v1::ListPaymentsRequest request;
    request.set_page_size(page_size);
    request.set_page_token(page_token);
    return payments_->ListPayments(&context, request, out);
  }

  grpc::Status LinkTelegram(const std::string& auth, v1::TelegramLink* out) {
    grpc::ClientContext context;
    Prepare(context, auth);
    return accounts_->LinkTelegram(&context, v1::LinkTelegramRequest(), out);
  }

  grpc::Status UnlinkTelegram(const std::string& auth, v1::UnlinkTelegramResponse* out) {
    grpc::ClientContext context;
    Prepare(context, auth);
    return accounts_->UnlinkTelegram(&context, v1::UnlinkTelegramRequest(), out);
  }

  // As the notifier calls it: `auth` is "Bearer <INTERNAL_TOKEN>".
  grpc::Status ConfirmLink(const std::string& auth, const std::string& code, int64_t chat_id,
                           int64_t* user_id = nullptr) {
    grpc::ClientContext context;
    Prepare(context, auth);
    internal::v1::ConfirmLinkRequest request;
    request.set_code(code);
    request.set_chat_id(chat_id);
    internal::v1::ConfirmLinkResponse response;
    grpc::Status status = links_->ConfirmLink(&context, request, &response);
    if (user_id != nullptr) *user_id = response.user_id();
    return status;
  }

  grpc::Status UnlinkChat(const std::string& auth, int64_t chat_id, int64_t* user_id) {
    grpc::ClientContext context;
    Prepare(context, auth);
    internal::v1::UnlinkChatRequest request;
    request.set_chat_id(chat_id);
    request.set_reason("blocked");
    internal::v1::UnlinkChatResponse response;
    grpc::Status status = links_->UnlinkChat(&context, request, &response);
    *user_id = response.user_id();
    return status;
  }

  int Health() { return HealthStatus(channel_); }

 private:
  static void Prepare(grpc::ClientContext& context, const std::string& auth) {
    if (!auth.empty()) context.AddMetadata("authorization", auth);
    context.set_deadline(Deadline(absl::Seconds(30)));
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::PaymentService::Stub> payments_;
  std::unique_ptr<v1::ReservationService::Stub> reservations_;
  std::unique_ptr<v1::ConcertService::Stub> concerts_;
  std::unique_ptr<v1::AccountService::Stub> accounts_;
  std::unique_ptr<internal::v1::TelegramLinkService::Stub> links_;
};

class PaymentsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<DemoData> demo = SeedDemo(db_.url());
    ASSERT_TRUE(demo.ok()) << demo.status();
    demo_ = *demo;
    ServerOptions options;
    options.database_url = db_.url();
    options.grpc_address = "127.0.0.1:0";
    options.auth.hs256_secret = kSecret;
    options.telegram_bot_username = kBot;
    options.internal_token = kInternalToken;
    options.internal_grpc_address = "127.0.0.1:0";
    options.db_pool_size = 8;
    options.grpc_max_threads = 64;
    options.before_commit_for_test = [this](int64_t payment_id) -> absl::Status {
      if (fail_before_commit_.load()) {
        payments_seen_before_commit_.store(
            QueryInt(db_.url(), "SELECT count(*) FROM payment.payments"));
        return absl::InternalError("injected failure before commit");
      }
      return absl::OkStatus();
    };
    server_ = std::make_unique<PaymentServer>(options);
    ASSERT_TRUE(server_->Start().ok());
    ASSERT_TRUE(WaitUntil([&] { return server_->ready(); }, absl::Seconds(30)));
    client_ = std::make_unique<Client>(*server_);
  }

  // Everything an error must leave untouched.
  std::string Snapshot() {
    return QueryString(
        db_.url(),
        "SELECT (SELECT count(*) FROM payment.payments) || ' payments / ' || "
        "(SELECT count(*) FROM payment.outbox_events) || ' events / balances ' || "
        "(SELECT string_agg(id || ':' || balance_won, ',' ORDER BY id) FROM payment.users) || "
        "' / reservations ' || coalesce((SELECT string_agg(id || ':' || status || ':' || "
        "expires_at, ',' ORDER BY id) FROM payment.reservations), '')");
  }

  int64_t Balance(int64_t user) {
    return QueryInt(db_.url(), absl::StrCat("SELECT balance_won FROM payment.users WHERE id = ",
                                            user));
  }

  int64_t Count(const std::string& table) {
    return QueryInt(db_.url(), absl::StrCat("SELECT count(*) FROM payment.", table));
  }

  int64_t Hold(int64_t user, int64_t seat) {
    v1::Reservation r;
    grpc::Status s = client_->Reserve(Auth(user), seat, &r);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return r.reservation_id();
  }

  // Holds and pays `seat` as `payer`; the Telegram chat the payment's event names.
  int64_t PayAndReadEventChat(int64_t payer, int64_t seat) {
    v1::Payment payment;
    EXPECT_TRUE(client_->Pay(Auth(payer), Hold(payer, seat), &payment).ok());
    events::v1::PaymentCompleted event;
    EXPECT_TRUE(event.ParseFromString(absl::HexStringToBytes(QueryString(
        db_.url(), absl::StrCat("SELECT encode(payload, 'hex') FROM payment.outbox_events "
                                "WHERE event_id = '", payment.event_id(), "'")))));
    return event.telegram_chat_id();
  }

  ScratchDatabase db_{"payment"};
  DemoData demo_;
  std::atomic<bool> fail_before_commit_{false};
  std::atomic<int64_t> payments_seen_before_commit_{-1};
  std::unique_ptr<PaymentServer> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(PaymentsTest, PaymentWritesOnePaymentOneEventAndMovesTheBalance) {
  EXPECT_EQ(client_->Health(), 1);  // SERVING
  v1::Reservation reservation;
  ASSERT_TRUE(client_->Reserve(Auth(1), demo_.seat_ids[0], &reservation).ok());
  v1::Payment payment;
  grpc::Status status = client_->Pay(Auth(1), reservation.reservation_id(), &payment);
  ASSERT_TRUE(status.ok()) << status.error_message();

  EXPECT_GT(payment.payment_id(), 0);
  EXPECT_EQ(payment.reservation_id(), reservation.reservation_id());
  EXPECT_EQ(payment.user_id(), 1);
  EXPECT_EQ(payment.amount_won(), 50000);
  EXPECT_EQ(payment.balance_won(), 950000);
  EXPECT_FALSE(payment.event_id().empty());
  EXPECT_NEAR(payment.paid_at().seconds(), absl::ToUnixSeconds(absl::Now()), 60);

  EXPECT_EQ(Balance(1), 950000);
  EXPECT_EQ(Balance(2), 1000000);
  EXPECT_EQ(Count("payments"), 1);
  EXPECT_EQ(Count("outbox_events"), 1);
  EXPECT_EQ(QueryString(db_.url(), "SELECT status FROM payment.reservations"), "PAID");

  // The outbox row is what the relay publishes: key, type and a complete protobuf payload.
  pqxx::connection conn(db_.url());
  pqxx::nontransaction tx(conn);
  pqxx::row row = tx.exec1(
      "SELECT event_id::text, aggregate_type, aggregate_id, event_type, encode(payload, 'hex'), "
      "headers::text FROM payment.outbox_events");
  EXPECT_EQ(row[0].as<std::string>(), payment.event_id());
  EXPECT_EQ(row[1].as<std::string>(), "reservation");
  EXPECT_EQ(row[2].as<std::string>(), absl::StrCat(reservation.reservation_id()));
  EXPECT_EQ(row[3].as<std::string>(), "PaymentCompleted");
  EXPECT_EQ(row[5].as<std::string>(), "{}");
  events::v1::PaymentCompleted event;
  ASSERT_TRUE(event.ParseFromString(absl::HexStringToBytes(row[4].as<std::string>())));
  EXPECT_EQ(event.event_id(), payment.event_id());
  EXPECT_EQ(event.payment_id(), payment.payment_id());
  EXPECT_EQ(event.reservation_id(), reservation.reservation_id());
  EXPECT_EQ(event.user_id(), 1);
  EXPECT_EQ(event.user_mail(), "user1@example.com");
  EXPECT_EQ(event.concert_title(), kDemoConcertTitle);
  EXPECT_EQ(event.concert_start().seconds(), reservation.concert_start().seconds());
  EXPECT_GT(event.concert_start().seconds(), absl::ToUnixSeconds(absl::Now()));
  EXPECT_EQ(event.paid_at().seconds(), payment.paid_at().seconds());
  EXPECT_EQ(event.paid_at().nanos(), payment.paid_at().nanos());
  EXPECT_EQ(event.amount_won(), 50000);
  EXPECT_EQ(event.seat_id(), demo_.seat_ids[0]);
  EXPECT_EQ(QueryString(db_.url(), "SELECT event_id::text FROM payment.payments"),
            payment.event_id());

  // GetPayment returns it to its owner.
  v1::Payment got;
  ASSERT_TRUE(client_->Get(Auth(1), payment.payment_id(), &got).ok());
  EXPECT_EQ(got.payment_id(), payment.payment_id());
  EXPECT_EQ(got.event_id(), payment.event_id());
  EXPECT_EQ(got.amount_won(), 50000);
}

TEST_F(PaymentsTest, RepeatedPayConcertReturnsTheOriginalPaymentAndWritesNothing) {
  int64_t reservation = Hold(1, demo_.seat_ids[0]);
  v1::Payment first, again;
  ASSERT_TRUE(client_->Pay(Auth(1), reservation, &first).ok());
  std::string after_first = Snapshot();
  grpc::Status status = client_->Pay(Auth(1), reservation, &again);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(again.payment_id(), first.payment_id());
  EXPECT_EQ(again.event_id(), first.event_id());
  EXPECT_EQ(again.amount_won(), first.amount_won());
  EXPECT_EQ(Snapshot(), after_first);
  EXPECT_EQ(Balance(1), 950000);
}

TEST_F(PaymentsTest, TraceparentEndsUpInTheOutboxHeaders) {
  int64_t reservation = Hold(1, demo_.seat_ids[0]);
  const std::string traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  ASSERT_TRUE(client_->Pay(Auth(1), reservation, nullptr, traceparent).ok());
  EXPECT_EQ(QueryString(db_.url(), "SELECT headers->>'traceparent' FROM payment.outbox_events"),
            traceparent);
}

// The event payload is encoded in SQL (payment.pay_concert): its bytes must be exactly what
// protobuf's serializer writes, for every field, including multi-byte lengths, non-ASCII text
// and a negative (group) chat id, whose varint takes ten bytes.
TEST_F(PaymentsTest, EventPayloadIsByteForByteWhatProtobufWrites) {
  const std::string mail = absl::StrCat(std::string(150, 'm'), "@example.com");
  Exec(db_.url(), absl::StrCat("UPDATE payment.users SET mail = '", mail, "' WHERE id = 1"));
  Exec(db_.url(), "UPDATE payment.concerts SET title = '아이유 콘서트 – Seoul'");
  Exec(db_.url(), "INSERT INTO payment.telegram_links (user_id, chat_id) "
                  "VALUES (1, -1001234567890)");
  v1::Payment payment;
  ASSERT_TRUE(client_->Pay(Auth(1), Hold(1, demo_.seat_ids[0]), &payment).ok());

  std::string payload = absl::HexStringToBytes(
      QueryString(db_.url(), "SELECT encode(payload, 'hex') FROM payment.outbox_events"));
  events::v1::PaymentCompleted event;
  ASSERT_TRUE(event.ParseFromString(payload));
  EXPECT_EQ(event.SerializeAsString(), payload);
  // Every field is present (a field added to the event but not to the SQL would be missing).
  const google::protobuf::Reflection* reflection = event.GetReflection();
  const google::protobuf::Descriptor* descriptor = event.GetDescriptor();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    EXPECT_TRUE(reflection->HasField(event, descriptor->field(i))) << descriptor->field(i)->name();
  }
  EXPECT_EQ(event.user_mail(), mail);
  EXPECT_EQ(event.concert_title(), "아이유 콘서트 – Seoul");
  EXPECT_EQ(event.telegram_chat_id(), -1001234567890);
  EXPECT_EQ(event.payment_id(), payment.payment_id());
  EXPECT_EQ(event.paid_at().seconds(), payment.paid_at().seconds());
  EXPECT_EQ(event.paid_at().nanos(), payment.paid_at().nanos());
}

TEST_F(PaymentsTest, SqlVarintsMatchProtobufs) {
  for (int64_t v : {int64_t{0}, int64_t{1}, int64_t{127}, int64_t{128}, int64_t{300},
                    int64_t{1} << 35, std::numeric_limits<int64_t>::max(), int64_t{-1},
                    int64_t{-1001234567890}, std::numeric_limits<int64_t>::min()}) {
    uint8_t buffer[10];
    uint8_t* end = google::protobuf::io::CodedOutputStream::WriteVarint64ToArray(
        static_cast<uint64_t>(v), buffer);
    std::string want(reinterpret_cast<const char*>(buffer), end - buffer);
    EXPECT_EQ(QueryString(db_.url(), absl::StrCat("SELECT encode(payment.pb_varint('", v,
                                                  "'::bigint), 'hex')")),
              absl::BytesToHexString(want))
        << v;
  }
}

TEST_F(PaymentsTest, EveryErrorIsActionableAndWritesNothing) {
  int64_t mine = Hold(1, demo_.seat_ids[0]);
  int64_t theirs = Hold(2, demo_.seat_ids[1]);
  const std::string before = Snapshot();
  struct Case {
    std::string name, auth;
    int64_t reservation;
    grpc::StatusCode code;
    std::string message_part;
  };
  std::vector<Case> cases = {
      {"no token", "", mine, grpc::StatusCode::UNAUTHENTICATED, "authorization"},
      {"not bearer", "Token abc", mine, grpc::StatusCode::UNAUTHENTICATED, "Bearer"},
      {"garbage token", "Bearer v1.1.2.3", mine, grpc::StatusCode::UNAUTHENTICATED, "malformed"},
      {"expired token", Auth(1, -absl::Minutes(5)), mine, grpc::StatusCode::UNAUTHENTICATED,
       "expired"},
      {"wrong secret",
       absl::StrCat("Bearer ", jwt::MintHs256("other", {.subject = "1",
                                                        .expires_at = absl::Now() + absl::Hours(1)},
                                              absl::Now())),
       mine,
       grpc::StatusCode::UNAUTHENTICATED, "signature"},
      {"someone else's", Auth(1), theirs, grpc::StatusCode::PERMISSION_DENIED, "another user"},
      {"unknown", Auth(1), 987654321, grpc::StatusCode::NOT_FOUND, "does not exist"},
      {"zero id", Auth(1), 0, grpc::StatusCode::INVALID_ARGUMENT, "positive"},
      {"negative id", Auth(1), -3, grpc::StatusCode::INVALID_ARGUMENT, "positive"},
  };
  for (const Case& c : cases) {
    grpc::Status status = client_->Pay(c.auth, c.reservation);
    EXPECT_EQ(status.error_code(), c.code) << c.name << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(c.message_part), std::string::npos)
        << c.name << ": " << status.error_message();
    EXPECT_EQ(Snapshot(), before) << c.name;
  }

  // Insufficient balance.
  Exec(db_.url(), "UPDATE payment.users SET balance_won = 49999 WHERE id = 1");
  std::string poor = Snapshot();
  grpc::Status status = client_->Pay(Auth(1), mine);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("insufficient balance"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(Snapshot(), poor);
  EXPECT_EQ(Balance(1), 49999);

  // Expired hold: refused, and the reservation is left as it was (not even marked EXPIRED).
  Exec(db_.url(), "UPDATE payment.users SET balance_won = 1000000 WHERE id = 1");
  Exec(db_.url(), absl::StrCat("UPDATE payment.reservations SET expires_at = now() - "
                               "interval '1 second' WHERE id = ", mine));
  std::string expired = Snapshot();
  status = client_->Pay(Auth(1), mine);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("hold expired"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(Snapshot(), expired);
  EXPECT_EQ(Count("payments"), 0);
  EXPECT_EQ(Count("outbox_events"), 0);
}

TEST_F(PaymentsTest, TwentyConcurrentPaymentsOfOneReservationPayOnce) {
  int64_t reservation = Hold(1, demo_.seat_ids[0]);
  constexpr int kCalls = 20;
  std::vector<grpc::Status> statuses(kCalls);
  std::vector<v1::Payment> payments(kCalls);
  std::vector<std::thread> threads;
  std::string auth = Auth(1);
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      Client own(*server_);
      statuses[i] = own.Pay(auth, reservation, &payments[i]);
    });
  }
  for (auto& t : threads) t.join();
  int64_t paid_id = 0;
  int ok = 0;
  for (int i = 0; i < kCalls; ++i) {
    if (statuses[i].ok()) {
      ++ok;
      if (paid_id == 0) paid_id = payments[i].payment_id();
      EXPECT_EQ(payments[i].payment_id(), paid_id);
    } else {
      // Only errors that tell the caller to retry are acceptable.
      EXPECT_TRUE(statuses[i].error_code() == grpc::StatusCode::ABORTED ||
                  statuses[i].error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED)
          << statuses[i].error_code() << " " << statuses[i].error_message();
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_EQ(Count("payments"), 1);
  EXPECT_EQ(Count("outbox_events"), 1);
  EXPECT_EQ(Balance(1), 950000);
}

TEST_F(PaymentsTest, ConcurrentPaymentsOfOneUserNeverOverdraw) {
  // Enough for exactly three of the eight seats.
  Exec(db_.url(), "UPDATE payment.users SET balance_won = 160000 WHERE id = 3");
  constexpr int kSeats = 8;
  std::vector<int64_t> reservations;
  for (int i = 0; i < kSeats; ++i) reservations.push_back(Hold(3, demo_.seat_ids[10 + i]));
  std::vector<grpc::Status> statuses(kSeats);
  std::vector<std::thread> threads;
  std::string auth = Auth(3);
  for (int i = 0; i < kSeats; ++i) {
    threads.emplace_back([&, i] {
      Client own(*server_);
      statuses[i] = own.Pay(auth, reservations[i]);
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, insufficient = 0;
  for (const grpc::Status& s : statuses) {
    if (s.ok()) {
      ++ok;
    } else if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION &&
               s.error_message().find("insufficient balance") != std::string::npos) {
      ++insufficient;
    } else {
      ADD_FAILURE() << s.error_code() << " " << s.error_message();
    }
  }
  EXPECT_EQ(ok, 3);
  EXPECT_EQ(insufficient, kSeats - 3);
  EXPECT_EQ(Balance(3), 10000);
  EXPECT_EQ(Count("payments"), 3);
  EXPECT_EQ(Count("outbox_events"), 3);
  EXPECT_EQ(QueryInt(db_.url(), "SELECT count(*) FROM payment.reservations WHERE status = 'PAID'"),
            3);
}

TEST_F(PaymentsTest, FailureAfterPaymentInsertBeforeCommitLeavesNeitherRow) {
  int64_t reservation = Hold(1, demo_.seat_ids[0]);
  std::string before = Snapshot();
  fail_before_commit_.store(true);
  grpc::Status status = client_->Pay(Auth(1), reservation);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL) << status.error_message();
  EXPECT_NE(status.error_message().find("injected"), std::string::npos);
  // The hook ran after the inserts (they are invisible to other connections until commit).
  EXPECT_EQ(payments_seen_before_commit_.load(), 0);
  EXPECT_EQ(Snapshot(), before);
  EXPECT_EQ(Count("payments"), 0);
  EXPECT_EQ(Count("outbox_events"), 0);
  EXPECT_EQ(Balance(1), 1000000);

  // Nothing was left half-done: the same reservation can still be paid.
  fail_before_commit_.store(false);
  ASSERT_TRUE(client_->Pay(Auth(1), reservation).ok());
  EXPECT_EQ(Count("payments"), 1);
  EXPECT_EQ(Count("outbox_events"), 1);
}

TEST_F(PaymentsTest, ReserveSeatHoldsAndRefusesATakenSeat) {
  v1::Reservation r;
  grpc::Status status = client_->Reserve(Auth(1), demo_.seat_ids[5], &r);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_GT(r.reservation_id(), 0);
  EXPECT_EQ(r.user_id(), 1);
  EXPECT_EQ(r.seat_id(), demo_.seat_ids[5]);
  EXPECT_EQ(r.amount_won(), 50000);
  EXPECT_EQ(r.status(), v1::RESERVATION_STATUS_HELD);
  EXPECT_EQ(r.concert_title(), kDemoConcertTitle);
  EXPECT_NEAR(r.expires_at().seconds(), absl::ToUnixSeconds(absl::Now() + absl::Minutes(5)), 30);

  status = client_->Reserve(Auth(2), demo_.seat_ids[5]);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS) << status.error_message();
  status = client_->Reserve(Auth(1), demo_.seat_ids[5]);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS) << status.error_message();
  EXPECT_EQ(client_->Reserve(Auth(1), 0).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->Reserve(Auth(1), 99999999).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(client_->Reserve("", demo_.seat_ids[6]).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(client_->Reserve(Auth(77), demo_.seat_ids[6]).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Count("reservations"), 1);

  // A sold seat stays taken.
  ASSERT_TRUE(client_->Pay(Auth(1), r.reservation_id()).ok());
  EXPECT_EQ(client_->Reserve(Auth(2), demo_.seat_ids[5]).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
}

TEST_F(PaymentsTest, AnExpiredHoldCanBeReservedAgain) {
  int64_t old_hold = Hold(1, demo_.seat_ids[7]);
  Exec(db_.url(), absl::StrCat("UPDATE payment.reservations SET expires_at = now() - "
                               "interval '1 second' WHERE id = ", old_hold));
  v1::Reservation fresh;
  grpc::Status status = client_->Reserve(Auth(2), demo_.seat_ids[7], &fresh);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_NE(fresh.reservation_id(), old_hold);
  EXPECT_EQ(fresh.user_id(), 2);
  EXPECT_EQ(QueryString(db_.url(), absl::StrCat("SELECT status FROM payment.reservations WHERE "
                                                "id = ", old_hold)),
            "EXPIRED");
  // The old holder can no longer pay; the new one can.
  EXPECT_EQ(client_->Pay(Auth(1), old_hold).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(client_->Pay(Auth(2), fresh.reservation_id()).ok());
  EXPECT_EQ(Balance(1), 1000000);
  EXPECT_EQ(Balance(2), 950000);
}

// Every page of a list, following next_page_token; each page's call must succeed.
std::vector<v1::Seat> AllSeats(Client& client, const std::string& auth, int64_t schedule_id,
                               int32_t page_size) {
  std::vector<v1::Seat> seats;
  std::string token;
  for (int page = 0; page < 1000; ++page) {
    v1::ListSeatsResponse response;
    grpc::Status status = client.ListSeats(auth, schedule_id, page_size, token, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    if (!status.ok()) break;
    seats.insert(seats.end(), response.seats().begin(), response.seats().end());
    token = response.next_page_token();
    if (token.empty()) break;
  }
  return seats;
}

std::vector<int64_t> ConcertIds(const v1::ListConcertsResponse& page) {
  std::vector<int64_t> ids;
  for (const v1::Concert& c : page.concerts()) ids.push_back(c.concert_id());
  return ids;
}

std::vector<int64_t> PaymentIds(const v1::ListPaymentsResponse& page) {
  std::vector<int64_t> ids;
  for (const v1::Payment& p : page.payments()) ids.push_back(p.payment_id());
  return ids;
}

TEST_F(PaymentsTest, ListConcertsPagesByIdWithSchedulesAndIgnoresInsertsBehindTheCursor) {
  // Besides the demo concert: three more with explicit ids, so that a concert can later be
  // inserted *between* pages; concert 30 has two schedules, 40 has none.
  Exec(db_.url(),
       "INSERT INTO payment.concerts (id, title) VALUES (20, 'Twenty'), (30, 'Thirty'), "
       "(40, 'Forty');"
       "INSERT INTO payment.schedules (id, concert_id, starts_at) VALUES "
       "(200, 20, '2031-01-01T19:00:00Z'), (302, 30, '2031-03-02T19:00:00Z'), "
       "(301, 30, '2031-03-01T19:00:00Z');"
       "INSERT INTO payment.seats (schedule_id, seat_number, price_won) VALUES "
       "(301, 1, 70000), (301, 2, 70000), (302, 1, 80000)");
  ASSERT_EQ(demo_.concert_id, 1);
  const std::string auth = Auth(2);

  v1::ListConcertsResponse page1;
  grpc::Status status = client_->ListConcerts(auth, 2, "", &page1);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(ConcertIds(page1), (std::vector<int64_t>{1, 20}));
  ASSERT_FALSE(page1.next_page_token().empty());
  const v1::Concert& demo = page1.concerts(0);
  EXPECT_EQ(demo.title(), kDemoConcertTitle);
  ASSERT_EQ(demo.schedules_size(), 1);
  EXPECT_EQ(demo.schedules(0).schedule_id(), demo_.schedule_id);
  EXPECT_EQ(demo.schedules(0).seat_count(), 50);
  EXPECT_EQ(demo.schedules(0).free_seat_count(), 50);
  EXPECT_GT(demo.schedules(0).starts_at().seconds(), absl::ToUnixSeconds(absl::Now()));
  ASSERT_EQ(page1.concerts(1).schedules_size(), 1);
  EXPECT_EQ(page1.concerts(1).schedules(0).seat_count(), 0);

  // Inserted behind the cursor (id 10) and ahead of it (id 35) between the page calls: the
  // next pages neither repeat concert 20 (as OFFSET would) nor skip anything ahead.
  Exec(db_.url(), "INSERT INTO payment.concerts (id, title) VALUES (10, 'Ten'), (35, 'Late')");
  v1::ListConcertsResponse page2;
  status = client_->ListConcerts(auth, 2, page1.next_page_token(), &page2);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(ConcertIds(page2), (std::vector<int64_t>{30, 35}));
  const v1::Concert& thirty = page2.concerts(0);
  EXPECT_EQ(thirty.title(), "Thirty");
  ASSERT_EQ(thirty.schedules_size(), 2);
  EXPECT_EQ(thirty.schedules(0).schedule_id(), 301);  // earliest first
  EXPECT_EQ(thirty.schedules(0).seat_count(), 2);
  EXPECT_EQ(thirty.schedules(0).free_seat_count(), 2);
  EXPECT_EQ(thirty.schedules(0).starts_at().seconds(), 1930158000);  // 2031-03-01T19:00:00Z
  EXPECT_EQ(thirty.schedules(1).schedule_id(), 302);
  EXPECT_EQ(thirty.schedules(1).seat_count(), 1);
  EXPECT_EQ(page2.concerts(1).schedules_size(), 0);
  ASSERT_FALSE(page2.next_page_token().empty());

  v1::ListConcertsResponse page3;
  status = client_->ListConcerts(auth, 2, page2.next_page_token(), &page3);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(ConcertIds(page3), (std::vector<int64_t>{40}));
  EXPECT_TRUE(page3.next_page_token().empty());

  // A fresh listing with the default page size sees everything, the new ones included.
  v1::ListConcertsResponse all;
  ASSERT_TRUE(client_->ListConcerts(auth, 0, "", &all).ok());
  EXPECT_EQ(ConcertIds(all), (std::vector<int64_t>{1, 10, 20, 30, 35, 40}));
  EXPECT_TRUE(all.next_page_token().empty());
}

// A concert postponed with no date yet: its schedule starts at 'infinity' (or '-infinity'), a
// valid timestamptz. It is listed without a start and its seats sell as any other's.
TEST_F(PaymentsTest, AScheduleWithoutADateIsListedWithoutAStartAndSoldNormally) {
  for (const char* when : {"infinity", "-infinity"}) {
    SCOPED_TRACE(when);
    Exec(db_.url(), absl::StrCat("UPDATE payment.schedules SET starts_at = '", when, "'"));
    v1::ListConcertsResponse concerts;
    grpc::Status status = client_->ListConcerts(Auth(1), 0, "", &concerts);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(concerts.concerts_size(), 1);
    ASSERT_EQ(concerts.concerts(0).schedules_size(), 1);
    EXPECT_FALSE(concerts.concerts(0).schedules(0).has_starts_at());
    EXPECT_EQ(concerts.concerts(0).schedules(0).seat_count(), 50);
    v1::ListSeatsResponse seats;
    status = client_->ListSeats(Auth(1), demo_.schedule_id, 0, "", &seats);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(seats.seats_size(), 50);
  }
  v1::Reservation reservation;
  grpc::Status status = client_->Reserve(Auth(1), demo_.seat_ids[0], &reservation);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(reservation.has_concert_start());
  v1::Payment payment;
  status = client_->Pay(Auth(1), reservation.reservation_id(), &payment);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Balance(1), 950000);
  events::v1::PaymentCompleted event;
  ASSERT_TRUE(event.ParseFromString(absl::HexStringToBytes(
      QueryString(db_.url(), "SELECT encode(payload, 'hex') FROM payment.outbox_events"))));
  EXPECT_EQ(event.payment_id(), payment.payment_id());
  EXPECT_FALSE(event.has_concert_start());
}

TEST_F(PaymentsTest, ListSeatsShowsFreeHeldSoldAndAnExpiredHoldAsFree) {
  const int64_t held = demo_.seat_ids[0], sold = demo_.seat_ids[1], expired = demo_.seat_ids[2];
  Hold(1, held);
  ASSERT_TRUE(client_->Pay(Auth(2), Hold(2, sold)).ok());
  int64_t lapsed = Hold(3, expired);
  Exec(db_.url(), absl::StrCat("UPDATE payment.reservations SET expires_at = now() - "
                               "interval '1 second' WHERE id = ", lapsed));

  v1::ListSeatsResponse page;
  grpc::Status status = client_->ListSeats(Auth(1), demo_.schedule_id, 0, "", &page);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(page.seats_size(), 50);  // the default page size holds all of them
  EXPECT_TRUE(page.next_page_token().empty());
  for (int i = 0; i < page.seats_size(); ++i) {
    const v1::Seat& seat = page.seats(i);
    EXPECT_EQ(seat.seat_id(), demo_.seat_ids[i]);
    EXPECT_EQ(seat.seat_number(), i + 1);
    EXPECT_EQ(seat.price_won(), 50000);
    v1::SeatAvailability expected = seat.seat_id() == held   ? v1::SEAT_AVAILABILITY_HELD
                                    : seat.seat_id() == sold ? v1::SEAT_AVAILABILITY_SOLD
                                                             : v1::SEAT_AVAILABILITY_FREE;
    EXPECT_EQ(seat.availability(), expected) << "seat " << seat.seat_id();
  }
  v1::ListConcertsResponse concerts;
  ASSERT_TRUE(client_->ListConcerts(Auth(1), 0, "", &concerts).ok());
  ASSERT_EQ(concerts.concerts_size(), 1);
  EXPECT_EQ(concerts.concerts(0).schedules(0).seat_count(), 50);
  EXPECT_EQ(concerts.concerts(0).schedules(0).free_seat_count(), 48);

  // FREE means what ReserveSeat does: the expired hold's seat can be held, and then shows HELD;
  // a HELD seat cannot.
  EXPECT_TRUE(client_->Reserve(Auth(1), expired).ok());
  EXPECT_EQ(client_->Reserve(Auth(3), held).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  ASSERT_TRUE(client_->ListSeats(Auth(1), demo_.schedule_id, 3, "", &page).ok());
  ASSERT_EQ(page.seats_size(), 3);
  EXPECT_EQ(page.seats(2).availability(), v1::SEAT_AVAILABILITY_HELD);
  // A hold that expires turns its seat FREE without anyone writing anything.
  Exec(db_.url(), "UPDATE payment.reservations SET expires_at = now() - interval '1 second' "
                  "WHERE status = 'HELD'");
  ASSERT_TRUE(client_->ListSeats(Auth(1), demo_.schedule_id, 3, "", &page).ok());
  EXPECT_EQ(page.seats(0).availability(), v1::SEAT_AVAILABILITY_FREE);
  EXPECT_EQ(page.seats(1).availability(), v1::SEAT_AVAILABILITY_SOLD);
  EXPECT_EQ(page.seats(2).availability(), v1::SEAT_AVAILABILITY_FREE);
}

TEST_F(PaymentsTest, ListSeatsPagesBySeatNumberAndIgnoresInsertsBehindTheCursor) {
  v1::ListSeatsResponse page1;
  ASSERT_TRUE(client_->ListSeats(Auth(1), demo_.schedule_id, 20, "", &page1).ok());
  ASSERT_EQ(page1.seats_size(), 20);
  EXPECT_EQ(page1.seats(19).seat_number(), 20);
  // New seats before the cursor (numbers 0 and -5) and after the last one (51).
  Exec(db_.url(), absl::StrCat("INSERT INTO payment.seats (schedule_id, seat_number, price_won) "
                               "VALUES (", demo_.schedule_id, ", 0, 1000), (", demo_.schedule_id,
                               ", -5, 1000), (", demo_.schedule_id, ", 51, 1000)"));
  v1::ListSeatsResponse page2;
  ASSERT_TRUE(
      client_->ListSeats(Auth(1), demo_.schedule_id, 20, page1.next_page_token(), &page2).ok());
  ASSERT_EQ(page2.seats_size(), 20);
  EXPECT_EQ(page2.seats(0).seat_number(), 21);
  v1::ListSeatsResponse page3;
  ASSERT_TRUE(
      client_->ListSeats(Auth(1), demo_.schedule_id, 20, page2.next_page_token(), &page3).ok());
  ASSERT_EQ(page3.seats_size(), 11);
  EXPECT_EQ(page3.seats(0).seat_number(), 41);
  EXPECT_EQ(page3.seats(10).seat_number(), 51);
  EXPECT_TRUE(page3.next_page_token().empty());

  // Walked afresh one seat per page: every seat exactly once, in seat-number order.
  std::vector<v1::Seat> all = AllSeats(*client_, Auth(1), demo_.schedule_id, 1);
  ASSERT_EQ(all.size(), 53u);
  EXPECT_EQ(all.front().seat_number(), -5);
  EXPECT_EQ(all[1].seat_number(), 0);
  for (size_t i = 2; i < all.size(); ++i) EXPECT_EQ(all[i].seat_number(), static_cast<int>(i - 1));
  // A page size that divides the seats evenly ends with an empty token, not an empty page.
  Exec(db_.url(), absl::StrCat("DELETE FROM payment.seats WHERE schedule_id = ",
                               demo_.schedule_id, " AND seat_number IN (-5, 0, 51)"));
  v1::ListSeatsResponse half;
  ASSERT_TRUE(client_->ListSeats(Auth(1), demo_.schedule_id, 25, "", &half).ok());
  ASSERT_TRUE(
      client_->ListSeats(Auth(1), demo_.schedule_id, 25, half.next_page_token(), &half).ok());
  EXPECT_EQ(half.seats_size(), 25);
  EXPECT_TRUE(half.next_page_token().empty());
}

TEST_F(PaymentsTest, GetAccountShowsTheCallersOwnAccountWithTheDebitedBalance) {
  v1::Account account;
  grpc::Status status = client_->GetAccount(Auth(1), &account);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(account.user_id(), 1);
  EXPECT_EQ(account.name(), "demo-user-1");
  EXPECT_EQ(account.mail(), "user1@example.com");
  EXPECT_EQ(account.balance_won(), 1000000);

  ASSERT_TRUE(client_->Pay(Auth(1), Hold(1, demo_.seat_ids[0])).ok());
  ASSERT_TRUE(client_->GetAccount(Auth(1), &account).ok());
  EXPECT_EQ(account.balance_won(), 950000);
  EXPECT_EQ(account.balance_won(), Balance(1));
  v1::Account other;
  ASSERT_TRUE(client_->GetAccount(Auth(2), &other).ok());
  EXPECT_EQ(other.user_id(), 2);
  EXPECT_EQ(other.mail(), "user2@example.com");
  EXPECT_EQ(other.balance_won(), 1000000);

  status = client_->GetAccount(Auth(77), &account);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  EXPECT_EQ(client_->GetAccount("", &account).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

// The code in a LinkTelegram link, or "" when the link is not of the documented form.
std::string CodeOf(const v1::TelegramLink& link) {
  std::string prefix = absl::StrCat("https://t.me/", kBot, "?start=");
  if (!absl::StartsWith(link.link(), prefix)) return "";
  std::string code = link.link().substr(prefix.size());
  if (code.empty() || code.size() > 64) return "";
  for (char c : code) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '-') return "";
  }
  return code;
}

TEST_F(PaymentsTest, TelegramLinkBindsTheCallersChatAndThePaymentEventCarriesIt) {
  const std::string internal = absl::StrCat("Bearer ", kInternalToken);
  v1::TelegramLink link;
  ASSERT_TRUE(client_->LinkTelegram(Auth(1), &link).ok());
  std::string code = CodeOf(link);
  ASSERT_FALSE(code.empty()) << link.link();
  EXPECT_GE(code.size(), 43u);  // 32 random bytes
  absl::Duration ttl = absl::FromUnixSeconds(link.expires_at().seconds()) - absl::Now();
  EXPECT_GT(ttl, absl::Minutes(14));
  EXPECT_LE(ttl, absl::Minutes(15));
  // Only the code's hash is stored.
  EXPECT_EQ(QueryInt(db_.url(), absl::StrCat("SELECT count(*) FROM payment.telegram_link_codes "
                                             "WHERE code_hash = sha256('", code, "')")),
            1);
  v1::TelegramLink second;
  ASSERT_TRUE(client_->LinkTelegram(Auth(1), &second).ok());
  EXPECT_NE(CodeOf(second), code);

  v1::Account account;
  ASSERT_TRUE(client_->GetAccount(Auth(1), &account).ok());
  EXPECT_FALSE(account.telegram_linked());

  int64_t user = 0;
  EXPECT_EQ(client_->ConfirmLink("Bearer wrong", code, 5001).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(client_->ConfirmLink(Auth(1), code, 5001).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);  // a user's token is not the internal one
  grpc::Status confirmed = client_->ConfirmLink(internal, code, 5001, &user);
  ASSERT_TRUE(confirmed.ok()) << confirmed.error_message();
  EXPECT_EQ(user, 1);
  ASSERT_TRUE(client_->GetAccount(Auth(1), &account).ok());
  EXPECT_TRUE(account.telegram_linked());

  // A retry after a lost answer gets the same answer; another chat with a used code does not.
  EXPECT_TRUE(client_->ConfirmLink(internal, code, 5001, &user).ok());
  grpc::Status reused = client_->ConfirmLink(internal, code, 6001);
  EXPECT_EQ(reused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(reused.error_message(), "link code already used");
  EXPECT_EQ(client_->ConfirmLink(internal, "forged-code", 6001).error_code(),
            grpc::StatusCode::NOT_FOUND);
  Exec(db_.url(), absl::StrCat("UPDATE payment.telegram_link_codes SET expires_at = now() "
                               "WHERE code_hash = sha256('", CodeOf(second), "')"));
  grpc::Status expired = client_->ConfirmLink(internal, CodeOf(second), 6001);
  EXPECT_EQ(expired.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(expired.error_message(), "link code expired");

  // The payment's event names the chat linked when it was paid; an unlinked payer's names 0.
  EXPECT_EQ(PayAndReadEventChat(1, demo_.seat_ids[0]), 5001);
  EXPECT_EQ(PayAndReadEventChat(2, demo_.seat_ids[1]), 0);

  // A chat belongs to one user: user 2 linking chat 5001 takes it from user 1.
  v1::TelegramLink of_two;
  ASSERT_TRUE(client_->LinkTelegram(Auth(2), &of_two).ok());
  ASSERT_TRUE(client_->ConfirmLink(internal, CodeOf(of_two), 5001, &user).ok());
  EXPECT_EQ(user, 2);
  ASSERT_TRUE(client_->GetAccount(Auth(1), &account).ok());
  EXPECT_FALSE(account.telegram_linked());
  EXPECT_EQ(PayAndReadEventChat(1, demo_.seat_ids[2]), 0);
  EXPECT_EQ(PayAndReadEventChat(2, demo_.seat_ids[3]), 5001);

  ASSERT_TRUE(client_->UnlinkChat(internal, 5001, &user).ok());
  EXPECT_EQ(user, 2);
  ASSERT_TRUE(client_->UnlinkChat(internal, 5001, &user).ok());
  EXPECT_EQ(user, 0);
  v1::UnlinkTelegramResponse unlinked;
  ASSERT_TRUE(client_->UnlinkTelegram(Auth(2), &unlinked).ok());
  EXPECT_FALSE(unlinked.unlinked());
  EXPECT_EQ(Count("telegram_links"), 0);
}

TEST_F(PaymentsTest, UnlinkTelegramRemovesTheCallersLinkAndTheNextEventCarriesNoChat) {
  const std::string internal = absl::StrCat("Bearer ", kInternalToken);
  auto link = [&](int64_t user, int64_t chat) {
    v1::TelegramLink link;
    ASSERT_TRUE(client_->LinkTelegram(Auth(user), &link).ok());
    ASSERT_TRUE(client_->ConfirmLink(internal, CodeOf(link), chat).ok());
  };
  link(1, 5001);
  link(2, 5002);
  EXPECT_EQ(PayAndReadEventChat(1, demo_.seat_ids[0]), 5001);

  v1::UnlinkTelegramResponse unlinked;
  grpc::Status status = client_->UnlinkTelegram(Auth(1), &unlinked);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(unlinked.unlinked());
  v1::Account account;
  ASSERT_TRUE(client_->GetAccount(Auth(1), &account).ok());
  EXPECT_FALSE(account.telegram_linked());
  EXPECT_EQ(PayAndReadEventChat(1, demo_.seat_ids[1]), 0);
  // Only the caller's link: the other user's stays.
  ASSERT_TRUE(client_->GetAccount(Auth(2), &account).ok());
  EXPECT_TRUE(account.telegram_linked());
  EXPECT_EQ(PayAndReadEventChat(2, demo_.seat_ids[2]), 5002);
  // Again: nothing left to remove.
  ASSERT_TRUE(client_->UnlinkTelegram(Auth(1), &unlinked).ok());
  EXPECT_FALSE(unlinked.unlinked());
  EXPECT_EQ(Count("telegram_links"), 1);
  EXPECT_EQ(client_->UnlinkTelegram("", &unlinked).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

// The notifier's service listens apart from the public API: on the public port even the right
// INTERNAL_TOKEN gets UNIMPLEMENTED, so nobody outside can try tokens against it.
TEST_F(PaymentsTest, TelegramLinkServiceIsServedOnTheInternalPortOnly) {
  Exec(db_.url(), "INSERT INTO payment.telegram_links (user_id, chat_id) VALUES (1, 5001)");
  auto unlink = [](int port) {
    auto stub = internal::v1::TelegramLinkService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.AddMetadata("authorization", absl::StrCat("Bearer ", kInternalToken));
    context.set_deadline(Deadline(absl::Seconds(30)));
    internal::v1::UnlinkChatRequest request;
    request.set_chat_id(5001);
    internal::v1::UnlinkChatResponse response;
    return stub->UnlinkChat(&context, request, &response);
  };
  ASSERT_GT(server_->internal_port(), 0);
  ASSERT_NE(server_->internal_port(), server_->port());
  grpc::Status on_public = unlink(server_->port());
  EXPECT_EQ(on_public.error_code(), grpc::StatusCode::UNIMPLEMENTED) << on_public.error_message();
  EXPECT_EQ(Count("telegram_links"), 1);
  grpc::Status on_internal = unlink(server_->internal_port());
  EXPECT_TRUE(on_internal.ok()) << on_internal.error_message();
  EXPECT_EQ(Count("telegram_links"), 0);
}

TEST_F(PaymentsTest, LinkTelegramWithoutABotIsFailedPrecondition) {
  server_.reset();
  ServerOptions options;
  options.database_url = db_.url();
  options.grpc_address = "127.0.0.1:0";
  options.auth.hs256_secret = kSecret;
  PaymentServer server(options);
  ASSERT_TRUE(server.Start().ok());
  ASSERT_TRUE(WaitUntil([&] { return server.ready(); }, absl::Seconds(30)));
  Client client(server);
  v1::TelegramLink link;
  grpc::Status status = client.LinkTelegram(Auth(1), &link);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
  // Without INTERNAL_TOKEN the internal service is not there at all.
  EXPECT_EQ(client.ConfirmLink(absl::StrCat("Bearer ", kInternalToken), "x", 1).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
}

// One user, one subject: `sub` is refused unless it is the user id in canonical decimal.
TEST_F(PaymentsTest, ATokenSubjectOtherThanACanonicalUserIdIsUnauthenticated) {
  auto token_for = [](const std::string& sub) {
    return absl::StrCat("Bearer ",
                        jwt::MintHs256(kSecret,
                                       {.subject = sub, .expires_at = absl::Now() + absl::Hours(1)},
                                       absl::Now()));
  };
  v1::Account account;
  grpc::Status status = client_->GetAccount(token_for("1"), &account);
  ASSERT_TRUE(status.ok()) << status.error_message();
  for (const char* sub : {"01", " 1", "+1", "0001", "1 ", "0", "-1", "1.0", "9223372036854775808",
                          "alice"}) {
    status = client_->GetAccount(token_for(sub), &account);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << "sub '" << sub << "'";
    EXPECT_NE(status.error_message().find("is not a user id"), std::string::npos)
        << status.error_message();
  }
}

TEST_F(PaymentsTest, ListPaymentsShowsOnlyTheCallersNewestFirstAndStablePages) {
  std::vector<int64_t> mine;  // user 1's payment ids, oldest first
  for (int i = 0; i < 3; ++i) {
    v1::Payment p;
    ASSERT_TRUE(client_->Pay(Auth(1), Hold(1, demo_.seat_ids[i]), &p).ok());
    mine.push_back(p.payment_id());
    ASSERT_TRUE(client_->Pay(Auth(2), Hold(2, demo_.seat_ids[10 + i])).ok());
  }
  v1::ListPaymentsResponse page1;
  grpc::Status status = client_->ListPayments(Auth(1), 2, "", &page1);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(PaymentIds(page1), (std::vector<int64_t>{mine[2], mine[1]}));
  ASSERT_FALSE(page1.next_page_token().empty());
  for (const v1::Payment& p : page1.payments()) {
    EXPECT_EQ(p.user_id(), 1);
    EXPECT_EQ(p.amount_won(), 50000);
    EXPECT_FALSE(p.event_id().empty());
    EXPECT_EQ(p.balance_won(), 850000);  // the current balance
  }

  // A payment made between the page calls lands on the first page, not on the next one.
  v1::Payment newest;
  ASSERT_TRUE(client_->Pay(Auth(1), Hold(1, demo_.seat_ids[5]), &newest).ok());
  v1::ListPaymentsResponse page2;
  ASSERT_TRUE(client_->ListPayments(Auth(1), 2, page1.next_page_token(), &page2).ok());
  EXPECT_EQ(PaymentIds(page2), (std::vector<int64_t>{mine[0]}));
  EXPECT_TRUE(page2.next_page_token().empty());
  v1::ListPaymentsResponse fresh;
  ASSERT_TRUE(client_->ListPayments(Auth(1), 0, "", &fresh).ok());
  EXPECT_EQ(PaymentIds(fresh),
            (std::vector<int64_t>{newest.payment_id(), mine[2], mine[1], mine[0]}));

  // Nobody sees another user's payments, not even with that user's page token.
  v1::ListPaymentsResponse theirs;
  ASSERT_TRUE(client_->ListPayments(Auth(2), 0, "", &theirs).ok());
  ASSERT_EQ(theirs.payments_size(), 3);
  for (const v1::Payment& p : theirs.payments()) EXPECT_EQ(p.user_id(), 2);
  ASSERT_TRUE(client_->ListPayments(Auth(2), 2, page1.next_page_token(), &theirs).ok());
  for (const v1::Payment& p : theirs.payments()) EXPECT_EQ(p.user_id(), 2);
  v1::ListPaymentsResponse none;
  ASSERT_TRUE(client_->ListPayments(Auth(3), 0, "", &none).ok());
  EXPECT_EQ(none.payments_size(), 0);
  EXPECT_TRUE(none.next_page_token().empty());
}

TEST_F(PaymentsTest, ListCallsRefuseBadArgumentsAndTokensWithoutTouchingTheDatabase) {
  const int64_t schedule = demo_.schedule_id;
  auto token = [](const std::string& plain) { return absl::WebSafeBase64Escape(plain); };
  const std::string seats = absl::StrCat("seats/", schedule, ":");
  struct Case {
    std::string name;
    std::function<grpc::Status()> call;
    grpc::StatusCode code;
  };
  const std::string a = Auth(1);
  v1::ListConcertsResponse concerts;
  v1::ListSeatsResponse seat_page;
  v1::ListPaymentsResponse payments;
  v1::Account account;
  auto list_concerts = [&](int32_t size, std::string t) {
    return [&, size, t] { return client_->ListConcerts(a, size, t, &concerts); };
  };
  auto list_seats = [&](int64_t id, int32_t size, std::string t) {
    return [&, id, size, t] { return client_->ListSeats(a, id, size, t, &seat_page); };
  };
  auto list_payments = [&](int32_t size, std::string t) {
    return [&, size, t] { return client_->ListPayments(a, size, t, &payments); };
  };
  const grpc::StatusCode kInvalid = grpc::StatusCode::INVALID_ARGUMENT;
  const grpc::StatusCode kOk = grpc::StatusCode::OK;
  std::vector<Case> cases = {
      {"concerts without token", [&] { return client_->ListConcerts("", 0, "", &concerts); },
       grpc::StatusCode::UNAUTHENTICATED},
      {"seats without token", [&] { return client_->ListSeats("", schedule, 0, "", &seat_page); },
       grpc::StatusCode::UNAUTHENTICATED},
      {"payments with an expired token",
       [&] { return client_->ListPayments(Auth(1, -absl::Minutes(5)), 0, "", &payments); },
       grpc::StatusCode::UNAUTHENTICATED},
      {"account with a garbage token",
       [&] { return client_->GetAccount("Bearer v1.1.2.3", &account); },
       grpc::StatusCode::UNAUTHENTICATED},
      {"schedule 0", list_seats(0, 0, ""), kInvalid},
      {"schedule -1", list_seats(-1, 0, ""), kInvalid},
      {"unknown schedule", list_seats(987654321, 0, ""), grpc::StatusCode::NOT_FOUND},
      {"schedule past 2^31", list_seats(int64_t{1} << 31, 0, ""), grpc::StatusCode::NOT_FOUND},
      {"concerts page_size -1", list_concerts(-1, ""), kInvalid},
      {"concerts page_size 501", list_concerts(501, ""), kInvalid},
      {"concerts page_size 500", list_concerts(500, ""), kOk},
      {"seats page_size -1", list_seats(schedule, -1, ""), kInvalid},
      {"seats page_size 501", list_seats(schedule, 501, ""), kInvalid},
      {"payments page_size 501", list_payments(501, ""), kInvalid},
      {"payments page_size min int", list_payments(INT32_MIN, ""), kInvalid},
      {"concerts garbage token", list_concerts(0, "not a token!"), kInvalid},
      {"concerts token without key", list_concerts(0, token("concerts:")), kInvalid},
      {"concerts token id 0", list_concerts(0, token("concerts:0")), kInvalid},
      {"concerts token id 2^63", list_concerts(0, token("concerts:9223372036854775808")),
       kInvalid},
      {"concerts token id 2^64", list_concerts(0, token("concerts:18446744073709551616")),
       kInvalid},
      // Past 2^31 is still a valid bigint id: an empty page, not an error.
      {"concerts token id 2^31", list_concerts(0, token("concerts:2147483648")), kOk},
      {"concerts token id 2^63-1", list_concerts(0, token("concerts:9223372036854775807")), kOk},
      {"concerts token of payments", list_concerts(0, token("payments:5")), kInvalid},
      {"seats token past 2^31", list_seats(schedule, 0, token(seats + "2147483648")), kInvalid},
      {"seats token below -2^31", list_seats(schedule, 0, token(seats + "-2147483649")),
       kInvalid},
      {"seats token 2^63", list_seats(schedule, 0, token(seats + "9223372036854775808")),
       kInvalid},
      {"seats token 2^31-1", list_seats(schedule, 0, token(seats + "2147483647")), kOk},
      {"seats token of another schedule",
       list_seats(schedule, 0, token(absl::StrCat("seats/", schedule + 1, ":3"))), kInvalid},
      {"payments token 2^63", list_payments(0, token("payments:9223372036854775808")),
       kInvalid},
      {"payments token -1", list_payments(0, token("payments:-1")), kInvalid},
      {"payments token 2^63-1", list_payments(0, token("payments:9223372036854775807")), kOk},
  };
  const std::string before = Snapshot();
  for (const Case& c : cases) {
    grpc::Status status = c.call();
    EXPECT_EQ(status.error_code(), c.code) << c.name << ": " << status.error_message();
  }
  EXPECT_EQ(Snapshot(), before);
  // The messages say what to fix.
  grpc::Status status = list_concerts(501, "")();
  EXPECT_NE(status.error_message().find("page_size"), std::string::npos) << status.error_message();
  status = list_payments(0, "x")();
  EXPECT_NE(status.error_message().find("page_token"), std::string::npos)
      << status.error_message();
  status = list_seats(0, 0, "")();
  EXPECT_NE(status.error_message().find("schedule_id"), std::string::npos)
      << status.error_message();
}

// One line of the /metrics text holding every part, whatever the order of its labels.
bool HasMetricLine(const std::string& text, const std::vector<std::string>& parts) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    bool all = true;
    for (const std::string& part : parts) all = all && absl::StrContains(line, part);
    if (all) return true;
  }
  return false;
}

TEST_F(PaymentsTest, MetricsCountTheListCallsByMethodAndCode) {
  v1::ListConcertsResponse concerts;
  v1::ListSeatsResponse seats;
  v1::ListPaymentsResponse payments;
  v1::Account account;
  ASSERT_TRUE(client_->ListConcerts(Auth(1), 0, "", &concerts).ok());
  ASSERT_TRUE(client_->ListSeats(Auth(1), demo_.schedule_id, 0, "", &seats).ok());
  EXPECT_EQ(client_->ListSeats(Auth(1), 987654321, 0, "", &seats).error_code(),
            grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(client_->ListPayments(Auth(1), 0, "", &payments).ok());
  ASSERT_TRUE(client_->GetAccount(Auth(1), &account).ok());
  std::string text = server_->registry().Render();
  for (const char* method : {"ListConcerts", "ListPayments", "GetAccount"}) {
    EXPECT_TRUE(HasMetricLine(text, {"payment_grpc_requests_total{",
                                     absl::StrCat("method=\"", method, "\""), "code=\"OK\"",
                                     "} 1"}))
        << method << "\n" << text;
  }
  EXPECT_TRUE(HasMetricLine(text, {"payment_grpc_requests_total{", "method=\"ListSeats\"",
                                   "code=\"NOT_FOUND\"", "} 1"}))
      << text;
  EXPECT_TRUE(HasMetricLine(
      text, {"payment_grpc_request_duration_seconds_count{", "method=\"ListSeats\"", "} 2"}))
      << text;
}

TEST_F(PaymentsTest, GetPaymentShowsOnlyTheCallersOwnPayments) {
  int64_t reservation = Hold(1, demo_.seat_ids[0]);
  v1::Payment payment;
  ASSERT_TRUE(client_->Pay(Auth(1), reservation, &payment).ok());
  v1::Payment got;
  ASSERT_TRUE(client_->Get(Auth(1), payment.payment_id(), &got).ok());
  EXPECT_EQ(got.reservation_id(), reservation);
  EXPECT_EQ(client_->Get(Auth(2), payment.payment_id()).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(client_->Get(Auth(1), payment.payment_id() + 1000).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(client_->Get(Auth(1), 0).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->Get("", payment.payment_id()).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(PaymentsTest, MetricsCountRequestsByMethodAndCode) {
  int64_t reservation = Hold(1, demo_.seat_ids[0]);
  ASSERT_TRUE(client_->Pay(Auth(1), reservation).ok());
  client_->Pay("", reservation).ok();
  std::string text = server_->registry().Render();
  EXPECT_NE(text.find("payment_grpc_requests_total{code=\"OK\",method=\"PayConcert\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(
      text.find("payment_grpc_requests_total{code=\"UNAUTHENTICATED\",method=\"PayConcert\"} 1"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find("payment_grpc_request_duration_seconds_count{method=\"ReserveSeat\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("payment_db_pool_in_use"), std::string::npos);
  EXPECT_NE(text.find("payment_db_pool_waiting"), std::string::npos);
}

// Postgres down at start and again later: NOT_SERVING and UNAVAILABLE meanwhile, then recovery
// without a restart. A private instance, since this test stops it.
TEST(PaymentsDatabaseTest, UnreachableDatabaseIsUnavailableAndTheServerRecovers) {
  concert::testing::PrivatePostgres pg;
  ASSERT_TRUE(pg.Stop());
  ServerOptions options;
  options.database_url = pg.url();
  options.grpc_address = "127.0.0.1:0";
  options.auth.hs256_secret = kSecret;
  options.health_check_interval = absl::Milliseconds(200);
  PaymentServer server(options);
  ASSERT_TRUE(server.Start().ok());
  Client client(server);

  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(client.Health(), 2);  // NOT_SERVING
  EXPECT_EQ(client.Reserve(Auth(1), 1).error_code(), grpc::StatusCode::UNAVAILABLE);
  v1::ListConcertsResponse not_yet;
  EXPECT_EQ(client.ListConcerts(Auth(1), 0, "", &not_yet).error_code(),
            grpc::StatusCode::UNAVAILABLE);

  ASSERT_TRUE(pg.Start());
  ASSERT_TRUE(WaitUntil([&] { return client.Health() == 1; }, absl::Seconds(60)));
  absl::StatusOr<DemoData> demo = SeedDemo(pg.url());
  ASSERT_TRUE(demo.ok()) << demo.status();
  v1::Reservation first;
  ASSERT_TRUE(client.Reserve(Auth(1), demo->seat_ids[0], &first).ok());

  ASSERT_TRUE(pg.Stop());
  v1::Reservation ignored;
  grpc::Status down = client.Reserve(Auth(1), demo->seat_ids[1], &ignored);
  EXPECT_EQ(down.error_code(), grpc::StatusCode::UNAVAILABLE) << down.error_message();
  down = client.Pay(Auth(1), first.reservation_id());
  EXPECT_EQ(down.error_code(), grpc::StatusCode::UNAVAILABLE) << down.error_message();
  // The reading calls too: a database error, never an empty answer.
  {
    v1::ListConcertsResponse concerts;
    v1::ListSeatsResponse seats;
    v1::ListPaymentsResponse payments;
    v1::Account account;
    down = client.ListConcerts(Auth(1), 0, "", &concerts);
    EXPECT_EQ(down.error_code(), grpc::StatusCode::UNAVAILABLE) << down.error_message();
    down = client.ListSeats(Auth(1), demo->schedule_id, 0, "", &seats);
    EXPECT_EQ(down.error_code(), grpc::StatusCode::UNAVAILABLE) << down.error_message();
    down = client.ListPayments(Auth(1), 0, "", &payments);
    EXPECT_EQ(down.error_code(), grpc::StatusCode::UNAVAILABLE) << down.error_message();
    down = client.GetAccount(Auth(1), &account);
    EXPECT_EQ(down.error_code(), grpc::StatusCode::UNAVAILABLE) << down.error_message();
  }
  EXPECT_TRUE(WaitUntil([&] { return client.Health() == 2; }, absl::Seconds(30)));

  ASSERT_TRUE(pg.Start());
  grpc::Status last;
  EXPECT_TRUE(WaitUntil(
      [&] {
        last = client.Pay(Auth(1), first.reservation_id());
        return last.ok();
      },
      absl::Seconds(60), absl::Milliseconds(250)))
      << last.error_message();
  EXPECT_TRUE(WaitUntil([&] { return client.Health() == 1; }, absl::Seconds(30)));
  EXPECT_EQ(QueryInt(pg.url(), "SELECT count(*) FROM payment.payments"), 1);
  EXPECT_EQ(QueryInt(pg.url(), "SELECT count(*) FROM payment.outbox_events"), 1);
  server.Stop();
}

}  // namespace
}  // namespace concert::payment
