#!/usr/bin/env bash
# scripts/check-observability.sh — checks the alert rules and the dashboard under
# deploy/observability/, offline (no Prometheus, no Grafana, no service running):
#
#   rules    promtool (pinned in scripts/install-deps.sh) checks alerts.yaml (syntax, PromQL,
#            templates, lint) and runs its unit tests, alerts_test.yaml: series are fed in and
#            each alert must fire, or stay quiet, exactly as the test says;
#   static   deploy/observability/check_observability.py: every metric an alert or a dashboard
#            panel queries is one the C++ sources register, with the labels it has; annotations
#            and runbook sections; prometheusrule.yaml agrees with alerts.yaml; dashboard.json
#            parses.
#
# promtool is installed into .local/bin on first use (`scripts/install-deps.sh promtool`; `make
# deps` does it too): a long Go build, once. The last line is "check-observability: N passed,
# M failed"; exits non-zero on any failure.
#
#   scripts/check-observability.sh [rules|static|all]   (default: all)
#   scripts/check-observability.sh --write              regenerate prometheusrule.yaml
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OBS="$ROOT/deploy/observability"
PROMTOOL="$LOCAL/bin/promtool"

passed=0 failed=0
pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$*"; }

# run WHAT CMD...: one PASS or FAIL line, with the command's output under a failure.
run() {
  local what=$1 out rc=0
  shift
  out=$("$@" 2>&1) || rc=$?
  if ((rc == 0)); then
    pass "$what"
  else
    fail "$what (exit $rc):"
    sed 's/^/      /' <<<"$out"
  fi
}

check_rules() {
  "$ROOT/scripts/install-deps.sh" promtool >&2
  local version
  version=$("$PROMTOOL" --version 2>&1 | head -1)
  say "$version"
  run "promtool check rules alerts.yaml" \
    "$PROMTOOL" check rules --lint=all --lint-fatal "$OBS/alerts.yaml"
  run "promtool test rules alerts_test.yaml" \
    "$PROMTOOL" test rules --run=".*" "$OBS/alerts_test.yaml"
}

check_static() {
  local line
  while IFS= read -r line; do
    case "$line" in
      PASS*) pass "${line#PASS  }" ;;
      FAIL*) fail "${line#FAIL  }" ;;
      check_observability:*) ;;
      *) printf '%s\n' "$line" ;;
    esac
  done < <(python3 "$OBS/check_observability.py" --root "$ROOT" "$@" 2>&1 ||
    { rc=$?; ((rc == 1)) || echo "FAIL check_observability.py crashed (status $rc)"; })
}

case "${1:-all}" in
  rules) check_rules ;;
  static) check_static ;;
  all) check_rules; check_static ;;
  --write) check_static --write ;;
  *) die "usage: $0 [rules|static|all|--write]" ;;
esac

echo "check-observability: $passed passed, $failed failed"
((failed == 0))
