// The JWT verifier against tokens of a test identity provider: every way a token can be wrong
// is refused with UNAUTHENTICATED, keys rotate without a new Verifier, and the JWKS comes from a
// file or from a real HTTP server on loopback.
#include "common/jwt.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/testing/jwt_issuer.h"
#include "common/testing/settings.h"

namespace concert::jwt {
namespace {

using ::concert::testing::TestIssuer;
using ::testing::HasSubstr;
using Json = nlohmann::json;

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);
constexpr char kIssuer[] = "https://idp.example.test/";
constexpr char kAudience[] = "concert-api";

int64_t At(absl::Duration from_now) { return absl::ToUnixSeconds(kNow + from_now); }

Json GoodClaims() {
  return {{"sub", "42"}, {"iss", kIssuer}, {"aud", kAudience}, {"exp", At(absl::Hours(1))},
          {"nbf", At(-absl::Minutes(1))}, {"scope", "openid concert.admin"}};
}

void WriteFile(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  std::ofstream(tmp) << text;
  std::rename(tmp.c_str(), path.c_str());  // atomic, as a Kubernetes Secret update is
}

class JwtTest : public ::testing::Test {
 protected:
  JwtTest() : jwks_path_(::testing::TempDir() + "/jwks-" + std::to_string(::getpid()) + ".json") {
    idp_.AddKey("rsa-1", TestIssuer::kRs256);
    idp_.AddKey("ec-1", TestIssuer::kEs256);
    WriteFile(jwks_path_, idp_.Jwks());
  }
  ~JwtTest() override { std::remove(jwks_path_.c_str()); }

  VerifierOptions Options() const {
    return {.jwks_file = jwks_path_, .issuer = kIssuer, .audience = kAudience};
  }
  std::unique_ptr<Verifier> Started(VerifierOptions options) {
    auto verifier = std::make_unique<Verifier>(std::move(options));
    absl::Status started = verifier->Start();
    EXPECT_TRUE(started.ok()) << started;
    return verifier;
  }
  void ExpectRefused(Verifier& verifier, const std::string& token, const std::string& why) {
    absl::StatusOr<Claims> claims = verifier.Verify(token, kNow);
    EXPECT_EQ(claims.status().code(), absl::StatusCode::kUnauthenticated) << why;
    EXPECT_THAT(claims.status().message(), HasSubstr(why));
  }

