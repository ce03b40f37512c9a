#!/usr/bin/env bash
# scripts/postgres.sh — a private PostgreSQL 15 (Debian's packages) for development and tests,
# with its own data directory, listening on 127.0.0.1 only, wal_level=logical.
#
#   scripts/postgres.sh start              init on first use, start, wait until ready (idempotent)
#   scripts/postgres.sh stop [immediate]   pg_ctl stop -m fast (or -m immediate, for fault tests)
#   scripts/postgres.sh status             exit 0 iff running
#   scripts/postgres.sh psql [ARGS...]     psql as role concert on database concert
#
# Environment: PG_PORT (default 55432), PG_DIR (data directory, default .local/postgres),
# PG_START_TIMEOUT (seconds, default 30), PG_TLS (off; on: TLS as well, with a certificate for
# 127.0.0.1 from scripts/tls.sh in PG_DIR/tls, whose CA is PG_DIR/tls/ca.pem). Role concert,
# password concert, database concert:
#   postgresql://concert:concert@127.0.0.1:55432/concert
#   postgresql://concert:concert@127.0.0.1:55432/concert?sslmode=verify-full&sslrootcert=PG_DIR/tls/ca.pem
#
# PostgreSQL refuses to run as root: as root the server runs as the `postgres` system user
# (runuser), which owns PG_DIR and must be able to traverse every directory above it (as root,
# this script grants it that by ACL where it is missing, e.g. in a checkout under `mktemp -d`).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

PG_BIN=/usr/lib/postgresql/15/bin
PG_PORT=${PG_PORT:-55432}
PG_DIR=$(realpath -m "${PG_DIR:-$LOCAL/postgres}")
PG_START_TIMEOUT=${PG_START_TIMEOUT:-30}
PG_TLS=${PG_TLS:-off}
TLS_DIR="$PG_DIR/tls"
SOCK_DIR="$PG_DIR/socket"
LOG="$PG_DIR/server.log"
DATABASE_URL="postgresql://concert:concert@127.0.0.1:$PG_PORT/concert"

[[ -x "$PG_BIN/pg_ctl" ]] || die "PostgreSQL 15 not found in $PG_BIN: run scripts/install-deps.sh apt"
[[ "$PG_PORT" =~ ^[0-9]+$ ]] || die "PG_PORT must be a number, got '$PG_PORT'"
[[ "$PG_TLS" == on || "$PG_TLS" == off ]] || die "PG_TLS must be on or off, got '$PG_TLS'"

# as_pg CMD...: run CMD as the postgres system user when we are root, else as ourselves.
AS_PG=()
((EUID != 0)) || AS_PG=(runuser -u postgres --)
as_pg() { (cd / && "${AS_PG[@]}" "$@"); }

running() { [[ -f "$PG_DIR/PG_VERSION" ]] && as_pg "$PG_BIN/pg_ctl" status -D "$PG_DIR" >/dev/null 2>&1; }

# A checkout in a private directory (`mktemp -d` makes them 0700) hides PG_DIR from the server's
# user. Give that user search permission, and nothing more, on each directory above PG_DIR that
# it cannot pass, by ACL; where ACLs are not to be had, say what to change.
let_postgres_reach_pg_dir() {
  local d="" part parts
  IFS=/ read -r -a parts <<<"${PG_DIR#/}"
  for part in "${parts[@]}"; do
    d="$d/$part"
    runuser -u postgres -- test -x "$d" && continue
    command -v setfacl >/dev/null && setfacl -m u:postgres:x "$d" 2>/dev/null ||
      die "user postgres cannot reach $PG_DIR: $d is not searchable by it" \
        "($(stat -c '%A %U:%G' "$d")). Fix with 'chmod o+x $d', or set PG_DIR elsewhere."
    say "gave user postgres search permission (ACL u:postgres:x) on $d to reach $PG_DIR"
  done
}

