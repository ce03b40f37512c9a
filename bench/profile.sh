#!/usr/bin/env bash
# bench/profile.sh — where the CPU goes, with perf, for one of two services under load. Same
# private Postgres/Kafka setup as run.sh (do not run both at once: they share .local/bench/),
# stopped at the end.
#
#   bench/profile.sh notifier         the notifier (the slowest stage in bench/run.sh) working
#                                     through a backlog at its highest unlimited rate (run.sh's
#                                     case 3a: fake-telegram --profile=instant, unpaced)
#   bench/profile.sh payment-server   PayConcert under ghz at concurrency 8 (as in run.sh's
#                                     section 1): the whole machine, as ghz, payment-server and
#                                     Postgres share its cores
#
# Output in .local/bench/profile/<service>/ (top.txt: top entries, also copied into the next
# bench/run.sh report). perf stat (CPU used vs wall time, context switches), perf record -g.
#
# Environment: BUILD_DIR (default build), PROFILE_EVENTS (payments queued, default 40000: enough
# that the notifier is busy for the whole window at ~5,000/s), PROFILE_SECONDS (window, default 6),
# PROFILE_SEND_CONCURRENCY (the notifier's SEND_CONCURRENCY, default 64), PROFILE_USERS (payers
# for payment-server, default 64 as in run.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=../scripts/lib.sh
. scripts/lib.sh
BIN=$(realpath -m "${BUILD_DIR:-build}")/bin
TARGET=${1:-notifier}
[[ "$TARGET" == notifier || "$TARGET" == payment-server ]] ||
  die "usage: bench/profile.sh [notifier|payment-server]"
N=${PROFILE_EVENTS:-40000}
USERS=${PROFILE_USERS:-64}
WINDOW=${PROFILE_SECONDS:-6}
CONCURRENCY=${PROFILE_SEND_CONCURRENCY:-64}
OUT="$LOCAL/bench/profile/$TARGET"
command -v perf >/dev/null && perf stat -e instructions true >/dev/null 2>&1 ||
  die "perf is not usable here (try valgrind --tool=callgrind on $BIN/$TARGET instead)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export PG_PORT PG_DIR KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_DIR
PG_PORT=$(free_port) PG_DIR="$LOCAL/bench/pg" KAFKA_PORT=$(free_port)
KAFKA_CONTROLLER_PORT=$(free_port) KAFKA_DIR="$LOCAL/bench/kafka"
DB="postgresql://concert:concert@127.0.0.1:$PG_PORT/concert" BOOT="127.0.0.1:$KAFKA_PORT"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 2
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  scripts/kafka.sh stop >/dev/null 2>&1 || true
  scripts/postgres.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT
rm -rf "$PG_DIR" "$KAFKA_DIR" "$OUT"; mkdir -p "$OUT"
scripts/postgres.sh start >/dev/null
scripts/kafka.sh start >/dev/null
"$BIN/payment-server" migrate --database-url="$DB" >"$OUT/migrate.log" 2>&1
/usr/lib/postgresql/15/bin/psql -X -q -v ON_ERROR_STOP=1 "$DB" <<EOF
INSERT INTO payment.concerts (id, title) VALUES (1, 'Benchmark Live');
INSERT INTO payment.schedules (id, concert_id, starts_at) VALUES (1, 1, now() + interval '30 days');
INSERT INTO payment.users (id, name, mail, balance_won)
  SELECT u, 'bench ' || u, 'bench' || u || '@example.com', 4000000000000000000 FROM generate_series(1, $USERS) u;
INSERT INTO payment.seats (id, schedule_id, seat_number, price_won) SELECT n, 1, n, 50000 FROM generate_series(1, $N) n;
INSERT INTO payment.reservations (id, user_id, seat_id, amount_won, status, expires_at)
  SELECT n, 1 + n % $USERS, n, 50000, 'HELD', now() + interval '1 day' FROM generate_series(1, $N) n;
ANALYZE payment.reservations;
EOF
PAY="127.0.0.1:$(free_port)" SECRET=profile-auth-token-secret-of-32-bytes
"$BIN/payment-server" --database-url="$DB" --grpc-address="$PAY" --metrics-address="127.0.0.1:$(free_port)" \
  --auth-token-secret="$SECRET" --log-level=warn >"$OUT/payment-server.log" 2>&1 & PIDS+=($!)
RELAY_METRICS="127.0.0.1:$(free_port)"
if [[ "$TARGET" == notifier ]]; then
  "$BIN/outbox-relay" --database-url="$DB" --kafka-bootstrap-servers="$BOOT" --grpc-address="127.0.0.1:$(free_port)" \
    --metrics-address="$RELAY_METRICS" --log-level=warn >"$OUT/relay.log" 2>&1 & PIDS+=($!)
fi
wait_for_port 127.0.0.1 "${PAY##*:}" 60 || die "payment-server did not listen"
sleep 3
# Call n pays reservation n + 1 with the token of its owner, user 1 + (n + 1) % USERS.
tokens=""
for ((u = 1; u <= USERS; u++)); do
  tokens+=" \`$("$BIN/payment-server" mint-token --user-id="$u" --auth-token-secret="$SECRET")\`"