  TestIssuer idp_;
  std::string jwks_path_;
};

TEST_F(JwtTest, Rs256AndEs256TokensFromTheJwksAreAccepted) {
  auto verifier = Started(Options());
  for (const char* kid : {"rsa-1", "ec-1"}) {
    absl::StatusOr<Claims> claims = verifier->Verify(idp_.Sign(kid, GoodClaims()), kNow);
    ASSERT_TRUE(claims.ok()) << kid << ": " << claims.status();
    EXPECT_EQ(claims->subject, "42");
    EXPECT_TRUE(claims->HasScope("concert.admin"));
    EXPECT_FALSE(claims->HasScope("concert"));
    EXPECT_EQ(claims->expires_at, kNow + absl::Hours(1));
  }
}

TEST_F(JwtTest, TimesAreCheckedWithTheClockSkew) {
  VerifierOptions options = Options();
  options.clock_skew = absl::Seconds(30);
  auto verifier = Started(options);
  Json claims = GoodClaims();
  claims["exp"] = At(-absl::Seconds(20));
  EXPECT_TRUE(verifier->Verify(idp_.Sign("rsa-1", claims), kNow).ok()) << "within the skew";
  claims["exp"] = At(-absl::Seconds(31));
  ExpectRefused(*verifier, idp_.Sign("rsa-1", claims), "expired");
  claims = GoodClaims();
  claims.erase("exp");
  ExpectRefused(*verifier, idp_.Sign("rsa-1", claims), "no exp");
  claims["exp"] = "tomorrow";
  ExpectRefused(*verifier, idp_.Sign("rsa-1", claims), "exp is not a NumericDate");
  claims["exp"] = 1e300;
  ExpectRefused(*verifier, idp_.Sign("rsa-1", claims), "exp is not a NumericDate");
  claims = GoodClaims();
  claims["nbf"] = Json::array({1});
  ExpectRefused(*verifier, idp_.Sign("rsa-1", claims), "nbf is not a NumericDate");
  claims["nbf"] = At(absl::Seconds(20));
  EXPECT_TRUE(verifier->Verify(idp_.Sign("rsa-1", claims), kNow).ok()) << "within the skew";
  claims["nbf"] = At(absl::Minutes(5));
  ExpectRefused(*verifier, idp_.Sign("ec-1", claims), "not valid before");
}

TEST_F(JwtTest, IssuerAudienceAndSubjectAreChecked) {
  auto verifier = Started(Options());
  Json claims = GoodClaims();
  claims["iss"] = "https://evil.example.test/";
  ExpectRefused(*verifier, idp_.Sign("rsa-1", claims), "issuer");
  claims = GoodClaims();
  claims["aud"] = "another-api";
  ExpectRefused(*verifier, idp_.Sign("rsa-1", claims), "audience");
  claims["aud"] = Json::array({"another-api", kAudience});
  EXPECT_TRUE(verifier->Verify(idp_.Sign("rsa-1", claims), kNow).ok()) << "aud as an array";
  claims = GoodClaims();
  claims.erase("sub");
  ExpectRefused(*verifier, idp_.Sign("rsa-1", claims), "no sub");
}

TEST_F(JwtTest, ATokenSignedByAnotherKeyIsRefused) {
  auto verifier = Started(Options());
  TestIssuer forger;
  forger.AddKey("rsa-1", TestIssuer::kRs256);  // same kid, different key
  forger.AddKey("ec-1", TestIssuer::kEs256);
  ExpectRefused(*verifier, forger.Sign("rsa-1", GoodClaims()), "invalid token signature");
  ExpectRefused(*verifier, forger.Sign("ec-1", GoodClaims()), "invalid token signature");
  // A payload changed after signing.
  std::string token = idp_.Sign("rsa-1", GoodClaims());
  std::string other = idp_.Sign("rsa-1", Json{{"sub", "1"}, {"exp", At(absl::Hours(1))}});
  std::string spliced = token.substr(0, token.find('.') + 1) +
                        other.substr(other.find('.') + 1, other.rfind('.') - other.find('.') - 1) +
                        token.substr(token.rfind('.'));
  ExpectRefused(*verifier, spliced, "invalid token signature");
}

TEST_F(JwtTest, UnsignedTokensAreRefused) {
  auto verifier = Started(Options());
  std::string body = absl::StrCat(TestIssuer::Base64Url(GoodClaims().dump()));
  for (const char* alg : {"none", "None", "NONE"}) {
    std::string header = TestIssuer::Base64Url(Json{{"alg", alg}, {"typ", "JWT"}}.dump());
    ExpectRefused(*verifier, absl::StrCat(header, ".", body, "."), "alg none");
    ExpectRefused(*verifier, absl::StrCat(header, ".", body, ".c2ln"), "alg none");
  }
}

TEST_F(JwtTest, AnHs256TokenSignedWithThePublicKeyIsRefused) {
  // The classic algorithm confusion: the attacker takes the RSA public key (published in the
  // JWKS) as an HMAC secret. With or without a shared secret configured, it must not pass.
  std::string signed_part =
      absl::StrCat(TestIssuer::Base64Url(Json{{"alg", "HS256"}, {"kid", "rsa-1"}}.dump()), ".",
                   TestIssuer::Base64Url(GoodClaims().dump()));
  std::string forged = absl::StrCat(
      signed_part, ".",
      TestIssuer::Base64Url(TestIssuer::Hs256(idp_.PublicKeyPem("rsa-1"), signed_part)));
  ExpectRefused(*Started(Options()), forged, "HS256 tokens are not accepted");
  VerifierOptions with_secret = Options();
  with_secret.hs256_secret = "local-secret";
  ExpectRefused(*Started(with_secret), forged, "invalid token signature");
  // And an RS256 header over an HMAC: no RSA key verifies it.
  std::string rs_part =
      absl::StrCat(TestIssuer::Base64Url(Json{{"alg", "RS256"}, {"kid", "rsa-1"}}.dump()), ".",
                   TestIssuer::Base64Url(GoodClaims().dump()));
  ExpectRefused(*Started(Options()),
                absl::StrCat(rs_part, ".",
                             TestIssuer::Base64Url(TestIssuer::Hs256(idp_.PublicKeyPem("rsa-1"),
                                                                     rs_part))),
                "invalid token signature");
  // An ES256 header naming the RSA key's kid: that key is not an ES256 key.
  ExpectRefused(*Started(Options()),
                idp_.SignWithHeader("ec-1", {{"alg", "ES256"}, {"kid", "rsa-1"}}, GoodClaims()),
                "no ES256 key with kid 'rsa-1'");
}

TEST_F(JwtTest, MalformedTokensAreRefused) {
  auto verifier = Started(Options());
  std::string good = idp_.Sign("rsa-1", GoodClaims());
  std::string header = good.substr(0, good.find('.'));
  std::vector<std::pair<std::string, std::string>> cases = {
      {"", "malformed token"},
      {"v1.42.1900000000.abcdef", "malformed token"},
      {"abc", "malformed token"},
      {good + ".extra", "malformed token"},
      {"!!!." + good.substr(good.find('.') + 1), "malformed token header"},
      {TestIssuer::Base64Url("not json") + good.substr(good.find('.')), "malformed token header"},
      {TestIssuer::Base64Url("[1,2]") + good.substr(good.find('.')), "malformed token header"},
      {TestIssuer::Base64Url(R"({"typ":"JWT"})") + good.substr(good.find('.')), "no alg"},
      {TestIssuer::Base64Url(R"({"alg":"PS512"})") + good.substr(good.find('.')), "unsupported"},
      {good.substr(0, good.rfind('.') + 1) + "%%%", "malformed token signature"},
      {good.substr(0, good.rfind('.') + 1) + "AAAA=", "malformed token signature"},
  };
  for (const auto& [token, why] : cases) ExpectRefused(*verifier, token, why);
  // A payload that is not JSON, properly signed: refused after the signature holds.
  VerifierOptions hs;
  hs.hs256_secret = "local-secret";
  Verifier local(hs);
  std::string signed_part = absl::StrCat(TestIssuer::Base64Url(R"({"alg":"HS256"})"), ".",
                                         TestIssuer::Base64Url("not json"));
  ExpectRefused(local,
                absl::StrCat(signed_part, ".",
                             TestIssuer::Base64Url(TestIssuer::Hs256("local-secret", signed_part))),
                "malformed token payload");
}

TEST_F(JwtTest, Hs256TokensMintedHereVerifyWithTheSameSecretOnly) {
  VerifierOptions options{.hs256_secret = "local-secret", .issuer = kIssuer};
  Verifier verifier(options);
  std::string token = MintHs256("local-secret",
                                {.subject = "7", .expires_at = kNow + absl::Hours(1),
                                 .issuer = kIssuer, .scope = "concert.admin"},
                                kNow);
  absl::StatusOr<Claims> claims = verifier.Verify(token, kNow);
  ASSERT_TRUE(claims.ok()) << claims.status();
  EXPECT_EQ(claims->subject, "7");
  EXPECT_TRUE(claims->HasScope("concert.admin"));
  ExpectRefused(verifier,
                MintHs256("other", {.subject = "7", .expires_at = kNow + absl::Hours(1),
                                    .issuer = kIssuer}, kNow),
                "invalid token signature");
}

TEST_F(JwtTest, AuthorizationHeaderNeedsBearer) {
  auto verifier = Started(Options());
  std::string token = idp_.Sign("ec-1", GoodClaims());
  EXPECT_TRUE(verifier->VerifyAuthorization("Bearer " + token, kNow).ok());
  EXPECT_TRUE(verifier->VerifyAuthorization("bearer " + token, kNow).ok());
  EXPECT_THAT(verifier->VerifyAuthorization("", kNow).status().message(), HasSubstr("missing"));
  EXPECT_EQ(verifier->VerifyAuthorization("Basic " + token, kNow).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(JwtTest, ARotatedJwksFileIsPickedUpWithoutARestart) {
  VerifierOptions options = Options();
  options.jwks_refresh = absl::Seconds(1);
  options.unknown_kid_reload_interval = absl::ZeroDuration();
  auto verifier = Started(options);
  std::string old_token = idp_.Sign("rsa-1", GoodClaims());
  ASSERT_TRUE(verifier->Verify(old_token, kNow).ok());

  // The identity provider adds a key and signs with it: the unknown kid reloads the file.
  idp_.AddKey("rsa-2", TestIssuer::kRs256);
  WriteFile(jwks_path_, idp_.Jwks());
  absl::StatusOr<Claims> fresh = verifier->Verify(idp_.Sign("rsa-2", GoodClaims()), kNow);
  EXPECT_TRUE(fresh.ok()) << fresh.status();

  // Then retires the old key: the periodic reload stops accepting it.
  idp_.RemoveKey("rsa-1");
  WriteFile(jwks_path_, idp_.Jwks());
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (verifier->Verify(old_token, kNow).ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ExpectRefused(*verifier, old_token, "no RS256 key with kid 'rsa-1'");

  // A broken file keeps the keys loaded before.
  WriteFile(jwks_path_, "{ not json");
  absl::SleepFor(absl::Milliseconds(1500));
  EXPECT_TRUE(verifier->Verify(idp_.Sign("rsa-2", GoodClaims()), kNow).ok());
}

TEST_F(JwtTest, AnUnknownKidReloadsAtMostOncePerInterval) {
  VerifierOptions options = Options();
  options.unknown_kid_reload_interval = absl::Hours(1);
  auto verifier = Started(options);
  idp_.AddKey("rsa-2", TestIssuer::kRs256);
  WriteFile(jwks_path_, idp_.Jwks());
  // Start() has just loaded: within the interval a forged kid cannot force a reload.
  ExpectRefused(*verifier, idp_.Sign("rsa-2", GoodClaims()), "no RS256 key with kid 'rsa-2'");
}

TEST_F(JwtTest, AJwksFileWithoutUsableKeysFailsAtStart) {
  WriteFile(jwks_path_, R"({"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}]})");
  Verifier verifier(Options());
  absl::Status started = verifier.Start();
  EXPECT_EQ(started.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(started.message(), HasSubstr("no usable RS256/ES256 key"));
  Verifier missing(VerifierOptions{.jwks_file = jwks_path_ + ".missing"});
  EXPECT_THAT(missing.Start().message(), HasSubstr("cannot read"));
}

TEST_F(JwtTest, AJwksUrlIsFetchedAndWaitedForWhileDown) {
  httplib::Server idp_server;
  std::atomic<bool> up{false};
  idp_server.Get("/jwks.json", [&](const httplib::Request&, httplib::Response& res) {
    if (!up) {
      res.status = 503;
      return;
    }
    res.set_content(idp_.Jwks(), "application/json");
  });
  int port = idp_server.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread serving([&] { idp_server.listen_after_bind(); });

  VerifierOptions options = Options();
  options.jwks_file.clear();
  options.jwks_url = absl::StrCat("http://127.0.0.1:", port, "/jwks.json");
  options.jwks_allow_http = true;
  {
    Verifier verifier(options);
    ASSERT_TRUE(verifier.Start().ok()) << "an identity provider that is down is waited for";
    std::string token = idp_.Sign("ec-1", GoodClaims());
    absl::StatusOr<Claims> early = verifier.Verify(token, kNow);
    EXPECT_EQ(early.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(early.status().message(), HasSubstr("HTTP 503"));
    up = true;
    absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!verifier.Verify(token, kNow).ok() && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    absl::StatusOr<Claims> later = verifier.Verify(token, kNow);
    EXPECT_TRUE(later.ok()) << later.status();
  }
  idp_server.stop();
  serving.join();
}

// A JWKS is a few KiB: more than 1 MiB, from the file or the URL, is refused without being read
// whole (a wrong file or a hostile answer must not fill the memory).
TEST_F(JwtTest, AJwksLargerThanOneMebibyteIsRefused) {
  std::string padded = idp_.Jwks();
  padded.insert(padded.size() - 1, std::string(1 << 20, ' '));  // still a valid document
  WriteFile(jwks_path_, padded);
  Verifier from_file(Options());
  absl::Status started = from_file.Start();
  EXPECT_EQ(started.code(), absl::StatusCode::kFailedPrecondition) << started;
  EXPECT_THAT(started.message(), HasSubstr("AUTH_JWKS_FILE"));
  EXPECT_THAT(started.message(), HasSubstr("larger than 1048576 bytes"));

  httplib::Server idp_server;
  idp_server.Get("/jwks.json", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(padded, "application/json");
  });
  int port = idp_server.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread serving([&] { idp_server.listen_after_bind(); });
  VerifierOptions options = Options();
  options.jwks_file.clear();
  options.jwks_url = absl::StrCat("http://127.0.0.1:", port, "/jwks.json");
  options.jwks_allow_http = true;
  {
    Verifier from_url(options);
    ASSERT_TRUE(from_url.Start().ok());
    absl::StatusOr<Claims> claims = from_url.Verify(idp_.Sign("ec-1", GoodClaims()), kNow);
    EXPECT_EQ(claims.status().code(), absl::StatusCode::kUnavailable) << claims.status();
    EXPECT_THAT(claims.status().message(), HasSubstr(options.jwks_url));
    EXPECT_THAT(claims.status().message(), HasSubstr("larger than 1048576 bytes"));
  }
  idp_server.stop();
  serving.join();
}

TEST(UserIdOfTest, OnlyACanonicalPositiveDecimalSubjectIsAUserId) {
  EXPECT_EQ(*UserIdOf({.subject = "1"}), 1);
  EXPECT_EQ(*UserIdOf({.subject = "9223372036854775807"}), INT64_MAX);
  for (const char* sub : {"", "0", "01", "0001", " 1", "1 ", "+1", "-1", "1e3", "0x1", "١",
                          "9223372036854775808", "alice"}) {
    absl::StatusOr<int64_t> id = UserIdOf({.subject = sub});
    EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated) << "sub '" << sub << "'";
    EXPECT_THAT(id.status().message(), HasSubstr("is not a user id"));
  }
}

Settings SettingsWithEnv(std::map<std::string, std::string> env) {
  return testing::SettingsOf("test", std::move(env));
}

TEST(JwtSettingsTest, AnHs256SecretShorterThan32BytesIsRefused) {
  Settings short_secret = SettingsWithEnv({{"AUTH_TOKEN_SECRET", std::string(31, 's')}});
  ReadVerifierOptions(short_secret);
  EXPECT_THAT(short_secret.Validate().message(), HasSubstr("AUTH_TOKEN_SECRET"));
  Settings long_enough = SettingsWithEnv({{"AUTH_TOKEN_SECRET", std::string(32, 's')}});
  EXPECT_EQ(ReadVerifierOptions(long_enough).hs256_secret, std::string(32, 's'));
  EXPECT_TRUE(long_enough.Validate().ok()) << long_enough.Validate();
}

TEST(JwtSettingsTest, AnHttpJwksUrlNeedsTheExplicitOptOut) {
  Settings plain = SettingsWithEnv({{"AUTH_JWKS_URL", "http://127.0.0.1:8080/jwks.json"}});
  ReadVerifierOptions(plain);
  EXPECT_THAT(plain.Validate().message(), HasSubstr("AUTH_JWKS_URL"));
  EXPECT_THAT(plain.Validate().message(), HasSubstr("AUTH_JWKS_ALLOW_HTTP"));
  Settings allowed = SettingsWithEnv({{"AUTH_JWKS_URL", "http://127.0.0.1:8080/jwks.json"},
                                      {"AUTH_JWKS_ALLOW_HTTP", "true"}});
  EXPECT_TRUE(ReadVerifierOptions(allowed).jwks_allow_http);
  EXPECT_TRUE(allowed.Validate().ok()) << allowed.Validate();
  Settings https = SettingsWithEnv({{"AUTH_JWKS_URL", "https://idp.example.test/jwks.json"}});
  ReadVerifierOptions(https);
  EXPECT_TRUE(https.Validate().ok()) << https.Validate();
}

TEST(JwtSettingsTest, BothJwksSourcesAreRefused) {
  const char* argv[] = {"test", "--auth-jwks-file=/x.json", "--auth-jwks-url=https://idp/jwks"};
  Settings s("test", 3, argv, [](const char*) -> const char* { return nullptr; });
  ReadVerifierOptions(s);
  EXPECT_THAT(s.Validate().message(), HasSubstr("not both"));
}

}  // namespace
}  // namespace concert::jwt
