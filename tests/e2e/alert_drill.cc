// The alert drill: which alert of deploy/observability/alerts.yaml fires for each fault the
// fault test injects, measured with a real Prometheus instead of reasoned from the rules.
//
// The system runs with payments flowing (its own Postgres and Kafka, as in the fault test).
// scripts/alert-drill.sh starts a Prometheus on loopback that scrapes every service and
// evaluates the unchanged rules file every 5 s; this program writes the targets it scrapes
// (file_sd), then injects one fault kind at a time and holds it until the alerts expected of it
// fire (or a cap passes), restores, waits for what fired to resolve, and goes on. It polls
// /api/v1/alerts every 5 s and records when each alert went pending (the API's activeAt) and
// when it was first seen firing, relative to the fault's start. Faults here last minutes, not
// the fault test's seconds, since every `for:` is longer than the fault test's faults.
//
// Not a CTest test (it needs that Prometheus and runs ~55 minutes): `make alert-drill`.
//   ALERT_DRILL_PROMETHEUS  host:port of the Prometheus (required)
//   ALERT_DRILL_SD_FILE     the file_sd JSON that Prometheus watches (required)
//   ALERT_DRILL_RESULTS     where the Markdown table goes (default: stdout only)
//   ALERT_DRILL_WINDOWS     where the run's and the faults' time ranges go, as JSON (for the
//                           dashboard plot)
//   ALERT_DRILL_STEPS       "1,3": run only those steps (1-based), for a shorter try; step 8
//                           (5xx with no retry-worker: DeadLettersNotStored) runs only so
//   ALERT_DRILL_CAP_SCALE   percent applied to every hold cap (default 100), for a smoke run
#include <httplib.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tests/e2e/payment_check.h"
#include "tests/e2e/system.h"

namespace concert::e2e {
namespace {

using testing::PrivateKafka;
using testing::PrivatePostgres;

constexpr absl::Duration kPoll = absl::Seconds(5);

void Log(const std::string& line) { LogLine("drill", line); }

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// "2m 05s" (or "45s").
std::string Short(absl::Duration d) {
  int64_t s = absl::ToInt64Seconds(d);
  if (s < 0) return absl::StrCat("-", Short(-d));
  if (s < 60) return absl::StrCat(s, "s");
  return absl::StrFormat("%dm %02ds", s / 60, s % 60);
}

// The Prometheus HTTP API, read-only.
class Prometheus {
 public:
  explicit Prometheus(const std::string& address) {
    std::vector<std::string> hp = absl::StrSplit(address, ':');
    int port = 0;
    if (hp.size() == 2 && absl::SimpleAtoi(hp[1], &port)) client_.emplace(hp[0], port);
    if (client_) {
      client_->set_connection_timeout(2);
      client_->set_read_timeout(5);
    }
  }

  // The `data` of GET path, or null when Prometheus does not answer.
  nlohmann::json Get(const std::string& path) {
    if (!client_) return nullptr;
    auto r = client_->Get(path.c_str());
    if (!r || r->status != 200) return nullptr;
    nlohmann::json body = nlohmann::json::parse(r->body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded() || body.value("status", "") != "success") return nullptr;
    return body["data"];
  }

 private:
  std::optional<httplib::Client> client_;
};

// One alert series' life: pending from active_at, firing once seen so, gone once not listed.
struct Episode {
  std::string key;  // alertname, plus the service label where the rule sets one
  absl::Time active_at;
  std::optional<absl::Time> firing;
  std::optional<absl::Time> resolved;
};

// Follows /api/v1/alerts: every poll updates the episodes of the alerts it lists.
class AlertLog {
 public:
  explicit AlertLog(Prometheus& prometheus) : prometheus_(prometheus) {}

