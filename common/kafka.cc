#include "common/kafka.h"

#include <librdkafka/rdkafka.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/log.h"
#include "common/status.h"

namespace concert::kafka {
namespace {

// librdkafka's log lines (a broker down, a request timed out), through our logger instead of
// its own "%3|<time>|FAIL|<client>| ..." lines on stderr. Called on librdkafka's threads.
void WriteKafkaLine(const rd_kafka_t* rk, int syslog_level, const char* facility,
                    const char* message) {
  log::Level level = syslog_level <= 3   ? log::Level::kError
                     : syslog_level == 4 ? log::Level::kWarn
                     : syslog_level <= 6 ? log::Level::kInfo
                                         : log::Level::kDebug;
  log::Write(level, message, {{"kafka_client", rd_kafka_name(rk)}, {"kafka_facility", facility}});
}

// Every configuration a client is made from passes here (MakeConf, EnsureTopics).
void RouteLogs(rd_kafka_conf_t* conf) { rd_kafka_conf_set_log_cb(conf, WriteKafkaLine); }

}  // namespace

Config ProducerConfig(const std::string& bootstrap_servers, const std::string& client_id) {
  return {
      {"bootstrap.servers", bootstrap_servers},
      {"client.id", client_id},
      {"enable.idempotence", "true"},
      {"acks", "all"},
      {"linger.ms", "5"},
      {"batch.num.messages", "10000"},
      {"compression.type", "lz4"},
      // Keep retrying across a broker restart; delivery fails only after this long.
      {"message.timeout.ms", "120000"},
      {"reconnect.backoff.max.ms", "2000"},
  };
}

Config ConsumerConfig(const std::string& bootstrap_servers, const std::string& group_id,
                      const std::string& client_id) {
  return {
      {"bootstrap.servers", bootstrap_servers},
      {"group.id", group_id},
      {"client.id", client_id},
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"auto.offset.reset", "earliest"},
      {"partition.assignment.strategy", "range"},
      {"session.timeout.ms", "10000"},
      {"heartbeat.interval.ms", "1000"},
      {"reconnect.backoff.max.ms", "2000"},
  };
}

absl::StatusOr<std::unique_ptr<RdKafka::Conf>> MakeConf(const Config& config) {
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  // Kept unless a caller sets an event_cb, whose EVENT_LOG events then carry these lines.
  RouteLogs(conf->c_ptr_global());
  std::string error;
  for (const auto& [key, value] : config) {
    if (conf->set(key, value, error) != RdKafka::Conf::CONF_OK) {
      return absl::InvalidArgumentError(absl::StrCat("kafka setting ", key, "=", value, ": ", error));
    }
  }
  return conf;
}

absl::Status StatusFromError(RdKafka::ErrorCode code, absl::string_view context) {
  if (code == RdKafka::ERR_NO_ERROR) return absl::OkStatus();
  std::string message = absl::StrCat(context, ": ", RdKafka::err2str(code));
  switch (code) {
    case RdKafka::ERR__TRANSPORT:
    case RdKafka::ERR__ALL_BROKERS_DOWN:
    case RdKafka::ERR__TIMED_OUT:
    case RdKafka::ERR__MSG_TIMED_OUT:
    case RdKafka::ERR_REQUEST_TIMED_OUT:
    case RdKafka::ERR_NOT_ENOUGH_REPLICAS:
    case RdKafka::ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
    case RdKafka::ERR_LEADER_NOT_AVAILABLE:
    case RdKafka::ERR_NOT_LEADER_FOR_PARTITION:
    case RdKafka::ERR__QUEUE_FULL:
      return absl::UnavailableError(message);
    case RdKafka::ERR_MSG_SIZE_TOO_LARGE:
    case RdKafka::ERR_INVALID_MSG_SIZE:
    case RdKafka::ERR_INVALID_MSG:
    case RdKafka::ERR_INVALID_RECORD:
      return absl::InvalidArgumentError(message);
    case RdKafka::ERR__UNKNOWN_TOPIC:
    case RdKafka::ERR_UNKNOWN_TOPIC_OR_PART:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status EnsureTopics(const std::string& bootstrap_servers, const std::vector<TopicSpec>& topics,
                          absl::Duration timeout) {
  char error[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  RouteLogs(conf);
  if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap_servers.c_str(), error,
                        sizeof error) != RD_KAFKA_CONF_OK) {
    rd_kafka_conf_destroy(conf);
    return absl::InvalidArgumentError(error);
  }
  rd_kafka_t* admin = rd_kafka_new(RD_KAFKA_PRODUCER, conf, error, sizeof error);
  if (admin == nullptr) return absl::InternalError(absl::StrCat("kafka admin client: ", error));

  std::vector<rd_kafka_NewTopic_t*> new_topics;
  for (const TopicSpec& t : topics) {
    new_topics.push_back(rd_kafka_NewTopic_new(t.name.c_str(), t.partitions, t.replication_factor,
                                               error, sizeof error));
  }
  rd_kafka_AdminOptions_t* options = rd_kafka_AdminOptions_new(admin, RD_KAFKA_ADMIN_OP_CREATETOPICS);
  rd_kafka_AdminOptions_set_operation_timeout(options, static_cast<int>(absl::ToInt64Milliseconds(timeout)),
                                              error, sizeof error);
  rd_kafka_AdminOptions_set_request_timeout(options, static_cast<int>(absl::ToInt64Milliseconds(timeout)),
                                            error, sizeof error);
  rd_kafka_queue_t* queue = rd_kafka_queue_new(admin);
  rd_kafka_CreateTopics(admin, new_topics.data(), new_topics.size(), options, queue);

  absl::Status status = absl::DeadlineExceededError("creating topics: no answer from Kafka");
  rd_kafka_event_t* event = rd_kafka_queue_poll(queue, static_cast<int>(absl::ToInt64Milliseconds(timeout)) + 1000);
  if (event != nullptr) {
    if (rd_kafka_event_error(event) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      status = absl::UnavailableError(absl::StrCat("creating topics: ", rd_kafka_event_error_string(event)));
    } else {
      status = absl::OkStatus();
      size_t count = 0;
      const rd_kafka_topic_result_t** results =
          rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(event), &count);
      for (size_t i = 0; i < count; ++i) {
        rd_kafka_resp_err_t err = rd_kafka_topic_result_error(results[i]);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
          status = StatusFromError(static_cast<RdKafka::ErrorCode>(err),
                                   absl::StrCat("creating topic ", rd_kafka_topic_result_name(results[i])));
          break;
        }
      }
    }
    rd_kafka_event_destroy(event);
  }
  rd_kafka_queue_destroy(queue);
  rd_kafka_AdminOptions_destroy(options);
  rd_kafka_NewTopic_destroy_array(new_topics.data(), new_topics.size());
  rd_kafka_destroy(admin);
  return status;
}

