// payment-server: the gRPC API for reservations and payments (see server.h).
//
//   payment-server                      serve (GRPC_ADDRESS, METRICS_ADDRESS)
//   payment-server migrate              apply the payment schema's migrations and exit
//   payment-server seed-demo            migrate, add the demo concert, seats and users, print ids
//   payment-server mint-token --user-id=N [--ttl=24h] [--scope=S]   print an HS256 JWT for user N
//
// Every setting is an environment variable or the flag beside it; --help lists them.
#include <cstdlib>
#include <iostream>

#include "absl/time/clock.h"
#include "common/config.h"
#include "common/jwt.h"
#include "common/log.h"
#include "common/shutdown.h"
#include "payment-server/demo.h"
#include "payment-server/schema.h"
#include "payment-server/server.h"

namespace {

constexpr char kProgram[] = "payment-server";

[[noreturn]] void ExitWithSettingError(absl::string_view setting, absl::string_view problem) {
  std::cerr << kProgram << ": invalid setting " << setting << " (--"
            << concert::FlagNameFor(setting) << "): " << problem << "\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  concert::InstallStopHandler();
  concert::Settings settings(kProgram, argc, argv);
  concert::payment::ServerOptions options = concert::payment::ReadServerOptions(settings);
  std::string log_level_name =
      settings.String("LOG_LEVEL", "info", "debug, info, warn or error");
  int64_t user_id = settings.Int("USER_ID", 0, 0, INT64_MAX,
                                 "mint-token: the user the token identifies (--user-id=N)");
  absl::Duration ttl = settings.Duration("TTL", absl::Hours(24), absl::Minutes(1),
                                         absl::Hours(24 * 365),
                                         "mint-token: how long the token is valid");
  std::string scope = settings.String(
      "SCOPE", "", "mint-token: the token's scope (concert.admin for the retry-worker's admin API)");
  settings.ExitIfInvalid();

  concert::log::Level level;
  if (!concert::log::ParseLevel(log_level_name, &level)) {
    ExitWithSettingError("LOG_LEVEL", "expected debug, info, warn or error");
  }
  const std::vector<std::string>& args = settings.positional();
  std::string command = args.empty() ? "serve" : args[0];
  if (args.size() > 1 || (command != "serve" && command != "migrate" && command != "seed-demo" &&
                          command != "mint-token")) {
    std::cerr << kProgram << ": unknown command '" << (args.size() > 1 ? args[1] : command)
              << "' (commands: serve, migrate, seed-demo, mint-token; see --help)\n";
    return 2;
  }
  if (command != "mint-token" && options.database_url.empty()) {
    ExitWithSettingError("DATABASE_URL", "missing; it is required");
  }
  if (command == "serve" && !options.auth.any_key()) {
    ExitWithSettingError("AUTH_TOKEN_SECRET",
                         "missing; serve needs AUTH_TOKEN_SECRET, AUTH_JWKS_FILE or AUTH_JWKS_URL");
  }
  if (command == "mint-token" && options.auth.hs256_secret.empty()) {
    ExitWithSettingError("AUTH_TOKEN_SECRET", "missing; mint-token signs with it");
  }
  concert::log::Init(kProgram, level);

  if (command == "mint-token") {
    if (user_id <= 0) ExitWithSettingError("USER_ID", "mint-token needs --user-id=N with N > 0");
    absl::Time now = absl::Now();
    std::cout << concert::jwt::MintHs256(options.auth.hs256_secret,
                                         {.subject = std::to_string(user_id),
                                          .expires_at = now + ttl,
                                          .issuer = options.auth.issuer,
                                          .audience = options.auth.audience,
                                          .scope = scope},
                                         now)
              << "\n";
    return 0;
  }
  if (command == "migrate") {
    if (absl::Status s = concert::payment::MigrateSchema(options.database_url); !s.ok()) {
      concert::log::Error("migration failed", {{"error", std::string(s.message())}});
      return 1;
    }
    concert::log::Info("migrations applied", {{"schema", concert::payment::kSchema}});
    return 0;
  }
  if (command == "seed-demo") {
    absl::StatusOr<concert::payment::DemoData> demo =
        concert::payment::SeedDemo(options.database_url);
    if (!demo.ok()) {
      concert::log::Error("seeding demo data failed",
                          {{"error", std::string(demo.status().message())}});
      return 1;
    }
    std::cout << concert::payment::DescribeDemo(*demo);
    return 0;
  }
  absl::Status status = concert::payment::Serve(options, concert::StopRequested());
  if (!status.ok()) {
    concert::log::Error("payment-server failed", {{"error", std::string(status.message())}});
    return 1;
  }
  return 0;
}
