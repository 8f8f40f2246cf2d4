"""cmultiprocessing.mpi: the Pool over Open MPI ranks. Each test runs a
small script (tests/python/data/mpi/) under
`mpiexec -n 2|3 python3 -m cmultiprocessing.mpi script.py` and reads the
JSON line it prints; the same scripts run without mpiexec show the local
fallback. Beyond the standard library (no stdlib twin): not differential.

Open MPI's switches set here: OMPI_ALLOW_RUN_AS_ROOT(+_CONFIRM) (the
tests run as root), --oversubscribe (3 ranks on 2 cores),
OMPI_MCA_btl_vader_single_copy_mechanism=none (containers refuse CMA) and
OMPI_MCA_odls_base_sigkill_timeout=0 (mpiexec ending a job, on Ctrl-C or a
failed rank, otherwise sleeps a second or two before it returns, even when
every rank is gone; see test_sigint_*).
Skipped when mpiexec or the binding (built only where mpicc is) is absent.
"""
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "mpi")
PKG_DIR = os.path.abspath(os.environ.get("CMP_PKG_DIR", os.path.join(HERE, "..", "..", "python")))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.environ.get("BUILD", "build")


def _binding_built():
    mpi_dir = os.path.join(PKG_DIR, "cmultiprocessing", "mpi")
    return os.path.isdir(mpi_dir) and any(n.startswith("_mpi") and n.endswith(".so")
                                          for n in os.listdir(mpi_dir))


MPIEXEC = shutil.which("mpiexec")
pytestmark = [
    pytest.mark.skipif(not MPIEXEC or not _binding_built(),
                       reason="Open MPI not installed or cmultiprocessing.mpi._mpi not built "
                              "(apt-get install openmpi-bin libopenmpi-dev; make)"),
    pytest.mark.skipif(os.environ.get("SANITIZE") == "1",
                       reason="make sanitize does not build the MPI binding sanitized"),
]

RUN_TIMEOUT = 90


def _env():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none",
               OMPI_MCA_odls_base_sigkill_timeout="0",
               PYTHONPATH=PKG_DIR + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _mpiexec(n, *argv):
    return ["timeout", "--kill-after=5", str(RUN_TIMEOUT), MPIEXEC, "--oversubscribe",
            "-n", str(n), *argv]


def _result(cmd):
    proc = subprocess.run(cmd, cwd=DATA, env=_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT + 15)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(lines[-1][len("RESULT "):])


def _script(name, n):
    if n == 0:  # no mpiexec at all: the local fallback
        return _result([sys.executable, name])
    return _result(_mpiexec(n, sys.executable, "-m", "cmultiprocessing.mpi", name))


_cache = {}


def _cached(name, n):
    if (name, n) not in _cache:
        _cache[name, n] = _script(name, n)
    return _cache[name, n]


@pytest.fixture(params=[2, 3], ids=["n2", "n3"])
def api(request):
    return request.param, _cached("api_script.py", request.param)


@pytest.fixture(params=[2, 3], ids=["n2", "n3"])
def fail(request):
    return request.param, _cached("fail_script.py", request.param)


def test_pool_is_spread_over_the_serving_ranks(api):
    n, r = api
    assert r["active"] is True and r["size"] == n
    assert r["ranks"] == list(range(1, n))  # every serving rank ran tasks, rank 0 none
    assert r["processes"] >= n - 1


def test_map(api):
    _, r = api
    assert r["map"] == [1, 4, 9, 16, 25]
    assert r["map_chunks"] is True
    assert r["starmap"] == [3, 7] and r["starmap_async"] == [11]
    assert r["progress"] == [40, 40]  # progress= as on the local Pool


def test_imap_keeps_order_and_imap_unordered_gets_all(api):
    _, r = api
    assert r["imap"] is True
    assert r["imap_unordered"] is True


def test_apply_and_callbacks(api):
    _, r = api
    assert r["apply"] == 5 and r["apply_async"] == 144
    assert r["callback"] == [144]
    assert r["error_callback"] == ["ValueError"]
    assert r["map_async_cb"] == [[1, 4, 9]]


def test_big_arguments_and_results(api):
    _, r = api
    assert r["big_bytes"] is True
    if r["big_arrays"] is None:
        pytest.skip("numpy not installed")
    assert r["big_arrays"] is True
    # arrays a task keeps (decoded in place on a serving rank) stay its own
    assert r["kept_arrays"] is True


KILL_AT = 2000000  # results_script.py's task whose worker dies returning it


