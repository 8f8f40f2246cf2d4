"""Run by test_mpi.py under mpiexec --enable-recovery: a map during which
the test kills a serving rank; prints STARTED and rank 0's pid, then one
JSON line: the results, the errors, and a map after the loss."""
import json
import os
import time

import cmultiprocessing.mpi as mpi

N = 160


def nap(x):
    time.sleep(0.05)
    return [mpi.rank(), os.getppid()]  # the serving rank's pid: a worker's parent


def square(x):
    return x * x


if __name__ == "__main__":
    out = {"done": [], "lost": []}
    with mpi.Pool() as p:
        print("STARTED", os.getpid(), flush=True)
        it = p.imap(nap, range(N), chunksize=1)
        for _ in range(N):
            try:
                out["done"].append(it.next(timeout=60))
            except mpi.WorkerLostError as e:
                out["lost"].append(str(e))
        out["after"] = p.map(nap, range(20), chunksize=1)
    print("RESULT " + json.dumps(out), flush=True)
