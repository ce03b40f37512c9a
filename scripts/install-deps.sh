#!/usr/bin/env bash
# scripts/install-deps.sh — install what a fresh Debian 12 machine needs to build, run and
# test this project. Idempotent: a second run finds everything in place and downloads nothing.
#
#   scripts/install-deps.sh [apt|librdkafka|kafka|gotools|promtool|prometheus|all]  (default: all)
#
#   apt      Debian packages (compilers, C++ libraries, PostgreSQL 15, Java 17, Maven, npm, ...);
#            skipped entirely when all are installed. Needs root.
#   librdkafka  librdkafka (pinned below: Debian's 2.0.2 cannot log in with SCRAM to a Kafka 4
#            broker), its C source from the npm package that vendors it, checksum verified, built
#            with CMake and installed into .local/librdkafka/. About 3 minutes on 2 cores, once.
#   librdkafka-source  only its download, verified, into .local/downloads/ (what the container
#            image's build reads from the build context).
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
  libpqxx-dev libcurl4-openssl-dev nlohmann-json3-dev libcpp-httplib-dev
  prometheus-cpp-dev
  libgtest-dev libgmock-dev libssl-dev
  zlib1g-dev libzstd-dev libsasl2-dev
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
# librdkafka as the npm package node-rdkafka vendors it (package/deps/librdkafka: librdkafka's
# whole C source with its CMakeLists.txt); `npm pack` downloads the package's tarball, whose
# checksum is pinned here. A new version: change all three and check RD_KAFKA_VERSION.
LIBRDKAFKA_VERSION=2.12.0
LIBRDKAFKA_NPM_PACKAGE=node-rdkafka@3.6.1
LIBRDKAFKA_SHA256=148f7e7b65c510314c70762d8f1be052c8fe1fdf03a128e6c78083a729a57a30
LIBRDKAFKA_TARBALL="$LOCAL/downloads/node-rdkafka-${LIBRDKAFKA_NPM_PACKAGE#*@}.tgz"
LIBRDKAFKA_PREFIX="$LOCAL/librdkafka"

KAFKA_POM="$ROOT/scripts/kafka/pom.xml"
KAFKA_LIBS="$LOCAL/kafka/libs"
BIN="$LOCAL/bin"

