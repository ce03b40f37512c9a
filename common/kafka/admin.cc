#include "common/kafka/admin.h"

#include <librdkafka/rdkafka.h>

#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/kafka/internal/client.h"
#include "common/log.h"

namespace concert::kafka {
namespace {

using internal::Shown;
using internal::WithClusterProperties;
using internal::WriteKafkaLine;

// Errors that mean Kafka turned this client away, as opposed to being unreachable or busy.
bool IsSecurityError(rd_kafka_resp_err_t err) {
  switch (err) {
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR__SSL:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_SASL_MECHANISM:
      return true;
    default:
      return false;
  }
}

// A broker's TLS alert (no client certificate where one is required) reaches librdkafka
// as a receive failure, reported only in a log line: recognised by OpenSSL's and SASL's words.
bool SaysRefused(absl::string_view line) {
  return absl::StrContains(line, "SSL routines") || absl::StrContains(line, "SSL handshake") ||
         absl::StrContains(line, "SASL authentication");
}

// "[thrd:x]: <reason> (after 5ms in state Y)" -> "<reason>": the same refusal reads the same
// at every retry.
std::string Reason(absl::string_view line) {
  if (absl::StartsWith(line, "[thrd:")) {
    size_t end = line.find("]: ");
    if (end != absl::string_view::npos) line.remove_prefix(end + 3);
  }
  if (size_t after = line.find(" (after "); after != absl::string_view::npos) {
    line = line.substr(0, after);
  }
  return std::string(line);
}

// What the admin client of EnsureTopics saw while it waited, from its error callback (our
// thread) and its log callback (librdkafka's threads).
class ConnectionErrors {
 public:
  void Record(absl::string_view line, bool refusal) {
    std::lock_guard lock(mu_);
    last_ = Reason(line);
    if (refusal && refusal_.empty()) refusal_ = last_;
  }
  std::string refusal() const {
    std::lock_guard lock(mu_);
    return refusal_;
  }
  std::string last() const {
    std::lock_guard lock(mu_);
    return last_;
  }

 private:
  mutable std::mutex mu_;
  std::string refusal_, last_;
};

void RecordError(rd_kafka_t*, int err, const char* reason, void* opaque) {
  static_cast<ConnectionErrors*>(opaque)->Record(
      reason, IsSecurityError(static_cast<rd_kafka_resp_err_t>(err)));
}

// The admin client's failures come back in EnsureTopics' status, which its callers log (once,
// for a refusal): its own lines go to the debug level, or they would repeat at every retry.
void RecordLine(const rd_kafka_t* rk, int syslog_level, const char* facility, const char* message) {
  WriteKafkaLine(rk, /*syslog_level=*/7, facility, message);
  if (syslog_level <= 4) {
    static_cast<ConnectionErrors*>(rd_kafka_opaque(rk))->Record(message, SaysRefused(message));
  }
}

// A topic result that no retry can fix: the cluster refuses the topic as configured.
bool IsTopicRefusal(rd_kafka_resp_err_t err) {
  switch (err) {
    case RD_KAFKA_RESP_ERR_INVALID_REPLICATION_FACTOR:
    case RD_KAFKA_RESP_ERR_INVALID_CONFIG:
    case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
      return true;
    default:
      return false;
  }
}

}  // namespace

absl::Status EnsureTopics(const Cluster& cluster, const std::vector<TopicSpec>& topics,
                          absl::Duration timeout) {
  char error[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set_log_cb(conf, RecordLine);
  ConnectionErrors errors;
  rd_kafka_conf_set_opaque(conf, &errors);
  rd_kafka_conf_set_error_cb(conf, RecordError);
  Config config = WithClusterProperties({{"bootstrap.servers", cluster.bootstrap_servers}}, cluster);
  for (const auto& [key, value] : config) {
    if (rd_kafka_conf_set(conf, key.c_str(), value.c_str(), error, sizeof error) !=
        RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      return absl::InvalidArgumentError(absl::StrCat("kafka setting ", Shown(key, value), ": ", error));
    }
  }
  rd_kafka_t* admin = rd_kafka_new(RD_KAFKA_PRODUCER, conf, error, sizeof error);
  if (admin == nullptr) return absl::InvalidArgumentError(absl::StrCat("kafka admin client: ", error));

  std::vector<rd_kafka_NewTopic_t*> new_topics;
  for (const TopicSpec& t : topics) {
    rd_kafka_NewTopic_t* topic = rd_kafka_NewTopic_new(t.name.c_str(), t.partitions,
                                                       cluster.replication_factor, error, sizeof error);
    if (cluster.min_insync_replicas > 0) {
      rd_kafka_NewTopic_set_config(topic, "min.insync.replicas",
                                   std::to_string(cluster.min_insync_replicas).c_str());
    }
    new_topics.push_back(topic);
  }
  int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
  rd_kafka_AdminOptions_t* options = rd_kafka_AdminOptions_new(admin, RD_KAFKA_ADMIN_OP_CREATETOPICS);
  rd_kafka_AdminOptions_set_operation_timeout(options, timeout_ms, error, sizeof error);
  rd_kafka_AdminOptions_set_request_timeout(options, timeout_ms, error, sizeof error);
  rd_kafka_queue_t* queue = rd_kafka_queue_new(admin);
  rd_kafka_CreateTopics(admin, new_topics.data(), new_topics.size(), options, queue);

  // Waits for the answer while serving the error callback: a refused handshake never
  // answers, and must not look like a slow broker.
  rd_kafka_event_t* event = nullptr;
  absl::Time deadline = absl::Now() + timeout + absl::Seconds(1);
  while (event == nullptr && errors.refusal().empty() && absl::Now() < deadline) {
    event = rd_kafka_queue_poll(queue, 100);
    rd_kafka_poll(admin, 0);
  }
  absl::Status status;
  if (!errors.refusal().empty()) {
    status = AsRefusal(absl::UnauthenticatedError(
        absl::StrCat("Kafka refused the connection: ", errors.refusal())));
  } else if (event == nullptr) {
    status = absl::DeadlineExceededError(absl::StrCat(
        "creating topics: no answer from Kafka within ", absl::FormatDuration(timeout),
        errors.last().empty() ? "" : absl::StrCat(" (last error: ", errors.last(), ")")));
  } else if (rd_kafka_event_error(event) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    status = absl::UnavailableError(absl::StrCat("creating topics: ", rd_kafka_event_error_string(event)));
  } else {
    size_t count = 0;
    const rd_kafka_topic_result_t** results =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(event), &count);
    for (size_t i = 0; i < count && status.ok(); ++i) {
      rd_kafka_resp_err_t err = rd_kafka_topic_result_error(results[i]);
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) continue;
      std::string context = absl::StrCat("creating topic ", rd_kafka_topic_result_name(results[i]));
      if (IsTopicRefusal(err)) {
        const char* reason = rd_kafka_topic_result_error_string(results[i]);
        status = AsRefusal(absl::FailedPreconditionError(
            absl::StrCat(context, ": ", reason != nullptr ? reason : rd_kafka_err2str(err))));
      } else {
        status = StatusFromError(static_cast<RdKafka::ErrorCode>(err), context);
      }
    }
  }
  if (event != nullptr) rd_kafka_event_destroy(event);
  rd_kafka_queue_destroy(queue);
  rd_kafka_AdminOptions_destroy(options);
  rd_kafka_NewTopic_destroy_array(new_topics.data(), new_topics.size());
  rd_kafka_destroy(admin);
  return status;
}

}  // namespace concert::kafka
