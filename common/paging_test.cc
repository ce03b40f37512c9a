#include "common/paging.h"

#include <cstdint>
#include <limits>

#include <gtest/gtest.h>

#include "absl/strings/escaping.h"

namespace concert {
namespace {

constexpr int64_t kMax64 = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin32 = std::numeric_limits<int32_t>::min();
constexpr int64_t kMax32 = std::numeric_limits<int32_t>::max();

TEST(PageSizeTest, ZeroIsTheDefaultAndOnlyOneToTheMaximumIsAccepted) {
  EXPECT_EQ(*PageSize(0), kDefaultPageSize);
  EXPECT_EQ(*PageSize(1), 1);
  EXPECT_EQ(*PageSize(kMaxPageSize), kMaxPageSize);
  for (int32_t bad : {-1, kMaxPageSize + 1, std::numeric_limits<int32_t>::min(),
                      std::numeric_limits<int32_t>::max()}) {
    EXPECT_EQ(PageSize(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(PageTokenTest, RoundTripsEveryKeyInRange) {
  for (int64_t key : {int64_t{1}, int64_t{42}, kMax64}) {
    auto decoded = DecodePageToken("concerts", EncodePageToken("concerts", key), 1, kMax64);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, key);
  }
  auto negative = DecodePageToken("seats/3", EncodePageToken("seats/3", kMin32), kMin32, kMax32);
  ASSERT_TRUE(negative.ok()) << negative.status();
  EXPECT_EQ(*negative, kMin32);
  auto first = DecodePageToken("concerts", "", 1, kMax64);
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->has_value());
}

TEST(PageTokenTest, RefusesWhatThisListDidNotReturn) {
  const std::string bad[] = {
      "garbage!",                                               // not base64url
      absl::WebSafeBase64Escape("concerts:"),                   // no key
      absl::WebSafeBase64Escape("concerts:12x"),                // not a number
      absl::WebSafeBase64Escape("concerts:9223372036854775808"),  // 2^63: not an int64
      absl::WebSafeBase64Escape("concerts:99999999999999999999999"),
      EncodePageToken("concerts", 0),                           // below the range
      EncodePageToken("concerts", -5),
      EncodePageToken("payments", 7),                           // another list's
      EncodePageToken("concert", 7),
  };
  for (const std::string& token : bad) {
    EXPECT_EQ(DecodePageToken("concerts", token, 1, kMax64).status().code(),
              absl::StatusCode::kInvalidArgument)
        << token;
  }
  // A key that fits an int64 but not the column (a Postgres int) is refused before any query.
  EXPECT_EQ(DecodePageToken("seats/3", EncodePageToken("seats/3", kMax32 + 1), kMin32, kMax32)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // Another schedule's token.
  EXPECT_EQ(DecodePageToken("seats/3", EncodePageToken("seats/4", 10), kMin32, kMax32)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace concert
