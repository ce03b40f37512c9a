#!/usr/bin/env bash
# scripts/postgres.sh — a private PostgreSQL 15 (Debian's packages) for development and tests,
# with its own data directory, listening on 127.0.0.1 only, wal_level=logical.
#
#   scripts/postgres.sh start              init on first use, start, wait until ready (idempotent)
#   scripts/postgres.sh stop [immediate]   pg_ctl stop -m fast (or -m immediate, for fault tests)
#   scripts/postgres.sh kill               SIGKILL of the postmaster (fault tests)
#   scripts/postgres.sh promote            a standby becomes a primary (pg_ctl promote)
#   scripts/postgres.sh rebuild            stop, delete PG_DIR, start again as a fresh standby of
#                                          PG_PRIMARY_PORT (e.g. an old primary after failover)
#   scripts/postgres.sh status             exit 0 iff running
#   scripts/postgres.sh psql [ARGS...]     psql as role concert on database concert
#
# Environment: PG_PORT (default 55432), PG_DIR (data directory, default .local/postgres),
# PG_START_TIMEOUT (seconds, default 30), PG_TLS (off; on: TLS as well, with a certificate for
# 127.0.0.1 from scripts/tls.sh in PG_DIR/tls, whose CA is PG_DIR/tls/ca.pem). Replication:
#   PG_PRIMARY_PORT  made on first use as a streaming standby of the primary on that port
#                    (pg_basebackup), which it follows (empty, the default: a primary of its own)
#   PG_NAME          this server's name (cluster_name; a standby's application_name at its
#                    primary); default concert
#   PG_SYNC_STANDBY  synchronous_standby_names while it is a primary: the PG_NAME of the standby
#                    that must have every commit before it is acknowledged (empty: none). Name
#                    it: '*' would let any walsender, a logical one (the relay) too, stand in.
# Role concert,
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
PG_PRIMARY_PORT=${PG_PRIMARY_PORT:-}
PG_NAME=${PG_NAME:-concert}
PG_SYNC_STANDBY=${PG_SYNC_STANDBY:-}
TLS_DIR="$PG_DIR/tls"
SOCK_DIR="$PG_DIR/socket"
LOG="$PG_DIR/server.log"
DATABASE_URL="postgresql://concert:concert@127.0.0.1:$PG_PORT/concert"

[[ -x "$PG_BIN/pg_ctl" ]] || die "PostgreSQL 15 not found in $PG_BIN: run scripts/install-deps.sh apt"
[[ "$PG_PORT" =~ ^[0-9]+$ ]] || die "PG_PORT must be a number, got '$PG_PORT'"
[[ "$PG_TLS" == on || "$PG_TLS" == off ]] || die "PG_TLS must be on or off, got '$PG_TLS'"
[[ "$PG_PRIMARY_PORT" =~ ^[0-9]*$ ]] || die "PG_PRIMARY_PORT must be a port, got '$PG_PRIMARY_PORT'"
[[ "$PG_NAME$PG_SYNC_STANDBY" =~ ^[a-z0-9_]+$ ]] || die "PG_NAME and PG_SYNC_STANDBY: a-z, 0-9, _"

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

# An empty PG_DIR owned by the server's user.
make_data_dir() {
  mkdir -p "$PG_DIR"
  if ((EUID == 0)); then
    chown postgres:postgres "$PG_DIR"
    runuser -u postgres -- test -w "$PG_DIR" || let_postgres_reach_pg_dir
  fi
  chmod 700 "$PG_DIR"
}

