#!/usr/bin/env bash
# scripts/test-soak.sh — `make test-soak`: starts BUILD/kvd (release build) on an
# ephemeral loopback port, runs the load generator BUILD/load_soak against it
# (SOAK_SECONDS, default 60; SOAK_CONNECTIONS, default 512), then requires that kvd
# still answers /healthz and exits 0 on SIGTERM. Bounded: the generator has a hard
# time limit and this script another (timeout); kvd is killed on any exit.
# Usage: scripts/test-soak.sh [BUILD_DIR] (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
KVD="$BUILD/kvd"
SOAK="$BUILD/load_soak"
SECONDS_RUN=${SOAK_SECONDS:-60}
CONNS=${SOAK_CONNECTIONS:-512}
[ -x "$KVD" ] && [ -x "$SOAK" ] || { echo "test-soak: $KVD or $SOAK not built" >&2; exit 1; }
case "$SECONDS_RUN$CONNS" in *[!0-9]*) echo "test-soak: SOAK_SECONDS and SOAK_CONNECTIONS are whole numbers" >&2; exit 2;; esac

# 512 client sockets here and 512 in kvd, plus their own: raise the soft limit
# (both processes inherit it) as far as the hard limit allows.
want=$((CONNS * 2 + 256))
hardlim=$(ulimit -Hn)
if [ "$hardlim" != unlimited ] && [ "$hardlim" -lt "$want" ]; then want=$hardlim; fi
if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt "$want" ]; then ulimit -Sn "$want"; fi

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== kvd soak: $CONNS connections for $SECONDS_RUN s"
echo "== CPU: $(grep -m1 "model name" /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores; fd limit $(ulimit -Sn)"
# The access log goes to a file: 10^5 lines a minute through a pipe nobody reads would block kvd.
# SOAK_KVD_ARGS: extra kvd flags (e.g. a short --header-timeout to hunt a bug).
# shellcheck disable=SC2086
"$KVD" --host 127.0.0.1 --port 0 --memory "${SOAK_MEMORY:-512MiB}" ${SOAK_KVD_ARGS:-} 2>"$work/kvd.err" &
pid=$!
port=""
for _ in $(seq 100); do  # up to 10 s to start
  port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$work/kvd.err" | head -1)
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "test-soak: kvd did not start:" >&2; cat "$work/kvd.err" >&2; exit 1
fi

rc=0
timeout -k 10 $((SECONDS_RUN + 240)) "$SOAK" --port "$port" --pid "$pid" \
  --seconds "$SECONDS_RUN" --connections "$CONNS" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "test-soak: the load generator failed (status $rc); kvd's last log lines:" >&2
  grep -v 'status=20[01] ' "$work/kvd.err" | tail -20 >&2 || true
  exit 1
fi

curl_free_health() { # /healthz without curl: bash's /dev/tcp
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
  timeout 10 head -1 <&3 | grep -q ' 200 '
  local ok=$?
  exec 3<&- 3>&-
  return $ok
}
curl_free_health || { echo "test-soak: kvd does not answer /healthz after the soak" >&2; exit 1; }

kill -TERM "$pid"
for _ in $(seq 400); do  # up to 40 s to drain and exit
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
rc=0
wait "$pid" || rc=$?
pid=""
if [ "$rc" -ne 0 ]; then
  echo "test-soak: kvd exited with status $rc after SIGTERM" >&2; tail -20 "$work/kvd.err" >&2; exit 1
fi
echo "== kvd soak passed: kvd exited 0 on SIGTERM"
