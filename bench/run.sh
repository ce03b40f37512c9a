#!/usr/bin/env bash
# bench/run.sh — what `make bench` runs: every stage of the pipeline measured beside a reference
# that runs on the same machine in the same run (these machines are shared and noisy, so only
# the ratios compare from run to run).
#
#   1. PayConcert   ghz at several concurrency levels  vs  pgbench running the same transaction
#   2. Relay        outbox rows -> acknowledged Kafka records (backlog + steady rates)
#                   vs  Kafka's ProducerPerformance (same record size, acks=all, idempotence)
#   3. End to end   the pipeline itself, against `fake-telegram --profile=instant` and an unpaced
#                   notifier: 3a notifier throughput over a backlog and over a replay that dedup
#                   must swallow; 3b steady payment rates -> notification
#   4. Memory       idle and peak resident memory of each service
#   5. Telegram limits   the notifier paced under Telegram's limits, against
#                   `fake-telegram --profile=telegram --slow-answer-probability=0`, each case
#                   beside the limit it is held to: a. 30/s over >= 1,000 payers' chats,
#                   b. paid broadcast 1,000/s over >= 5,000 chats, c. = 3a (no latency, no
#                   limits), d. a payment spike far above 30/s and the drain after it,
#                   e. every message to one chat (1/s)
#   6. Opening      a concert's opening: BENCH_OPENING_USERS users (each with its own token) race
#                   for BENCH_OPENING_SEATS seats at once, ReserveSeat then PayConcert
#                   (bench/spike_client.cc, deadline 10 s), at each BENCH_OPENING_CONCURRENCY
#                   vs  pgbench running the same two statements at the highest concurrency
#                   Postgres allows
#   7. Fleet        (section name fleet; not in the default list) N notifier replicas in one
#                   consumer group sharing one Telegram budget, against the same fake Telegram as
#                   section 5, each case beside the limit it is held to: a. one busy group (the
#                   operator's chat, unlinked payers) among private chats, one replica: the
#                   private chats vs 30/s - 20/min; b. 1, 2, 3, 6 replicas over a backlog vs
#                   30/s, and 429s / requests; c. 3 replicas, one killed (SIGKILL) mid-backlog,
#                   then one added: the whole drain vs 30/s, lost, duplicates vs uncertain;
#                   d. paid broadcast with 3 replicas vs 1,000/s; e. the bot's answer to a
#                   "/start" while a backlog drains, vs 2 s
#
# It starts its own Postgres and Kafka on free ports (state in .local/bench/, wiped at start),
# the services and the fake Telegram, and stops all of them at the end, on failure and on Ctrl-C.
# Output: bench/results/<date>.{json,md,png}. Raw measurements stay in .local/bench/raw/.
#
# Environment (defaults = the full run; BENCH_QUICK=1 = a short smoke run):
#   BUILD_DIR              build directory holding bin/ (default build)
#   BENCH_SECTIONS         which sections run (default "pay relay e2e limits spike"); e2e = backlog
#                          (3a) + rates (3b), each also selectable alone; memory is always taken
#   BENCH_PAY_CONCURRENCY  ghz/pgbench concurrency levels (default "1 8 32")
#   BENCH_PAY_DURATION     seconds per level (default 30; quick 3)
#   BENCH_RELAY_BACKLOG    outbox rows inserted at once (default 100000; quick 5000)
#   BENCH_RELAY_RATES      steady outbox insert rates, rows/s (default "200 1000")
#   BENCH_RELAY_DURATION   seconds per steady rate (default 60; quick 3)
#   BENCH_E2E_RATES        steady payment rates (default "100 200 500 800 1000"; the report names the
#                          highest one sustained: no errors, all notified, p99 under 1 s);
#                          "max" = 0.8 x the lowest stage limit this run measured
#   BENCH_E2E_DURATION     seconds per rate (default 60; quick 4)
#   BENCH_NOTIFY_BACKLOG   payments queued before the notifier starts (default 20000; quick 1000)
#   BENCH_SEND_CONCURRENCY the unpaced notifier's SEND_CONCURRENCY in section 3 (default 64)
#   BENCH_RATE_CAP         upper bound of any phase's rate, used to size the seeded data (15000/s)
#   BENCH_USERS            users the reservations of sections 1-3 are spread over (default 64;
#                          none has a linked chat: their notifications go to the operator chat)
#   Section 5 (its payers are other users, each with a linked private chat of its own):
#   BENCH_LIMIT_CHATS      case a: payers/chats (default 1000); backlog BENCH_LIMIT_BACKLOG
#                          payments (default 1800 = 60 s at 30/s; quick 300)
#   BENCH_PAID_CHATS       case b: payers/chats (default 5000); backlog BENCH_PAID_BACKLOG
#                          (default 60000 = 60 s at 1,000/s; quick 5000); the notifier's
#                          SEND_CONCURRENCY there: BENCH_PAID_CONCURRENCY (default 250)
#   BENCH_SPIKE_RATE       case d: payments/s (default 500; quick 100) for BENCH_SPIKE_DURATION s
#                          (default 60; quick 5) over BENCH_SPIKE_CHATS payers (default 1000)
#   BENCH_ONE_CHAT_MESSAGES  case e: messages to the one chat (default 60; quick 15)
#   BENCH_SLOW_ANSWERS     the fake's --slow-answer-probability in section 5 (default 0)
#   Section 6 (section name spike): BENCH_OPENING_USERS (default 2000; quick 500) race for
#   BENCH_OPENING_SEATS (default 1000; quick 250) at BENCH_OPENING_CONCURRENCY (default "256 1000");
#   then PayConcert alone, BENCH_OPENING_PAYMENTS held reservations (default 30000; quick 3000)
#   paid at each BENCH_OPENING_PAY_CONCURRENCY (default "32 1000"; the first is the reference
#   level), beside pgbench running PayConcert's one statement at that first level
#   Section 7 (section name fleet; its payers are users of their own; the whole section takes
#   about 7 minutes, quick about 3). Every case pays its backlog with the relay stopped, starts
#   its replicas (ports of their own, one consumer group of the case's own that starts at the
#   topic's end) and waits for their group to settle, then starts the relay: the drain holds no
#   start-up rebalance, and no case meets another's records.
#   BENCH_FLEET_PARTITIONS   payment-completed-topic is grown to this many partitions (default 6:
#                          the most replicas of a case; a replica beyond the partition count holds
#                          none)
#   BENCH_FLEET_GROUP_MESSAGES / BENCH_FLEET_PRIVATE_MESSAGES  case a: payments of unlinked
#                          payers (to the operator's group, TELEGRAM_CHAT_ID=-1001) interleaved
#                          with payments of payers with private chats, one each (default 300 /
#                          600; quick 60 / 150)
#   BENCH_FLEET_REPLICAS   case b: replica counts (default "1 2 3 6"; quick "1 3"), each over a
#                          backlog of BENCH_FLEET_BACKLOG payments (default 1200; quick 300) by
#                          BENCH_FLEET_CHATS payers (default 1000)
#   BENCH_FLEET_KILL_BACKLOG case c: payments (default 1800 = 60 s at 30/s; quick 450); replica 2
#                          of 3 gets SIGKILL at 25% delivered, a fourth starts at 55%
#   BENCH_FLEET_PAID_BACKLOG case d: payments (default 20000; quick 3000) by BENCH_FLEET_PAID_CHATS
#                          payers (default 5000; quick 1000), 3 replicas with SEND_CONCURRENCY
#                          BENCH_FLEET_PAID_CONCURRENCY each (default 120)
#   BENCH_FLEET_ANSWERS    case e: "/start" messages injected (default 5; quick 3; 0 skips the
#                          case), one every ~2 s while 3 replicas drain BENCH_FLEET_ANSWER_BACKLOG
#                          payments (default 900; quick 300)
#   BENCH_FLEET_LOG_LEVEL  the replicas' LOG_LEVEL (default warn; info logs every send and skip,
#                          and the rebalances, into .local/bench/logs/notifier*.log)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=../scripts/lib.sh
. scripts/lib.sh

BUILD_DIR=$(realpath -m "${BUILD_DIR:-build}")
BIN="$BUILD_DIR/bin"
QUICK=${BENCH_QUICK:-0}
if [[ "$QUICK" == 1 ]]; then
  d_pay=3 d_relay=3 d_e2e=4 backlog=5000 nbacklog=1000 o_users=500 o_seats=250 o_pay=3000
  l_backlog=300 l_paid=5000 l_spike_rate=100 l_spike_s=5 l_one=15
  f_group=60 f_private=150 f_replicas="1 3" f_backlog=300 f_kill=450 f_paid=3000 f_paid_chats=1000
  f_answers=3 f_answer_backlog=300
else
  d_pay=30 d_relay=60 d_e2e=60 backlog=100000 nbacklog=20000 o_users=2000 o_seats=1000 o_pay=30000
  l_backlog=1800 l_paid=60000 l_spike_rate=500 l_spike_s=60 l_one=60
  f_group=300 f_private=600 f_replicas="1 2 3 6" f_backlog=1200 f_kill=1800 f_paid=20000
  f_paid_chats=5000 f_answers=5 f_answer_backlog=900
