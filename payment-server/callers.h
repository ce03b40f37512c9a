// Who is calling: the user id of a call's `authorization: Bearer <JWT>`, verified by
// jwt::Verifier and then remembered for a short while, so that a payer's ReserveSeat and
// PayConcert (and a client's retries) do not each pay for the signature, the base64 and the JSON
// of the same token again. A remembered token is still refused once it expires; a key removed
// from the JWKS stops its tokens within `remember` at most, less than the JWKS refresh
// (AUTH_JWKS_REFRESH, 5 minutes) already allows.
//
//   Callers callers(verifier, {.remember = absl::Seconds(60), .capacity = 20000});
//   absl::StatusOr<int64_t> user_id = callers.UserId(AuthorizationMetadata(context), absl::Now());
//
// Thread-safe. Only verified tokens are remembered, never refusals; when `capacity` tokens are
// remembered the memory is emptied and starts again (a token seen again is verified again).
#ifndef CONCERT_PAYMENT_SERVER_CALLERS_H_
#define CONCERT_PAYMENT_SERVER_CALLERS_H_

#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/jwt.h"

namespace concert::payment {

class Callers {
 public:
  struct Options {
    // How long a verified token is taken as verified (bounded by its own expiry).
    absl::Duration remember = absl::Seconds(60);
    // Tokens remembered at most, each about its length (a few hundred bytes) plus 50: 20,000
    // (an opening's fans on one replica) take a few MiB.
    size_t capacity = 20000;
  };

  Callers(jwt::Verifier& verifier, Options options);

  // The user id of the caller whose authorization metadata is `header` ("" when absent), or
  // UNAUTHENTICATED (or UNAVAILABLE, while JWKS keys are missing) as jwt::Verifier says.
  absl::StatusOr<int64_t> UserId(absl::string_view header, absl::Time now);

 private:
  struct Known {
    int64_t user_id;
    absl::Time valid_until;
  };

  jwt::Verifier& verifier_;
  const Options options_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Known> known_ ABSL_GUARDED_BY(mu_);
};

}  // namespace concert::payment

#endif  // CONCERT_PAYMENT_SERVER_CALLERS_H_