# install_apt [PACKAGE...]: the packages given (default: APT_PACKAGES, plus Go when missing).
install_apt() {
  local pkgs=("$@") missing=() p
  if ((${#pkgs[@]} == 0)); then
    pkgs=("${APT_PACKAGES[@]}")
    command -v go >/dev/null || pkgs+=(golang-go)
    # (a Node.js from elsewhere brings its own npm, which Debian's package would conflict with)
    command -v npm >/dev/null || pkgs+=(npm)
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

# fetch_librdkafka: the pinned tarball in .local/downloads/, downloaded by npm unless a copy
# with the right checksum is there already. A download with another checksum is refused.
fetch_librdkafka() {
  local tmp file
  if [[ -f "$LIBRDKAFKA_TARBALL" ]]; then
    echo "$LIBRDKAFKA_SHA256  $LIBRDKAFKA_TARBALL" | sha256sum --check --quiet ||
      die "librdkafka: ${LIBRDKAFKA_TARBALL#"$ROOT"/} has another checksum than pinned: delete it"
    say "librdkafka: ${LIBRDKAFKA_TARBALL#"$ROOT"/} verified"
    return
  fi
  command -v npm >/dev/null || die "npm not found: run '$0 apt' first"
  say "librdkafka: npm pack $LIBRDKAFKA_NPM_PACKAGE"
  mkdir -p "$(dirname "$LIBRDKAFKA_TARBALL")"
  tmp=$(mktemp -d "$(dirname "$LIBRDKAFKA_TARBALL")/.npm-pack.XXXXXX")
  file=$(cd "$tmp" && npm pack --silent "$LIBRDKAFKA_NPM_PACKAGE" | tail -n 1)
  if ! echo "$LIBRDKAFKA_SHA256  $tmp/$file" | sha256sum --check --quiet; then
    rm -rf "$tmp"
    die "librdkafka: $LIBRDKAFKA_NPM_PACKAGE's tarball does not have the pinned checksum"
  fi
  mv "$tmp/$file" "$LIBRDKAFKA_TARBALL"
  rm -rf "$tmp"
  say "librdkafka: ${LIBRDKAFKA_TARBALL#"$ROOT"/} downloaded and verified"
}

# install_librdkafka: librdkafka and rdkafka++ (shared) into .local/librdkafka/, where the
# top-level CMakeLists.txt looks for them. The container image's build stage runs this too.
install_librdkafka() {
  command -v cmake >/dev/null || die "cmake not found: run '$0 apt' first"
  local want="$LIBRDKAFKA_VERSION $LIBRDKAFKA_SHA256" stamp="$LIBRDKAFKA_PREFIX/.complete" tmp src
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    say "librdkafka: $LIBRDKAFKA_VERSION already in ${LIBRDKAFKA_PREFIX#"$ROOT"/}"
    return
  fi
  fetch_librdkafka
  tmp=$(mktemp -d)
  tar -xzf "$LIBRDKAFKA_TARBALL" -C "$tmp" package/deps/librdkafka
  src="$tmp/package/deps/librdkafka"
  # RD_KAFKA_VERSION is 0xMMmmrrxx: check that the tarball carries the version pinned.
  local hex
  hex=$(sed -n -E 's/^#define RD_KAFKA_VERSION +0x([0-9a-fA-F]{6}).*/\1/p' "$src/src/rdkafka.h")
  [[ "$((16#${hex:0:2})).$((16#${hex:2:2})).$((16#${hex:4:2}))" == "$LIBRDKAFKA_VERSION" ]] ||
    die "librdkafka: the tarball carries version 0x$hex, not $LIBRDKAFKA_VERSION"
  say "librdkafka: building $LIBRDKAFKA_VERSION into ${LIBRDKAFKA_PREFIX#"$ROOT"/}"
  # WITH_SASL turns on SCRAM and OAUTHBEARER; librdkafka's CMake build ties it to Cyrus SASL
  # (libsasl2-dev, which also brings GSSAPI). LZ4 is librdkafka's bundled copy. $ORIGIN lets
  # librdkafka++ find the librdkafka beside it, never the system's.
  cmake -S "$src" -B "$tmp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$LIBRDKAFKA_PREFIX" -DCMAKE_INSTALL_LIBDIR=lib \
    -DCMAKE_INSTALL_RPATH='$ORIGIN' \
    -DRDKAFKA_BUILD_STATIC=OFF -DRDKAFKA_BUILD_EXAMPLES=OFF -DRDKAFKA_BUILD_TESTS=OFF \
    -DWITH_SSL=ON -DWITH_SASL=ON -DWITH_ZLIB=ON -DWITH_ZSTD=ON -DWITH_CURL=ON \
    -DENABLE_LZ4_EXT=OFF >"$tmp/configure.log" ||
    { tail -20 "$tmp/configure.log" >&2; die "librdkafka: configuring failed"; }
  rm -rf "$LIBRDKAFKA_PREFIX"
  cmake --build "$tmp/build" -j "$(nproc)" >"$tmp/build.log" ||
    { tail -30 "$tmp/build.log" >&2; die "librdkafka: the build failed"; }
  cmake --install "$tmp/build" >/dev/null
  rm -rf "$tmp"
  echo "$want" >"$stamp"
  say "librdkafka: $LIBRDKAFKA_VERSION installed"
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
  librdkafka) install_librdkafka ;;
  librdkafka-source) fetch_librdkafka ;;
  kafka) install_kafka ;;
  gotools) install_gotools ;;
  promtool) install_promtool ;;
  prometheus) prometheus_tool prometheus ;;
  grpcurl) go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION" ;;
  image) install_apt "${IMAGE_PACKAGES[@]}" ;;
  cluster) install_apt "${CLUSTER_PACKAGES[@]}" ;;
  all) install_apt; install_librdkafka; install_kafka; install_gotools ;;
  *) die "usage: $0 [apt|librdkafka|librdkafka-source|kafka|gotools|promtool|prometheus|grpcurl|image|cluster|all]" ;;
esac