fi
SECTIONS=" ${BENCH_SECTIONS:-pay relay e2e limits spike} "
want() {  # SECTION...: true when any of them was asked for
  local s
  for s in "$@"; do [[ "$SECTIONS" == *" $s "* ]] && return 0; done
  return 1
}
PAY_LEVELS=${BENCH_PAY_CONCURRENCY:-"1 8 32"}
PAY_DURATION=${BENCH_PAY_DURATION:-$d_pay}
RELAY_BACKLOG=${BENCH_RELAY_BACKLOG:-$backlog}
RELAY_RATES=${BENCH_RELAY_RATES:-"200 1000"}
RELAY_DURATION=${BENCH_RELAY_DURATION:-$d_relay}
E2E_RATES=${BENCH_E2E_RATES:-"100 200 500 800 1000"}
E2E_DURATION=${BENCH_E2E_DURATION:-$d_e2e}
NOTIFY_BACKLOG=${BENCH_NOTIFY_BACKLOG:-$nbacklog}
RATE_CAP=${BENCH_RATE_CAP:-15000}
# Users paying, each with a balance that never runs out. Reservation n belongs to user
# n % USERS + 1 in ghz and pgbench alike; with at least as many users as concurrent calls, calls
# in flight seldom queue on the same user's row (BENCH_USERS=1 measures that worst case).
USERS=${BENCH_USERS:-64}
SEND_CONCURRENCY=${BENCH_SEND_CONCURRENCY:-64}
LIMIT_CHATS=${BENCH_LIMIT_CHATS:-1000}
LIMIT_BACKLOG=${BENCH_LIMIT_BACKLOG:-$l_backlog}
PAID_CHATS=${BENCH_PAID_CHATS:-5000}
PAID_BACKLOG=${BENCH_PAID_BACKLOG:-$l_paid}
PAID_CONCURRENCY=${BENCH_PAID_CONCURRENCY:-250}
SPIKE_RATE=${BENCH_SPIKE_RATE:-$l_spike_rate}
SPIKE_DURATION=${BENCH_SPIKE_DURATION:-$l_spike_s}
SPIKE_CHATS=${BENCH_SPIKE_CHATS:-1000}
ONE_CHAT_MESSAGES=${BENCH_ONE_CHAT_MESSAGES:-$l_one}
SLOW_ANSWERS=${BENCH_SLOW_ANSWERS:-0}
OPENING_USERS=${BENCH_OPENING_USERS:-$o_users}
OPENING_SEATS=${BENCH_OPENING_SEATS:-$o_seats}
OPENING_LEVELS=${BENCH_OPENING_CONCURRENCY:-"256 1000"}
OPENING_PAYMENTS=${BENCH_OPENING_PAYMENTS:-$o_pay}
OPENING_PAY_LEVELS=${BENCH_OPENING_PAY_CONCURRENCY:-"32 1000"}
FLEET_PARTITIONS=${BENCH_FLEET_PARTITIONS:-6}
FLEET_GROUP_MESSAGES=${BENCH_FLEET_GROUP_MESSAGES:-$f_group}
FLEET_PRIVATE_MESSAGES=${BENCH_FLEET_PRIVATE_MESSAGES:-$f_private}
FLEET_REPLICAS=${BENCH_FLEET_REPLICAS:-$f_replicas}
FLEET_BACKLOG=${BENCH_FLEET_BACKLOG:-$f_backlog}
FLEET_CHATS=${BENCH_FLEET_CHATS:-1000}
FLEET_KILL_BACKLOG=${BENCH_FLEET_KILL_BACKLOG:-$f_kill}
FLEET_PAID_BACKLOG=${BENCH_FLEET_PAID_BACKLOG:-$f_paid}
FLEET_PAID_CHATS=${BENCH_FLEET_PAID_CHATS:-$f_paid_chats}
FLEET_PAID_CONCURRENCY=${BENCH_FLEET_PAID_CONCURRENCY:-120}
FLEET_ANSWERS=${BENCH_FLEET_ANSWERS:-$f_answers}
FLEET_ANSWER_BACKLOG=${BENCH_FLEET_ANSWER_BACKLOG:-$f_answer_backlog}
FLEET_LOG_LEVEL=${BENCH_FLEET_LOG_LEVEL:-warn}

GHZ="$LOCAL/bin/ghz"
GRPCURL="$LOCAL/bin/grpcurl"
PGBENCH=/usr/lib/postgresql/15/bin/pgbench
PSQL=/usr/lib/postgresql/15/bin/psql
VENV="$LOCAL/bench-venv"
STATE="$LOCAL/bench"
RAW="$STATE/raw"

for b in payment-server outbox-relay notifier retry-worker fake-telegram spike-client; do
  [[ -x "$BIN/$b" ]] || die "$BIN/$b missing: build first (make build, or BUILD_DIR=...)"
done
[[ -x "$GHZ" && -x "$GRPCURL" ]] || die "ghz/grpcurl missing in $LOCAL/bin: run scripts/install-deps.sh"
[[ -x "$PGBENCH" ]] || die "pgbench missing: install Debian's postgresql-contrib (postgresql-15)"

# Plotting: matplotlib in a venv under .local/ (created once; pip is quiet when it is there).
if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  say "installing matplotlib into $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install -q matplotlib
fi
PY="$VENV/bin/python"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------- lifecycle
export PG_PORT PG_DIR KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_DIR
PG_PORT=$(free_port)
PG_DIR="$STATE/pg"
KAFKA_PORT=$(free_port)
KAFKA_CONTROLLER_PORT=$(free_port)
KAFKA_DIR="$STATE/kafka"
DB="postgresql://concert:concert@127.0.0.1:$PG_PORT/concert"
BOOT="127.0.0.1:$KAFKA_PORT"
export KAFKA_TOOL_OPTS="-Xmx1g -XX:+UseG1GC"

declare -A PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local name
  for name in "${!PIDS[@]}"; do kill -TERM "${PIDS[$name]}" 2>/dev/null || true; done
  for name in "${!PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "${PIDS[$name]}" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "${PIDS[$name]}" 2>/dev/null || true
  done
  scripts/kafka.sh stop >/dev/null 2>&1 || true
  scripts/postgres.sh stop >/dev/null 2>&1 || true
  ((rc == 0)) || say "FAILED (exit $rc); logs in $STATE/logs"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: run a service in the background, log to $STATE/logs/NAME.log.
start() {
  local name=$1; shift
  "$@" >>"$STATE/logs/$name.log" 2>&1 &
  PIDS[$name]=$!
}
stop() {
  local name=$1 pid=${PIDS[$1]:-}
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$name]"
}
# Listening is enough here: every service opens its gRPC port after its dependencies answered.
serving() { port_open "${1%:*}" "${1##*:}"; }
wait_serving() {  # NAME ADDRESS
  local deadline=$((SECONDS + 60))
  until serving "$2"; do
    kill -0 "${PIDS[$1]}" 2>/dev/null || { tail -n 20 "$STATE/logs/$1.log" >&2; die "$1 exited"; }
    ((SECONDS < deadline)) || { tail -n 20 "$STATE/logs/$1.log" >&2; die "$1 not listening after 60s"; }
    sleep 0.3
  done
}
# mem NAME PHASE: append the service's VmRSS and VmHWM (kB) to the memory record.
mem() {
  local pid=${PIDS[$1]} rss hwm
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
  echo "$1 $2 $rss $hwm" >>"$RAW/memory.txt"
}
# cpu_ticks PID...: CPU time (user + system, in clock ticks) the processes used so far, with
# that of their children they reaped (fields 14-17 of /proc/PID/stat): a backend that exited is
# counted in the postmaster, a command that finished in this shell.
cpu_ticks() {
  local p
  for p in "$@"; do awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null; done |
    awk '{s += $1} END {print s + 0}'
}
postgres_pids() {
  local postmaster; postmaster=$(head -1 "$PG_DIR/postmaster.pid")
  echo "$postmaster" $(pgrep -P "$postmaster")
}
# measured NAME COMMAND...: runs COMMAND (in this shell), then writes the CPU ticks it, Postgres
# and payment-server (if running) used meanwhile to $RAW/NAME.cpu: "<command> <postgres>
# <payment-server> <ticks per second>".
measured() {
  local name=$1; shift
  local server=${PIDS[payment-server]:-} pg0 server0 own0
  pg0=$(cpu_ticks $(postgres_pids)); server0=$(cpu_ticks $server); own0=$(cpu_ticks $$)
  "$@"
  local own=$(( $(cpu_ticks $$) - own0 ))
  echo "$own $(( $(cpu_ticks $(postgres_pids)) - pg0 )) $(( $(cpu_ticks $server) - server0 ))" \
    "$(getconf CLK_TCK)" >"$RAW/$name.cpu"
}
sql() { "$PSQL" -X -q -v ON_ERROR_STOP=1 "$DB" "$@"; }
sqlv() { "$PSQL" -X -q -t -A -v ON_ERROR_STOP=1 "$DB" -c "$1"; }
kafka_tool() { scripts/kafka.sh run-class "$@"; }

# ---------------------------------------------------------------- setup
say "fresh state in $STATE"
# Data of earlier runs goes: each run starts from an empty cluster and an empty broker.
scripts/kafka.sh stop >/dev/null 2>&1 || true
scripts/postgres.sh stop >/dev/null 2>&1 || true
rm -rf "$PG_DIR" "$KAFKA_DIR" "$RAW" "$STATE/logs"
mkdir -p "$RAW" "$STATE/logs"
date -u +%Y-%m-%dT%H:%M:%SZ >"$RAW/started_at"
echo "quick=$QUICK sections=$(echo $SECTIONS) pay_duration=$PAY_DURATION relay_duration=$RELAY_DURATION e2e_duration=$E2E_DURATION" >"$RAW/config.txt"

