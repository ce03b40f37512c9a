#!/usr/bin/env bash
# scripts/test-image.sh — `make test-image`: runs every binary of the image `make image` built
# the way the manifests run it, without a cluster. scripts/pod-args.py turns the dev overlay's
# pod specs into `podman run` arguments (UID 10001, read-only root, emptyDirs as tmpfs, dropped
# capabilities, the ConfigMaps' and Secrets' environment), so a manifest change is tested too:
#
#   1. help      each binary's --help exits 0 and lists its settings;
#   2. settings  a bad setting (LOG_LEVEL=loud) stops each service at start with exit 2;
#   3. serving   Postgres and Kafka (scripts/postgres.sh, scripts/kafka.sh) run in a network
#                namespace of our own; the three init containers migrate, payment-server seeds
#                the demo data, the four services start and answer grpc.health.v1 and /metrics,
#                a payment made with grpcurl reaches the notifier's log sender (the dev overlay
#                has no Telegram token) as a line in its NOTIFICATIONS_FILE.
#
# The namespace has loopback only, so the services keep the manifests' 0.0.0.0 addresses and
# ports without clashing with anything on this machine, and nothing is reachable from outside.
# Only the Service names change: postgres:5432 and kafka:9092 become Postgres on 127.0.0.1:55482
# and Kafka on 127.0.0.1:19292 (controller 19293). Everything started is stopped on exit, and
# leftovers of a killed run are removed first.
#
# Environment: IMAGE (default: the dev overlay's), TEST_IMAGE_TIMEOUT (seconds per wait, 90).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

IMAGE=${IMAGE:-registry.example.com/concert/concert:0.1.0}
TIMEOUT=${TEST_IMAGE_TIMEOUT:-90}
NETNS=concert-image-test
LABEL=concert-image-test
WORK="$LOCAL/test-image"
GRPCURL="$LOCAL/bin/grpcurl"
export PG_PORT=55482 PG_DIR="$WORK/postgres"
export KAFKA_PORT=19292 KAFKA_CONTROLLER_PORT=19293 KAFKA_DIR="$WORK/kafka"
SERVICES=(payment-server outbox-relay notifier retry-worker)
# Each service's gRPC port in the dev overlay (its GRPC_ADDRESS) and metrics port.
declare -A GRPC_PORT=([payment-server]=50051 [retry-worker]=50052 [outbox-relay]=50053 [notifier]=50054)
declare -A METRICS_PORT=([payment-server]=9101 [outbox-relay]=9102 [notifier]=9103 [retry-worker]=9104)
# runc: crun refuses this machine's hybrid cgroup layout (see scripts/image.sh).
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)
# Explicit limits on every run: podman's defaults for root (1048576 open files and processes)
# are more than this machine lets a process set ("error setting rlimit type 7": no
# CAP_SYS_RESOURCE here). These are ample for a service.
LIMITS=(--ulimit nofile=16384:16384 --ulimit nproc=4096:4096)

in_netns() { ip netns exec "$NETNS" "$@"; }

