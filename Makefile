# Thin wrapper over CMake. `make run` and `make test` first install any missing
# Debian build dependency (apt-get), so both work on a fresh Debian 12 machine.
BUILD      ?= build
BUILD_ASAN ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
DEB_DEPS   := libuv1-dev libcjson-dev libopenblas-dev check pkg-config cmake gcc make node-llhttp
RUN_ARGS   ?=

.PHONY: all deps build build-asan run test test-unit test-asan check-layers bench clean test-deploy
.PHONY: test-clients

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

# The layer check alone: every include that points up a layer or closes a cycle.
check-layers: build
	./$(BUILD)/check_includes .

# deploy/ (compose, Prometheus config, alert rules and their unit tests, Grafana) checked
# with promtool, yamllint and jq (installed with apt-get when missing) against a live kvd.
test-deploy: build
	@bash scripts/test-deploy.sh $(BUILD)

bench: build
	@for b in $(BUILD)/bench_*; do echo "== $$b"; $$b || exit 1; done

# Scale-out (README "Scale-out"): deploy/k8s linted and cross-checked, nginx -t on
# deploy/nginx/kvd-router.conf, then 3 kvd replicas behind that router on loopback.
.PHONY: test-router
test-router: build
	@bash scripts/test-router.sh

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
	rm -rf $(BUILD) $(BUILD_ASAN)
