#include "payment-server/callers.h"

#include <algorithm>

namespace concert::payment {

Callers::Callers(jwt::Verifier& verifier, Options options)
    : verifier_(verifier), options_(options) {}

absl::StatusOr<int64_t> Callers::UserId(absl::string_view header, absl::Time now) {
  {
    absl::MutexLock lock(&mu_);
    if (auto it = known_.find(header); it != known_.end()) {
      if (now < it->second.valid_until) return it->second.user_id;
      known_.erase(it);
    }
  }
  absl::StatusOr<jwt::Claims> claims = verifier_.VerifyAuthorization(header, now);
  if (!claims.ok()) return claims.status();
  absl::StatusOr<int64_t> user_id = jwt::UserIdOf(*claims);
  if (!user_id.ok()) return user_id.status();
  absl::MutexLock lock(&mu_);
  if (known_.size() >= options_.capacity) known_.clear();
  known_.insert_or_assign(std::string(header),
                          Known{*user_id, std::min(claims->expires_at, now + options_.remember)});
  return *user_id;
}

}  // namespace concert::payment
