#!/usr/bin/env bash
# make demo: runs every Python example on cmultiprocessing (through the
# `python3 -m cmultiprocessing` runner, so the scripts are unchanged
# multiprocessing programs), every C example, then the benchmark table.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-/usr/bin/python3}
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
for example in examples/python/*.py; do
    echo "\$ python3 -m cmultiprocessing $example"
    timeout 60 "$PYTHON" -m cmultiprocessing "$example"
    echo
done
for example in build/examples/*; do
    [ -x "$example" ] || continue
    echo "\$ $example"
    timeout 60 "$example"
    echo
done
echo "\$ python3 bench/bench.py"
"$PYTHON" bench/bench.py
