#include "payment-server/token.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace concert::payment {
namespace {

constexpr char kVersion[] = "v1";
constexpr size_t kMacHexLength = 64;  // SHA-256

std::string MacHex(absl::string_view secret, absl::string_view signed_part) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(signed_part.data()), signed_part.size(), mac,
       &mac_len);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(mac), mac_len));
}

bool IsLowerHex(absl::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool IsDecimal(absl::string_view s) {
  if (s.empty() || s.size() > 19) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(c)) return false;
  }
  return true;
}

}  // namespace

std::string MintToken(absl::string_view secret, int64_t user_id, absl::Time expires_at) {
  std::string signed_part = absl::StrCat(kVersion, ".", user_id, ".", absl::ToUnixSeconds(expires_at));
  return absl::StrCat(signed_part, ".", MacHex(secret, signed_part));
}

absl::StatusOr<int64_t> VerifyToken(absl::string_view secret, absl::string_view token,
                                    absl::Time now) {
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  if (parts.size() != 4 || parts[0] != kVersion || !IsDecimal(parts[1]) ||
      !IsDecimal(parts[2]) || parts[3].size() != kMacHexLength || !IsLowerHex(parts[3])) {
    return absl::UnauthenticatedError("malformed token (expected v1.<user>.<expiry>.<mac>)");
  }
  int64_t user_id = 0, expiry = 0;
  if (!absl::SimpleAtoi(parts[1], &user_id) || !absl::SimpleAtoi(parts[2], &expiry) ||
      user_id <= 0) {
    return absl::UnauthenticatedError("malformed token (bad user id or expiry)");
  }
  // Check the signature before looking at the claims, so nothing unsigned is trusted.
  absl::string_view signed_part = token.substr(0, token.size() - kMacHexLength - 1);
  std::string expected = MacHex(secret, signed_part);
  if (CRYPTO_memcmp(expected.data(), parts[3].data(), kMacHexLength) != 0) {
    return absl::UnauthenticatedError("invalid token signature");
  }
  if (absl::FromUnixSeconds(expiry) <= now) {
    return absl::UnauthenticatedError("token expired");
  }
  return user_id;
}

absl::StatusOr<int64_t> VerifyAuthorizationHeader(absl::string_view secret,
                                                  absl::string_view header, absl::Time now) {
  absl::string_view value = absl::StripAsciiWhitespace(header);
  if (value.empty()) {
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  }
  if (value.size() < 7 || !absl::EqualsIgnoreCase(value.substr(0, 7), "bearer ")) {
    return absl::UnauthenticatedError("authorization metadata must be 'Bearer <token>'");
  }
  return VerifyToken(secret, absl::StripAsciiWhitespace(value.substr(7)), now);
}

}  // namespace concert::payment
