# Thin wrapper over CMake. `make run` and `make test` first install any missing
# Debian build dependency (apt-get), so both work on a fresh Debian 12 machine.
BUILD      ?= build
BUILD_ASAN ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
DEB_DEPS   := libuv1-dev libcjson-dev libopenblas-dev check pkg-config cmake gcc make node-llhttp
RUN_ARGS   ?=

.PHONY: all deps build build-asan run test test-unit test-asan test-container check-layers bench clean \
        clean-container test-deploy
.PHONY: test-clients bench-build

all: build

deps:
	@bash scripts/install-deps.sh $(DEB_DEPS)

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/Makefile
	@cmake --build $(BUILD) -j $(JOBS)

$(BUILD_ASAN)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DKVD_SANITIZE=address,undefined

build-asan: deps $(BUILD_ASAN)/Makefile
	@cmake --build $(BUILD_ASAN) -j $(JOBS)

run: build
	./$(BUILD)/kvd $(RUN_ARGS)

# Every test, then the same suite again under ASan+UBSan; fails if any fails. Both include
# the layer check (ctest check_layers: scripts/check_includes.c on this tree).
test: test-unit test-asan

test-unit: build
	@echo "== kvd: unit + integration tests (release build)"
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan: build-asan
	@echo "== kvd: unit + integration tests under ASan+UBSan"
	cd $(BUILD_ASAN) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j $(JOBS)

# The Python client (clients/python) and examples/tiny_decoder.py against a kvd on
# an ephemeral loopback port (scripts/test-clients.sh; installs python3 if missing).
test-clients: build
	@bash scripts/test-clients.sh $(BUILD)

# The Dockerfile, built and run without a Docker engine (debootstrap + buildah,
# all cached under $(BUILD_CONTAINER)): image config, /healthz, the HEALTHCHECK,
# a session step checked against a reference, /metrics, SIGTERM exit 0. Installs
# debootstrap buildah podman curl jq with apt-get if missing. See README, Container.
BUILD_CONTAINER ?= build-container

test-container:
	KVD_CONTAINER_DIR=$(BUILD_CONTAINER) bash scripts/test-container.sh

# The layer check alone: every include that points up a layer or closes a cycle.
check-layers: build
	./$(BUILD)/check_includes .

# deploy/ (compose, Prometheus config, alert rules and their unit tests, Grafana) checked
# with promtool, yamllint and jq (installed with apt-get when missing) against a live kvd.
test-deploy: build
	@bash scripts/test-deploy.sh $(BUILD)

# Benchmarks run from a Release (-O3) build of their own: the read loop every ratio divides
# by must run at full optimisation (under -O2 it ran 16-22% slower and inflated the ratios).
BUILD_BENCH ?= build-release
BENCHES := $(patsubst bench/%.c,bench_%,$(wildcard bench/*.c))
# bench/fidelity is a directory of its own (README "Fidelity"): the table on stdout.
BENCHES += bench_fidelity

$(BUILD_BENCH)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD_BENCH) -DCMAKE_BUILD_TYPE=Release

bench-build: deps $(BUILD_BENCH)/Makefile
	@cmake --build $(BUILD_BENCH) -j $(JOBS) $(addprefix --target ,$(BENCHES))

bench: bench-build
	@for b in $(addprefix $(BUILD_BENCH)/,$(BENCHES)); do echo "== $$b"; $$b || exit 1; done

# Scale-out (README "Scale-out"): deploy/k8s linted and cross-checked, nginx -t on
# deploy/nginx/kvd-router.conf, then 3 kvd replicas behind that router on loopback.
.PHONY: test-router
test-router: build
	@bash scripts/test-router.sh

# The soak (tests/load/, README "Load and soak"): 512 connections of mixed traffic for
# SOAK_SECONDS (default 60) against one release-build kvd (scripts/test-soak.sh).
.PHONY: test-soak
SOAK_SECONDS ?= 60
test-soak: build
	@SOAK_SECONDS=$(SOAK_SECONDS) bash scripts/test-soak.sh $(BUILD)

# ThreadSanitizer (README "Testing"): kvd built with -fsanitize=thread in
# $(BUILD_TSAN), the tests/integration programs run against it. A race makes kvd
# stop at once (halt_on_error) with exit code 66, so the test driving it fails;
# every report also goes to $(BUILD_TSAN)/tsan-logs, and any report there fails
# the target even if no test noticed.
.PHONY: test-tsan
BUILD_TSAN ?= build-tsan
TSAN_OPTIONS_KVD ?= halt_on_error=1 exitcode=66 second_deadlock_stack=1 log_path=$(CURDIR)/$(BUILD_TSAN)/tsan-logs/report
test-tsan: deps
	@cmake -S . -B $(BUILD_TSAN) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVD_SANITIZE=thread >/dev/null
	@cmake --build $(BUILD_TSAN) -j $(JOBS) --target integration_tests
	@rm -rf $(BUILD_TSAN)/tsan-logs && mkdir -p $(BUILD_TSAN)/tsan-logs
	@echo "== kvd: integration tests against a ThreadSanitizer kvd"
	cd $(BUILD_TSAN) && TSAN_OPTIONS="$(TSAN_OPTIONS_KVD)" \
	  ctest --output-on-failure -j $(JOBS) -R '^integration/'
	@if ls $(BUILD_TSAN)/tsan-logs/report* >/dev/null 2>&1; then \
	  cat $(BUILD_TSAN)/tsan-logs/report*; echo "ThreadSanitizer reported the above"; exit 1; fi

# libFuzzer targets (tests/fuzz) under ASan+UBSan in their own clang build (build-fuzz):
# each runs FUZZ_SECONDS on a temporary copy of its committed corpus; findings go to
# build-fuzz/fuzz-artifacts/<target>/ (scripts/fuzz.sh). One target longer:
# make fuzz FUZZ_TARGETS=step FUZZ_SECONDS=600 (default: every tests/fuzz/fuzz_*.c)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
.PHONY: fuzz
fuzz: deps
	@FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_TARGETS="$(FUZZ_TARGETS)" JOBS=$(JOBS) bash scripts/fuzz.sh

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_TSAN)

# The rootfs cache and container storage (a rebuild without them takes ~1.5 min).
# The overlay driver bind-mounts its own directory: unmount it first.
clean-container:
	-umount $(BUILD_CONTAINER)/storage/overlay 2>/dev/null
	rm -rf $(BUILD_CONTAINER)