# First use: create PG_DIR owned by the server's user and run initdb with our pg_hba.conf.
init_cluster() {
  mkdir -p "$PG_DIR"
  if ((EUID == 0)); then
    chown postgres:postgres "$PG_DIR"
    runuser -u postgres -- test -w "$PG_DIR" || let_postgres_reach_pg_dir
  fi
  chmod 700 "$PG_DIR"
  say "initdb in $PG_DIR"
  local out
  out=$(as_pg "$PG_BIN/initdb" -D "$PG_DIR" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 2>&1) || { echo "$out" >&2; die "initdb failed"; }
  # Unix sockets live in PG_DIR/socket (mode 700), reachable by the server's user and root
  # only, so they may trust. TCP: only 127.0.0.1, only role concert, with its password.
  as_pg tee "$PG_DIR/pg_hba.conf" >/dev/null <<'EOF'
# TYPE  DATABASE     USER      ADDRESS        METHOD
local   all          all                      trust
host    all          concert   127.0.0.1/32   scram-sha-256
host    replication  concert   127.0.0.1/32   scram-sha-256
EOF
  echo "include_if_exists = 'concert.conf'" | as_pg tee -a "$PG_DIR/postgresql.conf" >/dev/null
}

# With PG_TLS=on: the server's certificate and key, owned by the server's user (Postgres
# refuses a key others can read), and the lines that turn TLS on.
tls_config() {
  [[ "$PG_TLS" == on ]] || return 0
  "$ROOT/scripts/tls.sh" ca "$TLS_DIR" ca
  "$ROOT/scripts/tls.sh" cert "$TLS_DIR" ca server
  ((EUID != 0)) || chown postgres:postgres "$TLS_DIR/server.key" "$TLS_DIR/server.pem"
  printf '%s\n' "ssl = on" "ssl_cert_file = '$TLS_DIR/server.pem'" "ssl_key_file = '$TLS_DIR/server.key'"
}

# Settings rewritten at every start (so PG_PORT can change between runs).
write_config() {
  local tls
  tls=$(tls_config)
  as_pg tee "$PG_DIR/concert.conf" >/dev/null <<EOF
# Written by scripts/postgres.sh at every start; edits here are lost.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCK_DIR'
max_connections = 200
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
$tls
EOF
  as_pg mkdir -p -m 700 "$SOCK_DIR"
  # A Unix socket path is limited to 107 bytes.
  local sock="$SOCK_DIR/.s.PGSQL.$PG_PORT"
  ((${#sock} < 108)) || die "socket path too long (${#sock} > 107 bytes): $sock; use a shorter PG_DIR"
}

# Role and database for the services; runs at every start, changes nothing when present.
# The role is a superuser, which is acceptable for this local development instance only
# (it lets services create publications and replication slots without further grants).
ensure_role_and_db() {
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK_DIR" -p "$PG_PORT" -U postgres -d postgres <<'EOF' >/dev/null
SELECT format('CREATE ROLE concert LOGIN SUPERUSER REPLICATION CREATEDB PASSWORD %L', 'concert')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'concert') \gexec
SELECT 'CREATE DATABASE concert OWNER concert'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'concert') \gexec
EOF
}

start() {
  if running; then
    say "already running on 127.0.0.1:$PG_PORT (data: $PG_DIR)"
  else
    [[ -f "$PG_DIR/PG_VERSION" ]] || init_cluster
    write_config
    ! port_open 127.0.0.1 "$PG_PORT" || die "port 127.0.0.1:$PG_PORT is taken by another process"
    say "starting on 127.0.0.1:$PG_PORT (data: $PG_DIR, log: $LOG)"
    # setsid: the server gets its own session, so a Ctrl-C in this terminal does not reach it.
    if ! (cd / && setsid -w "${AS_PG[@]}" "$PG_BIN/pg_ctl" start -D "$PG_DIR" -l "$LOG" -w -t "$PG_START_TIMEOUT" >/dev/null) ||
       ! wait_until "$PG_START_TIMEOUT" "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
      tail -n 20 "$LOG" >&2 || true
      die "PostgreSQL did not become ready within ${PG_START_TIMEOUT}s (log above: $LOG)"
    fi
  fi
  ensure_role_and_db
  echo "DATABASE_URL=$DATABASE_URL"
}

stop() {
  local mode=${1:-fast}
  [[ "$mode" == fast || "$mode" == immediate ]] || die "usage: $0 stop [immediate]"
  if ! running; then
    say "not running"
    return 0
  fi
  say "stopping (-m $mode)"
  as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DIR" -m "$mode" -w -t 60 >/dev/null
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-fast}" ;;
  status)
    if running; then say "running on 127.0.0.1:$PG_PORT (data: $PG_DIR)"; else say "not running"; exit 1; fi ;;
  psql) shift; exec "$PG_BIN/psql" "$DATABASE_URL" "$@" ;;
  *) die "usage: $0 start|stop [immediate]|status|psql [ARGS...]" ;;
esac
