#include "common/backoff.h"

#include <algorithm>
#include <mutex>
#include <random>

namespace concert {

absl::Duration BackoffDelay(int failed_attempt, const BackoffPolicy& policy, double random01) {
  int doublings = std::clamp(failed_attempt, 1, 64) - 1;
  absl::Duration wait = policy.base;
  // Stop doubling once past the cap: no overflow however large the attempt number.
  for (int i = 0; i < doublings && wait < policy.cap; ++i) wait *= 2;
  wait = std::min(wait, policy.cap);
  double jitter = std::clamp(policy.jitter_percent, 0, 100) / 100.0;
  double factor = 1.0 - jitter * (1.0 - std::clamp(random01, 0.0, 1.0));
  return wait * factor;
}

double UniformRandom() {
  static std::mutex mu;
  static std::mt19937_64 engine{std::random_device{}()};
  std::lock_guard lock(mu);
  return std::uniform_real_distribution<double>(0.0, 1.0)(engine);
}

}  // namespace concert
