// PayConcert, ReserveSeat and GetPayment against the real Postgres through a real gRPC channel
// (in-process): rows, balances and status codes a user would notice.
#include <atomic>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_server.h"
#include "common/testing/environment.h"
#include "concert/events/v1/payment_events.pb.h"
#include "payment-server/demo.h"
#include "payment-server/server.h"
#include "payment-server/test_util.h"
#include "payment-server/token.h"

namespace concert::payment {
namespace {

using ::concert::payment::testing::Exec;
using ::concert::testing::HealthStatus;
using ::concert::payment::testing::QueryInt;
using ::concert::payment::testing::QueryString;
using ::concert::testing::ScratchDatabase;
using ::concert::testing::WaitUntil;

constexpr char kSecret[] = "payments-test-secret";

std::string Auth(int64_t user_id, absl::Duration ttl = absl::Hours(1)) {
  return absl::StrCat("Bearer ", MintToken(kSecret, user_id, absl::Now() + ttl));
}

// A server of its own on a given database, with channels and stubs to it.
class Client {
 public:
  explicit Client(grpc::Server& server)
      : channel_(server.InProcessChannel(grpc::ChannelArguments())),
        payments_(v1::PaymentService::NewStub(channel_)),
        reservations_(v1::ReservationService::NewStub(channel_)) {}

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

  int Health() { return HealthStatus(channel_); }

 private:
  static void Prepare(grpc::ClientContext& context, const std::string& auth) {
    if (!auth.empty()) context.AddMetadata("authorization", auth);
    context.set_deadline(Deadline(absl::Seconds(30)));
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::PaymentService::Stub> payments_;
  std::unique_ptr<v1::ReservationService::Stub> reservations_;
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
    options.auth_token_secret = kSecret;
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
    client_ = std::make_unique<Client>(server_->grpc_server());
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
      {"expired token", Auth(1, -absl::Seconds(5)), mine, grpc::StatusCode::UNAUTHENTICATED,
       "expired"},
      {"wrong secret",
       absl::StrCat("Bearer ", MintToken("other", 1, absl::Now() + absl::Hours(1))), mine,
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
      Client own(server_->grpc_server());
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
      Client own(server_->grpc_server());
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
  options.auth_token_secret = kSecret;
  options.health_check_interval = absl::Milliseconds(200);
  PaymentServer server(options);
  ASSERT_TRUE(server.Start().ok());
  Client client(server.grpc_server());

  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(client.Health(), 2);  // NOT_SERVING
  EXPECT_EQ(client.Reserve(Auth(1), 1).error_code(), grpc::StatusCode::UNAVAILABLE);

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
