#!/usr/bin/env bash
# scripts/alert-drill.sh — which alert fires for which fault, measured: a Prometheus of
# promtool's pinned release (scripts/install-deps.sh prometheus) evaluates the unchanged
# deploy/observability/alerts.yaml against the whole system while tests/e2e/alert_drill.cc
# injects each fault kind of the fault test and holds it until its alerts fire. Then every
# dashboard.json panel is drawn from the same Prometheus over the run (plot_dashboard.py).
#
#   scripts/alert-drill.sh            (make alert-drill; about 55 minutes)
#
# Writes deploy/observability/drill-results/<date>.md (the fault -> alerts table) and
# <date>.png (the dashboard). Everything on loopback: the Prometheus on 127.0.0.1:19390
# (ALERT_DRILL_PROMETHEUS_PORT), the system on free ports with its own Postgres and Kafka.
# Scrape and evaluation every 5 s, so that a rule's `for:` is what sets the time to fire.
# ALERT_DRILL_STEPS / ALERT_DRILL_CAP_SCALE (see alert_drill.cc) make a shorter try (its files
# are named <date>-steps-<n>-<m>).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BUILD_DIR=${BUILD_DIR:-$ROOT/build}
PORT=${ALERT_DRILL_PROMETHEUS_PORT:-19390}
PROMETHEUS="$LOCAL/bin/prometheus"
STATE="$LOCAL/drill"
OUT="$ROOT/deploy/observability/drill-results"
VENV="$LOCAL/bench-venv"   # shared with bench/run.sh: matplotlib, installed once
DATE=$(date -u +%Y-%m-%d)${ALERT_DRILL_STEPS:+-steps-${ALERT_DRILL_STEPS//,/-}}

[[ -x "$BUILD_DIR/tests/alert_drill" ]] || die "$BUILD_DIR/tests/alert_drill missing: build it"
[[ -x "$PROMETHEUS" ]] || "$ROOT/scripts/install-deps.sh" prometheus
if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  say "installing matplotlib into $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install -q matplotlib
fi
! port_open 127.0.0.1 "$PORT" || die "127.0.0.1:$PORT is taken (ALERT_DRILL_PROMETHEUS_PORT)"

rm -rf "$STATE"
mkdir -p "$STATE" "$OUT"
echo '[]' >"$STATE/targets.json"   # the drill fills it once the services have their ports
cat >"$STATE/prometheus.yml" <<EOF
global:
  scrape_interval: 5s
  scrape_timeout: 4s
  evaluation_interval: 5s
rule_files:
  - $ROOT/deploy/observability/alerts.yaml
scrape_configs:
  - job_name: concert
    file_sd_configs:
      - files: [$STATE/targets.json]
        refresh_interval: 5s
EOF

prometheus_pid=
stop() {
  if [[ -n $prometheus_pid ]]; then
    kill "$prometheus_pid" 2>/dev/null || true
    wait "$prometheus_pid" 2>/dev/null || true
  fi
}
trap stop EXIT

"$PROMETHEUS" --config.file="$STATE/prometheus.yml" --storage.tsdb.path="$STATE/tsdb" \
  --web.listen-address="127.0.0.1:$PORT" --storage.tsdb.retention.time=1d \
  >"$STATE/prometheus.log" 2>&1 &
prometheus_pid=$!
wait_for_port 127.0.0.1 "$PORT" 60 || die "Prometheus did not start: $STATE/prometheus.log"
say "Prometheus $("$PROMETHEUS" --version 2>&1 | awk 'NR == 1 { print $3 }' | tr -d ,)" \
  "on 127.0.0.1:$PORT"

rc=0
ALERT_DRILL_PROMETHEUS="127.0.0.1:$PORT" ALERT_DRILL_SD_FILE="$STATE/targets.json" \
  ALERT_DRILL_RESULTS="$OUT/$DATE.md" ALERT_DRILL_WINDOWS="$STATE/windows.json" \
  "$BUILD_DIR/tests/alert_drill" || rc=$?

if [[ -f "$STATE/windows.json" ]]; then
  "$VENV/bin/python" "$ROOT/deploy/observability/plot_dashboard.py" \
    --prometheus "http://127.0.0.1:$PORT" --windows "$STATE/windows.json" \
    --out "$OUT/$DATE.png" || rc=$?
fi
say "results: ${OUT#"$ROOT"/}/$DATE.md, ${OUT#"$ROOT"/}/$DATE.png (exit $rc)"
exit "$rc"
