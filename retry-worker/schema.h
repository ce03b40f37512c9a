// The `retry` schema: failed_messages (one row per failed event, whatever the number of times it
// came through the DLQ) and operator_actions (the audit trail of the admin API). The
// retry-worker applies it at start and with its `migrate` subcommand.
#ifndef CONCERT_RETRY_WORKER_SCHEMA_H_
#define CONCERT_RETRY_WORKER_SCHEMA_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/postgres.h"

namespace concert::retry {

inline constexpr char kSchema[] = "retry";

const std::vector<Migration>& Migrations();

// Migrate(url, "retry", Migrations()).
absl::Status MigrateSchema(const std::string& database_url);

}  // namespace concert::retry

#endif  // CONCERT_RETRY_WORKER_SCHEMA_H_