scripts/postgres.sh start >/dev/null
scripts/kafka.sh start >/dev/null
SECRET="bench-auth-token-secret-$(date +%s%N)"  # at least 32 bytes
ADMIN_TOKEN="bench-admin-$(date +%s%N)"
"$BIN/payment-server" migrate --database-url="$DB" >>"$STATE/logs/migrate.log" 2>&1

# A concert, a schedule, USERS users with a balance that never runs out; reservations are added
# per phase by seed_range. Ids of seeded reservations (and their seats) are PHASE*10^8 + n, so
# ghz can name them from its request number alone and no phase ever pays another's reservation.
sql <<EOF
INSERT INTO payment.concerts (id, title) VALUES (1, 'Benchmark Live');
INSERT INTO payment.schedules (id, concert_id, starts_at) VALUES (1, 1, now() + interval '30 days');
INSERT INTO payment.users (id, name, mail, balance_won)
  SELECT u, 'bench ' || u, 'bench' || u || '@example.com', 4000000000000000000
  FROM generate_series(1, $USERS) u;
EOF
# seed_range PHASE COUNT [PAYERS FIRST]: COUNT held reservations PHASE*10^8 + n (n = 0..COUNT-1),
# owned by user FIRST + n % PAYERS (default: the USERS bench users from 1), each on its own seat
# (of the phase's own schedule).
seed_range() {
  local base=$(($1 * 100000000)) n=$2 payers=${3:-$USERS} first=${4:-1}
  sql <<EOF
INSERT INTO payment.schedules (id, concert_id, starts_at) VALUES ($1 + 1, 1, now() + interval '30 days');
INSERT INTO payment.seats (id, schedule_id, seat_number, price_won)
  SELECT $base + n, $1 + 1, n, 50000 FROM generate_series(0, $n - 1) n;
INSERT INTO payment.reservations (id, user_id, seat_id, amount_won, status, expires_at)
  SELECT $base + n, $first + n % $payers, $base + n, 50000, 'HELD', now() + interval '1 day'
  FROM generate_series(0, $n - 1) n;
ANALYZE payment.reservations;
EOF
}

# ghz call data: the reservation id comes from the request number (a Go template raw string in
# backquotes keeps the JSON valid), and so does the token of the user who owns it: ghz renders
# the metadata template per call, picking token number RequestNumber % USERS from a list.
tokens=""
for ((u = 1; u <= USERS; u++)); do
  tokens+=" \`$("$BIN/payment-server" mint-token --user-id="$u" --auth-token-secret="$SECRET" --ttl=24h)\`"
done
echo "{\"authorization\":\"Bearer {{index (list$tokens) (mod .RequestNumber $USERS)}}\"}" \
  >"$RAW/ghz-metadata.json"
ghz_data() { echo '{"reservation_id":"{{printf `%d%08d` '"$1"' .RequestNumber}}"}'; }
# pay_ghz PHASE OUT ARGS...: ghz PayConcert over phase PHASE's reservations, JSON report to OUT.
pay_ghz() {
  local phase=$1 out=$2; shift 2
  "$GHZ" --insecure --call concert.v1.PaymentService/PayConcert \
    --data "$(ghz_data "$phase")" --metadata "$(cat "$RAW/ghz-metadata.json")" \
    --duration-stop=wait -O json -o "$out" "$@" "$PAY_ADDR" || true
  [[ -s "$out" ]] || die "ghz wrote no report ($out)"
}

# run_pgbench NAME SCRIPT CLIENTS ARGS...: SCRIPT for as long as ARGS say (-T seconds or -t
# transactions per client); its summary to NAME.out, one line per transaction to NAME.txt.
run_pgbench() {
  local name=$1 script=$2 c=$3; shift 3
  rm -f "$RAW/$name".[0-9]*
  (cd "$RAW" && "$PGBENCH" -n -M prepared -c "$c" -j "$(( c < 2 ? 1 : 2 ))" \
    -f "$script" -l --log-prefix="$name" "$@" "$DB" >"$name.out" 2>&1) ||
    { cat "$RAW/$name.out" >&2; die "pgbench failed ($name)"; }
  cat "$RAW/$name".[0-9]* >"$RAW/$name.txt"; rm -f "$RAW/$name".[0-9]*
}

PAY_ADDR="127.0.0.1:$(free_port)"
start_payment_server() {  # [ARGS...]: settings beyond the common ones
  start payment-server "$BIN/payment-server" --database-url="$DB" --grpc-address="$PAY_ADDR" \
    --metrics-address="127.0.0.1:$(free_port)" --auth-token-secret="$SECRET" --log-level=warn \
    --db-pool-size=32 --grpc-max-threads=64 "$@"
  wait_serving payment-server "$PAY_ADDR"
}

# ---------------------------------------------------------------- 1. PayConcert
if want pay; then
say "1. PayConcert: ghz at concurrency $PAY_LEVELS, ${PAY_DURATION}s each; pgbench reference"
start_payment_server
sleep 1; mem payment-server idle
phase=1
for c in $PAY_LEVELS; do
  seed_range "$phase" $((RATE_CAP * PAY_DURATION))
  say "   ghz -c $c (reservations ${phase}xxxxxxxx)"
  measured "pay-ghz-c$c" pay_ghz "$phase" "$RAW/pay-ghz-c$c.json" -c "$c" -z "${PAY_DURATION}s"
  echo "$c $phase" >>"$RAW/pay-levels.txt"
  phase=$((phase + 1))
done
mem payment-server pay-load
stop payment-server

# The seven-statement transaction PayConcert made before it became one statement: lock the
# reservation (same joins), debit, mark paid, insert the payment, insert the outbox row with a
# payload as long as the real events' payloads.
PAYLOAD_BYTES=$(sqlv "SELECT coalesce(round(avg(length(payload))), 150) FROM payment.outbox_events")
echo "$PAYLOAD_BYTES" >"$RAW/payload_bytes"
cat >"$RAW/pay.pgbench" <<'EOF'
BEGIN;
SELECT nextval('bench_ref_reservation') AS rid \gset
SELECT r.user_id AS uid, r.amount_won AS amt, r.status AS st, r.expires_at <= now() AS expired,
  u.mail AS mail, c.title AS title, (extract(epoch FROM sch.starts_at) * 1000000)::bigint AS starts
  FROM payment.reservations r JOIN payment.users u ON u.id = r.user_id
  JOIN payment.seats s ON s.id = r.seat_id JOIN payment.schedules sch ON sch.id = s.schedule_id
  JOIN payment.concerts c ON c.id = sch.concert_id WHERE r.id = :rid FOR UPDATE OF r \gset
UPDATE payment.users SET balance_won = balance_won - :amt WHERE id = :uid AND balance_won >= :amt RETURNING balance_won;
UPDATE payment.reservations SET status = 'PAID', updated_at = now() WHERE id = :rid;
INSERT INTO payment.payments (reservation_id, user_id, amount_won, event_id)
  VALUES (:rid, :uid, :amt, gen_random_uuid())
  RETURNING id AS pid, event_id::text AS eid, (extract(epoch FROM paid_at) * 1000000)::bigint AS paid \gset
INSERT INTO payment.outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload, headers)
  VALUES (:eid::uuid, 'reservation', :rid, 'PaymentCompleted', decode(:payload, 'hex'), '{}'::jsonb);
END;
EOF
PAYLOAD_HEX=$(printf 'ab%.0s' $(seq 1 "$PAYLOAD_BYTES"))
for c in $PAY_LEVELS; do
  seed_range "$phase" $((RATE_CAP * PAY_DURATION))
  sql -c "DROP SEQUENCE IF EXISTS bench_ref_reservation;
          CREATE SEQUENCE bench_ref_reservation START $((phase * 100000000));"
  say "   pgbench -c $c"
  measured "pgbench-c$c" run_pgbench "pgbench-c$c" pay.pgbench "$c" -T "$PAY_DURATION" \
    -D payload="$PAYLOAD_HEX"
  phase=$((phase + 1))
done

# The limit of this design here: pgbench running PayConcert's own statement (payment.pay_concert,
# event payload encoded and all), with the next reservation drawn from a sequence in the same
# statement; reservation base + n belongs to user 1 + n % USERS, as in seed_range.
cat >"$RAW/pay-one.pgbench" <<'EOF'
SELECT p.outcome FROM (SELECT nextval('bench_ref_reservation') AS rid) s,
  payment.pay_concert(1 + (s.rid - :base) % :users, s.rid, '{}') p;
EOF
for c in $PAY_LEVELS; do
  seed_range "$phase" $((RATE_CAP * PAY_DURATION))
  base=$((phase * 100000000))
  sql -c "DROP SEQUENCE IF EXISTS bench_ref_reservation; CREATE SEQUENCE bench_ref_reservation START $base;"
  say "   pgbench -c $c, one statement"
  measured "pgbench-one-c$c" run_pgbench "pgbench-one-c$c" pay-one.pgbench "$c" \
    -T "$PAY_DURATION" -D base="$base" -D users="$USERS"
  paid=$(sqlv "SELECT count(*) FROM payment.payments WHERE reservation_id >= $base")
  [[ "$paid" == "$(wc -l <"$RAW/pgbench-one-c$c.txt")" ]] ||
    die "pgbench's one-statement calls paid $paid reservations, not one per call"
  phase=$((phase + 1))
done
fi

