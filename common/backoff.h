// Exponential backoff: the one rule every retry loop of the project waits by.
//
//   // Between tries of one operation (Kafka, Postgres, Telegram down): 100 ms, 200 ms, ... 5 s.
//   Backoff backoff(absl::Milliseconds(100), absl::Seconds(5));
//   while (!(status = TryIt()).ok()) {
//     if (!backoff.Wait(stop)) return status;  // stop notified while waiting
//   }
//
//   // Between delivery attempts of one failed message, with jitter (retry-worker):
//   absl::Duration wait = BackoffDelay(/*failed_attempt=*/2, policy, UniformRandom());
//
// BackoffDelay is a pure function; UniformRandom is thread-safe; a Backoff object belongs to
// one loop (not thread-safe).
#ifndef CONCERT_COMMON_BACKOFF_H_
#define CONCERT_COMMON_BACKOFF_H_

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace concert {

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

// The waits of one retry loop: `initial` after the first failure, doubled after each further
// one, never more than `max`. No jitter: these loops wait for one dependency to come back, and
// each process has few of them.
class Backoff {
 public:
  Backoff(absl::Duration initial, absl::Duration max) : policy_{initial, max, 0} {}

  // The wait after one more failure.
  absl::Duration Next() { return BackoffDelay(++failures_, policy_, 1.0); }
  // After a success: the next failure waits `initial` again.
  void Reset() { failures_ = 0; }
  // Sleeps Next(); false, at once, when `stop` is (or gets) notified.
  bool Wait(const absl::Notification& stop) {
    return !stop.WaitForNotificationWithTimeout(Next());
  }

 private:
  BackoffPolicy policy_;
  int failures_ = 0;
};

}  // namespace concert

#endif  // CONCERT_COMMON_BACKOFF_H_
