#!/usr/bin/env bash
# scripts/install-deps.sh — install what a fresh Debian 12 machine needs to build, run and
# test this project. Idempotent: a second run finds everything in place and downloads nothing.
#
#   scripts/install-deps.sh [apt|kafka|gotools|promtool|prometheus|all]     (default: all)
#
#   apt      Debian packages (compilers, C++ libraries, PostgreSQL 15, Java 17, Maven, ...);
#            skipped entirely when all are installed. Needs root.
#   kafka    Apache Kafka jars (pinned in scripts/kafka/pom.xml) resolved by Maven into
#            .local/kafka/libs/ (Maven's download cache is its usual ~/.m2).
#   gotools  grpcurl, ghz and promtool (pinned below), built by `go install` into .local/bin/.
#   promtool promtool alone (the observability check installs it this way on first use).
#   prometheus  the Prometheus server of promtool's pinned release, for `make alert-drill`
#            (HTTP API only: the web UI's assets are not embedded). Not part of "all".
#   grpcurl  grpcurl alone (the image and cluster tests call the services with it).
#   image    Debian packages that build and run the container image without Docker
#            (`make image`, `make test-image`): buildah, podman, debootstrap, runc. Needs root.
#   cluster  those plus what `make test-cluster` runs a single-node Kubernetes with: containerd,
#            CNI plugins, iptables, conntrack. Needs root. (Not part of "all".)
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
  curl python3 python3-yaml acl
)
IMAGE_PACKAGES=(buildah podman debootstrap runc uidmap)
CLUSTER_PACKAGES=("${IMAGE_PACKAGES[@]}" skopeo containerd containernetworking-plugins iptables
  conntrack socat ethtool)
GRPCURL_VERSION=v1.9.4   # needs go >= 1.25 (older go >= 1.21 fetches that toolchain itself)
GHZ_VERSION=v0.121.0
# Prometheus' Go module numbers release 3.N.M as v0.3NN.M; promtool checks and unit-tests the
# alert rules under deploy/observability/. A long build (about 10 minutes on 2 cores), done once.
PROMTOOL_VERSION=v0.316.0   # needs go >= 1.26.7 (like grpcurl, an older go may fetch it)

KAFKA_POM="$ROOT/scripts/kafka/pom.xml"
KAFKA_LIBS="$LOCAL/kafka/libs"
BIN="$LOCAL/bin"

# install_apt [PACKAGE...]: the packages given (default: APT_PACKAGES, plus Go when missing).
install_apt() {
  local pkgs=("$@") missing=() p
  if ((${#pkgs[@]} == 0)); then
    pkgs=("${APT_PACKAGES[@]}")
    command -v go >/dev/null || pkgs+=(golang-go)
  fi
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

# go_tool NAME MODULE_PATH VERSION [VAR=VALUE]: go install MODULE_PATH@VERSION into .local/bin
# unless the stamp says that exact version is there already. VAR=VALUE (default
# main.version=VERSION) is what the tool prints for --version (plain go install says "dev").
go_tool() {
  local name=$1 want="$2@$3" stamp="$BIN/.$1.version" version_flag=${4:-main.version=$3}
  if [[ -x "$BIN/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    say "gotools: $name $3 already installed"
    return
  fi
  say "gotools: go install $want"
  mkdir -p "$BIN"
  (cd "$BIN" && GOBIN="$BIN" go install -ldflags "-s -w -X $version_flag" "$want")
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
  install_promtool
}

# prometheus_tool NAME: cmd/NAME of the Prometheus module at PROMTOOL_VERSION. The server and
# promtool share the version so that the drill evaluates the rules as the unit tests do.
prometheus_tool() {
  command -v go >/dev/null || die "go not found: run '$0 apt' first"
  # v0.316.0 -> 3.16.0, the number --version shows.
  local release=${PROMTOOL_VERSION#v0.}
  release="${release:0:1}.$((10#${release:1:2})).${release#*.}"
  go_tool "$1" "github.com/prometheus/prometheus/cmd/$1" "$PROMTOOL_VERSION" \
    "github.com/prometheus/common/version.Version=$release"
}

install_promtool() { prometheus_tool promtool; }

case "${1:-all}" in
  apt) install_apt ;;
  kafka) install_kafka ;;
  gotools) install_gotools ;;
  promtool) install_promtool ;;
  prometheus) prometheus_tool prometheus ;;
  grpcurl) go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION" ;;
  image) install_apt "${IMAGE_PACKAGES[@]}" ;;
  cluster) install_apt "${CLUSTER_PACKAGES[@]}" ;;
  all) install_apt; install_kafka; install_gotools ;;
  *) die "usage: $0 [apt|kafka|gotools|promtool|prometheus|grpcurl|image|cluster|all]" ;;
esac
