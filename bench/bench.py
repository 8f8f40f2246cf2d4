"""Side-by-side benchmarks: the standard library's multiprocessing and
cmultiprocessing, measured in one run, one after the other, on the same
machine state. Prints each figure and the ratio cmultiprocessing / stdlib.

    python3 bench/bench.py [--quick] [--only NAME] [--load 0,1,2]

Each scenario runs REPEATS rounds alternating stdlib and cmultiprocessing,
each round long enough to span many scheduler time slices; the median
round of each is reported.

--load N runs N CPU hogs (shell busy loops at the default nice level, as
a user's other jobs would be) for the whole of each measurement; a list
(`--load 0,1,2`, what `make bench` runs) measures every scenario at each
load in turn and prints the loads side by side. On a machine with N cores
a load of N leaves no CPU idle: every wake-up must preempt a hog.
"""
import argparse
import functools
import importlib
import os
import queue
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

SCENARIOS = []

# A row without a target of its own must still never be slower than the
# stdlib, at any load; reference rows (indented names) compare unlike
# things or the same code on both sides and have no target at all.
NO_WORSE = 1.0


def scenario(name, unit, target, busy_target=None):
    """Registers fn(mp, n) -> seconds per operation. target holds at loads
    below the core count; busy_target (default: target) when no CPU is
    idle."""
    def register(fn):
        reference = name.startswith(" ")
        idle = target if target is not None or reference else NO_WORSE
        busy = busy_target if busy_target is not None else idle
        SCENARIOS.append((name, unit, idle, busy, fn))
        return fn
    return register


