// HttpClient: one HTTP request at a time per call, through libcurl, with what every outgoing
// call of the project needs and nothing more: connect and whole-request timeouts, a cap on the
// answer's size, TLS (optionally https only), the status and body of the answer, and an optional
// hook asked right before the request is written.
//
//   HttpClient http;
//   HttpResponse r = http.Perform({.url = "https://idp.example/jwks.json",
//                                  .timeout = absl::Seconds(5), .https_only = true});
//   if (r.outcome == HttpResponse::Outcome::kAnswered && r.status == 200) Use(r.body);
//
// What a caller can rely on:
// - A request with a body is never sent twice by libcurl on its own (it silently resends on a
//   fresh connection when a reused one dies before any answer byte): the body cannot be
//   rewound, so that case ends as kConnection with request_sent.
// - request_sent: whether any of the request may have reached the server. False only when the
//   server cannot have seen it (no connection, refused by `before_send`).
// - `before_send` is asked once connected, the last moment at which not sending is certain;
//   false ends the call as kNotSent.
// - `stop`, once notified, ends a call in progress (a long poll) as kStopped.
// - An answer over max_answer_bytes (declared or read) ends as kTooLarge, not read further.
// - Redirects are not followed; only http and https (https_only: https) are spoken.
//
// Thread-safe: easy handles are pooled, one per concurrent Perform(), and keep their
// connections alive between requests.
#ifndef CONCERT_COMMON_HTTP_CLIENT_H_
#define CONCERT_COMMON_HTTP_CLIENT_H_

#include <cstddef>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace concert {

struct HttpRequest {
  std::string url;
  // Set: a POST with this body; unset: a GET.
  std::optional<std::string> body;
  // Extra header lines ("Content-Type: application/json").
  std::vector<std::string> headers;
  // Time to connect (TLS included), and for the whole request (connection included).
  absl::Duration connect_timeout = absl::Seconds(3);
  absl::Duration timeout = absl::Seconds(10);
  // Larger answers are refused (kTooLarge).
  size_t max_answer_bytes = 1 << 20;
  // Refuse plain http:// (a JWKS, whose keys decide who gets in).
  bool https_only = false;
  // Ignore the proxies the environment names: a URL carrying a secret goes to its host only.
  bool no_proxy = false;
  // Asked once connected, right before the request is written; false: not sent (kNotSent).
  std::function<bool()> before_send;
  // When notified, the call in progress ends (kStopped).
  const absl::Notification* stop = nullptr;
};

struct HttpResponse {
  enum class Outcome {
    kAnswered,    // `status` and `body` hold the server's answer, whatever its status
    kNotSent,     // before_send said no
    kTooLarge,    // the answer exceeded max_answer_bytes
    kTimeout,     // a timeout, before or after the request went out (see request_sent)
    kConnection,  // no connection, or it broke
    kStopped,     // `stop` was notified
  };
  Outcome outcome = Outcome::kConnection;
  long status = 0;
  std::string body;
  // Whether the server may have received the request (see the header).
  bool request_sent = false;
  // libcurl's description of a failure; empty when answered.
  std::string error;

  bool answered() const { return outcome == Outcome::kAnswered; }
};

class HttpClient {
 public:
  HttpClient();
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  HttpResponse Perform(const HttpRequest& request);

 private:
  void* AcquireHandle();
  void ReleaseHandle(void* handle);

  std::mutex mu_;
  std::vector<void*> idle_handles_;  // CURL*, kept with their open connections
};

}  // namespace concert

#endif  // CONCERT_COMMON_HTTP_CLIENT_H_
