"""Run by test_mpi_hosts.py on simulated hosts (scripts/mpi_hosts.py): the
Pool's map, imap order, an exception and a killed worker across hosts;
prints one JSON line."""
import json
import socket
import time

import cmultiprocessing.mpi as mpi
from fail_script import boom, suicide  # a task that raises, one that kills its worker

BIG = 4 << 20


def where(x):
    time.sleep(0.002)
    return [socket.gethostname(), mpi.rank()]


def slow_square(x):
    time.sleep(0.001 * ((x * 7) % 5))  # out-of-order completion
    return x * x


def size_of(b):
    return len(b)


def main():
    out = {"head": socket.gethostname()}
    with mpi.Pool() as p:
        out["processes"] = p._processes
        out["where"] = sorted(set(map(tuple, p.map(where, range(100), chunksize=1))))
        out["map"] = p.map(slow_square, range(200), chunksize=3) == [x * x for x in range(200)]
        out["imap"] = list(p.imap(slow_square, range(60))) == [x * x for x in range(60)]
        try:
            p.apply(boom, (7,))
        except KeyError as e:
            out["exc"] = [str(e), getattr(e, "__notes__", [])]
        out["lost"] = []
        it = p.imap(suicide, range(6))
        for _ in range(6):
            try:
                out["lost"].append(it.next(timeout=20))
            except mpi.WorkerLostError as e:
                out["lost"].append(str(e))
        # 4 MiB to each host: the interface counters must show it
        out["big"] = p.map(size_of, [b"x" * BIG] * 4, chunksize=1)
        out["after"] = p.map(slow_square, range(20))
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
