#!/usr/bin/env bash
# `make test-clients`: the Python client and the tiny decoder against a real kvd.
# Installs python3 with apt-get if it is missing, starts BUILD/kvd on an
# ephemeral loopback port with an API key, runs tests/clients/test_kvd_client.py
# (unittest) and examples/tiny_decoder.py --check, then stops kvd with SIGTERM and
# requires exit status 0. Every step is bounded in time; kvd is killed on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
KVD="$BUILD/kvd"
[ -x "$KVD" ] || { echo "test-clients: $KVD not built" >&2; exit 1; }
command -v python3 >/dev/null || bash scripts/install-deps.sh python3

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

export PYTHONDONTWRITEBYTECODE=1 # leave no __pycache__ in the tree
export KVD_API_KEY="clients-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
"$KVD" --host 127.0.0.1 --port 0 --memory 64MiB 2>"$work/kvd.err" &
pid=$!
port=""
for _ in $(seq 100); do  # up to 10 s to start
  port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$work/kvd.err" | head -1)
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "test-clients: kvd did not start:" >&2; cat "$work/kvd.err" >&2; exit 1
fi
export KVD_URL="http://127.0.0.1:$port"
echo "== kvd: Python client tests against $KVD_URL"
timeout 300 python3 -m unittest -v tests/clients/test_kvd_client.py
echo "== kvd: examples/tiny_decoder.py --check (attention in kvd vs local, f32 cache)"
timeout 300 python3 examples/tiny_decoder.py --check
echo "== kvd: examples/merge_context.py (a context split over two kvd, merged by lse, vs one)"
timeout 300 python3 examples/merge_context.py --kvd "$KVD"

kill -TERM "$pid"
rc=0
for _ in $(seq 300); do  # up to 30 s to drain and exit
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
wait "$pid" || rc=$?
pid=""
if [ "$rc" -ne 0 ]; then
  echo "test-clients: kvd exited with status $rc" >&2; tail -20 "$work/kvd.err" >&2; exit 1
fi
echo "== kvd: client tests passed"
