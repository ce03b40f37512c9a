// The fake Telegram server over real HTTP: accepted messages, injected faults, control API.
#include "tests/fake_telegram/fake_telegram.h"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/testing/environment.h"
#include "gtest/gtest.h"

namespace concert::testing {
namespace {

using nlohmann::json;

// httplib::Client needs the port at construction, so the tests build their own client.
httplib::Client ClientFor(const FakeTelegram& fake) { return httplib::Client("127.0.0.1", fake.port()); }

TEST(FakeTelegram, AcceptsJsonAndFormAndRecordsThem) {
  FakeTelegram fake({});
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  auto r1 = client.Post("/botABC/sendMessage", json{{"chat_id", 42}, {"text", "hi 🎫"}}.dump(),
                        "application/json");
  ASSERT_TRUE(r1);
  EXPECT_EQ(r1->status, 200);
  EXPECT_TRUE(json::parse(r1->body)["ok"].get<bool>());
  auto r2 = client.Post("/botABC/sendMessage", "chat_id=%40chan&text=a+b%21",
                        "application/x-www-form-urlencoded");
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->status, 200);

  auto messages = fake.messages();
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].chat_id, "42");
  EXPECT_EQ(messages[0].text, "hi 🎫");
  EXPECT_EQ(messages[0].token, "ABC");
  EXPECT_EQ(messages[1].chat_id, "@chan");
  EXPECT_EQ(messages[1].text, "a b!");

  auto listed = client.Get("/control/messages");
  ASSERT_TRUE(listed);
  EXPECT_EQ(json::parse(listed->body).size(), 2u);
}

TEST(FakeTelegram, GetMeNamesTheBot) {
  FakeTelegram fake({.bot_username = "my_bot"});
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  auto r = client.Get("/botT/getMe");
  ASSERT_TRUE(r);
  EXPECT_EQ(json::parse(r->body)["result"]["username"], "my_bot");
}

TEST(FakeTelegram, GetUpdatesLongPollsAndForgetsWhatTheOffsetAcknowledges) {
  FakeTelegram fake({});
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  client.set_read_timeout(10);
  // Nothing pending: the poll waits its timeout, then answers an empty list.
  absl::Time start = absl::Now();
  auto empty = client.Get("/botT/getUpdates?timeout=1");
  ASSERT_TRUE(empty);
  EXPECT_EQ(json::parse(empty->body)["result"].size(), 0u);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(900));

  // A message injected during a poll ends it at once.
  std::thread writer([&] {
    absl::SleepFor(absl::Milliseconds(200));
    fake.InjectUserMessage(42, "/start abc");
  });
  start = absl::Now();
  auto one = client.Post("/botT/getUpdates", json{{"offset", 0}, {"timeout", 5}}.dump(),
                         "application/json");
  writer.join();
  ASSERT_TRUE(one);
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  json result = json::parse(one->body)["result"];
  ASSERT_EQ(result.size(), 1u);
  int64_t id = result[0]["update_id"].get<int64_t>();
  EXPECT_EQ(result[0]["message"]["chat"]["id"], 42);
  EXPECT_EQ(result[0]["message"]["text"], "/start abc");
  // Not acknowledged: returned again. Acknowledged (offset past it): gone.
  auto again = client.Get("/botT/getUpdates?timeout=0");
  ASSERT_TRUE(again);
  EXPECT_EQ(json::parse(again->body)["result"].size(), 1u);
  auto acked = client.Get(absl::StrCat("/botT/getUpdates?timeout=0&offset=", id + 1).c_str());
  ASSERT_TRUE(acked);
  EXPECT_EQ(json::parse(acked->body)["result"].size(), 0u);
  EXPECT_EQ(fake.conflicts(), 0);
}

TEST(FakeTelegram, ASecondPollerGetsConflict) {
  FakeTelegram fake({});
  ASSERT_TRUE(fake.Start().ok());
  std::thread first([&] {
    httplib::Client client = ClientFor(fake);
    client.set_read_timeout(10);
    client.Get("/botT/getUpdates?timeout=2");
  });
  absl::SleepFor(absl::Milliseconds(300));
  httplib::Client second = ClientFor(fake);
  auto r = second.Get("/botT/getUpdates?timeout=2");
  first.join();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 409);
  EXPECT_EQ(fake.conflicts(), 1);
}

TEST(FakeTelegram, BlockedAndMissingChatsAnswerLikeTelegram) {
  FakeTelegram fake({});
  ASSERT_TRUE(fake.Start().ok());
  fake.SetFault({.mode = FaultMode::k403, .chat_id = "1"});
  fake.SetFault({.mode = FaultMode::kChatNotFound, .chat_id = "2"});
  httplib::Client client = ClientFor(fake);
  auto blocked = client.Post("/botT/sendMessage", json{{"chat_id", 1}, {"text", "x"}}.dump(),
                             "application/json");
  ASSERT_TRUE(blocked);
  EXPECT_EQ(blocked->status, 403);
  EXPECT_EQ(json::parse(blocked->body)["description"], "Forbidden: bot was blocked by the user");
  auto missing = client.Post("/botT/sendMessage", json{{"chat_id", 2}, {"text", "x"}}.dump(),
                             "application/json");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 400);
  EXPECT_EQ(json::parse(missing->body)["description"], "Bad Request: chat not found");
  auto fine = client.Post("/botT/sendMessage", json{{"chat_id", 3}, {"text", "x"}}.dump(),
                          "application/json");
  ASSERT_TRUE(fine);
  EXPECT_EQ(fine->status, 200);
  EXPECT_EQ(fake.MessagesTo("3").size(), 1u);
  EXPECT_TRUE(fake.MessagesTo("1").empty());
}

