// Settings read from an environment and a command line the test gives, not the process's: what
// the tests of every ReadOptions and Read* function build their Settings from.
//
//   Settings s = testing::SettingsOf("notifier", {{"DATABASE_URL", "x"}}, {"--log-level=warn"});
//   Options o = ReadOptions(s);
//   EXPECT_THAT(s.Validate().message(), HasSubstr("LOG_LEVEL"));
#ifndef CONCERT_COMMON_TESTING_SETTINGS_H_
#define CONCERT_COMMON_TESTING_SETTINGS_H_

#include <map>
#include <string>
#include <vector>

#include "common/config.h"

namespace concert::testing {

// `program` names the binary in Settings' messages; `args` follow it on the command line.
Settings SettingsOf(const std::string& program, std::map<std::string, std::string> env,
                    std::vector<const char*> args = {});

}  // namespace concert::testing

#endif  // CONCERT_COMMON_TESTING_SETTINGS_H_
