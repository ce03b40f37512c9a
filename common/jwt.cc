#include "common/jwt.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/http_client.h"
#include "common/log.h"
#include "common/status.h"

namespace concert::jwt {
namespace {

using Json = nlohmann::json;

constexpr size_t kMaxJwksBytes = 1 << 20;
constexpr absl::Duration kJwksFetchTimeout = absl::Seconds(5);
// While no keys could be loaded at all, try again this often.
constexpr absl::Duration kFirstLoadRetry = absl::Seconds(2);
constexpr int kMinRsaBits = 2048;

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, Deleter<EVP_MD_CTX, EVP_MD_CTX_free>>;
using BignumPtr = std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>>;
using ParamBldPtr = std::unique_ptr<OSSL_PARAM_BLD, Deleter<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>>;
using ParamsPtr = std::unique_ptr<OSSL_PARAM, Deleter<OSSL_PARAM, OSSL_PARAM_free>>;
using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, Deleter<ECDSA_SIG, ECDSA_SIG_free>>;

// base64url without padding (RFC 7515 section 2); anything else is refused.
bool DecodeBase64Url(absl::string_view in, std::string* out) {
  if (in.size() % 4 == 1) return false;
  for (char c : in) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_') return false;
  }
  return absl::WebSafeBase64Unescape(in, out);
}

std::string EncodeBase64Url(absl::string_view in) {
  std::string out;
  absl::WebSafeBase64Escape(in, &out);
  return out;
}

std::optional<Json> DecodeJsonObject(absl::string_view base64url) {
  std::string text;
  if (!DecodeBase64Url(base64url, &text)) return std::nullopt;
  Json json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return std::nullopt;
  return json;
}

std::string StringField(const Json& object, const char* name) {
  auto it = object.find(name);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string Hs256(absl::string_view secret, absl::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &mac_len);
  return std::string(reinterpret_cast<const char*>(mac), mac_len);
}

const unsigned char* Bytes(absl::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

BignumPtr Bignum(absl::string_view big_endian) {
  return BignumPtr(BN_bin2bn(Bytes(big_endian), static_cast<int>(big_endian.size()), nullptr));
}

// A public key from OpenSSL parameters, checked (an EC point must lie on the curve).
absl::StatusOr<PkeyPtr> PublicKeyFromParams(const char* type, OSSL_PARAM_BLD* builder) {
  ParamsPtr params(OSSL_PARAM_BLD_to_param(builder));
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* raw = nullptr;
  if (params == nullptr || ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    return absl::InvalidArgumentError("not a valid public key");
  }
  PkeyPtr key(raw);
  PkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (check == nullptr || EVP_PKEY_public_check(check.get()) != 1) {
    return absl::InvalidArgumentError("not a valid public key");
  }
  return key;
}

absl::StatusOr<PkeyPtr> RsaKey(const Json& jwk) {
  std::string n, e;
  if (!DecodeBase64Url(StringField(jwk, "n"), &n) || !DecodeBase64Url(StringField(jwk, "e"), &e) ||
      n.empty() || e.empty()) {
    return absl::InvalidArgumentError("RSA key without a valid n and e");
  }
  BignumPtr modulus = Bignum(n), exponent = Bignum(e);
  ParamBldPtr builder(OSSL_PARAM_BLD_new());
  if (!modulus || !exponent || !builder ||
      OSSL_PARAM_BLD_push_BN(builder.get(), OSSL_PKEY_PARAM_RSA_N, modulus.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(builder.get(), OSSL_PKEY_PARAM_RSA_E, exponent.get()) != 1) {
    return absl::InternalError("OpenSSL could not build an RSA key");
  }
  absl::StatusOr<PkeyPtr> key = PublicKeyFromParams("RSA", builder.get());
  if (key.ok() && EVP_PKEY_get_bits(key->get()) < kMinRsaBits) {
    return absl::InvalidArgumentError(absl::StrCat("RSA key shorter than ", kMinRsaBits, " bits"));
  }
  return key;
}

absl::StatusOr<PkeyPtr> P256Key(const Json& jwk) {
  if (StringField(jwk, "crv") != "P-256") {
    return absl::InvalidArgumentError("EC key on a curve other than P-256");
  }
  std::string x, y;
  if (!DecodeBase64Url(StringField(jwk, "x"), &x) || !DecodeBase64Url(StringField(jwk, "y"), &y) ||
      x.size() != 32 || y.size() != 32) {
    return absl::InvalidArgumentError("P-256 key without 32-byte x and y");
  }
  std::string point = absl::StrCat("\x04", x, y);  // uncompressed SEC1 point
  ParamBldPtr builder(OSSL_PARAM_BLD_new());
  if (!builder ||
      OSSL_PARAM_BLD_push_utf8_string(builder.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1",
                                      0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(builder.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                       point.size()) != 1) {
    return absl::InternalError("OpenSSL could not build an EC key");
  }
  return PublicKeyFromParams("EC", builder.get());
}

// ES256 signs as raw r||s (RFC 7518 section 3.4); OpenSSL verifies DER.
std::optional<std::string> Es256SignatureToDer(absl::string_view raw) {
  if (raw.size() != 64) return std::nullopt;
  EcdsaSigPtr sig(ECDSA_SIG_new());
  BignumPtr r = Bignum(raw.substr(0, 32)), s = Bignum(raw.substr(32));
  if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r.get(), s.get()) != 1) return std::nullopt;
  r.release();  // owned by sig now
  s.release();
  int size = i2d_ECDSA_SIG(sig.get(), nullptr);
  if (size <= 0) return std::nullopt;
  std::string der(static_cast<size_t>(size), '\0');
  unsigned char* out = reinterpret_cast<unsigned char*>(der.data());
  i2d_ECDSA_SIG(sig.get(), &out);
  return der;
}

bool VerifySha256Signature(EVP_PKEY* key, absl::string_view data, absl::string_view signature) {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  return ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) == 1 &&
         EVP_DigestVerify(ctx.get(), Bytes(signature), signature.size(), Bytes(data),
                          data.size()) == 1;
}

std::string TooLarge(absl::string_view source) {
  return absl::StrCat(source, ": the JWKS is larger than ", kMaxJwksBytes, " bytes");
}

absl::StatusOr<std::string> Fetch(const std::string& url, bool allow_http) {
  static HttpClient* http = new HttpClient();  // shared by every Verifier; never destroyed
  HttpResponse r = http->Perform({.url = url,
                                  .connect_timeout = kJwksFetchTimeout,
                                  .timeout = kJwksFetchTimeout,
                                  .max_answer_bytes = kMaxJwksBytes,
                                  .https_only = !allow_http});
  if (r.outcome == HttpResponse::Outcome::kTooLarge) {
    return absl::FailedPreconditionError(TooLarge(absl::StrCat("GET ", url)));
  }
  if (!r.answered()) return absl::UnavailableError(absl::StrCat("GET ", url, ": ", r.error));
  if (r.status != 200) {
    return absl::UnavailableError(absl::StrCat("GET ", url, ": HTTP ", r.status));
  }
  return std::move(r.body);
}

// Reads at most one byte past the cap, so a huge (or endless, like /dev/zero) file is refused
// without being read whole.
absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string text(kMaxJwksBytes + 1, '\0');
  if (in) in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (!in && !in.eof()) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxJwksBytes) return absl::FailedPreconditionError(TooLarge(path));
  return text;
}