std::optional<std::string> HeaderValue(const RdKafka::Message& message, absl::string_view name) {
  // headers() is not const in librdkafka 2.0.2 but does not modify the message.
  RdKafka::Headers* headers = const_cast<RdKafka::Message&>(message).headers();
  if (headers == nullptr) return std::nullopt;
  RdKafka::Headers::Header last = headers->get_last(std::string(name));
  if (last.err() != RdKafka::ERR_NO_ERROR || last.value() == nullptr) return std::nullopt;
  return std::string(static_cast<const char*>(last.value()), last.value_size());
}

Headers AllHeaders(const RdKafka::Message& message) {
  Headers out;
  // headers() is not const in librdkafka 2.0.2 but does not modify the message.
  RdKafka::Headers* headers = const_cast<RdKafka::Message&>(message).headers();
  if (headers == nullptr) return out;
  for (const RdKafka::Headers::Header& h : headers->get_all()) {
    out.emplace_back(h.key(), h.value() == nullptr
                                  ? std::string()
                                  : std::string(static_cast<const char*>(h.value()), h.value_size()));
  }
  return out;
}

class Producer::DeliveryReporter : public RdKafka::DeliveryReportCb {
 public:
  void dr_cb(RdKafka::Message& message) override {
    std::unique_ptr<Callback> done(static_cast<Callback*>(message.msg_opaque()));
    if (done) (*done)(StatusFromError(message.err(), "delivering to " + message.topic_name()));
  }
};

absl::StatusOr<std::unique_ptr<Producer>> Producer::Create(const Config& config) {
  ASSIGN_OR_RETURN(std::unique_ptr<RdKafka::Conf> conf, MakeConf(config));
  auto reporter = std::make_unique<DeliveryReporter>();
  std::string error;
  if (conf->set("dr_cb", reporter.get(), error) != RdKafka::Conf::CONF_OK) {
    return absl::InternalError(error);
  }
  std::unique_ptr<RdKafka::Producer> raw(RdKafka::Producer::create(conf.get(), error));
  if (!raw) return absl::InvalidArgumentError(absl::StrCat("kafka producer: ", error));
  std::unique_ptr<Producer> producer(new Producer(std::move(raw)));
  producer->reporter_ = std::move(reporter);
  return producer;
}

Producer::Producer(std::unique_ptr<RdKafka::Producer> producer) : producer_(std::move(producer)) {
  poller_ = std::thread([this] {
    while (!stop_.load()) producer_->poll(100);
  });
}

Producer::~Producer() {
  producer_->flush(10'000);
  stop_ = true;
  poller_.join();
  producer_->poll(0);  // callbacks of what failed during the flush
}

absl::Status Producer::Produce(Record record, Callback done) {
  RETURN_IF_ERROR(FatalError());
  auto* opaque = new Callback(std::move(done));
  RdKafka::Headers* headers = RdKafka::Headers::create();
  for (const auto& [name, value] : record.headers) headers->add(name, value.data(), value.size());
  while (true) {
    RdKafka::ErrorCode code = producer_->produce(
        record.topic, record.partition, RdKafka::Producer::RK_MSG_COPY,
        record.value.data(), record.value.size(), record.key.data(), record.key.size(),
        /*timestamp=*/0, headers, opaque);
    if (code == RdKafka::ERR_NO_ERROR) return absl::OkStatus();  // headers now owned by librdkafka
    if (code != RdKafka::ERR__QUEUE_FULL) {
      delete headers;
      delete opaque;
      return StatusFromError(code, absl::StrCat("producing to ", record.topic));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the poll thread drains it
  }
}

absl::Status Producer::ProduceAndWait(Record record, absl::Duration timeout) {
  auto result = std::make_shared<std::pair<absl::Notification, absl::Status>>();
  RETURN_IF_ERROR(Produce(std::move(record), [result](const absl::Status& status) {
    result->second = status;
    result->first.Notify();
  }));
  if (!result->first.WaitForNotificationWithTimeout(timeout)) {
    return absl::DeadlineExceededError("no acknowledgement from Kafka in time");
  }
  return result->second;
}

absl::Status Producer::Flush(absl::Duration timeout) {
  return StatusFromError(producer_->flush(static_cast<int>(absl::ToInt64Milliseconds(timeout))),
                         "flushing producer");
}

absl::Status Producer::FatalError() {
  std::string reason;
  RdKafka::ErrorCode code = producer_->fatal_error(reason);
  if (code == RdKafka::ERR_NO_ERROR) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("fatal producer error: ", reason));
}

}  // namespace concert::kafka
