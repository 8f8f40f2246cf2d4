#!/usr/bin/env python3
"""Simulated hosts for Open MPI: network namespaces joined by a bridge.

    python3 scripts/mpi_hosts.py --hosts 2 -- -n 3 python3 -m cmultiprocessing.mpi x.py
    (as root) runs mpiexec with those arguments on a head and 2 hosts, prints each
    host's interface byte counters, and removes everything it made.

Used by tests/python/test_mpi_hosts.py and bench/mpi_bench.py as a module
(SimHosts). What a run makes, all named after it (cmpsim<tag>-...), so that
runs side by side never meet:

  - a hub namespace holding a bridge, and one namespace per host: the head
    (mpirun and rank 0) and host1..hostN (a serving rank each); each host
    namespace has lo and eth0, a veth whose peer is a port of the bridge, an
    address 10.77.0.1 (head), 10.77.0.2.. of its own (the same addresses in
    every run: each run's namespaces see only their own bridge);
  - a hostfile of those addresses: the head one slot (rank 0), each host
    `slots` (default 1: rank k runs on host k; more: ranks fill host1 first);
  - Open MPI's rsh launcher with scripts/mpi-netns-agent as its agent: instead
    of ssh it enters the host's namespace (and a UTS namespace, so that each
    host has its own name: MPI_Get_processor_name, our error notes);
  - Open MPI's traffic kept to those interfaces: btl tcp,self (no shared
    memory between ranks, which would bypass the network), pml ob1, and
    btl_tcp_if_include/oob_tcp_if_include the simulated subnet.

close() (also at exit, on SIGTERM, and for runs whose process is gone:
their namespaces are swept when the next run starts) kills every process
left in the namespaces and deletes them.
"""
import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT = os.path.join(HERE, "mpi-netns-agent")
SUBNET = "10.77.0"
PREFIX = "cmpsim"


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def available():
    """(True, "") where namespaces can be made here, else (False, why)."""
    if os.geteuid() != 0:
        return False, "simulated hosts need root (ip netns add)"
    for tool in ("ip", "unshare", "mpiexec"):
        if not shutil.which(tool):
            return False, f"simulated hosts need {tool}, which is not installed"
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        r = _ip("netns", "add", name, check=False)
        if r.returncode != 0:
            return False, "cannot create a network namespace: " + r.stderr.strip()
        r = _ip("-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1",
                check=False)
        if r.returncode != 0:
            return False, "cannot create a veth pair: " + r.stderr.strip()
        return True, ""
    finally:
        _ip("netns", "del", name, check=False)


def _ns_pids(ns):
    r = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


def _remove_ns(ns):
    # processes keep a namespace alive after its name is gone: kill them first
    for _ in range(20):
        pids = _ns_pids(ns)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _ip("netns", "del", ns, check=False)


def _sweep_stale():
    """Namespaces of runs whose process is gone (killed before cleaning up)."""
    r = _ip("netns", "list", check=False)
    for line in r.stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if not ns.startswith(PREFIX) or "-" not in ns:
            continue
        owner = ns[len(PREFIX):].split("-")[0].split("x")[0]
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            _remove_ns(ns)


