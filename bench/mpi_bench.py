"""Our MPI Pool next to mpi4py.futures' MPIPoolExecutor, on the same ranks.

    make bench-mpi                 (or: /usr/bin/python3 bench/mpi_bench.py [-n 3])

Runs three MPI jobs of n ranks (rank 0 submits, the others work) and
prints one table:
  - cmultiprocessing.mpi: mpiexec -n N python3 -m cmultiprocessing.mpi this --role cmp
  - mpi4py.futures:        mpiexec -n N python3 -m mpi4py.futures this --role mpi4py
  - bare MPI:              mpiexec -n N python3 this --role raw  (the same bytes through
                           comm.Send/comm.Recv to the same ranks: the array map's floor)
The array map runs twice on ours: as it is (big tasks received into the
serving ranks' shared arena) and with CMP_MPI_NO_ARENA (through the local
pools' rings, a copy in and one out: the path before the arena).
Scenarios: map of 20,000 tiny tasks at chunksize=1 and at each library's
default chunksize; map over 64 numpy arrays of 8 MiB returning their sums.
Both pools get one worker per serving rank (processes=N-1), so that they run
the same number of workers. And ours alone: 400 tasks of 10 ms (a sleep)
on 2 workers a rank, against the ideal (workers x 100 tasks/s); mpi4py
runs one worker a rank, so it has no twin here.

Across 2 simulated hosts (scripts/mpi_hosts.py: network namespaces, Open
MPI over TCP between them; as root only, else the rows say why they are
missing): 400 tasks of 10 ms on 2 workers a host against the ideal, ours
(a rank a host, its local pool of 2 workers: 3 ranks) next to mpi4py.futures
(2 worker ranks a host: 5 ranks); and the array map across them (TCP)
against bare Send/Recv between the same hosts. Not part of the tests.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

ITEMS = 20000
ARRAYS = 64
ARRAY_BYTES = 8 << 20
HERE = os.path.abspath(__file__)


def tiny(x):
    return x + 1


def ten_ms(x):
    time.sleep(0.01)
    return x


def host_of(x):
    time.sleep(0.01)
    return socket.gethostname()


SLOW_ITEMS = 400


def array_sum(a):
    return float(a.sum())


_out_array = None


def make_array(i):
    """An 8 MiB array, the worker's own (made once: what is measured is
    the way back, not numpy's fill), stamped with i."""
    global _out_array
    import numpy as np
    if _out_array is None:
        _out_array = np.zeros(ARRAY_BYTES // 8)
    _out_array[0] = i
    return _out_array


def _results_map(p):
    """The map returning 64 x 8 MiB arrays, in MB/s (each checked)."""
    p.map(make_array, range(2), chunksize=1)
    got = []

    def run():
        got[:] = p.map(make_array, range(ARRAYS), chunksize=1)
    mbs = ARRAYS * ARRAY_BYTES / _timed(run) / 1e6
    assert [int(a[0]) for a in got] == list(range(ARRAYS))
    assert all(a.nbytes == ARRAY_BYTES for a in got)
    return mbs


def _arrays():
    import numpy as np
    return [np.full(ARRAY_BYTES // 8, i, dtype=np.float64) for i in range(ARRAYS)]


REPEAT = 3


def _timed(fn):
    """The best of REPEAT runs: the machine is shared, its noise only adds."""
    best = None
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best


def role_cmp(workers):
    import cmultiprocessing.mpi as mpi
    assert mpi.active(), "run under mpiexec -n 2+ with -m cmultiprocessing.mpi"
    out = {}
    with mpi.Pool(workers) as p:
        p.map(tiny, range(100))  # warm: workers started, functions cached
        out["map_c1"] = ITEMS / _timed(lambda: p.map(tiny, range(ITEMS), chunksize=1))
        out["map_default"] = ITEMS / _timed(lambda: p.map(tiny, range(ITEMS)))
    with mpi.Pool(2 * workers) as p:
        p.map(ten_ms, range(2 * workers), chunksize=1)
        out["ten_ms"] = SLOW_ITEMS / _timed(lambda: p.map(ten_ms, range(SLOW_ITEMS), chunksize=1))
    with mpi.Pool(workers) as p:
        try:
            arrays = _arrays()
        except ImportError:
            arrays = None
        if arrays is not None:
            p.map(array_sum, arrays[:2], chunksize=1)
            out["arrays"] = ARRAYS * ARRAY_BYTES / _timed(
                lambda: p.map(array_sum, arrays, chunksize=1)) / 1e6
            out["results"] = _results_map(p)
    return out


def role_cmp_arrays(workers):
    """The array map alone (run with CMP_MPI_NO_ARENA: the serving ranks copy
    each task into their pool's ring, and the worker out of it)."""
    import cmultiprocessing.mpi as mpi
    arrays = _arrays()
    with mpi.Pool(workers) as p:
        p.map(array_sum, arrays[:2], chunksize=1)
        return {"arrays": ARRAYS * ARRAY_BYTES / _timed(
            lambda: p.map(array_sum, arrays, chunksize=1)) / 1e6,
            "results": _results_map(p)}


def role_cmp_hosts(workers):
    import cmultiprocessing.mpi as mpi
    with mpi.Pool(workers) as p:
        hosts = sorted(set(p.map(host_of, range(4 * workers), chunksize=1)))
        return {"hosts": hosts, "workers": p._processes,
                "ten_ms": SLOW_ITEMS / _timed(lambda: p.map(ten_ms, range(SLOW_ITEMS),
                                                            chunksize=1))}


def role_mpi4py_hosts(workers):
    from mpi4py.futures import MPIPoolExecutor
    with MPIPoolExecutor(max_workers=workers) as ex:
        hosts = sorted(set(ex.map(host_of, range(4 * workers))))
        return {"hosts": hosts, "workers": workers,
                "ten_ms": SLOW_ITEMS / _timed(lambda: list(ex.map(ten_ms, range(SLOW_ITEMS))))}


def role_mpi4py(workers):
    from mpi4py.futures import MPIPoolExecutor
    out = {}
    with MPIPoolExecutor(max_workers=workers) as ex:
        list(ex.map(tiny, range(100)))
        out["map_c1"] = ITEMS / _timed(lambda: list(ex.map(tiny, range(ITEMS), chunksize=1)))
        # its default chunksize is 1: "default" is the same call
        out["map_default"] = ITEMS / _timed(lambda: list(ex.map(tiny, range(ITEMS))))
        try:
            arrays = _arrays()
        except ImportError:
            arrays = None
        if arrays is not None:
            list(ex.map(array_sum, arrays[:2]))
            out["arrays"] = ARRAYS * ARRAY_BYTES / _timed(
                lambda: list(ex.map(array_sum, arrays))) / 1e6
    return out


def role_raw():
    """The same array bytes through bare Send/Recv pairs, rank 0 -> each
    serving rank in turn (one array in flight a rank, as the pools keep at
    least), a sum back: what the network path costs with nothing else.
    Then the way back: each serving rank sends rank 0 an array (into
    buffers rank 0 made once) for a small request, as many in all."""
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    buf = np.empty(ARRAY_BYTES // 8)
    servers = comm.size - 1
    if comm.rank == 0:
        arrays = _arrays()

        def run():
            for i in range(0, ARRAYS, servers):
                reqs = [comm.Isend(arrays[i + k], dest=k + 1)
                        for k in range(min(servers, ARRAYS - i))]
                MPI.Request.Waitall(reqs)
                for k in range(len(reqs)):
                    comm.recv(source=k + 1)
        dt = _timed(run)
        into = [np.empty(ARRAY_BYTES // 8) for _ in range(servers)]

        def back():
            for i in range(0, ARRAYS, servers):
                n = min(servers, ARRAYS - i)
                for k in range(n):
                    comm.send(i + k, dest=k + 1, tag=8)
                reqs = [comm.Irecv(into[k], source=k + 1, tag=8) for k in range(n)]
                MPI.Request.Waitall(reqs)
        dt_back = _timed(back)
        for k in range(servers):
            comm.Send(np.empty(0), dest=k + 1, tag=9)
        return {"arrays": ARRAYS * ARRAY_BYTES / dt / 1e6,
                "results": ARRAYS * ARRAY_BYTES / dt_back / 1e6}
    while True:
        st = MPI.Status()
        comm.Probe(source=0, status=st)
        if st.tag == 9:
            comm.Recv(np.empty(0), source=0, tag=9)
            return None
        if st.tag == 8:
            buf[0] = comm.recv(source=0, tag=8)
            comm.Send(buf, dest=0, tag=8)
            continue
        comm.Recv(buf, source=0)
        comm.send(float(buf.sum()), dest=0)


def _env():
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none")
    pkg = os.path.join(os.path.dirname(HERE), "..", "python")
    env["PYTHONPATH"] = os.path.abspath(pkg) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _job(n, launcher, role, workers, sim=None, mpiexec_args=(), env_extra=None):
    argv = [sys.executable] + (["-m", launcher] if launcher else [])
    argv += [HERE, "--role", role, "--workers", str(workers)]
    if sim is None:
        cmd = ["mpiexec", "--oversubscribe", "-n", str(n), *argv]
        env = _env()
    else:
        cmd = sim.mpiexec(["-n", str(n), *mpiexec_args, *argv])
        env = sim.env(_env())
    env.update(env_extra or {})
    proc = subprocess.run(["timeout", "600", *cmd], env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    sys.stderr.write(f"{role}: failed ({proc.returncode})\n{proc.stdout}{proc.stderr}\n")
    return {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=3, help="ranks (rank 0 + n-1 serving)")
    ap.add_argument("--role", choices=["cmp", "mpi4py", "raw", "cmp_hosts", "mpi4py_hosts",
                                           "cmp_arrays"])
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args()
    if a.role:
        r = {"cmp": lambda: role_cmp(a.workers), "mpi4py": lambda: role_mpi4py(a.workers),
             "raw": role_raw, "cmp_hosts": lambda: role_cmp_hosts(a.workers),
             "mpi4py_hosts": lambda: role_mpi4py_hosts(a.workers),
             "cmp_arrays": lambda: role_cmp_arrays(a.workers)}[a.role]()
        if r is not None:
            print("RESULT " + json.dumps(r), flush=True)
        return
    if not shutil.which("mpiexec"):
        sys.exit("mpiexec not found: apt-get install openmpi-bin libopenmpi-dev python3-mpi4py")
    workers = a.n - 1
    hosts = _hosts_jobs()
    ours = _job(a.n, "cmultiprocessing.mpi", "cmp", workers)
    peer = _job(a.n, "mpi4py.futures", "mpi4py", workers)
    raw = _job(a.n, None, "raw", 0)
    ringed = _job(a.n, "cmultiprocessing.mpi", "cmp_arrays", workers,
                  env_extra={"CMP_MPI_NO_ARENA": "1"}) if ours.get("arrays") else {}
    print(f"MPI Pool benchmark: {a.n} ranks (rank 0 + {a.n - 1} serving), "
          f"{workers} workers, {os.cpu_count()} cores")
    print(f"{'scenario':<44}{'cmp.mpi':>12}{'mpi4py':>12}{'cmp/mpi4py':>12}")
    rows = [("map 20,000 tiny, chunksize=1 (tasks/s)", "map_c1"),
            ("map 20,000 tiny, default chunks (tasks/s)", "map_default"),
            ("map 64 x 8 MiB numpy arrays (MB/s)", "arrays")]
    for label, key in rows:
        o, p = ours.get(key), peer.get(key)
        ratio = f"{o / p:.2f}" if o and p else "-"
        print(f"{label:<44}{o or 0:>12.0f}{p or 0:>12.0f}{ratio:>12}")
    if ours.get("ten_ms"):
        ideal = 2 * workers * 100
        print(f"{'map 400 x 10 ms, 2 workers a rank (tasks/s)':<44}{ours['ten_ms']:>12.0f}"
              f"{'':>12}{ours['ten_ms'] / ideal:>12.2f}  (of ideal {ideal}/s)")
    if raw.get("arrays") and ours.get("arrays"):
        print(f"{'bare MPI Send/Recv, same arrays (MB/s)':<44}{raw['arrays']:>12.0f}"
              f"{'':>12}{ours['arrays'] / raw['arrays']:>12.2f}  (cmp.mpi / bare)")
    if raw.get("arrays") and ringed.get("arrays"):
        print(f"{'  arrays via the rings (CMP_MPI_NO_ARENA)':<44}{ringed['arrays']:>12.0f}"
              f"{'':>12}{ringed['arrays'] / raw['arrays']:>12.2f}  (before the arena / bare)")
    if ours.get("results"):
        print(f"{'map returning 64 x 8 MiB arrays (MB/s)':<44}{ours['results']:>12.0f}")
    if raw.get("results"):
        ratio = f"{ours['results'] / raw['results']:.2f}" if ours.get("results") else "-"
        print(f"{'bare MPI Send/Recv, the way back (MB/s)':<44}{raw['results']:>12.0f}"
              f"{'':>12}{ratio:>12}  (cmp.mpi / bare)")
    if raw.get("results") and ringed.get("results"):
        print(f"{'  results via the rings (CMP_MPI_NO_ARENA)':<44}{ringed['results']:>12.0f}"
              f"{'':>12}{ringed['results'] / raw['results']:>12.2f}  (no slots: the ring / bare)")
    _hosts_table(hosts)


HOST_WORKERS = 2  # a simulated host's workers: ours a pool of 2, mpi4py 2 ranks


def _hosts_jobs():
    """400 x 10 ms across 2 simulated hosts, ours and mpi4py's: (rows, why not)."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "..", "scripts"))
    import mpi_hosts
    ok, why = mpi_hosts.available()
    if not ok:
        return None, why
    workers = 2 * HOST_WORKERS
    with mpi_hosts.SimHosts(2, slots=HOST_WORKERS) as sim:
        # ours: one rank a host (by node: head, host1, host2), 2 workers each
        ours = _job(3, "cmultiprocessing.mpi", "cmp_hosts", workers, sim, ["--map-by", "node"])
        # mpi4py: a rank a worker, 2 a host (the hostfile's slots, filled in turn)
        peer = _job(1 + workers, "mpi4py.futures", "mpi4py_hosts", workers, sim)
        # the array map over TCP, ours (a worker a host) and bare Send/Recv
        ours.update(_job(3, "cmultiprocessing.mpi", "cmp_arrays", 2, sim, ["--map-by", "node"]))
        raw = _job(3, None, "raw", 0, sim, ["--map-by", "node"])
    ours["raw_arrays"] = raw.get("arrays")
    ours["raw_results"] = raw.get("results")
    return (ours, peer, sim.names()[1:]), ""


def _hosts_table(hosts):
    rows, why = hosts
    label = "map 400 x 10 ms, 2 simulated hosts (tasks/s)"
    if rows is None:
        print(f"{label}: not run ({why})")
        return
    ours, peer, names = rows
    ideal = 2 * HOST_WORKERS * 100
    for who, r in (("cmp.mpi", ours), ("mpi4py", peer)):
        if r.get("hosts") != names:
            print(f"{label}, {who}: its tasks ran on {r.get('hosts')}, not on {names}")
    o, p = ours.get("ten_ms"), peer.get("ten_ms")
    ratio = f"{o / p:.2f}" if o and p else "-"
    print(f"{label:<44}{o or 0:>12.0f}{p or 0:>12.0f}{ratio:>12}")
    print(f"{f'  of ideal {ideal}/s ({HOST_WORKERS} workers a host)':<44}"
          f"{(o or 0) / ideal:>12.2f}{(p or 0) / ideal:>12.2f}")
    a, b = ours.get("arrays"), ours.get("raw_arrays")
    if a and b:
        print(f"{'64 x 8 MiB arrays, 2 sim. hosts, TCP (MB/s)':<44}{a:>12.0f}{'':>12}"
              f"{a / b:>12.2f}  (of bare Send/Recv: {b:.0f})")
    a, b = ours.get("results"), ours.get("raw_results")
    if a and b:
        print(f"{'map returning 64 x 8 MiB, 2 sim. hosts (MB/s)':<44}{a:>12.0f}{'':>12}"
              f"{a / b:>12.2f}  (of bare Send/Recv: {b:.0f})")


if __name__ == "__main__":
    main()
