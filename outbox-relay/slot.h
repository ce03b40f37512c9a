// The relay's hold on Postgres: its logical replication slot, streamed over a replication
// connection, and the wait for the synchronous standbys before a transaction may be relayed.
// What the stream carries is turned into Kafka records elsewhere (session.h).
//
//   ASSIGN_OR_RETURN(std::unique_ptr<SlotStream> stream, SlotStream::Open(options, catalog));
//   while (!stop.HasBeenNotified()) {
//     ASSIGN_OR_RETURN(std::optional<absl::string_view> data, stream->Next());
//     if (data) { Handle(*data); continue; }                // a CopyData message (pgoutput.h)
//     RETURN_IF_ERROR(stream->SendStatus(received, confirmed, /*reply_requested=*/false));
//     RETURN_IF_ERROR(stream->AwaitData(absl::Milliseconds(100)));
//   }
//
// Open creates the publication and the slot when missing (another relay creating them at the
// same moment is fine), re-queues the rows a new slot would not stream (outbox.h's catch-up,
// marked pending before the slot exists so that a crash in between leaves it to the next
// session), and starts streaming from the slot's confirmed position. Only one walsender can
// stream a slot: when another relay holds it, Open fails with a status IsStandby() recognises,
// and EnsureStillHolding() finds out when the slot was taken over while this process was paused.
// Every other failure is UNAVAILABLE (or what Postgres said): the session ends and a new one
// starts from the confirmed position.
//
// SyncStandby: with synchronous replication, a transaction is relayed only once the synchronous
// standbys flushed its commit record (see WaitUntilFlushed).
//
// Neither class is thread-safe: both belong to one session's thread, as does the catalog
// connection they are given (which must outlive them).
#ifndef CONCERT_OUTBOX_RELAY_SLOT_H_
#define CONCERT_OUTBOX_RELAY_SLOT_H_

#include <libpq-fe.h>

#include <memory>
#include <optional>
#include <string>

#include <pqxx/pqxx>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "outbox-relay/options.h"
#include "outbox-relay/pgoutput.h"

namespace concert::relay {

// A session ended because the slot is held by another relay: wait as a standby, not an outage.
absl::Status StandbyStatus(absl::string_view message);
bool IsStandby(const absl::Status& status);

class SlotStream {
 public:
  // Publication, slot, catch-up and START_REPLICATION, as above. `catalog` is an ordinary
  // connection to the same database.
  static absl::StatusOr<std::unique_ptr<SlotStream>> Open(const RelayOptions& options,
                                                           pqxx::connection& catalog);
  ~SlotStream();  // closes the replication connection (the walsender ends with it)
  SlotStream(const SlotStream&) = delete;
  SlotStream& operator=(const SlotStream&) = delete;

  // Where streaming started: the slot's confirmed position, or a new slot's consistent point;
  // 0 when the server did not say (then nothing is confirmed before Kafka acknowledged
  // something).
  Lsn start() const { return start_; }

  // The next CopyData message already received, valid until the next call; nullopt when none
  // is buffered. UNAVAILABLE once the stream or the connection ended.
  absl::StatusOr<std::optional<absl::string_view>> Next();
  // Waits up to `timeout` for more data and reads what arrived.
  absl::Status AwaitData(absl::Duration timeout);
  // A standby status update: `received` (at least `confirmed`) written, `confirmed` flushed
  // and applied. Before the first confirmation (0) the slot is left where it is.
  absl::Status SendStatus(Lsn received, Lsn confirmed, bool reply_requested);

  // Asks the server who holds the slot (after a pause: Postgres may have ended our walsender
  // and given the slot to a standby meanwhile). OK while it is still this connection.
  // Otherwise drops what is buffered on the connection unsent, counting its events in
  // `stale_dropped`, and returns a standby status (or the error that kept the server from
  // answering): the caller must end the session without producing anything more.
  absl::Status EnsureStillHolding(pqxx::connection& catalog, metrics::Counter& stale_dropped);

 private:
  SlotStream(std::string slot, PGconn* conn) : slot_(std::move(slot)), conn_(conn) {}
  absl::Status CreateSlot(pqxx::connection& catalog);
  absl::Status CatchUpIfPending(pqxx::connection& catalog);
  absl::Status Start(const std::string& publication);
  void ReleaseMessage();

  std::string slot_;
  PGconn* conn_;
  char* message_ = nullptr;  // what Next() returned last (libpq's buffer)
  Lsn start_ = 0;
};

class SyncStandby {
 public:
  // Whether the server has synchronous_standby_names set (checked once per session).
  static absl::StatusOr<bool> Configured(pqxx::connection& catalog);

  explicit SyncStandby(pqxx::connection& catalog) : catalog_(catalog) {}

  // OK once the synchronous standbys, counted as Postgres counts them, flushed WAL up to
  // `commit_end` (a transaction's commit record's end). UNAVAILABLE when none does within
  // 10 s (none connected, or the relay's role cannot see them): the session then starts again,
  // relaying nothing a failover could undo.
  absl::Status WaitUntilFlushed(Lsn commit_end);

 private:
  pqxx::connection& catalog_;
  Lsn flushed_ = 0;  // the synchronous standbys' flush position, as last read
};

}  // namespace concert::relay

#endif  // CONCERT_OUTBOX_RELAY_SLOT_H_
