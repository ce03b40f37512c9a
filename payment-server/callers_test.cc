#include "payment-server/callers.h"

#include <gtest/gtest.h>

#include "absl/time/clock.h"

namespace concert::payment {
namespace {

constexpr char kSecret[] = "callers-test-secret-0123456789abcdef";

class CallersTest : public ::testing::Test {
 protected:
  CallersTest() : verifier_(jwt::VerifierOptions{.hs256_secret = kSecret}) {}

  std::string Bearer(const std::string& subject, absl::Time expires_at) {
    return "Bearer " + jwt::MintHs256(kSecret, {.subject = subject, .expires_at = expires_at},
                                      now_ - absl::Minutes(1));
  }

  absl::Time now_ = absl::Now();
  jwt::Verifier verifier_;
};

TEST_F(CallersTest, AVerifiedTokenNamesItsUserAgainWithoutAnotherCheckUntilItExpires) {
  Callers callers(verifier_, {.remember = absl::Minutes(10), .capacity = 100});
  std::string token = Bearer("42", now_ + absl::Minutes(5));
  EXPECT_EQ(callers.UserId(token, now_).value(), 42);
  EXPECT_EQ(callers.UserId(token, now_ + absl::Minutes(4)).value(), 42);
  // Remembered, but past its exp: refused as jwt::Verifier refuses it.
  absl::StatusOr<int64_t> expired = callers.UserId(token, now_ + absl::Minutes(6));
  EXPECT_EQ(expired.status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(CallersTest, RefusalsAreNeverRemembered) {
  Callers callers(verifier_, {});
  std::string token = Bearer("7", now_ + absl::Minutes(5));
  std::string forged = token.substr(0, token.size() - 2) + (token.back() == 'A' ? "BB" : "AA");
  EXPECT_EQ(callers.UserId(forged, now_).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(callers.UserId(forged, now_).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(callers.UserId("", now_).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(callers.UserId(Bearer("not-a-number", now_ + absl::Minutes(5)), now_).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(callers.UserId(token, now_).value(), 7);
}

TEST_F(CallersTest, AFullMemoryStartsAgainAndStillAnswers) {
  Callers callers(verifier_, {.remember = absl::Minutes(1), .capacity = 2});
  for (int user = 1; user <= 5; ++user) {
    std::string token = Bearer(std::to_string(user), now_ + absl::Minutes(5));
    EXPECT_EQ(callers.UserId(token, now_).value(), user);
    EXPECT_EQ(callers.UserId(token, now_).value(), user);
  }
}

}  // namespace
}  // namespace concert::payment
