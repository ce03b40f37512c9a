# The front door. `make run` and `make test` are all a fresh Debian 12 machine needs.
.PHONY: all deps build up down run test test-unit test-faults test-failover demo bench format clean

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

# Every test, against a private Postgres and Kafka that this target starts and stops.
test: build
	scripts/test.sh

# The fault test for 10 minutes (`make test` runs it for 2). It starts its own Postgres and
# Kafka, so nothing needs to be up.
test-faults: build
	FAULT_TEST_DURATION=600 $(BUILD_DIR)/tests/fault_test

# The failover test for at least 10 minutes and 5 rounds of every fault (`make test` runs one
# round): three Kafka nodes (127.0.0.1:19100-19105) and a Postgres primary with a synchronous
# standby (127.0.0.1:55460-55461) of its own, so nothing needs to be up.
test-failover: build
	FAILOVER_TEST_DURATION=600 FAILOVER_TEST_ROUNDS=5 $(BUILD_DIR)/tests/failover_test

test-unit: build
	cd $(BUILD_DIR) && ctest -L unit --output-on-failure

# Benchmarks of every stage beside same-run references (own Postgres/Kafka on free ports);
# writes bench/results/<date>.{json,md,png}. BENCH_QUICK=1 runs a seconds-long smoke version.
bench: build
	BUILD_DIR=$(BUILD_DIR) bench/run.sh

format:
	clang-format -i $$(git ls-files '*.h' '*.cc')

clean:
	rm -rf $(BUILD_DIR)
