// payment-server's settings, one field per setting, read from the environment or flags through
// common Settings (so `payment-server --help` lists them all with their defaults), and checked
// for the subcommand they run.
//
//   Settings settings("payment-server", argc, argv);
//   payment::Options options = payment::ReadOptions(settings);  // reads, then Validate()s
//   settings.ExitIfInvalid();       // --help, or one line naming the first bad setting
//
// Plain data; ReadOptions and Validate are for main() (Settings is not thread-safe).
#ifndef CONCERT_PAYMENT_SERVER_OPTIONS_H_
#define CONCERT_PAYMENT_SERVER_OPTIONS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "common/grpc_server.h"
#include "common/jwt.h"
#include "common/log.h"
#include "common/metrics.h"

namespace concert::payment {

// What PaymentServer needs (tests fill it directly).
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
  // ADMISSION_RETRY_PUSHBACK: the longest grpc-retry-pushback-ms a refusal for a full queue
  // asks for. The pushback itself is how long the full queue is expected to take to drain (its
  // size times the recent time per call, over the workers), at most this, then drawn at random
  // between half and all of that so that retries do not return together.
  absl::Duration admission_retry_pushback = absl::Seconds(1);
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

// What `payment-server [command]` runs.
enum class Command { kServe, kMigrate, kSeedDemo, kMintToken };

// mint-token's own settings.
struct MintTokenOptions {
  // USER_ID: the user the token names (sub); required by mint-token.
  int64_t user_id = 0;
  // TTL: how long the token is valid.
  absl::Duration ttl = absl::Hours(24);
  // SCOPE: the token's scope claim; empty: none.
  std::string scope;
};

struct Options {
  Command command = Command::kServe;
  ServerOptions server;
  MintTokenOptions mint_token;
  // LOG_LEVEL.
  log::Level log_level = log::Level::kInfo;
};

// The subcommand named by the positional arguments (none: serve). INVALID_ARGUMENT, with a
// message naming the known ones, for anything else.
absl::StatusOr<Command> ParseCommand(const std::vector<std::string>& positional);

// Reads every setting unconditionally (so --help lists them all), then Validate()s; problems are
// recorded in `settings` (settings.ExitIfInvalid() reports the first). `command` decides which
// settings are required.
Options ReadOptions(Settings& settings, Command command);

// The checks across settings and the subcommand: serve, migrate and seed-demo need DATABASE_URL;
// serve needs a token key (AUTH_TOKEN_SECRET, AUTH_JWKS_FILE or AUTH_JWKS_URL); mint-token needs
// AUTH_TOKEN_SECRET and USER_ID > 0. Problems are recorded with settings.Fail().
void Validate(const Options& options, Settings& settings);

}  // namespace concert::payment

#endif  // CONCERT_PAYMENT_SERVER_OPTIONS_H_
