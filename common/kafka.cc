#include "common/kafka.h"

#include <librdkafka/rdkafka.h>

#include <fstream>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "common/log.h"
#include "common/status.h"

namespace concert::kafka {
namespace {

constexpr char kRefusalPayload[] = "concert.kafka/refused";

absl::Status Refused(absl::Status status) {
  status.SetPayload(kRefusalPayload, absl::Cord("1"));
  return status;
}

// A property whose value must never reach a log line or an error message.
bool IsSecret(absl::string_view key) {
  return absl::StrContains(key, "password") || absl::StrContains(key, "secret");
}

std::string Shown(const std::string& key, const std::string& value) {
  return absl::StrCat(key, "=", IsSecret(key) ? "(hidden)" : value);
}

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

// Every configuration a long-lived client is made from passes here (MakeConf).
void RouteLogs(rd_kafka_conf_t* conf) { rd_kafka_conf_set_log_cb(conf, WriteKafkaLine); }

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

// A broker's TLS alert (no client certificate where one is required) reaches librdkafka 2.0.2
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

bool Readable(const std::string& path) { return std::ifstream(path).good(); }

// Reads a PEM file setting: its path, checked to be readable, or "" when unset.
std::string ReadPemPath(Settings& s, absl::string_view name, absl::string_view help) {
  std::string path = s.String(name, "", help);
  if (!path.empty() && !Readable(path)) s.Fail(name, absl::StrCat("cannot read '", path, "'"));
  return path;
}

// Every value librdkafka would refuse becomes a settings error naming `setting`.
void CheckProperties(Settings& s, absl::string_view setting, const Config& properties) {
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  std::string error;
  for (const auto& [key, value] : properties) {
    if (conf->set(key, value, error) != RdKafka::Conf::CONF_OK) {
      s.Fail(setting, absl::StrCat(Shown(key, value), ": ", error));
      return;
    }
  }
}

Config WithClusterProperties(Config config, const Cluster& cluster) {
  for (const auto& [key, value] : cluster.client_properties) config[key] = value;
  return config;
}

}  // namespace

Cluster ReadCluster(Settings& s) {
  Cluster c;
  c.bootstrap_servers =
      s.KafkaBootstrapServers("KAFKA_BOOTSTRAP_SERVERS", c.bootstrap_servers, "Kafka brokers");
  std::string protocol = absl::AsciiStrToUpper(
      s.String("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
               "PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS)"));
  std::string mechanism = absl::AsciiStrToUpper(
      s.String("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512",
               "with SASL: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN"));
  std::string username = s.String("KAFKA_SASL_USERNAME", "", "with SASL: the user");
  std::string password =
      s.String("KAFKA_SASL_PASSWORD", "", "with SASL: the password (never logged)");
  std::string password_file = s.String(
      "KAFKA_SASL_PASSWORD_FILE", "",
      "with SASL: a file holding the password instead (e.g. a mounted Secret)");
  std::string ca_file = ReadPemPath(s, "KAFKA_SSL_CA_FILE",
                                    "with TLS: PEM file of the CAs that signed the brokers' "
                                    "certificates; empty: the system's");
  std::string cert_file =
      ReadPemPath(s, "KAFKA_SSL_CERT_FILE", "with TLS: PEM client certificate (mTLS)");
  std::string key_file =
      ReadPemPath(s, "KAFKA_SSL_KEY_FILE", "with TLS: PEM private key of KAFKA_SSL_CERT_FILE");
  std::string extra = s.String(
      "KAFKA_PROPERTIES", "",
      "further librdkafka properties for every client, name=value;name=value (they win)");
  c.replication_factor = static_cast<int>(
      s.Int("KAFKA_TOPIC_REPLICATION_FACTOR", -1, -1, 1000,
            "replicas of topics this service creates; -1: the broker's default"));
  c.min_insync_replicas = static_cast<int>(
      s.Int("KAFKA_TOPIC_MIN_INSYNC_REPLICAS", 0, 0, 1000,
            "min.insync.replicas of topics this service creates; 0: the broker's default"));

  bool sasl = protocol == "SASL_PLAINTEXT" || protocol == "SASL_SSL";
  bool tls = protocol == "SSL" || protocol == "SASL_SSL";
  if (!sasl && !tls && protocol != "PLAINTEXT") {
    s.Fail("KAFKA_SECURITY_PROTOCOL",
           absl::StrCat("'", protocol, "' is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"));
  }
  c.client_properties["security.protocol"] = absl::AsciiStrToLower(protocol);
  if (sasl) {
    if (mechanism != "SCRAM-SHA-512" && mechanism != "SCRAM-SHA-256" && mechanism != "PLAIN") {
      s.Fail("KAFKA_SASL_MECHANISM",
             absl::StrCat("'", mechanism, "' is not SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN"));
    }
    if (!password_file.empty()) {
      if (!password.empty()) {
        s.Fail("KAFKA_SASL_PASSWORD_FILE", "set it or KAFKA_SASL_PASSWORD, not both");
      }
      std::optional<std::string> from_file = ReadSettingFile(password_file);
      if (!from_file) {
        s.Fail("KAFKA_SASL_PASSWORD_FILE", absl::StrCat("cannot read '", password_file, "'"));
      }
      password = std::string(absl::StripTrailingAsciiWhitespace(from_file.value_or("")));
    }
    if (username.empty()) s.Fail("KAFKA_SASL_USERNAME", absl::StrCat("required with ", protocol));
    if (password.empty()) {
      s.Fail("KAFKA_SASL_PASSWORD",
             absl::StrCat("required with ", protocol, " (or KAFKA_SASL_PASSWORD_FILE)"));
    }
    c.client_properties["sasl.mechanism"] = mechanism;
    c.client_properties["sasl.username"] = username;
    c.client_properties["sasl.password"] = password;
  } else if (!username.empty() || !password.empty() || !password_file.empty()) {
    s.Fail("KAFKA_SECURITY_PROTOCOL",
           absl::StrCat(protocol, " does not use KAFKA_SASL_USERNAME or its password: choose "
                                  "SASL_SSL or SASL_PLAINTEXT, or unset them"));
  }
  if (tls) {
    if (!ca_file.empty()) c.client_properties["ssl.ca.location"] = ca_file;
    if (cert_file.empty() != key_file.empty()) {
      s.Fail(cert_file.empty() ? "KAFKA_SSL_CERT_FILE" : "KAFKA_SSL_KEY_FILE",
             "KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together");
    }
    if (!cert_file.empty()) c.client_properties["ssl.certificate.location"] = cert_file;
    if (!key_file.empty()) c.client_properties["ssl.key.location"] = key_file;
  } else if (!ca_file.empty() || !cert_file.empty() || !key_file.empty()) {
    s.Fail("KAFKA_SECURITY_PROTOCOL",
           absl::StrCat(protocol, " does not use KAFKA_SSL_* files: choose SSL or SASL_SSL, or "
                                  "unset them"));
  }

  Config operator_properties;
  for (absl::string_view item : absl::StrSplit(extra, ';', absl::SkipWhitespace())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    std::string key(absl::StripAsciiWhitespace(kv.first));
    if (key.empty() || !absl::StrContains(item, '=')) {
      s.Fail("KAFKA_PROPERTIES", absl::StrCat("'", IsSecret(item) ? "(hidden)" : item,
                                              "' is not name=value"));
      continue;
    }
    operator_properties[key] = std::string(absl::StripAsciiWhitespace(kv.second));
  }
  CheckProperties(s, "KAFKA_PROPERTIES", operator_properties);
  for (const auto& [key, value] : operator_properties) c.client_properties[key] = value;

  if (c.replication_factor == 0) {
    s.Fail("KAFKA_TOPIC_REPLICATION_FACTOR", "0 is no replication factor; -1 or 1 and up");
  }
  if (c.replication_factor > 0 && c.min_insync_replicas > c.replication_factor) {
    s.Fail("KAFKA_TOPIC_MIN_INSYNC_REPLICAS",
           absl::StrCat(c.min_insync_replicas, " exceeds KAFKA_TOPIC_REPLICATION_FACTOR (",
                        c.replication_factor, "): no write could ever succeed"));
  }
  return c;
}

bool IsRefusal(const absl::Status& status) {
  return status.GetPayload(kRefusalPayload).has_value();
}

bool RefusalLog::Report(const absl::Status& status, absl::string_view what) {
  if (!IsRefusal(status)) {
    logged_.reset();
    return false;
  }
  // librdkafka words one refusal in more than one way (a TLS failure from its error callback
  // or from a log line): the kind of refusal, not its wording, says whether it is news.
  if (logged_ != status.code()) {
    log::Error(absl::StrCat(what, ": Kafka refused this service; retrying in the background, "
                                  "health NOT_SERVING until it accepts"),
               {{"error", std::string(status.message())}});
    logged_ = status.code();
  }
  return true;
}

Config ProducerConfig(const Cluster& cluster, const std::string& client_id) {
  return WithClusterProperties({
      {"bootstrap.servers", cluster.bootstrap_servers},
      {"client.id", client_id},
      {"enable.idempotence", "true"},
      {"acks", "all"},
      {"linger.ms", "5"},
      {"batch.num.messages", "10000"},
      {"compression.type", "lz4"},
      // Keep retrying across a broker restart; delivery fails only after this long.
      {"message.timeout.ms", "120000"},
      {"reconnect.backoff.max.ms", "2000"},
  }, cluster);
}

Config ConsumerConfig(const Cluster& cluster, const std::string& group_id,
                      const std::string& client_id) {
  return WithClusterProperties({
      {"bootstrap.servers", cluster.bootstrap_servers},
      {"group.id", group_id},
      {"client.id", client_id},
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"auto.offset.reset", "earliest"},
      {"partition.assignment.strategy", "range"},
      {"session.timeout.ms", "10000"},
      {"heartbeat.interval.ms", "1000"},
      {"reconnect.backoff.max.ms", "2000"},
  }, cluster);
}

absl::StatusOr<std::unique_ptr<RdKafka::Conf>> MakeConf(const Config& config) {
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  // Kept unless a caller sets an event_cb, whose EVENT_LOG events then carry these lines.
  RouteLogs(conf->c_ptr_global());
  std::string error;
  for (const auto& [key, value] : config) {
    if (conf->set(key, value, error) != RdKafka::Conf::CONF_OK) {
      return absl::InvalidArgumentError(absl::StrCat("kafka setting ", Shown(key, value), ": ", error));
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
    status = Refused(absl::UnauthenticatedError(
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
        status = Refused(absl::FailedPreconditionError(
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