// A NumericDate claim (seconds since the epoch, RFC 7519 section 2): nullopt when absent,
// UNAUTHENTICATED when it is not a number of seconds within ±300,000 years.
absl::StatusOr<std::optional<absl::Time>> TimeClaim(const Json& payload, const char* name) {
  auto it = payload.find(name);
  if (it == payload.end()) return std::nullopt;
  if (!it->is_number() || !(std::abs(it->get<double>()) < 1e13)) {
    return absl::UnauthenticatedError(absl::StrCat("token ", name, " is not a NumericDate"));
  }
  return absl::FromUnixSeconds(static_cast<int64_t>(it->get<double>()));
}

void AppendWords(const Json& value, std::vector<std::string>* out) {
  if (value.is_string()) {
    for (absl::string_view word : absl::StrSplit(value.get<std::string>(), ' ', absl::SkipEmpty())) {
      out->emplace_back(word);
    }
  } else if (value.is_array()) {
    for (const Json& item : value) {
      if (item.is_string()) out->push_back(item.get<std::string>());
    }
  }
}

bool AudienceNames(const Json& payload, absl::string_view audience) {
  auto it = payload.find("aud");  // a string or an array of strings (RFC 7519 section 4.1.3)
  if (it == payload.end()) return false;
  if (it->is_string()) return it->get<std::string>() == audience;
  return it->is_array() && std::find(it->begin(), it->end(), Json(std::string(audience))) != it->end();
}

}  // namespace

