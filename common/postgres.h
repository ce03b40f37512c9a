// Postgres helpers on libpqxx 6.4: a bounded connection pool that recovers when the server comes
// back, transactions with bounded retries of serialization failures and deadlocks, the single
// conversion of libpqxx exceptions into absl::Status, and a migration runner.
//
//   PgPool pool({.url = url, .size = 8, .prepare = [](pqxx::connection& c) {
//     c.prepare("lock_reservation", "SELECT ... FOR UPDATE");
//   }});
//   absl::Status s = pool.Transact([&](pqxx::work& tx) -> absl::Status {
//     pqxx::result r = tx.exec_prepared("lock_reservation", id);
//     ...
//     return absl::OkStatus();  // commits; an error status rolls back
//   });
//
// Thread-safe. Every call blocks: never call it from a gRPC callback-reactor thread.
#ifndef CONCERT_COMMON_POSTGRES_H_
#define CONCERT_COMMON_POSTGRES_H_

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <pqxx/pqxx>

#include "absl/strings/string_view.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace concert {

// Converts what libpqxx throws: a broken connection is UNAVAILABLE (retry later), an unknown
// commit outcome is UNKNOWN, constraint violations are ALREADY_EXISTS / FAILED_PRECONDITION,
// serialization failures and deadlocks are ABORTED (safe to retry), the rest INTERNAL.
absl::Status StatusFromException(const std::exception& e);

// Adds connect_timeout and TCP keepalives to a libpq URL or key=value string when it has none,
// so that a dead server is noticed in seconds rather than at the kernel's TCP timeout.
std::string WithConnectDefaults(const std::string& url);

class PgPool {
 public:
  struct Options {
    std::string url;
    // Connections opened at most; callers beyond it wait up to acquire_timeout.
    int size = 8;
    absl::Duration acquire_timeout = absl::Seconds(5);
    // Runs on each new connection (prepared statements, session settings).
    std::function<void(pqxx::connection&)> prepare;
    // Attempts of one Transact() (or idempotent Execute()) when it fails with ABORTED
    // (serialization, deadlock) or with a connection that broke before commit.
    int max_attempts = 3;
  };

  explicit PgPool(Options options);
  ~PgPool();
  PgPool(const PgPool&) = delete;
  PgPool& operator=(const PgPool&) = delete;

  // Runs `body` in a read-committed transaction and commits when it returns OK.
  absl::Status Transact(const std::function<absl::Status(pqxx::work&)>& body);
  enum class Retry {
    // A broken connection leaves a write's outcome unknown (UNAVAILABLE): the caller decides.
    kNever,
    // Retried like Transact (ABORTED, UNAVAILABLE): for a body whose repeat answers as its first
    // run would have, whether or not that run committed.
    kIdempotent,
  };
  // Runs `body` without a transaction block: each statement commits on its own, in one round
  // trip (Transact needs three for one statement).
  absl::Status Execute(const std::function<absl::Status(pqxx::nontransaction&)>& body,
                       Retry retry = Retry::kNever);

  int in_use() const;
  int waiting() const;
  int size() const { return options_.size; }

 private:
  absl::StatusOr<std::unique_ptr<pqxx::connection>> Acquire();
  void Release(std::unique_ptr<pqxx::connection> conn);

  Options options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_;
  int open_ = 0;  // connections handed out or idle
  int in_use_ = 0;
  int waiting_ = 0;
};

struct Migration {
  int version;
  absl::string_view name;
  absl::string_view sql;
};

// Creates `schema` and applies the migrations it has not seen yet, in version order, in one
// transaction under an advisory lock: several replicas starting at once apply each exactly once.
absl::Status Migrate(const std::string& url, absl::string_view schema,
                     const std::vector<Migration>& migrations);

}  // namespace concert

#endif  // CONCERT_COMMON_POSTGRES_H_
