"""Run by test_mpi.py under `mpiexec -n N python3 -m cmultiprocessing.mpi`
(and alone): exercises the Pool API and prints one JSON line of results."""
import json
import os
import sys
import threading
import time

import cmultiprocessing.mpi as mpi

_value = None


def init(v):
    global _value
    _value = v


def square(x):
    return x * x


def where(x):
    return mpi.rank()


def slow_square(x):
    time.sleep(0.001 * ((x * 7) % 5))  # out-of-order completion
    return x * x


def get_value(_):
    return _value


def worker_pid(_):
    time.sleep(0.005)
    return os.getpid()


def add(a, b):
    return a + b


def double(a):
    return a * 2


_kept = []


def keep(a):
    """Keeps its argument (a big task's array, decoded where the serving
    rank received it) past the task, writes to it, and checks that every
    array kept so far still holds its own values (no later task's)."""
    a *= 1  # writable, as a copy would be
    _kept.append((float(a[0]), a))
    return all((k == v).all() for v, k in _kept)


def blob(n):
    return bytes(range(256)) * (n // 256)


def main():
    out = {"active": mpi.active(), "size": mpi.size()}
    with mpi.Pool() as p:
        out["processes"] = p._processes if hasattr(p, "_processes") else None
        out["map"] = p.map(square, range(1, 6))
        out["map_chunks"] = p.map(square, range(1000), chunksize=7) == [x * x for x in range(1000)]
        out["ranks"] = sorted(set(p.map(where, range(200), chunksize=1)))
        out["imap"] = list(p.imap(slow_square, range(60))) == [x * x for x in range(60)]
        out["imap_unordered"] = sorted(p.imap_unordered(slow_square, range(60), chunksize=2)) == \
            [x * x for x in range(60)]
        seen = []
        p.map(square, range(40), chunksize=4, progress=lambda done, total: seen.append(
            (done, total)))
        out["progress"] = seen[-1] if seen else None
        out["starmap"] = p.starmap(add, [(1, 2), (3, 4)])
        out["starmap_async"] = p.starmap_async(add, [(5, 6)]).get(timeout=20)
        out["apply"] = p.apply(add, (2, 3))
        got, errs, done = [], [], threading.Event()

        def cb(v):
            got.append(v)
            done.set()
        r = p.apply_async(square, (12,), callback=cb)
        out["apply_async"] = r.get(timeout=20)
        done.wait(20)
        out["callback"] = got
        e_done = threading.Event()
        p.apply_async(int, ("x",), error_callback=lambda e: (errs.append(type(e).__name__),
                                                               e_done.set()))
        e_done.wait(20)
        out["error_callback"] = errs
        out["map_async_cb"] = []
        m_done = threading.Event()
        p.map_async(square, [1, 2, 3], callback=lambda v: (out["map_async_cb"].append(v),
                                                           m_done.set()))
        m_done.wait(20)
    with mpi.Pool() as p:
        # big arguments and results travel as their own MPI messages
        blobs = list(p.imap(blob, [3 << 20, 256, 70144]))
        out["big_bytes"] = [len(b) for b in blobs] == [3 << 20, 256, 70144] and \
            blobs[0] == bytes(range(256)) * ((3 << 20) // 256)
        try:
            import numpy as np
        except ImportError:
            out["big_arrays"] = None
        else:
            arrays = [np.arange(1 << 20, dtype=np.float64) + i for i in range(6)]
            got = p.map(double, arrays, chunksize=1)
            out["big_arrays"] = all((g == a * 2).all() for g, a in zip(got, arrays))
            out["kept_arrays"] = all(p.map(keep, [np.full(1 << 17, float(i)) for i in range(40)],
                                           chunksize=1))
    with mpi.Pool() as p:
        # pool._pool: the workers of every serving rank, as on a local Pool
        used = set(p.map(worker_pid, range(40), chunksize=1))
        views = p._pool
        out["pool_view"] = [len(views) == p._processes, all(v.is_alive() for v in views),
                            used <= {v.pid for v in views}]
    with mpi.Pool(2, initializer=init, initargs=(41,), maxtasksperchild=3) as p:
        out["initializer"] = sorted(set(p.map(get_value, range(20), chunksize=1)))
        out["maxtasks_pids"] = len(set(p.map(worker_pid, range(30), chunksize=1)))
    p = mpi.Pool()
    p.close()
    p.join()
    try:
        p.apply(square, (1,))
        out["closed"] = "no error"
    except ValueError:
        out["closed"] = "ValueError"
    with mpi.Executor() as ex:
        out["submit"] = ex.submit(add, 20, 22).result(timeout=20)
        out["ex_map"] = list(ex.map(add, range(5), range(5), timeout=20))
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
