#include "notifier/link_client.h"

#include "absl/strings/str_cat.h"
#include "common/grpc_server.h"
#include "common/log.h"

namespace concert::notifier {
namespace {

std::shared_ptr<grpc::ChannelCredentials> Credentials(const LinkClientOptions& o) {
  if (o.tls_ca.empty()) return grpc::InsecureChannelCredentials();
  return grpc::SslCredentials({.pem_root_certs = o.tls_ca,
                               .pem_private_key = o.tls_key,
                               .pem_cert_chain = o.tls_cert});
}

absl::Status FromGrpc(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// payment-server's answers about the code or the chat: decisions, not failed calls.
bool IsDecision(grpc::StatusCode code) {
  return code == grpc::StatusCode::OK || code == grpc::StatusCode::NOT_FOUND ||
         code == grpc::StatusCode::FAILED_PRECONDITION ||
         code == grpc::StatusCode::INVALID_ARGUMENT;
}

// Refusals no retry ends: the two services' settings disagree.
bool IsMisconfiguration(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAUTHENTICATED ||
         code == grpc::StatusCode::PERMISSION_DENIED ||
         code == grpc::StatusCode::UNIMPLEMENTED;
}

}  // namespace

LinkClient::LinkClient(LinkClientOptions options, metrics::Registry& registry)
    : options_(std::move(options)),
      stub_(internal::v1::TelegramLinkService::NewStub(
          grpc::CreateChannel(options_.address, Credentials(options_)))),
      registry_(registry) {}

void LinkClient::Prepare(grpc::ClientContext& context) const {
  context.set_deadline(Deadline(options_.timeout));
  context.AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
}

absl::Status LinkClient::Observe(const char* method, const grpc::Status& status) {
  absl::Status result = FromGrpc(status);
  if (IsDecision(status.error_code())) {
    // The settings agree (again): a later refusal is news.
    std::lock_guard lock(mu_);
    refusals_logged_.clear();
    return result;
  }
  std::string code = absl::StatusCodeToString(result.code());
  registry_
      .GetCounter("notifier_link_call_failures_total",
                  "Calls to payment-server's TelegramLinkService that got no decision, by "
                  "method and gRPC code (UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED: "
                  "settings to fix; the update waits)",
                  {{"method", method}, {"code", code}})
      .Increment();
  if (IsMisconfiguration(status.error_code())) {
    bool first;
    {
      std::lock_guard lock(mu_);
      first = refusals_logged_.insert(status.error_code()).second;
    }
    if (first) {
      log::Error("payment-server refuses the notifier's link calls: INTERNAL_TOKEN (and "
                 "PAYMENT_SERVER_TLS_*) must match payment-server's, and PAYMENT_SERVER_ADDRESS "
                 "must be its INTERNAL_GRPC_ADDRESS; the bot's updates wait until they do",
                 {{"method", method}, {"code", code}, {"error", status.error_message()}});
    }
  }
  return result;
}

absl::StatusOr<int64_t> LinkClient::ConfirmLink(const std::string& code, int64_t chat_id) {
  grpc::ClientContext context;
  Prepare(context);
  internal::v1::ConfirmLinkRequest request;
  request.set_code(code);
  request.set_chat_id(chat_id);
  internal::v1::ConfirmLinkResponse response;
  absl::Status status = Observe("ConfirmLink", stub_->ConfirmLink(&context, request, &response));
  if (!status.ok()) return status;
  return response.user_id();
}

absl::Status LinkClient::UnlinkChat(int64_t chat_id, const std::string& reason) {
  grpc::ClientContext context;
  Prepare(context);
  internal::v1::UnlinkChatRequest request;
  request.set_chat_id(chat_id);
  request.set_reason(reason);
  internal::v1::UnlinkChatResponse response;
  return Observe("UnlinkChat", stub_->UnlinkChat(&context, request, &response));
}

}  // namespace concert::notifier
