// The fake Telegram server over real HTTP: accepted messages, injected faults, control API, and
// the profile's latency, rate limits (429 and the flood wait) and slow answers.
#include "tests/fake_telegram/fake_telegram.h"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/testing/environment.h"
#include "gtest/gtest.h"

namespace concert::testing {
namespace {

using nlohmann::json;

// httplib::Client needs the port at construction, so the tests build their own client.
httplib::Client ClientFor(const FakeTelegram& fake) { return httplib::Client("127.0.0.1", fake.port()); }

// sendMessage to `chat` (a number, or a string such as "@chan") as bot `token`.
httplib::Result Send(httplib::Client& client, const json& chat, const std::string& token = "T",
                     bool paid = false) {
  json body{{"chat_id", chat}, {"text", "x"}};
  if (paid) body["allow_paid_broadcast"] = true;
  return client.Post(absl::StrCat("/bot", token, "/sendMessage").c_str(), body.dump(),
                     "application/json");
}

int RetryAfter(const httplib::Result& r) {
  return json::parse(r->body)["parameters"]["retry_after"].get<int>();
}

// Only the limits under test; no latency.
FakeTelegram::Options Limited(Profile profile) {
  FakeTelegram::Options options;
  options.profile = profile;
  return options;
}

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

TEST(FakeTelegram, GetMeNamesTheBotLikeTheBotApi) {
  FakeTelegram fake({.token = "T", .bot_username = "my_bot"});
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  for (bool post : {false, true}) {
    auto r = post ? client.Post("/botT/getMe") : client.Get("/botT/getMe");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    json body = json::parse(r->body);
    EXPECT_EQ(body["ok"], true);
    EXPECT_TRUE(body["result"]["id"].is_number_integer());
    EXPECT_EQ(body["result"]["is_bot"], true);
    EXPECT_TRUE(body["result"]["first_name"].is_string());
    EXPECT_EQ(body["result"]["username"], "my_bot");
  }
  auto other = client.Get("/botX/getMe");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 401);
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

// As the Bot API does: a newer getUpdates ends the older long poll with 409, and the newer one
// goes on polling.
TEST(FakeTelegram, ANewerPollEndsTheOlderOneWithConflict) {
  FakeTelegram fake({});
  ASSERT_TRUE(fake.Start().ok());
  int older_status = 0;
  std::string older_body;
  std::thread first([&] {
    httplib::Client client = ClientFor(fake);
    client.set_read_timeout(10);
    if (auto r = client.Get("/botT/getUpdates?timeout=5")) {
      older_status = r->status;
      older_body = r->body;
    }
  });
  absl::SleepFor(absl::Milliseconds(300));
  std::thread writer([&] {
    absl::SleepFor(absl::Milliseconds(500));
    fake.InjectUserMessage(42, "/start abc");
  });
  httplib::Client second = ClientFor(fake);
  second.set_read_timeout(10);
  auto newer = second.Get("/botT/getUpdates?timeout=5");
  first.join();
  writer.join();
  EXPECT_EQ(older_status, 409);
  EXPECT_EQ(json::parse(older_body, nullptr, false).value("description", ""),
            "Conflict: terminated by other getUpdates request; make sure that only one bot "
            "instance is running");
  ASSERT_TRUE(newer);
  EXPECT_EQ(newer->status, 200);
  EXPECT_EQ(json::parse(newer->body)["result"].size(), 1u);
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
  // The default (telegram) profile, without its rare slow answers: one would outlast the client.
  ChildProcess fake(BinaryPath("fake-telegram"),
                    {absl::StrCat("--port=", port), "--record=" + record,
                     "--slow-answer-probability=0"},
                    {});
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

TEST(FakeTelegramProfile, AnswersTakeTheConfiguredLatency) {
  Profile profile;
  profile.latency_median = absl::Milliseconds(200);
  profile.latency_max = absl::Milliseconds(200);  // spread 0: always the median
  FakeTelegram fake(Limited(profile));
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  for (int i = 0; i < 3; ++i) {
    absl::Time start = absl::Now();
    auto r = Send(client, 1);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_GE(absl::Now() - start, absl::Milliseconds(190));
  }
  // Accepted after the latency: that is when the limits are decided.
  for (const TelegramMessage& m : fake.messages()) {
    EXPECT_GE(m.accepted_at - m.received_at, absl::Milliseconds(190));
  }
}

TEST(FakeTelegramProfile, OverTheBotBucketThe429BlocksEveryChatUntilRetryAfter) {
  Profile profile;
  profile.bot_per_second = 2;  // a burst of 2, then one token per 0.5 s: retry after 1 s
  profile.bot_burst = 2;
  FakeTelegram fake(Limited(profile));
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  EXPECT_EQ(Send(client, 1)->status, 200);
  EXPECT_EQ(Send(client, 2)->status, 200);
  auto limited = Send(client, 3);
  ASSERT_TRUE(limited);
  ASSERT_EQ(limited->status, 429);
  json body = json::parse(limited->body);
  EXPECT_FALSE(body["ok"].get<bool>());
  EXPECT_EQ(body["error_code"], 429);
  EXPECT_EQ(body["description"], "Too Many Requests: retry after 1");
  EXPECT_EQ(RetryAfter(limited), 1);
  absl::Time limited_at = absl::Now();

  // The flood wait covers every chat of this bot, not other bots.
  auto blocked = Send(client, 4);
  ASSERT_TRUE(blocked);
  EXPECT_EQ(blocked->status, 429);
  EXPECT_EQ(RetryAfter(blocked), 1);
  EXPECT_EQ(Send(client, 4, "OTHER")->status, 200);

  // Once it has passed, the bucket has refilled (the refusals took nothing).
  absl::SleepFor(limited_at + absl::Milliseconds(1100) - absl::Now());
  EXPECT_EQ(Send(client, 3)->status, 200);
  EXPECT_EQ(Send(client, 4)->status, 200);

  RateLimited counts = fake.rate_limited();
  EXPECT_EQ(counts.bot, 1);
  EXPECT_EQ(counts.blocked, 1);
  EXPECT_EQ(counts.total(), 2);
  EXPECT_EQ(fake.accepted(), 5);
  EXPECT_EQ(fake.MessagesTo("3").size(), 1u);
  auto stats = json::parse(client.Get("/control/stats")->body);
  EXPECT_EQ(stats["accepted"], 5);
  EXPECT_EQ(stats["rate_limited"]["bot"], 1);
  EXPECT_EQ(stats["rate_limited"]["blocked"], 1);
  EXPECT_EQ(stats["rate_limited"]["total"], 2);
  EXPECT_EQ(stats["requests"], 7);
}

TEST(FakeTelegramProfile, APrivateChatTakesABurstOfThreeThen429) {
  FakeTelegram fake(Limited(Profile::Telegram()));  // 1/s per chat, burst 3
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  client.set_read_timeout(5);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Send(client, 7)->status, 200) << i;
  auto limited = Send(client, 7);
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->status, 429);
  EXPECT_EQ(RetryAfter(limited), 1);
  EXPECT_EQ(fake.rate_limited().chat, 1);
  EXPECT_EQ(Send(client, 8)->status, 429) << "the whole bot waits";
  EXPECT_EQ(fake.rate_limited().blocked, 1);
  EXPECT_EQ(fake.MessagesTo("7").size(), 3u);
}

TEST(FakeTelegramProfile, GroupsAndChannelsTakeTwentyPerMinuteWithABurstOfFive) {
  Profile profile;
  profile.group_per_minute = 20;  // one token per 3 s
  profile.group_burst = 5;
  profile.chat_per_second = 1;
  profile.chat_burst = 3;
  FakeTelegram fake(Limited(profile));
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Send(client, -100123, "A")->status, 200) << i;
  auto limited = Send(client, -100123, "A");
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->status, 429);
  EXPECT_GE(RetryAfter(limited), 1);
  EXPECT_LE(RetryAfter(limited), 3);
  // "@name" is a channel: the group bucket, not the private chat's burst of 3 (another bot, so
  // that A's flood wait does not apply).
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Send(client, "@chan", "B")->status, 200) << i;
  EXPECT_EQ(Send(client, "@chan", "B")->status, 429);
  EXPECT_EQ(fake.rate_limited().group, 2);
  EXPECT_EQ(fake.rate_limited().chat, 0);
}

