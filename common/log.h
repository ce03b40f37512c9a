// Structured logs: one JSON object per line on stderr, e.g.
//   {"ts":"2026-11-25T04:31:07.123Z","level":"info","service":"notifier",
//    "msg":"notification sent","event_id":"5a0c..."}
//
//   log::Init("notifier");
//   log::Info("notification sent", {{"event_id", id}, {"latency_ms", 42}});
//
// Thread-safe: lines from different threads never interleave. The libraries' own lines come
// here too, so that every line on stderr is JSON: Init() routes gRPC's (gpr_log, with fields
// grpc_file and grpc_line), and every Kafka client made through common/kafka/cluster.h routes
// librdkafka's (fields kafka_client and kafka_facility, its syslog level mapped to ours).
// libpqxx discards Postgres notices unless a connection registers an errorhandler.
#ifndef CONCERT_COMMON_LOG_H_
#define CONCERT_COMMON_LOG_H_

#include "absl/strings/string_view.h"

#include <nlohmann/json.hpp>

namespace concert::log {

enum class Level { kDebug, kInfo, kWarn, kError };

// Names the service in every line, drops lines below `min_level`, and takes over gRPC's log.
void Init(absl::string_view service, Level min_level = Level::kInfo);
// "debug", "info", "warn" or "error"; false when the name is none of those.
bool ParseLevel(absl::string_view name, Level* level);

void Write(Level level, absl::string_view msg, nlohmann::json fields = nlohmann::json::object());

inline void Debug(absl::string_view msg, nlohmann::json fields = nlohmann::json::object()) {
  Write(Level::kDebug, msg, std::move(fields));
}
inline void Info(absl::string_view msg, nlohmann::json fields = nlohmann::json::object()) {
  Write(Level::kInfo, msg, std::move(fields));
}
inline void Warn(absl::string_view msg, nlohmann::json fields = nlohmann::json::object()) {
  Write(Level::kWarn, msg, std::move(fields));
}
inline void Error(absl::string_view msg, nlohmann::json fields = nlohmann::json::object()) {
  Write(Level::kError, msg, std::move(fields));
}

}  // namespace concert::log

#endif  // CONCERT_COMMON_LOG_H_
