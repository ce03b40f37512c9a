#include "notifier/telegram_sender.h"

#include <curl/curl.h>

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
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

// sendMessage answers a few hundred bytes; anything near this is not the Bot API talking.
constexpr size_t kMaxAnswerBytes = 1 << 20;

// Collects the answer up to kMaxAnswerBytes; beyond, libcurl ends the transfer (write error).
size_t Append(char* data, size_t size, size_t count, void* out) {
  auto* answer = static_cast<std::string*>(out);
  if (answer->size() + size * count > kMaxAnswerBytes) return 0;
  answer->append(data, size * count);
  return size * count;
}

// Asks the notification's still_ours() once the connection is ready and before the request is
// written, the last moment at which not sending is still certain (a process frozen inside
// libcurl wakes up here, or later with its request already out).
struct Ownership {
  const std::function<bool()>* still_ours;
  bool refused = false;
};

int CheckOwnership(void* data, char*, char*, int, int) {
  auto* ownership = static_cast<Ownership*>(data);
  if (*ownership->still_ours && !(*ownership->still_ours)()) {
    ownership->refused = true;
    return CURL_PREREQFUNC_ABORT;
  }
  return CURL_PREREQFUNC_OK;
}

// Whether a non-2xx answer is the Bot API's own verdict ({"ok":false,"error_code":<status>}):
// Telegram handled the request and refused it. A gateway in front of it (502, 504 pages) says
// nothing about whether Telegram delivered the message.
bool IsBotApiError(const json& answer, long status) {
  return answer.is_object() && answer.contains("ok") && answer["ok"].is_boolean() &&
         !answer["ok"].get<bool>() && answer.contains("error_code") &&
         answer["error_code"].is_number_integer() && answer["error_code"].get<long>() == status;
}

// The field as a boolean: true, or the string "true".
bool JsonTrue(const json& object, const char* field) {
  if (!object.is_object() || !object.contains(field)) return false;
  const json& v = object[field];
  return (v.is_boolean() && v.get<bool>()) || (v.is_string() && v.get<std::string>() == "true");
}

// parameters.retry_after in whole seconds, whether a number or a numeric string; 1 when absent
// or unreadable.
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

// The request body, handed to libcurl by a reader that cannot rewind. libcurl silently sends a
// request again on a fresh connection when a reused one dies before any answer byte, but the
// first copy may have reached Telegram: refusing the rewind turns that into an error the
// caller counts as possibly delivered.
struct Body {
  const std::string* text;
  size_t sent = 0;
};

size_t ReadBody(char* buffer, size_t size, size_t count, void* userdata) {
  auto* body = static_cast<Body*>(userdata);
  size_t n = std::min(size * count, body->text->size() - body->sent);
  body->text->copy(buffer, n, body->sent);
  body->sent += n;
  return n;
}

int RefuseRewind(void*, curl_off_t, int) { return CURL_SEEKFUNC_CANTSEEK; }

}  // namespace

std::string RedactToken(absl::string_view text, absl::string_view token) {
  if (token.empty()) return std::string(text);
  return absl::StrReplaceAll(text, {{token, "<redacted>"}});
}

TelegramSender::TelegramSender(TelegramOptions options) : options_(std::move(options)) {
  GlobalInitOnce();
  url_ = absl::StrCat(absl::StripSuffix(options_.api_base, "/"), "/bot", options_.token,
                      "/sendMessage");
  headers_ = curl_slist_append(nullptr, "Content-Type: application/json");
  // No "Expect: 100-continue" round trip before a long body (libcurl adds one to uploads).
  headers_ = curl_slist_append(headers_, "Expect:");
}

TelegramSender::~TelegramSender() {
  for (void* handle : idle_handles_) curl_easy_cleanup(static_cast<CURL*>(handle));
  curl_slist_free_all(headers_);
}

void* TelegramSender::AcquireHandle() {
  {
    std::lock_guard lock(mu_);
    if (!idle_handles_.empty()) {
      void* handle = idle_handles_.back();
      idle_handles_.pop_back();
      return handle;
    }
  }
  // What every request of this sender shares is set once per handle; a handle keeps its
  // connection open between requests.
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return nullptr;
  curl_easy_setopt(curl, CURLOPT_URL, url_.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers_);
  curl_easy_setopt(curl, CURLOPT_POST, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options_.total_timeout)));
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);  // timeouts without SIGALRM: we are threaded
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Append);
  curl_easy_setopt(curl, CURLOPT_READFUNCTION, ReadBody);
  curl_easy_setopt(curl, CURLOPT_SEEKFUNCTION, RefuseRewind);
  curl_easy_setopt(curl, CURLOPT_PREREQFUNCTION, CheckOwnership);
  // No proxies from the environment: the token must only ever go to api_base.
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
  return curl;
}

