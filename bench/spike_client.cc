// spike-client: the load of a concert's opening, for bench/run.sh's spike section. Users race for
// the seats of one schedule at once: user i (its bearer token on line i of --tokens) asks
// ReserveSeat for seat FIRST_SEAT + i % SEATS and pays it (PayConcert) when it got it. At most
// --concurrency users are in flight, each call with --deadline. ghz cannot chain two calls, and
// gRPC's callback client holds no thread per call, so a thousand callers cost this process
// little.
//
//   spike-client --address=127.0.0.1:50051 --tokens=tokens.txt --first-seat=9000000000
//                --seats=1000 --concurrency=1000 --deadline=10s
//
// With --payments=K it pays instead: K held reservations FIRST_RESERVATION + i, each with the
// token on line i % lines of --tokens (its owner), --concurrency calls in flight; PayConcert's
// throughput at a thousand callers, which ghz cannot reach in one process.
//
// Prints one JSON object: wall "seconds", "users" (calls of the pay mode), "calls", "sold"
// (PayConcert OK), and per method the count of each status code and the p50/p99 latency in ms.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "common/grpc_server.h"
#include "concert/v1/payment.grpc.pb.h"
#include "concert/v1/reservation.grpc.pb.h"

namespace concert {
namespace {

struct Options {
  std::string address;
  std::vector<std::string> tokens;
  int64_t first_seat = 0;
  int64_t seats = 0;
  int concurrency = 0;
  absl::Duration deadline;
  // The pay mode: PayConcert of `payments` reservations from `first_reservation` (0: the race).
  int64_t payments = 0;
  int64_t first_reservation = 0;
};

// One user's two calls; lives until its last answer.
struct User {
  size_t index = 0;
  grpc::ClientContext reserve_context;
  v1::ReserveSeatRequest reserve_request;
  v1::Reservation reservation;
  grpc::ClientContext pay_context;
  v1::PayConcertRequest pay_request;
  v1::Payment payment;
  absl::Time call_started;
};

class Race {
 public:
  explicit Race(Options options)
      : options_(std::move(options)),
        channel_(grpc::CreateChannel(options_.address, grpc::InsecureChannelCredentials())),
        reservations_(v1::ReservationService::NewStub(channel_)),
        payments_(v1::PaymentService::NewStub(channel_)) {}

  nlohmann::json Run() {
    absl::Time start = absl::Now();
    size_t first = std::min(static_cast<size_t>(options_.concurrency), users_);
    next_ = first;
    for (size_t i = 0; i < first; ++i) Begin(i);
    all_done_.WaitForNotification();
    double seconds = absl::ToDoubleSeconds(absl::Now() - start);
    absl::MutexLock lock(&mu_);
    nlohmann::json methods;
    size_t calls = 0;
    for (auto& [method, samples] : samples_) {
      std::vector<double> ms;
      std::map<std::string, int> codes;
      for (const auto& [code, latency] : samples) {
        // gRPC's codes and absl's share their numbers.
        ++codes[absl::StatusCodeToString(static_cast<absl::StatusCode>(code))];
        ms.push_back(latency);
      }
      std::sort(ms.begin(), ms.end());
      auto pct = [&](double p) { return ms[std::min(ms.size() - 1, size_t(p * ms.size()))]; };
      methods[method] = {{"calls", ms.size()}, {"codes", codes}, {"p50_ms", pct(0.5)},
                         {"p99_ms", pct(0.99)}};
      calls += ms.size();
    }
    return {{"seconds", seconds}, {"users", users_}, {"calls", calls},
            {"sold", sold_}, {"methods", methods}};
  }

 private:
  void Prepare(grpc::ClientContext& context, size_t user) {
    context.AddMetadata("authorization",
                        "Bearer " + options_.tokens[user % options_.tokens.size()]);
    context.set_deadline(Deadline(options_.deadline));
  }

  void Begin(size_t index) {
    if (options_.payments == 0) return Reserve(index);
    auto* user = new User;
    user->index = index;
    user->reservation.set_reservation_id(options_.first_reservation +
                                         static_cast<int64_t>(index));
    Pay(user);
  }

