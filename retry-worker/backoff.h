// Exponential backoff with jitter between delivery attempts of one failed message.
//
//   absl::Duration wait = BackoffDelay(/*failed_attempt=*/2, policy, UniformRandom());
//
// Pure function plus a thread-safe random source; no other state.
#ifndef CONCERT_RETRY_WORKER_BACKOFF_H_
#define CONCERT_RETRY_WORKER_BACKOFF_H_

#include <functional>

#include "absl/time/time.h"

namespace concert::retry {

struct BackoffPolicy {
  absl::Duration base = absl::Seconds(30);
  absl::Duration cap = absl::Minutes(10);
  // 0..100: share of the wait drawn at random ("full jitter" at 100).
  int jitter_percent = 100;
};

// min(cap, base * 2^(failed_attempt-1)), of which jitter_percent is scaled by `random01`
// (a number in [0, 1]): wait * (1 - jitter * (1 - random01)). failed_attempt < 1 counts as 1.
absl::Duration BackoffDelay(int failed_attempt, const BackoffPolicy& policy, double random01);

// A uniform number in [0, 1]; thread-safe.
double UniformRandom();

}  // namespace concert::retry

#endif  // CONCERT_RETRY_WORKER_BACKOFF_H_
