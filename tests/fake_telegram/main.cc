// fake-telegram: the fake Telegram Bot API as a process of its own, for end-to-end and fault
// tests that run the notifier as a child process. See fake_telegram.h for the HTTP API.
//
//   fake-telegram --port=8081 --record=messages.jsonl [--token=SECRET] [--host=127.0.0.1]
//                 [--bot-username=fake_concert_bot]
//
// Prints "listening on http://127.0.0.1:<port>" once ready; SIGTERM stops it.
#include <cstdio>

#include "common/config.h"
#include "common/log.h"
#include "common/shutdown.h"
#include "tests/fake_telegram/fake_telegram.h"

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
  settings.ExitIfInvalid();
  concert::log::Init("fake-telegram");

  concert::testing::FakeTelegram fake(options);
  if (absl::Status s = fake.Start(); !s.ok()) {
    std::fprintf(stderr, "fake-telegram: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::printf("listening on %s\n", fake.base_url().c_str());
  std::fflush(stdout);
  concert::log::Info("fake telegram listening", {{"url", fake.base_url()}});
  concert::StopRequested().WaitForNotification();
  fake.Stop();
  return 0;
}
