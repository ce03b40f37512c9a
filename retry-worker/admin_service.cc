#include "retry-worker/admin_service.h"

#include <google/protobuf/util/time_util.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_server.h"
#include "common/log.h"
#include "common/status.h"

namespace concert::retry {
namespace {

using ops::v1::FailedMessageStatus;

void SetTime(absl::Time t, google::protobuf::Timestamp* out) {
  *out = google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(absl::ToUnixMicros(t));
}

FailedMessageStatus StatusValue(const std::string& name) {
  if (name == kPending) return ops::v1::FAILED_MESSAGE_STATUS_PENDING;
  if (name == kProcessed) return ops::v1::FAILED_MESSAGE_STATUS_PROCESSED;
  if (name == kFailed) return ops::v1::FAILED_MESSAGE_STATUS_FAILED;
  if (name == kUncertain) return ops::v1::FAILED_MESSAGE_STATUS_UNCERTAIN;
  if (name == kDiscarded) return ops::v1::FAILED_MESSAGE_STATUS_DISCARDED;
  return ops::v1::FAILED_MESSAGE_STATUS_UNSPECIFIED;
}

}  // namespace

std::string StatusName(FailedMessageStatus status) {
  switch (status) {
    case ops::v1::FAILED_MESSAGE_STATUS_PENDING: return kPending;
    case ops::v1::FAILED_MESSAGE_STATUS_PROCESSED: return kProcessed;
    case ops::v1::FAILED_MESSAGE_STATUS_FAILED: return kFailed;
    case ops::v1::FAILED_MESSAGE_STATUS_UNCERTAIN: return kUncertain;
    case ops::v1::FAILED_MESSAGE_STATUS_DISCARDED: return kDiscarded;
    default: return "";
  }
}

void ToProto(const FailedMessage& m, ops::v1::FailedMessage* out) {
  out->set_id(m.id);
  out->set_event_id(m.event_id);
  out->set_original_topic(m.original_topic);
  out->set_key(m.key);
  out->set_payload(m.payload);
  for (const auto& [name, value] : m.headers) {
    // proto3 strings must be UTF-8 (gRPC refuses to send them otherwise): the map shows
    // DisplayText; raw_headers has the bytes.
    (*out->mutable_headers())[DisplayText(name)] = DisplayText(value);
    ops::v1::Header* raw = out->add_raw_headers();
    raw->set_name(name);
    raw->set_value(value);
  }
  out->set_error_class(m.error_class);
  out->set_error_message(m.error_message);
  out->set_attempts(m.attempts);
  out->set_status(StatusValue(m.status));
  SetTime(m.next_attempt_at, out->mutable_next_attempt_at());
  if (m.last_retry_at) SetTime(*m.last_retry_at, out->mutable_last_retry_at());
  SetTime(m.created_at, out->mutable_created_at());
  SetTime(m.updated_at, out->mutable_updated_at());
  out->set_operator_note(m.operator_note);
  out->set_possibly_delivered(m.possibly_delivered);
}

AdminService::AdminService(FailedMessageStore& store, std::string admin_token,
                           jwt::Verifier* verifier, std::string admin_scope)
    : store_(store),
      admin_token_(std::move(admin_token)),
      verifier_(verifier),
      admin_scope_(std::move(admin_scope)) {}

grpc::Status AdminService::Authenticate(const grpc::ServerContext& context) const {
  absl::string_view header = AuthorizationMetadata(context);
  // A JWT has exactly two dots; the static token (random hex or base64) has none.
  bool looks_like_jwt = std::count(header.begin(), header.end(), '.') == 2;
  if (verifier_ != nullptr && (looks_like_jwt || admin_token_.empty())) {
    absl::StatusOr<jwt::Claims> claims = verifier_->VerifyAuthorization(header, absl::Now());
    if (!claims.ok()) return ToGrpcStatus(claims.status());
    if (!claims->HasScope(admin_scope_)) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          absl::StrCat("token of '", claims->subject, "' lacks the scope ",
                                       admin_scope_));
    }
    return grpc::Status::OK;
  }
  return ToGrpcStatus(VerifySharedBearer(context, admin_token_, "ADMIN_TOKEN"));
}

grpc::Status AdminService::List(grpc::ServerContext* context,
                                const ops::v1::ListFailedMessagesRequest* request,
                                ops::v1::ListFailedMessagesResponse* response) {
  if (grpc::Status auth = Authenticate(*context); !auth.ok()) return auth;
  if (request->page_size() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "page_size must not be negative");
  }
  if (!ops::v1::FailedMessageStatus_IsValid(request->status())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "unknown status");
  }
  int page_size = request->page_size() == 0 ? kDefaultPageSize
                                            : std::min(request->page_size(), kMaxPageSize);
  absl::StatusOr<FailedMessageStore::Page> page =
      store_.List(StatusName(request->status()), page_size, request->page_token());
  if (!page.ok()) return ToGrpcStatus(page.status());
  for (const FailedMessage& m : page->messages) ToProto(m, response->add_messages());
  response->set_next_page_token(page->next_page_token);
  return grpc::Status::OK;
}

grpc::Status AdminService::Get(grpc::ServerContext* context,
                               const ops::v1::GetFailedMessageRequest* request,
                               ops::v1::FailedMessage* response) {
  if (grpc::Status auth = Authenticate(*context); !auth.ok()) return auth;
  absl::StatusOr<FailedMessage> m = store_.Get(request->id());
  if (!m.ok()) return ToGrpcStatus(m.status());
  ToProto(*m, response);
  return grpc::Status::OK;
}

grpc::Status AdminService::Retry(grpc::ServerContext* context,
                                 const ops::v1::RetryFailedMessageRequest* request,
                                 ops::v1::FailedMessage* response) {
  if (grpc::Status auth = Authenticate(*context); !auth.ok()) return auth;
  absl::StatusOr<FailedMessage> m = store_.OperatorRetry(request->id(), request->reason());
  if (!m.ok()) return ToGrpcStatus(m.status());
  log::Info("operator re-armed a parked message",
            {{"id", m->id}, {"event_id", m->event_id}, {"reason", request->reason()}});
  ToProto(*m, response);
  return grpc::Status::OK;
}

grpc::Status AdminService::Discard(grpc::ServerContext* context,
                                   const ops::v1::DiscardFailedMessageRequest* request,
                                   ops::v1::FailedMessage* response) {
  if (grpc::Status auth = Authenticate(*context); !auth.ok()) return auth;
  absl::StatusOr<FailedMessage> m = store_.Discard(request->id(), request->reason());
  if (!m.ok()) return ToGrpcStatus(m.status());
  log::Info("operator discarded a message",
            {{"id", m->id}, {"event_id", m->event_id}, {"reason", request->reason()}});
  ToProto(*m, response);
  return grpc::Status::OK;
}

}  // namespace concert::retry
