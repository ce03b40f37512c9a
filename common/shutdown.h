// Graceful stop on SIGTERM or SIGINT. Call InstallStopHandler() first thing in main(), before
// any thread starts, so every thread inherits the blocked signal mask; then a watcher thread
// notifies StopRequested() on the first signal. A second signal exits at once (status 130).
//
//   int main(int argc, char** argv) {
//     concert::InstallStopHandler();
//     ...
//     worker.Run(concert::StopRequested());  // loops until notified
//   }
//
// Libraries take `const absl::Notification&` instead of calling StopRequested() themselves,
// so tests can stop them with a notification of their own.
#ifndef CONCERT_COMMON_SHUTDOWN_H_
#define CONCERT_COMMON_SHUTDOWN_H_

#include "absl/synchronization/notification.h"

namespace concert {

void InstallStopHandler();
absl::Notification& StopRequested();

}  // namespace concert

#endif  // CONCERT_COMMON_SHUTDOWN_H_
