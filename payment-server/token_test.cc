#include "payment-server/token.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace concert::payment {
namespace {

constexpr char kSecret[] = "test-secret-0123456789";
const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

TEST(TokenTest, ValidTokenYieldsItsUser) {
  std::string token = MintToken(kSecret, 42, kNow + absl::Hours(1));
  EXPECT_TRUE(token.rfind("v1.42.", 0) == 0) << token;
  absl::StatusOr<int64_t> user = VerifyToken(kSecret, token, kNow);
  ASSERT_TRUE(user.ok()) << user.status();
  EXPECT_EQ(*user, 42);
}

TEST(TokenTest, TamperedUserIdIsRejected) {
  std::string token = MintToken(kSecret, 42, kNow + absl::Hours(1));
  std::string tampered = "v1.43" + token.substr(5);
  absl::StatusOr<int64_t> user = VerifyToken(kSecret, tampered, kNow);
  EXPECT_EQ(user.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(user.status().message().find("signature"), absl::string_view::npos);
}

TEST(TokenTest, TamperedExpiryIsRejected) {
  std::string token = MintToken(kSecret, 42, kNow - absl::Hours(1));
  std::string later = absl::StrCat(absl::ToUnixSeconds(kNow + absl::Hours(5)));
  std::string expired_part = absl::StrCat(absl::ToUnixSeconds(kNow - absl::Hours(1)));
  std::string tampered = token;
  tampered.replace(tampered.find(expired_part), expired_part.size(), later);
  EXPECT_EQ(VerifyToken(kSecret, tampered, kNow).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(TokenTest, TamperedMacIsRejected) {
  std::string token = MintToken(kSecret, 42, kNow + absl::Hours(1));
  token.back() = token.back() == '0' ? '1' : '0';
  EXPECT_EQ(VerifyToken(kSecret, token, kNow).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(TokenTest, ExpiredTokenIsRejected) {
  std::string token = MintToken(kSecret, 42, kNow - absl::Seconds(1));
  absl::StatusOr<int64_t> user = VerifyToken(kSecret, token, kNow);
  EXPECT_EQ(user.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(user.status().message().find("expired"), absl::string_view::npos);
  // Expiry is exclusive: a token is dead at its expiry second.
  EXPECT_FALSE(VerifyToken(kSecret, MintToken(kSecret, 42, kNow), kNow).ok());
}

TEST(TokenTest, WrongSecretIsRejected) {
  std::string token = MintToken("another-secret", 42, kNow + absl::Hours(1));
  EXPECT_EQ(VerifyToken(kSecret, token, kNow).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(TokenTest, MalformedTokensAreRejected) {
  std::string good = MintToken(kSecret, 42, kNow + absl::Hours(1));
  std::string mac = good.substr(good.rfind('.') + 1);
  for (const std::string& bad :
       {std::string(""), std::string("garbage"), std::string("v1.42.123"),
        absl::StrCat("v2.42.1900000000.", mac), absl::StrCat("v1.-4.1900000000.", mac),
        absl::StrCat("v1.0.1900000000.", mac), absl::StrCat("v1.x.1900000000.", mac),
        absl::StrCat("v1.42.19e8.", mac), absl::StrCat("v1.42.1900000000.", mac, "00"),
        absl::StrCat(good, ".extra"), absl::StrCat("v1.42.1900000000.", std::string(64, 'G')),
        absl::StrCat("v1.99999999999999999999.1900000000.", mac)}) {
    EXPECT_EQ(VerifyToken(kSecret, bad, kNow).status().code(), absl::StatusCode::kUnauthenticated)
        << bad;
  }
}

TEST(TokenTest, AuthorizationHeaderNeedsBearer) {
  std::string token = MintToken(kSecret, 7, kNow + absl::Hours(1));
  EXPECT_EQ(*VerifyAuthorizationHeader(kSecret, "Bearer " + token, kNow), 7);
  EXPECT_EQ(*VerifyAuthorizationHeader(kSecret, "bearer " + token, kNow), 7);
  EXPECT_EQ(VerifyAuthorizationHeader(kSecret, token, kNow).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(VerifyAuthorizationHeader(kSecret, "", kNow).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(VerifyAuthorizationHeader(kSecret, "Basic abc", kNow).status().code(),
            absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace concert::payment