class KeySet {
 public:
  struct Key {
    std::string kid;
    std::string alg;  // RS256 or ES256
    PkeyPtr key;
  };

  static absl::StatusOr<std::shared_ptr<const KeySet>> Parse(absl::string_view text) {
    Json doc = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!doc.is_object() || !doc.contains("keys") || !doc["keys"].is_array()) {
      return absl::InvalidArgumentError("not a JWKS document (no \"keys\" array)");
    }
    auto set = std::make_shared<KeySet>();
    std::vector<std::string> skipped;
    for (const Json& jwk : doc["keys"]) {
      if (!jwk.is_object()) continue;
      std::string kty = StringField(jwk, "kty"), alg = StringField(jwk, "alg");
      std::string use = StringField(jwk, "use");
      std::string kid = StringField(jwk, "kid");
      std::string family = kty == "RSA" ? "RS256" : kty == "EC" ? "ES256" : "";
      absl::StatusOr<PkeyPtr> key = absl::InvalidArgumentError(absl::StrCat("kty ", kty));
      if (family.empty() || (!alg.empty() && alg != family) || (!use.empty() && use != "sig")) {
        key = absl::InvalidArgumentError("not an RS256/ES256 signing key");
      } else {
        key = kty == "RSA" ? RsaKey(jwk) : P256Key(jwk);
      }
      if (!key.ok()) {
        skipped.push_back(absl::StrCat(kid.empty() ? "(no kid)" : kid, ": ", key.status().message()));
        continue;
      }
      set->keys_.push_back(Key{kid, family, std::move(*key)});
    }
    if (set->keys_.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("JWKS holds no usable RS256/ES256 key (", absl::StrJoin(skipped, "; "), ")"));
    }
    if (!skipped.empty()) {
      log::Warn("JWKS keys skipped", {{"keys", absl::StrJoin(skipped, "; ")}});
    }
    return std::shared_ptr<const KeySet>(std::move(set));
  }

  // Keys that may have signed a token with this alg and kid (every key of the alg without kid).
  std::vector<const Key*> Candidates(absl::string_view alg, absl::string_view kid) const {
    std::vector<const Key*> out;
    for (const Key& k : keys_) {
      if (k.alg == alg && (kid.empty() || k.kid == kid)) out.push_back(&k);
    }
    return out;
  }

  std::string Kids() const {
    return absl::StrJoin(keys_, ",", [](std::string* out, const Key& k) { out->append(k.kid); });
  }

 private:
  std::vector<Key> keys_;
};

bool Claims::HasScope(absl::string_view scope) const {
  return std::find(scopes.begin(), scopes.end(), scope) != scopes.end();
}

