// A stand-in identity provider for tests: RSA and P-256 signing keys made at test time, their
// JWKS document, and tokens signed with them (RS256, ES256) or with anything a forger might try
// (any header, any signature). Production code only verifies tokens; this is the other side.
//
//   TestIssuer idp;
//   idp.AddKey("rsa-1", TestIssuer::kRs256);
//   WriteFile(path, idp.Jwks());
//   std::string token = idp.Sign("rsa-1", {{"sub", "42"}, {"exp", ...}});
#ifndef CONCERT_COMMON_TESTING_JWT_ISSUER_H_
#define CONCERT_COMMON_TESTING_JWT_ISSUER_H_

#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/strings/string_view.h"

typedef struct evp_pkey_st EVP_PKEY;

namespace concert::testing {

class TestIssuer {
 public:
  enum Alg { kRs256, kEs256 };

  TestIssuer();
  ~TestIssuer();

  // A new key pair under `kid` (replacing any key of that kid).
  void AddKey(const std::string& kid, Alg alg);
  void RemoveKey(const std::string& kid);
  // {"keys": [...]}: the public half of every key.
  std::string Jwks() const;

  // header.payload.signature with header {"alg": <the key's>, "typ": "JWT", "kid": kid}.
  std::string Sign(const std::string& kid, const nlohmann::json& payload) const;
  // The same with a header of the caller's choosing (kid still picks the signing key).
  std::string SignWithHeader(const std::string& kid, const nlohmann::json& header,
                             const nlohmann::json& payload) const;
  // The public key of `kid` in PEM, as an attacker would find it in the JWKS.
  std::string PublicKeyPem(const std::string& kid) const;

  static std::string Base64Url(absl::string_view bytes);
  // An HS256 signature over `signed_part` with `secret` (any bytes).
  static std::string Hs256(absl::string_view secret, absl::string_view signed_part);

 private:
  struct Key {
    Alg alg;
    std::shared_ptr<EVP_PKEY> pkey;
  };
  std::map<std::string, Key> keys_;
};

}  // namespace concert::testing

#endif  // CONCERT_COMMON_TESTING_JWT_ISSUER_H_
