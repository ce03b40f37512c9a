#include "common/testing/settings.h"

#include <utility>

namespace concert::testing {

Settings SettingsOf(const std::string& program, std::map<std::string, std::string> env,
                    std::vector<const char*> args) {
  args.insert(args.begin(), program.c_str());
  return Settings(program, static_cast<int>(args.size()), args.data(),
                  [env = std::move(env)](const char* name) -> const char* {
                    auto it = env.find(name);
                    return it == env.end() ? nullptr : it->second.c_str();
                  });
}

}  // namespace concert::testing
