// payment-server: the gRPC API for reservations and payments (see server.h).
//
//   payment-server                      serve (GRPC_ADDRESS, METRICS_ADDRESS)
//   payment-server migrate              apply the payment schema's migrations and exit
//   payment-server seed-demo            migrate, add the demo concert, seats and users, print ids
//   payment-server mint-token --user-id=N [--ttl=24h] [--scope=S]   print an HS256 JWT for user N
//
// Every setting is an environment variable or the flag beside it (options.h); --help lists them.
#include <iostream>

#include "absl/time/clock.h"
#include "common/config.h"
#include "common/jwt.h"
#include "common/log.h"
#include "common/shutdown.h"
#include "payment-server/demo.h"
#include "payment-server/options.h"
#include "payment-server/schema.h"
#include "payment-server/server.h"

namespace {

constexpr char kProgram[] = "payment-server";

// The command's outcome as the process's exit code, its error logged.
int Finish(const absl::Status& status, const char* failed) {
  if (status.ok()) return 0;
  concert::log::Error(failed, {{"error", std::string(status.message())}});
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using concert::payment::Command;
  concert::InstallStopHandler();
  concert::Settings settings(kProgram, argc, argv);
  absl::StatusOr<Command> command = concert::payment::ParseCommand(settings.positional());
  concert::payment::Options options =
      concert::payment::ReadOptions(settings, command.value_or(Command::kServe));
  if (!command.ok() && !settings.help_requested()) {
    std::cerr << kProgram << ": " << command.status().message() << "\n";
    return 2;
  }
  settings.ExitIfInvalid();
  concert::log::Init(kProgram, options.log_level);
  const concert::payment::ServerOptions& server = options.server;

  switch (*command) {
    case Command::kMintToken: {
      absl::Time now = absl::Now();
      std::cout << concert::jwt::MintHs256(server.auth.hs256_secret,
                                           {.subject = std::to_string(options.mint_token.user_id),
                                            .expires_at = now + options.mint_token.ttl,
                                            .issuer = server.auth.issuer,
                                            .audience = server.auth.audience,
                                            .scope = options.mint_token.scope},
                                           now)
                << "\n";
      return 0;
    }
    case Command::kMigrate: {
      absl::Status migrated = concert::payment::MigrateSchema(server.database_url);
      if (migrated.ok()) {
        concert::log::Info("migrations applied", {{"schema", concert::payment::kSchema}});
      }
      return Finish(migrated, "migration failed");
    }
    case Command::kSeedDemo: {
      absl::StatusOr<concert::payment::DemoData> demo =
          concert::payment::SeedDemo(server.database_url);
      if (demo.ok()) std::cout << concert::payment::DescribeDemo(*demo);
      return Finish(demo.status(), "seeding demo data failed");
    }
    case Command::kServe:
      return Finish(concert::payment::Serve(server, concert::StopRequested()),
                    "payment-server failed");
  }
  return 2;
}
