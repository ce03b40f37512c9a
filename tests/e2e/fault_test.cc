// The fault test: clients pay continuously while a fault loop, at random moments, SIGKILLs and
// restarts the payment-server, the relay, one of two notifiers and the retry-worker, kills and
// restarts Kafka, crashes Postgres (immediate shutdown) and restarts it, freezes a notifier
// (SIGSTOP) past its consumer session and wakes it, makes the fake Telegram answer 5xx for a
// few seconds or 429 a few times. The fake behaves like the real Bot
// API throughout (latency, limits, and 1% of answers later than the notifier's timeout). Then faults stop, the system drains, and a checker
// reading Postgres and the fake Telegram's record asserts the promise: every acknowledged
// payment committed, one message per committed payment (apart from deliveries the notifier
// itself counted as uncertain), none after its delivery was confirmed (SENT), none for anything
// else, nothing PENDING, every parked row explained, and none parked FAILED ("not delivered")
// that Telegram has.
//
// Its own Postgres and Kafka (PrivatePostgres, PrivateKafka), so it may crash them.
//   FAULT_TEST_DURATION  seconds of faults (default 120; `make test-faults` uses 600)
//   FAULT_TEST_SEED      the RNG seed (default: random, printed)
//   FAULT_TEST_CLIENTS   paying threads (default 2, each ~3 payments/s)
#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "tests/e2e/payment_check.h"
#include "tests/e2e/system.h"

namespace concert::e2e {
namespace {

using testing::PrivateKafka;
using testing::PrivatePostgres;

enum class Fault {
  kKillPaymentServer,
  kKillRelay,
  kKillNotifier,
  kKillRetryWorker,
  kKafka,
  kPostgres,
  kTelegram5xx,
  kTelegram429,
  kPauseNotifier,
};
constexpr int kFaultKinds = 9;

// The lines of the services' logs that are not one JSON object (README: `jq` reads every line),
// with their file; a SIGKILLed process may leave its last line unfinished, which is skipped.
std::vector<std::string> NonJsonLogLines(const std::vector<std::string>& files) {
  std::vector<std::string> bad;
  for (const std::string& file : files) {
    std::ifstream in(file);
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // no newline after it
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object()) bad.push_back(absl::StrCat(file, ": ", line));
    }
  }
  return bad;
}

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
    case Fault::kPauseNotifier: return "pause notifier past its session";
  }
  return "?";
}

void Log(const std::string& line) { LogLine("fault", line); }

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

  SystemOptions options = PayingSystemOptions(postgres.url(), kafka.bootstrap());
  // A Telegram that answers in ~100 ms, keeps its limits, and now and then answers only after
  // the notifier gave up (a message it has: every such send must be counted uncertain).
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

  PaymentLoad load(system, clients);

  // --- faults ---------------------------------------------------------------------------
  std::map<Fault, int> faults;
  std::vector<std::string> unexpected_exits;
  int telegram_windows_ms = 0;
  absl::Time faults_end = absl::Now() + absl::Seconds(duration_s);
  std::vector<FaultSpan> spans;
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
    spans.push_back({FaultName(fault), absl::Now(), absl::InfiniteFuture()});
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
      case Fault::kPauseNotifier: {
        // Frozen mid-send past its consumer session (20 s): the other notifier takes its
        // records over; woken, it must not send them again nor undo what the other recorded.
        int index = static_cast<int>(rng() % 2);
        system.Signal(Service::kNotifier, index, SIGSTOP);
        absl::SleepFor(uniform_ms(22000, 30000));
        system.Signal(Service::kNotifier, index, SIGCONT);
        break;
      }
    }
    spans.back().end = absl::Now();
    for (const std::string& dead : system.CheckUnexpectedExits()) {
      Log(absl::StrCat("UNEXPECTED EXIT: ", dead));
      unexpected_exits.push_back(dead);
    }
    absl::SleepFor(std::min(uniform_ms(2000, 8000), std::max(absl::ZeroDuration(),
                                                             faults_end - absl::Now())));
  }
  Log("faults stop; clients stop");
  system.telegram().ClearFaults();
  load.Stop();
  for (const std::string& dead : system.CheckUnexpectedExits()) {
    Log(absl::StrCat("UNEXPECTED EXIT: ", dead));
    unexpected_exits.push_back(dead);
  }
  absl::Time faults_stopped = absl::Now();

  PromiseCheck check = CheckPromise(system, postgres.url(), load.Outcomes());
  std::vector<Stall> stalls = MeasureStalls(spans, load.Outcomes(), system, faults_stopped);
  std::string faults_line;
  int total_faults = 0;
  for (int k = 0; k < kFaultKinds; ++k) {
    Fault f = static_cast<Fault>(k);
    absl::StrAppend(&faults_line, "\n  ", absl::StrFormat("%-32s %d", FaultName(f), faults[f]));
    total_faults += faults[f];
  }
  std::vector<std::string> not_json = NonJsonLogLines(system.LogFiles());
  std::ostringstream summary;
  summary << "\n==================== FAULT TEST SUMMARY ====================\n"
          << "seed " << seed << ", faults for " << duration_s << " s, " << clients
          << " clients\n"
          << "faults (" << total_faults << "):" << faults_line << "\n"
          << "Telegram 5xx windows:          " << telegram_windows_ms / 1000 << " s\n"
          << check.Summary()
          << "unexpected service exits:      " << unexpected_exits.size() << "\n"
          << "log lines that are not JSON:   " << not_json.size() << "\n"
          << StallReport(spans, stalls, spans.empty() ? faults_stopped : spans.front().start)
          << "============================================================\n";
  std::cout << summary.str() << std::flush;

  check.ExpectKept();
  EXPECT_TRUE(unexpected_exits.empty()) << unexpected_exits.front();
  EXPECT_TRUE(not_json.empty()) << not_json.front();
  for (int k = 0; k < kFaultKinds; ++k) {
    EXPECT_GE(faults[static_cast<Fault>(k)], 1) << FaultName(static_cast<Fault>(k));
  }
  if (HasFailure()) std::cout << "service logs: " << system.LogPaths() << std::endl;
}

}  // namespace
}  // namespace concert::e2e
