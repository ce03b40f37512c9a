#include "common/postgres.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"

namespace concert {
namespace {

// SQLSTATEs that describe the server, not the statement: the same statement succeeds once the
// server recovers, so callers wait and retry instead of treating the data as refused.
bool ServerCannotServe(absl::string_view state) {
  return absl::StartsWith(state, "08") ||  // connection exception
         absl::StartsWith(state, "57") ||  // operator intervention: shutdown, cancelled
         absl::StartsWith(state, "53") ||  // insufficient resources: disk full, memory, connections
         absl::StartsWith(state, "58") ||  // system error: I/O error
         state == "25006" ||               // read-only: a standby, or a primary demoted by failover
         state == "55P03";                 // lock not available within lock_timeout
}

}  // namespace

absl::Status StatusFromException(const std::exception& e) {
  std::string what = e.what();
  while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
  if (dynamic_cast<const pqxx::in_doubt_error*>(&e)) {
    return absl::UnknownError(absl::StrCat("commit outcome unknown: ", what));
  }
  if (dynamic_cast<const pqxx::broken_connection*>(&e)) {
    return absl::UnavailableError(absl::StrCat("database unavailable: ", what));
  }
  if (dynamic_cast<const pqxx::serialization_failure*>(&e) ||
      dynamic_cast<const pqxx::deadlock_detected*>(&e)) {
    return absl::AbortedError(what);
  }
  if (dynamic_cast<const pqxx::unique_violation*>(&e)) return absl::AlreadyExistsError(what);
  if (dynamic_cast<const pqxx::integrity_constraint_violation*>(&e)) {
    return absl::FailedPreconditionError(what);
  }
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    if (ServerCannotServe(sql->sqlstate())) {
      return absl::UnavailableError(absl::StrCat("database unavailable: ", what));
    }
  }
  return absl::InternalError(what);
}

std::string WithConnectDefaults(const std::string& url) {
  if (absl::StrContains(url, "connect_timeout")) return url;
  const char* params = "connect_timeout=5&keepalives_idle=10&keepalives_interval=5&keepalives_count=3";
  bool is_uri = absl::StartsWith(url, "postgres://") || absl::StartsWith(url, "postgresql://");
  if (!is_uri) {
    std::string kv = params;
    for (char& c : kv) {
      if (c == '&') c = ' ';
    }
    return absl::StrCat(url, " ", kv);
  }
  return absl::StrCat(url, absl::StrContains(url, "?") ? "&" : "?", params);
}

PgPool::PgPool(Options options) : options_(std::move(options)) {
  options_.url = WithConnectDefaults(options_.url);
}

PgPool::~PgPool() = default;

int PgPool::in_use() const {
  std::lock_guard lock(mu_);
  return in_use_;
}

int PgPool::waiting() const {
  std::lock_guard lock(mu_);
  return waiting_;
}

absl::StatusOr<std::unique_ptr<pqxx::connection>> PgPool::Acquire() {
  std::unique_lock lock(mu_);
  ++waiting_;
  bool got = cv_.wait_for(lock, absl::ToChronoMilliseconds(options_.acquire_timeout), [&] {
    return !idle_.empty() || open_ < options_.size;
  });
  --waiting_;
  if (!got) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no database connection free within ",
                     absl::FormatDuration(options_.acquire_timeout), " (pool size ",
                     options_.size, ")"));
  }
  ++in_use_;
  if (!idle_.empty()) {
    auto conn = std::move(idle_.back());
    idle_.pop_back();
    return conn;
  }
  ++open_;
  lock.unlock();
  try {
    auto conn = std::make_unique<pqxx::connection>(options_.url);
    if (options_.prepare) options_.prepare(*conn);
    return conn;
  } catch (const std::exception& e) {
    lock.lock();
    --open_;
    --in_use_;
    cv_.notify_one();
    return StatusFromException(e);
  }
}

