"""Run by test_mpi.py: the script ends with a pool still open and a task
still running on a rank; the launcher's end stops the job anyway."""
import time

import cmultiprocessing.mpi as mpi


def nap(x):
    time.sleep(x)
    return x


if __name__ == "__main__":
    pool = mpi.Pool()
    print("RESULT", pool.apply(nap, (0,)), flush=True)
    pending = pool.apply_async(nap, (30,))
