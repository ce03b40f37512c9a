// The fixture of tests that run the whole system (System) on a scratch database of their own.
//
//   class PoisonTest : public SystemTest {
//    protected:
//     PoisonTest() : SystemTest("poison") {}
//   };
//   TEST_F(PoisonTest, ...) {
//     ASSERT_NO_FATAL_FAILURE(StartSystem({.users = 4}));  // a failed start ends the test
//     ... system_->...
//   }
//
// StartSystem fills in the database and Kafka and waits until every service serves; TearDown
// stops the services before the database is dropped, and names their logs when the test failed.
#ifndef CONCERT_TESTS_E2E_SYSTEM_TEST_H_
#define CONCERT_TESTS_E2E_SYSTEM_TEST_H_

#include <iostream>
#include <memory>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "tests/e2e/system.h"

namespace concert::e2e {

class SystemTest : public ::testing::Test {
 protected:
  explicit SystemTest(const std::string& database_prefix) : db_(database_prefix) {}

  void StartSystem(SystemOptions options) {
    options.database_url = db_.url();
    options.kafka_bootstrap = testing::KafkaBootstrap();
    system_ = std::make_unique<System>(std::move(options));
    absl::Status started = system_->Start();
    ASSERT_TRUE(started.ok()) << started;
  }

  void TearDown() override {
    if (HasFailure() && system_ != nullptr) {
      std::cerr << "service logs: " << system_->LogPaths() << "\n";
    }
    system_.reset();  // services stop before the database goes
  }

  testing::ScratchDatabase db_;
  std::unique_ptr<System> system_;
};

}  // namespace concert::e2e

#endif  // CONCERT_TESTS_E2E_SYSTEM_TEST_H_
