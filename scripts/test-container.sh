#!/usr/bin/env bash
# scripts/test-container.sh — `make test-container`: builds the Dockerfile and
# runs the image's kvd without a Docker engine. A debootstrap minbase bookworm
# rootfs (cached) is imported as debian:bookworm and debian:bookworm-slim,
# `buildah bud --isolation=chroot` builds kvd:test, and `buildah run` starts its
# kvd on a loopback port to check the image config, /healthz, the HEALTHCHECK
# command, a session step (numbers), /metrics and a SIGTERM exit 0.
# Every wait has a timeout; the trap stops what it started and removes the container.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${KVD_CONTAINER_DIR:-build-container}   # rootfs cache, container storage, logs
IMAGE=kvd:test
CTR=kvd-test                                 # the run container's fixed name
TOOLS=(debootstrap buildah podman curl jq)
# Bounds on each step: failure bounds, not expectations (from nothing the whole
# test takes about 3 min on 2 cores; with the cache 5-30 s).
DEBOOTSTRAP_TIMEOUT=900
BUILD_TIMEOUT=1500
START_TIMEOUT=30   # kvd prints its listening line
STOP_TIMEOUT=45    # SIGTERM to exit; kvd drains for at most KVD_DRAIN_SECONDS (set below)
RUN_TIMEOUT=600    # the whole life of the test's kvd, a safety net under the trap
CURL=(curl -sS --max-time 10)

t0=$SECONDS
say() { printf '== test-container [%3ds] %s\n' $((SECONDS - t0)) "$*"; }
die() { printf 'test-container: FAIL: %s\n' "$*" >&2; exit 1; }

bash scripts/install-deps.sh "${TOOLS[@]}"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
exec 9>"$DIR/lock"
flock -w 60 9 || die "another test-container holds $DIR/lock"

# A private store under $DIR: nothing touches the machine's own images, and
# concurrent checkouts do not fight over the kvd:test tag.
STORE=(--root "$DIR/storage" --runroot "$DIR/run" --storage-driver overlay)
# Every call is bounded: T seconds (default 300; the build and the run set
# their own). `timeout` runs the binary, so the store flags go after it.
buildah() { timeout "${T:-300}" "$(type -P buildah)" "${STORE[@]}" "$@"; }
podman() { timeout "${T:-300}" "$(type -P podman)" "${STORE[@]}" "$@"; }

# The Debian mirror apt uses on this machine (one-line or deb822 sources), so
# the test works wherever apt does; empty = debootstrap's own default.
# KVD_DEBIAN_MIRROR overrides.
debian_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk '$1 == "deb" { i = 2
                 if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                 if ($(i + 1) == "bookworm") { print $i; exit } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk 'function flush() { if (deb && suite && uri && !done) { print uri; done = 1; exit } deb = suite = 0; uri = "" }
             /^[ \t]*$/ { flush(); next }
             tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
             tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
             tolower($1) == "uris:" { uri = $2 }
             END { flush() }' "$f"
    done
}

