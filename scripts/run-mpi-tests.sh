#!/usr/bin/env bash
# The MPI tests (make test-mpi): libcmp_mpi's C tests alone and under
# mpiexec -n 2 and -n 3, then tests/python/test_mpi.py (which runs its own
# scripts under mpiexec). Each mpiexec runs under timeout(1).
# Open MPI's switches set here: OMPI_ALLOW_RUN_AS_ROOT(+_CONFIRM) (the tests
# run as root), --oversubscribe (more ranks than this machine's 2 cores),
# OMPI_MCA_btl_vader_single_copy_mechanism=none (CMA is refused in
# containers). Prints "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
passed=0 failed=0
for n in 1 2 3; do
    echo "== C tests, mpiexec -n $n"
    out=$(timeout --kill-after=5 120 mpiexec --oversubscribe -n "$n" "$BUILD/test_mpi" 2>&1)
    rc=$?
    echo "$out" | grep -v "^ *$"
    p=$(grep -c "^ok " <<<"$out")
    f=$(grep -c "^FAIL " <<<"$out")
    [ "$rc" = 0 ] || [ "$f" -gt 0 ] || f=1 # it died before saying which
    passed=$((passed + p)) failed=$((failed + f))
done
echo "== Python tests (tests/python/test_mpi.py)"
pyout=$(cd tests/python && timeout --kill-after=10 600 "$PYTHON" -m pytest -q -p no:cacheprovider \
    test_mpi.py 2>&1)
echo "$pyout" | tail -15
p=$(grep -aoE "[0-9]+ passed" <<<"$pyout" | tail -1 | grep -oE "[0-9]+")
f=$(grep -aoE "[0-9]+ (failed|error)" <<<"$pyout" | awk '{s+=$1} END {print s+0}')
passed=$((passed + ${p:-0})) failed=$((failed + f))
[ -z "$p" ] && [ "$f" = 0 ] && failed=$((failed + 1))
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
