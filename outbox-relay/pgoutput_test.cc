#include "outbox-relay/pgoutput.h"

#include <string>

#include <gtest/gtest.h>

namespace concert::relay {
namespace {

// Builds wire bytes the way the server does: big-endian integers, NUL-terminated strings.
class Bytes {
 public:
  Bytes& Char(char c) { out_.push_back(c); return *this; }
  Bytes& U(uint64_t v, int width) {
    for (int i = width - 1; i >= 0; --i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  Bytes& Str(const std::string& s) { out_ += s; out_.push_back('\0'); return *this; }
  Bytes& Raw(const std::string& s) { out_ += s; return *this; }
  std::string str() const { return out_; }

 private:
  std::string out_;
};

TEST(LsnTest, FormatsAndParses) {
  EXPECT_EQ(FormatLsn(0x16B374D848ULL), "16/B374D848");
  EXPECT_EQ(FormatLsn(0), "0/0");
  EXPECT_EQ(*ParseLsn("16/B374D848"), 0x16B374D848ULL);
  EXPECT_FALSE(ParseLsn("16-B3").ok());
  EXPECT_FALSE(ParseLsn("1/2x").ok());
}

TEST(PgTimeTest, EpochIs2000) {
  EXPECT_EQ(ToPgTime(absl::FromUnixSeconds(946684800)), 0);
  EXPECT_EQ(FromPgTime(1'000'000), absl::FromUnixSeconds(946684801));
}

TEST(CopyMessageTest, ParsesXLogData) {
  std::string bytes = Bytes().Char('w').U(0x100, 8).U(0x200, 8).U(77, 8).Raw("Bpayload").str();
  absl::StatusOr<CopyMessage> m = ParseCopyMessage(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const XLogData& x = std::get<XLogData>(*m);
  EXPECT_EQ(x.start, 0x100u);
  EXPECT_EQ(x.wal_end, 0x200u);
  EXPECT_EQ(x.send_time, 77);
  EXPECT_EQ(x.data, "Bpayload");
}

TEST(CopyMessageTest, ParsesKeepaliveWithReplyRequest) {
  std::string bytes = Bytes().Char('k').U(0xABCDEF, 8).U(5, 8).U(1, 1).str();
  absl::StatusOr<CopyMessage> m = ParseCopyMessage(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const Keepalive& k = std::get<Keepalive>(*m);
  EXPECT_EQ(k.wal_end, 0xABCDEFu);
  EXPECT_TRUE(k.reply_requested);
}

TEST(CopyMessageTest, RejectsTruncatedAndUnknown) {
  EXPECT_FALSE(ParseCopyMessage(Bytes().Char('k').U(1, 8).str()).ok());
  EXPECT_FALSE(ParseCopyMessage(Bytes().Char('w').U(1, 8).str()).ok());
  EXPECT_FALSE(ParseCopyMessage("z123").ok());
  EXPECT_FALSE(ParseCopyMessage("").ok());
}

TEST(StandbyStatusTest, EncodesBigEndianFields) {
  std::string got = EncodeStandbyStatus(0x0102030405060708ULL, 0x10, 0x20, 0x30, true);
  std::string want = Bytes()
                         .Char('r')
                         .U(0x0102030405060708ULL, 8)
                         .U(0x10, 8)
                         .U(0x20, 8)
                         .U(0x30, 8)
                         .U(1, 1)
                         .str();
  EXPECT_EQ(got, want);
  EXPECT_EQ(got.size(), 34u);
}

TEST(DecodeMessageTest, BeginAndCommit) {
  absl::StatusOr<Message> b = DecodeMessage(Bytes().Char('B').U(0x500, 8).U(123, 8).U(42, 4).str());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(std::get<Begin>(*b).final_lsn, 0x500u);
  EXPECT_EQ(std::get<Begin>(*b).commit_time, 123);
  EXPECT_EQ(std::get<Begin>(*b).xid, 42u);

  absl::StatusOr<Message> c =
      DecodeMessage(Bytes().Char('C').U(0, 1).U(0x500, 8).U(0x538, 8).U(123, 8).str());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(std::get<Commit>(*c).commit_lsn, 0x500u);
  EXPECT_EQ(std::get<Commit>(*c).end_lsn, 0x538u);
}

TEST(DecodeMessageTest, Relation) {
  std::string bytes = Bytes()
                          .Char('R')
                          .U(16390, 4)
                          .Str("payment")
                          .Str("outbox_events")
                          .Char('d')
                          .U(2, 2)
                          .U(1, 1).Str("id").U(20, 4).U(0xffffffff, 4)
                          .U(0, 1).Str("payload").U(17, 4).U(0xffffffff, 4)
                          .str();
  absl::StatusOr<Message> m = DecodeMessage(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const Relation& r = std::get<Relation>(*m);
  EXPECT_EQ(r.id, 16390u);
  EXPECT_EQ(r.schema, "payment");
  EXPECT_EQ(r.name, "outbox_events");
  ASSERT_EQ(r.columns.size(), 2u);
  EXPECT_TRUE(r.columns[0].part_of_key);
  EXPECT_EQ(r.columns[1].name, "payload");
  EXPECT_EQ(r.columns[1].type_oid, 17u);
  EXPECT_EQ(r.columns[1].type_modifier, -1);
}

TEST(DecodeMessageTest, InsertWithTextAndNull) {
  std::string bytes = Bytes()
                          .Char('I')
                          .U(16390, 4)
                          .Char('N')
                          .U(3, 2)
                          .Char('t').U(2, 4).Raw("17")
                          .Char('n')
                          .Char('t').U(6, 4).Raw("\\x0aff")
                          .str();
  absl::StatusOr<Message> m = DecodeMessage(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const Insert& ins = std::get<Insert>(*m);
  EXPECT_EQ(ins.relation_id, 16390u);
  ASSERT_EQ(ins.values.size(), 3u);
  EXPECT_EQ(ins.values[0], "17");
  EXPECT_FALSE(ins.values[1].has_value());
  EXPECT_EQ(*DecodeByteaHex(*ins.values[2]), std::string("\x0a\xff", 2));
}

TEST(DecodeMessageTest, RejectsTruncatedInsert) {
  std::string bytes =
      Bytes().Char('I').U(1, 4).Char('N').U(1, 2).Char('t').U(10, 4).Raw("short").str();
  EXPECT_FALSE(DecodeMessage(bytes).ok());
  EXPECT_FALSE(DecodeMessage(Bytes().Char('I').U(1, 4).Char('K').U(0, 2).str()).ok());
  EXPECT_FALSE(DecodeMessage(Bytes().Char('R').U(1, 4).Raw("no-terminator").str()).ok());
}

TEST(DecodeMessageTest, OtherMessagesAreReportedNotFailed) {
  absl::StatusOr<Message> m = DecodeMessage("Y\x01\x02");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(std::get<Other>(*m).tag, 'Y');
}

TEST(ByteaTest, DecodesHexAndRejectsOtherForms) {
  EXPECT_EQ(*DecodeByteaHex("\\x"), "");
  EXPECT_EQ(*DecodeByteaHex("\\x00417A"), std::string("\0Az", 3));
  EXPECT_FALSE(DecodeByteaHex("\\x0").ok());
  EXPECT_FALSE(DecodeByteaHex("\\xzz").ok());
  EXPECT_FALSE(DecodeByteaHex("\\001").ok());
}

}  // namespace
}  // namespace concert::relay
