#!/usr/bin/env bash
# Runs the C tests and the Python tests and prints one closing line with the
# totals: "N passed, M failed".
# Environment: PYTHON, BUILD (where test_c is), SANITIZE=1 to preload the
# sanitizer runtimes into the (uninstrumented) interpreter, CMP_PKG_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
BUILD=${BUILD:-build}
export CMP_PKG_DIR=${CMP_PKG_DIR:-$PWD/python}
case "$CMP_PKG_DIR" in /*) ;; *) CMP_PKG_DIR=$PWD/$CMP_PKG_DIR ;; esac
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

c_passed=0 c_failed=0
echo "== C tests (Criterion)"
if [ "${SANITIZE:-0}" = 1 ]; then
    export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fi
# timeout: a test's child stuck for good would keep Criterion (and tee)
# waiting after the test's own timeout; this kills the whole group. Every
# test has its own .timeout, so a run that ends without Criterion's
# synthesis line is the runner itself stuck (its reaper and timeout
# threads can deadlock once a worker is gone: Snaipe/Criterion#345, seen
# here once in hundreds of runs): the suite then runs once more.
for attempt in 1 2; do
    timeout --kill-after=10 600 "$BUILD/test_c" --jobs 2 2>&1 | tee "$log/c.txt"
    grep -aq "Synthesis:" "$log/c.txt" && break
    [ "$attempt" = 1 ] && echo "== Criterion's runner did not finish (Criterion#345); running the C tests again"
done
synth=$(grep -a "Synthesis:" "$log/c.txt" | tail -1)
if [ -n "$synth" ]; then
    tested=$(sed -n 's/.*Tested: \([0-9]*\).*/\1/p' <<<"$synth")
    passing=$(sed -n 's/.*Passing: \([0-9]*\).*/\1/p' <<<"$synth")
    c_passed=$passing
    c_failed=$((tested - passing))
else
    c_failed=1
fi

echo "== Python tests (pytest, $PYTHON)"
preload=""
if [ "${SANITIZE:-0}" = 1 ]; then
    preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
fi
(cd tests/python && LD_PRELOAD="$preload" timeout --kill-after=10 1200 \
    "$PYTHON" -m pytest -q -p no:cacheprovider 2>&1) \
    | tee "$log/py.txt"
summary=$(grep -aE "[0-9]+ (passed|failed|error).* in [0-9.]+s" "$log/py.txt" | tail -1)
num() { grep -oE "[0-9]+ $1" <<<"$summary" | grep -oE "^[0-9]+" || echo 0; }
py_passed=$(num passed)
py_failed=$(( $(num failed) + $(num error) ))
[ -z "$summary" ] && py_failed=$((py_failed + 1))

passed=$((c_passed + py_passed))
failed=$((c_failed + py_failed))
echo
echo "C: $c_passed passed, $c_failed failed; Python: $py_passed passed, $py_failed failed"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