# ---------------------------------------------------------------- 2. Relay
RELAY_METRICS=""
start_relay() {  # TOPIC
  RELAY_METRICS="127.0.0.1:$(free_port)"
  start outbox-relay "$BIN/outbox-relay" --database-url="$DB" --kafka-bootstrap-servers="$BOOT" \
    --payment-completed-topic="$1" --grpc-address="$RELAY_HEALTH" \
    --metrics-address="$RELAY_METRICS" --log-level=warn
  wait_serving outbox-relay "$RELAY_HEALTH"
}
RELAY_HEALTH="127.0.0.1:$(free_port)"
# consume TOPIC COUNT OUT: read COUNT records from the beginning (bounded), one line each:
# <TimestampType:ms>\t<headers>\t<key>.
consume() {
  timeout 600 scripts/kafka.sh run-class org.apache.kafka.tools.consumer.ConsoleConsumer \
    --bootstrap-server "$BOOT" --topic "$1" --from-beginning --max-messages "$2" --timeout-ms 60000 \
    --property print.timestamp=true --property print.headers=true --property print.key=true \
    --property print.value=false \
    >"$3" 2>>"$STATE/logs/consumer.log" || true
  local got; got=$(wc -l <"$3")
  ((got >= $2)) || die "consumed $got of $2 records from $1"
}
if want relay; then
PAYLOAD_BYTES=${PAYLOAD_BYTES:-$(sqlv "SELECT coalesce(round(avg(length(payload))), 150) FROM payment.outbox_events")}
say "2. Relay: backlog $RELAY_BACKLOG rows, steady $RELAY_RATES rows/s; ProducerPerformance reference"
sql -c "TRUNCATE payment.outbox_events"
# Records in the bench topics carry the broker's append time (LogAppendTime): with acks=all on a
# single broker that is when the record became acknowledged, on the same clock as Postgres.
for t in bench-relay bench-reference; do
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOT" --create --topic "$t" \
    --partitions 3 --replication-factor 1 --config message.timestamp.type=LogAppendTime >/dev/null
done
# Creates the slot and publication, so rows inserted while it is stopped are streamed later.
start_relay bench-relay
mem outbox-relay idle
stop outbox-relay

# Each row carries its insert time (microseconds, statement clock) in a header the relay copies.
# The key says which phase wrote the row: r<n> for the backlog, s<n> for the steady rates.
outbox_row() {
  echo "gen_random_uuid(), 'reservation', '$1' || n, 'PaymentCompleted',
  decode(repeat('ab', $PAYLOAD_BYTES), 'hex'),
  jsonb_build_object('bench-ts', ((extract(epoch FROM clock_timestamp()) * 1000000)::bigint)::text)"
}
sql -c "INSERT INTO payment.outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload, headers)
        SELECT $(outbox_row r) FROM generate_series(1, $RELAY_BACKLOG) n"
now_ms >"$RAW/relay-backlog-start-ms"
start_relay bench-relay
consume bench-relay "$RELAY_BACKLOG" "$RAW/relay-backlog.txt"
mem outbox-relay backlog
sql -c "DROP SEQUENCE IF EXISTS bench_relay_rows; CREATE SEQUENCE bench_relay_rows;"
echo "INSERT INTO payment.outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload, headers)
  SELECT $(outbox_row s) FROM (SELECT nextval('bench_relay_rows') n) s;" >"$RAW/relay-row.pgbench"
expected=$RELAY_BACKLOG
for rate in $RELAY_RATES; do
  say "   steady $rate rows/s"
  before=$(sqlv "SELECT coalesce((SELECT last_value FROM bench_relay_rows), 0)")
  "$PGBENCH" -n -M prepared -c 4 -j 2 -R "$rate" -T "$RELAY_DURATION" -f "$RAW/relay-row.pgbench" \
    "$DB" >"$RAW/relay-rate$rate.pgbench.out" 2>&1 || die "pgbench (outbox rows) failed"
  after=$(sqlv "SELECT last_value FROM bench_relay_rows")
  expected=$((expected + after - before))
  consume bench-relay "$expected" "$RAW/relay-all.txt"
  echo "$rate $before $after" >>"$RAW/relay-rates.txt"
done
mem outbox-relay steady
stop outbox-relay
REC_BYTES=$PAYLOAD_BYTES
say "   ProducerPerformance, $RELAY_BACKLOG records of $REC_BYTES bytes, unthrottled"
kafka_tool org.apache.kafka.tools.ProducerPerformance --topic bench-reference \
  --num-records "$RELAY_BACKLOG" --record-size "$REC_BYTES" --throughput -1 \
  --command-property acks=all enable.idempotence=true bootstrap.servers="$BOOT" \
  >"$RAW/ref-max.txt" 2>>"$STATE/logs/producer-perf.log"
for rate in $RELAY_RATES; do
  say "   ProducerPerformance at $rate records/s"
  kafka_tool org.apache.kafka.tools.ProducerPerformance --topic bench-reference \
    --num-records $((rate * RELAY_DURATION)) --record-size "$REC_BYTES" --throughput "$rate" \
    --command-property acks=all enable.idempotence=true bootstrap.servers="$BOOT" \
    >"$RAW/ref-rate$rate.txt" 2>>"$STATE/logs/producer-perf.log"
done
fi

# ---------------------------------------------------------------- 3. End to end
# The pipeline itself: a fake Telegram without latency or limits and a notifier that does not pace
# itself, so that what is measured is our own work (section 5 measures Telegram's limits).
NOTIFIER_UNPACED=(--telegram-rate=0 --telegram-chat-interval=0 --telegram-group-interval=0
  --send-concurrency="$SEND_CONCURRENCY")
TG_PORT="" TG_RECORD=""
# start_fake RECORD ARGS...: a fresh fake Telegram (new port, empty buckets and stats).
start_fake() {
  local record=$1; shift
  TG_PORT=$(free_port) TG_RECORD=$record
  start fake-telegram "$BIN/fake-telegram" --port="$TG_PORT" --record="$record" "$@"
  wait_for_port 127.0.0.1 "$TG_PORT" 20 || die "fake-telegram did not listen"
}
NOTIFIER_HEALTH="127.0.0.1:$(free_port)" NOTIFIER_METRICS="127.0.0.1:$(free_port)"
# Replica i of a fleet (section 7) is process notifier-i with ports of its own; replica 1 is
# "notifier" on NOTIFIER_HEALTH and NOTIFIER_METRICS. All of them are in one consumer group.
declare -A REPLICA_HEALTH=([1]="$NOTIFIER_HEALTH") REPLICA_METRICS=([1]="$NOTIFIER_METRICS")
replica_name() { if (($1 == 1)); then echo notifier; else echo "notifier-$1"; fi; }
# start_replica I ARGS...: starts replica I (without waiting for it); ARGS as start_notifier's.
start_replica() {
  local i=$1; shift
  [[ -n "${REPLICA_HEALTH[$i]:-}" ]] || REPLICA_HEALTH[$i]="127.0.0.1:$(free_port)"
  [[ -n "${REPLICA_METRICS[$i]:-}" ]] || REPLICA_METRICS[$i]="127.0.0.1:$(free_port)"
  start "$(replica_name "$i")" "$BIN/notifier" --database-url="$DB" \
    --kafka-bootstrap-servers="$BOOT" --telegram-api-base="http://127.0.0.1:$TG_PORT" \
    --telegram-bot-token=bench --telegram-chat-id=42 --telegram-updates=off \
    --grpc-address="${REPLICA_HEALTH[$i]}" --metrics-address="${REPLICA_METRICS[$i]}" \
    --log-level=warn "$@"
}
start_notifier() {  # ARGS...: settings beyond the common ones (pacing, concurrency)
  start_replica 1 "$@"
  wait_serving notifier "$NOTIFIER_HEALTH"
}
delivered() { if [[ -f "$TG_RECORD" ]]; then wc -l <"$TG_RECORD"; else echo 0; fi; }
wait_delivered() {  # COUNT SECONDS
  local deadline=$((SECONDS + $2))
  until (($(delivered) >= $1)); do
    ((SECONDS < deadline)) || { say "   only $(delivered) of $1 notifications after $2 s"; return 1; }
    sleep 0.5
  done
}
# metric NAME: the notifier's value of an unlabelled metric; metric_sum NAME: the sum over labels.
metric() { curl -s -m 5 "http://$NOTIFIER_METRICS/metrics" | awk -v m="$1" '$1 == m {print int($2)}'; }
metric_sum() {
  curl -s -m 5 "http://$NOTIFIER_METRICS/metrics" |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $NF} END {print int(s)}'
}
relay_events() {
  curl -s -m 5 "http://$RELAY_METRICS/metrics" | awk '$1 == "relay_events_total" {print int($2)}'
}
wait_relayed() {  # COUNT SECONDS: until the relay has had COUNT events acknowledged in all
  local deadline=$((SECONDS + $2))
  until (($(relay_events) >= $1)); do
    ((SECONDS < deadline)) || die "the relay published $(relay_events) of $1 events after $2 s"
    sleep 0.5
  done
}

if want e2e backlog rates limits fleet; then
start_fake "$RAW/telegram.jsonl" --profile=instant
RETRY_ADDR="127.0.0.1:$(free_port)"
start retry-worker "$BIN/retry-worker" --database-url="$DB" --kafka-bootstrap-servers="$BOOT" \
  --admin-token="$ADMIN_TOKEN" --grpc-address="$RETRY_ADDR" \
  --metrics-address="127.0.0.1:$(free_port)" --log-level=warn
start_payment_server
start_relay payment-completed-topic
start_notifier "${NOTIFIER_UNPACED[@]}"
wait_serving retry-worker "$RETRY_ADDR"
sleep 2
for s in payment-server outbox-relay notifier retry-worker; do mem "$s" e2e-idle; done
fi

