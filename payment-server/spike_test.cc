// A concert's opening: many callers at once against a few database connections. Calls wait for
// a connection instead of being refused, a race for one seat has one winner, and the admission
// queue's limits (size, deadlines) show as status codes and rows a user would notice. Every call
// goes through a real gRPC channel (in-process) to the real Postgres.
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/grpc_server.h"
#include "common/jwt.h"
#include "common/testing/environment.h"
#include "payment-server/demo.h"
#include "payment-server/server.h"
#include "payment-server/test_util.h"

namespace concert::payment {
namespace {

using ::concert::payment::testing::Exec;
using ::concert::payment::testing::QueryInt;
using ::concert::testing::ScratchDatabase;
using ::concert::testing::WaitUntil;

constexpr char kSecret[] = "spike-test-secret";

std::string Auth(int64_t user_id) {
  return absl::StrCat("Bearer ", jwt::MintHs256(kSecret,
                                                {.subject = absl::StrCat(user_id),
                                                 .expires_at = absl::Now() + absl::Hours(1)},
                                                absl::Now()));
}

template <typename Request, typename Response>
struct Call {
  grpc::ClientContext context;
  Request request;
  Response response;
  grpc::Status status;
  std::atomic<bool> done{false};
};

template <typename Request, typename Response>
using Calls = std::vector<std::unique_ptr<Call<Request, Response>>>;
using PaymentCalls = Calls<v1::PayConcertRequest, v1::Payment>;

// Starts one call per user at once through gRPC's callback client (no thread per call); `start`
// is the stub's async method. Answers arrive in the calls; `finished` counts them down.
template <typename Request, typename Response, typename Start>
Calls<Request, Response> StartAll(const std::vector<std::pair<int64_t, Request>>& users_requests,
                                  absl::Duration deadline, absl::BlockingCounter& finished,
                                  Start start) {
  Calls<Request, Response> calls;
  for (const auto& [user, request] : users_requests) {
    auto call = std::make_unique<Call<Request, Response>>();
    call->context.AddMetadata("authorization", Auth(user));
    call->context.set_deadline(Deadline(deadline));
    call->request = request;
    calls.push_back(std::move(call));
  }
  for (auto& owned : calls) {
    Call<Request, Response>* call = owned.get();
    start(&call->context, &call->request, &call->response, [call, &finished](grpc::Status s) {
      call->status = std::move(s);
      call->done.store(true);
      finished.DecrementCount();
    });
  }
  return calls;
}

class SpikeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<DemoData> demo = SeedDemo(db_.url());
    ASSERT_TRUE(demo.ok()) << demo.status();
    demo_ = *demo;
  }

  void TearDown() override {
    // A failed test may leave a payment blocked.
    if (!release_payments_.HasBeenNotified()) release_payments_.Notify();
    server_.reset();
  }

  // A server with production defaults but these; `block_payments`: every PayConcert waits
  // inside its transaction, holding its connection, until release_payments_.
  void StartServer(int pool_size, bool block_payments, int admission_queue_size = 4096,
                   absl::Duration retry_pushback = absl::Seconds(1)) {
    ServerOptions options;
    options.admission_retry_pushback = retry_pushback;
    options.database_url = db_.url();
    options.grpc_address = "127.0.0.1:0";
    options.auth.hs256_secret = kSecret;
    options.db_pool_size = pool_size;
    options.admission_queue_size = admission_queue_size;
    if (block_payments) {
      options.before_commit_for_test = [this](int64_t) {
        payments_blocked_.fetch_add(1);
        release_payments_.WaitForNotification();
        return absl::OkStatus();
      };
    }
    server_ = std::make_unique<PaymentServer>(options);
    ASSERT_TRUE(server_->Start().ok());
    ASSERT_TRUE(WaitUntil([&] { return server_->ready(); }, absl::Seconds(30)));
    channel_ = server_->grpc_server().InProcessChannel(grpc::ChannelArguments());
    payments_ = v1::PaymentService::NewStub(channel_);
    reservations_ = v1::ReservationService::NewStub(channel_);
  }

  // `count` new users with money enough, each holding a new seat of the demo schedule: the
  // user ids, and the reservation ids in the same order.
  void UsersHoldingSeats(int count, std::vector<int64_t>& users,
                         std::vector<int64_t>& reservations) {
    int64_t first_user = NewUsers(count);
    int64_t first_seat = QueryInt(db_.url(), "SELECT max(id) + 1 FROM payment.seats");
    Exec(db_.url(),
         absl::StrCat("INSERT INTO payment.seats (id, schedule_id, seat_number, price_won) "
                      "SELECT ", first_seat, " + g, ", demo_.schedule_id, ", 100000 + g, 50000 "
                      "FROM generate_series(0, ", count - 1, ") g"));
    int64_t first_reservation = QueryInt(
        db_.url(), "SELECT coalesce(max(id), 0) + 1 FROM payment.reservations");
    Exec(db_.url(),
         absl::StrCat("INSERT INTO payment.reservations "
                      "(id, user_id, seat_id, amount_won, status, expires_at) "
                      "SELECT ", first_reservation, " + g, ", first_user, " + g, ", first_seat,
                      " + g, 50000, 'HELD', now() + interval '1 hour' "
                      "FROM generate_series(0, ", count - 1, ") g"));
    for (int i = 0; i < count; ++i) {
      users.push_back(first_user + i);
      reservations.push_back(first_reservation + i);
    }
  }

