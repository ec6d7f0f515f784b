#!/usr/bin/env bash
# `make fuzz`: builds the libFuzzer targets of tests/fuzz with clang under ASan+UBSan in
# their own build directory (build-fuzz, -DKVD_FUZZ=ON), runs the fuzz regression tests
# (tests/*/test_fuzz_regress.c) in that build, then fuzzes each target for FUZZ_SECONDS
# with a fixed -seed on a temporary copy of its committed corpus (tests/fuzz/corpus/<t>,
# replayed first), so a run never dirties the repository. Fails if any target crashes,
# leaks, times out or runs out of memory; prints execs/s and coverage per target.
# Findings go to build-fuzz/fuzz-artifacts/<target>/ (crash-*, leak-*, timeout-*, oom-*);
# replay one with `build-fuzz/fuzz_<target> FILE`.
# Environment: FUZZ_SECONDS (60), FUZZ_TARGETS (default: every tests/fuzz/fuzz_*.c), FUZZ_SEED (1),
# BUILD_FUZZ (build-fuzz), JOBS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
# Every tests/fuzz/fuzz_<name>.c is a target (CMake builds each as fuzz_<name>).
all=$(for f in tests/fuzz/fuzz_*.c; do n=$(basename "$f" .c); echo "${n#fuzz_}"; done | tr '\n' ' ')
targets=${FUZZ_TARGETS:-$all}
seed=${FUZZ_SEED:-1}
build=${BUILD_FUZZ:-build-fuzz}
jobs=${JOBS:-2}

# clang and its fuzzer runtime (Debian: libclang-rt-<version>-dev, not pulled in
# without recommends).
bash scripts/install-deps.sh clang
ver=$(clang -dumpversion | cut -d. -f1)
if [ ! -e "$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a)" ] &&
   ! ls "$(clang -print-resource-dir)"/lib/*/libclang_rt.fuzzer*.a >/dev/null 2>&1; then
  bash scripts/install-deps.sh "libclang-rt-$ver-dev"
fi

start=$(date +%s)
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DKVD_FUZZ=ON >/dev/null
fi
regress=()
for f in tests/*/test_fuzz_regress.c; do
  [ -e "$f" ] || continue
  m=$(basename "$(dirname "$f")")
  regress+=("${m}_test_fuzz_regress")
done
cmake --build "$build" -j "$jobs" --target fuzz "${regress[@]}"
echo "== fuzz: build took $(( $(date +%s) - start )) s"
if [ ${#regress[@]} -gt 0 ]; then
  echo "== fuzz: regression tests of earlier findings (clang, ASan+UBSan)"
  (cd "$build" && ctest --output-on-failure -R 'test_fuzz_regress$')
fi

max_len() {
  case "$1" in
    http | step) echo 16384 ;;
    restore) echo 65536 ;;
    *) echo 4096 ;;
  esac
}

work=$(mktemp -d "${TMPDIR:-/tmp}/kvd-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=()
summary=()
for t in $targets; do
  bin="$build/fuzz_$t"
  [ -x "$bin" ] || { echo "fuzz: no target fuzz_$t (tests/fuzz/fuzz_$t.c)" >&2; exit 2; }
  corpus="$work/$t"
  mkdir -p "$corpus" "$build/fuzz-artifacts/$t"
  cp tests/fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
  echo "== fuzz: $t for ${seconds} s (seed $seed, max_len $(max_len "$t"))"
  log="$work/$t.log"
  rc=0
  "$bin" -seed="$seed" -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=30 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$build/fuzz-artifacts/$t/" \
    "${dict[@]}" "$corpus" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*/[^ ]*' "$log" | tail -1 || true)
  line=$(printf '%-7s %10s execs  %7s execs/s  %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}")
  if [ "$rc" -ne 0 ]; then
    line="$line  FAILED (exit $rc)"
    failed+=("$t")
    echo "---- fuzz_$t log (tail)"
    tail -n 60 "$log"
    echo "---- finding saved under $build/fuzz-artifacts/$t/"
  fi
  echo "$line"
  summary+=("$line")
done
echo "== fuzz: summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
