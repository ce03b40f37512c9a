#!/usr/bin/env bash
# scripts/install-deps.sh — install what a fresh Debian 12 machine needs to build, run and
# test this project. Idempotent: a second run finds everything in place and downloads nothing.
#
#   scripts/install-deps.sh [apt|kafka|gotools|all]     (default: all)
#
#   apt      Debian packages (compilers, C++ libraries, PostgreSQL 15, Java 17, Maven, ...);
#            skipped entirely when all are installed. Needs root.
#   kafka    Apache Kafka jars (pinned in scripts/kafka/pom.xml) resolved by Maven into
#            .local/kafka/libs/ (Maven's download cache is its usual ~/.m2).
#   gotools  grpcurl and ghz (pinned below), built by `go install` into .local/bin/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  librdkafka-dev libpqxx-dev libcurl4-openssl-dev nlohmann-json3-dev libcpp-httplib-dev
  prometheus-cpp-dev
  libgtest-dev libgmock-dev libssl-dev
  postgresql-15 postgresql-client-15
  openjdk-17-jre-headless maven
  curl python3 acl
)
GRPCURL_VERSION=v1.9.4   # needs go >= 1.25 (older go >= 1.21 fetches that toolchain itself)
GHZ_VERSION=v0.121.0

KAFKA_POM="$ROOT/scripts/kafka/pom.xml"
KAFKA_LIBS="$LOCAL/kafka/libs"
BIN="$LOCAL/bin"

install_apt() {
  local pkgs=("${APT_PACKAGES[@]}") missing=() p
  command -v go >/dev/null || pkgs+=(golang-go)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    say "apt: all ${#pkgs[@]} packages already installed"
    return
  fi
  say "apt: installing ${missing[*]}"
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${missing[@]}"
}

install_kafka() {
  command -v mvn >/dev/null || die "mvn not found: run '$0 apt' first"
  local sha
  sha=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
  if [[ -f "$KAFKA_LIBS/.complete" && "$(cat "$KAFKA_LIBS/.complete")" == "$sha" ]]; then
    say "kafka: jars up to date in ${KAFKA_LIBS#"$ROOT"/}"
    return
  fi
  say "kafka: resolving jars with Maven into ${KAFKA_LIBS#"$ROOT"/}"
  rm -rf "$KAFKA_LIBS"
  mkdir -p "$KAFKA_LIBS"
  # (sed: Debian's Maven 3.8.7 prints stray colour codes even in batch mode)
  mvn -B -q -ntp -f "$KAFKA_POM" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" 2>&1 | sed 's/\x1b\[[0-9;]*m//g'
  compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null || die "kafka: no kafka_2.13 jar was copied"
  echo "$sha" >"$KAFKA_LIBS/.complete"
  say "kafka: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars"
}

# go_tool NAME MODULE_PATH VERSION: go install MODULE_PATH@VERSION into .local/bin unless the
# stamp says that exact version is there already.
go_tool() {
  local name=$1 want="$2@$3" stamp="$BIN/.$1.version"
  if [[ -x "$BIN/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    say "gotools: $name $3 already installed"
    return
  fi
  say "gotools: go install $want"
  mkdir -p "$BIN"
  # -X main.version: both tools print it for --version (plain go install says "dev").
  (cd "$BIN" && GOBIN="$BIN" go install -ldflags "-s -w -X main.version=$3" "$want")
  echo "$want" >"$stamp"
}

install_gotools() {
  command -v go >/dev/null || die "go not found: run '$0 apt' first"
  local v
  v=$(go env GOVERSION)   # e.g. go1.22.5
  v=${v#go}
  [[ "$(printf '%s\n' 1.21 "$v" | sort -V | head -1)" == 1.21 ]] ||
    die "gotools: go $v is too old (grpcurl $GRPCURL_VERSION needs go >= 1.21 to fetch its toolchain)"
  go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION"
  go_tool ghz github.com/bojand/ghz/cmd/ghz "$GHZ_VERSION"
}

case "${1:-all}" in
  apt) install_apt ;;
  kafka) install_kafka ;;
  gotools) install_gotools ;;
  all) install_apt; install_kafka; install_gotools ;;
  *) die "usage: $0 [apt|kafka|gotools|all]" ;;
esac
