// Bearer tokens that identify a caller: `v1.<user_id>.<expiry unix seconds>.<hex HMAC-SHA256>`,
// the MAC taken over "v1.<user_id>.<expiry>" with the server's AUTH_TOKEN_SECRET. Stateless:
// whoever holds the secret (the server, `payment-server mint-token`) can mint and check them.
//
//   std::string t = MintToken(secret, 42, absl::Now() + absl::Hours(24));
//   absl::StatusOr<int64_t> user = VerifyToken(secret, t, absl::Now());  // 42
//
// Thread-safe (pure functions).
#ifndef CONCERT_PAYMENT_SERVER_TOKEN_H_
#define CONCERT_PAYMENT_SERVER_TOKEN_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace concert::payment {

std::string MintToken(absl::string_view secret, int64_t user_id, absl::Time expires_at);

// The user id, or UNAUTHENTICATED saying what is wrong (malformed, bad signature, expired).
// The signature is compared in constant time.
absl::StatusOr<int64_t> VerifyToken(absl::string_view secret, absl::string_view token,
                                    absl::Time now);

// Reads `authorization: Bearer <token>` metadata values; UNAUTHENTICATED when absent.
absl::StatusOr<int64_t> VerifyAuthorizationHeader(absl::string_view secret,
                                                  absl::string_view header, absl::Time now);

}  // namespace concert::payment

#endif  // CONCERT_PAYMENT_SERVER_TOKEN_H_