class Hogs:
    """n CPU-bound busy loops for the life of a `with` block."""

    def __init__(self, n):
        self.n = n
        self.procs = []

    def __enter__(self):
        for _ in range(self.n):
            self.procs.append(subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"]))
        if self.n:
            time.sleep(0.05)  # running, not still exec'ing
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


# The single-process rows time the CPU the calling thread used: under load,
# wall time would add whatever share of the CPU the hogs happened to take
# (at random, and more than the 5-10 % these rows differ by).
@scenario("Lock acquire+release (with lock:)", "us", 0.5)
def lock_with(mp, n):
    lock = mp.Lock()
    t = time.thread_time()
    for _ in range(n):
        with lock:
            pass
    return (time.thread_time() - t) / n


# No target: two method calls cost ~23 ns in CPython itself, about half of
# the stdlib's whole figure, so this row shows the interpreter's floor.
@scenario("lock.acquire(); lock.release()", "us", None)
def lock_methods(mp, n):
    lock = mp.Lock()
    acquire, release = lock.acquire, lock.release
    t = time.thread_time()
    for _ in range(n):
        acquire()
        release()
    return (time.thread_time() - t) / n


@scenario("Value += 1 under get_lock()", "us", 0.25)
def value_increment(mp, n):
    v = mp.Value("i", 0)
    t = time.thread_time()
    for _ in range(n):
        with v.get_lock():
            v.value += 1
    elapsed = time.thread_time() - t
    assert v.value == n
    return elapsed / n


def _contend(lock, counter, n, start):
    start.wait()
    for _ in range(n):
        with lock:
            counter.value += 1


def _lock_contended(mp, n, hogs):
    n //= 4
    lock = mp.Lock()
    counter = mp.Value("q", 0, lock=False)
    start = mp.Event()
    procs = [mp.Process(target=_contend, args=(lock, counter, n, start)) for _ in range(2)]
    for p in procs:
        p.start()
    with Hogs(hogs):
        t = time.perf_counter()
        start.set()
        for p in procs:
            p.join(60)
        elapsed = time.perf_counter() - t
    assert counter.value == 2 * n, counter.value
    return elapsed / (2 * n)


@scenario("Lock contended, 2 processes", "us", None)
def lock_contended(mp, n):
    return _lock_contended(mp, n, 0)


# One hog of the row's own, on top of --load: a spinning waiter must not
# take the CPU the holder needs to get to its release.
@scenario("Lock contended, 2 processes + 1 hog", "us", None)
def lock_contended_hog(mp, n):
    return _lock_contended(mp, n // 4, 1)


def _nothing():
    pass


def _bare_fork(mp, n):
    """os.fork() + os._exit(0) + os.waitpid(): the floor under any
    Process.start()+join() on this interpreter (the same on both sides)."""
    n = max(20, n // 2000)
    t = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return (time.perf_counter() - t) / n


def _start_joins(ctx, n):
    t = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=_nothing)
        p.start()
        p.join()
    return (time.perf_counter() - t) / n


@scenario("Process start+join", "ms", 0.5)
def process_start_join(mp, n):
    return _start_joins(mp, max(20, n // 2000))


# Reference row: the same code on both sides, so its ratio is ~1; it shows
# how close start+join is to the cost of fork itself.
scenario("  (floor: bare os.fork+waitpid)", "ms", None)(_bare_fork)



def _method_start_join(method):
    def run(mp, n):
        ctx = mp.get_context(method)
        warm = ctx.Process(target=_nothing)
        warm.start()
        warm.join()
        return _start_joins(ctx, max(5, n // (200000 if method == "spawn" else 20000)))
    return run


scenario("Process start+join, spawn", "ms", None)(_method_start_join("spawn"))
scenario("Process start+join, forkserver", "ms", 0.5)(_method_start_join("forkserver"))


def _echo(ping, pong, n):
    for _ in range(n):
        ping.wait()
        ping.clear()
        pong.set()


@scenario("Event ping-pong round trip", "us", 0.3, 0.5)
def event_ping_pong(mp, n):
    n = max(200, n // 100)
    ping, pong = mp.Event(), mp.Event()
    child = mp.Process(target=_echo, args=(ping, pong, n))
    child.start()
    t = time.perf_counter()
    for _ in range(n):
        ping.set()
        pong.wait()
        pong.clear()
    elapsed = time.perf_counter() - t
    child.join(60)
    return elapsed / n


MESSAGE = ("task", 42, 3.5)


def _pipe_echo(c, n):
    for _ in range(n):
        c.send(c.recv())


def _round_trips(mp, n, echo, args, send, receive):
    """Starts echo(*args) in a child, then times n - 1 exchanges of send()
    and receive() with it; the first exchange, which waits for the child to
    start, is off the clock. Seconds per round trip."""
    child = mp.Process(target=echo, args=args)
    child.start()
    send()
    receive()
    t = time.perf_counter()
    for _ in range(n - 1):
        send()
        receive()
    elapsed = time.perf_counter() - t
    child.join(60)
    return elapsed / (n - 1)


@scenario("Pipe round trip, small objects", "us", 0.3, 0.5)
def pipe_round_trip(mp, n):
    n = max(500, n // 40)
    a, b = mp.Pipe()
    seconds = _round_trips(mp, n, _pipe_echo, (b, n), functools.partial(a.send, MESSAGE), a.recv)
    a.close()
    b.close()
    return seconds


def _queue_echo(requests, replies, n):
    for _ in range(n):
        replies.put(requests.get())


@scenario("Queue request/reply round trip", "us", 0.3, 0.5)
def queue_request_reply(mp, n):
    n = max(500, n // 40)
    requests, replies = mp.Queue(), mp.Queue()
    return _round_trips(mp, n, _queue_echo, (requests, replies, n),
                        functools.partial(requests.put, MESSAGE), replies.get)


def _condition_echo(cond, turn, n):
    with cond:
        for _ in range(n):
            while turn.value != 1:
                cond.wait()
            turn.value = 0
            cond.notify()


@scenario("Condition notify/wait ping-pong", "us", 0.3, 0.5)
def condition_ping_pong(mp, n):
    n = max(500, n // 100)
    cond = mp.Condition()
    turn = mp.Value("i", 0, lock=False)
    child = mp.Process(target=_condition_echo, args=(cond, turn, n))
    child.start()
    with cond:
        for i in range(n):
            if i == 1:  # the first exchange off the clock (child start-up)
                t = time.perf_counter()
            turn.value = 1
            cond.notify()
            while turn.value != 0:
                cond.wait()
        elapsed = time.perf_counter() - t
    child.join(60)
    return elapsed / (n - 1)


def _semaphore_echo(ping, pong, n):
    for _ in range(n):
        ping.acquire()
        pong.release()


@scenario("Semaphore ping-pong round trip", "us", 0.3, 0.5)
def semaphore_ping_pong(mp, n):
    n = max(500, n // 100)
    ping, pong = mp.Semaphore(0), mp.Semaphore(0)
    return _round_trips(mp, n, _semaphore_echo, (ping, pong, n), ping.release, pong.acquire)


def _bare_pipe_echo(r, w, n):
    for _ in range(n):
        os.read(r, 1)
        os.write(w, b"x")


def _bare_pipe_round_trips(mp, n):
    """A byte each way through two os.pipe()s, with os.read/os.write: each
    side sleeps in read() for every message, so at a load that leaves no
    CPU to spin on this is what a sleeping hand-off costs from Python."""
    n = max(500, n // 100)
    ping_r, ping_w = os.pipe()
    pong_r, pong_w = os.pipe()
    try:
        return _round_trips(mp, n, _bare_pipe_echo, (ping_r, pong_w, n),
                            functools.partial(os.write, ping_w, b"x"),
                            functools.partial(os.read, pong_r, 1))
    finally:
        for fd in (ping_r, ping_w, pong_r, pong_w):
            os.close(fd)


# Reference row: the same timed code on both sides.
scenario("  (floor: os.pipe ping-pong, both sleep)", "us", None)(_bare_pipe_round_trips)


# A poll of an empty queue or an unset event (timeout=0) returns at once.
def _per_poll(n, poll):
    k = max(200, n // 100)
    t = time.perf_counter()
    for _ in range(k):
        poll()
    return (time.perf_counter() - t) / k


def _get_or_empty(q):
    try:
        q.get(timeout=0)
    except queue.Empty:
        pass


@scenario("Queue.get(timeout=0), empty (per call)", "us", 1.0)
def queue_get_poll(mp, n):
    return _per_poll(n, functools.partial(_get_or_empty, mp.Queue()))


@scenario("Event.wait(0), not set (per call)", "us", 1.0)
def event_wait_poll(mp, n):
    return _per_poll(n, functools.partial(mp.Event().wait, 0))


def _drain(c, n):
    buf = bytearray(1 << 20)
    for _ in range(n):
        c.recv_bytes_into(buf)
    c.send_bytes(b"done")


def _pipe_stream(mp, n, size, drain):
    """Seconds per message of size bytes sent to a child reading with drain."""
    a, b = mp.Pipe()
    child = mp.Process(target=drain, args=(b, n))
    child.start()
    payload = bytes(size)
    t = time.perf_counter()
    for _ in range(n):
        a.send_bytes(payload)
    assert a.recv_bytes() == b"done"
    elapsed = time.perf_counter() - t
    child.join(60)
    a.close()
    b.close()
    return elapsed / n


# No target: reported as time per 1 MiB message (1 / throughput).
@scenario("Pipe send_bytes 1 MiB (per message)", "ms", None)
def pipe_send_bytes_1mib(mp, n):
    return _pipe_stream(mp, max(100, n // 1000), 1 << 20, _drain)


def _drain_bytes(c, n):
    for _ in range(n):
        c.recv_bytes()
    c.send_bytes(b"done")


# recv_bytes (a new bytes object per message): what the buffer growth that
# bounds a hostile header's cost must not slow down.
@scenario("Pipe send_bytes/recv_bytes 1 MiB", "ms", None)
def pipe_recv_bytes_1mib(mp, n):
    return _pipe_stream(mp, max(100, n // 1000), 1 << 20, _drain_bytes)


@scenario("Pipe send_bytes/recv_bytes 64 MiB", "ms", None)
def pipe_recv_bytes_64mib(mp, n):
    return _pipe_stream(mp, max(5, n // 20000), 64 << 20, _drain_bytes)


def _q_producer(q, start, n, item):
    start.wait()
    put = q.put
    for _ in range(n):
        put(item)


def _q_run(mp, nprod, n, item, get_many=False):
    """nprod producer processes put n items each; this process gets them
    all. Timed from the start signal to the last item got."""
    q = mp.Queue()
    start = mp.Event()
    procs = [mp.Process(target=_q_producer, args=(q, start, n, item)) for _ in range(nprod)]
    for p in procs:
        p.start()
    total = nprod * n
    t = time.perf_counter()
    start.set()
    if get_many:
        got = 0
        while got < total:
            got += len(q.get_many(1000))
    else:
        get = q.get
        for _ in range(total):
            get()
    elapsed = time.perf_counter() - t
    for p in procs:
        p.join(60)
    return elapsed / total


SMALL_ITEM = (12345, "small", 2.5)


@scenario("Queue 1->1 small objects", "us", 0.15)
def queue_small(mp, n):
    return _q_run(mp, 1, max(2000, n // 10), SMALL_ITEM)


# Both sides call get() per item (the stdlib has no batch get).
@scenario("Queue 4->1 small objects", "us", 0.15)
def queue_small_4(mp, n):
    return _q_run(mp, 4, max(500, n // 40), SMALL_ITEM)


# Reference row: the stdlib side calls get() per item (it has no batch
# get); ours calls get_many(1000), so this ratio is not like for like.
@scenario("  (ours with get_many; stdlib get)", "us", None)
def queue_small_4_many(mp, n):
    return _q_run(mp, 4, max(500, n // 40), SMALL_ITEM, get_many=hasattr(mp.Queue(), "get_many"))


@scenario("Queue 1 MiB bytes 1->1", "us", 0.1)
def queue_1mib(mp, n):
    return _q_run(mp, 1, max(50, n // 1000), b"x" * (1 << 20))


@scenario("Queue 64 MiB numpy array 1->1", "ms", None)
def queue_numpy_64mib(mp, n):
    import numpy
    return _q_run(mp, 1, 4, numpy.ones(8 << 20))


# ---- Pool ----------------------------------------------------------------
# Sizes as issue 9 names them (scaled down by --quick). Each row starts its
# pool off the clock (except the start row), with one worker per core.

def _pool_sq(x):
    return x * x


def _pool_sum(a):
    return float(a.sum())


def _pool_scale(n, size):
    return max(size // 10, size * n // 200000)


def _with_pool(mp, body):
    # close() and join(), not the context manager's terminate(): the stdlib's
    # terminate can kill a worker that holds its task queue's lock, and the
    # join then hangs on the other workers.
    pool = mp.Pool(os.cpu_count())
    try:
        pool.map(_pool_sq, range(os.cpu_count() * 2))  # workers up and warm
        return body(pool)
    finally:
        pool.close()
        pool.join()


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@scenario("Pool.map chunksize=1 (per item)", "us", 0.1)
def pool_map_chunk1(mp, n):
    items = range(_pool_scale(n, 20000))
    return _with_pool(mp, lambda p: _timed(lambda: p.map(_pool_sq, items, chunksize=1))) / len(items)


@scenario("Pool.map default chunks (per item)", "us", 0.5)
def pool_map_default(mp, n):
    items = range(_pool_scale(n, 300000))
    return _with_pool(mp, lambda p: _timed(lambda: p.map(_pool_sq, items))) / len(items)


@scenario("Pool.apply_async, then get all (per task)", "us", 0.1)
def pool_apply_async(mp, n):
    k = _pool_scale(n, 5000)

    def body(p):
        return _timed(lambda: [r.get(60) for r in [p.apply_async(_pool_sq, (i,)) for i in range(k)]])
    return _with_pool(mp, body) / k


@scenario("Pool.apply (per call)", "us", 0.05)
def pool_apply(mp, n):
    k = _pool_scale(n, 2000)

    def body(p):
        return _timed(lambda: [p.apply(_pool_sq, (i,)) for i in range(k)])
    return _with_pool(mp, body) / k


@scenario("Pool.imap streaming (per item)", "us", 0.2)
def pool_imap(mp, n):
    k = _pool_scale(n, 100000)

    def body(p):
        def consume():
            for _ in p.imap(_pool_sq, range(k)):
                pass
        return _timed(consume)
    return _with_pool(mp, body) / k


def _per_cycle(n, cycle):
    """Seconds per cycle() over many cycles (calibrate scales n): one cycle
    alone lasts a few ms, and a median of three of them was mostly noise."""
    cycles = max(1, n // 20000)

    def run():
        for _ in range(cycles):
            cycle()
    return _timed(run) / cycles


@scenario("Pool start + tiny map + close/join", "ms", 0.5)
def pool_start(mp, n):
    def cycle():
        pool = mp.Pool(os.cpu_count())
        pool.map(_pool_sq, [1, 2])
        pool.close()
        pool.join()
    return _per_cycle(n, cycle)


def _pool_forks(mp, n):
    """What any pool of forked workers pays before its own work: one bare
    os.fork() per worker, one after the other (a process forks one child
    at a time), the children leaving at once with _exit and waited for
    together, so that their exits overlap as a pool's workers' do. The
    forks copy the parent's page tables, so they grow with its memory:
    this process has run every row before."""
    reps = max(20, n // 2000)
    t = time.perf_counter()
    for _ in range(reps):
        pids = []
        for _ in range(os.cpu_count()):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
    return (time.perf_counter() - t) / reps


scenario("  (floor: a bare fork per worker)", "ms", None)(_pool_forks)


@scenario("Pool.map 64 numpy arrays of 8 MiB (per array)", "ms", 0.3)
def pool_numpy(mp, n):
    import numpy
    arrays = [numpy.full(1 << 20, float(i)) for i in range(64)]
    return _with_pool(mp, lambda p: _timed(lambda: p.map(_pool_sum, arrays))) / len(arrays)


# ---- Manager --------------------------------------------------------------
# Issue 10's rows. Each starts its manager off the clock (except the start
# row); times are wall clock: every operation is a round trip to the
# manager's process.

def _mgr_scale(n):
    return max(200, n // 100)


def _with_manager(mp, body):
    m = mp.Manager()
    try:
        return body(m)
    finally:
        m.shutdown()


@scenario("Manager dict set+get (per pair)", "us", 0.05, 0.15)
def manager_dict(mp, n):
    k = _mgr_scale(n)

    def body(m):
        d = m.dict()

        def run():
            for i in range(k):
                d["key"] = i
                d["key"]
        return _timed(run)
    return _with_manager(mp, body) / k


@scenario("Manager list.append", "us", 0.05)
def manager_list_append(mp, n):
    k = _mgr_scale(n)

    def body(m):
        lst = m.list()
        append = lst.append
        return _timed(lambda: [append(i) for i in range(k)])
    return _with_manager(mp, body) / k


@scenario("Manager Namespace attribute get", "us", 0.05)
def manager_namespace_get(mp, n):
    k = _mgr_scale(n)

    def body(m):
        ns = m.Namespace(x=1)

        def run():
            for _ in range(k):
                ns.x
        return _timed(run)
    return _with_manager(mp, body) / k


@scenario("Manager Lock acquire+release", "us", 0.1)
def manager_lock(mp, n):
    k = _mgr_scale(n)

    def body(m):
        lock = m.Lock()

        def run():
            for _ in range(k):
                lock.acquire()
                lock.release()
        return _timed(run)
    return _with_manager(mp, body) / k


@scenario("Manager() start + shutdown", "ms", 0.5)
def manager_start(mp, n):
    return _per_cycle(n, lambda: mp.Manager().shutdown())


# A manager's server is one fork of this process, which has grown by now
# (every earlier row ran in it): the same bare fork+exit+wait as the
# Process row's floor, measured here.
scenario("  (floor: one bare fork, here)", "ms", None)(_bare_fork)


def _mgr_updater(d, base, k):
    for i in range(k):
        d[base + i % 64] = i


@scenario("Manager dict, 4 processes updating (per update)", "us", 0.05)
def manager_dict_4(mp, n):
    k = _mgr_scale(n)

    def body(m):
        d = m.dict()
        procs = [mp.Process(target=_mgr_updater, args=(d, 100 * j, k)) for j in range(4)]

        def run():
            for p in procs:
                p.start()
            for p in procs:
                p.join()
        return _timed(run)
    return _with_manager(mp, body) / (4 * k)


SCALE = {"us": 1e6, "ms": 1e3}


IDLE_SECONDS = 1.0


def _idle_waiter(what, mp, report):
    """Blocks in one wait on an object nobody signals, for IDLE_SECONDS,
    in this process's main thread and in a second thread at once; reports
    the process's CPU seconds and voluntary context switches meanwhile."""
    import resource
    import threading
    q, e, s = mp.Queue(), mp.Event(), mp.Semaphore(0)
    a, b = mp.Pipe()
    waits = {"Queue.get": lambda: q.get(timeout=IDLE_SECONDS),
             "Event.wait": lambda: e.wait(IDLE_SECONDS),
             "Semaphore.acquire": lambda: s.acquire(timeout=IDLE_SECONDS),
             "Connection.poll": lambda: a.poll(IDLE_SECONDS)}
    wait = waits[what]

    def run():
        try:
            wait()
        except Exception:  # queue.Empty
            pass
    before = resource.getrusage(resource.RUSAGE_SELF)
    thread = threading.Thread(target=run)
    thread.start()
    run()
    thread.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    report.send((cpu, after.ru_nvcsw - before.ru_nvcsw))


def idle_waiters(impls):
    """What a waiter that waits long costs: two waiters (main thread and a
    second thread) blocked for IDLE_SECONDS, per implementation."""
    import multiprocessing
    fork = multiprocessing.get_context("fork")
    print(f"\nIdle waiters: two (main thread + one thread) blocked {IDLE_SECONDS:.0f} s, "
          "CPU used (% of one core) and wake-ups")
    for what in ("Queue.get", "Event.wait", "Semaphore.acquire", "Connection.poll"):
        cells = []
        for label, mp in impls:
            mine, theirs = fork.Pipe()
            p = fork.Process(target=_idle_waiter, args=(what, mp, theirs))
            p.start()
            cpu, wakeups = mine.recv()
            p.join(60)
            cells.append(f"{label} {cpu / (2 * IDLE_SECONDS) * 100:5.2f} % {wakeups:4d}")
        print(f"  {what:<20} " + "   ".join(cells))


def calibrate(fn, mp, n, min_seconds):
    """The n for which one call of fn lasts at least min_seconds. Under
    load a short run can fit in a single lucky time slice (both parties on
    a CPU, the hogs waiting), which says nothing about the typical case; a
    run spanning many slices averages over the scheduler's choices."""
    for _ in range(8):
        t = time.perf_counter()
        fn(mp, n)
        elapsed = time.perf_counter() - t
        if elapsed >= min_seconds:
            break
        n = int(n * min(16.0, 1.5 * min_seconds / max(elapsed, 1e-6)))
    return n


def parse_loads(text):
    loads = [int(x) for x in text.split(",")]
    if any(x < 0 for x in loads):
        raise argparse.ArgumentTypeError("a load is a number of hogs, 0 or more")
    return loads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--only", help="run scenarios whose name contains this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=parse_loads, default=[0], metavar="N[,N...]",
                        help="CPU hogs running during each measurement (a list: one "
                             "column group per load)")
    args = parser.parse_args()
    n = 20000 if args.quick else 200000
    min_seconds = 0.05 if args.quick else 0.25
    cores = os.cpu_count()

    # A spawned child imports our package afresh: byte-compile it first, as
    # the stdlib's is (Debian ships its .pyc), or each child would compile
    # it again wherever PYTHONDONTWRITEBYTECODE is set.
    import compileall
    compileall.compile_dir(os.path.join(HERE, "..", "python", "cmultiprocessing"), quiet=1)

    impls = [("stdlib", importlib.import_module("multiprocessing").get_context("fork")),
             ("cmp", importlib.import_module("cmultiprocessing").get_context("fork"))]

    # The hogs are killed however this run ends (Ctrl-C included).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    group = f"{'stdlib':>10} {'ours':>10} {'ratio':>6}"
    print(f"{'':<38} " + " | ".join(f"{'load ' + str(x):^{len(group)}}" for x in args.load)
          + " |  target")
    header = f"{'scenario':<38} " + " | ".join(group for _ in args.load) + " | idle/busy"
    print(header)
    print("-" * len(header))
    missed = 0
    for name, unit, idle_target, busy_target, fn in SCENARIOS:
        if args.only and args.only.lower() not in name.lower():
            continue
        cells = []
        for load in args.load:
            rounds = {label: [] for label, _ in impls}
            with Hogs(load):
                sizes = {label: calibrate(fn, mp, n, min_seconds) for label, mp in impls}
                for _ in range(args.repeats):
                    for label, mp in impls:
                        rounds[label].append(fn(mp, sizes[label]))
            best = {label: statistics.median(r) for label, r in rounds.items()}
            ratio = best["cmp"] / best["stdlib"]
            target = busy_target if load >= cores else idle_target
            ok = target is None or ratio <= target
            missed += not ok
            scale = SCALE[unit]
            cells.append(f"{best['stdlib'] * scale:>7.2f} {unit} {best['cmp'] * scale:>7.2f} {unit} "
                         f"{ratio:>6.3f}{' ' if ok else '!'}")
        if idle_target is None:
            goal = "-"
        elif idle_target == busy_target:
            goal = f"<= {idle_target}"
        else:
            goal = f"<= {idle_target}/{busy_target}"
        print(f"{name:<38} " + "| ".join(cells) + f"| {goal}")
        sys.stdout.flush()
    if not args.only:
        idle_waiters(impls)
    print(f"\n(ratio = cmultiprocessing / stdlib, median of {args.repeats}; {cores} cores; "
          f"fork start method unless the row names another; load = CPU hogs running; "
          f"! = target missed ({missed}); busy target where load >= cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
