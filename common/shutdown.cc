#include "common/shutdown.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <thread>

#include "common/log.h"

namespace concert {

absl::Notification& StopRequested() {
  static absl::Notification* stop = new absl::Notification();
  return *stop;
}

void InstallStopHandler() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // Writing to a closed socket must return EPIPE, not kill the process.
  signal(SIGPIPE, SIG_IGN);
  std::thread([set] {
    int signal_number = 0;
    sigwait(&set, &signal_number);
    log::Info("stop requested", {{"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"}});
    StopRequested().Notify();
    sigwait(&set, &signal_number);
    log::Warn("second stop signal: exiting at once");
    _exit(130);
  }).detach();
}

}  // namespace concert
