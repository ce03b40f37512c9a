#include "outbox-relay/pgoutput.h"

#include <cinttypes>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace concert::relay {
namespace {

// Seconds from the Unix epoch to Postgres' epoch, 2000-01-01.
constexpr int64_t kPgEpochUnixSeconds = 946684800;

// Bounds-checked big-endian reads; the first overrun latches an error.
class Reader {
 public:
  explicit Reader(absl::string_view bytes) : bytes_(bytes) {}

  bool ok() const { return ok_; }
  size_t remaining() const { return bytes_.size() - pos_; }

  uint64_t UInt(int width) {
    if (!Need(width)) return 0;
    uint64_t v = 0;
    for (int i = 0; i < width; ++i) v = (v << 8) | static_cast<uint8_t>(bytes_[pos_ + i]);
    pos_ += width;
    return v;
  }
  uint8_t U8() { return static_cast<uint8_t>(UInt(1)); }
  uint16_t U16() { return static_cast<uint16_t>(UInt(2)); }
  uint32_t U32() { return static_cast<uint32_t>(UInt(4)); }
  uint64_t U64() { return UInt(8); }
  int64_t I64() { return static_cast<int64_t>(UInt(8)); }

  absl::string_view Bytes(size_t n) {
    if (!Need(n)) return {};
    absl::string_view out = bytes_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  absl::string_view Rest() { return Bytes(remaining()); }

  // A NUL-terminated string.
  std::string CString() {
    size_t end = bytes_.find('\0', pos_);
    if (!ok_ || end == absl::string_view::npos) {
      ok_ = false;
      return {};
    }
    std::string out(bytes_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return out;
  }

 private:
  bool Need(size_t n) {
    if (!ok_ || remaining() < n) ok_ = false;
    return ok_;
  }

  absl::string_view bytes_;
  size_t pos_ = 0;
  bool ok_ = true;
};

void PutUInt(std::string& out, uint64_t v, int width) {
  for (int i = width - 1; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

absl::Status Truncated(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("truncated ", what, " message"));
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string FormatLsn(Lsn lsn) {
  return absl::StrFormat("%X/%X", static_cast<uint32_t>(lsn >> 32), static_cast<uint32_t>(lsn));
}

absl::StatusOr<Lsn> ParseLsn(absl::string_view text) {
  unsigned int hi = 0, lo = 0;
  int consumed = 0;
  std::string s(text);
  if (std::sscanf(s.c_str(), "%X/%X%n", &hi, &lo, &consumed) != 2 ||
      consumed != static_cast<int>(s.size())) {
    return absl::InvalidArgumentError(absl::StrCat("not an LSN: \"", text, "\""));
  }
  return (static_cast<Lsn>(hi) << 32) | lo;
}

int64_t ToPgTime(absl::Time t) {
  return absl::ToUnixMicros(t) - kPgEpochUnixSeconds * 1'000'000;
}

absl::Time FromPgTime(int64_t micros) {
  return absl::FromUnixMicros(micros + kPgEpochUnixSeconds * 1'000'000);
}

absl::StatusOr<CopyMessage> ParseCopyMessage(absl::string_view bytes) {
  if (bytes.empty()) return absl::InvalidArgumentError("empty copy-data message");
  Reader r(bytes.substr(1));
  switch (bytes[0]) {
    case 'w': {
      XLogData x;
      x.start = r.U64();
      x.wal_end = r.U64();
      x.send_time = r.I64();
      x.data = r.Rest();
      if (!r.ok()) return Truncated("XLogData");
      return x;
    }
    case 'k': {
      Keepalive k;
      k.wal_end = r.U64();
      k.send_time = r.I64();
      k.reply_requested = r.U8() != 0;
      if (!r.ok()) return Truncated("keepalive");
      return k;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown copy-data message type 0x", absl::Hex(bytes[0] & 0xff)));
  }
}

std::string EncodeStandbyStatus(Lsn written, Lsn flushed, Lsn applied, int64_t now_pg_micros,
                                bool reply_requested) {
  std::string out;
  out.reserve(34);
  out.push_back('r');
  PutUInt(out, written, 8);
  PutUInt(out, flushed, 8);
  PutUInt(out, applied, 8);
  PutUInt(out, static_cast<uint64_t>(now_pg_micros), 8);
  out.push_back(reply_requested ? 1 : 0);
  return out;
}

absl::StatusOr<Message> DecodeMessage(absl::string_view bytes) {
  if (bytes.empty()) return absl::InvalidArgumentError("empty pgoutput message");
  Reader r(bytes.substr(1));
  switch (bytes[0]) {
    case 'B': {
      Begin b;
      b.final_lsn = r.U64();
      b.commit_time = r.I64();
      b.xid = r.U32();
      if (!r.ok()) return Truncated("Begin");
      return b;
    }
    case 'C': {
      Commit c;
      c.flags = r.U8();
      c.commit_lsn = r.U64();
      c.end_lsn = r.U64();
      c.commit_time = r.I64();
      if (!r.ok()) return Truncated("Commit");
      return c;
    }
    case 'R': {
      Relation rel;
      rel.id = r.U32();
      rel.schema = r.CString();
      rel.name = r.CString();
      rel.replica_identity = static_cast<char>(r.U8());
      uint16_t count = r.U16();
      for (uint16_t i = 0; i < count && r.ok(); ++i) {
        Column col;
        col.part_of_key = (r.U8() & 1) != 0;
        col.name = r.CString();
        col.type_oid = r.U32();
        col.type_modifier = static_cast<int32_t>(r.U32());
        rel.columns.push_back(std::move(col));
      }
      if (!r.ok()) return Truncated("Relation");
      return rel;
    }
    case 'I': {
      Insert ins;
      ins.relation_id = r.U32();
      uint8_t marker = r.U8();
      if (r.ok() && marker != 'N') {
        return absl::InvalidArgumentError(
            absl::StrCat("Insert: expected new tuple 'N', got 0x", absl::Hex(marker)));
      }
      uint16_t count = r.U16();
      for (uint16_t i = 0; i < count && r.ok(); ++i) {
        char kind = static_cast<char>(r.U8());
        if (!r.ok()) break;
        switch (kind) {
          case 'n':
          case 'u':
            ins.values.emplace_back(std::nullopt);
            break;
          case 't':
          case 'b': {
            uint32_t len = r.U32();
            ins.values.emplace_back(std::string(r.Bytes(len)));
            break;
          }
          default:
            return absl::InvalidArgumentError(
                absl::StrCat("Insert: unknown column kind 0x", absl::Hex(kind & 0xff)));
        }
      }
      if (!r.ok()) return Truncated("Insert");
      return ins;
    }
    default:
      return Other{bytes[0]};
  }
}

absl::StatusOr<std::string> DecodeByteaHex(absl::string_view text) {
  if (text.size() < 2 || text[0] != '\\' || text[1] != 'x' || text.size() % 2 != 0) {
    return absl::InvalidArgumentError("bytea value is not in hex form (\\x...)");
  }
  std::string out;
  out.reserve((text.size() - 2) / 2);
  for (size_t i = 2; i < text.size(); i += 2) {
    int hi = HexValue(text[i]), lo = HexValue(text[i + 1]);
    if (hi < 0 || lo < 0) return absl::InvalidArgumentError("bytea value has a non-hex digit");
    out.push_back(static_cast<char>((hi << 4) | lo));
  }
  return out;
}

}  // namespace concert::relay