def _results_job(n, env_extra, *args):
    """results_script.py under mpiexec with CMP_MPI_STATS: its JSON and, per
    serving rank, (big results from slots, by the ring, slots held at the end)."""
    env = _env()
    env.update(CMP_MPI_STATS="1", **env_extra)
    proc = subprocess.run(_mpiexec(n, sys.executable, "-m", "cmultiprocessing.mpi",
                                   "results_script.py", *map(str, args)),
                          cwd=DATA, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT + 15)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.returncode, proc.stdout, proc.stderr)
    stats = {}
    for m in re.finditer(r"cmp.mpi stats: rank (\d+): (\d+) big results from slots, (\d+) by "
                         r"the ring, (\d+) slots held", proc.stderr):
        stats[int(m[1])] = tuple(int(x) for x in m.groups()[1:])
    assert sorted(stats) == list(range(1, n)), proc.stderr
    return json.loads(lines[-1][len("RESULT "):]), stats


def _results_right(r):
    assert r["bytes"] is True and r["unordered"] is True
    if r["arrays"] is not None:
        assert r["arrays"] is True and r["writable"] is True


@pytest.mark.parametrize("n", [2, 3])
def test_big_results_come_whole_from_the_result_slots(n):
    r, stats = _results_job(n, {})
    _results_right(r)
    # every big result (>= 64 KiB encoded) left its serving rank from a slot
    assert sum(s[0] for s in stats.values()) >= 2 * 3 * 5
    assert all(s[1] == 0 and s[2] == 0 for s in stats.values()), stats


@pytest.mark.parametrize("env", [{"CMP_MPI_RESULT_SLOTS": "0"}, {"CMP_MPI_RESULT_SLOTS": "1"},
                                 {"CMP_MPI_NO_ARENA": "1"}], ids=["full", "one_slot", "no_arena"])
def test_big_results_fall_back_to_the_ring_when_the_slots_are_full_or_off(env):
    r, stats = _results_job(3, env)
    _results_right(r)
    ring = sum(s[1] for s in stats.values())
    slots = sum(s[0] for s in stats.values())
    if env.get("CMP_MPI_RESULT_SLOTS") == "1":
        assert slots > 0 and slots + ring >= 2 * 3 * 5
    else:
        assert slots == 0 and ring >= 2 * 3 * 5
    assert all(s[2] == 0 for s in stats.values()), stats


@pytest.mark.parametrize("slots", ["1", "64"])
def test_a_worker_killed_returning_a_big_result_fails_only_that_task(slots):
    r, stats = _results_job(2, {"CMP_MPI_TEST_KILL_RESULT": str(KILL_AT),
                                "CMP_MPI_RESULT_SLOTS": slots}, KILL_AT)
    _results_right(r)
    assert r["killed"] == [True, "lost", True, True]
    assert r["after_kill"] is True
    held = [s[2] for s in stats.values()]
    assert held == [0], stats  # the killed worker's slot was freed, not leaked


def test_initializer_and_maxtasksperchild(api):
    _, r = api
    assert r["initializer"] == [41]
    assert r["maxtasks_pids"] >= 10  # 30 tasks, a worker replaced after 3


def test_pool_view_lists_the_workers_of_every_rank(api):
    _, r = api
    assert r["pool_view"] == [True, True, True]


def test_a_slow_rank_gets_fewer_tasks():
    """Tasks take 10x longer on rank 1 than on rank 2 (one worker each):
    the map goes mostly to the fast rank, with chunksize 1 and with the
    default chunks, instead of a half each decided up front."""
    r = _script("slow_rank_script.py", 3)
    for chunksize, counts in r.items():
        slow, fast = counts.get("1", 0), counts.get("2", 0)
        assert slow + fast == 120, (chunksize, counts)
        # chunksize 1: ~110 against ~10 here; the default's 8 chunks of 15:
        # the slow rank keeps what it was given first (2 chunks)
        assert fast >= (2 * slow if chunksize == "1" else slow + 15), (chunksize, counts)


def test_closed_pool_and_executor(api):
    _, r = api
    assert r["closed"] == "ValueError"
    assert r["submit"] == 42 and r["ex_map"] == [0, 2, 4, 6, 8]


def test_exception_names_host_and_rank(fail):
    _, r = fail
    name, text, notes, cause, cause_has_frame, shown = r["exc"]
    assert (name, text) == ("KeyError", "'bad key 7'")  # as the local Pool raises it
    assert cause == "RemoteTraceback" and cause_has_frame
    assert len(notes) == 1 and "MPI rank" in notes[0] and "host" in notes[0]
    assert "MPI rank" in shown


