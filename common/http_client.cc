#include "common/http_client.h"

#include <curl/curl.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace concert {
namespace {

void GlobalInitOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

long Milliseconds(absl::Duration d) { return static_cast<long>(absl::ToInt64Milliseconds(d)); }

// What one transfer's callbacks share.
struct Transfer {
  const HttpRequest* request;
  size_t body_sent = 0;
  std::string answer;
  bool too_large = false;
  bool refused = false;
};

// Collects the answer up to the cap; beyond, libcurl ends the transfer (write error).
size_t Append(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  if (t->answer.size() + size * count > t->request->max_answer_bytes) {
    t->too_large = true;
    return 0;
  }
  t->answer.append(data, size * count);
  return size * count;
}

// Hands the body to libcurl by a reader that cannot rewind (see the header).
size_t ReadBody(char* buffer, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::string& body = *t->request->body;
  size_t n = std::min(size * count, body.size() - t->body_sent);
  body.copy(buffer, n, t->body_sent);
  t->body_sent += n;
  return n;
}

int RefuseRewind(void*, curl_off_t, int) { return CURL_SEEKFUNC_CANTSEEK; }

int BeforeSend(void* user, char*, char*, int, int) {
  auto* t = static_cast<Transfer*>(user);
  if (t->request->before_send && !t->request->before_send()) {
    t->refused = true;
    return CURL_PREREQFUNC_ABORT;
  }
  return CURL_PREREQFUNC_OK;
}

// A non-zero answer aborts the transfer: a stop ends a long poll at once.
int AbortOnStop(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  return t->request->stop != nullptr && t->request->stop->HasBeenNotified() ? 1 : 0;
}

}  // namespace

HttpClient::HttpClient() { GlobalInitOnce(); }

HttpClient::~HttpClient() {
  for (void* handle : idle_handles_) curl_easy_cleanup(static_cast<CURL*>(handle));
}

void* HttpClient::AcquireHandle() {
  {
    std::lock_guard lock(mu_);
    if (!idle_handles_.empty()) {
      void* handle = idle_handles_.back();
      idle_handles_.pop_back();
      // Forgets the last request's options; keeps its live connections.
      curl_easy_reset(static_cast<CURL*>(handle));
      return handle;
    }
  }
  return curl_easy_init();
}

void HttpClient::ReleaseHandle(void* handle) {
  std::lock_guard lock(mu_);
  idle_handles_.push_back(handle);
}

HttpResponse HttpClient::Perform(const HttpRequest& request) {
  HttpResponse response;
  CURL* curl = static_cast<CURL*>(AcquireHandle());
  if (curl == nullptr) {
    response.error = "curl_easy_init failed";
    return response;
  }
  Transfer transfer{.request = &request};
  curl_slist* headers = nullptr;
  for (const std::string& header : request.headers) {
    headers = curl_slist_append(headers, header.c_str());
  }
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, request.https_only ? "https" : "https,http");
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, Milliseconds(request.connect_timeout));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, Milliseconds(request.timeout));
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);  // timeouts without SIGALRM: we are threaded
  if (request.no_proxy) curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
  // A declared length over the cap is refused before any of the answer is read.
  curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE,
                   static_cast<curl_off_t>(request.max_answer_bytes));
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Append);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(curl, CURLOPT_PREREQFUNCTION, BeforeSend);
  curl_easy_setopt(curl, CURLOPT_PREREQDATA, &transfer);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  if (request.body) {
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(request.body->size()));
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, ReadBody);
    curl_easy_setopt(curl, CURLOPT_READDATA, &transfer);
    curl_easy_setopt(curl, CURLOPT_SEEKFUNCTION, RefuseRewind);
  }
  if (request.stop != nullptr) {
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, AbortOnStop);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &transfer);
  }

  CURLcode code = curl_easy_perform(curl);
  long request_bytes = 0;  // what went out on the wire: 0 means the server never saw it
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  curl_easy_getinfo(curl, CURLINFO_REQUEST_SIZE, &request_bytes);
  // Nothing of this call may outlive it: the next request on this handle sets its own.
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, nullptr);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, nullptr);
  ReleaseHandle(curl);
  curl_slist_free_all(headers);

  // A refused rewind: the request went out on a connection that then died unanswered.
  response.request_sent = request_bytes > 0 || code == CURLE_SEND_FAIL_REWIND;
  using Outcome = HttpResponse::Outcome;
  if (code == CURLE_OK) {
    response.outcome = Outcome::kAnswered;
    response.body = std::move(transfer.answer);
    return response;
  }
  response.error = error[0] != '\0' ? error : curl_easy_strerror(code);
  if (transfer.refused) {
    response.outcome = Outcome::kNotSent;
    response.request_sent = false;
  } else if (transfer.too_large || code == CURLE_FILESIZE_EXCEEDED) {
    response.outcome = Outcome::kTooLarge;
    response.error = absl::StrCat("answer larger than ", request.max_answer_bytes, " bytes");
  } else if (request.stop != nullptr && request.stop->HasBeenNotified()) {
    response.outcome = Outcome::kStopped;
  } else if (code == CURLE_OPERATION_TIMEDOUT) {
    response.outcome = Outcome::kTimeout;
  } else {
    response.outcome = Outcome::kConnection;
  }
  return response;
}

}  // namespace concert
