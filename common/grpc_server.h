// Starting a gRPC server the way every service here does: the given services, server reflection
// (so grpcurl needs no .proto files) and the standard grpc.health.v1.Health service, which
// Kubernetes probes natively.
//
//   ASSIGN_OR_RETURN(auto server, StartGrpcServer("127.0.0.1:50051", {&payments}));
//   SetServing(*server, true);
//   ... StopRequested().WaitForNotification();
//   SetServing(*server, false);                         // probes see NOT_SERVING
//   server->Shutdown(Deadline(absl::Seconds(10)));     // finishes in-flight calls
#ifndef CONCERT_COMMON_GRPC_SERVER_H_
#define CONCERT_COMMON_GRPC_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace concert {

// `port` receives the bound port (useful with "127.0.0.1:0"); may be null. `configure`, when
// set, adjusts the builder before the server starts (resource quota, thread limits).
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& address, const std::vector<grpc::Service*>& services, int* port = nullptr,
    const std::function<void(grpc::ServerBuilder&)>& configure = nullptr);

// Health has two names. "" (what a plain `grpc.health.v1.Health/Check` asks) is readiness:
// SERVING only while the service can do its work (its dependencies answer), set by SetServing.
// "liveness" is SERVING from start to stop whatever the dependencies do, so that a Kubernetes
// liveness probe restarts a hung process but never one that is waiting out a Kafka outage.
inline constexpr char kLivenessService[] = "liveness";

// Sets readiness ("" service) to SERVING or NOT_SERVING.
void SetServing(grpc::Server& server, bool serving);

std::chrono::system_clock::time_point Deadline(absl::Duration from_now);

// OK when the call carries `authorization: Bearer <expected>` (compared in constant time, so a
// shared secret cannot be guessed byte by byte); otherwise UNAUTHENTICATED naming `setting`,
// the setting that holds the secret. For service-to-service and operator tokens.
absl::Status VerifySharedBearer(const grpc::ServerContext& context, absl::string_view expected,
                                absl::string_view setting);

}  // namespace concert

#endif  // CONCERT_COMMON_GRPC_SERVER_H_