absl::StatusOr<int64_t> UserIdOf(const Claims& claims) {
  const std::string& sub = claims.subject;
  int64_t user_id = 0;
  // SimpleAtoi alone takes "01", "+1" and " 1 " for 1: one user would have many subjects.
  bool canonical = !sub.empty() && sub.front() != '0' &&
                   std::all_of(sub.begin(), sub.end(), absl::ascii_isdigit) &&
                   absl::SimpleAtoi(sub, &user_id);
  if (!canonical) {
    return absl::UnauthenticatedError(
        absl::StrCat("token sub '", absl::CEscape(sub),
                     "' is not a user id (a positive decimal number, without sign, spaces or "
                     "leading zeros)"));
  }
  return user_id;
}

std::string MintHs256(absl::string_view secret, const Hs256Token& token, absl::Time now) {
  Json payload = {{"sub", token.subject},
                  {"iat", absl::ToUnixSeconds(now)},
                  {"exp", absl::ToUnixSeconds(token.expires_at)}};
  if (!token.issuer.empty()) payload["iss"] = token.issuer;
  if (!token.audience.empty()) payload["aud"] = token.audience;
  if (!token.scope.empty()) payload["scope"] = token.scope;
  std::string signed_part = absl::StrCat(EncodeBase64Url(R"({"alg":"HS256","typ":"JWT"})"), ".",
                                         EncodeBase64Url(payload.dump()));
  return absl::StrCat(signed_part, ".", EncodeBase64Url(Hs256(secret, signed_part)));
}

VerifierOptions ReadVerifierOptions(Settings& s) {
  VerifierOptions o;
  o.hs256_secret = s.Secret(
      "AUTH_TOKEN_SECRET", kMinHs256SecretBytes,
      "HS256 key of JWT bearer tokens, for local use (mint-token signs with it)");
  o.jwks_file = s.String("AUTH_JWKS_FILE", "",
                         "JWKS file of the identity provider's RS256/ES256 keys");
  o.jwks_url = s.String("AUTH_JWKS_URL", "", "JWKS URL of the identity provider (https://)");
  o.jwks_allow_http =
      s.Bool("AUTH_JWKS_ALLOW_HTTP", o.jwks_allow_http,
             "accept an http:// AUTH_JWKS_URL: for a loopback identity provider in tests only");
  o.jwks_refresh = s.Duration("AUTH_JWKS_REFRESH", o.jwks_refresh, absl::Seconds(1),
                              absl::Hours(24), "how often the JWKS is reloaded");
  o.issuer = s.String("AUTH_ISSUER", "", "the iss tokens must carry; empty: not checked");
  o.audience = s.String("AUTH_AUDIENCE", "", "the aud tokens must name; empty: not checked");
  o.clock_skew = s.Duration("AUTH_CLOCK_SKEW", o.clock_skew, absl::ZeroDuration(),
                            absl::Minutes(10), "leeway for the exp and nbf of tokens");
  if (!o.jwks_file.empty() && !o.jwks_url.empty()) {
    s.Fail("AUTH_JWKS_URL", "set AUTH_JWKS_FILE or AUTH_JWKS_URL, not both");
  }
  if (!o.jwks_url.empty() && !absl::StartsWith(o.jwks_url, "https://") &&
      !(o.jwks_allow_http && absl::StartsWith(o.jwks_url, "http://"))) {
    s.Fail("AUTH_JWKS_URL", absl::StartsWith(o.jwks_url, "http://")
                                ? "expected an https:// URL (http:// only with "
                                  "AUTH_JWKS_ALLOW_HTTP=true, for a loopback identity provider "
                                  "in tests)"
                                : "expected an https:// URL");
  }
  return o;
}

Verifier::Verifier(VerifierOptions options) : options_(std::move(options)) {}

Verifier::~Verifier() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (refresher_.joinable()) refresher_.join();
}

