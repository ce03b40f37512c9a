// Against the real local Postgres (scripts/postgres.sh), in a scratch database per test.
#include "common/postgres.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/testing/environment.h"

namespace concert {
namespace {

using ::concert::testing::ScratchDatabase;

int64_t Count(const std::string& url, const std::string& table) {
  pqxx::connection conn(url);
  pqxx::nontransaction tx(conn);
  return tx.exec1("SELECT count(*) FROM " + table)[0].as<int64_t>();
}

TEST(PostgresTest, ServerIsConfiguredForLogicalReplication) {
  pqxx::connection conn(testing::AdminDatabaseUrl());
  pqxx::nontransaction tx(conn);
  EXPECT_EQ(tx.exec1("SHOW wal_level")[0].as<std::string>(), "logical");
  EXPECT_EQ(tx.exec1("SELECT current_database()")[0].as<std::string>(), "concert");
}

TEST(PostgresTest, PoolCommitsOnOkAndRollsBackOnError) {
  ScratchDatabase db("pg");
  PgPool pool({.url = db.url(), .size = 2, .prepare = [](pqxx::connection& c) {
                 c.prepare("add", "INSERT INTO items (name) VALUES ($1)");
               }});
  ASSERT_TRUE(pool.Transact([](pqxx::work& tx) {
                    tx.exec("CREATE TABLE items (id serial PRIMARY KEY, name text UNIQUE)");
                    return absl::OkStatus();
                  }).ok());
  // Prepared on connections opened before the table existed: libpqxx prepares lazily.
  EXPECT_TRUE(pool.Transact([](pqxx::work& tx) {
                    tx.exec_prepared("add", "kept");
                    return absl::OkStatus();
                  }).ok());
  absl::Status rolled_back = pool.Transact([](pqxx::work& tx) {
    tx.exec_prepared("add", "dropped");
    return absl::FailedPreconditionError("changed my mind");
  });
  EXPECT_EQ(rolled_back.code(), absl::StatusCode::kFailedPrecondition);
  absl::Status duplicate = pool.Transact([](pqxx::work& tx) {
    tx.exec_prepared("add", "kept");
    return absl::OkStatus();
  });
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kAlreadyExists) << duplicate;

  pqxx::connection conn(db.url());
  pqxx::nontransaction tx(conn);
  pqxx::result rows = tx.exec("SELECT name FROM items ORDER BY id");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0][0].as<std::string>(), "kept");
  EXPECT_EQ(pool.in_use(), 0);
}

// A statement whose connection breaks under it has an unknown outcome: Execute leaves it to the
// caller unless the statement is idempotent, which it runs again on a new connection.
TEST(PostgresTest, ExecuteRetriesABrokenConnectionOnlyForIdempotentStatements) {
  ScratchDatabase db("pg");
  PgPool pool({.url = db.url(), .size = 2, .max_attempts = 3});
  int runs = 0;
  auto dies_first = [&](pqxx::nontransaction& tx) -> absl::Status {
    if (++runs == 1) tx.exec("SELECT pg_terminate_backend(pg_backend_pid())");
    return absl::OkStatus();
  };
  absl::Status once = pool.Execute(dies_first);
  EXPECT_EQ(once.code(), absl::StatusCode::kUnavailable) << once;
  EXPECT_EQ(runs, 1);

  runs = 0;
  absl::Status again = pool.Execute(dies_first, PgPool::Retry::kIdempotent);
  EXPECT_TRUE(again.ok()) << again;
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(pool.in_use(), 0);
}

TEST(PostgresTest, UnreachableServerIsUnavailable) {
  PgPool pool({.url = "postgresql://concert:concert@127.0.0.1:1/concert", .size = 1});
  absl::Status s = pool.Transact([](pqxx::work&) { return absl::OkStatus(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_EQ(pool.in_use(), 0);
}

TEST(PostgresTest, MigrationsApplyOnceEvenWhenRunTwice) {
  ScratchDatabase db("migrate");
  std::vector<Migration> migrations = {
      {1, "create", "CREATE TABLE demo.things (id int PRIMARY KEY)"},
      {2, "seed", "INSERT INTO demo.things VALUES (1), (2)"},
  };
  ASSERT_TRUE(Migrate(db.url(), "demo", migrations).ok());
  ASSERT_TRUE(Migrate(db.url(), "demo", migrations).ok());
  EXPECT_EQ(Count(db.url(), "demo.things"), 2);
  EXPECT_EQ(Count(db.url(), "demo.schema_migrations"), 2);

  migrations.push_back({3, "broken", "INSERT INTO demo.nothing VALUES (1)"});
  absl::Status s = Migrate(db.url(), "demo", migrations);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), ::testing::HasSubstr("migrating schema demo"));
  EXPECT_EQ(Count(db.url(), "demo.schema_migrations"), 2);
}

TEST(PostgresTest, ConnectDefaultsAreAddedOnce) {
  EXPECT_EQ(WithConnectDefaults("postgresql://u@h/db"),
            "postgresql://u@h/db?connect_timeout=5&keepalives_idle=10&keepalives_interval=5"
            "&keepalives_count=3");
  EXPECT_EQ(WithConnectDefaults("postgresql://u@h/db?sslmode=disable").find("?sslmode=disable&"),
            std::string("postgresql://u@h/db").size());
  EXPECT_EQ(WithConnectDefaults("host=h connect_timeout=2"), "host=h connect_timeout=2");
}

}  // namespace
}  // namespace concert
