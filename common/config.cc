#include "common/config.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace concert {
namespace {

bool ValidHostPort(absl::string_view hp, bool allow_port_zero) {
  size_t colon = hp.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) return false;
  absl::string_view host = hp.substr(0, colon);
  if (host.front() == '[' && host.back() != ']') return false;
  for (char c : host) {
    if (!(absl::ascii_isalnum(c) || c == '.' || c == '-' || c == '_' || c == '[' || c == ']' ||
          c == ':'))
      return false;
  }
  int port = 0;
  if (!absl::SimpleAtoi(hp.substr(colon + 1), &port)) return false;
  return port <= 65535 && (port > 0 || (allow_port_zero && port == 0));
}

}  // namespace

std::string FlagNameFor(absl::string_view setting) {
  std::string flag = absl::AsciiStrToLower(setting);
  for (char& c : flag) {
    if (c == '_') c = '-';
  }
  return flag;
}

Settings::Settings(std::string program, int argc, const char* const* argv, GetEnv getenv)
    : program_(std::move(program)), getenv_(std::move(getenv)) {
  if (!getenv_) getenv_ = [](const char* name) { return std::getenv(name); };
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (!absl::ConsumePrefix(&arg, "--")) {
      positional_.emplace_back(arg);
      continue;
    }
    if (arg == "help") {
      help_requested_ = true;
      continue;
    }
    size_t eq = arg.find('=');
    if (eq == absl::string_view::npos) {
      // "--flag value" or a bare boolean "--flag".
      if (i + 1 < argc && absl::string_view(argv[i + 1]).substr(0, 2) != "--") {
        flags_[std::string(arg)] = argv[++i];
      } else {
        flags_[std::string(arg)] = "true";
      }
    } else {
      flags_[std::string(arg.substr(0, eq))] = std::string(arg.substr(eq + 1));
    }
  }
}

std::optional<std::string> Settings::Lookup(absl::string_view name, absl::string_view default_value,
                                            absl::string_view help, absl::string_view allowed) {
  described_.push_back(
      {std::string(name), std::string(default_value), std::string(allowed), std::string(help)});
  std::string flag = FlagNameFor(name);
  if (auto it = flags_.find(flag); it != flags_.end()) {
    used_flags_.push_back(flag);
    return it->second;
  }
  if (const char* env = getenv_(std::string(name).c_str()); env != nullptr) return env;
  return std::nullopt;
}

void Settings::Fail(absl::string_view name, absl::string_view problem) {
  errors_.push_back(absl::StrCat("invalid setting ", name, " (--", FlagNameFor(name), "): ", problem));
}

std::string Settings::String(absl::string_view name, absl::string_view default_value,
                             absl::string_view help) {
  return Lookup(name, default_value, help).value_or(std::string(default_value));
}

std::string Settings::RequiredString(absl::string_view name, absl::string_view help) {
  std::string value = Lookup(name, "(required)", help).value_or("");
  if (absl::StripAsciiWhitespace(value).empty()) Fail(name, "missing; it is required");
  return value;
}

int64_t Settings::Int(absl::string_view name, int64_t default_value, int64_t min, int64_t max,
                      absl::string_view help) {
  std::string allowed = absl::StrCat(min, " to ", max);
  std::optional<std::string> raw = Lookup(name, absl::StrCat(default_value), help, allowed);
  if (!raw) return default_value;
  int64_t value = 0;
  if (!absl::SimpleAtoi(*raw, &value)) {
    Fail(name, absl::StrCat("'", *raw, "' is not an integer; allowed: ", allowed));
    return default_value;
  }
  if (value < min || value > max) {
    Fail(name, absl::StrCat("'", *raw, "' is outside the allowed range ", allowed));
    return default_value;
  }
  return value;
}

