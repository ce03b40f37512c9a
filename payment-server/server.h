// payment-server as a whole: its options (read from Settings), the gRPC services over Payments
// (PayConcert and ReserveSeat on the callback API, waiting in an AdmissionQueue whose workers do
// the blocking database work; the other calls on the synchronous API), the
// start-up that keeps retrying migrations while Postgres is down, health that follows the
// database, request metrics, and the graceful stop.
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
#include "payment-server/payments.h"

namespace concert::payment {

struct ServerOptions {
  // DATABASE_URL: required by serve, migrate and seed-demo.
  std::string database_url;
  // GRPC_ADDRESS: port 0 picks a free one (see PaymentServer::port()).
  std::string grpc_address = "127.0.0.1:50051";
  // GRPC_TLS_CERT_FILE, GRPC_TLS_KEY_FILE, GRPC_TLS_CLIENT_CA_FILE, GRPC_HEALTH_ADDRESS: TLS or
  // mTLS on GRPC_ADDRESS, and health alone in plaintext for probes (see common/grpc_server.h).
  GrpcTls tls;
  // METRICS_ADDRESS: Prometheus /metrics (Serve only).
  std::string metrics_address = "127.0.0.1:9101";
  // AUTH_*: how callers' JWT bearer tokens are verified (see common/jwt.h); serve needs a key
  // (AUTH_TOKEN_SECRET, AUTH_JWKS_FILE or AUTH_JWKS_URL), mint-token AUTH_TOKEN_SECRET.
  jwt::VerifierOptions auth;
  // RESERVATION_HOLD.
  absl::Duration reservation_hold = absl::Minutes(5);
  // DB_POOL_SIZE: connections at most; more concurrent calls wait for one.
  int db_pool_size = 8;
  // DB_ACQUIRE_TIMEOUT: how long a call of the synchronous API (neither PayConcert nor
  // ReserveSeat) waits for a free connection (then RESOURCE_EXHAUSTED).
  absl::Duration db_acquire_timeout = absl::Seconds(5);
  // ADMISSION_QUEUE_SIZE: PayConcert and ReserveSeat calls waiting for the database at most (see
  // AdmissionQueue); one more is refused with RESOURCE_EXHAUSTED and grpc-retry-pushback-ms.
  // Memory is the only cost of a waiting call, so size it for an opening's spike.
  int admission_queue_size = 4096;
  // ADMISSION_MAX_WAIT: how long a call without a deadline may wait in the queue (a call with one
  // waits as long as it allows), then DEADLINE_EXCEEDED without touching the database.
  absl::Duration admission_max_wait = absl::Seconds(10);
  // DB_MAX_ATTEMPTS: tries of one transaction on serialization failure, deadlock or a broken
  // connection.
  int db_max_attempts = 3;
  // GRPC_MAX_THREADS: the synchronous server's thread limit (its resource quota), for every call
  // but PayConcert and ReserveSeat. Calls beyond the pool size only wait, so a few times
  // DB_POOL_SIZE is plenty.
  int grpc_max_threads = 32;
  // HEALTH_CHECK_INTERVAL: how often the database is probed while healthy. While it is down
  // (or the schema not yet migrated) the probe backs off from 250 ms up to 10 s.
  absl::Duration health_check_interval = absl::Seconds(5);
  // TELEGRAM_BOT_USERNAME and TELEGRAM_LINK_TTL: see PaymentsOptions.
  std::string telegram_bot_username;
  absl::Duration telegram_link_ttl = absl::Minutes(15);
  // INTERNAL_TOKEN: the bearer secret of concert.internal.v1.TelegramLinkService (the
  // notifier's calls), at least kMinSharedSecretBytes; empty leaves that service out.
  std::string internal_token;
  // INTERNAL_GRPC_ADDRESS: where TelegramLinkService listens (with INTERNAL_TOKEN), apart from
  // the public API, which answers UNIMPLEMENTED for it: only the notifier needs to reach this
  // port, and nobody else gets to guess the token there. Same TLS as GRPC_ADDRESS.
  std::string internal_grpc_address = "127.0.0.1:50055";
  // SHUTDOWN_GRACE: how long in-flight calls may take to finish on SIGTERM.
  absl::Duration shutdown_grace = absl::Seconds(10);
  // Metrics go here; null gives the server a registry of its own (tests run several servers).
  metrics::Registry* registry = nullptr;
  // Test seam, see PaymentsOptions::before_commit_for_test.
  std::function<absl::Status(int64_t payment_id)> before_commit_for_test;
};

// Reads every payment-server setting (so --help lists them all). Requirements that depend on
// the subcommand (DATABASE_URL, a token key) are checked by the caller.
ServerOptions ReadServerOptions(Settings& settings);

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
  void WatchDatabase();

  ServerOptions options_;
  std::unique_ptr<metrics::Registry> own_registry_;
  metrics::Registry* registry_;
  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<Payments> payments_;
  std::unique_ptr<jwt::Verifier> verifier_;
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