done
METADATA="{\"authorization\":\"Bearer {{index (list$tokens) (mod (add .RequestNumber 1) $USERS)}}\"}"
pay() {  # ghz ARGS...: PayConcert at concurrency 8 over the seeded reservations, in order
  "$LOCAL/bin/ghz" --insecure --call concert.v1.PaymentService/PayConcert \
    --data '{"reservation_id":"{{add .RequestNumber 1}}"}' --metadata "$METADATA" \
    -c 8 --skipFirst 0 -O summary "$@" "$PAY" >"$OUT/ghz.txt" 2>&1 || true
}
# perf_top PERF_DATA SORT PERCENT [perf report options]: the first lines of a flat perf report.
perf_top() {
  local data=$1 sort=$2 percent=$3; shift 3
  perf report -i "$data" --stdio --no-children -g none --sort "$sort" --percent-limit "$percent" "$@" \
    2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
}

if [[ "$TARGET" == payment-server ]]; then
  pay -z $((WINDOW + 5))s &
  GHZ=$!
  sleep 3
  perf stat -a -e task-clock,context-switches -- sleep "$WINDOW" 2>"$OUT/perf-stat.txt" &
  STAT=$!
  perf record -a -F 499 -o "$OUT/perf-all.data" -- sleep "$WINDOW" >/dev/null 2>&1
  wait "$STAT"
  wait "$GHZ"
  {
    grep -E 'Requests/sec|Average' "$OUT/ghz.txt"
    awk '/task-clock|context-switches|seconds time elapsed/ {$1 = $1; print}' "$OUT/perf-stat.txt"
    echo "the machine, by process (thread name):"
    perf_top "$OUT/perf-all.data" comm 2
    echo "by thread name and shared object (payment-server's threads: grpcpp_sync_ser, nexting_thread):"
    perf_top "$OUT/perf-all.data" comm,dso 0.8
  } | sed -E 's/[ -]+$//; s/  +/  /g' | cut -c1-140 >"$OUT/top.txt"
  say "profiled payment-server; see $OUT/top.txt"
  exit 0
fi

pay -n "$N"
# The relay publishes the backlog while the notifier is not running yet.
relayed() { curl -s -m 5 "http://$RELAY_METRICS/metrics" | awk '$1 == "relay_events_total" {print int($2)}'; }
paid=$(/usr/lib/postgresql/15/bin/psql -X -q -t -A "$DB" -c "SELECT count(*) FROM payment.payments")
caught_up() { local n; n=$(relayed); ((${n:-0} >= paid)); }
wait_until 300 caught_up || die "the relay published $(relayed) of $paid events"
TG=$(free_port)
"$BIN/fake-telegram" --port="$TG" --record="$OUT/telegram.jsonl" --profile=instant >"$OUT/fake.log" 2>&1 & PIDS+=($!)
wait_for_port 127.0.0.1 "$TG" 20
"$BIN/notifier" --database-url="$DB" --kafka-bootstrap-servers="$BOOT" --telegram-api-base="http://127.0.0.1:$TG" \
  --telegram-bot-token=bench --telegram-chat-id=42 --telegram-updates=off \
  --telegram-rate=0 --telegram-chat-interval=0 --telegram-group-interval=0 --send-concurrency="$CONCURRENCY" \
  --grpc-address="127.0.0.1:$(free_port)" \
  --metrics-address="127.0.0.1:$(free_port)" --log-level=warn >"$OUT/notifier.log" 2>&1 & NPID=$!; PIDS+=("$NPID")
wait_until 30 test -s "$OUT/telegram.jsonl" || die "notifier sent nothing"
# WINDOW s of the catch-up: CPU it used vs wall time, and where.
before=$(wc -l <"$OUT/telegram.jsonl")
perf stat -e task-clock,context-switches,cpu-migrations -p "$NPID" -- sleep "$WINDOW" 2>"$OUT/perf-stat.txt" &
STAT=$!
perf record -F 499 -p "$NPID" -o "$OUT/perf.data" -- sleep "$WINDOW" >/dev/null 2>&1
wait "$STAT"
echo "$(( ($(wc -l <"$OUT/telegram.jsonl") - before) / WINDOW )) msgs/s during the window" >"$OUT/rate.txt"
# (-g none: resolving the call graphs takes minutes on this machine.)
perf report -i "$OUT/perf.data" --stdio --no-children -g none --sort dso >"$OUT/perf-report.txt" 2>/dev/null
perf report -i "$OUT/perf.data" --stdio --no-children -g none --sort dso,symbol --percent-limit 1 \
  >>"$OUT/perf-report.txt" 2>/dev/null
# Top entries: by shared object, then by symbol (self time, samples of every thread).
{
  cat "$OUT/rate.txt"
  awk '/task-clock|context-switches|seconds time elapsed/ {$1 = $1; print}' "$OUT/perf-stat.txt"
  perf_top "$OUT/perf.data" dso 2 | head -8
  perf_top "$OUT/perf.data" dso,symbol 1
} | sed -E 's/[ -]+$//; s/  +/  /g' | cut -c1-140 >"$OUT/top.txt"
say "notified $(wc -l <"$OUT/telegram.jsonl") of $N; see $OUT/top.txt, $OUT/perf-stat.txt and $OUT/perf-report.txt"
