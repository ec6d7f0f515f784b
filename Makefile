# Thin wrapper over CMake. `make run` and `make test` first install any missing
# Debian build dependency (apt-get), so both work on a fresh Debian 12 machine.
BUILD      ?= build
BUILD_ASAN ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
DEB_DEPS   := libuv1-dev libcjson-dev libopenblas-dev check pkg-config cmake gcc make node-llhttp
RUN_ARGS   ?=

.PHONY: all deps build build-asan run test test-unit test-asan test-container check-layers bench clean \
        clean-container

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

bench: build
	@for b in $(BUILD)/bench_*; do echo "== $$b"; $$b || exit 1; done

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)

# The rootfs cache and container storage (a rebuild without them takes ~1.5 min).
# The overlay driver bind-mounts its own directory: unmount it first.
clean-container:
	-umount $(BUILD_CONTAINER)/storage/overlay 2>/dev/null
	rm -rf $(BUILD_CONTAINER)
