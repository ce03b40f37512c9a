#include "common/grpc_server.h"

#include <algorithm>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.pb.h"

namespace concert {

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& address, const std::vector<grpc::Service*>& services, int* port,
    const std::function<void(grpc::ServerBuilder&)>& configure) {
  // Debian builds Abseil without NDEBUG, which leaves absl::Mutex's deadlock detection on: each
  // lock (gRPC takes dozens per call) updates a global lock graph, a few percent of a call's
  // CPU. Release builds of Abseil have it off; so do we.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Referencing the descriptor links health.pb.o, which registers grpc.health.v1 with the
  // descriptor pool that reflection serves from.
  grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &bound);
  for (grpc::Service* service : services) builder.RegisterService(service);
  if (configure) configure(builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for gRPC on ", address));
  }
  if (port != nullptr) *port = bound;
  if (auto* health = server->GetHealthCheckService()) {
    health->SetServingStatus(kLivenessService, true);
  }
  SetServing(*server, false);
  return server;
}

void SetServing(grpc::Server& server, bool serving) {
  if (auto* health = server.GetHealthCheckService()) health->SetServingStatus("", serving);
}

std::chrono::system_clock::time_point Deadline(absl::Duration from_now) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(from_now);
}

absl::Status VerifySharedBearer(const grpc::ServerContext& context, absl::string_view expected,
                                absl::string_view setting) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError(
        absl::StrCat("missing metadata authorization: Bearer <", setting, ">"));
  }
  absl::string_view value(it->second.data(), it->second.size());
  bool bearer = absl::ConsumePrefix(&value, "Bearer ");
  // Same time whatever the first differing byte.
  size_t n = std::max(value.size(), expected.size());
  unsigned char diff = bearer && value.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = i < value.size() ? value[i] : 0;
    unsigned char y = i < expected.size() ? expected[i] : 0;
    diff |= x ^ y;
  }
  if (diff != 0) return absl::UnauthenticatedError(absl::StrCat("invalid ", setting));
  return absl::OkStatus();
}

}  // namespace concert