TEST(FakeTelegramProfile, PaidBroadcastUsesItsOwnBotBucket) {
  Profile profile;
  profile.bot_per_second = 1;
  profile.bot_burst = 1;
  profile.paid_bot_per_second = 1;
  profile.paid_bot_burst = 2;
  FakeTelegram fake(Limited(profile));
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  EXPECT_EQ(Send(client, 1)->status, 200);  // the ordinary bucket is empty now
  EXPECT_EQ(Send(client, 2, "T", /*paid=*/true)->status, 200);
  auto form = client.Post("/botT/sendMessage", "chat_id=3&text=x&allow_paid_broadcast=true",
                          "application/x-www-form-urlencoded");
  ASSERT_TRUE(form);
  EXPECT_EQ(form->status, 200);
  EXPECT_EQ(Send(client, 4, "T", /*paid=*/true)->status, 429);  // the paid one is empty too
  EXPECT_EQ(fake.rate_limited().paid_bot, 1);

  auto messages = fake.messages();
  ASSERT_EQ(messages.size(), 3u);
  EXPECT_FALSE(messages[0].paid_broadcast);
  EXPECT_TRUE(messages[1].paid_broadcast);
  EXPECT_TRUE(messages[2].paid_broadcast);

  // Without the flag, the ordinary bucket (another bot: T is in its flood wait).
  EXPECT_EQ(Send(client, 1, "U")->status, 200);
  EXPECT_EQ(Send(client, 2, "U")->status, 429);
  EXPECT_EQ(fake.rate_limited().bot, 1);
}