void TelegramSender::ReleaseHandle(void* handle) {
  std::lock_guard lock(mu_);
  idle_handles_.push_back(handle);
}

SendResult TelegramSender::SendOnce(const std::string& body,
                                    const std::function<bool()>& still_ours) {
  CURL* curl = static_cast<CURL*>(AcquireHandle());
  if (curl == nullptr) return SendResult::Transient("connection", "curl_easy_init failed");
  std::string response;
  char error[CURL_ERROR_SIZE] = {0};
  Body reader{&body};
  Ownership ownership{&still_ours};
  curl_easy_setopt(curl, CURLOPT_READDATA, &reader);
  curl_easy_setopt(curl, CURLOPT_PREREQDATA, &ownership);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);

  CURLcode code = curl_easy_perform(curl);
  long status = 0;
  long request_bytes = 0;  // what went out on the wire: 0 means Telegram never saw the request
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(curl, CURLINFO_REQUEST_SIZE, &request_bytes);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, nullptr);  // `error` ends with this call
  ReleaseHandle(curl);

  if (ownership.refused) return SendResult::NotOurs();
  if (code != CURLE_OK) {
    std::string what = error[0] != '\0' ? error : curl_easy_strerror(code);
    if (code == CURLE_WRITE_ERROR) {
      what = absl::StrCat("answer larger than ", kMaxAnswerBytes, " bytes");
    }
    // A refused rewind: the request went out on a connection that then died unanswered.
    bool possibly_delivered = request_bytes > 0 || code == CURLE_SEND_FAIL_REWIND;
    return SendResult::Transient(code == CURLE_OPERATION_TIMEDOUT ? "timeout" : "connection",
                                 RedactToken(absl::StrCat("telegram: ", what), options_.token),
                                 possibly_delivered);
  }
  json answer = json::parse(response, nullptr, /*allow_exceptions=*/false);
  std::string description;
  if (answer.is_object() && answer.contains("description") && answer["description"].is_string()) {
    description = RedactToken(answer["description"].get<std::string>(), options_.token);
  }
  if (status == 200) {
    if (JsonTrue(answer, "ok")) return SendResult::Sent();
    // A 200 without ok:true is not something Telegram does; retrying will not fix it.
    return SendResult::Permanent("telegram_4xx", "telegram: 200 without ok:true");
  }
  std::string message = absl::StrCat("telegram: HTTP ", status, description.empty() ? "" : ": ",
                                     description);
  if (status == 429) {
    return SendResult::RateLimited(
        message, std::min(absl::Seconds(RetryAfterSeconds(answer)), options_.max_retry_after));
  }
  if (status >= 500) {
    // A gateway's 5xx may come after Telegram accepted the message.
    return SendResult::Transient("telegram_5xx", message,
                                 /*possibly_delivered=*/!IsBotApiError(answer, status));
  }
  if (status == 403 || (status == 400 && absl::StrContains(description, "chat not found"))) {
    return SendResult::Permanent(kChatGone, message);
  }
  return SendResult::Permanent("telegram_4xx", message);
}

bool TelegramSender::Wait(absl::Duration d) const {
  if (options_.stop == nullptr) {
    absl::SleepFor(d);
    return true;
  }
  return !options_.stop->WaitForNotificationWithTimeout(d);
}

SendResult TelegramSender::Send(const Notification& notification) {
  json request{{"chat_id", notification.chat_id}, {"text", notification.text}};
  if (options_.paid_broadcast) request["allow_paid_broadcast"] = true;
  std::string body = request.dump(-1, ' ', false, json::error_handler_t::replace);
  absl::Duration backoff = options_.retry_backoff;
  for (int failures = 0;; ++failures) {
    SendResult result = SendOnce(body, notification.still_ours);
    if (result.kind != SendResult::Kind::kTransient || result.possibly_delivered ||
        failures >= options_.retries) {
      return result;
    }
    log::Warn("telegram send failed before reaching the chat; retrying",
              {{"event_id", notification.event_id},
               {"error_class", result.error_class},
               {"error", result.message},
               {"attempt", failures + 1},
               {"backoff_ms", absl::ToInt64Milliseconds(backoff)}});
    if (!Wait(backoff)) return result;
    backoff *= 2;
  }
}

}  // namespace concert::notifier