TEST(FakeTelegram, RejectsMissingFields) {
  FakeTelegram fake({});
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  auto r = client.Post("/botT/sendMessage", json{{"chat_id", 1}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_TRUE(fake.messages().empty());
}

TEST(FakeTelegram, CountedFaultsThenSuccess) {
  FakeTelegram fake({});
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  fake.SetFault({.mode = FaultMode::k5xx, .count = 2, .status = 503});
  std::string body = json{{"chat_id", "1"}, {"text", "x"}}.dump();
  EXPECT_EQ(client.Post("/botT/sendMessage", body, "application/json")->status, 503);
  EXPECT_EQ(client.Post("/botT/sendMessage", body, "application/json")->status, 503);
  EXPECT_EQ(client.Post("/botT/sendMessage", body, "application/json")->status, 200);
  EXPECT_EQ(fake.messages().size(), 1u);
  EXPECT_EQ(fake.faulted(), 2);

  fake.SetFault({.mode = FaultMode::k429, .count = 1, .retry_after_seconds = 7});
  auto r = client.Post("/botT/sendMessage", body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(json::parse(r->body)["parameters"]["retry_after"].get<int>(), 7);
}

TEST(FakeTelegram, PerChatRuleAndAlwaysMode) {
  FakeTelegram fake({});
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  fake.SetFault({.mode = FaultMode::k400, .chat_id = "13"});  // count 0: always
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(client.Post("/botT/sendMessage", json{{"chat_id", 13}, {"text", "x"}}.dump(),
                          "application/json")->status,
              400);
    EXPECT_EQ(client.Post("/botT/sendMessage", json{{"chat_id", 14}, {"text", "y"}}.dump(),
                          "application/json")->status,
              200);
  }
  ASSERT_EQ(fake.messages().size(), 3u);
  for (const auto& m : fake.messages()) EXPECT_EQ(m.chat_id, "14");
}

TEST(FakeTelegram, ControlApiSetsFaultsAndStall) {
  FakeTelegram fake({});
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  auto set = client.Post("/control/fail", R"({"mode":"stall","count":1,"stall_ms":300})",
                         "application/json");
  ASSERT_TRUE(set);
  EXPECT_EQ(set->status, 200);
  absl::Time start = absl::Now();
  auto r = client.Post("/botT/sendMessage", json{{"chat_id", 1}, {"text", "slow"}}.dump(),
                       "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);  // a stall answers normally in the end
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(250));

  ASSERT_EQ(client.Post("/control/fail", R"({"mode":"5xx"})", "application/json")->status, 200);
  EXPECT_EQ(client.Post("/botT/sendMessage", json{{"chat_id", 1}, {"text", "x"}}.dump(),
                        "application/json")->status,
            500);
  ASSERT_EQ(client.Post("/control/fail", R"({"mode":"off"})", "application/json")->status, 200);
  EXPECT_EQ(client.Post("/botT/sendMessage", json{{"chat_id", 1}, {"text", "x"}}.dump(),
                        "application/json")->status,
            200);
  auto stats = json::parse(client.Get("/control/stats")->body);
  EXPECT_EQ(stats["accepted"].get<int>(), 2);
  EXPECT_EQ(stats["faulted"].get<int>(), 1);
  EXPECT_EQ(client.Post("/control/fail", R"({"mode":"nope"})", "application/json")->status, 400);
}

TEST(FakeTelegram, WrongTokenIsUnauthorizedWhenTokenSet) {
  FakeTelegram fake({.token = "right"});
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  std::string body = json{{"chat_id", 1}, {"text", "x"}}.dump();
  EXPECT_EQ(client.Post("/botwrong/sendMessage", body, "application/json")->status, 401);
  EXPECT_EQ(client.Post("/botright/sendMessage", body, "application/json")->status, 200);
}

TEST(FakeTelegramBinary, RecordsToFileAndServesControlApi) {
  int port = FreePort();
  std::string record = (std::filesystem::temp_directory_path() / (UniqueName("fake_tg") + ".jsonl"))
                           .string();
  ChildProcess fake(BinaryPath("fake-telegram"),
                    {absl::StrCat("--port=", port), "--record=" + record}, {});
  httplib::Client client("127.0.0.1", port);
  ASSERT_TRUE(WaitUntil([&] { return static_cast<bool>(client.Get("/control/stats")); },
                        absl::Seconds(10)))
      << fake.ReadLog();
  ASSERT_EQ(client.Post("/control/fail", R"({"mode":"429","count":1,"retry_after":3})",
                        "application/json")->status,
            200);
  std::string body = json{{"chat_id", 5}, {"text", "one"}}.dump();
  auto limited = client.Post("/botT/sendMessage", body, "application/json");
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->status, 429);
  EXPECT_EQ(json::parse(limited->body)["parameters"]["retry_after"].get<int>(), 3);
  EXPECT_EQ(client.Post("/botT/sendMessage", body, "application/json")->status, 200);

  std::ifstream in(record);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_EQ(json::parse(line)["text"], "one");
  EXPECT_EQ(json::parse(line)["chat_id"], "5");
  EXPECT_FALSE(std::getline(in, line)) << "only the accepted message is recorded";
  EXPECT_EQ(json::parse(client.Get("/control/messages")->body).size(), 1u);

  int status = fake.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  std::filesystem::remove(record);
}

}  // namespace
}  // namespace concert::testing
