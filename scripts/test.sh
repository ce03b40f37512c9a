#!/usr/bin/env bash
# scripts/test.sh — what `make test` runs after the build: a private Postgres and Kafka for the
# tests (other ports and folders than `make up`, so both can run at once), every CTest test,
# then both stopped again, whatever the outcome.
#
#   scripts/test.sh [CTEST ARGS...]     e.g. scripts/test.sh -L unit, scripts/test.sh -R relay
set -euo pipefail
. "$(dirname "$0")/lib.sh"

export PG_PORT=${TEST_PG_PORT:-55442} PG_DIR="$LOCAL/test/postgres"
export KAFKA_PORT=${TEST_KAFKA_PORT:-19092} KAFKA_CONTROLLER_PORT=${TEST_KAFKA_CONTROLLER_PORT:-19093}
export KAFKA_DIR="$LOCAL/test/kafka"
export CONCERT_TEST_DATABASE_URL="postgresql://concert:concert@127.0.0.1:$PG_PORT/concert"
export CONCERT_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"
BUILD_DIR=${BUILD_DIR:-build}

cleanup() {
  "$ROOT/scripts/kafka.sh" stop || true
  "$ROOT/scripts/postgres.sh" stop || true
}
trap cleanup EXIT

"$ROOT/scripts/postgres.sh" start
"$ROOT/scripts/kafka.sh" start
cd "$ROOT/$BUILD_DIR"
status=0
ctest --output-on-failure --timeout 900 -j "${TEST_JOBS:-2}" "$@" || status=$?
# The fault tests' figures, which CTest keeps to itself when the tests pass.
sed -n '/ TEST SUMMARY /,/^=====*$/p' Testing/Temporary/LastTest.log 2>/dev/null || true
exit "$status"
