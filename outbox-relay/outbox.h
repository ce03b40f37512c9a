// The relay's SQL beside the stream: its own schema `relay`, which remembers
//   - whether a slot has finished catching up with the rows that were in the outbox before the
//     slot existed (a new slot streams only what commits after it was created), and
//   - which outbox rows were set aside (not relayed) and why,
// the re-queueing of outbox rows (deleted and inserted again with the same ids and columns, so
// that they are streamed again), and the search for rows left behind in the outbox.
//
//   ASSIGN_OR_RETURN(bool pending, CatchUpPending(conn, slot));
//   if (pending) ASSIGN_OR_RETURN(int64_t rows, RequeueRows(conn, {.completes_catch_up_of = slot}));
//   RETURN_IF_ERROR(RecordSetAside(conn, {.outbox_id = 7, .reason_class = "too_large", ...}));
//
// Operators re-drive set-aside rows with `outbox-relay requeue` (RequeueRows with older_than),
// after fixing their cause. Every function runs on the connection it is given and returns what
// went wrong as a Status; none keeps state.
#ifndef CONCERT_OUTBOX_RELAY_OUTBOX_H_
#define CONCERT_OUTBOX_RELAY_OUTBOX_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <pqxx/pqxx>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/postgres.h"

namespace concert::relay {

inline constexpr char kRelaySchema[] = "relay";
// The table the relay streams, deletes relayed rows from and re-queues (payment-server's).
inline constexpr char kOutboxSchema[] = "payment";
inline constexpr char kOutboxTable[] = "outbox_events";

const std::vector<Migration>& Migrations();
// Migrate(url, "relay", Migrations()).
absl::Status MigrateSchema(const std::string& database_url);

// Records, before the slot is created, that its catch-up is still to do. A marker left by an
// earlier slot of the same name is reset.
absl::Status MarkCatchUpPending(pqxx::connection& conn, const std::string& slot);
// True until RequeueRows completed the slot's catch-up; also true for a slot this schema has
// never heard of (made by hand, or by a relay older than the marker): one re-queue too many
// sends duplicates, one too few would lose rows.
absl::StatusOr<bool> CatchUpPending(pqxx::connection& conn, const std::string& slot);

struct RequeueOptions {
  // Only rows created before now() - older_than; every row when unset.
  std::optional<absl::Duration> older_than;
  // When set, the same transaction marks this slot's catch-up complete.
  std::string completes_catch_up_of;
};
// Deletes and re-inserts the chosen outbox rows in one REPEATABLE READ transaction (a row
// committed meanwhile is neither lost nor doubled in the table), in id order, and forgets their
// set-aside entries. Returns how many rows were re-queued. Rows the relay is streaming at that
// moment are relayed twice: a duplicate, never a loss.
absl::StatusOr<int64_t> RequeueRows(pqxx::connection& conn, const RequeueOptions& options);

struct SetAside {
  int64_t outbox_id = 0;
  std::string event_id;
  std::string event_type;
  // A short class for metrics: "no_topic", "undecodable", "too_large".
  std::string reason_class;
  // What an operator reads.
  std::string reason;
  int64_t record_bytes = 0;
};
// Upserts the row's entry (a replay of the same row counts it again).
absl::Status RecordSetAside(pqxx::connection& conn, const SetAside& entry);

struct Stranded {
  int64_t rows = 0;
  std::vector<int64_t> first_ids;  // the oldest few, for the log
  double oldest_age_seconds = 0;
};
// Outbox rows created before `reference - after`: still in the outbox although the stream has
// moved well past them (set aside, never streamed, or left by a catch-up that never ran).
absl::StatusOr<Stranded> FindStranded(pqxx::connection& conn, absl::Time reference,
                                      absl::Duration after);

// Age of the oldest outbox row waiting to be relayed (set-aside rows, which wait for an
// operator, not counted); 0 when none waits.
absl::StatusOr<double> OldestWaitingAgeSeconds(pqxx::connection& conn);

}  // namespace concert::relay

#endif  // CONCERT_OUTBOX_RELAY_OUTBOX_H_
