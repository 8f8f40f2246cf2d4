"""Run by test_mpi.py under `mpiexec -n 3 python3 -m cmultiprocessing.mpi`:
a map whose tasks take ten times longer on rank 1 than on rank 2. Prints
how many tasks each rank ran, with chunksize 1 and with the default: a
slow rank must not hold a share of the map decided up front."""
import collections
import json
import time

import cmultiprocessing.mpi as mpi


def timed(x):
    time.sleep(0.02 if mpi.rank() == 1 else 0.002)
    return mpi.rank()


if __name__ == "__main__":
    out = {}
    with mpi.Pool() as pool:
        for chunksize in (1, None):
            ranks = pool.map(timed, range(120), chunksize)
            out[str(chunksize)] = dict(collections.Counter(ranks))
    print("RESULT " + json.dumps(out), flush=True)