# 3a. Notifier throughput: a backlog of payments is relayed while the notifier is stopped, then
# it starts and works through it (a dedup row per event); then its group is rewound and it reads
# the same events again, which dedup must swallow without sending anything.
if want e2e backlog; then
say "3a. Notifier backlog of $NOTIFY_BACKLOG (fake-telegram --profile=instant, notifier unpaced, SEND_CONCURRENCY=$SEND_CONCURRENCY)"
stop notifier
phase=50
seed_range "$phase" "$NOTIFY_BACKLOG"
pay_ghz "$phase" "$RAW/e2e-backlog-ghz.json" -c 16 -n "$NOTIFY_BACKLOG"
consume payment-completed-topic "$NOTIFY_BACKLOG" "$RAW/e2e-backlog-records.txt"
now_ms >"$RAW/notify-backlog-start-ms"
start_notifier "${NOTIFIER_UNPACED[@]}"
wait_delivered "$NOTIFY_BACKLOG" 600 || die "notifier backlog not delivered"
now_ms >"$RAW/notify-backlog-end-ms"
mem notifier backlog
stop notifier
sent_before=$(delivered)
kafka_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server "$BOOT" \
  --group notification-group --reset-offsets --to-earliest --all-topics --execute >/dev/null
now_ms >"$RAW/notify-replay-start-ms"
start_notifier "${NOTIFIER_UNPACED[@]}"
deadline=$((SECONDS + 600))
until dups=$(metric notifier_duplicates_total); ((${dups:-0} >= NOTIFY_BACKLOG)); do
  ((SECONDS < deadline)) || die "replay: duplicates never reached $NOTIFY_BACKLOG"
  sleep 0.2
done
now_ms >"$RAW/notify-replay-end-ms"
echo "$(( $(delivered) - sent_before ))" >"$RAW/notify-replay-resent"
echo "$NOTIFY_BACKLOG" >"$RAW/notify-backlog-count"
fi

# 3b. Steady payment rates (ghz's constant-rate schedule).
max_rate() {  # the highest rate this run found every stage able to carry, times 0.8
  "$PY" "$ROOT/bench/analyze.py" --raw "$RAW" --max-rate
}
if want e2e rates; then
say "3b. Steady payments at $E2E_RATES per s, ${E2E_DURATION}s each"
phase=60
for rate in $E2E_RATES; do
  [[ "$rate" == max ]] && rate=$(max_rate)
  n=$((rate * E2E_DURATION * 11 / 10 + 100))  # ghz may send a few more than rate x duration
  seed_range "$phase" "$n"
  base=$(delivered)
  say "   $rate payments/s for ${E2E_DURATION}s"
  pay_ghz "$phase" "$RAW/e2e-rate$rate-ghz.json" -c 64 --rps "$rate" -z "${E2E_DURATION}s"
  ok=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["statusCodeDistribution"].get("OK",0))' "$RAW/e2e-rate$rate-ghz.json")
  wait_delivered $((base + ok)) 300 || true
  echo "$rate $phase $ok" >>"$RAW/e2e-rates.txt"
  phase=$((phase + 1))
done
for s in payment-server outbox-relay notifier retry-worker; do mem "$s" e2e-load; done
sql -At -c "SELECT reservation_id, (extract(epoch FROM paid_at) * 1000)::bigint FROM payment.payments
            WHERE reservation_id >= 5000000000 AND reservation_id < 7000000000" >"$RAW/e2e-paid.txt"
fi

# ---------------------------------------------------------------- 5. Telegram limits
# Each case pays through the whole pipeline and reports the notifier's delivery rate at a fake
# Telegram with the real API's latency and limits, beside the limit it is held to. The payers are
# users LIMIT_FIRST.. (other than sections 1-3's), each with a private chat of its own (chat id =
# user id) linked in payment.telegram_links, so that PaymentCompleted carries the payer's chat.
LIMIT_FIRST=1000001
FAKE_TELEGRAM=(--profile=telegram --slow-answer-probability="$SLOW_ANSWERS")
# mint_tokens FIRST COUNT OUT: bearer tokens of users FIRST.., one a line. Thousands of
# `payment-server mint-token` calls take minutes: its HS256 JWTs are minted here instead (same
# header, claims and exp as one token the binary minted, which they are checked against).
mint_tokens() {
  local probe
  probe=$("$BIN/payment-server" mint-token --user-id="$1" --auth-token-secret="$SECRET" --ttl=24h)
  "$PY" - "$SECRET" "$1" "$2" "$probe" >"$3" <<'PYEOF'
import base64, hashlib, hmac, json, sys
secret, first, count, probe = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
claims = json.loads(base64.urlsafe_b64decode(probe.split(".")[1] + "=="))
header = b64(b'{"alg":"HS256","typ":"JWT"}')
def token(user):
    payload = dict(claims, sub=str(user))
    body = header + "." + b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    return body + "." + b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())
if token(first) != probe:
    sys.exit("tokens minted here differ from `payment-server mint-token`'s (see common/jwt.h)")
for user in range(first, first + count):
    print(token(user))
PYEOF
}
# spread_metadata PAYERS START COUNT OUT: ghz metadata naming, for request r, the token of the
# owner of the run's reservation START + r (user LIMIT_FIRST + (START + r) % PAYERS). ghz parses
# the template on every call: beyond 1,000 payers the list holds only this run's COUNT owners.
# The tokens are section 5's payers' unless SPREAD_TOKENS names another file (of users FIRST..,
# the reservations seeded with seed_range ... FIRST).
spread_metadata() {
  "$PY" - "${SPREAD_TOKENS:-$RAW/limit-tokens.txt}" "$@" <<'PYEOF'
import json, sys
tokens = open(sys.argv[1]).read().split()
payers, start, count, out = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if payers <= 1000:
    owners, index = tokens[:payers], f"(mod (add .RequestNumber {start}) {payers})"
else:
    owners, index = [tokens[(start + r) % payers] for r in range(count)], ".RequestNumber"
listing = " ".join(f"`{t}`" for t in owners)
with open(out, "w") as f:
    json.dump({"authorization": "Bearer {{index (list " + listing + ") " + index + "}}"}, f)
PYEOF
}
# pay_spread PHASE COUNT PAYERS OUT ARGS...: ghz pays phase PHASE's reservations 0..COUNT-1 (seeded
# over PAYERS payers), in runs of at most 500 calls when there are more than 1,000 payers;
# reports OUT-<run>.json.
pay_spread() {
  local phase=$1 count=$2 payers=$3 out=$4; shift 4
  local start=0 run=0 n chunk=$count
  ((payers <= 1000)) || chunk=500
  while ((start < count)); do
    n=$((count - start < chunk ? count - start : chunk))
    spread_metadata "$payers" "$start" "$n" "$RAW/spread-metadata.json"
    "$GHZ" --insecure --call concert.v1.PaymentService/PayConcert \
      --data '{"reservation_id":"{{printf `%d%08d` '"$phase"' (add .RequestNumber '"$start"')}}"}' \
      --metadata-file "$RAW/spread-metadata.json" --duration-stop=wait -O json -o "$out-$run.json" \
      "$@" -n "$n" "$PAY_ADDR" || true
    [[ -s "$out-$run.json" ]] || die "ghz wrote no report ($out-$run.json)"
    start=$((start + n)) run=$((run + 1))
  done
}
ghz_ok() {  # REPORT...: calls answered OK
  "$PY" -c 'import json,sys; print(sum(json.load(open(p))["statusCodeDistribution"].get("OK", 0) for p in sys.argv[1:]))' "$@"
}
parked() { sqlv "SELECT count(*) FROM retry.failed_messages WHERE status = 'FAILED'"; }
dead_lettered() { sqlv "SELECT count(*) FROM retry.failed_messages"; }
# case_end NAME LIMIT PAYMENTS PHASE: what the case's fake and notifier counted, then stop both.
case_end() {
  local name=$1
  curl -s -m 5 "http://127.0.0.1:$TG_PORT/control/stats" >"$RAW/limits-$name-stats.json" || true
  curl -s -m 5 "http://$NOTIFIER_METRICS/metrics" >"$RAW/limits-$name-metrics.txt" || true
  mem notifier "limits-$name"
  {
    echo "limit $2"; echo "payments $3"; echo "phase $4"; echo "end_ms $(now_ms)"
    echo "dlq $(metric_sum notifier_dlq_total)"
    echo "parked $(parked)"; echo "dead_lettered $(dead_lettered)"
  } >>"$RAW/limits-$name.txt"
  stop notifier
  stop fake-telegram
}
# backlog_case NAME LIMIT PHASE COUNT PAYERS NOTIFIER_ARGS...: COUNT payments by PAYERS payers are
# relayed while the notifier is stopped; a fresh fake Telegram and a notifier with NOTIFIER_ARGS
# then work through them.
backlog_case() {
  local name=$1 limit=$2 phase=$3 count=$4 payers=$5; shift 5
  say "   $name: backlog of $count payments over $payers chats, limit $limit/s"
  stop notifier
  stop fake-telegram
  seed_range "$phase" "$count" "$payers" "$LIMIT_FIRST"
  local before ok
  before=$(relay_events)
  pay_spread "$phase" "$count" "$payers" "$RAW/limits-$name-ghz" -c 16
  ok=$(ghz_ok "$RAW/limits-$name-ghz"-*.json)
  wait_relayed $((before + ok)) 300
  start_fake "$RAW/limits-$name.jsonl" "${FAKE_TELEGRAM[@]}"
  echo "start_ms $(now_ms)" >"$RAW/limits-$name.txt"
  start_notifier "$@"
  wait_delivered "$ok" $((ok / limit * 2 + 120)) || true
  case_end "$name" "$limit" "$ok" "$phase"
}