  bool Poll() {
    nlohmann::json data = prometheus_.Get("/api/v1/alerts");
    if (data.is_null()) return false;
    absl::Time now = absl::Now();
    std::set<std::string> seen;
    for (const nlohmann::json& alert : data["alerts"]) {
      const nlohmann::json& labels = alert["labels"];
      std::string key = labels.value("alertname", "?");
      if (labels.contains("service")) {
        absl::StrAppend(&key, " (", labels["service"].get<std::string>(), ")");
      }
      // Several series of one rule and service (instances) count as one.
      if (!seen.insert(key).second && alert.value("state", "") != "firing") continue;
      absl::Time active_at = now;
      std::string error;
      absl::ParseTime(absl::RFC3339_full, alert.value("activeAt", ""), &active_at, &error);
      Episode* open = Open(key);
      if (open == nullptr) {
        episodes_.push_back({key, active_at, std::nullopt, std::nullopt});
        open = &episodes_.back();
        Log(absl::StrCat("alert ", key, " pending"));
      }
      if (alert.value("state", "") == "firing" && !open->firing) {
        open->firing = now;
        Log(absl::StrCat("alert ", key, " FIRING"));
      }
    }
    for (Episode& e : episodes_) {
      if (!e.resolved && !seen.count(e.key)) {
        e.resolved = now;
        Log(absl::StrCat("alert ", e.key, " resolved"));
      }
    }
    return true;
  }

  bool Firing(const std::string& alertname) const {
    for (const Episode& e : episodes_) {
      if (!e.resolved && e.firing && Name(e.key) == alertname) return true;
    }
    return false;
  }
  // Alerts listed now (pending or firing).
  std::vector<std::string> Active() const {
    std::vector<std::string> keys;
    for (const Episode& e : episodes_) {
      if (!e.resolved) keys.push_back(e.key);
    }
    return keys;
  }
  const std::vector<Episode>& episodes() const { return episodes_; }

  static std::string Name(const std::string& key) { return key.substr(0, key.find(' ')); }

 private:
  Episode* Open(const std::string& key) {
    for (Episode& e : episodes_) {
      if (e.key == key && !e.resolved) return &e;
    }
    return nullptr;
  }

