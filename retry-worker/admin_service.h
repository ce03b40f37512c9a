// concert.ops.v1.FailedMessageService: the operators' handle on failed_messages (List, Get,
// Retry, Discard). Every call needs `authorization: Bearer <token>` metadata with a JWT that
// carries the operators' scope (ADMIN_SCOPE; else PERMISSION_DENIED) or the static ADMIN_TOKEN,
// else UNAUTHENTICATED; health and reflection, served beside it, stay open.
//
// Synchronous gRPC API on purpose: each call blocks on Postgres, which must never happen on a
// callback-reactor thread. Thread-safe.
#ifndef CONCERT_RETRY_WORKER_ADMIN_SERVICE_H_
#define CONCERT_RETRY_WORKER_ADMIN_SERVICE_H_

#include <string>

#include "common/jwt.h"
#include "concert/ops/v1/failed_messages.grpc.pb.h"
#include "retry-worker/store.h"

namespace concert::retry {

inline constexpr int kDefaultPageSize = 50;
inline constexpr int kMaxPageSize = 500;

class AdminService final : public ops::v1::FailedMessageService::Service {
 public:
  // `verifier` (may be null: static token only) must outlive the service. An empty admin_token
  // accepts JWTs only.
  AdminService(FailedMessageStore& store, std::string admin_token, jwt::Verifier* verifier,
               std::string admin_scope);

  grpc::Status List(grpc::ServerContext* context, const ops::v1::ListFailedMessagesRequest* request,
                    ops::v1::ListFailedMessagesResponse* response) override;
  grpc::Status Get(grpc::ServerContext* context, const ops::v1::GetFailedMessageRequest* request,
                   ops::v1::FailedMessage* response) override;
  grpc::Status Retry(grpc::ServerContext* context,
                     const ops::v1::RetryFailedMessageRequest* request,
                     ops::v1::FailedMessage* response) override;
  grpc::Status Discard(grpc::ServerContext* context,
                       const ops::v1::DiscardFailedMessageRequest* request,
                       ops::v1::FailedMessage* response) override;

 private:
  grpc::Status Authenticate(const grpc::ServerContext& context) const;

  FailedMessageStore& store_;
  std::string admin_token_;
  jwt::Verifier* verifier_;
  std::string admin_scope_;
};

// The API's view of a row.
void ToProto(const FailedMessage& message, ops::v1::FailedMessage* out);
// "PENDING" etc.; "" for UNSPECIFIED.
std::string StatusName(ops::v1::FailedMessageStatus status);

}  // namespace concert::retry

#endif  // CONCERT_RETRY_WORKER_ADMIN_SERVICE_H_