  void Reserve(size_t index) {
    auto* user = new User;
    user->index = index;
    user->reserve_request.set_seat_id(options_.first_seat +
                                      static_cast<int64_t>(index) % options_.seats);
    Prepare(user->reserve_context, index);
    user->call_started = absl::Now();
    reservations_->async()->ReserveSeat(
        &user->reserve_context, &user->reserve_request, &user->reservation,
        [this, user](grpc::Status status) {
          Record("ReserveSeat", status, user->call_started);
          if (!status.ok()) return Done(user);
          Pay(user);
        });
  }

  void Pay(User* user) {
    user->pay_request.set_reservation_id(user->reservation.reservation_id());
    Prepare(user->pay_context, user->index);
    user->call_started = absl::Now();
    payments_->async()->PayConcert(&user->pay_context, &user->pay_request, &user->payment,
                                   [this, user](grpc::Status paid) {
                                     Record("PayConcert", paid, user->call_started);
                                     if (paid.ok()) {
                                       absl::MutexLock lock(&mu_);
                                       ++sold_;
                                     }
                                     Done(user);
                                   });
  }

  void Record(const char* method, const grpc::Status& status, absl::Time started) {
    double ms = absl::ToDoubleMilliseconds(absl::Now() - started);
    absl::MutexLock lock(&mu_);
    samples_[method].emplace_back(status.error_code(), ms);
  }

  // The user's last answer came: the next user starts in its place.
  void Done(User* user) {
    delete user;
    size_t next;
    bool last;
    {
      absl::MutexLock lock(&mu_);
      next = next_++;
      last = ++finished_ == users_;
    }
    if (next < users_) Begin(next);
    if (last) all_done_.Notify();
  }

  const Options options_;
  // Users racing, or payments of the pay mode.
  const size_t users_ = options_.payments > 0 ? static_cast<size_t>(options_.payments)
                                              : options_.tokens.size();
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ReservationService::Stub> reservations_;
  std::unique_ptr<v1::PaymentService::Stub> payments_;
  absl::Mutex mu_;
  std::map<std::string, std::vector<std::pair<int, double>>> samples_ ABSL_GUARDED_BY(mu_);
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
  size_t finished_ ABSL_GUARDED_BY(mu_) = 0;
  size_t sold_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Notification all_done_;
};

}  // namespace
}  // namespace concert

int main(int argc, char** argv) {
  concert::Settings settings("spike-client", argc, argv);
  concert::Options options;
  options.address =
      settings.String("ADDRESS", "127.0.0.1:50051", "payment-server's gRPC address");
  std::string tokens_path = settings.RequiredString("TOKENS", "file of bearer tokens, one a line");
  options.first_seat =
      settings.Int("FIRST_SEAT", 1, 1, INT64_MAX, "id of the first seat raced for");
  options.seats = settings.Int("SEATS", 1000, 1, 10000000, "seats raced for (consecutive ids)");
  options.concurrency = static_cast<int>(
      settings.Int("CONCURRENCY", 256, 1, 100000, "users in flight at once"));
  options.deadline = settings.Duration("DEADLINE", absl::Seconds(10), absl::Milliseconds(1),
                                       absl::Minutes(10), "deadline of each call");
  options.payments = settings.Int("PAYMENTS", 0, 0, 100000000,
                                  "pay mode: held reservations to pay (0: the race)");
  options.first_reservation = settings.Int("FIRST_RESERVATION", 1, 1, INT64_MAX,
                                           "pay mode: id of the first reservation paid");
  settings.ExitIfInvalid();
  std::ifstream in(tokens_path);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) options.tokens.push_back(line);
  }
  if (options.tokens.empty()) {
    std::fprintf(stderr, "spike-client: no tokens in %s\n", tokens_path.c_str());
    return 2;
  }
  concert::Race race(std::move(options));
  std::printf("%s\n", race.Run().dump().c_str());
  return 0;
}
