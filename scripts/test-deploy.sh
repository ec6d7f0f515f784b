#!/usr/bin/env bash
# scripts/test-deploy.sh — `make test-deploy`: checks the observability deployment under
# deploy/ (compose.yaml, prometheus/, grafana/) against a live kvd. Installs promtool
# (Debian `prometheus`), yamllint and jq with apt-get when missing, then: yamllint, promtool
# check config / check rules / test rules (every alert firing and not firing), a live
# /metrics after real traffic through `promtool check metrics` (no problem allowed), every
# DESIGN.md §6 metric present with HELP and TYPE, and every metric the alerts and the
# dashboard query is one kvd exposes. Usage: scripts/test-deploy.sh [BUILD_DIR] (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
KVD="$BUILD/kvd"
D=deploy
fail=0
say() { printf '== test-deploy: %s\n' "$*"; }
# A failure inside $(...) runs in a subshell, so it is also left as a file in $work.
bad() { printf 'test-deploy: FAIL: %s\n' "$*" >&2; fail=1; [ -z "${work:-}" ] || : > "$work/failed"; }

bash scripts/install-deps.sh prometheus yamllint jq
[ -x "$KVD" ] || { echo "test-deploy: $KVD not built (run make build)" >&2; exit 1; }

work=$(mktemp -d)
kvd_pid=""
cleanup() {
  if [ -n "$kvd_pid" ]; then kill "$kvd_pid" 2>/dev/null || true; wait "$kvd_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# ---- static checks -----------------------------------------------------------------
say "yamllint (strict) on compose.yaml, prometheus/, grafana/"
yamllint -s -d '{extends: default, rules: {line-length: {max: 130}}}' \
  "$D/compose.yaml" "$D/prometheus" "$D/grafana" || bad "yamllint"

say "compose.yaml: every bind-mounted path exists"
while read -r src; do
  [ -e "$D/$src" ] || bad "compose.yaml mounts ./$src, which is not in $D/"
done < <(grep -oE '^\s*-\s*\./[^:]+' "$D/compose.yaml" | sed -E 's/^\s*-\s*\.\///')
grep -q 'dockerfile: Dockerfile' "$D/compose.yaml" || bad "compose.yaml does not build kvd from the Dockerfile"

say "promtool check config"
promtool check config "$D/prometheus/prometheus.yml" || bad "promtool check config"
say "promtool check rules"
promtool check rules "$D/prometheus/alerts.yml" || bad "promtool check rules"
say "promtool test rules"
promtool test rules "$D/prometheus/alerts_test.yml" || bad "promtool test rules"

# Every alert needs a test where it fires (exp_alerts with entries) and one where it must
# not (exp_alerts: []). Prints the alerts that miss one; fails if any.
alert_coverage() { # alerts.yml alerts_test.yml
  awk 'FNR == NR { if ($1 == "-" && $2 == "alert:") alerts[$3] = 1; next }
       $1 == "alertname:" { cur = $2 }
       $1 == "exp_alerts:" && cur != "" { if ($2 == "[]") quiet[cur] = 1; else fires[cur] = 1; cur = "" }
       END { n = 0
             for (a in alerts) {
               if (!(a in fires)) { print a ": no test where it fires"; n++ }
               if (!(a in quiet)) { print a ": no test where it stays quiet"; n++ } }
             exit n > 0 }' "$1" "$2"
}
say "every alert has a firing and a not-firing test"
alert_coverage "$D/prometheus/alerts.yml" "$D/prometheus/alerts_test.yml" || bad "alert test coverage"
# ... and the coverage check itself catches a missing case (a planted test file).
grep -v 'exp_alerts: \[\]' "$D/prometheus/alerts_test.yml" > "$work/planted_test.yml"
if alert_coverage "$D/prometheus/alerts.yml" "$work/planted_test.yml" > /dev/null; then
  bad "the alert coverage check accepted a test file with no not-firing cases"
fi

say "dashboard JSON parses; datasource uid matches the provisioned one"
dash="$D/grafana/dashboards/kvd.json"
jq -e '.panels | length > 0' "$dash" > /dev/null || bad "$dash does not parse or has no panels"
uid=$(awk '$1 == "uid:" { print $2; exit }' "$D/grafana/provisioning/datasources/prometheus.yml")
others=$(jq -r --arg u "$uid" '[.. | objects | select(has("datasource")) | .datasource
          | select(type == "object") | .uid | select(. != $u)] | unique | join(" ")' "$dash")
[ -z "$others" ] || bad "dashboard datasource uids '$others' are not the provisioned '$uid'"
for title in "Pool usage" "Sessions" "Steps/s" "Step latency p50 / p99" "Evictions by policy" \
             "Cache bytes by dtype" "Shadow relative error"; do
  jq -e --arg t "$title" 'any(.panels[]; .title == $t)' "$dash" > /dev/null || bad "dashboard has no panel '$title'"
done

# ---- a live kvd with traffic -----------------------------------------------------------
say "starting $KVD and driving traffic"
"$KVD" --host 127.0.0.1 --port 0 --memory 64MiB --max-sessions 4 --threads 2 2> "$work/kvd.err" &
kvd_pid=$!
port=""
for _ in $(seq 100); do
  port=$(sed -nE 's#^kvd: listening on http://127\.0\.0\.1:([0-9]+).*#\1#p' "$work/kvd.err")
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { cat "$work/kvd.err" >&2; echo "test-deploy: kvd did not start" >&2; exit 1; }
B="http://127.0.0.1:$port"

# post PATH BODY EXPECTED_STATUS: prints the body; a wrong status is a failure.
post() {
  local code
  code=$(curl -sS -o "$work/body" -w '%{http_code}' -H 'Content-Type: application/json' "$B$1" -d "$2")
  [ "$code" = "$3" ] || bad "POST $1 answered $code, expected $3: $(cat "$work/body")"
  cat "$work/body"
}
# standard attention, int8 cache, recency eviction to 6 tokens, shadow mode
sid=$(post /v1/sessions '{"layers":1,"heads":2,"kv_heads":1,"head_dim":4,"shadow":true,
       "cache":{"dtype":"int8","eviction":"recency","budget":6,"sink":2}}' 201 | jq -r .id)
for i in 1 2 3 4; do
  post "/v1/sessions/$sid/step" '{"k":[[[1,0,0,0]],[[0,1,0,0]],[[0,0,1,'$i']]],
        "v":[[[1,2,3,4]],[[5,6,7,8]],[[1,1,1,1]]],"q":[[[1,0,0,0],[0,1,0,0]]]}' 200 > /dev/null
