#!/usr/bin/env bash
# scripts/test-router.sh — `make test-router`: checks deploy/k8s (yamllint,
# an offline kustomize render, the settings that must agree) and the router
# config (nginx -t), then runs build/integration_router_scaleout: three kvd
# replicas and nginx with deploy/nginx/kvd-router.conf, all on loopback.
# Installs what it lacks (nginx, yamllint, kubectl) with apt-get, without
# ever starting the system nginx service. Prints how long each part took.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
CONF=deploy/nginx/kvd-router.conf
K8S=deploy/k8s
t0=$(date +%s.%N)
lap=$t0
took() {
  local now
  now=$(date +%s.%N)
  printf '== test-router: %-44s %6.2f s\n' "$1" "$(echo "$now - $lap" | bc)"
  lap=$now
}
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- tools
need=()
command -v yamllint >/dev/null || need+=(yamllint)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || need+=(nginx)
command -v kubectl >/dev/null || need+=(kubernetes-client)
command -v bc >/dev/null || need+=(bc)
if [ ${#need[@]} -gt 0 ]; then
  policy=""
  if [[ " ${need[*]} " == *" nginx "* ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
    # The package would start the system nginx on port 80: forbid it.
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d &&
                   chmod 755 /usr/sbin/policy-rc.d'
    policy=/usr/sbin/policy-rc.d
  fi
  rc=0
  bash scripts/install-deps.sh "${need[@]}" || rc=$?
  [ -z "$policy" ] || as_root rm -f "$policy"
  if [ $rc -ne 0 ]; then
    # kubectl is optional (the offline render); nginx and yamllint are not.
    required=()
    for p in "${need[@]}"; do [ "$p" = kubernetes-client ] || required+=("$p"); done
    [ ${#required[@]} -eq 0 ] || bash scripts/install-deps.sh "${required[@]}"
  fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
took "tools"

# --- deploy/k8s: lint, render, agreement
if [ -f deploy/.yamllint ]; then
  yamllint --strict -c deploy/.yamllint "$K8S"
else
  yamllint --strict "$K8S"
fi
if command -v kubectl >/dev/null; then
  # Offline: kustomize parses every manifest and builds the set. Schema
  # checks (kubectl apply --dry-run) need an API server, so none here.
  kubectl kustomize "$K8S" >/dev/null
  echo "kubectl kustomize $K8S: renders"
else
  echo "kubectl not available: offline render skipped"
fi
cfg() { sed -n "s/^  $1: \"\\([^\"]*\\)\".*/\\1/p" "$K8S/kvd-configmap.yaml"; }
drain=$(cfg KVD_DRAIN_SECONDS)
grace=$(sed -n 's/^ *terminationGracePeriodSeconds: *\([0-9]*\).*/\1/p' \
  "$K8S/kvd-statefulset.yaml")
[ -n "$drain" ] && [ -n "$grace" ] && [ "$grace" -gt "${drain%.*}" ] || {
  echo "terminationGracePeriodSeconds ($grace) must exceed KVD_DRAIN_SECONDS ($drain)" >&2
  exit 1
}
replicas=$(sed -n 's/^  replicas: *\([0-9]*\).*/\1/p' "$K8S/kvd-statefulset.yaml")
routed=$(grep -cE '^ *"~\^kvd-[0-9]+-' "$CONF")
[ "$replicas" = "$routed" ] || {
  echo "StatefulSet has $replicas replicas, $CONF routes $routed prefixes" >&2
  exit 1
}
# The container's memory covers pool + session heap + bodies in flight.
mib() {
  case $1 in
    *GiB) echo $(( ${1%GiB} * 1024 )) ;;
    *MiB) echo "${1%MiB}" ;;
    *Mi) echo "${1%Mi}" ;;
    *Gi) echo $(( ${1%Gi} * 1024 )) ;;
    *) echo "unknown size $1" >&2; exit 1 ;;
  esac
}
pool=$(mib "$(cfg KVD_MEMORY)")
inflight=$(mib "$(cfg KVD_MAX_INFLIGHT_BYTES)")
heap=$(( pool / 4 > 64 ? pool / 4 : 64 ))
limit=$(mib "$(sed -n 's/^ *memory: *\([0-9]*[MG]i\).*/\1/p' \
  "$K8S/kvd-statefulset.yaml" | tail -n 1)")
[ "$(cfg KVD_MAX_SESSION_HEAP)" = 0 ] && [ $(( pool + heap + inflight )) -lt "$limit" ] || {
  echo "memory limit ${limit}Mi does not cover pool $pool + heap $heap + bodies $inflight MiB" >&2
  exit 1
}
echo "deploy/k8s: grace ${grace}s > drain ${drain}s; $replicas replicas routed;" \
  "limit ${limit}Mi > ${pool} + ${heap} + ${inflight} MiB"
took "deploy/k8s (yamllint, kustomize, agreement)"

# --- nginx -t on the shipped file. Its upstreams are cluster DNS names, which
# nginx resolves while testing: in a private mount namespace they are given
# loopback addresses through /etc/hosts; where that is not allowed, the test
# runs on a copy with the names replaced by 127.0.0.1.
work=$PWD/$BUILD/router-test
mkdir -p "$work"
rm -rf "${work:?}"/router.* "$work/nginx-t"
mkdir -p "$work/nginx-t"
{ echo "127.0.0.1 localhost"
  for i in $(seq 0 $(( replicas - 1 ))); do echo "127.0.0.$(( 10 + i )) kvd-$i.kvd"; done
} > "$work/nginx-t/hosts"
if unshare --mount sh -c "mount --bind '$work/nginx-t/hosts' /etc/hosts &&
     '$NGINX' -t -q -p '$work/nginx-t/' -c '$PWD/$CONF' -e stderr" 2>/dev/null; then
  echo "nginx -t $CONF: ok (cluster names from a private /etc/hosts)"
else
  sed 's/kvd-[0-9]*\.kvd:8080/127.0.0.1:8080/' "$CONF" > "$work/nginx-t/kvd-router.conf"
  "$NGINX" -t -q -p "$work/nginx-t/" -c "$work/nginx-t/kvd-router.conf" -e stderr
  echo "nginx -t $CONF: ok (on a copy with the cluster names as 127.0.0.1)"
fi
took "nginx -t"

# --- three replicas behind the router, on loopback
[ -x "$BUILD/integration_router_scaleout" ] || cmake --build "$BUILD" --target integration_router_scaleout
KVD_BINARY=$PWD/$BUILD/kvd KVD_ROUTER_CONF=$PWD/$CONF KVD_ROUTER_WORKDIR=$work NGINX=$NGINX \
  CK_DEFAULT_TIMEOUT=300 timeout 600 "$BUILD/integration_router_scaleout"
took "3 replicas + nginx, 100 sessions"
printf '== test-router: passed in %.2f s\n' "$(echo "$(date +%s.%N) - $t0" | bc)"
