"""Run by test_mpi.py under `mpiexec -n N python3 -m cmultiprocessing.mpi`:
big results (a serving rank's result slots, or its pool's ring when the
slots are full or off), checked byte for byte; prints one JSON line.

KILL_AT (argv[1], optional): a task returning that many bytes is the one
whose worker the test kills while it returns it (CMP_MPI_TEST_KILL_RESULT)."""
import hashlib
import json
import sys

import cmultiprocessing.mpi as mpi

# around CMP_MPI_BIG (64 KiB: the encoded result, a few bytes more than
# the payload), one well past it, and one past the local pool's 1 MiB ring
SIZES = [65400, 65530, 65536, 65600, 300001, 1 << 20, (8 << 20) + 3]


def blob(n):
    """n bytes that tell any two sizes and any shifted copy apart."""
    seed = hashlib.sha256(n.to_bytes(8, "little")).digest()
    whole, rest = divmod(n, 251)
    return (bytes(range(251)) * whole + bytes(range(rest)))[::-1][:n - 32] + seed[:min(32, n)]


def array(n):
    import numpy as np
    return np.arange(n, dtype=np.float64) * 3 + n


def main():
    kill_at = int(sys.argv[1]) if len(sys.argv) > 1 else None
    out = {}
    with mpi.Pool() as p:
        sizes = SIZES * 3  # several big results in flight at each rank
        got = p.map(blob, sizes, chunksize=1)
        out["bytes"] = [len(b) for b in got] == sizes and all(g == blob(n) for g, n in zip(got, sizes))
        got = list(p.imap_unordered(blob, sizes))
        out["unordered"] = sorted(len(b) for b in got) == sorted(sizes) and \
            all(g == blob(len(g)) for g in got)
        try:
            import numpy  # noqa: F401
        except ImportError:
            out["arrays"] = None
        else:
            counts = [8190, 8192, 8200, 1 << 20, 3 << 17]
            arrs = p.map(array, counts * 2, chunksize=1)
            out["arrays"] = bool(all((a == array(n)).all() for a, n in zip(arrs, counts * 2)))
            arrs[0][0] = -1.0  # the caller's to write
            out["writable"] = bool(arrs[0][0] == -1.0)
        if kill_at is not None:
            res = [p.apply_async(blob, (n,)) for n in [1 << 20, kill_at, 1 << 20, 70000]]
            outcome = []
            for r in res:
                try:
                    v = r.get(timeout=60)
                    outcome.append(v == blob(len(v)))
                except mpi.WorkerLostError:
                    outcome.append("lost")
            out["killed"] = outcome
            # the slot of the killed worker is free again, and the pool goes on
            got = p.map(blob, [(8 << 20) + 3] * 6, chunksize=1)
            out["after_kill"] = all(g == blob((8 << 20) + 3) for g in got)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