  // The id of the first of `count` new users (consecutive ids).
  int64_t NewUsers(int count) {
    int64_t first = QueryInt(db_.url(), "SELECT max(id) + 1 FROM payment.users");
    Exec(db_.url(), absl::StrCat("INSERT INTO payment.users (id, name, mail, balance_won) "
                                 "SELECT ", first, " + g, 'fan', 'fan@example.com', 1000000 "
                                 "FROM generate_series(0, ", count - 1, ") g"));
    return first;
  }

  PaymentCalls Pay(const std::vector<int64_t>& users, const std::vector<int64_t>& reservations,
               absl::Duration deadline, absl::BlockingCounter& finished) {
    std::vector<std::pair<int64_t, v1::PayConcertRequest>> requests;
    for (size_t i = 0; i < users.size(); ++i) {
      v1::PayConcertRequest request;
      request.set_reservation_id(reservations[i]);
      requests.emplace_back(users[i], request);
    }
    return StartAll<v1::PayConcertRequest, v1::Payment>(
        requests, deadline, finished, [this](auto... args) {
          payments_->async()->PayConcert(args...);
        });
  }

  // Whether the server's /metrics shows `sample` ("name{labels} value") as a line of its own.
  bool Exposes(const std::string& sample) {
    return absl::StrContains(server_->registry().Render(), absl::StrCat("\n", sample, "\n"));
  }

  int64_t PaymentsOf(int64_t reservation) {
    return QueryInt(db_.url(), absl::StrCat("SELECT count(*) FROM payment.payments "
                                            "WHERE reservation_id = ", reservation));
  }

  ScratchDatabase db_{"spike"};
  DemoData demo_;
  std::atomic<int> payments_blocked_{0};
  absl::Notification release_payments_;
  std::unique_ptr<PaymentServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::PaymentService::Stub> payments_;
  std::unique_ptr<v1::ReservationService::Stub> reservations_;
};

TEST_F(SpikeTest, ARaceOfTwoHundredForOneSeatHasOneWinnerAndTheOthersHearItIsTaken) {
  StartServer(/*pool_size=*/8, /*block_payments=*/false);
  constexpr int kCallers = 200;
  int64_t first_user = NewUsers(kCallers);
  std::vector<std::pair<int64_t, v1::ReserveSeatRequest>> requests;
  for (int i = 0; i < kCallers; ++i) {
    v1::ReserveSeatRequest request;
    request.set_seat_id(demo_.seat_ids[0]);
    requests.emplace_back(first_user + i, request);
  }
  absl::BlockingCounter finished(kCallers);
  auto calls = StartAll<v1::ReserveSeatRequest, v1::Reservation>(
      requests, absl::Seconds(60), finished,
      [this](auto... args) { reservations_->async()->ReserveSeat(args...); });
  finished.Wait();

  int winners = 0;
  for (const auto& call : calls) {
    if (call->status.ok()) {
      ++winners;
      EXPECT_EQ(call->response.seat_id(), demo_.seat_ids[0]);
    } else {
      EXPECT_EQ(call->status.error_code(), grpc::StatusCode::ALREADY_EXISTS)
          << call->status.error_message();
    }
  }
  EXPECT_EQ(winners, 1);
  EXPECT_EQ(QueryInt(db_.url(), absl::StrCat("SELECT count(*) FROM payment.reservations "
                                             "WHERE seat_id = ", demo_.seat_ids[0])),
            1);
}

TEST_F(SpikeTest, AThousandConcurrentPaymentsOnEightConnectionsAllSucceed) {
  StartServer(/*pool_size=*/8, /*block_payments=*/false);
  constexpr int kCallers = 1000;
  std::vector<int64_t> users, reservations;
  UsersHoldingSeats(kCallers, users, reservations);
  absl::BlockingCounter finished(kCallers);
  PaymentCalls calls = Pay(users, reservations, absl::Seconds(120), finished);
  finished.Wait();

  int ok = 0;
  for (const auto& call : calls) {
    if (call->status.ok()) {
      ++ok;
    } else {
      ADD_FAILURE() << call->status.error_code() << " " << call->status.error_message();
    }
  }
  EXPECT_EQ(ok, kCallers);
  EXPECT_EQ(QueryInt(db_.url(), "SELECT count(*) FROM payment.payments"), kCallers);
  EXPECT_EQ(QueryInt(db_.url(), "SELECT count(*) FROM payment.outbox_events"), kCallers);
}

