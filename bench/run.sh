#!/usr/bin/env bash
# bench/run.sh — what `make bench` runs: every stage of the pipeline measured beside a reference
# that runs on the same machine in the same run (these machines are shared and noisy, so only
# the ratios compare from run to run).
#
#   1. PayConcert   ghz at several concurrency levels  vs  pgbench running the same transaction
#   2. Relay        outbox rows -> acknowledged Kafka records (backlog + steady rates)
#                   vs  Kafka's ProducerPerformance (same record size, acks=all, idempotence)
#   3. End to end   steady payment rates -> notification at the fake Telegram; notifier
#                   throughput over a backlog and over a replay that dedup must swallow
#   4. Memory       idle and peak resident memory of each service
#
# It starts its own Postgres and Kafka on free ports (state in .local/bench/, wiped at start),
# the services and the fake Telegram, and stops all of them at the end, on failure and on Ctrl-C.
# Output: bench/results/<date>.{json,md,png}. Raw measurements stay in .local/bench/raw/.
#
# Environment (defaults = the full run; BENCH_QUICK=1 = a seconds-long smoke run):
#   BUILD_DIR              build directory holding bin/ (default build)
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
#   BENCH_RATE_CAP         upper bound of any phase's rate, used to size the seeded data (15000/s)
#   BENCH_USERS            users the reservations are spread over (default 64)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=../scripts/lib.sh
. scripts/lib.sh

BUILD_DIR=$(realpath -m "${BUILD_DIR:-build}")
BIN="$BUILD_DIR/bin"
QUICK=${BENCH_QUICK:-0}
if [[ "$QUICK" == 1 ]]; then
  d_pay=3 d_relay=3 d_e2e=4 backlog=5000 nbacklog=1000
else
  d_pay=30 d_relay=60 d_e2e=60 backlog=100000 nbacklog=20000
fi
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

GHZ="$LOCAL/bin/ghz"
GRPCURL="$LOCAL/bin/grpcurl"
PGBENCH=/usr/lib/postgresql/15/bin/pgbench
PSQL=/usr/lib/postgresql/15/bin/psql
VENV="$LOCAL/bench-venv"
STATE="$LOCAL/bench"
RAW="$STATE/raw"

for b in payment-server outbox-relay notifier retry-worker fake-telegram; do
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
echo "quick=$QUICK pay_duration=$PAY_DURATION relay_duration=$RELAY_DURATION e2e_duration=$E2E_DURATION" >"$RAW/config.txt"

