#!/usr/bin/env bash
# tests/k8s/check_catches_mistakes.sh — proves that scripts/check-k8s.sh can fail: each case
# copies deploy/k8s to a scratch folder, makes one mistake a reviewer should catch, and expects
# the check to exit non-zero with a line naming the mistake. A renamed setting is tested both
# ways: renamed in the manifests, and renamed in a binary (a wrapper whose --help shows the new
# name). The unmodified copy must pass first, so a failure here is the mistake's, not the setup's.
#
#   BUILD_DIR=build tests/k8s/check_catches_mistakes.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD_DIR=${BUILD_DIR:-build}
[[ "$BUILD_DIR" == /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

passed=0 failed=0

# run_case NAME EXPECTED_REGEX [BIN_DIR]: run the check on $SCRATCH/k8s; expect failure + regex.
run_case() {
  local name=$1 want=$2 build=${3:-$BUILD_DIR} out rc=0
  out=$(BUILD_DIR="$build" K8S_DIR="$SCRATCH/k8s" K8S_OUT="$SCRATCH/out" \
    "$ROOT/scripts/check-k8s.sh" 2>&1) || rc=$?
  if ((rc != 0)) && grep -Eq -- "$want" <<<"$out"; then
    passed=$((passed + 1)); echo "PASS  caught: $name"
  else
    failed=$((failed + 1)); echo "FAIL  not caught: $name (exit $rc, wanted /$want/)"
    tail -25 <<<"$out" | sed 's/^/      /'
  fi
}

fresh() { rm -rf "$SCRATCH/k8s"; cp -r "$ROOT/deploy/k8s" "$SCRATCH/k8s"; }

fresh
if BUILD_DIR="$BUILD_DIR" K8S_DIR="$SCRATCH/k8s" K8S_OUT="$SCRATCH/out" \
  "$ROOT/scripts/check-k8s.sh" >"$SCRATCH/clean.log" 2>&1; then
  passed=$((passed + 1)); echo "PASS  unmodified manifests pass"
else
  echo "FAIL  unmodified manifests fail already; the cases below would prove nothing:"
  tail -30 "$SCRATCH/clean.log" | sed 's/^/      /'
  echo "check_catches_mistakes: 0 passed, 1 failed"
  exit 1
fi

fresh
sed -i 's/^  RETRY_INTERVAL:/  RETRY_INTERVAL_SECONDS:/' "$SCRATCH/k8s/base/config.yaml"
run_case "setting renamed in the manifests" \
  "RETRY_INTERVAL_SECONDS is set but .retry-worker --help. lists no such setting"

fresh
mkdir -p "$SCRATCH/bin"
for b in payment-server outbox-relay notifier retry-worker; do ln -sf "$BUILD_DIR/bin/$b" "$SCRATCH/bin/$b"; done
rm "$SCRATCH/bin/retry-worker"
cat >"$SCRATCH/bin/retry-worker" <<WRAP
#!/bin/sh
"$BUILD_DIR/bin/retry-worker" "\$@" | sed 's/^  RETRY_MAX_ATTEMPTS  --retry-max-attempts /  RETRY_ATTEMPTS  --retry-attempts /'
WRAP
chmod +x "$SCRATCH/bin/retry-worker"
run_case "setting renamed in the binary" \
  "RETRY_MAX_ATTEMPTS is set but .retry-worker --help. lists no such setting" "$SCRATCH"

fresh
sed -i 's/^  GRPC_ADDRESS: "0.0.0.0:50054"/  GRPC_ADDRESS: "127.0.0.1:50054"/' "$SCRATCH/k8s/base/config.yaml"
run_case "gRPC on loopback in a pod" "GRPC_ADDRESS=127.0.0.1:50054: must listen on all interfaces"

fresh
sed -i '/^  INTERNAL_GRPC_ADDRESS:/d' "$SCRATCH/k8s/base/config.yaml"
run_case "payment-server's internal service left on loopback" \
  "INTERNAL_GRPC_ADDRESS is not set"

fresh
sed -i 's/newTag: 0.1.0/newTag: latest/' "$SCRATCH/k8s/overlays/prod/kustomization.yaml"
run_case "image tag latest" "image '[^']*:latest' is not pinned"

fresh
python3 - "$SCRATCH/k8s/base/notifier.yaml" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
s = re.sub(r"          readinessProbe:\n(            .*\n)+?(?=          livenessProbe:)", "", s, count=1)
open(p, "w").write(s)
PY
run_case "readiness probe removed" "container notifier: no readinessProbe"

fresh
python3 - "$SCRATCH/k8s/base/notifier.yaml" <<'EDIT'
import sys
p = sys.argv[1]
s = open(p).read()
i = s.index("          livenessProbe:")
s = s[:i] + s[i:].replace("              service: liveness\n", "", 1)
open(p, "w").write(s)
EDIT
run_case "liveness probe on readiness (a Kafka outage would restart pods)" \
  "livenessProbe asks for health service '', wants 'liveness'"

fresh
sed -i 's/^  LOG_LEVEL: "info"/  LOG_LEVEL: "info"\n  ADMIN_TOKEN: "hunter2"/' "$SCRATCH/k8s/base/config.yaml"
run_case "token in a ConfigMap" "key ADMIN_TOKEN looks secret"

fresh
sed -i 's/            readOnlyRootFilesystem: true/            readOnlyRootFilesystem: false/' "$SCRATCH/k8s/base/retry-worker.yaml"
run_case "writable root file system" "readOnlyRootFilesystem is not true"

fresh
sed -i 's/^      terminationGracePeriodSeconds: 60/      terminationGracePeriodSecond: 60/' "$SCRATCH/k8s/base/notifier.yaml"
run_case "misspelt field (schema)" "FAIL  schema .*"

fresh
sed -i 's/              memory: 384Mi//' "$SCRATCH/k8s/base/retry-worker.yaml"
run_case "memory limit removed" "no resources.limits.memory"

fresh
sed -i 's/^  maxReplicas: 6/  maxReplicas: six/' "$SCRATCH/k8s/base/payment-server.yaml"
run_case "HPA with a wrong type (schema)" "FAIL  schema .*"

fresh
sed -i 's|^  KAFKA_SASL_USERNAME: "concert-notifier"|&\n  KAFKA_SASL_PASSWORD: "hunter2"|' \
  "$SCRATCH/k8s/overlays/prod/secure-connections.yaml"
run_case "Kafka password in a ConfigMap" "key KAFKA_SASL_PASSWORD looks secret"

fresh
sed -i 's|KAFKA_SSL_CA_FILE: "/etc/concert/kafka-ca/ca.crt"|KAFKA_SSL_CA_FILE: "/etc/kafka/ca.crt"|' \
  "$SCRATCH/k8s/overlays/prod/secure-connections.yaml"
run_case "Kafka CA file outside every mount" "KAFKA_SSL_CA_FILE=/etc/kafka/ca.crt: on no volume mount"

fresh
sed -i 's|items: \[{key: password, path: password}\]|items: [{key: password, path: user-password}]|' \
  "$SCRATCH/k8s/overlays/prod/secure-connections.yaml"
run_case "SASL password file not in its Secret's items" \
  "KAFKA_SASL_PASSWORD_FILE=/etc/concert/kafka-user/password: Secret concert-[a-z-]+ mounted at /etc/concert/kafka-user has only user-password"

fresh
sed -i 's|AUTH_JWKS_FILE: "/etc/concert/jwks/jwks.json"|AUTH_JWKS_FILE: "/etc/idp/jwks.json"|' \
  "$SCRATCH/k8s/overlays/prod/identity-provider.yaml"
run_case "JWKS file outside every mount" "AUTH_JWKS_FILE=/etc/idp/jwks.json: on no volume mount"

fresh
python3 - "$SCRATCH/k8s/overlays/prod/kustomization.yaml" <<'EDIT'
import sys
p = sys.argv[1]
s = open(p).read()
s = s.replace("""      - op: replace
        path: /spec/template/spec/containers/0/readinessProbe/grpc/port
        value: 50061
""", "", 1)
open(p, "w").write(s)
EDIT
run_case "readiness probe on the TLS port (probes speak plaintext)" \
  "readinessProbe probes port 50051, gRPC health is on 50061 \(health\)"

echo "check_catches_mistakes: $passed passed, $failed failed"
((failed == 0))
