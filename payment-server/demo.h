// Demo data for a newcomer (`payment-server seed-demo`, run by `make up`): one concert with one
// schedule and 50 seats at 50,000 won, and users 1..3 with 1,000,000 won and a mail address.
// Idempotent: a second run finds the same concert and users and changes nothing.
//
//   ASSIGN_OR_RETURN(DemoData demo, SeedDemo(url));
//   std::cout << DescribeDemo(demo);
//
// Thread-safe (concurrent runs serialize on an advisory lock).
#ifndef CONCERT_PAYMENT_SERVER_DEMO_H_
#define CONCERT_PAYMENT_SERVER_DEMO_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace concert::payment {

inline constexpr char kDemoConcertTitle[] = "Demo Concert: Kafka Unplugged";

struct DemoData {
  int64_t concert_id = 0;
  int64_t schedule_id = 0;
  std::string concert_title;
  std::string starts_at;  // ISO 8601, UTC
  int64_t price_won = 0;
  std::vector<int64_t> seat_ids;  // ascending
  std::vector<int64_t> user_ids;
  std::vector<std::string> user_mails;
  std::vector<int64_t> user_balances_won;
};

// Applies the migrations first, so it works on an empty database.
absl::StatusOr<DemoData> SeedDemo(const std::string& database_url);

// Human-readable lines: the ids to use and how to get a token.
std::string DescribeDemo(const DemoData& demo);

}  // namespace concert::payment

#endif  // CONCERT_PAYMENT_SERVER_DEMO_H_