def test_killed_worker_fails_its_task_and_the_pool_goes_on(fail):
    _, r = fail
    assert "killed by signal 9" in r["lost"] and "MPI rank" in r["lost"]
    assert r["lost_imap"] == [0, 1, 2, "lost", 4, 5]
    assert r["after"] == [x * x for x in range(10)]
    assert r["replaced"] is True


def test_failing_initializer_and_unpicklable_result_as_in_the_local_pool(fail):
    _, r = fail
    assert r["init_map"] == ["InitializerError", "OSError('no GPU here')"]
    assert r["init_apply"] == ["ValueError", "None"]  # the pool is broken: not running
    assert r["bad_result"][0] == "MaybeEncodingError"
    local = _cached("fail_script.py", 0)
    assert (local["init_map"], local["init_apply"], local["bad_result"][0]) == \
        (r["init_map"], r["init_apply"], r["bad_result"][0])


def test_without_mpiexec_the_same_script_runs_locally():
    r = _script("api_script.py", 0)
    assert r["active"] is False and r["size"] == 1 and r["ranks"] == [0]
    assert r["map"] == [1, 4, 9, 16, 25] and r["imap"] and r["submit"] == 42
    f = _cached("fail_script.py", 0)
    assert f["exc"][:2] == ["KeyError", "'bad key 7'"] and f["exc"][2] == []
    assert f["lost_imap"] == [0, 1, 2, "lost", 4, 5]


def test_launcher_on_one_rank_runs_locally():
    r = _script("api_script.py", 1)
    assert r["active"] is False and r["map"] == [1, 4, 9, 16, 25]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_c_example(n):
    exe = os.path.join(ROOT, BUILD, "examples", "mpi_pool")
    if not os.path.exists(exe):
        pytest.skip("examples/c/mpi_pool not built")
    proc = subprocess.run(_mpiexec(n, exe), env=_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT + 15)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1, 4, 9, 16, 25]"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_c_suite(n):
    """libcmp_mpi's own C tests (tests/c/test_mpi.c), alone and on 2 and 3 ranks."""
    exe = os.path.join(ROOT, BUILD, "test_mpi")
    if not os.path.exists(exe):
        pytest.skip("build/test_mpi not built")
    proc = subprocess.run(_mpiexec(n, exe), env=_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT + 15)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mpi: 7 passed, 0 failed" in proc.stdout, proc.stdout


