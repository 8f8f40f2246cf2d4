#!/usr/bin/env bash
# Runs a Criterion test binary under valgrind memcheck and prints one
# closing line: errors, leaked bytes (definitely + indirectly lost) and the
# tests passed. Exit status 0 only when all three say clean.
#
# --trace-children=yes: Criterion execs every test in a process of its own.
# The tests' own forks are followed too (memcheck always follows fork): one
# log per process, in $VG_LOGS. A process the test SIGKILLs on purpose (a
# producer killed mid-put) leaves a log without a summary: it is counted
# apart, it cannot have leaked. "Possibly lost" is shown and summed but is
# not an error: what is left of it is Criterion's (nanomsg buffers) and
# libc's (the thread blocks of threads a forked child does not have), which
# is also why no suppressions file is needed.
# Usage: scripts/valgrind.sh TEST_BINARY [criterion options...]
set -uo pipefail
cd "$(dirname "$0")/.."
bin=$1
shift
logs=${VG_LOGS:-$(dirname "$bin")/valgrind-logs}
rm -rf "$logs" && mkdir -p "$logs"

# Processes are started with a pidfd (pidfd_open), a syscall that older
# valgrinds (3.19, Debian 12's) do not know: there every cmp_process_start
# fails with ENOSYS, so the process tests are left out, and said so.
# (The probe follows execs: a python3 on PATH may be a shim script.)
skipped=""
py=${PYTHON:-/usr/bin/python3}
if [ $# -eq 0 ] && ! valgrind --tool=none -q --trace-children=yes "$py" -c \
    "import os; os.close(os.pidfd_open(os.getpid()))" >/dev/null 2>&1; then
    set -- --filter '!(process/*)'
    skipped=" (process/* left out: this valgrind has no pidfd_open)"
fi

valgrind --tool=memcheck --trace-children=yes --error-exitcode=99 \
    --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect,possible \
    --log-file="$logs/vg.%p.log" "$bin" --jobs 1 "$@" 2>&1 | tee "$logs/criterion.txt"
status=${PIPESTATUS[0]}

errors=0 lost=0 possible=0 procs=0 killed=0 dirty=()
bytes() { sed -n "s/.*$1: \([0-9,]*\) bytes.*/\1/p" "$2" | tr -d , | tail -1; }
for f in "$logs"/vg.*.log; do
    procs=$((procs + 1))
    e=$(sed -n 's/.*ERROR SUMMARY: \([0-9,]*\) errors.*/\1/p' "$f" | tr -d , | tail -1)
    if [ -z "$e" ]; then
        killed=$((killed + 1))
        continue
    fi
    d=$(bytes "definitely lost" "$f") i=$(bytes "indirectly lost" "$f") p=$(bytes "possibly lost" "$f")
    errors=$((errors + e))
    lost=$((lost + ${d:-0} + ${i:-0}))
    possible=$((possible + ${p:-0}))
    [ "$e" -gt 0 ] && dirty+=("$f")
done
synth=$(grep -a "Synthesis:" "$logs/criterion.txt" | tail -1)
tested=$(sed -n 's/.*Tested: \([0-9]*\).*/\1/p' <<<"$synth")
passing=$(sed -n 's/.*Passing: \([0-9]*\).*/\1/p' <<<"$synth")
tested=${tested:-0} passing=${passing:-0}

for f in "${dirty[@]}"; do
    echo "errors in $f"
done
echo
echo "valgrind: $errors errors, $lost bytes lost (definitely + indirectly; $possible possibly)" \
    "in $procs processes ($killed killed by the tests, no summary);" \
    "tests: $passing of $tested passed$skipped"
[ "$errors" -eq 0 ] && [ "$lost" -eq 0 ] && [ "$tested" -gt 0 ] && [ "$passing" -eq "$tested" ] \
    && [ "$status" -eq 0 ]
