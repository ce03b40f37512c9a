#include "common/log.h"

#include <grpc/support/log.h>

#include <cstdio>
#include <mutex>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace concert::log {
namespace {

std::mutex mu;
std::string service_name = "concert";
Level threshold = Level::kInfo;

const char* LevelName(Level level) {
  switch (level) {
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarn: return "warn";
    case Level::kError: return "error";
  }
  return "info";
}

// gRPC's own lines (gpr_log: a port it cannot bind, a broken channel), which it would otherwise
// print to stderr in its own format.
void WriteGrpcLine(gpr_log_func_args* args) {
  Level level = args->severity == GPR_LOG_SEVERITY_ERROR  ? Level::kError
                : args->severity == GPR_LOG_SEVERITY_INFO ? Level::kInfo
                                                          : Level::kDebug;
  Write(level, args->message, {{"grpc_file", args->file}, {"grpc_line", args->line}});
}

}  // namespace

void Init(absl::string_view service, Level min_level) {
  {
    std::lock_guard lock(mu);
    service_name = std::string(service);
    threshold = min_level;
  }
  gpr_set_log_function(WriteGrpcLine);
}

bool ParseLevel(absl::string_view name, Level* level) {
  for (Level l : {Level::kDebug, Level::kInfo, Level::kWarn, Level::kError}) {
    if (name == LevelName(l)) {
      *level = l;
      return true;
    }
  }
  return false;
}

void Write(Level level, absl::string_view msg, nlohmann::json fields) {
  nlohmann::json line = nlohmann::json::object();
  line["ts"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  line["level"] = LevelName(level);
  {
    std::lock_guard lock(mu);
    if (level < threshold) return;
    line["service"] = service_name;
  }
  line["msg"] = std::string(msg);
  if (fields.is_object()) line.update(fields);
  // Replace invalid UTF-8 instead of throwing: a log line must never take the process down.
  std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text.push_back('\n');
  std::lock_guard lock(mu);
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

}  // namespace concert::log
