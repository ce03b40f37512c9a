// The byte formats of a logical replication stream, as the relay needs them: the CopyBoth
// framing of the streaming replication protocol (XLogData 'w', primary keepalive 'k', our
// standby status update 'r') and the messages of the built-in `pgoutput` plugin, protocol
// version 1 (Begin, Commit, Relation, Insert; everything else is reported as Other).
//
//   ASSIGN_OR_RETURN(CopyMessage m, ParseCopyMessage(absl::string_view(buf, len)));
//   if (auto* x = std::get_if<XLogData>(&m)) {
//     ASSIGN_OR_RETURN(Message msg, DecodeMessage(x->data));
//     ...
//   }
//   std::string reply = EncodeStandbyStatus(received, confirmed, confirmed, PgNow(), false);
//
// Pure functions over bytes (integers are big-endian on the wire); thread-safe. Decoded
// string_views point into the input, which must outlive them. Malformed input (a truncated
// message, an unknown tag where one is required) is INVALID_ARGUMENT, never a crash.
#ifndef CONCERT_OUTBOX_RELAY_PGOUTPUT_H_
#define CONCERT_OUTBOX_RELAY_PGOUTPUT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace concert::relay {

// A WAL position. 0 is "invalid" (InvalidXLogRecPtr) in the protocol.
using Lsn = uint64_t;

// "16/B374D848", the form Postgres prints and accepts.
std::string FormatLsn(Lsn lsn);
absl::StatusOr<Lsn> ParseLsn(absl::string_view text);

// Protocol timestamps: microseconds since 2000-01-01 00:00:00 UTC.
int64_t ToPgTime(absl::Time t);
absl::Time FromPgTime(int64_t micros);
inline int64_t PgNow() { return ToPgTime(absl::Now()); }

// ---- CopyBoth framing -------------------------------------------------------------------

// 'w': WAL data; `data` is one pgoutput message.
struct XLogData {
  Lsn start = 0;
  Lsn wal_end = 0;  // the server's current end of WAL (as sent)
  int64_t send_time = 0;
  absl::string_view data;
};

// 'k': sent when the server has nothing to send for a while, or before it times us out;
// `reply_requested` means "answer with a status update now or be disconnected".
struct Keepalive {
  Lsn wal_end = 0;
  int64_t send_time = 0;
  bool reply_requested = false;
};

using CopyMessage = std::variant<XLogData, Keepalive>;

absl::StatusOr<CopyMessage> ParseCopyMessage(absl::string_view bytes);

// 'r': the standby status update. For a logical slot, `flushed` becomes the slot's
// confirmed_flush_lsn: transactions that committed before it are never sent again. 0 means
// "no position to report" and leaves the slot unchanged.
std::string EncodeStandbyStatus(Lsn written, Lsn flushed, Lsn applied, int64_t now_pg_micros,
                                bool reply_requested);

// ---- pgoutput messages ------------------------------------------------------------------

struct Begin {
  Lsn final_lsn = 0;  // the commit record's LSN
  int64_t commit_time = 0;
  uint32_t xid = 0;
};

struct Commit {
  uint8_t flags = 0;
  Lsn commit_lsn = 0;
  Lsn end_lsn = 0;  // end of the commit record: what to confirm once the transaction is done
  int64_t commit_time = 0;
};

struct Column {
  bool part_of_key = false;
  std::string name;
  uint32_t type_oid = 0;
  int32_t type_modifier = -1;
};

// Sent before the first change of a table in a session (and again after its definition
// changed): Insert messages refer to it by id, so a reader caches it.
struct Relation {
  uint32_t id = 0;
  std::string schema;
  std::string name;
  char replica_identity = 'd';
  std::vector<Column> columns;
};

// One column value of a tuple: absent (SQL NULL, or an unchanged TOAST value, which an insert
// never has) or the value's text form (binary form if the stream was started with binary).
using Datum = std::optional<std::string>;

struct Insert {
  uint32_t relation_id = 0;
  std::vector<Datum> values;  // in the Relation's column order
};

// A message the relay does not act on (Origin, Type, Update, Delete, Truncate, Message).
struct Other {
  char tag = 0;
};

using Message = std::variant<Begin, Commit, Relation, Insert, Other>;

absl::StatusOr<Message> DecodeMessage(absl::string_view bytes);

// The text form of bytea ("\x0a1b..."), as pgoutput sends it without `binary`, to raw bytes.
absl::StatusOr<std::string> DecodeByteaHex(absl::string_view text);

}  // namespace concert::relay

#endif  // CONCERT_OUTBOX_RELAY_PGOUTPUT_H_