# First use: create PG_DIR owned by the server's user and run initdb with our pg_hba.conf.
init_cluster() {
  make_data_dir
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

# First use of a standby: a copy of the primary's data directory (its pg_hba.conf and
# configuration included), streamed with the WAL written meanwhile, and standby.signal.
clone_primary() {
  make_data_dir
  say "pg_basebackup from the primary on 127.0.0.1:$PG_PRIMARY_PORT into $PG_DIR"
  local out
  out=$(as_pg "$PG_BIN/pg_basebackup" -D "$PG_DIR" -X stream -c fast --no-sync \
    -d "host=127.0.0.1 port=$PG_PRIMARY_PORT user=concert password=concert" 2>&1) ||
    { echo "$out" >&2; die "pg_basebackup failed"; }
  as_pg touch "$PG_DIR/standby.signal"
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
  local tls replication=""
  tls=$(tls_config)
  # A standby follows its primary under its own name (which the primary's
  # synchronous_standby_names refers to); once promoted, the server ignores primary_conninfo.
  [[ -z "$PG_PRIMARY_PORT" ]] || replication="primary_conninfo = 'host=127.0.0.1 port=$PG_PRIMARY_PORT user=concert password=concert application_name=$PG_NAME'"
  as_pg tee "$PG_DIR/concert.conf" >/dev/null <<EOF
# Written by scripts/postgres.sh at every start; edits here are lost.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCK_DIR'
max_connections = 200
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
cluster_name = '$PG_NAME'
synchronous_standby_names = '$PG_SYNC_STANDBY'
$replication
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
$tls
EOF
  as_pg mkdir -p -m 700 "$SOCK_DIR"
  # A Unix socket path is limited to 107 bytes.
  local sock="$SOCK_DIR/.s.PGSQL.$PG_PORT"
  ((${#sock} < 108)) || die "socket path too long (${#sock} > 107 bytes): $sock; use a shorter PG_DIR"
}

# Role and database for the services; runs at every start, changes nothing when present
# (without waiting for a synchronous standby: the standby is made from this server afterwards).
# The role is a superuser, which is acceptable for this local development instance only
# (it lets services create publications and replication slots without further grants).
ensure_role_and_db() {
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK_DIR" -p "$PG_PORT" -U postgres -d postgres <<'EOF' >/dev/null
SET synchronous_commit = local;
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
    if [[ ! -f "$PG_DIR/PG_VERSION" ]]; then
      if [[ -n "$PG_PRIMARY_PORT" ]]; then clone_primary; else init_cluster; fi
    fi
    write_config
    ! port_open 127.0.0.1 "$PG_PORT" || die "port 127.0.0.1:$PG_PORT is taken by another process"
    # Nothing of this server runs, so lock files in its socket directory are stale: left by a
    # killed postmaster, or copied from the primary by pg_basebackup. A server refuses to start
    # while the PID such a file names is alive, and a killed, not yet reaped one still is.
    rm -f "$SOCK_DIR"/.s.PGSQL.*
    say "starting on 127.0.0.1:$PG_PORT (data: $PG_DIR, log: $LOG)"
    # setsid: the server gets its own session, so a Ctrl-C in this terminal does not reach it.
    if ! (cd / && setsid -w "${AS_PG[@]}" "$PG_BIN/pg_ctl" start -D "$PG_DIR" -l "$LOG" -w -t "$PG_START_TIMEOUT" >/dev/null) ||
       ! wait_until "$PG_START_TIMEOUT" "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
      tail -n 20 "$LOG" >&2 || true
      die "PostgreSQL did not become ready within ${PG_START_TIMEOUT}s (log above: $LOG)"
    fi
  fi
  # A standby has the primary's role and database, and can create neither.
  [[ -f "$PG_DIR/standby.signal" ]] || ensure_role_and_db
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

# True while a process of this server lives (each works in PG_DIR).
server_processes_left() {
  local proc
  for proc in /proc/[0-9]*; do
    [[ "$(readlink "$proc/cwd" 2>/dev/null)" != "$PG_DIR" ]] || return 0
  done
  return 1
}

# A crash of the whole server, as a machine's death would leave it: the postmaster is killed;
# its backends notice and exit on their own, and are waited for.
kill_server() {
  local pid
  if ! running || ! pid=$(head -n 1 "$PG_DIR/postmaster.pid" 2>/dev/null); then
    say "not running"
    return 0
  fi
  say "SIGKILL of the postmaster (pid $pid)"
  kill -KILL "$pid"
  local deadline=$((SECONDS + 30))
  while server_processes_left; do
    ((SECONDS < deadline)) || die "backends of $PG_DIR still running 30 s after the postmaster died"
    sleep 0.2
  done
}

promote() {
  running || die "not running"
  say "promoting $PG_DIR to primary"
  as_pg "$PG_BIN/pg_ctl" promote -D "$PG_DIR" -w -t 60 >/dev/null
}

# The old primary after a failover: it may hold commits the new primary never had, so it is
# not restarted as it is but copied afresh from the new primary.
rebuild() {
  [[ -n "$PG_PRIMARY_PORT" ]] || die "rebuild: PG_PRIMARY_PORT names the primary to copy"
  ! server_processes_left || stop immediate
  [[ ! -f "$PG_DIR/PG_VERSION" ]] || rm -rf "$PG_DIR"
  start
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-fast}" ;;
  kill) kill_server ;;
  promote) promote ;;
  rebuild) rebuild ;;
  status)
    if running; then say "running on 127.0.0.1:$PG_PORT (data: $PG_DIR)"; else say "not running"; exit 1; fi ;;
  psql) shift; exec "$PG_BIN/psql" "$DATABASE_URL" "$@" ;;
  *) die "usage: $0 start|stop [immediate]|kill|promote|rebuild|status|psql [ARGS...]" ;;
esac
