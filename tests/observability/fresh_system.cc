// The whole system just started, for `check_observability.py --live`: the four services on a
// scratch database of the test Postgres and on the test Kafka (CONCERT_TEST_DATABASE_URL,
// CONCERT_TEST_KAFKA), with no traffic at all, so that the check sees what a fresh start
// exports. Prints "target <service> <host:port>" for each metrics endpoint, then "ready", and
// keeps the system up until its standard input closes.
#include <iostream>
#include <string>

#include "common/testing/environment.h"
#include "tests/e2e/system.h"

int main() {
  concert::testing::ScratchDatabase db("observability");
  concert::e2e::System system(
      {.database_url = db.url(), .kafka_bootstrap = concert::testing::KafkaBootstrap()});
  if (absl::Status started = system.Start(); !started.ok()) {
    std::cerr << "the system did not start: " << started << "\nlogs: " << system.LogPaths()
              << "\n";
    return 1;
  }
  for (const concert::e2e::System::MetricsTarget& t : system.MetricsTargets()) {
    std::cout << "target " << t.service << " " << t.address << "\n";
  }
  std::cout << "ready" << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
  }
  return 0;
}