class SimHosts:
    """A head and `hosts` simulated hosts; a context manager."""

    _seq = 0

    def __init__(self, hosts=2, slots=1):
        SimHosts._seq += 1
        self.tag = f"{os.getpid()}x{SimHosts._seq}"
        self.hosts = hosts
        self.slots = slots  # ranks a host takes (the head: one, rank 0)
        self.hub = f"{PREFIX}{self.tag}-hub"
        # (namespace, host name, address): index 0 is the head
        self.nodes = [(f"{PREFIX}{self.tag}-{i}", "head" if i == 0 else f"host{i}",
                       f"{SUBNET}.{i + 1}") for i in range(hosts + 1)]
        self.nodes = [(ns, f"{PREFIX}{self.tag}-{name}", addr) for ns, name, addr in self.nodes]
        self.dir = None
        self._made = []
        self._prev_term = None

    # ---- setup and cleanup ----
    def open(self):
        _sweep_stale()
        atexit.register(self.close)
        if threading_main():
            self._prev_term = signal.signal(signal.SIGTERM, self._on_term)
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def _on_term(self, signum, frame):
        self.close()
        prev = self._prev_term
        if callable(prev):
            prev(signum, frame)
        else:
            raise SystemExit(128 + signum)

    def _add_ns(self, ns):
        _ip("netns", "add", ns)
        self._made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _make(self):
        self._add_ns(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, (ns, _name, addr) in enumerate(self.nodes):
            self._add_ns(ns)
            port = f"port{i}"
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                "netns", self.hub)
            _ip("-n", self.hub, "link", "set", port, "master", "br0")
            _ip("-n", self.hub, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        self.dir = tempfile.mkdtemp(prefix=f"{PREFIX}{self.tag}-")
        with open(self.hostfile, "w") as f:
            for i, (_ns, _name, addr) in enumerate(self.nodes):
                f.write(f"{addr} slots={1 if i == 0 else self.slots}\n")

    def close(self):
        for ns in reversed(self._made):
            _remove_ns(ns)
        self._made = []
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if self._prev_term is not None and threading_main():
            signal.signal(signal.SIGTERM, self._prev_term)
            self._prev_term = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    # ---- running a job ----
    @property
    def hostfile(self):
        return os.path.join(self.dir, "hostfile")

    def names(self):
        """Host names by rank: rank 0 on the head, rank k on host k."""
        return [name for _ns, name, _addr in self.nodes]

    def env(self, base=None):
        env = dict(os.environ if base is None else base)
        env["CMP_SIM_HOSTS"] = " ".join(f"{addr}={ns}={name}" for ns, name, addr in self.nodes)
        # sigkill_timeout: mpiexec ends a failed job at once (see test_mpi.py);
        # the agent passes the environment on to each host's orted
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_odls_base_sigkill_timeout="0")
        return env

    def mpiexec(self, args, mpiexec="mpiexec"):
        """The command that runs `mpiexec args` from the head, on the hosts:
        run it with env()."""
        head_ns, head_name, _ = self.nodes[0]
        mca = {
            "plm_rsh_agent": AGENT,
            "plm_rsh_no_tree_spawn": "1",
            "btl": "tcp,self",
            "pml": "ob1",
            "btl_tcp_if_include": f"{SUBNET}.0/24",
            "oob_tcp_if_include": f"{SUBNET}.0/24",
        }
        cmd = [mpiexec, "--hostfile", self.hostfile, "--bind-to", "none"]
        for k, v in mca.items():
            cmd += ["--mca", k, v]
        return ["ip", "netns", "exec", head_ns, "unshare", "--uts", "sh", "-c",
                'hostname "$1"; shift; exec "$@"', "mpi-netns-head", head_name, *cmd, *args]

    def counters(self):
        """Bytes each host's eth0 sent and received: {name: (tx, rx)}."""
        out = {}
        for ns, name, _addr in self.nodes:
            r = _ip("-n", ns, "-j", "-s", "link", "show", "dev", "eth0")
            st = json.loads(r.stdout)[0]["stats64"]
            out[name] = (st["tx"]["bytes"], st["rx"]["bytes"])
        return out

    def pids(self):
        """Processes still running in any of the run's namespaces."""
        return [p for ns in self._made for p in _ns_pids(ns)]


def threading_main():
    import threading
    return threading.current_thread() is threading.main_thread()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=2, help="simulated hosts besides the head")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- mpiexec's arguments")
    a = ap.parse_args()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    ok, why = available()
    if not ok:
        sys.exit("mpi_hosts: " + why)
    with SimHosts(a.hosts) as sim:
        rc = subprocess.call(sim.mpiexec(args), env=sim.env())
        for name, (tx, rx) in sim.counters().items():
            print(f"mpi_hosts: {name}: eth0 sent {tx} B, received {rx} B", file=sys.stderr)
    sys.exit(rc)


if __name__ == "__main__":
    main()
