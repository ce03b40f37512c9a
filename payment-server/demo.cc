#include "payment-server/demo.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/postgres.h"
#include "common/status.h"
#include "payment-server/schema.h"

namespace concert::payment {
namespace {

constexpr int kSeats = 50;
constexpr int64_t kPriceWon = 50000;
constexpr int kUsers = 3;
constexpr int64_t kBalanceWon = 1000000;

}  // namespace

absl::StatusOr<DemoData> SeedDemo(const std::string& database_url) {
  RETURN_IF_ERROR(MigrateSchema(database_url));
  PgPool pool({.url = database_url, .size = 1});
  DemoData demo;
  absl::Status status = pool.Transact([&](pqxx::work& tx) -> absl::Status {
    demo = DemoData();
    tx.exec("SELECT pg_advisory_xact_lock(hashtext('payment.seed-demo'))");
    // Fixed ids 1..3 so that the README's `mint-token --user-id=1` works on every machine.
    for (int i = 1; i <= kUsers; ++i) {
      tx.exec_params(
          "INSERT INTO payment.users (id, name, mail, balance_won) VALUES ($1, $2, $3, $4) "
          "ON CONFLICT (id) DO NOTHING",
          i, absl::StrCat("demo-user-", i), absl::StrCat("user", i, "@example.com"), kBalanceWon);
    }
    tx.exec(
        "SELECT setval('payment.users_id_seq', greatest((SELECT max(id) FROM payment.users), 1))");
    pqxx::result concert =
        tx.exec_params("SELECT id FROM payment.concerts WHERE title = $1 ORDER BY id LIMIT 1",
                       std::string(kDemoConcertTitle));
    if (concert.empty()) {
      int64_t concert_id = tx.exec_params1("INSERT INTO payment.concerts (title) VALUES ($1) "
                                           "RETURNING id",
                                           std::string(kDemoConcertTitle))[0]
                               .as<int64_t>();
      int64_t schedule_id =
          tx.exec_params1("INSERT INTO payment.schedules (concert_id, starts_at) VALUES "
                          "($1, date_trunc('hour', now()) + interval '30 days 19 hours') "
                          "RETURNING id",
                          concert_id)[0]
              .as<int64_t>();
      tx.exec_params(
          "INSERT INTO payment.seats (schedule_id, seat_number, price_won) "
          "SELECT $1, n, $2 FROM generate_series(1, $3) AS n",
          schedule_id, kPriceWon, kSeats);
      demo.concert_id = concert_id;
    } else {
      demo.concert_id = concert[0][0].as<int64_t>();
    }
    pqxx::row schedule = tx.exec_params1(
        "SELECT s.id, c.title, to_char(s.starts_at AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM payment.schedules s "
        "JOIN payment.concerts c ON c.id = s.concert_id WHERE c.id = $1 ORDER BY s.id LIMIT 1",
        demo.concert_id);
    demo.schedule_id = schedule[0].as<int64_t>();
    demo.concert_title = schedule[1].as<std::string>();
    demo.starts_at = schedule[2].as<std::string>();
    for (const auto& row : tx.exec_params(
             "SELECT id, price_won FROM payment.seats WHERE schedule_id = $1 ORDER BY id",
             demo.schedule_id)) {
      demo.seat_ids.push_back(row[0].as<int64_t>());
      demo.price_won = row[1].as<int64_t>();
    }
    for (const auto& row : tx.exec_params(
             "SELECT id, mail, balance_won FROM payment.users WHERE id <= $1 ORDER BY id",
             kUsers)) {
      demo.user_ids.push_back(row[0].as<int64_t>());
      demo.user_mails.push_back(row[1].as<std::string>());
      demo.user_balances_won.push_back(row[2].as<int64_t>());
    }
    return absl::OkStatus();
  });
  RETURN_IF_ERROR(status);
  return demo;
}

std::string DescribeDemo(const DemoData& demo) {
  std::string out = absl::StrCat("concert ", demo.concert_id, " \"", demo.concert_title,
                                 "\", schedule ", demo.schedule_id, " starting ", demo.starts_at,
                                 "\n");
  if (!demo.seat_ids.empty()) {
    absl::StrAppend(&out, "seats ", demo.seat_ids.front(), "..", demo.seat_ids.back(), " (",
                    demo.seat_ids.size(), " seats) at ", demo.price_won, " won each\n");
  }
  for (size_t i = 0; i < demo.user_ids.size(); ++i) {
    absl::StrAppend(&out, "user ", demo.user_ids[i], " <", demo.user_mails[i], "> balance ",
                    demo.user_balances_won[i], " won\n");
  }
  absl::StrAppend(&out, "token: payment-server mint-token --user-id=",
                  demo.user_ids.empty() ? 1 : demo.user_ids.front(), "\n");
  return out;
}

}  // namespace concert::payment