  Prometheus& prometheus_;
  std::vector<Episode> episodes_;
};

struct Step {
  std::string fault;
  std::function<void()> inject;
  std::function<void()> restore;
  // Held until all of these fire, or `cap` passes.
  std::vector<std::string> expect;
  absl::Duration cap;
  // How long to wait, once restored, for this step's alerts to resolve.
  absl::Duration recovery_cap = absl::Minutes(3);
  std::string note;
  // Run only when ALERT_DRILL_STEPS names it.
  bool on_request = false;
};

struct Window {
  std::string fault;
  absl::Time start, restored, end;
  std::vector<std::string> carried;  // alerts already active at the start
  std::string note;
};

TEST(AlertDrill, EachFaultAndTheAlertsItFires) {
  const std::string prometheus_address = Env("ALERT_DRILL_PROMETHEUS");
  const std::string sd_file = Env("ALERT_DRILL_SD_FILE");
  ASSERT_FALSE(prometheus_address.empty() || sd_file.empty())
      << "run through scripts/alert-drill.sh (make alert-drill): it starts the Prometheus";
  const int64_t cap_percent = std::clamp<int64_t>(EnvInt("ALERT_DRILL_CAP_SCALE", 100), 1, 100);
  std::set<int> only;
  for (absl::string_view s : absl::StrSplit(Env("ALERT_DRILL_STEPS"), ',', absl::SkipEmpty())) {
    int n = 0;
    if (absl::SimpleAtoi(s, &n)) only.insert(n);
  }
  Prometheus prometheus(prometheus_address);
  ASSERT_TRUE(testing::WaitUntil([&] { return !prometheus.Get("/api/v1/rules").is_null(); },
                                 absl::Seconds(60), absl::Seconds(1)))
      << "no Prometheus answers at " << prometheus_address;

  PrivatePostgres postgres;
  PrivateKafka kafka;
  ASSERT_FALSE(::testing::Test::HasFailure()) << "private Postgres or Kafka did not start";

  SystemOptions options = PayingSystemOptions(postgres.url(), kafka.bootstrap());
  options.seats = 15000;  // ~3 payments/s for 50 minutes, with room
  // Retry-worker and notifiers keep their defaults: the alerts' timing is part of what is
  // measured (MessagesParkedFailed waits for the default 3 attempts).
  System system(options);
  absl::Status started = system.Start();
  ASSERT_TRUE(started.ok()) << started;
  Log(absl::StrCat("system up; logs: ", system.LogPaths()));

  // The services' ports never change (a restart keeps them), so the targets are written once.
  nlohmann::json sd = nlohmann::json::array();
  for (const System::MetricsTarget& t : system.MetricsTargets()) {
    sd.push_back({{"targets", nlohmann::json::array({t.address})},
                  {"labels", {{"job", t.service}, {"replica", std::to_string(t.index)}}}});
  }
  {
    std::ofstream out(sd_file + ".tmp");
    out << sd.dump(2) << "\n";
  }
  ASSERT_EQ(std::rename((sd_file + ".tmp").c_str(), sd_file.c_str()), 0);

  const absl::Time run_start = absl::Now();
  PaymentLoad load(system, /*clients=*/1);  // ~3 payments/s: modest on a shared machine
  AlertLog alerts(prometheus);
  std::vector<std::string> unexpected_exits;
  // Polls every kPoll for `d`, or until `done`; restarts services that died on their own.
  auto watch = [&](absl::Duration d, const std::function<bool()>& done) {
    absl::Time until = absl::Now() + d;
    while (absl::Now() < until) {
      if (!alerts.Poll()) Log("Prometheus did not answer /api/v1/alerts");
      for (const std::string& dead : system.CheckUnexpectedExits()) {
        Log(absl::StrCat("UNEXPECTED EXIT (restarted): ", dead));
        unexpected_exits.push_back(dead);
      }
      if (done && done()) return true;
      absl::SleepFor(std::min(kPoll, std::max(absl::ZeroDuration(), until - absl::Now())));
    }
    return false;
  };

  // Baseline: healthy, with payments; nothing should fire, and the rate() windows fill.
  Log("baseline: 2 minutes without faults");
  watch(absl::Minutes(2), nullptr);
  const absl::Time baseline_end = absl::Now();

  auto kill_all_notifiers = [&] {
    for (int i = 0; i < options.notifiers; ++i) system.Kill(Service::kNotifier, i);
  };
  auto restart_all_notifiers = [&] {
    for (int i = 0; i < options.notifiers; ++i) system.Restart(Service::kNotifier, i);
  };
  auto restart_kafka = [&] {
    bool up = false;
    for (int i = 0; i < 3 && !up; ++i) up = kafka.Start();
    EXPECT_TRUE(up) << "Kafka did not restart";
  };
  auto restart_postgres = [&] {
    bool up = false;
    for (int i = 0; i < 3 && !up; ++i) up = postgres.Start();
    EXPECT_TRUE(up) << "Postgres did not restart";
  };
  // What an operator does for MessagesParkedFailed once Telegram is back (RUNBOOK.md): retry
  // the parked rows. Without it the alert, rightly, never resolves.
  auto retry_parked = [&] {
    AdminClient admin(system.admin_address(), system.admin_token());
    std::vector<ops::v1::FailedMessage> failed;
    grpc::Status listed = admin.List(ops::v1::FAILED_MESSAGE_STATUS_FAILED, &failed);
    int retried = 0;
    for (const ops::v1::FailedMessage& m : failed) {
      ops::v1::FailedMessage out;
      if (admin.Retry(m.id(), "alert drill: Telegram is back", &out).ok()) ++retried;
    }
    Log(absl::StrCat("operator retry of parked FAILED rows: ", retried, " of ", failed.size(),
                     listed.ok() ? "" : absl::StrCat(" (list: ", listed.error_message(), ")")));
  };

  std::vector<Step> steps = {
      {"kill payment-server", [&] { system.Kill(Service::kPaymentServer); },
       [&] { system.Restart(Service::kPaymentServer); }, {"PaymentServerDown"},
       absl::Minutes(4)},
      {"kill outbox-relay", [&] { system.Kill(Service::kRelay); },
       [&] { system.Restart(Service::kRelay); }, {"RelayNotActive"}, absl::Minutes(4)},
      {"kill notifier (both replicas)", kill_all_notifiers, restart_all_notifiers,
       {"NotifierDown"}, absl::Minutes(4)},
      {"kill+restart Kafka (down)", [&] { EXPECT_TRUE(kafka.Kill()); }, restart_kafka,
       {"KafkaUnreachable"}, absl::Minutes(4)},
      {"Telegram 5xx window", [&] {
         system.telegram().SetFault(
             {.mode = testing::FaultMode::k5xx, .count = 0, .status = 502});
       },
       [&] {
         system.telegram().ClearFaults();
         retry_parked();
       },
       {"MessagesParkedFailed", "NotifierNotDelivering"}, absl::Minutes(12)},
      // Two fault kinds at once, to keep the drill short: 429s honoured by the notifier produce
      // no dead letters, so the retry-worker has nothing to do and the two alert sets are apart.
      {"Telegram 429s (retry after 2 s) + kill retry-worker",
       [&] {
         system.telegram().SetFault(
             {.mode = testing::FaultMode::k429, .count = 0, .retry_after_seconds = 2});
         system.Kill(Service::kRetryWorker);
       },
       [&] {
         system.telegram().ClearFaults();
         system.Restart(Service::kRetryWorker);
       },
       {"TelegramRateLimited", "RetryWorkerDown"}, absl::Minutes(12), absl::Minutes(2),
       "two kinds at once"},
      {"Postgres stop immediate+start (down)", [&] { EXPECT_TRUE(postgres.Stop(true)); },
       restart_postgres, {"PostgresUnreachable", "PayConcertErrors"}, absl::Minutes(7),
       absl::Minutes(2)},
      // Dead letters that nobody stores: no fault test kind alone makes them.
      {"Telegram 5xx window + kill retry-worker",
       [&] {
         system.telegram().SetFault(
             {.mode = testing::FaultMode::k5xx, .count = 0, .status = 502});
         system.Kill(Service::kRetryWorker);
       },
       [&] {
         system.telegram().ClearFaults();
         system.Restart(Service::kRetryWorker);
       },
       {"DeadLettersNotStored", "RetryWorkerDown"}, absl::Minutes(12), absl::Minutes(2),
       "two kinds at once", /*on_request=*/true},
  };

  std::vector<Window> windows;
  auto write_windows = [&](absl::Time end) {
    const std::string path = Env("ALERT_DRILL_WINDOWS");
    if (path.empty()) return;
    nlohmann::json j = {{"start", absl::ToUnixSeconds(run_start)},
                        {"end", absl::ToUnixSeconds(end)},
                        {"baseline_end", absl::ToUnixSeconds(baseline_end)},
                        {"faults", nlohmann::json::array()}};
    for (const Window& w : windows) {
      j["faults"].push_back({{"fault", w.fault},
                             {"start", absl::ToUnixSeconds(w.start)},
                             {"end", absl::ToUnixSeconds(w.restored)}});
    }
    std::ofstream(path) << j.dump(2) << "\n";
  };

  for (size_t i = 0; i < steps.size(); ++i) {
    const Step& step = steps[i];
    if (only.empty() ? step.on_request : !only.count(static_cast<int>(i + 1))) continue;
    const absl::Duration cap = step.cap * cap_percent / 100;
    alerts.Poll();
    Window w{step.fault, absl::Now(), {}, {}, alerts.Active(), step.note};
    Log(absl::StrCat("fault ", i + 1, ": ", step.fault, " (held until ",
                     absl::StrJoin(step.expect, ", "), " fire, at most ", Short(cap), ")"));
    step.inject();
    bool all = watch(cap, [&] {
      return std::all_of(step.expect.begin(), step.expect.end(),
                         [&](const std::string& a) { return alerts.Firing(a); });
    });
    Log(absl::StrCat(all ? "expected alerts fired" : "cap reached", " after ",
                     Short(absl::Now() - w.start), "; restoring"));
    step.restore();
    w.restored = absl::Now();
    windows.push_back(w);
    write_windows(absl::Now());
    // Recovery: until nothing that went active during this fault is still active.
    auto quiet = [&] {
      for (const Episode& e : alerts.episodes()) {
        if (e.active_at >= w.start && !e.resolved) return false;
      }
      return true;
    };
    bool resolved = watch(step.recovery_cap, quiet);
    Log(absl::StrCat(resolved ? "resolved" : "still active: ",
                     resolved ? "" : absl::StrJoin(alerts.Active(), ", "), " after ",
                     Short(absl::Now() - w.restored)));
    watch(absl::Seconds(15), nullptr);  // a few scrapes of the healthy system between faults
    windows.back().end = absl::Now();
  }
  load.Stop();
  alerts.Poll();
  const absl::Time run_end = absl::Now();
  write_windows(run_end);

  // --- the table ------------------------------------------------------------------------
  std::map<std::string, std::string> rule_for;  // alertname -> its `for:`
  nlohmann::json rules = prometheus.Get("/api/v1/rules");
  if (!rules.is_null()) {
    for (const nlohmann::json& g : rules["groups"]) {
      for (const nlohmann::json& r : g["rules"]) {
        if (r.value("type", "") != "alerting") continue;
        double s = r.value("duration", 0.0);
        rule_for[r.value("name", "?")] = s == 0 ? "0" : Short(absl::Seconds(s));
      }
    }
  }
  std::set<std::string> fired_anywhere;
  auto describe = [&](const Episode& e, absl::Time origin) {
    return absl::StrCat(e.key, " ", Short(*e.firing - origin));
  };
  std::ostringstream md;
  md << "# Alert drill, " << absl::FormatTime("%Y-%m-%d", run_start, absl::UTCTimeZone())
     << "\n\n"
     << "`make alert-drill`: a Prometheus of promtool's pinned release scraped every service\n"
        "and evaluated deploy/observability/alerts.yaml, unchanged (every `for:` as written),\n"
        "every 5 s, while one client paid about 3 times a second. Each fault was held until\n"
        "the alerts expected of it fired, or its cap; then restored, with up to 3 minutes for\n"
        "what it raised to resolve. Times are from the fault's start to the first poll (every\n"
        "5 s) that saw the alert firing; an alert is listed under the fault during which it\n"
        "went pending. Run: "
     << absl::FormatTime("%H:%M", run_start, absl::UTCTimeZone()) << " to "
     << absl::FormatTime("%H:%M UTC", run_end, absl::UTCTimeZone()) << " ("
     << Short(run_end - run_start) << ").\n\n"
     << "| fault | held | first alert to fire, after | other alerts that fired, after | "
        "pending only | already active at its start |\n"
     << "|---|---|---|---|---|---|\n";
  auto row = [&](const std::string& fault, absl::Time start, absl::Time restored,
                 absl::Time end, const std::vector<std::string>& carried) {
    std::vector<const Episode*> fired, pending_only;
    for (const Episode& e : alerts.episodes()) {
      if (e.active_at < start || e.active_at >= end) continue;
      (e.firing ? fired : pending_only).push_back(&e);
      if (e.firing) fired_anywhere.insert(AlertLog::Name(e.key));
    }
    std::sort(fired.begin(), fired.end(),
              [](const Episode* a, const Episode* b) { return *a->firing < *b->firing; });
    std::vector<std::string> others, pend;
    for (size_t k = 1; k < fired.size(); ++k) others.push_back(describe(*fired[k], start));
    for (const Episode* e : pending_only) {
      pend.push_back(absl::StrCat(e->key, " from ", Short(e->active_at - start)));
    }
    md << "| " << fault << " | " << Short(restored - start) << " | "
       << (fired.empty() ? "none" : describe(*fired[0], start)) << " | "
       << (others.empty() ? "—" : absl::StrJoin(others, "; ")) << " | "
       << (pend.empty() ? "—" : absl::StrJoin(pend, "; ")) << " | "
       << (carried.empty() ? "—" : absl::StrJoin(carried, ", ")) << " |\n";
  };
  row("none (baseline, payments flowing)", run_start, baseline_end, baseline_end, {});
  for (size_t k = 0; k < windows.size(); ++k) {
    const Window& w = windows[k];
    row(w.note.empty() ? w.fault : absl::StrCat(w.fault, " (", w.note, ")"), w.start,
        w.restored, k + 1 < windows.size() ? windows[k + 1].start : run_end, w.carried);
  }
  std::vector<std::string> never;
  for (const auto& [name, for_s] : rule_for) {
    if (!fired_anywhere.count(name)) never.push_back(absl::StrCat(name, " (for ", for_s, ")"));
  }
  md << "\nRules that fired in no step (unit-tested only, in alerts_test.yaml): "
     << (never.empty() ? "none" : absl::StrCat("\n", absl::StrJoin(never, ",\n"))) << ".\n";
  if (!unexpected_exits.empty()) {
    md << "\nServices that exited on their own and were restarted: "
       << absl::StrJoin(unexpected_exits, ", ") << ".\n";
  }
  std::cout << "\n" << md.str() << std::flush;
  if (const std::string path = Env("ALERT_DRILL_RESULTS"); !path.empty()) {
    std::ofstream(path) << md.str();
  }
  EXPECT_TRUE(unexpected_exits.empty()) << absl::StrJoin(unexpected_exits, ", ");
}

}  // namespace
}  // namespace concert::e2e
