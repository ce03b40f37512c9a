// The notifier's client of payment-server's concert.internal.v1.TelegramLinkService: confirming
// a deep-link code from a chat, and dropping a chat's link when the user stops the bot or
// Telegram says the chat is gone. Calls carry `authorization: Bearer <INTERNAL_TOKEN>`.
//
//   LinkClient links({.address = "127.0.0.1:50055", .token = internal_token},
//                    metrics::Default());
//   absl::StatusOr<int64_t> user = links.ConfirmLink(code, chat_id);
//   // NOT_FOUND: unknown code; FAILED_PRECONDITION: expired or used (see the message);
//   // anything else (UNAVAILABLE, DEADLINE_EXCEEDED...): payment-server did not decide, retry.
//
// A call that got no decision is counted by method and code
// (notifier_link_call_failures_total). A refusal that only an operator can end
// (UNAUTHENTICATED, PERMISSION_DENIED: INTERNAL_TOKEN or the TLS files differ from
// payment-server's; UNIMPLEMENTED: payment-server runs without INTERNAL_TOKEN, or the address
// is its public GRPC_ADDRESS instead of INTERNAL_GRPC_ADDRESS) is also logged
// as an error, once per code until payment-server decides a call again: callers retry such
// calls forever, and their warnings alone would not say what to fix.
//
// Thread-safe (gRPC stubs are); every call blocks up to `timeout`.
#ifndef CONCERT_NOTIFIER_LINK_CLIENT_H_
#define CONCERT_NOTIFIER_LINK_CLIENT_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "concert/internal/v1/telegram_link.grpc.pb.h"

namespace concert::notifier {

struct LinkClientOptions {
  // PAYMENT_SERVER_ADDRESS: payment-server's INTERNAL_GRPC_ADDRESS.
  std::string address = "127.0.0.1:50055";
  // INTERNAL_TOKEN, the same secret as payment-server's.
  std::string token;
  // PAYMENT_SERVER_TLS_CA_FILE's content: set, calls go over TLS trusting it; with
  // PAYMENT_SERVER_TLS_CERT_FILE and _KEY_FILE's, the notifier presents that certificate (mTLS).
  std::string tls_ca, tls_cert, tls_key;
  absl::Duration timeout = absl::Seconds(5);
};

class LinkClient {
 public:
  LinkClient(LinkClientOptions options, metrics::Registry& registry);

  // The user now linked to `chat_id`.
  absl::StatusOr<int64_t> ConfirmLink(const std::string& code, int64_t chat_id);
  // `reason` goes to payment-server's log.
  absl::Status UnlinkChat(int64_t chat_id, const std::string& reason);

 private:
  // The deadline and the internal token every call carries.
  void Prepare(grpc::ClientContext& context) const;
  // Counts and logs (see above) the outcome of one call; returns it as an absl::Status.
  absl::Status Observe(const char* method, const grpc::Status& status);

  LinkClientOptions options_;
  std::unique_ptr<internal::v1::TelegramLinkService::Stub> stub_;
  metrics::Registry& registry_;
  std::mutex mu_;
  std::set<grpc::StatusCode> refusals_logged_;  // since the last decision
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_LINK_CLIENT_H_