def _processes_running(path):
    """Pids whose command line names path (the job's ranks and their workers)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if path.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _gone_within(path, seconds):
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _processes_running(path):
            return True
        time.sleep(0.05)
    return False


def _copy_script(tmp_path):
    # a path of its own, so that its processes can be told from any other job's
    script = tmp_path / "long_script.py"
    shutil.copy(os.path.join(DATA, "long_script.py"), script)
    return str(script)


def test_an_error_in_the_script_ends_the_whole_job(tmp_path):
    script = _copy_script(tmp_path)
    proc = subprocess.run(_mpiexec(3, sys.executable, "-m", "cmultiprocessing.mpi", script,
                                   "raise"),
                          env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT + 15)
    assert proc.returncode != 0 and "the script failed" in proc.stderr
    assert _gone_within(script, 5), _processes_running(script)


@contextlib.contextmanager
def _long_job(tmp_path):
    """A job of 3 ranks running a long map: (mpiexec's process under
    timeout, the script's path, rank 0's pid); whatever is left of it is
    killed at the end."""
    import signal
    script = _copy_script(tmp_path)
    proc = subprocess.Popen(_mpiexec(3, sys.executable, "-m", "cmultiprocessing.mpi", script),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        started = proc.stdout.readline().split()
        assert started[:1] == ["STARTED"]
        time.sleep(0.3)  # the map is running on every rank
        assert len(_processes_running(script)) >= 5  # 3 ranks, their workers
        yield proc, script, int(started[1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in _processes_running(script):
            os.kill(pid, signal.SIGKILL)


def _interrupted(tmp_path, at_rank0):
    """Ctrl-C during a long map: SIGINT to mpiexec (a terminal's Ctrl-C:
    the ranks are in process groups of their own) or to rank 0 alone.
    Returns (mpiexec's status, seconds until every process of the job is gone)."""
    import signal
    with _long_job(tmp_path) as (proc, script, rank0):
        t0 = time.monotonic()
        if at_rank0:
            os.kill(rank0, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
        assert _gone_within(script, 5), _processes_running(script)
        return proc.returncode, time.monotonic() - t0


def test_sigint_to_mpiexec_stops_every_rank_and_worker(tmp_path):
    # mpiexec kills the ranks (SIGCONT, SIGTERM, SIGKILL: at once with
    # odls_base_sigkill_timeout=0); our workers die with their rank
    # (PR_SET_PDEATHSIG)
    rc, took = _interrupted(tmp_path, at_rank0=False)
    assert rc != 0 and took < 5.0, (rc, took)  # not run to its end (loose: CI may be loaded)


def test_sigint_at_rank0_stops_every_rank_and_worker(tmp_path):
    # KeyboardInterrupt on rank 0: it stops the servers (their pools
    # terminated), which leave at once; rank 0 dies of the SIGINT
    rc, took = _interrupted(tmp_path, at_rank0=True)
    assert rc != 0 and took < 5.0, (rc, took)  # not run to its end (loose: CI may be loaded)


def _ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_a_lost_rank_ends_the_whole_job(tmp_path):
    """A serving rank killed (its host gone): Open MPI 4.1 without
    --enable-recovery ends the job (mpiexec names the rank); no process of
    it is left, its workers included."""
    import signal
    with _long_job(tmp_path) as (proc, script, rank0):
        running = _processes_running(script)
        mpiexec = [p for p in running if _ppid(p) == proc.pid]  # under timeout
        ranks = {p for p in running if mpiexec and _ppid(p) == mpiexec[0]}
        servers = sorted(ranks - {rank0})
        assert len(servers) == 2, (running, ranks, rank0)
        t0 = time.monotonic()
        os.kill(servers[-1], signal.SIGKILL)
        _, err = proc.communicate(timeout=20)
        took = time.monotonic() - t0
        assert proc.returncode != 0
        assert "exited on signal 9" in err and "rank" in err, err
        assert _gone_within(script, 5), _processes_running(script)
        assert took < 10.0, took  # the job, not a rank's timeout (loose: CI may be loaded)


def lose_a_rank(cmd, env, find_server):
    """Runs lost_script.py (cmd: its mpiexec command, with --enable-recovery)
    and kills a serving rank (find_server(rank 0's pid) -> its pid) during
    its map. Returns (its result, the killed rank's pid, mpiexec's status)."""
    import signal
    env = dict(env, CMP_MPI_RANK_TIMEOUT="1")
    proc = subprocess.Popen(["timeout", "--kill-after=5", str(RUN_TIMEOUT)] + cmd, cwd=DATA,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = proc.stdout.readline().split()
        assert started[:1] == ["STARTED"], proc.communicate()
        time.sleep(0.5)  # tasks run on both serving ranks
        victim = find_server(proc, int(started[1]))
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert lines, (proc.returncode, out, err)
        return json.loads(lines[-1][7:]), victim, proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def check_lost_rank(r, victim):
    """The lost rank's tasks failed naming it; every other task ran; the
    pool went on with the rank left."""
    ranks = {rank for rank, ppid in r["done"] if ppid == victim}
    assert len(ranks) == 1, (ranks, victim)  # it ran tasks before it died
    (lost,) = ranks
    assert r["lost"] and len(r["done"]) + len(r["lost"]) == 160
    assert all(f"MPI rank {lost} on host" in e and "was lost" in e for e in r["lost"]), r["lost"]
    assert {rank for rank, _ in r["after"]} == {3 - lost}  # the other serving rank alone


def test_a_lost_rank_under_enable_recovery_fails_its_tasks_and_the_job_goes_on():
    script = os.path.join(DATA, "lost_script.py")

    def server(proc, rank0):
        running = _processes_running(script)
        mpiexec = [p for p in running if _ppid(p) == proc.pid]
        ranks = {p for p in running if mpiexec and _ppid(p) == mpiexec[0]}
        return max(ranks - {rank0})

    cmd = [MPIEXEC, "--enable-recovery", "--oversubscribe", "-n", "3", sys.executable, "-m",
           "cmultiprocessing.mpi", script]
    r, victim, _ = lose_a_rank(cmd, _env(), server)
    check_lost_rank(r, victim)
    assert _gone_within(script, 5), _processes_running(script)


def test_a_pool_left_open_does_not_keep_the_job_alive(tmp_path):
    import time
    script = tmp_path / "open_pool_script.py"
    shutil.copy(os.path.join(DATA, "open_pool_script.py"), script)
    t0 = time.monotonic()
    proc = subprocess.run(_mpiexec(3, sys.executable, "-m", "cmultiprocessing.mpi", str(script)),
                          env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT + 15)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("RESULT 0")
    assert time.monotonic() - t0 < 20  # not the 30 s task
    assert _gone_within(str(script), 5), _processes_running(str(script))
