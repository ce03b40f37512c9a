# The front door. `make run` and `make test` are all a fresh Debian 12 machine needs.
.PHONY: all deps build up down run test test-unit test-faults demo bench format clean

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

test-unit: build
	cd $(BUILD_DIR) && ctest -L unit --output-on-failure

format:
	clang-format -i $$(git ls-files '*.h' '*.cc')

clean:
	rm -rf $(BUILD_DIR)
