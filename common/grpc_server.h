// Starting a gRPC server the way every service here does: the given services, server reflection
// (so grpcurl needs no .proto files) and the standard grpc.health.v1.Health service, which
// Kubernetes probes natively. Optionally over TLS (GrpcTls); Kubernetes' gRPC probes speak
// plaintext only, so a TLS server's health can also be served alone on a plaintext port.
//
//   ASSIGN_OR_RETURN(auto server, StartGrpcServer("127.0.0.1:50051", {&payments}));
//   SetServing(*server, true);
//   ... StopRequested().WaitForNotification();
//   SetServing(*server, false);                         // probes see NOT_SERVING
//   server->Shutdown(Deadline(absl::Seconds(10)));     // finishes in-flight calls
//
// A service's API with TLS (settings GRPC_TLS_*) and health in plaintext for the probes, both
// driven as one (GrpcEndpoint):
//
//   GrpcTls tls = ReadGrpcTls(settings);               // before settings.ExitIfInvalid()
//   ASSIGN_OR_RETURN(auto endpoint, GrpcEndpoint::Start(address, {&payments}, tls));
//   endpoint->SetServing(true);
//   ... endpoint->Shutdown(absl::Seconds(10));
#ifndef CONCERT_COMMON_GRPC_SERVER_H_
#define CONCERT_COMMON_GRPC_SERVER_H_

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/config.h"

namespace concert {

// TLS of a gRPC server, as PEM text. No certificate: plaintext.
struct GrpcTls {
  std::string cert_chain;   // GRPC_TLS_CERT_FILE's content
  std::string private_key;  // GRPC_TLS_KEY_FILE's content
  // GRPC_TLS_CLIENT_CA_FILE's content. Set: mTLS, a client must present a certificate it signed.
  std::string client_ca;
  // GRPC_HEALTH_ADDRESS: a plaintext server with grpc.health.v1 alone (for Kubernetes' probes,
  // which cannot speak TLS); empty: none. GrpcEndpoint starts it beside the main server.
  std::string health_address;

  bool enabled() const { return !cert_chain.empty(); }
};

// The content of the PEM file that setting `name` names ("" when unset); a missing, unreadable
// or empty file is reported through `settings` (exit 2 at start).
std::string ReadPemFileSetting(Settings& settings, absl::string_view name,
                               absl::string_view help);

// Reads the four settings above and the files they name. An unreadable or empty file, a
// certificate without its key (or the other way round), or a client CA without TLS is
// reported through `settings` (exit 2 at start).
GrpcTls ReadGrpcTls(Settings& settings);

// `port` receives the bound port (useful with "127.0.0.1:0"); may be null. `configure`, when
// set, adjusts the builder before the server starts (resource quota, thread limits). Serves TLS
// (or mTLS) when `tls` is enabled(); its health_address is the caller's to start.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& address, const std::vector<grpc::Service*>& services, int* port = nullptr,
    const std::function<void(grpc::ServerBuilder&)>& configure = nullptr,
    const GrpcTls& tls = {});

// Health has two names. "" (what a plain `grpc.health.v1.Health/Check` asks) is readiness:
// SERVING only while the service can do its work (its dependencies answer), set by SetServing.
// "liveness" is SERVING from start to stop whatever the dependencies do, so that a Kubernetes
// liveness probe restarts a hung process but never one that is waiting out a Kafka outage.
inline constexpr char kLivenessService[] = "liveness";

// Sets readiness ("" service) to SERVING or NOT_SERVING.
void SetServing(grpc::Server& server, bool serving);

// A service's gRPC server (TLS per GrpcTls) and, when tls.health_address is set, the plaintext
// server with its health alone: one readiness for both, one shutdown. Thread-safe; once
// Shutdown() has begun, SetServing(true) from a late health check no longer takes effect.
class GrpcEndpoint {
 public:
  // Starts both (NOT_SERVING until SetServing(true)) and logs where they listen.
  static absl::StatusOr<std::unique_ptr<GrpcEndpoint>> Start(
      const std::string& address, const std::vector<grpc::Service*>& services,
      const GrpcTls& tls, const std::function<void(grpc::ServerBuilder&)>& configure = nullptr);
  ~GrpcEndpoint();  // Shutdown(0) unless done

  void SetServing(bool serving);
  // NOT_SERVING, then in-flight calls get up to `grace`; then the health server stops. Once.
  void Shutdown(absl::Duration grace);

  grpc::Server& server() { return *server_; }
  int port() const { return port_; }
  int health_port() const { return health_port_; }  // 0 without a health address

 private:
  GrpcEndpoint() = default;

  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_;  // may be null
  int port_ = 0;
  int health_port_ = 0;
  std::mutex mu_;
  bool shut_down_ = false;
};

std::chrono::system_clock::time_point Deadline(absl::Duration from_now);

// The call's `authorization` metadata ("" when absent).
absl::string_view AuthorizationMetadata(const grpc::ServerContextBase& context);

// Shared bearer secrets (settings read with Settings::Secret) are at least this long: a short
// one could be guessed.
inline constexpr size_t kMinSharedSecretBytes = 32;

// OK when the call carries `authorization: Bearer <expected>` (compared in constant time, so a
// shared secret cannot be guessed byte by byte); otherwise UNAUTHENTICATED naming `setting`,
// the setting that holds the secret. For service-to-service and operator tokens.
absl::Status VerifySharedBearer(const grpc::ServerContext& context, absl::string_view expected,
                                absl::string_view setting);

}  // namespace concert

#endif  // CONCERT_COMMON_GRPC_SERVER_H_