scripts/postgres.sh start >/dev/null
scripts/kafka.sh start >/dev/null
SECRET="bench-$(date +%s%N)"
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
# seed_range PHASE COUNT: COUNT held reservations PHASE*10^8 + n (n = 0..COUNT-1), owned by
# user n % USERS + 1, each on its own seat (of the phase's own schedule).
seed_range() {
  local base=$(($1 * 100000000)) n=$2
  sql <<EOF
INSERT INTO payment.schedules (id, concert_id, starts_at) VALUES ($1 + 1, 1, now() + interval '30 days');
INSERT INTO payment.seats (id, schedule_id, seat_number, price_won)
  SELECT $base + n, $1 + 1, n, 50000 FROM generate_series(0, $n - 1) n;
INSERT INTO payment.reservations (id, user_id, seat_id, amount_won, status, expires_at)
  SELECT $base + n, n % $USERS + 1, $base + n, 50000, 'HELD', now() + interval '1 day'
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

PAY_ADDR="127.0.0.1:$(free_port)"
start_payment_server() {
  start payment-server "$BIN/payment-server" --database-url="$DB" --grpc-address="$PAY_ADDR" \
    --metrics-address="127.0.0.1:$(free_port)" --auth-token-secret="$SECRET" --log-level=warn \
    --db-pool-size=32 --grpc-max-threads=64
  wait_serving payment-server "$PAY_ADDR"
}

# ---------------------------------------------------------------- 1. PayConcert
say "1. PayConcert: ghz at concurrency $PAY_LEVELS, ${PAY_DURATION}s each; pgbench reference"
start_payment_server
sleep 1; mem payment-server idle
phase=1
for c in $PAY_LEVELS; do
  seed_range "$phase" $((RATE_CAP * PAY_DURATION))
  say "   ghz -c $c (reservations ${phase}xxxxxxxx)"
  pay_ghz "$phase" "$RAW/pay-ghz-c$c.json" -c "$c" -z "${PAY_DURATION}s"
  echo "$c $phase" >>"$RAW/pay-levels.txt"
  phase=$((phase + 1))
done
mem payment-server pay-load
stop payment-server

# Same transaction in SQL: lock the reservation (same joins), debit, mark paid, insert the
# payment, insert the outbox row with a payload as long as the real events' payloads.
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
  rm -f "$RAW"/pgbench-c"$c".[0-9]*
  (cd "$RAW" && "$PGBENCH" -n -M prepared -c "$c" -j "$(( c < 2 ? 1 : 2 ))" -T "$PAY_DURATION" \
    -f pay.pgbench -D payload="$PAYLOAD_HEX" -l --log-prefix="pgbench-c$c" "$DB" \
    >"pgbench-c$c.out" 2>&1) || { cat "$RAW/pgbench-c$c.out" >&2; die "pgbench failed"; }
  cat "$RAW"/pgbench-c"$c".[0-9]* >"$RAW/pgbench-c$c.txt"; rm -f "$RAW"/pgbench-c"$c".[0-9]*
  phase=$((phase + 1))
done

# ---------------------------------------------------------------- 2. Relay
say "2. Relay: backlog $RELAY_BACKLOG rows, steady $RELAY_RATES rows/s; ProducerPerformance reference"
sql -c "TRUNCATE payment.outbox_events"
# Records in the bench topics carry the broker's append time (LogAppendTime): with acks=all on a
# single broker that is when the record became acknowledged, on the same clock as Postgres.
for t in bench-relay bench-reference; do
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOT" --create --topic "$t" \
    --partitions 3 --replication-factor 1 --config message.timestamp.type=LogAppendTime >/dev/null
done
RELAY_HEALTH="127.0.0.1:$(free_port)"
start_relay() {  # TOPIC
  start outbox-relay "$BIN/outbox-relay" --database-url="$DB" --kafka-bootstrap-servers="$BOOT" \
    --payment-completed-topic="$1" --grpc-address="$RELAY_HEALTH" \
    --metrics-address="127.0.0.1:$(free_port)" --log-level=warn
  wait_serving outbox-relay "$RELAY_HEALTH"
}
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

# ---------------------------------------------------------------- 3. End to end
say "3. End to end: notifier backlog $NOTIFY_BACKLOG, steady payments at $E2E_RATES per s, ${E2E_DURATION}s each"
TG_PORT=$(free_port)
start fake-telegram "$BIN/fake-telegram" --port="$TG_PORT" --record="$RAW/telegram.jsonl"
wait_for_port 127.0.0.1 "$TG_PORT" 20 || die "fake-telegram did not listen"
NOTIFIER_HEALTH="127.0.0.1:$(free_port)" NOTIFIER_METRICS="127.0.0.1:$(free_port)"
start_notifier() {
  start notifier "$BIN/notifier" --database-url="$DB" --kafka-bootstrap-servers="$BOOT" \
    --telegram-api-base="http://127.0.0.1:$TG_PORT" --telegram-bot-token=bench \
    --telegram-chat-id=42 --telegram-updates=off --grpc-address="$NOTIFIER_HEALTH" \
    --metrics-address="$NOTIFIER_METRICS" \
    --log-level=warn
  wait_serving notifier "$NOTIFIER_HEALTH"
}
RETRY_ADDR="127.0.0.1:$(free_port)"
start retry-worker "$BIN/retry-worker" --database-url="$DB" --kafka-bootstrap-servers="$BOOT" \
  --admin-token="$ADMIN_TOKEN" --grpc-address="$RETRY_ADDR" \
  --metrics-address="127.0.0.1:$(free_port)" --log-level=warn
start_payment_server
start_relay payment-completed-topic
start_notifier
wait_serving retry-worker "$RETRY_ADDR"
sleep 2
for s in payment-server outbox-relay notifier retry-worker; do mem "$s" e2e-idle; done
delivered() { wc -l <"$RAW/telegram.jsonl" 2>/dev/null || echo 0; }
wait_delivered() {  # COUNT SECONDS
  local deadline=$((SECONDS + $2))
  until (($(delivered) >= $1)); do
    ((SECONDS < deadline)) || { say "   only $(delivered) of $1 notifications after $2 s"; return 1; }
    sleep 0.5
  done
}
metric() { curl -s "http://$NOTIFIER_METRICS/metrics" | awk -v m="$1" '$1 == m {print int($2)}'; }

# 3a. Notifier throughput: a backlog of payments is relayed while the notifier is stopped, then
# it starts and works through it (a dedup row per event); then its group is rewound and it reads
# the same events again, which dedup must swallow without sending anything.
stop notifier
phase=50
seed_range "$phase" "$NOTIFY_BACKLOG"
pay_ghz "$phase" "$RAW/e2e-backlog-ghz.json" -c 16 -n "$NOTIFY_BACKLOG"
consume payment-completed-topic "$NOTIFY_BACKLOG" "$RAW/e2e-backlog-records.txt"
now_ms >"$RAW/notify-backlog-start-ms"
start_notifier
wait_delivered "$NOTIFY_BACKLOG" 600 || die "notifier backlog not delivered"
now_ms >"$RAW/notify-backlog-end-ms"
mem notifier backlog
stop notifier
sent_before=$(delivered)
kafka_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server "$BOOT" \
  --group notification-group --reset-offsets --to-earliest --all-topics --execute >/dev/null
now_ms >"$RAW/notify-replay-start-ms"
start_notifier
deadline=$((SECONDS + 600))
until dups=$(metric notifier_duplicates_total); ((${dups:-0} >= NOTIFY_BACKLOG)); do
  ((SECONDS < deadline)) || die "replay: duplicates never reached $NOTIFY_BACKLOG"
  sleep 0.2
done
now_ms >"$RAW/notify-replay-end-ms"
echo "$(( $(delivered) - sent_before ))" >"$RAW/notify-replay-resent"
echo "$NOTIFY_BACKLOG" >"$RAW/notify-backlog-count"

# 3b. Steady payment rates (ghz's constant-rate schedule).
max_rate() {  # the highest rate this run found every stage able to carry, times 0.8
  "$PY" "$ROOT/bench/analyze.py" --raw "$RAW" --max-rate
}
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
            WHERE reservation_id >= 5000000000" >"$RAW/e2e-paid.txt"

# ---------------------------------------------------------------- report
say "writing the report"
for s in payment-server outbox-relay notifier retry-worker fake-telegram; do stop "$s"; done
echo "CMake $(awk -F= '/^CMAKE_BUILD_TYPE:/ {print $2}' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null), $(git rev-parse --short HEAD)" >"$RAW/build.txt"
{ uname -srm; grep -m1 'model name' /proc/cpuinfo | cut -d: -f2; nproc; free -g | awk '/Mem:/ {print $2 " GiB"}'; } >"$RAW/machine.txt"
mkdir -p bench/results
"$PY" bench/analyze.py --raw "$RAW" --out "bench/results/$(date -u +%Y-%m-%d)"
say "done: bench/results/$(date -u +%Y-%m-%d).{json,md,png}"
