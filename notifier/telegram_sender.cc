#include "notifier/telegram_sender.h"

#include <curl/curl.h>

#include <mutex>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace concert::notifier {
namespace {

using nlohmann::json;

void GlobalInitOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

size_t Append(char* data, size_t size, size_t count, void* out) {
  static_cast<std::string*>(out)->append(data, size * count);
  return size * count;
}

std::string ClassifyCurlError(CURLcode code) {
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      return "timeout";
    default:
      return "connection";
  }
}

}  // namespace

std::string RedactToken(absl::string_view text, absl::string_view token) {
  if (token.empty()) return std::string(text);
  return absl::StrReplaceAll(text, {{token, "<redacted>"}});
}

TelegramSender::TelegramSender(TelegramOptions options) : options_(std::move(options)) {
  GlobalInitOnce();
  url_ = absl::StrCat(absl::StripSuffix(options_.api_base, "/"), "/bot", options_.token,
                      "/sendMessage");
}

TelegramSender::Attempt TelegramSender::SendOnce(const std::string& body) {
  Attempt attempt;
  CURL* curl = curl_easy_init();
  if (curl == nullptr) {
    attempt.result = SendResult::Transient("connection", "curl_easy_init failed");
    return attempt;
  }
  std::string response;
  char error[CURL_ERROR_SIZE] = {0};
  curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
  curl_easy_setopt(curl, CURLOPT_URL, url_.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_POST, 1L);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options_.total_timeout)));
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);  // timeouts without SIGALRM: we are threaded
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Append);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  // No proxies from the environment: the token must only ever go to api_base.
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");

  CURLcode code = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);

  if (code != CURLE_OK) {
    std::string what = error[0] != '\0' ? error : curl_easy_strerror(code);
    attempt.result = SendResult::Transient(ClassifyCurlError(code),
                                           RedactToken(absl::StrCat("telegram: ", what),
                                                       options_.token));
    return attempt;
  }
  json parsed = json::parse(response, nullptr, /*allow_exceptions=*/false);
  std::string description;
  if (parsed.is_object() && parsed.contains("description") && parsed["description"].is_string()) {
    description = RedactToken(parsed["description"].get<std::string>(), options_.token);
  }
  if (status == 200) {
    if (parsed.is_object() && parsed.value("ok", false)) {
      attempt.result = SendResult::Sent();
    } else {
      // A 200 without ok:true is not something Telegram does; retrying will not fix it.
      attempt.result = SendResult::Permanent("telegram_4xx", "telegram: 200 without ok:true");
    }
    return attempt;
  }
  std::string message = absl::StrCat("telegram: HTTP ", status, description.empty() ? "" : ": ",
                                     description);
  if (status == 429) {
    int retry_after = 1;
    if (parsed.is_object() && parsed.contains("parameters") && parsed["parameters"].is_object()) {
      retry_after = parsed["parameters"].value("retry_after", 1);
    }
    attempt.rate_limited = true;
    attempt.retry_after = std::min(absl::Seconds(std::max(retry_after, 0)), options_.max_retry_after);
    attempt.result = SendResult::Transient("telegram_429", message);
  } else if (status >= 500) {
    attempt.result = SendResult::Transient("telegram_5xx", message);
  } else if (status == 403 || (status == 400 && absl::StrContains(description, "chat not found"))) {
    attempt.result = SendResult::Permanent(kChatGone, message);
  } else {
    attempt.result = SendResult::Permanent("telegram_4xx", message);
  }
  return attempt;
}

bool TelegramSender::Wait(absl::Duration d) const {
  if (options_.stop == nullptr) {
    absl::SleepFor(d);
    return true;
  }
  return !options_.stop->WaitForNotificationWithTimeout(d);
}

SendResult TelegramSender::Send(const Notification& notification) {
  std::string body = json{{"chat_id", notification.chat_id}, {"text", notification.text}}.dump(
      -1, ' ', false, json::error_handler_t::replace);
  int failures = 0;
  int rate_limit_waits = 0;
  absl::Duration backoff = options_.retry_backoff;
  while (true) {
    Attempt attempt = SendOnce(body);
    if (attempt.result.ok() || attempt.result.kind == SendResult::Kind::kPermanent) {
      return attempt.result;
    }
    if (attempt.rate_limited) {
      if (rate_limit_waits++ >= options_.max_rate_limit_waits) return attempt.result;
      log::Warn("telegram rate limit; waiting", {{"event_id", notification.event_id},
                                                 {"retry_after_ms", absl::ToInt64Milliseconds(attempt.retry_after)}});
      if (!Wait(attempt.retry_after)) return attempt.result;
      continue;
    }
    if (failures++ >= options_.retries) return attempt.result;
    log::Warn("telegram send failed; retrying",
              {{"event_id", notification.event_id},
               {"error_class", attempt.result.error_class},
               {"error", attempt.result.message},
               {"attempt", failures},
               {"backoff_ms", absl::ToInt64Milliseconds(backoff)}});
    if (!Wait(backoff)) return attempt.result;
    backoff *= 2;
  }
}

}  // namespace concert::notifier
