// The `payment` schema: users, concerts, seats, reservations, payments, the transactional
// outbox and the users' Telegram links. payment-server applies it at start (and with its
// `migrate` subcommand); the relay's tests apply it to get a real outbox table.
#ifndef CONCERT_PAYMENT_SERVER_SCHEMA_H_
#define CONCERT_PAYMENT_SERVER_SCHEMA_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/postgres.h"

namespace concert::payment {

inline constexpr char kSchema[] = "payment";

const std::vector<Migration>& Migrations();

// Migrate(url, "payment", Migrations()).
absl::Status MigrateSchema(const std::string& database_url);

}  // namespace concert::payment

#endif  // CONCERT_PAYMENT_SERVER_SCHEMA_H_
