# The front door. `make run` and `make test` are all a fresh Debian 12 machine needs.
.PHONY: all deps build up down run test test-unit test-faults test-failover demo bench format clean \
	image test-image test-cluster alert-drill

BUILD_DIR ?= build
JOBS ?= $(shell nproc)

all: build

deps:
	scripts/install-deps.sh all

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja

build: deps $(BUILD_DIR)/build.ninja
	cmake --build $(BUILD_DIR) -j $(JOBS)

# Postgres, Kafka and the services in the background; returns when all answer.
up: build
	scripts/system.sh up

down:
	scripts/system.sh down

# The same in the foreground; Ctrl-C stops everything.
run: build
	scripts/system.sh run

# The README's grpcurl session against `make up`: token, seat, payment, notification.
demo:
	scripts/demo.sh

# Every test, against a private Postgres and Kafka that this target starts and stops; the
# container image is built first (CTest k8s_image runs it as the manifests do). The failover
# test runs one round here (its own three Kafka nodes and Postgres pair); `make test-failover`
# runs it for 10 minutes.
test: build image
	scripts/test.sh

# The fault test for 10 minutes (`make test` runs it for 2). It starts its own Postgres and
# Kafka, so nothing needs to be up.
test-faults: build
	FAULT_TEST_DURATION=600 $(BUILD_DIR)/tests/fault_test

# The failover test for at least 10 minutes and 5 rounds of every fault: three Kafka nodes (127.0.0.1:19100-19105) and a Postgres primary with a synchronous
# standby (127.0.0.1:55460-55461) of its own, so nothing needs to be up.
test-failover: build
	FAILOVER_TEST_DURATION=600 FAILOVER_TEST_ROUNDS=5 $(BUILD_DIR)/tests/failover_test

# Which alert fires for which fault, measured (not part of `make test`: about 55 minutes): a
# Prometheus of promtool's release (127.0.0.1:19390) evaluates deploy/observability/alerts.yaml
# while each fault kind of the fault test is held until its alerts fire. Writes
# deploy/observability/drill-results/<date>.{md,png}.
alert-drill: build
	scripts/install-deps.sh prometheus
	cmake --build $(BUILD_DIR) -j $(JOBS) --target alert_drill
	BUILD_DIR=$(BUILD_DIR) scripts/alert-drill.sh

test-unit: build
	cd $(BUILD_DIR) && ctest -L unit --output-on-failure

# Benchmarks of every stage beside same-run references (own Postgres/Kafka on free ports);
# writes bench/results/<date>.{json,md,png}. BENCH_QUICK=1 runs a seconds-long smoke version.
bench: build
	BUILD_DIR=$(BUILD_DIR) bench/run.sh

# The container image from deploy/Dockerfile without Docker: a Debian 12 base made with
# debootstrap, buildah, and an OCI archive in .local/image/concert.oci.tar. Needs root. The
# build context carries librdkafka's verified source tarball (.local/downloads/).
image:
	scripts/install-deps.sh image
	scripts/install-deps.sh librdkafka-source
	scripts/image.sh

# Every binary of that image run as the dev overlay's pod specs run it (UID 10001, read-only
# root, its environment) against a private Postgres and Kafka: --help, a bad setting, serving.
test-image: image
	scripts/install-deps.sh apt
	scripts/install-deps.sh kafka
	scripts/install-deps.sh grpcurl
	scripts/test-image.sh

# A single-node Kubernetes built from the Go module proxy and Debian's containerd, the dev
# overlay applied to it as a user would, a payment and its notification, a pod killed; then
# everything stopped. Needs root.
test-cluster: image
	scripts/install-deps.sh apt
	scripts/install-deps.sh cluster
	scripts/install-deps.sh grpcurl
	scripts/test-cluster.sh

format:
	clang-format -i $$(git ls-files '*.h' '*.cc')

clean:
	rm -rf $(BUILD_DIR)