TEST(FakeTelegramProfile, PaidBroadcastStillMeetsThePerChatLimit) {
  Profile profile = Profile::Telegram();
  profile.latency_median = absl::ZeroDuration();
  FakeTelegram fake(Limited(profile));
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Send(client, 9, "T", /*paid=*/true)->status, 200);
  EXPECT_EQ(Send(client, 9, "T", /*paid=*/true)->status, 429);
  EXPECT_EQ(fake.rate_limited().chat, 1);
}

TEST(FakeTelegramProfile, ASlowAnswerIsDeliveredThoughTheClientGivesUp) {
  Profile profile;
  profile.slow_answer_probability = 1;
  profile.slow_answer_delay = absl::Seconds(3);
  FakeTelegram fake(Limited(profile));
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  client.set_read_timeout(1, 0);
  auto r = Send(client, 5);
  EXPECT_FALSE(r) << "the client timed out";
  EXPECT_EQ(fake.MessagesTo("5").size(), 1u);
  EXPECT_EQ(fake.accepted(), 1);
  EXPECT_EQ(fake.slow_answers(), 1);
  EXPECT_EQ(json::parse(ClientFor(fake).Get("/control/stats")->body)["slow_answers"], 1);
  // Stop() (the destructor) wakes the held-back answer.
}

TEST(FakeTelegramProfile, TheDefaultIsInstantAndLimitless) {
  FakeTelegram fake({});
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  for (int i = 0; i < 50; ++i) ASSERT_EQ(Send(client, 1)->status, 200) << i;
  for (int i = 0; i < 10; ++i) ASSERT_EQ(Send(client, -1)->status, 200) << i;
  EXPECT_EQ(fake.accepted(), 60);
  EXPECT_EQ(fake.rate_limited().total(), 0);
  EXPECT_EQ(fake.slow_answers(), 0);
}

