// LogSender: the sender used when no Telegram bot token is configured (local runs, `make up`).
// Each notification becomes one JSON line appended to a file (default
// .local/notifications.jsonl) and one log line, so a developer can see what would have been sent.
//
// Thread-safe (one mutex around the file).
#ifndef CONCERT_NOTIFIER_LOG_SENDER_H_
#define CONCERT_NOTIFIER_LOG_SENDER_H_

#include <mutex>
#include <string>

#include "notifier/sender.h"

namespace concert::notifier {

class LogSender final : public Sender {
 public:
  // The file's directory is created when missing.
  explicit LogSender(std::string path);

  // Permanent-free: a write error is transient ("io").
  SendResult Send(const Notification& notification) override;
  std::string name() const override { return "log"; }

 private:
  std::string path_;
  std::mutex mu_;
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_LOG_SENDER_H_
