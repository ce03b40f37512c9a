#include "common/grpc_server.h"

#include <algorithm>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "common/status.h"
#include "grpc/health/v1/health.pb.h"

namespace concert {

std::string ReadPemFileSetting(Settings& settings, absl::string_view name,
                               absl::string_view help) {
  std::string path = settings.String(name, "", help);
  if (path.empty()) return "";
  std::optional<std::string> content = ReadSettingFile(path);
  if (!content || content->empty()) {
    settings.Fail(name, absl::StrCat("cannot read '", path, "' (missing, unreadable or empty)"));
    return "";
  }
  return *content;
}

GrpcTls ReadGrpcTls(Settings& s) {
  GrpcTls tls;
  tls.cert_chain = ReadPemFileSetting(
      s, "GRPC_TLS_CERT_FILE", "PEM certificate chain; set with GRPC_TLS_KEY_FILE: gRPC over TLS");
  tls.private_key =
      ReadPemFileSetting(s, "GRPC_TLS_KEY_FILE", "PEM private key of GRPC_TLS_CERT_FILE");
  tls.client_ca =
      ReadPemFileSetting(s, "GRPC_TLS_CLIENT_CA_FILE",
                         "PEM CA bundle; set: mTLS, clients need a certificate it signed");
  tls.health_address = s.String(
      "GRPC_HEALTH_ADDRESS", "",
      "plaintext grpc.health.v1 alone (Kubernetes probes when TLS is on); empty: none");
  if (tls.cert_chain.empty() != tls.private_key.empty()) {
    s.Fail(tls.cert_chain.empty() ? "GRPC_TLS_CERT_FILE" : "GRPC_TLS_KEY_FILE",
           "GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE go together");
  }
  if (!tls.client_ca.empty() && tls.cert_chain.empty()) {
    s.Fail("GRPC_TLS_CLIENT_CA_FILE", "needs GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE");
  }
  return tls;
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& address, const std::vector<grpc::Service*>& services, int* port,
    const std::function<void(grpc::ServerBuilder&)>& configure, const GrpcTls& tls) {
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
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (tls.enabled()) {
    grpc::SslServerCredentialsOptions ssl(
        tls.client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                              : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = tls.client_ca;
    ssl.pem_key_cert_pairs.push_back({tls.private_key, tls.cert_chain});
    credentials = grpc::SslServerCredentials(ssl);
  }
  builder.AddListeningPort(address, credentials, &bound);
  for (grpc::Service* service : services) builder.RegisterService(service);
  if (configure) configure(builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen for gRPC on ", address,
        tls.enabled() ? " (or the TLS certificate and key are not a valid pair)" : ""));
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

absl::StatusOr<std::unique_ptr<GrpcEndpoint>> GrpcEndpoint::Start(
    const std::string& address, const std::vector<grpc::Service*>& services, const GrpcTls& tls,
    const std::function<void(grpc::ServerBuilder&)>& configure) {
  std::unique_ptr<GrpcEndpoint> endpoint(new GrpcEndpoint());
  ASSIGN_OR_RETURN(endpoint->server_,
                   StartGrpcServer(address, services, &endpoint->port_, configure, tls));
  log::Info("grpc listening", {{"address", address},
                               {"port", endpoint->port_},
                               {"tls", tls.enabled()},
                               {"client_certificates", !tls.client_ca.empty()}});
  if (!tls.health_address.empty()) {
    ASSIGN_OR_RETURN(endpoint->health_,
                     StartGrpcServer(tls.health_address, {}, &endpoint->health_port_));
    log::Info("grpc health listening (plaintext, grpc.health.v1 only)",
              {{"address", tls.health_address}, {"port", endpoint->health_port_}});
  }
  return endpoint;
}

GrpcEndpoint::~GrpcEndpoint() { Shutdown(absl::ZeroDuration()); }

void GrpcEndpoint::SetServing(bool serving) {
  std::lock_guard lock(mu_);
  if (shut_down_) return;
  concert::SetServing(*server_, serving);
  if (health_) concert::SetServing(*health_, serving);
}

void GrpcEndpoint::Shutdown(absl::Duration grace) {
  {
    std::lock_guard lock(mu_);
    if (shut_down_) return;
    concert::SetServing(*server_, false);
    if (health_) concert::SetServing(*health_, false);
    shut_down_ = true;
  }
  server_->Shutdown(Deadline(grace));
  if (health_) health_->Shutdown(Deadline(absl::Seconds(1)));
}

std::chrono::system_clock::time_point Deadline(absl::Duration from_now) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(from_now);
}

absl::string_view AuthorizationMetadata(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return {};
  return absl::string_view(it->second.data(), it->second.size());
}

absl::Status VerifySharedBearer(const grpc::ServerContext& context, absl::string_view expected,
                                absl::string_view setting) {
  absl::string_view value = AuthorizationMetadata(context);
  if (value.empty()) {
    return absl::UnauthenticatedError(
        absl::StrCat("missing metadata authorization: Bearer <", setting, ">"));
  }
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
