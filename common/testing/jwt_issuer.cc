#include "common/testing/jwt_issuer.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <stdexcept>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace concert::testing {
namespace {

void Check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(absl::StrCat("OpenSSL: ", what, " failed"));
}

std::string BignumBytes(const BIGNUM* bn, int width = 0) {
  std::string out(static_cast<size_t>(width > 0 ? width : BN_num_bytes(bn)), '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(out.size()));
  return out;
}

std::string BignumParam(EVP_PKEY* key, const char* name, int width = 0) {
  BIGNUM* bn = nullptr;
  Check(EVP_PKEY_get_bn_param(key, name, &bn) == 1, name);
  std::string out = BignumBytes(bn, width);
  BN_free(bn);
  return out;
}

}  // namespace

TestIssuer::TestIssuer() = default;
TestIssuer::~TestIssuer() = default;

std::string TestIssuer::Base64Url(absl::string_view bytes) {
  std::string out;
  absl::WebSafeBase64Escape(bytes, &out);
  return out;
}

std::string TestIssuer::Hs256(absl::string_view secret, absl::string_view signed_part) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(signed_part.data()), signed_part.size(), mac, &len);
  return std::string(reinterpret_cast<const char*>(mac), len);
}

void TestIssuer::AddKey(const std::string& kid, Alg alg) {
  EVP_PKEY* key = alg == kRs256 ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048})
                                : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  Check(key != nullptr, "key generation");
  keys_[kid] = Key{alg, std::shared_ptr<EVP_PKEY>(key, EVP_PKEY_free)};
}

void TestIssuer::RemoveKey(const std::string& kid) { keys_.erase(kid); }

std::string TestIssuer::Jwks() const {
  nlohmann::json keys = nlohmann::json::array();
  for (const auto& [kid, key] : keys_) {
    EVP_PKEY* k = key.pkey.get();
    if (key.alg == kRs256) {
      keys.push_back({{"kty", "RSA"}, {"use", "sig"}, {"alg", "RS256"}, {"kid", kid},
                      {"n", Base64Url(BignumParam(k, OSSL_PKEY_PARAM_RSA_N))},
                      {"e", Base64Url(BignumParam(k, OSSL_PKEY_PARAM_RSA_E))}});
    } else {
      keys.push_back({{"kty", "EC"}, {"use", "sig"}, {"alg", "ES256"}, {"crv", "P-256"},
                      {"kid", kid},
                      {"x", Base64Url(BignumParam(k, OSSL_PKEY_PARAM_EC_PUB_X, 32))},
                      {"y", Base64Url(BignumParam(k, OSSL_PKEY_PARAM_EC_PUB_Y, 32))}});
    }
  }
  return nlohmann::json{{"keys", keys}}.dump();
}

std::string TestIssuer::Sign(const std::string& kid, const nlohmann::json& payload) const {
  const Key& key = keys_.at(kid);
  return SignWithHeader(
      kid, {{"alg", key.alg == kRs256 ? "RS256" : "ES256"}, {"typ", "JWT"}, {"kid", kid}}, payload);
}

std::string TestIssuer::SignWithHeader(const std::string& kid, const nlohmann::json& header,
                                       const nlohmann::json& payload) const {
  const Key& key = keys_.at(kid);
  std::string signed_part =
      absl::StrCat(Base64Url(header.dump()), ".", Base64Url(payload.dump()));
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  size_t size = 0;
  Check(ctx != nullptr &&
            EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key.pkey.get()) == 1 &&
            EVP_DigestSign(ctx, nullptr, &size,
                           reinterpret_cast<const unsigned char*>(signed_part.data()),
                           signed_part.size()) == 1,
        "signing");
  std::string signature(size, '\0');
  Check(EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(signature.data()), &size,
                       reinterpret_cast<const unsigned char*>(signed_part.data()),
                       signed_part.size()) == 1,
        "signing");
  EVP_MD_CTX_free(ctx);
  signature.resize(size);
  if (key.alg == kEs256) {  // DER -> the raw r||s of JWS
    const unsigned char* p = reinterpret_cast<const unsigned char*>(signature.data());
    ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(signature.size()));
    Check(sig != nullptr, "reading an ECDSA signature");
    signature = BignumBytes(ECDSA_SIG_get0_r(sig), 32) + BignumBytes(ECDSA_SIG_get0_s(sig), 32);
    ECDSA_SIG_free(sig);
  }
  return absl::StrCat(signed_part, ".", Base64Url(signature));
}

std::string TestIssuer::PublicKeyPem(const std::string& kid) const {
  BIO* bio = BIO_new(BIO_s_mem());
  Check(bio != nullptr && PEM_write_bio_PUBKEY(bio, keys_.at(kid).pkey.get()) == 1, "PEM");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(len));
  BIO_free(bio);
  return pem;
}

}  // namespace concert::testing