done
fid=$(post "/v1/sessions/$sid/fork" '{}' 201 | jq -r .id)
# tensor attention (four caches)
tid=$(post /v1/sessions '{"attention":"tensor","heads":2,"kv_heads":1,"head_dim":4}' 201 | jq -r .id)
post "/v1/sessions/$tid/step" '{"k1":[1,0,0,0,0,1,0,0],"k2":[1,0,0,0,0,1,0,0],"v1":[1,2,3,4,5,6,7,8],
      "v2":[1,1,1,1,2,2,2,2],"q":[1,0,0,0,0,1,0,0]}' 200 > /dev/null
# errors: a bad body (400), an unknown session (404), one session too many (503 max_sessions)
post /v1/sessions '{"heads":3,"kv_heads":2}' 400 > /dev/null
post /v1/sessions/00000000000000000000000000000000/step '{"k":[1,0,0,0]}' 404 > /dev/null
post /v1/sessions '{}' 201 > /dev/null
post /v1/sessions '{}' 503 > /dev/null
[ -n "$fid" ] || bad "fork gave no id"

curl -sS -f "$B/metrics" > "$work/metrics.txt" || bad "GET /metrics failed"
kill "$kvd_pid"; wait "$kvd_pid" || bad "kvd exited with status $? on SIGTERM"; kvd_pid=""

say "promtool check metrics on the live /metrics"
if ! promtool check metrics < "$work/metrics.txt" > "$work/lint.txt" 2>&1 || [ -s "$work/lint.txt" ]; then
  cat "$work/lint.txt" >&2
  bad "promtool check metrics reported problems"
fi

# name TYPE: present with # HELP, # TYPE of that type, and at least one sample.
need() {
  local m="$1" type="$2" pat
  grep -q "^# HELP $m " "$work/metrics.txt" || bad "/metrics: $m has no # HELP"
  grep -qx "# TYPE $m $type" "$work/metrics.txt" || bad "/metrics: $m is not # TYPE $type"
  [ "$type" = histogram ] && pat="^${m}_count" || pat="^$m"
  grep -qE "$pat(\{| )" "$work/metrics.txt" || bad "/metrics: $m has no sample"
}
say "every DESIGN.md §6 metric, with HELP and TYPE"
for m in kvd_http_requests_total kvd_step_tokens_total kvd_sessions_created_total \
         kvd_sessions_expired_total kvd_evictions_total kvd_rejected_total process_cpu_seconds_total; do
  need "$m" counter
done
for m in kvd_http_request_duration_seconds kvd_step_duration_seconds kvd_shadow_relative_error; do
  need "$m" histogram
done
for m in kvd_sessions kvd_pool_pages kvd_pool_bytes kvd_kv_cache_usage_ratio kvd_cache_tokens \
         kvd_cache_bytes kvd_cache_config_info kvd_ready process_resident_memory_bytes \
         process_open_fds process_start_time_seconds; do
  need "$m" gauge
done
# labels §6 names, and the traffic above reached them
for s in 'kvd_http_requests_total{route="session_create",code="400"}' \
         'kvd_http_requests_total{route="session_step",code="404"}' \
         'kvd_pool_pages{state="used"}' 'kvd_pool_bytes{state="free"}' \
         'kvd_cache_bytes{dtype="int8"}' 'kvd_step_duration_seconds_count{attention="standard"}' \
         'kvd_step_duration_seconds_count{attention="tensor"}' 'kvd_evictions_total{policy="recency"}' \
         'kvd_rejected_total{reason="max_sessions"}' 'kvd_shadow_relative_error_count' \
         'kvd_sessions_created_total' 'kvd_ready'; do
  grep -qE "^$(printf '%s' "$s" | sed 's/[{}]/\\&/g') [1-9]" "$work/metrics.txt" \
    || bad "/metrics: no non-zero sample $s after the traffic"
done

# Metric names a PromQL file uses that no family of the live /metrics declares.
unknown_metrics() { # file...
  grep -ohE '\b(kvd|process)_[a-z0-9_]+' "$@" | sed -E 's/_(bucket|sum|count)$//' | sort -u |
    while read -r m; do grep -q "^# TYPE $m " "$work/metrics.txt" || echo "$m"; done
}
say "every metric the alerts, their tests and the dashboard query exists in /metrics"
u=$(unknown_metrics "$D/prometheus/alerts.yml" "$D/prometheus/alerts_test.yml" "$dash")
[ -z "$u" ] || bad "queried but not exposed by kvd: $u"
printf '{"expr":"rate(kvd_no_such_metric_total[5m])"}\n' > "$work/planted.json"
[ "$(unknown_metrics "$work/planted.json")" = kvd_no_such_metric_total ] \
  || bad "the metric-name check missed a planted unknown metric"

if [ "$fail" -ne 0 ] || [ -e "$work/failed" ]; then echo "test-deploy: FAILED" >&2; exit 1; fi
say "all passed"
