// JSON Web Tokens (RFC 7519) as gRPC bearer tokens. A token is accepted when it is signed
//   - HS256 with the shared secret AUTH_TOKEN_SECRET (local use: `payment-server mint-token`), or
//   - RS256 or ES256 (P-256) with a key of the identity provider's JWKS (RFC 7517), read from
//     AUTH_JWKS_FILE or AUTH_JWKS_URL, reloaded every AUTH_JWKS_REFRESH and whenever a token
//     names a `kid` the loaded set lacks (at most every few seconds), so keys rotate without a
//     restart;
// and its claims hold: `exp` (required) and `nbf` within AUTH_CLOCK_SKEW of now, `iss` equal to
// AUTH_ISSUER and `aud` naming AUTH_AUDIENCE when those are set, `sub` present.
//
// Settings refuse what would make tokens forgeable or keys replaceable: an AUTH_TOKEN_SECRET
// shorter than 32 bytes (HS256 needs a key of at least the hash's 256 bits, RFC 7518 section
// 3.2), and an http:// AUTH_JWKS_URL unless AUTH_JWKS_ALLOW_HTTP is set (a loopback identity
// provider in tests). A JWKS document larger than 1 MiB is an error, from a file or a URL.
//
// The header's `alg` picks the key family and nothing else: HS256 is only ever checked with the
// shared secret and RS256/ES256 only with JWKS keys of that type (and that `alg`, when the key
// states one), so `alg: none` and an HS256 token "signed" with a public key are refused.
//
// Written on OpenSSL 3 directly (keys from the JWK's n/e or x/y, ES256's raw r||s turned into
// DER): Debian 12's libjwt 1.10 and libcpp-jwt cannot read a JWKS.
//
//   jwt::Verifier verifier(jwt::ReadVerifierOptions(settings));
//   RETURN_IF_ERROR(verifier.Start());
//   ASSIGN_OR_RETURN(jwt::Claims claims, verifier.VerifyAuthorization(header, absl::Now()));
//
// Verifier is thread-safe.
#ifndef CONCERT_COMMON_JWT_H_
#define CONCERT_COMMON_JWT_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/config.h"

namespace concert::jwt {

// What a verified token says about its bearer.
struct Claims {
  std::string subject;  // sub
  // Every entry of `scope` (space-separated), `scp` (string or array) and `roles` (array).
  std::vector<std::string> scopes;
  absl::Time expires_at;

  bool HasScope(absl::string_view scope) const;
};

// The user id a token's `sub` names: a positive int64 written in canonical decimal ("42", never
// "042", "+42" or " 42"), so that each user has exactly one subject. UNAUTHENTICATED otherwise.
absl::StatusOr<int64_t> UserIdOf(const Claims& claims);

// An HS256 token (what `payment-server mint-token` prints).
struct Hs256Token {
  std::string subject;
  absl::Time expires_at;
  std::string issuer;    // iss, left out when empty
  std::string audience;  // aud, left out when empty
  std::string scope;     // scope, left out when empty
};
std::string MintHs256(absl::string_view secret, const Hs256Token& token, absl::Time now);

// The signing keys of a JWKS document: RSA keys (2048 bits or more) and EC P-256 keys with
// `use` "sig" or no `use`. Other keys are skipped; a document with none usable is an error.
class KeySet;

struct VerifierOptions {
  std::string hs256_secret;  // AUTH_TOKEN_SECRET
  std::string jwks_file;     // AUTH_JWKS_FILE
  std::string jwks_url;      // AUTH_JWKS_URL (https://)
  // AUTH_JWKS_ALLOW_HTTP: lets jwks_url be http://, for a loopback identity provider in tests;
  // over plain HTTP anyone on the path could hand us their own keys.
  bool jwks_allow_http = false;
  absl::Duration jwks_refresh = absl::Minutes(5);  // AUTH_JWKS_REFRESH
  std::string issuer;        // AUTH_ISSUER
  std::string audience;      // AUTH_AUDIENCE
  absl::Duration clock_skew = absl::Seconds(30);  // AUTH_CLOCK_SKEW
  // A token with an unknown kid reloads the JWKS at most this often (a forged kid must not
  // make every request fetch the URL).
  absl::Duration unknown_kid_reload_interval = absl::Seconds(10);

  bool any_key() const {
    return !hs256_secret.empty() || !jwks_file.empty() || !jwks_url.empty();
  }
};

// HS256 keys shorter than this are refused (RFC 7518 section 3.2).
inline constexpr size_t kMinHs256SecretBytes = 32;

// Reads the AUTH_* settings above (both AUTH_JWKS_FILE and AUTH_JWKS_URL set is an error).
VerifierOptions ReadVerifierOptions(Settings& settings);

class Verifier {
 public:
  explicit Verifier(VerifierOptions options);
  ~Verifier();  // stops the JWKS refresher
  Verifier(const Verifier&) = delete;
  Verifier& operator=(const Verifier&) = delete;

  // Loads the JWKS and starts reloading it. A JWKS file that cannot be read or parsed fails
  // here; an unreachable URL does not (the identity provider may come up later): it is retried
  // and, until keys arrive, RS256/ES256 tokens get UNAVAILABLE.
  absl::Status Start();

  // The claims, or UNAUTHENTICATED saying what is wrong with the token.
  absl::StatusOr<Claims> Verify(absl::string_view token, absl::Time now);
  // The same for an `authorization: Bearer <token>` metadata value ("" when absent).
  absl::StatusOr<Claims> VerifyAuthorization(absl::string_view header, absl::Time now);

 private:
  absl::StatusOr<std::shared_ptr<const KeySet>> LoadKeys() const;
  // Loads the JWKS and installs it; on failure keeps the previous keys.
  absl::Status Reload();
  void RefreshLoop();
  std::shared_ptr<const KeySet> keys() const;
  absl::Status VerifySignature(absl::string_view alg, absl::string_view kid,
                               absl::string_view signed_part, const std::string& signature);

  const VerifierOptions options_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const KeySet> keys_ ABSL_GUARDED_BY(mu_);
  std::string last_load_error_ ABSL_GUARDED_BY(mu_);
  absl::Time last_reload_attempt_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex reload_mu_;  // one reload at a time
  std::thread refresher_;
};

}  // namespace concert::jwt

#endif  // CONCERT_COMMON_JWT_H_
