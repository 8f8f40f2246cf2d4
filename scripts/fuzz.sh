#!/usr/bin/env bash
# The libFuzzer targets of tests/fuzz/ (make fuzz, make fuzz-merge).
#
#   fuzz.sh deps              installs clang and libssl-dev (the oracle) if missing
#   fuzz.sh run BIN...        runs each target for FUZZ_SECONDS, then prints a
#                             summary: executions, exec/s, coverage, crashes
#   fuzz.sh merge BIN...      merges what runs found into tests/fuzz/corpus/
#
# A run reads the seeds in tests/fuzz/corpus/<target>/ and writes what it
# finds to $FUZZ_BUILD/corpus/<target>/ (scratch, never the tree); crash
# inputs go to $FUZZ_BUILD/artifacts/<target>/. A merge adds to the tree
# only the scratch inputs that reach new edges (libFuzzer -merge=1 with
# -use_counters=0: hit counts are not new coverage, or one 5-minute run
# adds ~170 files), so the tree corpus stays small. Limits: -rss_limit_mb=512 and
# -malloc_limit_mb=FUZZ_MALLOC_MB (64): one allocation over it is an
# out-of-memory finding (inputs are at most FUZZ_MAX_LEN bytes, so only an
# allocation sized by a length claim gets that big).
# Environment: FUZZ_SECONDS (60), FUZZ_BUILD (build/fuzz), FUZZ_MALLOC_MB,
# FUZZ_MAX_LEN (16384), FUZZ_ALLOC_CAP (fuzz_conn: see tests/fuzz/fuzz_conn.c).
# Exit status: 0 if no target found a crash.
set -uo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_BUILD=${FUZZ_BUILD:-build/fuzz}
FUZZ_MALLOC_MB=${FUZZ_MALLOC_MB:-64}
FUZZ_MAX_LEN=${FUZZ_MAX_LEN:-16384}
# A hostile length claim now costs a first room of up to 1 MiB (conn.c):
# ASan's default 256 MiB quarantine keeps hundreds of those blocks and
# every new one page-faults its shadow in (a third of the time). A smaller
# quarantine still catches a use of the room after it was freed.
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=16}
limits=(-rss_limit_mb=512 -malloc_limit_mb="$FUZZ_MALLOC_MB" -max_len="$FUZZ_MAX_LEN" -timeout=20)

deps() {
    local need=() pkg
    for pkg in clang libssl-dev; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            need+=("$pkg")
    done
    [ ${#need[@]} -eq 0 ] && return 0
    echo "installing: ${need[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The last value of a "key: N" field in libFuzzer's status lines.
field() { grep -aoE "$1:? [0-9]+" "$2" | tail -1 | grep -oE "[0-9]+$" || echo "-"; }
stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -1; }

run() {
    local failed=0 rows=() found=() bin t log marker
    for bin in "$@"; do
        t=$(basename "$bin")
        mkdir -p "$FUZZ_BUILD/corpus/$t" "$FUZZ_BUILD/artifacts/$t" "$FUZZ_BUILD/logs"
        log=$FUZZ_BUILD/logs/$t.log
        marker=$FUZZ_BUILD/logs/$t.start
        touch "$marker"
        local dict=()
        [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
        echo "== $t: ${FUZZ_SECONDS}s (log: $log)"
        "$bin" -max_total_time="$FUZZ_SECONDS" "${limits[@]}" "${dict[@]}" -print_final_stats=1 \
            -artifact_prefix="$FUZZ_BUILD/artifacts/$t/" \
            "$FUZZ_BUILD/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1
        local rc=$?
        local crashes
        crashes=$(find "$FUZZ_BUILD/artifacts/$t" -type f -newer "$marker" | sort)
        local n=0
        [ -n "$crashes" ] && n=$(wc -l <<<"$crashes")
        [ $rc -ne 0 ] && [ "$n" -eq 0 ] && n=1 # died without an artifact
        [ "$n" -gt 0 ] && failed=1
        rows+=("$(printf "%-10s %10s %8s %6s %6s %7s %8s" "$t" \
            "$(stat number_of_executed_units "$log")" "$(stat average_exec_per_sec "$log")" \
            "$(field cov "$log")" "$(field ft "$log")" "$(field corp "$log")" "$n")")
        if [ "$n" -gt 0 ]; then
            found+=("$t: $(grep -aE "^SUMMARY: |invariant failed" "$log" | head -2 | tr '\n' ' ')")
            [ -n "$crashes" ] && found+=("$(sed 's/^/    /' <<<"$crashes")")
        fi
    done
    echo
    printf "%-10s %10s %8s %6s %6s %7s %8s\n" target execs exec/s cov ft corpus crashes
    printf "%s\n" "${rows[@]}"
    if [ ${#found[@]} -gt 0 ]; then
        echo
        echo "crashes (reproduce: BIN FILE; stack in the log):"
        printf "  %s\n" "${found[@]}"
    fi
    return $failed
}

merge() {
    local bin t
    for bin in "$@"; do
        t=$(basename "$bin")
        mkdir -p "$FUZZ_BUILD/corpus/$t"
        local before
        before=$(find "tests/fuzz/corpus/$t" -type f | wc -l)
        "$bin" -merge=1 -use_counters=0 "${limits[@]}" "tests/fuzz/corpus/$t" "$FUZZ_BUILD/corpus/$t" \
            >"$FUZZ_BUILD/logs/$t.merge.log" 2>&1 || {
            echo "$t: merge failed, see $FUZZ_BUILD/logs/$t.merge.log"
            return 1
        }
        echo "$t: $before -> $(find "tests/fuzz/corpus/$t" -type f | wc -l) files in tests/fuzz/corpus/$t"
    done
}

cmd=${1:-}
shift || true
case "$cmd" in
deps) deps ;;
run) run "$@" ;;
merge) mkdir -p "$FUZZ_BUILD/logs" && merge "$@" ;;
*)
    echo "usage: $0 deps | run BIN... | merge BIN..." >&2
    exit 2
    ;;
esac