cleanup() {
  local ids
  mapfile -t ids < <("${PODMAN[@]}" ps -aq --filter "label=$LABEL" 2>/dev/null || true)
  ((${#ids[@]} == 0)) || "${PODMAN[@]}" rm -f -t 2 "${ids[@]}" >/dev/null 2>&1 || true
  if ip netns list | grep -qw "$NETNS"; then
    in_netns scripts/kafka.sh stop >/dev/null 2>&1 || true
    in_netns scripts/postgres.sh stop >/dev/null 2>&1 || true
    ip netns delete "$NETNS" || true
  fi
}

((EUID == 0)) || die "needs root (network namespace, container storage)"
[[ -x "$GRPCURL" ]] || die "no $GRPCURL: run scripts/install-deps.sh grpcurl"
"${PODMAN[@]}" image exists "$IMAGE" || die "no image $IMAGE: run 'make image' first"
cleanup
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK"
passed=0
check() {  # check WHAT CMD...: run CMD; count and report the outcome; stop at the first failure
  local what=$1; shift
  if "$@"; then
    passed=$((passed + 1))
    say "ok  $what"
  else
    die "FAILED: $what"
  fi
}

# The rendered dev overlay: the pod specs the arguments come from, rendered by the kustomize
# that scripts/check-k8s.sh pins and installs (the same version, the same stamp; CTest runs the
# two one after the other).
KUSTOMIZE_VERSION=$(sed -n 's/^KUSTOMIZE_VERSION=//p' scripts/check-k8s.sh)
want="sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
if [[ ! -x "$LOCAL/bin/kustomize" || "$(cat "$LOCAL/bin/.kustomize.version" 2>/dev/null)" != "$want" ]]; then
  say "installing kustomize $KUSTOMIZE_VERSION (go install $want)"
  mkdir -p "$LOCAL/bin"
  (cd "$LOCAL/bin" && GOBIN="$LOCAL/bin" go install -ldflags "-s -w" "$want")
  echo "$want" >"$LOCAL/bin/.kustomize.version"
fi
"$LOCAL/bin/kustomize" build deploy/k8s/overlays/dev >"$WORK/dev.yaml"
# run_args WORKLOAD CONTAINER [pod-args options]: the podman run options into the array OPTS
# and the command's arguments (after the image) into CMD, the Service names replaced.
run_args() {
  local args i
  mapfile -t args < <(scripts/pod-args.py "$WORK/dev.yaml" "$@" \
    --replace postgres:5432=127.0.0.1:$PG_PORT --replace kafka:9092=127.0.0.1:$KAFKA_PORT)
  ((${#args[@]} > 0)) || die "pod-args.py failed for $*"
  for i in "${!args[@]}"; do [[ "${args[$i]}" != IMAGE ]] || break; done
  OPTS=("${args[@]:0:i}")
  CMD=("${args[@]:i+1}")
}
# run WORKLOAD CONTAINER [ARGS...]: the container once, in the namespace, with ARGS after its
# command (EXTRA: more podman options); its output on stdout.
EXTRA=()
run() {
  local workload=$1 container=$2; shift 2
  local init=()
  [[ "$container" != migrate ]] || init=(--init)
  run_args "$workload" "$container" "${init[@]}"
  "${PODMAN[@]}" run "${LIMITS[@]}" --rm --label "$LABEL" --network "ns:/run/netns/$NETNS" "${OPTS[@]}" \
    "${EXTRA[@]}" "$IMAGE" "${CMD[@]}" "$@"
}

# 1. --help, as the manifests' user on a read-only root and without any network.
help_ok() {
  local out
  out=$("${PODMAN[@]}" run "${LIMITS[@]}" --rm --label "$LABEL" --network none --user 10001:10001 --read-only \
    --entrypoint "/usr/local/bin/$1" "$IMAGE" --help) || return 1
  grep -q DATABASE_URL <<<"$out"
}
for s in "${SERVICES[@]}"; do check "$s --help" help_ok "$s"; done

# 2. A bad setting stops each service at start: exit 2 and one line naming the setting.
ip netns add "$NETNS"
in_netns ip link set lo up
bad_setting_exits_2() {
  local status=0 out
  EXTRA=(--env LOG_LEVEL=loud)
  out=$(run "$1" "$1" 2>&1 >/dev/null) || status=$?
  EXTRA=()
  if ((status != 2)) || ! grep -q LOG_LEVEL <<<"$out"; then
    say "$1: exit $status: $out"
    return 1
  fi
}
for s in "${SERVICES[@]}"; do check "$s LOG_LEVEL=loud: exit 2" bad_setting_exits_2 "$s"; done

# 3. Serving, against Postgres and Kafka in the namespace.
in_netns scripts/postgres.sh start >/dev/null
in_netns scripts/kafka.sh start >/dev/null
# quietly CMD...: CMD's output into $WORK/containers.log, shown when it fails.
quietly() {
  "$@" >>"$WORK/containers.log" 2>&1 || { tail -n 20 "$WORK/containers.log" >&2; return 1; }
}
for s in payment-server notifier retry-worker; do
  check "$s init container: migrate" quietly run "$s" migrate
done
check "payment-server seed-demo" quietly run payment-server payment-server seed-demo

# The notifier's emptyDir at /var/lib/concert is a folder here, so the test can read the file.
mkdir -p "$WORK/notifier"
chown 10001:10001 "$WORK/notifier"
for s in "${SERVICES[@]}"; do
  opts=()
  [[ "$s" != notifier ]] || opts=(--mount "/var/lib/concert=$WORK/notifier")
  run_args "$s" "$s" "${opts[@]}"
  "${PODMAN[@]}" run "${LIMITS[@]}" -d --name "$LABEL-$s" --label "$LABEL" --network "ns:/run/netns/$NETNS" \
    "${OPTS[@]}" "$IMAGE" "${CMD[@]}" >/dev/null
done
# serving PORT [SERVICE]: grpc.health.v1 answers SERVING for SERVICE ("" = readiness).
serving() {
  in_netns "$GRPCURL" -plaintext -connect-timeout 2 -d "{\"service\": \"${2:-}\"}" \
    "127.0.0.1:$1" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'
}
ready() { wait_until "$TIMEOUT" serving "${GRPC_PORT[$1]}" && serving "${GRPC_PORT[$1]}" liveness; }
# metrics SERVICE: /metrics answers with Prometheus text (within 15 s: a service may open its
# metrics port a moment after its gRPC port).
metrics_once() {
  local out  # (not piped into grep -q: its early exit would fail curl with SIGPIPE)
  out=$(in_netns curl -fsS --max-time 5 "http://127.0.0.1:${METRICS_PORT[$1]}/metrics" 2>/dev/null) &&
    grep -q '^# TYPE' <<<"$out"
}
metrics() { wait_until 15 metrics_once "$1"; }
for s in "${SERVICES[@]}"; do
  if ! wait_until "$TIMEOUT" serving "${GRPC_PORT[$s]}"; then
    "${PODMAN[@]}" logs --tail 30 "$LABEL-$s" >&2 || true
    die "FAILED: $s did not answer SERVING within $TIMEOUT s"
  fi
  check "$s serving (readiness and liveness)" ready "$s"
  check "$s /metrics" metrics "$s"
done

# A payment through payment-server, as the README's session makes it.
TOKEN=$(run payment-server payment-server mint-token --user-id=1)
rpc() {
  in_netns "$GRPCURL" -plaintext -H "authorization: Bearer $TOKEN" -d "$2" 127.0.0.1:50051 "$1"
}
schedule=$(rpc concert.v1.ConcertService/ListConcerts '{}' | json_field schedule_id)
seat=$(rpc concert.v1.ConcertService/ListSeats "{\"schedule_id\": $schedule, \"page_size\": 500}" |
  first_free_seat)
[[ -n "$seat" ]] || die "FAILED: no free seat after seed-demo"
reservation=$(rpc concert.v1.ReservationService/ReserveSeat "{\"seat_id\": $seat}" | json_field reservation_id)
[[ -n "$reservation" ]] || die "FAILED: ReserveSeat of seat $seat"
paid() { rpc concert.v1.PaymentService/PayConcert "{\"reservation_id\": $reservation}" >/dev/null; }
check "PayConcert of reservation $reservation (seat $seat)" paid
notified() {
  grep -q -E "\"reservation_id\":\"?${reservation}[\",}]" "$WORK/notifier/notifications.jsonl" 2>/dev/null
}
if ! wait_until "$TIMEOUT" notified; then
  for s in outbox-relay notifier; do "${PODMAN[@]}" logs --tail 20 "$LABEL-$s" >&2 || true; done
  die "FAILED: no notification for reservation $reservation within $TIMEOUT s"
fi
check "notification of reservation $reservation in NOTIFICATIONS_FILE" notified

# Still running as the manifests ask: UID 10001, and the root file system refuses writes.
uid_ok() { [[ "$("${PODMAN[@]}" exec "$LABEL-payment-server" id -u)" == 10001 ]]; }
check "payment-server runs as UID 10001" uid_ok
read_only() { ! "${PODMAN[@]}" exec "$LABEL-payment-server" touch /usr/local/bin/x 2>/dev/null; }
check "payment-server's root file system is read-only" read_only

say "$passed passed"