absl::Status Verifier::Start() {
  if (options_.jwks_file.empty() && options_.jwks_url.empty()) return absl::OkStatus();
  absl::Status loaded = Reload();
  if (!loaded.ok() && !options_.jwks_file.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("AUTH_JWKS_FILE: ", loaded.message()));
  }
  refresher_ = std::thread([this] { RefreshLoop(); });
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const KeySet>> Verifier::LoadKeys() const {
  absl::StatusOr<std::string> text =
      options_.jwks_file.empty() ? Fetch(options_.jwks_url, options_.jwks_allow_http)
                                 : ReadFile(options_.jwks_file);
  if (!text.ok()) return text.status();
  return KeySet::Parse(*text);
}

absl::Status Verifier::Reload() {
  absl::MutexLock one_at_a_time(&reload_mu_);
  {
    absl::MutexLock lock(&mu_);
    last_reload_attempt_ = absl::Now();
  }
  absl::StatusOr<std::shared_ptr<const KeySet>> keys = LoadKeys();
  const std::string& source = options_.jwks_file.empty() ? options_.jwks_url : options_.jwks_file;
  absl::MutexLock lock(&mu_);
  if (!keys.ok()) {
    last_load_error_ = std::string(keys.status().message());
    log::Warn(keys_ == nullptr ? "JWKS not loaded" : "JWKS not reloaded; the keys loaded before stay",
              {{"source", source}, {"error", last_load_error_}});
    return keys.status();
  }
  if (keys_ == nullptr || keys_->Kids() != (*keys)->Kids()) {
    log::Info("JWKS loaded", {{"source", source}, {"kids", (*keys)->Kids()}});
  }
  keys_ = *std::move(keys);
  return absl::OkStatus();
}

void Verifier::RefreshLoop() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    absl::Duration wait = keys_ == nullptr ? std::min(kFirstLoadRetry, options_.jwks_refresh)
                                           : options_.jwks_refresh;
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), wait)) break;
    mu_.Unlock();
    Reload().IgnoreError();  // logged; the previous keys stay
    mu_.Lock();
  }
}

std::shared_ptr<const KeySet> Verifier::keys() const {
  absl::MutexLock lock(&mu_);
  return keys_;
}

absl::Status Verifier::VerifySignature(absl::string_view alg, absl::string_view kid,
                                       absl::string_view signed_part,
                                       const std::string& signature) {
  if (alg == "HS256") {
    if (options_.hs256_secret.empty()) {
      return absl::UnauthenticatedError("HS256 tokens are not accepted here (no AUTH_TOKEN_SECRET)");
    }
    std::string expected = Hs256(options_.hs256_secret, signed_part);
    if (signature.size() != expected.size() ||
        CRYPTO_memcmp(expected.data(), signature.data(), expected.size()) != 0) {
      return absl::UnauthenticatedError("invalid token signature");
    }
    return absl::OkStatus();
  }
  if (alg != "RS256" && alg != "ES256") {
    return absl::UnauthenticatedError(
        absl::StrCat("unsupported token alg '", alg, "' (accepted: HS256, RS256, ES256)"));
  }
  if (options_.jwks_file.empty() && options_.jwks_url.empty()) {
    return absl::UnauthenticatedError(
        absl::StrCat(alg, " tokens are not accepted here (no AUTH_JWKS_FILE or AUTH_JWKS_URL)"));
  }
  std::shared_ptr<const KeySet> keys = this->keys();
  std::vector<const KeySet::Key*> candidates;
  if (keys != nullptr) candidates = keys->Candidates(alg, kid);
  if (candidates.empty() && !kid.empty()) {
    bool may_reload;
    {
      absl::MutexLock lock(&mu_);
      may_reload = absl::Now() - last_reload_attempt_ >= options_.unknown_kid_reload_interval;
    }
    if (may_reload && Reload().ok()) {
      keys = this->keys();
      candidates = keys->Candidates(alg, kid);
    }
  }
  if (keys == nullptr) {
    absl::MutexLock lock(&mu_);
    return absl::UnavailableError(
        absl::StrCat("signing keys not loaded yet (", last_load_error_, "); retry later"));
  }
  if (candidates.empty()) {
    return absl::UnauthenticatedError(
        absl::StrCat("no ", alg, " key with kid '", kid, "' in the JWKS"));
  }
  std::optional<std::string> der;
  if (alg == "ES256") {
    der = Es256SignatureToDer(signature);
    if (!der) return absl::UnauthenticatedError("ES256 signature is not 64 bytes");
  }
  for (const KeySet::Key* key : candidates) {
    if (VerifySha256Signature(key->key.get(), signed_part, der ? *der : signature)) {
      return absl::OkStatus();
    }
  }
  return absl::UnauthenticatedError("invalid token signature");
}