absl::Duration Settings::Duration(absl::string_view name, absl::Duration default_value,
                                  absl::Duration min, absl::Duration max, absl::string_view help) {
  std::string allowed = absl::StrCat(absl::FormatDuration(min), " to ", absl::FormatDuration(max));
  std::optional<std::string> raw =
      Lookup(name, absl::FormatDuration(default_value), help, allowed);
  if (!raw) return default_value;
  absl::Duration value;
  double seconds = 0;
  bool parsed;
  if (absl::SimpleAtod(*raw, &seconds)) {
    // SimpleAtod accepts "inf" and "nan", which are no interval at all.
    parsed = std::isfinite(seconds);
    if (parsed) value = absl::Seconds(seconds);
  } else {
    parsed = absl::ParseDuration(*raw, &value);
  }
  if (!parsed) {
    Fail(name, absl::StrCat("'", *raw, "' is not a duration (examples: 250ms, 30s, 5m); allowed: ",
                            allowed));
    return default_value;
  }
  // ParseDuration accepts "inf"; the range check rejects it with every other value too large.
  if (value < min || value > max) {
    Fail(name, absl::StrCat("'", *raw, "' is outside the allowed range ", allowed));
    return default_value;
  }
  return value;
}

bool Settings::Bool(absl::string_view name, bool default_value, absl::string_view help) {
  std::optional<std::string> raw = Lookup(name, default_value ? "true" : "false", help);
  if (!raw) return default_value;
  std::string v = absl::AsciiStrToLower(*raw);
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  Fail(name, absl::StrCat("'", *raw, "' is not a boolean (true/false)"));
  return default_value;
}

std::string Settings::KafkaBootstrapServers(absl::string_view name, absl::string_view default_value,
                                            absl::string_view help) {
  std::string value = String(name, default_value, help);
  if (value.empty()) {
    Fail(name, "missing; expected host:port[,host:port...]");
    return value;
  }
  for (absl::string_view server : absl::StrSplit(value, ',')) {
    if (!ValidHostPort(absl::StripAsciiWhitespace(server), /*allow_port_zero=*/false)) {
      Fail(name, absl::StrCat("'", server, "' is not host:port"));
      break;
    }
  }
  return value;
}

std::string Settings::ListenAddress(absl::string_view name, absl::string_view default_value,
                                    absl::string_view help) {
  std::string value = String(name, default_value, help);
  if (!ValidHostPort(value, /*allow_port_zero=*/true)) {
    Fail(name, absl::StrCat("'", value, "' is not host:port"));
  }
  return value;
}

std::string Settings::Secret(absl::string_view name, size_t min_bytes, absl::string_view help) {
  std::optional<std::string> value =
      Lookup(name, "", help, absl::StrCat("empty, or at least ", min_bytes, " bytes"));
  if (value && !value->empty() && value->size() < min_bytes) {
    Fail(name, absl::StrCat(value->size(), " bytes is too short to be a secret; use at least ",
                            min_bytes, " random bytes (e.g. openssl rand -hex ", min_bytes, ")"));
  }
  return value.value_or("");
}

absl::Status Settings::Validate() const {
  if (!errors_.empty()) return absl::InvalidArgumentError(errors_.front());
  for (const auto& [flag, value] : flags_) {
    if (std::find(used_flags_.begin(), used_flags_.end(), flag) == used_flags_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", flag, " (see --help for the settings)"));
    }
  }
  return absl::OkStatus();
}

std::string Settings::Help() const {
  std::string out = absl::StrCat("Settings of ", program_,
                                 " (environment variable, or the flag beside it):\n");
  for (const Described& d : described_) {
    absl::StrAppend(&out, "  ", d.name, "  --", FlagNameFor(d.name), "  [default: ",
                    d.default_value.empty() ? "\"\"" : d.default_value, "]");
    if (!d.allowed.empty()) absl::StrAppend(&out, "  [allowed: ", d.allowed, "]");
    absl::StrAppend(&out, "\n      ", d.help, "\n");
  }
  return out;
}

void Settings::ExitIfInvalid() const {
  if (help_requested_) {
    std::cout << Help();
    std::exit(0);
  }
  if (absl::Status status = Validate(); !status.ok()) {
    std::cerr << program_ << ": " << status.message() << "\n";
    std::exit(2);
  }
}

std::optional<std::string> ReadSettingFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream content;
  content << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return content.str();
}

}  // namespace concert
