// The fault test: clients pay continuously while a fault loop, at random moments, SIGKILLs and
// restarts the payment-server, the relay, one of two notifiers and the retry-worker, kills and
// restarts Kafka, crashes Postgres (immediate shutdown) and restarts it, makes the fake
// Telegram answer 5xx for a few seconds or 429 a few times. The fake behaves like the real Bot
// API throughout (latency, limits, and 1% of answers later than the notifier's timeout). Then faults stop, the system drains, and a checker
// reading Postgres and the fake Telegram's record asserts the promise: every acknowledged
// payment committed, one message per committed payment (apart from deliveries the notifier
// itself counted as uncertain), none for anything else, nothing PENDING, every parked row
// explained, and none parked FAILED ("not delivered") that Telegram has.
//
// Its own Postgres and Kafka (PrivatePostgres, PrivateKafka), so it may crash them.
//   FAULT_TEST_DURATION  seconds of faults (default 120; `make test-faults` uses 600)
//   FAULT_TEST_SEED      the RNG seed (default: random, printed)
//   FAULT_TEST_CLIENTS   paying threads (default 2, each ~3 payments/s)
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "tests/e2e/system.h"

namespace concert::e2e {
namespace {

using testing::PrivateKafka;
using testing::PrivatePostgres;
using testing::WaitUntil;

int64_t EnvInt(const char* name, int64_t fallback) {
  const char* value = std::getenv(name);
  int64_t parsed;
  if (value == nullptr || !absl::SimpleAtoi(value, &parsed)) return fallback;
  return parsed;
}

enum class Fault {
  kKillPaymentServer,
  kKillRelay,
  kKillNotifier,
  kKillRetryWorker,
  kKafka,
  kPostgres,
  kTelegram5xx,
  kTelegram429,
};
constexpr int kFaultKinds = 8;

const char* FaultName(Fault fault) {
  switch (fault) {
    case Fault::kKillPaymentServer: return "kill payment-server";
    case Fault::kKillRelay: return "kill outbox-relay";
    case Fault::kKillNotifier: return "kill notifier";
    case Fault::kKillRetryWorker: return "kill retry-worker";
    case Fault::kKafka: return "kill+restart Kafka";
    case Fault::kPostgres: return "Postgres stop immediate+start";
    case Fault::kTelegram5xx: return "Telegram 5xx window";
    case Fault::kTelegram429: return "Telegram 429s (retry after 2 s)";
  }
  return "?";
}

// What one client thread saw, per seat it tried.
struct ClientRecord {
  std::mutex mu;
  std::vector<PayOutcome> outcomes;
};

void Log(const std::string& line) {
  std::cout << absl::FormatTime("%H:%M:%S", absl::Now(), absl::LocalTimeZone()) << " [fault] "
            << line << std::endl;
}

TEST(FaultTest, OneMessagePerPaymentWhateverBreaks) {
  const int64_t duration_s = EnvInt("FAULT_TEST_DURATION", 120);
  const uint64_t seed = static_cast<uint64_t>(
      EnvInt("FAULT_TEST_SEED", static_cast<int64_t>(std::random_device{}() & 0x7fffffff)));
  const int clients = static_cast<int>(std::clamp<int64_t>(EnvInt("FAULT_TEST_CLIENTS", 2), 1, 8));
  Log(absl::StrCat("seed ", seed, " (FAULT_TEST_SEED to repeat), duration ", duration_s, " s, ",
                   clients, " clients"));
  std::mt19937_64 rng(seed);
  auto uniform_ms = [&](int lo, int hi) {
    return absl::Milliseconds(std::uniform_int_distribution<int>(lo, hi)(rng));
  };

  PrivatePostgres postgres;
  PrivateKafka kafka;
  ASSERT_FALSE(::testing::Test::HasFailure()) << "private Postgres or Kafka did not start";

  SystemOptions options;
  options.database_url = postgres.url();
  options.kafka_bootstrap = kafka.bootstrap();
  options.notifiers = 2;
  // Payers in their own chats (Telegram allows ~1 message/s per chat), against a Telegram that
  // answers in ~100 ms, keeps its limits, and now and then answers only after the notifier
  // gave up (a message it has: every such send must be counted uncertain).
  options.users = 30;
  options.link_chats = true;
  options.telegram.slow_answer_probability = 0.01;
  options.poor_user_payments = 3;  // a few payments are refused for the balance
  options.seats = static_cast<int>(duration_s * 4 * clients + 2000);
  // Generous attempts: a Telegram window is short, so everything should get through; a FAILED
  // row must then be explained by an injected failure.
  options.retry_env = {{"RETRY_MAX_ATTEMPTS", "8"}, {"RETRY_BACKOFF_CAP", "5s"}};
  System system(options);
  absl::Status started = system.Start();
  ASSERT_TRUE(started.ok()) << started;
  Log(absl::StrCat("system up; logs: ", system.LogPaths()));

  // --- clients --------------------------------------------------------------------------
  std::atomic<bool> stop_clients{false};
  ClientRecord record;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      PaymentClient client(system.payment_address(), absl::Seconds(5), absl::Seconds(20));
      const std::vector<User>& users = system.seeded().users;
      for (int i = 0; !stop_clients.load(); ++i) {
        int64_t seat = system.NextSeat();
        if (seat == 0) break;
        const User& user = users[(c + i * clients) % users.size()];
        PayOutcome outcome = client.ReserveAndPay(user, seat);
        {
          std::lock_guard lock(record.mu);
          record.outcomes.push_back(outcome);
        }
        absl::SleepFor(absl::Milliseconds(
            outcome.kind == PayOutcome::Kind::kNoReservation ? 500 : 300));
      }
    });
  }

  // --- faults ---------------------------------------------------------------------------
  std::map<Fault, int> faults;
  std::vector<std::string> unexpected_exits;
  int telegram_windows_ms = 0;
  absl::Time faults_end = absl::Now() + absl::Seconds(duration_s);
  std::vector<Fault> bag;
  int bags = 0;
  absl::SleepFor(uniform_ms(2000, 5000));
  // Until the time is up, and at least once every kind of fault (the first bag emptied).
  while (absl::Now() < faults_end || (bags == 1 && !bag.empty())) {
    if (bag.empty()) {
      ++bags;
      for (int k = 0; k < kFaultKinds; ++k) bag.push_back(static_cast<Fault>(k));
      std::shuffle(bag.begin(), bag.end(), rng);
    }
    Fault fault = bag.back();
    bag.pop_back();
    ++faults[fault];
    Log(FaultName(fault));
    switch (fault) {
      case Fault::kKillPaymentServer:
      case Fault::kKillRelay:
      case Fault::kKillNotifier:
      case Fault::kKillRetryWorker: {
        Service service = fault == Fault::kKillPaymentServer ? Service::kPaymentServer
                          : fault == Fault::kKillRelay       ? Service::kRelay
                          : fault == Fault::kKillNotifier    ? Service::kNotifier
                                                             : Service::kRetryWorker;
        int index = fault == Fault::kKillNotifier ? static_cast<int>(rng() % 2) : 0;
        system.Kill(service, index);
        absl::SleepFor(uniform_ms(200, 3000));
        system.Restart(service, index);
        break;
      }
      case Fault::kKafka: {
        EXPECT_TRUE(kafka.Kill());
        absl::SleepFor(uniform_ms(1000, 4000));
        bool up = false;
        for (int i = 0; i < 3 && !up; ++i) up = kafka.Start();
        EXPECT_TRUE(up) << "Kafka did not restart";
        break;
      }
      case Fault::kPostgres: {
        EXPECT_TRUE(postgres.Stop(/*immediate=*/true));
        absl::SleepFor(uniform_ms(1000, 5000));
        bool up = false;
        for (int i = 0; i < 3 && !up; ++i) up = postgres.Start();
        EXPECT_TRUE(up) << "Postgres did not restart";
        break;
      }
      case Fault::kTelegram5xx: {
        absl::Duration window = uniform_ms(3000, 8000);
        telegram_windows_ms += static_cast<int>(absl::ToInt64Milliseconds(window));
        system.telegram().SetFault({.mode = testing::FaultMode::k5xx, .count = 0, .status = 502});
        absl::SleepFor(window);
        system.telegram().ClearFaults();
        break;
      }
      case Fault::kTelegram429:
        // A few requests refused as if a limit had been crossed: every send pauses.
        system.telegram().SetFault(
            {.mode = testing::FaultMode::k429, .count = 3, .retry_after_seconds = 2});
        absl::SleepFor(uniform_ms(3000, 6000));
        break;
    }
    for (const std::string& dead : system.CheckUnexpectedExits()) {
      Log(absl::StrCat("UNEXPECTED EXIT: ", dead));
      unexpected_exits.push_back(dead);
    }
    absl::SleepFor(std::min(uniform_ms(2000, 8000), std::max(absl::ZeroDuration(),
                                                             faults_end - absl::Now())));
  }
  Log("faults stop; clients stop");
  system.telegram().ClearFaults();
  stop_clients = true;
  for (std::thread& t : threads) t.join();
  for (const std::string& dead : system.CheckUnexpectedExits()) {
    Log(absl::StrCat("UNEXPECTED EXIT: ", dead));
    unexpected_exits.push_back(dead);
  }

  // --- drain ----------------------------------------------------------------------------
  // Done when every committed payment has a message or is parked (FAILED or UNCERTAIN), nothing
  // is PENDING
  // and no delivery is in flight.
  const std::string url = postgres.url();
  absl::Time drain_start = absl::Now();
  std::string drain_state;
  bool drained = WaitUntil(
      [&] {
        try {
          std::map<int64_t, int> messages = system.MessagesByReservation();
          std::set<std::string> parked;
          for (const auto& row :
               QueryRows(url, "SELECT event_id FROM retry.failed_messages "
                              "WHERE status IN ('FAILED', 'UNCERTAIN')")) {
            parked.insert(row[0]);
          }
          int missing = 0;
          for (const auto& row :
               QueryRows(url, "SELECT reservation_id, event_id::text FROM payment.payments")) {
            if (messages[std::stoll(row[0])] == 0 && parked.count(row[1]) == 0) ++missing;
          }
          int64_t pending = QueryInt(
              url, "SELECT count(*) FROM retry.failed_messages WHERE status = 'PENDING'");
          int64_t in_flight = QueryInt(
              url, "SELECT count(*) FROM notification.deliveries WHERE state = 'SENDING'");
          drain_state = absl::StrCat("missing ", missing, ", pending ", pending, ", in flight ",
                                     in_flight);
          return missing == 0 && pending == 0 && in_flight == 0;
        } catch (const std::exception& e) {
          drain_state = e.what();
          return false;
        }
      },
      absl::Seconds(300), absl::Seconds(1));
  absl::Duration drain_time = absl::Now() - drain_start;
  Log(absl::StrCat(drained ? "drained" : "NOT drained", " after ",
                   absl::ToInt64Seconds(drain_time), " s: ", drain_state));
  absl::SleepFor(absl::Seconds(3));  // a late duplicate would show up now

  // --- check ----------------------------------------------------------------------------
  struct Committed {
    int64_t payment_id;
    std::string event_id;
  };
  std::map<int64_t, Committed> committed;  // reservation id ->
  for (const auto& row :
       QueryRows(url, "SELECT reservation_id, id, event_id::text FROM payment.payments")) {
    committed[std::stoll(row[0])] = {std::stoll(row[1]), row[2]};
  }
  std::set<std::string> uncertain_events;
  for (const auto& row :
       QueryRows(url, "SELECT event_id::text FROM notification.deliveries WHERE uncertain")) {
    uncertain_events.insert(row[0]);
  }
  struct Parked {
    std::string error_class, error_message, status;
  };
  std::map<std::string, Parked> failed_rows;
  for (const auto& row :
       QueryRows(url, "SELECT event_id, error_class, error_message, status "
                      "FROM retry.failed_messages WHERE status IN ('FAILED', 'UNCERTAIN')")) {
    failed_rows[row[0]] = {row[1], row[2], row[3]};
  }
  int64_t pending_left =
      QueryInt(url, "SELECT count(*) FROM retry.failed_messages WHERE status = 'PENDING'");
  int64_t negative_balances =
      QueryInt(url, "SELECT count(*) FROM payment.users WHERE balance_won < 0");
  // Money is conserved: each user's balance is the seed minus what they paid.
  int64_t balance_mismatches = QueryInt(
      url,
      absl::StrCat("SELECT count(*) FROM payment.users u WHERE u.balance_won + "
                   "COALESCE((SELECT sum(amount_won) FROM payment.payments p "
                   "WHERE p.user_id = u.id), 0) <> CASE WHEN u.name = 'poorfan' THEN ",
                   options.seat_price_won * options.poor_user_payments, " ELSE ",
                   options.balance_won, " END"));

  std::vector<PayOutcome> outcomes;
  {
    std::lock_guard lock(record.mu);
    outcomes = record.outcomes;
  }
  int acked = 0, rejected = 0, unknown = 0, no_reservation = 0, retried_pays = 0;
  int acked_not_committed = 0, acked_wrong_payment = 0, rejected_committed = 0;
  for (const PayOutcome& o : outcomes) {
    if (o.pay_calls > 1) ++retried_pays;
    switch (o.kind) {
      case PayOutcome::Kind::kAcked: {
        ++acked;
        auto it = committed.find(o.reservation_id);
        if (it == committed.end()) {
          ++acked_not_committed;
          Log(absl::StrCat("ACKED BUT NOT COMMITTED: reservation ", o.reservation_id));
        } else if (it->second.payment_id != o.payment_id) {
          ++acked_wrong_payment;
          Log(absl::StrCat("ACKED PAYMENT ID DIFFERS: reservation ", o.reservation_id));
        }
        break;
      }
      case PayOutcome::Kind::kRejected:
        ++rejected;
        if (committed.count(o.reservation_id) > 0) {
          ++rejected_committed;
          Log(absl::StrCat("REJECTED BUT COMMITTED: reservation ", o.reservation_id, ": ",
                           o.message));
        }
        break;
      case PayOutcome::Kind::kUnknown: ++unknown; break;
      case PayOutcome::Kind::kNoReservation: ++no_reservation; break;
    }
  }

  std::map<int64_t, int> messages = system.MessagesByReservation();
  int total_messages = 0;
  for (const auto& [reservation, n] : messages) total_messages += n;
  int lost = 0, duplicates = 0, uncertain_extra = 0, failed_parked = 0, failed_unexplained = 0;
  int phantom = 0;
  // FAILED must mean "not delivered": a copy that may have arrived parks as UNCERTAIN.
  int failed_but_delivered = 0;
  const int telegram_faulted = system.telegram().faulted();
  for (const auto& [reservation, payment] : committed) {
    int n = messages.count(reservation) > 0 ? messages[reservation] : 0;
    bool uncertain = uncertain_events.count(payment.event_id) > 0;
    auto parked = failed_rows.find(payment.event_id);
    if (n == 0) {
      if (parked != failed_rows.end()) {
        ++failed_parked;
        // Explained only by a Telegram failure we injected.
        bool explained = telegram_faulted > 0 && parked->second.error_class == "telegram_5xx";
        if (!explained) ++failed_unexplained;
        Log(absl::StrCat(parked->second.status, " (parked): reservation ", reservation, " ",
                         parked->second.error_class, ": ", parked->second.error_message,
                         explained ? "" : "  <-- NOT explained by an injected fault"));
      } else {
        ++lost;
        Log(absl::StrCat("LOST: reservation ", reservation, " event ", payment.event_id));
      }
    } else if (parked != failed_rows.end() && parked->second.status == "FAILED") {
      ++failed_but_delivered;
      Log(absl::StrCat("FAILED BUT DELIVERED: reservation ", reservation, " event ",
                       payment.event_id));
    }
    if (n > 1) {
      if (uncertain) {
        uncertain_extra += n - 1;
      } else {
        duplicates += n - 1;
        Log(absl::StrCat("DUPLICATE: reservation ", reservation, " x", n, " event ",
                         payment.event_id));
      }
    }
  }
  for (const auto& [reservation, n] : messages) {
    if (committed.count(reservation) == 0) {
      phantom += n;
      Log(absl::StrCat("MESSAGE WITHOUT A COMMITTED PAYMENT: reservation ", reservation));
    }
  }
  for (const auto& [event_id, parked] : failed_rows) {
    bool of_a_payment = false;
    for (const auto& [reservation, payment] : committed) {
      if (payment.event_id == event_id) of_a_payment = true;
    }
    if (!of_a_payment) {
      ++failed_unexplained;
      Log(absl::StrCat("FAILED row of no payment: ", event_id, " ", parked.error_class));
    }
  }
  for (const std::string& event : uncertain_events) {
    int n = 0;
    for (const auto& [reservation, payment] : committed) {
      if (payment.event_id == event) n = messages[reservation];
    }
    Log(absl::StrCat("uncertain delivery: event ", event, ", messages ", n));
  }

  std::string faults_line;
  int total_faults = 0;
  for (int k = 0; k < kFaultKinds; ++k) {
    Fault f = static_cast<Fault>(k);
    absl::StrAppend(&faults_line, "\n  ", absl::StrFormat("%-32s %d", FaultName(f), faults[f]));
    total_faults += faults[f];
  }
  std::ostringstream summary;
  summary << "\n==================== FAULT TEST SUMMARY ====================\n"
          << "seed " << seed << ", faults for " << duration_s << " s, " << clients
          << " clients, drained " << (drained ? "yes" : "NO") << " in "
          << absl::ToInt64Seconds(drain_time) << " s\n"
          << "payments tried (seats):        " << outcomes.size() << "\n"
          << "  acked by the server:         " << acked << "\n"
          << "  refused (balance etc.):      " << rejected << "\n"
          << "  unknown to the client:       " << unknown << "\n"
          << "  no reservation (reserve err):" << no_reservation << "\n"
          << "  PayConcert repeated by client: " << retried_pays << "\n"
          << "payments committed:            " << committed.size() << "\n"
          << "acked but not committed:       " << acked_not_committed << "\n"
          << "refused but committed:         " << rejected_committed << "\n"
          << "faults (" << total_faults << "):" << faults_line << "\n"
          << "telegram requests faulted:     " << telegram_faulted << " (5xx windows "
          << telegram_windows_ms / 1000 << " s)\n"
          << "messages at fake Telegram:     " << total_messages << "\n"
          << "lost:                          " << lost << "\n"
          << "duplicates:                    " << duplicates << "\n"
          << "uncertain (counted):           " << uncertain_events.size()
          << " deliveries, extra messages " << uncertain_extra << "\n"
          << "messages for no payment:       " << phantom << "\n"
          << "parked, not delivered:         " << failed_parked << " of payments, "
          << failed_unexplained << " not explained\n"
          << "parked FAILED but delivered:   " << failed_but_delivered << "\n"
          << "PENDING left:                  " << pending_left << "\n"
          << "negative balances:             " << negative_balances
          << ", balance mismatches " << balance_mismatches << "\n"
          << "unexpected service exits:      " << unexpected_exits.size() << "\n"
          << "============================================================\n";
  std::cout << summary.str() << std::flush;

  EXPECT_TRUE(drained) << drain_state << "; logs: " << system.LogPaths();
  EXPECT_EQ(acked_not_committed, 0);
  EXPECT_EQ(acked_wrong_payment, 0);
  EXPECT_EQ(rejected_committed, 0);
  EXPECT_EQ(lost, 0);
  EXPECT_EQ(failed_but_delivered, 0);
  EXPECT_EQ(duplicates, 0);
  EXPECT_EQ(phantom, 0);
  EXPECT_EQ(pending_left, 0);
  EXPECT_EQ(failed_unexplained, 0);
  EXPECT_EQ(negative_balances, 0);
  EXPECT_EQ(balance_mismatches, 0);
  EXPECT_TRUE(unexpected_exits.empty()) << unexpected_exits.front();
  EXPECT_GT(acked, 0);
  for (int k = 0; k < kFaultKinds; ++k) {
    EXPECT_GE(faults[static_cast<Fault>(k)], 1) << FaultName(static_cast<Fault>(k));
  }
  if (HasFailure()) std::cout << "service logs: " << system.LogPaths() << std::endl;
}

}  // namespace
}  // namespace concert::e2e