absl::StatusOr<Claims> Verifier::Verify(absl::string_view token, absl::Time now) {
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  if (parts.size() != 3) {
    return absl::UnauthenticatedError("malformed token (expected a JWT: header.payload.signature)");
  }
  std::optional<Json> header = DecodeJsonObject(parts[0]);
  if (!header) return absl::UnauthenticatedError("malformed token header");
  std::string alg = StringField(*header, "alg");
  if (alg.empty()) return absl::UnauthenticatedError("token header has no alg");
  if (absl::AsciiStrToLower(alg) == "none") {
    return absl::UnauthenticatedError("unsigned tokens (alg none) are refused");
  }
  if (header->contains("crit")) {
    return absl::UnauthenticatedError("token header has crit extensions; none are supported");
  }
  std::string signature;
  if (parts[2].empty() || !DecodeBase64Url(parts[2], &signature)) {
    return absl::UnauthenticatedError("malformed token signature");
  }
  absl::string_view signed_part = token.substr(0, parts[0].size() + 1 + parts[1].size());
  RETURN_IF_ERROR(VerifySignature(alg, StringField(*header, "kid"), signed_part, signature));

  // Nothing below is looked at before the signature holds.
  std::optional<Json> payload = DecodeJsonObject(parts[1]);
  if (!payload) return absl::UnauthenticatedError("malformed token payload");
  ASSIGN_OR_RETURN(std::optional<absl::Time> exp, TimeClaim(*payload, "exp"));
  if (!exp) return absl::UnauthenticatedError("token has no exp");
  if (*exp + options_.clock_skew <= now) {
    return absl::UnauthenticatedError(absl::StrCat("token expired at ", absl::FormatTime(*exp)));
  }
  ASSIGN_OR_RETURN(std::optional<absl::Time> nbf, TimeClaim(*payload, "nbf"));
  if (nbf && now + options_.clock_skew < *nbf) {
    return absl::UnauthenticatedError(
        absl::StrCat("token not valid before ", absl::FormatTime(*nbf)));
  }
  if (!options_.issuer.empty() && StringField(*payload, "iss") != options_.issuer) {
    return absl::UnauthenticatedError(absl::StrCat("token issuer is not ", options_.issuer));
  }
  if (!options_.audience.empty() && !AudienceNames(*payload, options_.audience)) {
    return absl::UnauthenticatedError(absl::StrCat("token audience lacks ", options_.audience));
  }
  Claims claims{.subject = StringField(*payload, "sub"), .expires_at = *exp};
  if (claims.subject.empty()) return absl::UnauthenticatedError("token has no sub");
  for (const char* name : {"scope", "scp", "roles"}) {
    if (auto it = payload->find(name); it != payload->end()) AppendWords(*it, &claims.scopes);
  }
  return claims;
}

absl::StatusOr<Claims> Verifier::VerifyAuthorization(absl::string_view header, absl::Time now) {
  absl::string_view value = absl::StripAsciiWhitespace(header);
  if (value.empty()) {
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  }
  if (value.size() < 7 || !absl::EqualsIgnoreCase(value.substr(0, 7), "bearer ")) {
    return absl::UnauthenticatedError("authorization metadata must be 'Bearer <token>'");
  }
  return Verify(absl::StripAsciiWhitespace(value.substr(7)), now);
}

}  // namespace concert::jwt
