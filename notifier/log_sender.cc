#include "notifier/log_sender.h"

#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace concert::notifier {

LogSender::LogSender(std::string path) : path_(std::move(path)) {}

SendResult LogSender::Send(const Notification& notification) {
  if (notification.still_ours && !notification.still_ours()) return SendResult::NotOurs();
  nlohmann::json line = {
      {"ts", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone())},
      {"event_id", notification.event_id},
      {"reservation_id", notification.reservation_id},
      {"chat_id", notification.chat_id},
      {"text", notification.text}};
  std::string text =
      line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  {
    std::lock_guard lock(mu_);
    std::error_code ec;
    std::filesystem::path parent = std::filesystem::path(path_).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    FILE* file = std::fopen(path_.c_str(), "a");
    if (file == nullptr) {
      return SendResult::Transient("io", absl::StrCat("cannot open ", path_));
    }
    bool written = std::fwrite(text.data(), 1, text.size(), file) == text.size();
    written = (std::fclose(file) == 0) && written;
    if (!written) return SendResult::Transient("io", absl::StrCat("cannot write ", path_));
  }
  log::Info("notification (log sender)", {{"event_id", notification.event_id},
                                          {"reservation_id", notification.reservation_id},
                                          {"chat_id", notification.chat_id},
                                          {"text", notification.text}});
  return SendResult::Sent();
}

}  // namespace concert::notifier