if want limits; then
payers=$LIMIT_CHATS
((PAID_CHATS > payers)) && payers=$PAID_CHATS
((SPIKE_CHATS > payers)) && payers=$SPIKE_CHATS
((SPIKE_CHATS <= 1000)) || die "BENCH_SPIKE_CHATS is at most 1000 (one ghz run names every payer's token)"
say "5. Telegram limits (fake-telegram ${FAKE_TELEGRAM[*]}; payers with linked chats: $payers)"
sql <<EOF
INSERT INTO payment.users (id, name, mail, balance_won)
  SELECT u, 'payer ' || u, 'payer' || u || '@example.com', 4000000000000000000
  FROM generate_series($LIMIT_FIRST, $LIMIT_FIRST + $payers - 1) u;
INSERT INTO payment.telegram_links (user_id, chat_id)
  SELECT u, u FROM generate_series($LIMIT_FIRST, $LIMIT_FIRST + $payers - 1) u;
EOF
mint_tokens "$LIMIT_FIRST" "$payers" "$RAW/limit-tokens.txt"
# Whatever sections 3 left unsent goes first, unpaced, so that no case starts behind.
deadline=$((SECONDS + 300))
until [[ "$(metric notifier_consumer_lag)" == 0 && "$(metric notifier_pending)" == 0 ]]; do
  ((SECONDS < deadline)) || { say "   the notifier still has a lag after 300 s"; break; }
  sleep 0.5
done

# a. 30/s over many chats (each chat takes 1/s): the bot's limit binds.
backlog_case a 30 70 "$LIMIT_BACKLOG" "$LIMIT_CHATS"
# b. Paid broadcast, 1,000/s: enough sends in flight to cover 1,000/s x ~100 ms answers, twice.
backlog_case b 1000 71 "$PAID_BACKLOG" "$PAID_CHATS" \
  --telegram-paid-broadcast=true --send-concurrency="$PAID_CONCURRENCY"
# e. Every message to one chat: that chat's 1/s binds.
backlog_case e 1 73 "$ONE_CHAT_MESSAGES" 1

# d. A spike of payments far above 30/s, then the drain at 30/s. ghz's constant rate; every
# payment must succeed and every notification arrive, none in the DLQ.
say "   d: $SPIKE_RATE payments/s for ${SPIKE_DURATION}s over $SPIKE_CHATS chats, limit 30/s"
phase=72
stop notifier
stop fake-telegram
seed_range "$phase" $((SPIKE_RATE * SPIKE_DURATION * 11 / 10 + 100)) "$SPIKE_CHATS" "$LIMIT_FIRST"
start_fake "$RAW/limits-d.jsonl" "${FAKE_TELEGRAM[@]}"
start_notifier
spread_metadata "$SPIKE_CHATS" 0 0 "$RAW/spread-metadata.json"
echo "start_ms $(now_ms)" >"$RAW/limits-d.txt"
"$GHZ" --insecure --call concert.v1.PaymentService/PayConcert \
  --data "$(ghz_data "$phase")" --metadata-file "$RAW/spread-metadata.json" \
  --duration-stop=wait -O json -o "$RAW/limits-d-ghz-0.json" \
  -c 16 --rps "$SPIKE_RATE" -z "${SPIKE_DURATION}s" "$PAY_ADDR" || true
[[ -s "$RAW/limits-d-ghz-0.json" ]] || die "ghz wrote no report (limits-d)"
echo "paid_ms $(now_ms)" >>"$RAW/limits-d.txt"
ok=$(ghz_ok "$RAW/limits-d-ghz-0.json")
say "   d: $ok payments; draining at 30/s (ideal $((ok / 30)) s)"
wait_delivered "$ok" $((ok / 30 * 3 / 2 + 120)) || true
case_end d 30 "$ok" "$phase"
fi

# ---------------------------------------------------------------- 7. Fleet
# N notifier replicas in one consumer group and one Telegram budget in Postgres (notifier/budget.h),
# against the fake Telegram of section 5; each case beside the limit it is held to, measured at
# the fake (first to last message of its backlog). A case pays its backlog with the relay stopped,
# starts a fresh fake and its replicas, waits until their group has settled (every replica holding
# partitions), and only then starts the relay, which publishes the whole backlog within about a
# second: each replica meets its share at once, and no start-up rebalance falls inside the drain
# (case c's kill and addition are the rebalances it measures). Each case's replicas are a
# consumer group of its own (KAFKA_GROUP_ID=fleet-<case>), set at the topic's end before its
# backlog is published: what an earlier case left (case a leaves most of the group's messages)
# is never read again. Its payers are users of their own.
FLEET_FIRST=3000001        # payers with a private chat each (chat id = user id)
FLEET_MIXED_FIRST=3900001  # case a's payers: FLEET_GROUP_MESSAGES of them without a chat
FLEET_ANSWER_CHAT=3990001  # case e: chats without a link whose users write "/start"
FLEET_OPERATOR_CHAT=-1001  # TELEGRAM_CHAT_ID: the operator's group (20 messages a minute)
FLEET_N=0   # replicas the case started (1..FLEET_N; some may be gone)
FLEET_OK=0  # the case's payments that succeeded
FLEET_GROUP=""     # the case's consumer group
FLEET_ARGS=()      # the case's replicas' settings
is_replica() { [[ "$1" == notifier || "$1" == notifier-* ]]; }
# fleet_stop: every notifier replica (one TERM to all at once: a second one makes a notifier
# exit without finishing), then the fake.
fleet_stop() {
  local name pid
  local -a names=()
  for name in "${!PIDS[@]}"; do
    if is_replica "$name"; then names+=("$name"); kill -TERM "${PIDS[$name]}" 2>/dev/null || true; fi
  done
  for name in "${names[@]}"; do
    pid=${PIDS[$name]}
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$name]"
  done
  stop fake-telegram
}
# fleet_settled N: the case's group has N members, min(N, partitions) of them holding
# partitions, and is not rebalancing.
fleet_settled() {
  local out members holding want=$(($1 < FLEET_PARTITIONS ? $1 : FLEET_PARTITIONS))
  out=$(kafka_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
    --bootstrap-server "$BOOT" --describe --group "$FLEET_GROUP" --members 2>&1) || return 1
  [[ "$out" != *ebalancing* ]] || return 1
  members=$(awk -v g="$FLEET_GROUP" '$1 == g {n++} END {print n + 0}' <<<"$out")
  holding=$(awk -v g="$FLEET_GROUP" '$1 == g && $NF + 0 > 0 {n++} END {print n + 0}' <<<"$out")
  ((members == $1 && holding == want))
}
# count_at_least COUNT SECONDS COMMAND...: waits until COMMAND prints at least COUNT.
count_at_least() {
  local want=$1 limit=$2 deadline=$((SECONDS + $2)); shift 2
  until (($("$@") >= want)); do
    ((SECONDS < deadline)) || { say "   $* reached only $("$@") of $want after $limit s"; return 1; }
    sleep 0.5
  done
}
# Reservations with at least one message at the fake (their ids have 9 digits or more), and the
# messages to the operator's group.
delivered_distinct() {
  [[ -f "$TG_RECORD" ]] || { echo 0; return; }
  { grep -ohE '#[0-9]{9,}' "$TG_RECORD" || true; } | sort -u | wc -l
}
group_delivered() {
  [[ -f "$TG_RECORD" ]] || { echo 0; return; }
  grep -c "\"chat_id\":\"$FLEET_OPERATOR_CHAT\"" "$TG_RECORD" || true
}
private_delivered() { echo $(($(delivered) - $(group_delivered))); }
# fleet_backlog NAME PHASE COUNT PAYERS FIRST TOKENS: everything of the last case stopped, the
# relay too; COUNT payments by PAYERS payers from user FIRST (their tokens in TOKENS) wait in the
# outbox.
fleet_backlog() {
  local name=$1 phase=$2 count=$3 payers=$4 first=$5 tokens=$6
  fleet_stop
  stop outbox-relay
  seed_range "$phase" "$count" "$payers" "$first"
  SPREAD_TOKENS=$tokens pay_spread "$phase" "$count" "$payers" "$RAW/fleet-$name-ghz" -c 16
  FLEET_OK=$(ghz_ok "$RAW/fleet-$name-ghz"-*.json)
}
# fleet_up NAME N ARGS...: the case's consumer group at the topic's end (the relay is stopped:
# the case's backlog is not in it yet), a fresh fake Telegram and N replicas with ARGS; returns
# once their group has settled.
fleet_up() {
  local name=$1 n=$2 i; shift 2
  FLEET_GROUP="fleet-$name"
  kafka_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server "$BOOT" \
    --group "$FLEET_GROUP" --reset-offsets --to-latest --topic payment-completed-topic --execute \
    >>"$STATE/logs/fleet-groups.log" 2>&1
  FLEET_ARGS=(--telegram-chat-id="$FLEET_OPERATOR_CHAT" --kafka-group-id="$FLEET_GROUP"
              --log-level="$FLEET_LOG_LEVEL" "$@")
  start_fake "$RAW/fleet-$name.jsonl" "${FAKE_TELEGRAM[@]}"
  for ((i = 1; i <= n; i++)); do start_replica "$i" "${FLEET_ARGS[@]}"; done
  for ((i = 1; i <= n; i++)); do wait_serving "$(replica_name "$i")" "${REPLICA_HEALTH[$i]}"; done
  FLEET_N=$n
  local deadline=$((SECONDS + 90))
  until fleet_settled "$n"; do
    ((SECONDS < deadline)) || { say "   the group of $n replicas has not settled after 90 s"; break; }
    sleep 1
  done
}
# fleet_go NAME LIMIT PHASE: the case's record, then the relay publishes the backlog.
fleet_go() {
  { echo "limit $2"; echo "payments $FLEET_OK"; echo "phase $3"; echo "replicas $FLEET_N"
    echo "start_ms $(now_ms)"; } >"$RAW/fleet-$1.txt"
  start_relay payment-completed-topic
}
# fleet_end NAME: what the fake and every replica counted, then all of them stopped.
fleet_end() {
  local name=$1 i
  echo "end_ms $(now_ms)" >>"$RAW/fleet-$name.txt"
  curl -s -m 5 "http://127.0.0.1:$TG_PORT/control/stats" >"$RAW/fleet-$name-stats.json" || true
  for ((i = 1; i <= FLEET_N; i++)); do
    [[ -n "${PIDS[$(replica_name "$i")]:-}" ]] || continue
    curl -s -m 5 "http://${REPLICA_METRICS[$i]}/metrics" >"$RAW/fleet-$name-metrics-$i.txt" || true
  done
  fleet_stop
}
# fleet_wait COUNT LIMIT: until every reservation of the case has a message (at most twice the
# ideal drain and two minutes more).
fleet_wait() {
  count_at_least "$1" $(($1 * 2 / $2 + 120)) delivered_distinct || true
  sleep 2  # a resend still on its way after the last first message
}

