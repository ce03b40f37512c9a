// What the fault tests share: a paying load on a running System, the checker of the promise
// once faults stopped, and the stall that each fault caused.
//
//   PaymentLoad load(system, /*clients=*/2);            // paying threads start
//   ... faults, each recorded: stalls.push_back({name, start, end}) ...
//   load.Stop();
//   PromiseCheck check = CheckPromise(system, url, load.Outcomes());  // drains, then reads
//   std::cout << check.Summary() << StallReport(stalls, load.Outcomes(), system);
//   check.ExpectKept();                                  // gtest expectations
//
// The promise: every acknowledged payment committed (with the payment id the client got),
// none refused that committed, one message per committed payment (apart from deliveries the
// notifier itself counted as uncertain, listed), none after its delivery was confirmed SENT,
// none for anything else, nothing PENDING, every parked row explained by an injected Telegram failure, none parked FAILED that Telegram
// has, no negative balance and money conserved.
//
// PaymentLoad is thread-safe; the rest is for the test's thread.
#ifndef CONCERT_TESTS_E2E_PAYMENT_CHECK_H_
#define CONCERT_TESTS_E2E_PAYMENT_CHECK_H_

#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "tests/e2e/system.h"

namespace concert::e2e {

// The environment variable `name` as an integer; `fallback` when unset or not a number.
int64_t EnvInt(const char* name, int64_t fallback);

// The system the fault tests load: the given Postgres and Kafka, two notifiers, 30 payers each
// in a Telegram chat of their own (Telegram allows about 1 message/s per chat).
SystemOptions PayingSystemOptions(const std::string& database_url,
                                  const std::string& kafka_bootstrap);

// "HH:MM:SS [tag] line" on stdout, flushed (the fault tests' running commentary).
void LogLine(const std::string& tag, const std::string& line);

// `clients` threads, each reserving a fresh seat and paying for it about 3 times a second,
// users taken in turn, until Stop() or the seats run out.
class PaymentLoad {
 public:
  PaymentLoad(System& system, int clients);
  ~PaymentLoad();  // Stop()
  PaymentLoad(const PaymentLoad&) = delete;
  PaymentLoad& operator=(const PaymentLoad&) = delete;

  void Stop();
  std::vector<PayOutcome> Outcomes() const;

 private:
  mutable std::mutex mu_;
  std::vector<PayOutcome> outcomes_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

struct PromiseCheck {
  bool drained = false;
  absl::Duration drain_time;
  std::string drain_state;
  // From the clients' side.
  int tried = 0, acked = 0, rejected = 0, unknown = 0, no_reservation = 0, retried_pays = 0;
  int acked_not_committed = 0, acked_wrong_payment = 0, rejected_committed = 0;
  // From Postgres and the fake Telegram.
  int committed = 0, messages = 0, lost = 0, duplicates = 0, phantom = 0;
  int uncertain = 0, uncertain_extra = 0;
  // Messages Telegram accepted after the delivery row said SENT: a stale sender woke up.
  int copies_after_sent = 0;
  int failed_parked = 0, failed_unexplained = 0, failed_but_delivered = 0;
  int telegram_faulted = 0;
  int64_t pending_left = 0, negative_balances = 0, balance_mismatches = 0;

  // The figures, one per line (the body of a test's summary block).
  std::string Summary() const;
  // One gtest expectation per part of the promise.
  void ExpectKept() const;
};

// Waits (up to `drain_timeout`) until every committed payment has a message or is parked and
// nothing is PENDING or in flight, then checks the promise against `outcomes`; every breach is
// logged with its reservation. `url` reaches the system's database.
PromiseCheck CheckPromise(System& system, const std::string& url,
                          const std::vector<PayOutcome>& outcomes,
                          absl::Duration drain_timeout = absl::Seconds(300));

// One fault as it happened: from the first action to the moment the fault's actions were done
// (a broker restarted, a standby rebuilt).
struct FaultSpan {
  std::string kind;
  absl::Time start;
  absl::Time end;
};

struct Stall {
  absl::Duration payments;       // the longest wait between acknowledged payments
  absl::Duration notifications;  // the longest wait between messages at the fake Telegram
  // The longest wait between records a reference consumer read (Kafka's own Java consumer, in
  // the failover test); nullopt without one.
  std::optional<absl::Duration> reference;
};

// For each fault: the longest gap between consecutive acknowledged payments (and between
// messages at Telegram, and between `reference` reads when given) that overlaps the fault's
// span; a gap still open at `until` ends there.
std::vector<Stall> MeasureStalls(const std::vector<FaultSpan>& faults,
                                 const std::vector<PayOutcome>& outcomes, System& system,
                                 absl::Time until,
                                 const std::vector<absl::Time>* reference = nullptr);

// Per fault a line (kind, when, stalls) and per kind the longest stalls.
std::string StallReport(const std::vector<FaultSpan>& faults, const std::vector<Stall>& stalls,
                        absl::Time origin);

}  // namespace concert::e2e

#endif  // CONCERT_TESTS_E2E_PAYMENT_CHECK_H_