void PgPool::Release(std::unique_ptr<pqxx::connection> conn) {
  std::lock_guard lock(mu_);
  --in_use_;
  if (conn && conn->is_open()) {
    idle_.push_back(std::move(conn));
  } else {
    --open_;
  }
  cv_.notify_one();
}

namespace {

// Whether an attempt that ended with `status` may run again: a serialization failure or
// deadlock rolled it back, and a broken connection is reopened.
bool Retryable(const absl::Status& status) {
  return status.code() == absl::StatusCode::kAborted ||
         status.code() == absl::StatusCode::kUnavailable;
}

}  // namespace

absl::Status PgPool::Transact(const std::function<absl::Status(pqxx::work&)>& body) {
  absl::Status status;
  for (int attempt = 1; attempt <= options_.max_attempts; ++attempt) {
    ASSIGN_OR_RETURN(std::unique_ptr<pqxx::connection> conn, Acquire());
    bool committing = false;
    try {
      pqxx::work tx(*conn);
      status = body(tx);
      if (status.ok()) {
        committing = true;
        tx.commit();
      }
    } catch (const std::exception& e) {
      status = StatusFromException(e);
      if (status.code() == absl::StatusCode::kUnavailable) conn.reset();  // reconnect next time
      // A connection that broke during COMMIT leaves the outcome unknown: never retry that.
      if (committing && status.code() == absl::StatusCode::kUnavailable) {
        status = absl::UnknownError(absl::StrCat("commit outcome unknown: ", status.message()));
      }
    }
    Release(std::move(conn));
    if (!Retryable(status)) return status;
    if (attempt < options_.max_attempts) {
      log::Debug("retrying transaction", {{"attempt", attempt}, {"error", std::string(status.message())}});
    }
  }
  return status;
}

absl::Status PgPool::Execute(const std::function<absl::Status(pqxx::nontransaction&)>& body,
                             Retry retry) {
  int attempts = retry == Retry::kIdempotent ? options_.max_attempts : 1;
  absl::Status status;
  for (int attempt = 1; attempt <= attempts; ++attempt) {
    ASSIGN_OR_RETURN(std::unique_ptr<pqxx::connection> conn, Acquire());
    try {
      pqxx::nontransaction tx(*conn);
      status = body(tx);
    } catch (const std::exception& e) {
      status = StatusFromException(e);
      if (status.code() == absl::StatusCode::kUnavailable) conn.reset();  // reconnect next time
    }
    Release(std::move(conn));
    if (!Retryable(status)) return status;
    if (attempt < attempts) {
      log::Debug("retrying statement", {{"attempt", attempt}, {"error", std::string(status.message())}});
    }
  }
  return status;
}

absl::Status Migrate(const std::string& url, absl::string_view schema,
                     const std::vector<Migration>& migrations) {
  try {
    pqxx::connection conn(WithConnectDefaults(url));
    pqxx::work tx(conn);
    tx.exec_params("SELECT pg_advisory_xact_lock(hashtext($1))", std::string(schema));
    tx.exec(absl::StrCat("CREATE SCHEMA IF NOT EXISTS ", schema));
    tx.exec(absl::StrCat("CREATE TABLE IF NOT EXISTS ", schema,
                         ".schema_migrations (version int PRIMARY KEY, name text NOT NULL, "
                         "applied_at timestamptz NOT NULL DEFAULT now())"));
    int applied = tx.exec1(absl::StrCat("SELECT coalesce(max(version), 0) FROM ", schema,
                                        ".schema_migrations"))[0]
                      .as<int>();
    for (const Migration& m : migrations) {
      if (m.version <= applied) continue;
      tx.exec(std::string(m.sql));
      tx.exec_params(absl::StrCat("INSERT INTO ", schema,
                                  ".schema_migrations (version, name) VALUES ($1, $2)"),
                     m.version, std::string(m.name));
      log::Info("migration applied", {{"schema", std::string(schema)}, {"version", m.version}, {"name", std::string(m.name)}});
    }
    tx.commit();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return Annotate(StatusFromException(e), absl::StrCat("migrating schema ", schema));
  }
}

}  // namespace concert
