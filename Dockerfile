# Dockerfile — the kvd image in two stages: compile on debian:bookworm with the
# Debian build deps the Makefile lists, then copy the one binary onto
# debian:bookworm-slim with only its runtime libraries (ldd kvd: libuv1,
# libcjson1 and libc), run as a non-root user. `make test-container` builds and
# runs this file with buildah/podman on every CI run (no Docker engine needed).

FROM debian:bookworm AS build
# libc6-dev: gcc only recommends it. check and libopenblas-dev are required by
# CMakeLists.txt's configure step (tests, benchmarks), not by kvd itself.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc libc6-dev make cmake pkg-config libuv1-dev libcjson-dev libopenblas-dev check node-llhttp \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the kvd target compiles from, so an edit to tests or docs keeps the
# compile layer cached. No tests run here: `make test` runs them outside.
COPY CMakeLists.txt ./
COPY scripts/check_includes.c scripts/
COPY common/ common/
COPY attention/ attention/
COPY cache/ cache/
COPY api/ api/
COPY server/ server/
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
 && cmake --build /build -j "$(nproc)" --target kvd \
 && /build/kvd --version

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libuv1 libcjson1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 kvd \
 && useradd --uid 10001 --gid kvd --home-dir /var/lib/kvd --no-create-home \
      --shell /usr/sbin/nologin kvd \
 && install -d -o kvd -g kvd -m 0750 /var/lib/kvd
COPY --from=build /build/kvd /usr/local/bin/kvd
# Fails the build if a runtime library is missing (ldd is in libc-bin).
RUN /usr/local/bin/kvd --version && ! ldd /usr/local/bin/kvd | grep -q 'not found'

# State. Nothing is written here yet: snapshots (KVD_STATE_DIR) are specified in
# DESIGN.md and not built; the volume is declared now so that deployments keep
# their mounts when they are.
VOLUME /var/lib/kvd
WORKDIR /var/lib/kvd
# Numeric, so that a runtime (kubernetes runAsNonRoot) can see it is not root.
USER 10001:10001
# All interfaces inside the container (the default 127.0.0.1 would be
# unreachable through a published port). kvd warns at start-up when it listens
# beyond loopback without an API key: give one with KVD_API_KEY or
# KVD_API_KEY_FILE (README, Security).
ENV KVD_HOST=0.0.0.0 \
    KVD_PORT=8080
EXPOSE 8080
# SIGTERM drains: in-flight requests finish, then kvd exits 0 (within
# KVD_DRAIN_SECONDS, default 30; give `docker stop -t` at least that).
STOPSIGNAL SIGTERM
# kvd's own one-GET client: the image needs no curl or wget. The URL follows
# the default port; change both together if you set KVD_PORT.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/kvd", "--probe", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/kvd"]
