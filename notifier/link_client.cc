#include "notifier/link_client.h"

#include "absl/strings/str_cat.h"
#include "common/grpc_server.h"

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

}  // namespace

LinkClient::LinkClient(LinkClientOptions options)
    : options_(std::move(options)),
      stub_(internal::v1::TelegramLinkService::NewStub(
          grpc::CreateChannel(options_.address, Credentials(options_)))) {}

void LinkClient::Prepare(grpc::ClientContext& context) const {
  context.set_deadline(Deadline(options_.timeout));
  context.AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
}

absl::StatusOr<int64_t> LinkClient::ConfirmLink(const std::string& code, int64_t chat_id) {
  grpc::ClientContext context;
  Prepare(context);
  internal::v1::ConfirmLinkRequest request;
  request.set_code(code);
  request.set_chat_id(chat_id);
  internal::v1::ConfirmLinkResponse response;
  grpc::Status status = stub_->ConfirmLink(&context, request, &response);
  if (!status.ok()) return FromGrpc(status);
  return response.user_id();
}

absl::Status LinkClient::UnlinkChat(int64_t chat_id, const std::string& reason) {
  grpc::ClientContext context;
  Prepare(context);
  internal::v1::UnlinkChatRequest request;
  request.set_chat_id(chat_id);
  request.set_reason(reason);
  internal::v1::UnlinkChatResponse response;
  return FromGrpc(stub_->UnlinkChat(&context, request, &response));
}

}  // namespace concert::notifier
