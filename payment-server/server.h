// payment-server as a whole (its settings are in options.h): the gRPC services over Payments
// (PayConcert and ReserveSeat on the callback API, waiting in an AdmissionQueue whose workers do
// the blocking database work; the other calls on the synchronous API), callers known by their
// tokens (Callers), the start-up that keeps retrying migrations while Postgres is down, health
// that follows the database, request metrics, and the graceful stop.
//
//   PaymentServer server(options);
//   RETURN_IF_ERROR(server.Start());        // listens at once; NOT_SERVING until migrated
//   ... stop.WaitForNotification();
//   server.Stop();                          // NOT_SERVING, in-flight calls finish, then down
//
// Start and Stop are called from one thread; everything else is thread-safe.
#ifndef CONCERT_PAYMENT_SERVER_SERVER_H_
#define CONCERT_PAYMENT_SERVER_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "common/grpc_server.h"
#include "common/jwt.h"
#include "common/metrics.h"
#include "common/postgres.h"
#include "concert/internal/v1/telegram_link.grpc.pb.h"
#include "concert/v1/account.grpc.pb.h"
#include "concert/v1/concert.grpc.pb.h"
#include "concert/v1/payment.grpc.pb.h"
#include "concert/v1/reservation.grpc.pb.h"
#include "payment-server/admission.h"
#include "payment-server/callers.h"
#include "payment-server/options.h"
#include "payment-server/payments.h"

namespace concert::payment {

class PaymentServer {
 public:
  explicit PaymentServer(ServerOptions options);
  ~PaymentServer();  // Stop()s
  PaymentServer(const PaymentServer&) = delete;
  PaymentServer& operator=(const PaymentServer&) = delete;

  // Listens and returns; migrations and health run in the background. Fails only when the
  // address cannot be bound.
  absl::Status Start();
  // NOT_SERVING, then waits up to shutdown_grace for in-flight calls. Idempotent.
  void Stop();

  int port() const { return endpoint_ ? endpoint_->port() : 0; }
  int internal_port() const { return internal_endpoint_ ? internal_endpoint_->port() : 0; }
  grpc::Server& grpc_server() { return endpoint_->server(); }
  // TelegramLinkService's server; null without INTERNAL_TOKEN.
  grpc::Server* internal_grpc_server() {
    return internal_endpoint_ ? &internal_endpoint_->server() : nullptr;
  }
  // True once the schema is migrated (requests before that get UNAVAILABLE).
  bool ready() const { return ready_.load(); }
  metrics::Registry& registry() { return *registry_; }
  PgPool& pool() { return *pool_; }

 private:
  class PaymentApi;
  class ReservationApi;
  class ConcertApi;
  class AccountApi;
  class TelegramLinkApi;
  struct Methods;  // each method's request metrics
  void WatchDatabase();

  ServerOptions options_;
  std::unique_ptr<metrics::Registry> own_registry_;
  metrics::Registry* registry_;
  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<Payments> payments_;
  std::unique_ptr<jwt::Verifier> verifier_;
  std::unique_ptr<Callers> callers_;
  std::unique_ptr<Methods> methods_;
  std::unique_ptr<PaymentApi> payment_api_;
  std::unique_ptr<ReservationApi> reservation_api_;
  std::unique_ptr<ConcertApi> concert_api_;
  std::unique_ptr<AccountApi> account_api_;
  std::unique_ptr<TelegramLinkApi> telegram_link_api_;  // null without INTERNAL_TOKEN
  // After the services, before the endpoints: destroyed once no call can arrive, and while
  // the services its queued work calls still exist.
  std::unique_ptr<AdmissionQueue> admission_;
  std::unique_ptr<GrpcEndpoint> endpoint_;
  std::unique_ptr<GrpcEndpoint> internal_endpoint_;  // null without INTERNAL_TOKEN
  std::atomic<bool> ready_{false};
  absl::Notification stop_;
  std::thread watcher_;
  bool stopped_ = false;
};

// `payment-server` with no subcommand: PaymentServer plus the /metrics endpoint until `stop`.
absl::Status Serve(const ServerOptions& options, const absl::Notification& stop);

}  // namespace concert::payment

#endif  // CONCERT_PAYMENT_SERVER_SERVER_H_
