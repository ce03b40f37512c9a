#include "payment-server/options.h"

#include "absl/strings/str_cat.h"

namespace concert::payment {
namespace {

ServerOptions ReadServerOptions(Settings& s) {
  ServerOptions o;
  o.database_url = s.String("DATABASE_URL", "",
                            "Postgres URL (required by serve, migrate and seed-demo)");
  o.grpc_address = s.ListenAddress("GRPC_ADDRESS", o.grpc_address, "gRPC listen address");
  o.tls = ReadGrpcTls(s);
  o.metrics_address =
      s.ListenAddress("METRICS_ADDRESS", o.metrics_address, "Prometheus /metrics listen address");
  o.auth = jwt::ReadVerifierOptions(s);
  o.reservation_hold = s.Duration("RESERVATION_HOLD", o.reservation_hold, absl::Seconds(10),
                                  absl::Hours(24), "how long ReserveSeat holds a seat for payment");
  o.db_pool_size = static_cast<int>(
      s.Int("DB_POOL_SIZE", o.db_pool_size, 1, 1000, "Postgres connections at most"));
  o.db_acquire_timeout =
      s.Duration("DB_ACQUIRE_TIMEOUT", o.db_acquire_timeout, absl::Milliseconds(10),
                 absl::Minutes(1),
                 "how long a call (but PayConcert, ReserveSeat) waits for a Postgres connection");
  o.db_max_attempts = static_cast<int>(
      s.Int("DB_MAX_ATTEMPTS", o.db_max_attempts, 1, 20,
            "tries of a transaction on serialization failure, deadlock or broken connection"));
  o.grpc_max_threads = static_cast<int>(
      s.Int("GRPC_MAX_THREADS", o.grpc_max_threads, 2, 10000,
            "threads of the synchronous gRPC server (calls but PayConcert, ReserveSeat)"));
  o.admission_queue_size = static_cast<int>(
      s.Int("ADMISSION_QUEUE_SIZE", o.admission_queue_size, 1, 1000000,
            "PayConcert and ReserveSeat calls waiting for the database at most; more are refused"));
  o.admission_max_wait = s.Duration(
      "ADMISSION_MAX_WAIT", o.admission_max_wait, absl::Milliseconds(10), absl::Minutes(5),
      "how long a call without a deadline waits in the admission queue");
  o.admission_retry_pushback = s.Duration(
      "ADMISSION_RETRY_PUSHBACK", o.admission_retry_pushback, absl::Milliseconds(10),
      absl::Minutes(1),
      "longest retry pushback of a refusal; it is the full queue's expected drain time");
  o.health_check_interval = s.Duration(
      "HEALTH_CHECK_INTERVAL", o.health_check_interval, absl::Milliseconds(100), absl::Minutes(5),
      "how often the database is probed for grpc.health.v1 while healthy");
  o.telegram_bot_username =
      s.String("TELEGRAM_BOT_USERNAME", "",
               "the bot's username for LinkTelegram's t.me links; empty: LinkTelegram is refused");
  o.telegram_link_ttl =
      s.Duration("TELEGRAM_LINK_TTL", o.telegram_link_ttl, absl::Minutes(1), absl::Hours(24),
                 "how long a LinkTelegram code can be used");
  o.internal_token = s.Secret(
      "INTERNAL_TOKEN", kMinSharedSecretBytes,
      "shared secret of the notifier's TelegramLinkService calls; empty: that service is off");
  o.internal_grpc_address = s.ListenAddress(
      "INTERNAL_GRPC_ADDRESS", o.internal_grpc_address,
      "listen address of TelegramLinkService (with INTERNAL_TOKEN), for the notifier only");
  o.shutdown_grace =
      s.Duration("SHUTDOWN_GRACE", o.shutdown_grace, absl::ZeroDuration(), absl::Minutes(5),
                 "how long in-flight calls may take to finish on SIGTERM");
  return o;
}

}  // namespace

absl::StatusOr<Command> ParseCommand(const std::vector<std::string>& positional) {
  if (positional.empty()) return Command::kServe;
  if (positional.size() == 1) {
    if (positional[0] == "serve") return Command::kServe;
    if (positional[0] == "migrate") return Command::kMigrate;
    if (positional[0] == "seed-demo") return Command::kSeedDemo;
    if (positional[0] == "mint-token") return Command::kMintToken;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown command '", positional.size() > 1 ? positional[1] : positional[0],
                   "' (commands: serve, migrate, seed-demo, mint-token; see --help)"));
}

Options ReadOptions(Settings& s, Command command) {
  Options o;
  o.command = command;
  o.server = ReadServerOptions(s);
  std::string log_level = s.String("LOG_LEVEL", "info", "debug, info, warn or error");
  if (!log::ParseLevel(log_level, &o.log_level)) {
    s.Fail("LOG_LEVEL", "expected debug, info, warn or error");
  }
  o.mint_token.user_id =
      s.Int("USER_ID", 0, 0, INT64_MAX, "mint-token: the user the token identifies (--user-id=N)");
  o.mint_token.ttl = s.Duration("TTL", o.mint_token.ttl, absl::Minutes(1), absl::Hours(24 * 365),
                                "mint-token: how long the token is valid");
  o.mint_token.scope = s.String(
      "SCOPE", "", "mint-token: the token's scope (concert.admin for the retry-worker's admin API)");
  Validate(o, s);
  return o;
}

void Validate(const Options& o, Settings& s) {
  if (o.command != Command::kMintToken && o.server.database_url.empty()) {
    s.Fail("DATABASE_URL", "missing; it is required");
  }
  if (o.command == Command::kServe && !o.server.auth.any_key()) {
    s.Fail("AUTH_TOKEN_SECRET",
           "missing; serve needs AUTH_TOKEN_SECRET, AUTH_JWKS_FILE or AUTH_JWKS_URL");
  }
  if (o.command == Command::kMintToken) {
    if (o.server.auth.hs256_secret.empty()) {
      s.Fail("AUTH_TOKEN_SECRET", "missing; mint-token signs with it");
    }
    if (o.mint_token.user_id <= 0) s.Fail("USER_ID", "mint-token needs --user-id=N with N > 0");
  }
}

}  // namespace concert::payment