TEST(FakeTelegramProfile, ResetForgetsBucketsAndFloodWaits) {
  FakeTelegram fake(Limited(Profile::Telegram()));
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  client.set_read_timeout(5);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Send(client, 7)->status, 200);
  EXPECT_EQ(Send(client, 7)->status, 429);
  ASSERT_EQ(client.Post("/control/reset", "", "application/json")->status, 200);
  EXPECT_EQ(Send(client, 7)->status, 200);
  EXPECT_EQ(fake.rate_limited().total(), 0);
}

TEST(FakeTelegramServer, ServesHundredsOfSlowRequestsAtOnce) {
  Profile profile;
  profile.latency_median = absl::Seconds(1);
  FakeTelegram fake(Limited(profile));
  ASSERT_TRUE(fake.Start().ok());
  constexpr int kClients = 300;
  std::vector<int> status(kClients, 0);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      httplib::Client client = ClientFor(fake);
      client.set_connection_timeout(10);
      client.set_read_timeout(10);
      if (auto r = Send(client, i + 1)) status[i] = r->status;
    });
  }
  for (std::thread& t : clients) t.join();
  for (int i = 0; i < kClients; ++i) EXPECT_EQ(status[i], 200) << i;
  EXPECT_EQ(fake.accepted(), kClients);
  // Sleeping handlers do not wait for each other (serialized, the peak would be 1).
  EXPECT_GE(fake.peak_in_flight(), kClients / 2);
}

TEST(FakeTelegramServer, KeepsAConnectionAliveForManyRequests) {
  FakeTelegram fake({});
  ASSERT_TRUE(fake.Start().ok());
  httplib::Client client = ClientFor(fake);
  client.set_keep_alive(true);
  for (int i = 0; i < 20; ++i) {
    auto r = Send(client, 1);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    // cpp-httplib's default closes a connection after 5 requests.
    EXPECT_NE(r->get_header_value("Connection"), "close") << i;
  }
}

TEST(FakeTelegramBinary, TelegramProfileLimitsAndDelays) {
  int port = FreePort();
  ChildProcess fake(BinaryPath("fake-telegram"),
                    {absl::StrCat("--port=", port), "--profile=telegram", "--chat-burst=1",
                     "--latency-median=150ms", "--latency-spread=0", "--latency-max=150ms",
                     "--slow-answer-probability=0"},
                    {});
  httplib::Client client("127.0.0.1", port);
  ASSERT_TRUE(WaitUntil([&] { return static_cast<bool>(client.Get("/control/stats")); },
                        absl::Seconds(10)))
      << fake.ReadLog();
  absl::Time start = absl::Now();
  EXPECT_EQ(Send(client, 5)->status, 200);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(140));
  auto limited = Send(client, 5);
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->status, 429);
  EXPECT_EQ(RetryAfter(limited), 1);
  json stats = json::parse(client.Get("/control/stats")->body);
  EXPECT_EQ(stats["accepted"], 1);
  EXPECT_EQ(stats["rate_limited"]["chat"], 1);
  EXPECT_EQ(stats["slow_answers"], 0);
  int status = fake.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(FakeTelegramBinary, InstantProfileHasNoLimits) {
  int port = FreePort();
  ChildProcess fake(BinaryPath("fake-telegram"),
                    {absl::StrCat("--port=", port), "--profile=instant"}, {});
  httplib::Client client("127.0.0.1", port);
  ASSERT_TRUE(WaitUntil([&] { return static_cast<bool>(client.Get("/control/stats")); },
                        absl::Seconds(10)))
      << fake.ReadLog();
  for (int i = 0; i < 10; ++i) EXPECT_EQ(Send(client, 5)->status, 200) << i;
  EXPECT_EQ(json::parse(client.Get("/control/stats")->body)["rate_limited"]["total"], 0);
  int status = fake.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

}  // namespace
}  // namespace concert::testing
