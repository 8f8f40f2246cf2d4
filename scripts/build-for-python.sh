#!/usr/bin/env bash
# Builds the package for another interpreter into its own directory:
#   scripts/build-for-python.sh /path/to/python3 OUTDIR
# leaves OUTDIR/cmultiprocessing importable by that interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$1 out=$2
rm -rf "$out" && mkdir -p "$out"
cp -r python/cmultiprocessing "$out/"
rm -f "$out"/cmultiprocessing/_cmp*.so
ext=$("$py" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
make -s PYTHON="$py" BUILD="$out/build" EXT="$out/cmultiprocessing/_cmp$ext" \
    "$out/cmultiprocessing/_cmp$ext"
