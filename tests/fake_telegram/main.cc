// fake-telegram: the fake Telegram Bot API as a process of its own, for end-to-end tests, the
// benchmarks and `make up`, which run the notifier as a child process. See fake_telegram.h for
// the HTTP API and what each knob does.
//
//   fake-telegram --port=8081 --record=messages.jsonl [--token=SECRET] [--host=127.0.0.1]
//                 [--bot-username=fake_concert_bot] [--profile=telegram|instant] [knobs]
//
// --profile=telegram (the default) behaves like the real API under load: answers take 100 ms
// (median; lognormal, spread 0.5, at most 1 s), 30 msg/s per bot (burst 30), 1,000 msg/s with
// allow_paid_broadcast (burst 1,000), 1 msg/s per private chat (burst 3), 20 msg/min per group
// (burst 5), 429 with a flood wait over any of them, and 0.2% of accepted messages answered only
// after 15 s (delivered, but the client times out). --profile=instant answers at once with no
// limits. Every knob overrides the profile's value (a rate of 0 turns that bucket off):
//
//   --latency-median=100ms --latency-spread=0.5 --latency-max=1s
//   --bot-per-second=30 --bot-burst=30 --paid-bot-per-second=1000 --paid-bot-burst=1000
//   --chat-per-second=1 --chat-burst=3 --group-per-minute=20 --group-burst=5
//   --slow-answer-probability=0.002 --slow-answer-delay=15s --threads=512
//
// Each also reads an environment variable (LATENCY_MEDIAN, ...), see common/config.h; --help
// lists them with the defaults of the chosen profile.
//
// Prints "listening on http://127.0.0.1:<port>" once ready; SIGTERM stops it.
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/config.h"
#include "common/log.h"
#include "common/shutdown.h"
#include "tests/fake_telegram/fake_telegram.h"

namespace {

using concert::testing::Profile;

// Settings has no floating-point reader: a string, parsed and checked here.
double Real(concert::Settings& settings, absl::string_view name, double default_value, double min,
            double max, absl::string_view help) {
  std::string text = settings.String(name, absl::StrCat(default_value),
                                     absl::StrCat(help, " (", min, " to ", max, ")"));
  double value;
  if (!absl::SimpleAtod(text, &value) || !(value >= min && value <= max)) {
    settings.Fail(name, absl::StrCat("want a number from ", min, " to ", max, ", got \"", text,
                                     "\""));
    return default_value;
  }
  return value;
}

int Count(concert::Settings& settings, absl::string_view name, int default_value, int max,
          absl::string_view help) {
  return static_cast<int>(settings.Int(name, default_value, 1, max, help));
}

}  // namespace

int main(int argc, char** argv) {
  concert::InstallStopHandler();
  concert::Settings settings("fake-telegram", argc, argv);
  concert::testing::FakeTelegram::Options options;
  options.host = settings.String("HOST", "127.0.0.1", "Address to listen on (loopback only)");
  options.port = static_cast<int>(settings.Int("PORT", 0, 0, 65535, "Port; 0 picks a free one"));
  options.record_path =
      settings.String("RECORD", "", "Append each accepted message as a JSON line to this file");
  options.token = settings.String("TOKEN", "", "When set, other bot tokens get 401");
  options.bot_username =
      settings.String("BOT_USERNAME", options.bot_username,
                      "What getMe answers as the bot's username");
  options.threads = static_cast<int>(settings.Int(
      "THREADS", options.threads, 4, 4096,
      "Handler threads; each open connection holds one, so this bounds concurrent clients"));

  // The profile gives the knobs' defaults; each knob may override it.
  std::string profile_name = settings.String(
      "PROFILE", "telegram",
      "telegram: the real Bot API's latency and limits; instant: no latency, no limits");
  Profile base;
  if (profile_name == "telegram") {
    base = Profile::Telegram();
    base.slow_answer_probability = 0.002;
  } else if (profile_name != "instant") {
    settings.Fail("PROFILE", "want telegram or instant");
  }
  Profile& p = options.profile;
  p.latency_median =
      settings.Duration("LATENCY_MEDIAN", base.latency_median, absl::ZeroDuration(),
                        absl::Seconds(60), "Median sendMessage answer time; 0: none");
  p.latency_spread = Real(settings, "LATENCY_SPREAD", base.latency_spread, 0, 3,
                          "Sigma of the answer time's logarithm; 0: always the median");
  p.latency_max = settings.Duration("LATENCY_MAX", base.latency_max, absl::ZeroDuration(),
                                    absl::Seconds(60), "Longest answer time; 0: no cap");
  p.bot_per_second = Real(settings, "BOT_PER_SECOND", base.bot_per_second, 0, 1e6,
                          "Messages per second per bot token; 0: no limit");
  p.bot_burst = Count(settings, "BOT_BURST", base.bot_burst, 1000000, "Per-bot bucket capacity");
  p.paid_bot_per_second =
      Real(settings, "PAID_BOT_PER_SECOND", base.paid_bot_per_second, 0, 1e6,
           "Messages per second per bot with allow_paid_broadcast; 0: no limit");
  p.paid_bot_burst = Count(settings, "PAID_BOT_BURST", base.paid_bot_burst, 1000000,
                           "Paid per-bot bucket capacity");
  p.chat_per_second = Real(settings, "CHAT_PER_SECOND", base.chat_per_second, 0, 1e6,
                           "Messages per second per private chat; 0: no limit");
  p.chat_burst = Count(settings, "CHAT_BURST", base.chat_burst, 1000000,
                       "Per-private-chat bucket capacity");
  p.group_per_minute = Real(settings, "GROUP_PER_MINUTE", base.group_per_minute, 0, 1e6,
                            "Messages per minute per group or channel; 0: no limit");
  p.group_burst = Count(settings, "GROUP_BURST", base.group_burst, 1000000,
                        "Per-group bucket capacity");
  p.slow_answer_probability =
      Real(settings, "SLOW_ANSWER_PROBABILITY", base.slow_answer_probability, 0, 1,
           "Share of accepted messages answered only after --slow-answer-delay");
  p.slow_answer_delay =
      settings.Duration("SLOW_ANSWER_DELAY", base.slow_answer_delay, absl::ZeroDuration(),
                        absl::Minutes(10), "How long a slow answer is held back");
  if (p.latency_max > absl::ZeroDuration() && p.latency_max < p.latency_median) {
    settings.Fail("LATENCY_MAX", "shorter than --latency-median");
  }
  settings.ExitIfInvalid();
  concert::log::Init("fake-telegram");

  concert::testing::FakeTelegram fake(options);
  if (absl::Status s = fake.Start(); !s.ok()) {
    std::fprintf(stderr, "fake-telegram: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::printf("listening on %s\n", fake.base_url().c_str());
  std::fflush(stdout);
  concert::log::Info("fake telegram listening",
                     {{"url", fake.base_url()}, {"profile", profile_name}});
  concert::StopRequested().WaitForNotification();
  fake.Stop();
  return 0;
}