TEST_F(SpikeTest, ACallWhoseDeadlinePassesWhileQueuedNeverReachesTheDatabase) {
  StartServer(/*pool_size=*/1, /*block_payments=*/true);
  std::vector<int64_t> users, reservations;
  UsersHoldingSeats(3, users, reservations);
  // The first payment holds the only connection...
  absl::BlockingCounter first_done(1);
  PaymentCalls first = Pay({users[0]}, {reservations[0]}, absl::Seconds(60), first_done);
  ASSERT_TRUE(WaitUntil([&] { return payments_blocked_.load() == 1; }, absl::Seconds(30)));
  // ...while the second waits past its deadline.
  absl::BlockingCounter late_done(1);
  PaymentCalls late = Pay({users[1]}, {reservations[1]}, absl::Milliseconds(300), late_done);
  late_done.Wait();
  EXPECT_EQ(late[0]->status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);

  release_payments_.Notify();
  first_done.Wait();
  EXPECT_TRUE(first[0]->status.ok()) << first[0]->status.error_message();
  // Calls leave the queue in order: once a later call is served, the late one was dropped.
  absl::BlockingCounter next_done(1);
  PaymentCalls next = Pay({users[2]}, {reservations[2]}, absl::Seconds(60), next_done);
  next_done.Wait();
  EXPECT_TRUE(next[0]->status.ok()) << next[0]->status.error_message();

  EXPECT_EQ(PaymentsOf(reservations[1]), 0);
  EXPECT_EQ(QueryInt(db_.url(), absl::StrCat("SELECT balance_won FROM payment.users WHERE id = ",
                                             users[1])),
            1000000);
  EXPECT_EQ(payments_blocked_.load(), 2);  // the late call never began its transaction
  EXPECT_TRUE(Exposes("payment_admission_refused_total{reason=\"deadline\"} 1"));
  EXPECT_TRUE(Exposes("payment_admission_refused_total{reason=\"queue_full\"} 0"));
  EXPECT_TRUE(Exposes("payment_admission_wait_seconds_count 3"));
}

TEST_F(SpikeTest, AFullAdmissionQueueRefusesWithPushbackAndWritesNothing) {
  StartServer(/*pool_size=*/1, /*block_payments=*/true, /*admission_queue_size=*/2,
              /*retry_pushback=*/absl::Milliseconds(300));
  // Alerts use increase(): every reason is exported from the start.
  EXPECT_TRUE(Exposes("payment_admission_refused_total{reason=\"queue_full\"} 0"));
  EXPECT_TRUE(Exposes("payment_admission_refused_total{reason=\"deadline\"} 0"));
  std::vector<int64_t> users, reservations;
  UsersHoldingSeats(5, users, reservations);
  absl::BlockingCounter first_done(1);
  PaymentCalls first = Pay({users[0]}, {reservations[0]}, absl::Seconds(60), first_done);
  ASSERT_TRUE(WaitUntil([&] { return payments_blocked_.load() == 1; }, absl::Seconds(30)));

  // Four more while the only connection is busy: two fit the queue, two are refused at once.
  std::vector<int64_t> more_users(users.begin() + 1, users.end());
  std::vector<int64_t> more_reservations(reservations.begin() + 1, reservations.end());
  absl::BlockingCounter more_done(4);
  PaymentCalls more = Pay(more_users, more_reservations, absl::Seconds(60), more_done);
  ASSERT_TRUE(WaitUntil(
      [&] {
        int answered = 0;
        for (const auto& call : more) answered += call->done.load() ? 1 : 0;
        return answered == 2;
      },
      absl::Seconds(30)));
  EXPECT_TRUE(Exposes("payment_admission_queued 2"));
  EXPECT_TRUE(Exposes("payment_admission_refused_total{reason=\"queue_full\"} 2"));
  release_payments_.Notify();
  first_done.Wait();
  more_done.Wait();

  EXPECT_TRUE(first[0]->status.ok()) << first[0]->status.error_message();
  int ok = 0, refused = 0;
  for (size_t i = 0; i < more.size(); ++i) {
    const grpc::Status& status = more[i]->status;
    if (status.ok()) {
      ++ok;
      EXPECT_EQ(PaymentsOf(more_reservations[i]), 1);
      continue;
    }
    ++refused;
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_TRUE(absl::StrContains(status.error_message(), "admission queue is full"))
        << status.error_message();
    const auto& trailers = more[i]->context.GetServerTrailingMetadata();
    auto pushback = trailers.find("grpc-retry-pushback-ms");
    ASSERT_NE(pushback, trailers.end());
    int pushback_ms = 0;
    EXPECT_TRUE(absl::SimpleAtoi(
        absl::string_view(pushback->second.data(), pushback->second.size()), &pushback_ms));
    // The queue's drain time, spread, within 10 ms and ADMISSION_RETRY_PUSHBACK.
    EXPECT_GE(pushback_ms, 10);
    EXPECT_LE(pushback_ms, 300);
    EXPECT_EQ(PaymentsOf(more_reservations[i]), 0);
  }
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(refused, 2);
  EXPECT_EQ(QueryInt(db_.url(), "SELECT count(*) FROM payment.payments"), 3);
}

}  // namespace
}  // namespace concert::payment