if want fleet; then
say "7. Fleet: notifier replicas sharing one budget (fake-telegram ${FAKE_TELEGRAM[*]})"
fleet_payers=$FLEET_CHATS
((FLEET_PAID_CHATS > fleet_payers)) && fleet_payers=$FLEET_PAID_CHATS
fleet_mixed=$((FLEET_GROUP_MESSAGES + FLEET_PRIVATE_MESSAGES))
# Case a's payer i has no chat when (i + 1) * G / M passes a whole number: G of the M payers,
# spread evenly, so that the group's payments are interleaved with the private chats'.
sql <<SQL
INSERT INTO payment.users (id, name, mail, balance_won)
  SELECT u, 'fleet payer ' || u, 'fleet' || u || '@example.com', 4000000000000000000
  FROM generate_series($FLEET_FIRST, $FLEET_FIRST + $fleet_payers - 1) u
  UNION ALL
  SELECT u, 'fleet payer ' || u, 'fleet' || u || '@example.com', 4000000000000000000
  FROM generate_series($FLEET_MIXED_FIRST, $FLEET_MIXED_FIRST + $fleet_mixed - 1) u;
INSERT INTO payment.telegram_links (user_id, chat_id)
  SELECT u, u FROM generate_series($FLEET_FIRST, $FLEET_FIRST + $fleet_payers - 1) u;
INSERT INTO payment.telegram_links (user_id, chat_id)
  SELECT $FLEET_MIXED_FIRST + i, $FLEET_MIXED_FIRST + i FROM generate_series(0, $fleet_mixed - 1) i
  WHERE (i + 1) * $FLEET_GROUP_MESSAGES / $fleet_mixed = i * $FLEET_GROUP_MESSAGES / $fleet_mixed;
SQL
mint_tokens "$FLEET_FIRST" "$fleet_payers" "$RAW/fleet-tokens.txt"
mint_tokens "$FLEET_MIXED_FIRST" "$fleet_mixed" "$RAW/fleet-mixed-tokens.txt"
# Whatever earlier sections left unsent goes first (the notifier running is section 3's).
if [[ -n "${PIDS[notifier]:-}" ]]; then
  deadline=$((SECONDS + 300))
  until [[ "$(metric notifier_consumer_lag)" == 0 && "$(metric notifier_pending)" == 0 ]]; do
    ((SECONDS < deadline)) || { say "   the notifier still has a lag after 300 s"; break; }
    sleep 0.5
  done
fi
fleet_stop
# Partitions enough for the most replicas (the relay restarts per case, so it produces to all).
parts=$(kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOT" --describe \
  --topic payment-completed-topic | awk 'match($0, /PartitionCount: *[0-9]+/) {
    s = substr($0, RSTART, RLENGTH); sub(/[^0-9]+/, "", s); print s; exit}')
if ((${parts:-0} < FLEET_PARTITIONS)); then
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOT" --alter \
    --topic payment-completed-topic --partitions "$FLEET_PARTITIONS" >/dev/null
fi
echo "partitions $FLEET_PARTITIONS" >"$RAW/fleet-config.txt"