# --- 1. base images: debootstrap once, import under the Dockerfile's names ---
ROOTFS_TAR=$DIR/rootfs-bookworm.tar
if [ ! -s "$ROOTFS_TAR" ]; then
    mirror=${KVD_DEBIAN_MIRROR:-$( (debian_mirror || true) | head -n 1)}
    say "debootstrap --variant=minbase bookworm ${mirror:-(debootstrap default mirror)}"
    rm -rf "$DIR/rootfs.tmp" "$ROOTFS_TAR.tmp"
    timeout "$DEBOOTSTRAP_TIMEOUT" debootstrap --variant=minbase bookworm "$DIR/rootfs.tmp" $mirror \
        >"$DIR/debootstrap.log" 2>&1 || { tail -n 30 "$DIR/debootstrap.log"; die "debootstrap failed"; }
    # Downloaded .debs and package lists are not part of an image (the
    # Dockerfile runs apt-get update itself).
    rm -rf "$DIR"/rootfs.tmp/var/cache/apt/archives/*.deb "$DIR"/rootfs.tmp/var/lib/apt/lists/*
    tar -C "$DIR/rootfs.tmp" -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$DIR/rootfs.tmp"
    rm -f "$DIR/imported.stamp"
fi
if [ ! -e "$DIR/imported.stamp" ] || [ "$ROOTFS_TAR" -nt "$DIR/imported.stamp" ] ||
   ! podman image exists debian:bookworm || ! podman image exists debian:bookworm-slim; then
    say "importing $(du -h "$ROOTFS_TAR" | cut -f1) rootfs as debian:bookworm and debian:bookworm-slim"
    podman rmi -f debian:bookworm debian:bookworm-slim >/dev/null 2>&1 || true
    # The slim name is the same minbase rootfs: close enough to prove the
    # runtime stage installs everything kvd needs.
    podman import -q "$ROOTFS_TAR" debian:bookworm >/dev/null
    podman tag debian:bookworm debian:bookworm-slim
    touch "$DIR/imported.stamp"
fi

# --- 2. the image -------------------------------------------------------------
# --format docker: OCI image configs have no HEALTHCHECK. --layers caches each
# step between runs; the build stage is built and tagged first (kvd-build:test)
# so that the prune below, which drops untagged images nothing builds on,
# keeps its apt-get layer too.
bud() { # log name, extra bud arguments
    if ! T=$BUILD_TIMEOUT buildah bud --isolation=chroot --pull=never --layers --format docker "${@:2}" . \
            >"$DIR/$1.log" 2>&1; then
        tail -n 40 "$DIR/$1.log"
        die "buildah bud ${*:2} failed (log: $DIR/$1.log)"
    fi
}
say "buildah bud --isolation=chroot --pull=never --layers --format docker --target build -t kvd-build:test ."
bud build-stage --target build -t kvd-build:test
say "buildah bud --isolation=chroot --pull=never --layers --format docker -t $IMAGE ."
bud build -t "$IMAGE"
grep -E '^\[[0-9]/[0-9]\] STEP|^kvd [0-9]' "$DIR/build.log" | sed 's/^/   /' | cut -c1-110
# What docker build would drop is left untagged; keep the cached layers only.
podman image prune -f >/dev/null

# The config a docker/podman/kubernetes runtime reads.
cfg=$(buildah inspect --type image "$IMAGE" | jq -c '.Docker.config')
check_cfg() { # jq expression that must be true, what it says
    [ "$(jq -r "$1" <<<"$cfg")" = true ] || die "image config: $2 ($(jq -c "$3" <<<"$cfg"))"
}
check_cfg '.User | test("^[1-9][0-9]*(:[0-9]+)?$")' "a numeric non-root USER" '.User'
check_cfg '.Env | any(. == "KVD_HOST=0.0.0.0")' "ENV KVD_HOST=0.0.0.0" '.Env'
check_cfg '.ExposedPorts | has("8080/tcp")' "EXPOSE 8080" '.ExposedPorts'
check_cfg '.StopSignal == "SIGTERM"' "STOPSIGNAL SIGTERM" '.StopSignal'
check_cfg '.Volumes | has("/var/lib/kvd")' "VOLUME /var/lib/kvd" '.Volumes'
check_cfg '.Entrypoint == ["/usr/local/bin/kvd"]' "ENTRYPOINT kvd" '.Entrypoint'
check_cfg '.Healthcheck.Test == ["CMD","/usr/local/bin/kvd","--probe","http://127.0.0.1:8080/healthz"]' \
    "HEALTHCHECK kvd --probe .../healthz" '.Healthcheck'
say "image config: user $(jq -r .User <<<"$cfg"), EXPOSE 8080, KVD_HOST=0.0.0.0, STOPSIGNAL SIGTERM, VOLUME /var/lib/kvd, HEALTHCHECK kvd --probe"

# --- 3. run the image's kvd -------------------------------------------------------
RUN_PID="" KVD_PID=""
descendants() { # every process below $1, by parent id
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$c"
        descendants "$c"
    done
}
# Stops kvd the way it is meant to stop (SIGTERM), then with SIGKILL, and
# lets buildah run reap it and exit by itself; buildah run itself is killed
# only if that fails too. Only processes this script started are signalled.
stop_run() { # signal for kvd, seconds to wait for buildah run to exit
    [ -n "$KVD_PID" ] && kill "-$1" "$KVD_PID" 2>/dev/null
    for _ in $(seq $(($2 * 10))); do
        kill -0 "$RUN_PID" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}
cleanup() {
    set +e
    if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then
        stop_run TERM "$STOP_TIMEOUT" || stop_run KILL 10 || {
            for p in $(descendants "$RUN_PID" | tac) "$RUN_PID"; do kill -KILL "$p" 2>/dev/null; done
        }
        wait "$RUN_PID" 2>/dev/null
    fi
    buildah rm "$CTR" >/dev/null 2>&1
}
trap cleanup EXIT
buildah rm "$CTR" >/dev/null 2>&1 || true   # left by an interrupted run
buildah from --pull=never --name "$CTR" "$IMAGE" >/dev/null

# Loopback only: the image's KVD_HOST=0.0.0.0 would, with the host network
# that chroot isolation shares, open the port on every interface. Port 0: the
# kernel picks a free one and kvd prints it.
LOG=$DIR/kvd.log
T=$RUN_TIMEOUT buildah run --isolation=chroot --env KVD_HOST=127.0.0.1 --env KVD_PORT=0 --env KVD_MEMORY=64MiB \
    --env KVD_THREADS=2 --env KVD_DRAIN_SECONDS=10 "$CTR" -- /usr/local/bin/kvd >"$LOG" 2>&1 &
RUN_PID=$!
port=""
for _ in $(seq $((START_TIMEOUT * 10))); do
    port=$(sed -n 's|^kvd: listening on http://127\.0\.0\.1:\([0-9]*\)$|\1|p' "$LOG")
    [ -n "$port" ] && break
    kill -0 "$RUN_PID" 2>/dev/null || { cat "$LOG"; die "kvd exited before listening"; }
    sleep 0.1
done
[ -n "$port" ] || { cat "$LOG"; die "kvd did not listen within ${START_TIMEOUT}s"; }
for p in $(descendants "$RUN_PID"); do
    [ "$(ps -o comm= -p "$p")" = kvd ] && KVD_PID=$p
done
[ -n "$KVD_PID" ] || die "no kvd process under buildah run ($RUN_PID)"
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$KVD_PID/status")
[ "$uid" != 0 ] || die "kvd runs as root in the container"
say "kvd (pid $KVD_PID, uid $uid) in container $CTR listens on 127.0.0.1:$port"
BASE=http://127.0.0.1:$port

health=$("${CURL[@]}" "$BASE/healthz") || die "GET /healthz failed"
[ "$health" = '{"status":"ok"}' ] || die "GET /healthz answered $health"
# The image's own HEALTHCHECK command, inside the container, at this run's port.
hc=$(jq -r '.Healthcheck.Test[1:] | map(sub(":8080/"; ":'"$port"'/")) | @sh' <<<"$cfg")
eval "set -- $hc"
buildah run --isolation=chroot "$CTR" -- "$@" || die "HEALTHCHECK command ($*) exit $?"
# Exit codes are the verdict: under load buildah run's relay of the
# container's stderr can lose the last line before the process exits.
rc=0
buildah run --isolation=chroot "$CTR" -- /usr/local/bin/kvd --probe "$BASE/no-such-path" \
    2>"$DIR/probe.err" || rc=$?
[ "$rc" = 1 ] || die "kvd --probe on a 404 path: exit $rc, not 1: $(cat "$DIR/probe.err")"
say "/healthz: $health; HEALTHCHECK ($*) exit 0; --probe of a 404 path exit 1"

# The README's session: 1 layer, 2 query heads on 1 kv head, head_dim 4, a
# causal prefill of two tokens.
created=$("${CURL[@]}" -H 'Content-Type: application/json' \
    -d '{"layers":1,"heads":2,"kv_heads":1,"head_dim":4}' "$BASE/v1/sessions")
id=$(jq -r '.id // empty' <<<"$created")
[ -n "$id" ] || die "create answered: $created"
step=$("${CURL[@]}" -H 'Content-Type: application/json' \
    -d '{"layer":0,"k":[1,0,0,0, 0,1,0,0],"v":[1,2,3,4, 5,6,7,8],"q":[1,0,0,0, 0,1,0,0,  1,0,0,0, 0,1,0,0]}' \
    "$BASE/v1/sessions/$id/step")
jq -e '.tokens == 2 and (.o | length) == 16' <<<"$step" >/dev/null || die "step answered: $step"
# Reference: scale 1/sqrt(4); token 0 sees only v0; token 1's head h weighs
# v0 and v1 by softmax(0.5 * q.k) = (e^0.5, 1) for h = 0 and (1, e^0.5) for h = 1.
jq -r '.o[]' <<<"$step" | awk '
    BEGIN { w = exp(0.5) / (exp(0.5) + 1); split("1 2 3 4", v0); split("5 6 7 8", v1) }
    { i = NR - 1; t = int(i / 8); h = int(i / 4) % 2; d = i % 4 + 1
      a = t == 0 ? 1 : (h == 0 ? w : 1 - w)
      want = a * v0[d] + (1 - a) * v1[d]
      err = $1 - want; if (err < 0) err = -err
      if (err > 1e-5 * want) { printf "o[%d] = %s, want %.8f\n", i, $1, want; bad = 1 } }
    END { exit bad || NR != 16 }' || die "step output differs from the reference: $step"
say "session $id: step o = $(jq -c .o <<<"$step") matches the reference (rel 1e-5)"

metrics=$("${CURL[@]}" "$BASE/metrics") || die "GET /metrics failed"
for want in '^kvd_sessions 1$' '^kvd_steps_total 1$' '^kvd_sessions_created_total 1$' \
            '^# TYPE kvd_http_requests_total counter$' '^kvd_http_requests_total\{route="session_step",code="200"\} 1$'; do
    grep -Eq "$want" <<<"$metrics" || die "/metrics lacks /$want/"
done
say "/metrics: $(grep -c '^# TYPE' <<<"$metrics") metric families; kvd_sessions 1, kvd_steps_total 1"

# --- 4. SIGTERM, as docker stop sends it (STOPSIGNAL) ----------------------------
stop_run TERM "$STOP_TIMEOUT" || { cat "$LOG"; die "kvd did not exit within ${STOP_TIMEOUT}s of SIGTERM"; }
rc=0
wait "$RUN_PID" || rc=$?
RUN_PID=""
[ "$rc" = 0 ] || { cat "$LOG"; die "kvd exited $rc after SIGTERM"; }
say "SIGTERM: kvd drained and exited 0"
sed 's/^/   kvd| /' "$LOG"
buildah rm "$CTR" >/dev/null
say "PASS (container removed; images cached in $DIR/storage)"
