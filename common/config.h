// Configuration: every setting has an environment variable (KAFKA_BOOTSTRAP_SERVERS) and a flag
// of the same meaning (--kafka-bootstrap-servers=...); a flag wins over the environment, the
// environment over the default. Each binary reads all of its settings into one options struct,
// then calls Validate(): a bad value stops the process with one line naming the setting (and,
// for numbers and durations, the allowed range).
//
//   Settings s("notifier", argc, argv);
//   NotifierOptions o;
//   o.database_url = s.RequiredString("DATABASE_URL", "Postgres connection URL");
//   o.kafka = s.KafkaBootstrapServers("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "Kafka brokers");
//   s.ExitIfInvalid();  // --help prints every setting read so far with its default
//
// Read every setting unconditionally (before branching on another setting), so that --help and
// the deploy manifests' check see the complete list. Not thread-safe; use it from main().
#ifndef CONCERT_COMMON_CONFIG_H_
#define CONCERT_COMMON_CONFIG_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

namespace concert {

class Settings {
 public:
  using GetEnv = std::function<const char*(const char*)>;

  // argv[0] is skipped. Arguments that do not start with "--" are positional (subcommands).
  Settings(std::string program, int argc, const char* const* argv, GetEnv getenv = nullptr);

  std::string String(absl::string_view name, absl::string_view default_value, absl::string_view help);
  // Empty or unset is an error.
  std::string RequiredString(absl::string_view name, absl::string_view help);
  // Within [min, max], both shown by --help.
  int64_t Int(absl::string_view name, int64_t default_value, int64_t min, int64_t max,
              absl::string_view help);
  // "250ms", "30s", "5m" or a plain number of seconds, within [min, max] (shown by --help).
  // Choose the bounds where the setting is read: a minimum that cannot busy-loop, a maximum
  // that still makes sense for what the value does (and that the library it is passed to
  // accepts). "inf" and "nan", which absl parses, are never accepted.
  absl::Duration Duration(absl::string_view name, absl::Duration default_value,
                          absl::Duration min, absl::Duration max, absl::string_view help);
  // true/false, 1/0, yes/no, on/off.
  bool Bool(absl::string_view name, bool default_value, absl::string_view help);
  // A comma-separated list of host:port pairs.
  std::string KafkaBootstrapServers(absl::string_view name, absl::string_view default_value,
                                    absl::string_view help);
  // A single host:port to listen on; port 0 asks the kernel for a free one.
  std::string ListenAddress(absl::string_view name, absl::string_view default_value,
                            absl::string_view help);
  // A shared secret (default empty): unset or at least `min_bytes` long, so that a guessable
  // value such as "x" cannot start a service. The value never appears in an error.
  std::string Secret(absl::string_view name, size_t min_bytes, absl::string_view help);

  const std::vector<std::string>& positional() const { return positional_; }
  bool help_requested() const { return help_requested_; }

  // Records a problem found by a check across settings (e.g. a first backoff longer than the
  // longest); it is reported like a bad value of `name`.
  void Fail(absl::string_view name, absl::string_view problem);

  // The first problem found: a bad value (naming its setting) or an unknown flag.
  absl::Status Validate() const;
  // Every setting read so far: name, flag, default and help, one per line.
  std::string Help() const;
  // --help: prints Help() and exits 0. Invalid: prints "<program>: <error>" and exits 2.
  void ExitIfInvalid() const;

 private:
  struct Described {
    std::string name, default_value, allowed, help;  // allowed: "" or "<min> to <max>"
  };
  std::optional<std::string> Lookup(absl::string_view name, absl::string_view default_value,
                                    absl::string_view help, absl::string_view allowed = "");

  std::string program_;
  GetEnv getenv_;
  std::map<std::string, std::string, std::less<>> flags_;  // flag name -> value
  std::vector<std::string> positional_;
  bool help_requested_ = false;
  std::vector<Described> described_;
  std::vector<std::string> errors_;
  std::vector<std::string> used_flags_;
};

// "KAFKA_BOOTSTRAP_SERVERS" -> "kafka-bootstrap-servers".
std::string FlagNameFor(absl::string_view setting);

// The whole content of a file a setting names (a certificate, a mounted Secret); nullopt when it
// cannot be read.
std::optional<std::string> ReadSettingFile(const std::string& path);

}  // namespace concert

#endif  // CONCERT_COMMON_CONFIG_H_