# a. One busy group among private chats, one replica: the group's messages wait in its queue at
# 20/min while the private chats' go at the rest of the bot's 30/s. The case ends when every
# private chat has its message; the group's (most of them still waiting) stay in its consumer
# group, which no later case reads.
say "   a: $FLEET_GROUP_MESSAGES payments to the operator's group among $FLEET_PRIVATE_MESSAGES to private chats, 1 replica"
fleet_backlog a 100 "$fleet_mixed" "$fleet_mixed" "$FLEET_MIXED_FIRST" "$RAW/fleet-mixed-tokens.txt"
private=$(sqlv "SELECT count(*) FROM payment.payments p JOIN payment.telegram_links l USING (user_id)
                WHERE p.reservation_id >= 10000000000 AND p.reservation_id < 10100000000")
fleet_up a 1
fleet_go a 29.667 100  # 30/s less the group's 20/min
{ echo "private $private"; echo "operator_chat $FLEET_OPERATOR_CHAT"; } >>"$RAW/fleet-a.txt"
count_at_least "$private" $((private * 2 / 30 + 120)) private_delivered || true
fleet_end a
echo a >>"$RAW/fleet-cases.txt"

# b. 1, 2, 3, 6 replicas over one backlog each, limit 30/s.
phase=101
for n in $FLEET_REPLICAS; do
  say "   b$n: $n replica(s), backlog of $FLEET_BACKLOG payments over $FLEET_CHATS chats, limit 30/s"
  fleet_backlog "b$n" "$phase" "$FLEET_BACKLOG" "$FLEET_CHATS" "$FLEET_FIRST" "$RAW/fleet-tokens.txt"
  fleet_up "b$n" "$n"
  fleet_go "b$n" 30 "$phase"
  fleet_wait "$FLEET_OK" 30
  fleet_end "b$n"
  echo "b$n" >>"$RAW/fleet-cases.txt"
  phase=$((phase + 1))
done

# c. 3 replicas; replica 2 killed (SIGKILL) at 25% delivered, a fourth started at 55%.
say "   c: 3 replicas over $FLEET_KILL_BACKLOG payments; one killed at 25%, one added at 55%"
fleet_backlog c 110 "$FLEET_KILL_BACKLOG" "$FLEET_CHATS" "$FLEET_FIRST" "$RAW/fleet-tokens.txt"
fleet_up c 3
fleet_go c 30 110
count_at_least $((FLEET_OK / 4)) $((FLEET_OK / 30 + 120)) delivered || true
kill -KILL "${PIDS[notifier-2]}" 2>/dev/null || true
wait "${PIDS[notifier-2]}" 2>/dev/null || true
unset "PIDS[notifier-2]"
echo "kill_ms $(now_ms)" >>"$RAW/fleet-c.txt"
count_at_least $((FLEET_OK * 55 / 100)) $((FLEET_OK / 30 + 120)) delivered || true
start_replica 4 "${FLEET_ARGS[@]}"
echo "add_ms $(now_ms)" >>"$RAW/fleet-c.txt"
wait_serving notifier-4 "${REPLICA_HEALTH[4]}"
FLEET_N=4
fleet_wait "$FLEET_OK" 30
fleet_end c
echo c >>"$RAW/fleet-cases.txt"

# d. Paid broadcast, 1,000/s, 3 replicas.
say "   d: 3 replicas, paid broadcast, $FLEET_PAID_BACKLOG payments over $FLEET_PAID_CHATS chats, limit 1,000/s"
fleet_backlog d 111 "$FLEET_PAID_BACKLOG" "$FLEET_PAID_CHATS" "$FLEET_FIRST" "$RAW/fleet-tokens.txt"
fleet_up d 3 --telegram-paid-broadcast=true --send-concurrency="$FLEET_PAID_CONCURRENCY"
fleet_go d 1000 111
fleet_wait "$FLEET_OK" 1000
fleet_end d
echo d >>"$RAW/fleet-cases.txt"

# e. The bot's answers while 3 replicas drain a backlog: users of chats without a link write
# "/start" (the fake's /control/updates) one after another; each is timed from its injection to
# the bot's answer accepted at the fake. The replica holding the poller's lock answers through
# its Pacer, ahead of its notifications; payment-server runs with INTERNAL_TOKEN for it.
if ((FLEET_ANSWERS > 0)); then
say "   e: $FLEET_ANSWERS \"/start\" while 3 replicas drain $FLEET_ANSWER_BACKLOG payments"
INTERNAL_TOKEN="bench-internal-token-$(date +%s%N)-0123456789"
INTERNAL_ADDR="127.0.0.1:$(free_port)"
stop payment-server
start_payment_server --internal-token="$INTERNAL_TOKEN" --internal-grpc-address="$INTERNAL_ADDR"
sql -c "UPDATE notification.telegram_updates SET next_update_id = 0"  # the fake counts from 1
fleet_backlog e 112 "$FLEET_ANSWER_BACKLOG" "$FLEET_CHATS" "$FLEET_FIRST" "$RAW/fleet-tokens.txt"
fleet_up e 3 --telegram-updates=poll --internal-token="$INTERNAL_TOKEN" \
  --payment-server-address="$INTERNAL_ADDR"
polls() {
  curl -s -m 5 "http://127.0.0.1:$TG_PORT/control/stats" |
    "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("get_updates", 0))'
}
count_at_least 1 30 polls || say "   no replica polls getUpdates"
fleet_go e 30 112
echo "answers $FLEET_ANSWERS" >>"$RAW/fleet-e.txt"
sleep 3  # the drain is under way
for ((i = 0; i < FLEET_ANSWERS; i++)); do
  chat=$((FLEET_ANSWER_CHAT + i))
  injected=$(now_ms)
  curl -s -m 5 -X POST -H 'Content-Type: application/json' \
    -d "{\"chat_id\": $chat, \"text\": \"/start\"}" \
    "http://127.0.0.1:$TG_PORT/control/updates" >/dev/null
  echo "$chat $injected" >>"$RAW/fleet-e-answers.txt"
  deadline=$((SECONDS + 30))
  until [[ "$(curl -s -m 5 "http://127.0.0.1:$TG_PORT/control/messages?chat_id=$chat")" == *accepted_at_ms* ]]; do
    ((SECONDS < deadline)) || { say "   no answer in chat $chat after 30 s"; break; }
    sleep 0.1
  done
  sleep 2
done
echo "answers_done_ms $(now_ms)" >>"$RAW/fleet-e.txt"
fleet_wait "$FLEET_OK" 30
fleet_end e
echo e >>"$RAW/fleet-cases.txt"
fi
# The relay runs on, as the sections after this one expect.
[[ -n "${PIDS[outbox-relay]:-}" ]] || start_relay payment-completed-topic
fi

# ---------------------------------------------------------------- 6. Opening
# Users of their own (ids from OPENING_FIRST, money enough), and per run a schedule of its own
# with OPENING_SEATS free seats PHASE*10^8 + n; user n races for seat n % OPENING_SEATS.
if want spike; then
say "6. Opening: $OPENING_USERS users race for $OPENING_SEATS seats at concurrency $OPENING_LEVELS; pgbench reference"
OPENING_FIRST=2000001
echo "$OPENING_SEATS" >"$RAW/opening-seats"
sql -c "INSERT INTO payment.users (id, name, mail, balance_won)
  SELECT u, 'fan ' || u, 'fan' || u || '@example.com', 4000000000000000000
  FROM generate_series($OPENING_FIRST, $OPENING_FIRST + $OPENING_USERS - 1) u"
mint_tokens "$OPENING_FIRST" "$OPENING_USERS" "$RAW/opening-tokens.txt"
opening_seats() {  # PHASE
  sql <<EOF
INSERT INTO payment.schedules (id, concert_id, starts_at) VALUES ($1 + 1, 1, now() + interval '30 days');
INSERT INTO payment.seats (id, schedule_id, seat_number, price_won)
  SELECT $(($1 * 100000000)) + n, $1 + 1, n, 50000 FROM generate_series(0, $OPENING_SEATS - 1) n;
EOF
}
# opening_sold PHASE: seats of the phase's schedule sold, reservations paid twice and balances
# below zero (both must be 0).
opening_sold() {
  sqlv "SELECT count(*) FILTER (WHERE r.status = 'PAID') || ' ' ||
          (SELECT count(*) FROM (SELECT reservation_id FROM payment.payments
             GROUP BY reservation_id HAVING count(*) > 1) twice) || ' ' ||
          (SELECT count(*) FROM payment.users WHERE balance_won < 0)
        FROM payment.reservations r JOIN payment.seats s ON s.id = r.seat_id
        WHERE s.schedule_id = $1 + 1"
}
run_opening() {  # PHASE CONCURRENCY
  "$BIN/spike-client" --address="$PAY_ADDR" --tokens="$RAW/opening-tokens.txt" \
    --first-seat=$(($1 * 100000000)) --seats="$OPENING_SEATS" --concurrency="$2" \
    --deadline=10s >"$RAW/opening-c$2.json"
}
start_payment_server
phase=80
for c in $OPENING_LEVELS; do
  opening_seats "$phase"
  say "   spike-client -c $c (seats ${phase}xxxxxxxx)"
  measured "opening-c$c" run_opening "$phase" "$c"
  echo "$c $phase $(opening_sold "$phase")" >>"$RAW/opening-levels.txt"
  phase=$((phase + 1))
done

# PayConcert alone: OPENING_PAYMENTS held reservations of the opening's users (reservation n of a
# phase is user n's, its token on line n of the tokens file) paid at each level; its throughput at
# a thousand callers against its own at the first level, and payment-server's CPU per payment.
run_opening_pay() {  # PHASE CONCURRENCY
  "$BIN/spike-client" --address="$PAY_ADDR" --tokens="$RAW/opening-tokens.txt" \
    --payments="$OPENING_PAYMENTS" --first-reservation=$(($1 * 100000000)) --concurrency="$2" \
    --deadline=10s >"$RAW/opening-pay-c$2.json"
}
pay_phase=90
for c in $OPENING_PAY_LEVELS; do
  seed_range "$pay_phase" "$OPENING_PAYMENTS" "$OPENING_USERS" "$OPENING_FIRST"
  say "   spike-client --payments=$OPENING_PAYMENTS -c $c (reservations ${pay_phase}xxxxxxxx)"
  measured "opening-pay-c$c" run_opening_pay "$pay_phase" "$c"
  echo "$c $pay_phase" >>"$RAW/opening-pay-levels.txt"
  pay_phase=$((pay_phase + 1))
done
stop payment-server

# The reference of payment-server's CPU per payment: pgbench running PayConcert's one statement
# over as many reservations at the first pay level (Postgres's CPU per transaction).
ref_c=${OPENING_PAY_LEVELS%% *}
seed_range "$pay_phase" "$OPENING_PAYMENTS" "$OPENING_USERS" "$OPENING_FIRST"
cat >"$RAW/opening-pay.pgbench" <<'EOF'
SELECT p.outcome FROM (SELECT nextval('bench_opening_reservation') AS rid) s,
  payment.pay_concert(:first + (s.rid - :base) % :users, s.rid, '{}') p;
EOF
sql -c "DROP SEQUENCE IF EXISTS bench_opening_reservation;
        CREATE SEQUENCE bench_opening_reservation START $((pay_phase * 100000000));"
say "   pgbench -c $ref_c, PayConcert's one statement"
measured "opening-pay-pgbench" run_pgbench "opening-pay-pgbench" opening-pay.pgbench "$ref_c" \
  -t $((OPENING_PAYMENTS / ref_c)) -D first="$OPENING_FIRST" -D users="$OPENING_USERS" \
  -D base=$((pay_phase * 100000000))
echo "$ref_c $pay_phase" >"$RAW/opening-pay-pgbench-level.txt"

# The same two statements straight from pgbench, one transaction per user: the hold, then its
# payment when held. As many connections as Postgres allows (a few kept for psql and the rest).
cat >"$RAW/opening.pgbench" <<'EOF'
SELECT nextval('bench_opening_user') AS n \gset
\set payer :first + :n % :users
\set seat :base + :n % :seats
SELECT coalesce(r.reservation_id, 0) AS rid, (r.outcome = 'HELD')::int AS held
  FROM payment.reserve_seat(:payer, :seat, 300000) r \gset
\if :held
SELECT p.outcome FROM payment.pay_concert(:payer, :rid, '{}') p;
\endif
EOF
opening_seats "$phase"
clients=$(( $(sqlv "SHOW max_connections") - 10 ))
sql -c "DROP SEQUENCE IF EXISTS bench_opening_user; CREATE SEQUENCE bench_opening_user MINVALUE 0 START 0;"
say "   pgbench -c $clients, the same two statements"
measured "opening-pgbench" run_pgbench "opening-pgbench" opening.pgbench "$clients" \
  -t $(( (OPENING_USERS + clients - 1) / clients )) -D first="$OPENING_FIRST" \
  -D users="$OPENING_USERS" -D base=$((phase * 100000000)) -D seats="$OPENING_SEATS"
echo "$clients $phase $(opening_sold "$phase")" >"$RAW/opening-pgbench-level.txt"
fi

# ---------------------------------------------------------------- report
say "writing the report"
for s in payment-server outbox-relay notifier retry-worker fake-telegram; do stop "$s"; done
echo "CMake $(awk -F= '/^CMAKE_BUILD_TYPE:/ {print $2}' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null), $(git rev-parse --short HEAD)" >"$RAW/build.txt"
{ uname -srm; grep -m1 'model name' /proc/cpuinfo | cut -d: -f2; nproc; free -g | awk '/Mem:/ {print $2 " GiB"}'; } >"$RAW/machine.txt"
# The profiles bench/profile.sh left, if any (it runs apart: same state directory).
for s in notifier payment-server; do
  [[ -s "$STATE/profile/$s/top.txt" ]] && cp "$STATE/profile/$s/top.txt" "$RAW/profile-$s.txt"
done
mkdir -p bench/results
# A run of chosen sections is named after them, so it never overwrites the day's full run.
RESULT="bench/results/$(date -u +%Y-%m-%d)"
[[ -n "${BENCH_SECTIONS:-}" ]] && RESULT+="-$(echo $BENCH_SECTIONS | tr ' ' '-')"
"$PY" bench/analyze.py --raw "$RAW" --out "$RESULT"
say "done: $RESULT.{json,md,png}"
