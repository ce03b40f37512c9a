#include "notifier/bot_api.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"

namespace concert::notifier {
namespace {

using nlohmann::json;

// sendMessage and getMe answer a few hundred bytes; anything near this is not the Bot API.
constexpr size_t kMaxAnswerBytes = 1 << 20;
// A batch of updates: 20 with the longest texts (4,096 characters, each escaped to at most 6
// bytes, twice with a quoted reply) stay far below.
constexpr size_t kMaxUpdatesBytes = 4 << 20;

// The field as a boolean: true, or the string "true".
bool JsonTrue(const json& object, const char* field) {
  if (!object.is_object() || !object.contains(field)) return false;
  const json& v = object[field];
  return (v.is_boolean() && v.get<bool>()) || (v.is_string() && v.get<std::string>() == "true");
}

int64_t RetryAfterSeconds(const json& answer) {
  if (!answer.is_object() || !answer.contains("parameters")) return 1;
  const json& parameters = answer["parameters"];
  if (!parameters.is_object() || !parameters.contains("retry_after")) return 1;
  const json& v = parameters["retry_after"];
  double seconds = 1;
  if (v.is_number()) {
    seconds = v.get<double>();
  } else if (v.is_string() && !absl::SimpleAtod(v.get<std::string>(), &seconds)) {
    seconds = 1;
  }
  if (!std::isfinite(seconds)) return 1;
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(std::min(seconds, 1e6))));
}

bool IsBotApiError(const json& answer, long status) {
  return answer.is_object() && answer.contains("ok") && answer["ok"].is_boolean() &&
         !answer["ok"].get<bool>() && answer.contains("error_code") &&
         answer["error_code"].is_number_integer() && answer["error_code"].get<long>() == status;
}

}  // namespace

std::string RedactToken(absl::string_view text, absl::string_view token) {
  if (token.empty()) return std::string(text);
  return absl::StrReplaceAll(text, {{token, "<redacted>"}});
}

BotApi::BotApi(BotApiOptions options)
    : options_(std::move(options)),
      base_(absl::StrCat(absl::StripSuffix(options_.api_base, "/"), "/bot", options_.token, "/")) {}

std::string BotApi::Redact(absl::string_view text) const {
  return RedactToken(text, options_.token);
}

std::string BotApi::Describe(absl::string_view method, const BotAnswer& answer) const {
  if (!answer.http.answered()) return absl::StrCat(method, ": ", answer.http.error);
  return absl::StrCat(method, ": HTTP ", answer.http.status,
                      answer.description.empty() ? "" : " ", answer.description);
}

BotAnswer BotApi::Call(absl::string_view method, absl::string_view query, HttpRequest request) {
  request.url = absl::StrCat(base_, method, query);
  request.connect_timeout = options_.connect_timeout;
  request.no_proxy = true;
  BotAnswer answer;
  answer.http = http_.Perform(request);
  answer.http.error = Redact(answer.http.error);
  if (!answer.http.answered()) return answer;
  json body = json::parse(answer.http.body, nullptr, /*allow_exceptions=*/false);
  answer.ok = answer.http.status == 200 && JsonTrue(body, "ok");
  if (answer.ok && body.is_object() && body.contains("result")) {
    answer.result = std::move(body["result"]);
  }
  if (body.is_object() && body.contains("description") && body["description"].is_string()) {
    answer.description = Redact(body["description"].get<std::string>());
  }
  answer.bot_api_error = IsBotApiError(body, answer.http.status);
  answer.retry_after = absl::Seconds(RetryAfterSeconds(body));
  return answer;
}

BotAnswer BotApi::SendMessage(const std::string& chat_id, const std::string& text,
                              bool paid_broadcast, const std::function<bool()>& still_ours) {
  json request{{"chat_id", chat_id}, {"text", text}};
  if (paid_broadcast) request["allow_paid_broadcast"] = true;
  return Call("sendMessage", "",
              {.body = request.dump(-1, ' ', false, json::error_handler_t::replace),
               // No "Expect: 100-continue" round trip before a long body (libcurl adds one).
               .headers = {"Content-Type: application/json", "Expect:"},
               .timeout = options_.timeout,
               .max_answer_bytes = kMaxAnswerBytes,
               .before_send = still_ours});
}

BotAnswer BotApi::GetUpdates(int64_t offset, int limit, absl::Duration wait,
                             const absl::Notification& stop) {
  std::string query = absl::StrCat("?offset=", offset, "&limit=", limit,
                                   "&timeout=", absl::ToInt64Seconds(wait),
                                   "&allowed_updates=%5B%22message%22%5D");
  return Call("getUpdates", query,
              {// The long poll itself plus the time of any other call.
               .timeout = wait + options_.timeout,
               .max_answer_bytes = kMaxUpdatesBytes,
               .stop = &stop});
}

BotAnswer BotApi::GetMe(const absl::Notification& stop) {
  return Call("getMe", "",
              {.timeout = options_.timeout, .max_answer_bytes = kMaxAnswerBytes, .stop = &stop});
}

}  // namespace concert::notifier
