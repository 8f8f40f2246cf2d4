"""Run by test_mpi.py: a long map, to be stopped (SIGINT to mpiexec), or a
script that raises after a map (argument "raise")."""
import os
import sys
import time

import cmultiprocessing.mpi as mpi


def nap(x):
    time.sleep(0.05)
    return x


if __name__ == "__main__":
    with mpi.Pool() as p:
        print("STARTED", os.getpid(), flush=True)  # rank 0's pid: for a Ctrl-C there
        if sys.argv[1:] == ["raise"]:
            p.map(nap, range(4))
            raise RuntimeError("the script failed")
        p.map(nap, range(100000))
