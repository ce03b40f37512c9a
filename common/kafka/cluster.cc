#include "common/kafka/cluster.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/kafka/internal/client.h"
#include "common/log.h"

namespace concert::kafka {
namespace {

// A property whose value must never reach a log line or an error message.
bool IsSecret(absl::string_view key) {
  return absl::StrContains(key, "password") || absl::StrContains(key, "secret");
}

}  // namespace

namespace internal {

Config WithClusterProperties(Config config, const Cluster& cluster) {
  for (const auto& [key, value] : cluster.client_properties) config[key] = value;
  return config;
}

std::string Shown(const std::string& key, const std::string& value) {
  return absl::StrCat(key, "=", IsSecret(key) ? "(hidden)" : value);
}

void WriteKafkaLine(const rd_kafka_t* rk, int syslog_level, const char* facility,
                    const char* message) {
  log::Level level = syslog_level <= 3   ? log::Level::kError
                     : syslog_level == 4 ? log::Level::kWarn
                     : syslog_level <= 6 ? log::Level::kInfo
                                         : log::Level::kDebug;
  log::Write(level, message, {{"kafka_client", rd_kafka_name(rk)}, {"kafka_facility", facility}});
}

}  // namespace internal

namespace {

using internal::Shown;
using internal::WithClusterProperties;

constexpr char kRefusalPayload[] = "concert.kafka/refused";

// Every configuration a long-lived client is made from passes here (MakeConf).
void RouteLogs(rd_kafka_conf_t* conf) {
  rd_kafka_conf_set_log_cb(conf, internal::WriteKafkaLine);
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

absl::Status AsRefusal(absl::Status status) {
  status.SetPayload(kRefusalPayload, absl::Cord("1"));
  return status;
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
      // Longer than a coordinator's failover (a dead broker is fenced after its 9 s broker
      // session, then the group is loaded on the new one): librdkafka gives up its membership
      // when no heartbeat answer came for this long, and a group rejoining from scratch then
      // waits for its ghosts' sessions as well. 20 s is also how long a crashed member's
      // partitions wait.
      {"session.timeout.ms", "20000"},
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

}  // namespace concert::kafka
