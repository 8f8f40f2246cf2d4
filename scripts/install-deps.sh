#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, if missing
# (joblib, tqdm, coverage and dask: the real clients of test_clients.py;
# Open MPI: cmultiprocessing.mpi and libcmp_mpi).
set -euo pipefail
need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in build-essential pkg-config python3 python3-dev python3-pytest \
           python3-pytest-timeout python3-numpy libcriterion-dev \
           python3-joblib python3-tqdm python3-coverage python3-dask \
           openmpi-bin libopenmpi-dev; do
    have "$pkg" || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing: ${need[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
