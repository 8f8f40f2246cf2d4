"""Ping-pongs through every primitive with a CPU hog on every core: each
must finish (no livelock, no lost wake-up) within a generous bound. How
fast they finish is the benchmarks' business (bench/bench.py --load), not
the tests'. Every wait has a timeout, so a hang fails instead of stalling."""
import os
import subprocess
import time

import pytest

ROUNDS = 2000
BOUND = 60  # seconds for the whole exchange: minutes of slack, not a timing test


@pytest.fixture
def hogs():
    """A busy loop per core, for the whole test."""
    procs = [subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"])
             for _ in range(os.cpu_count() or 1)]
    time.sleep(0.05)
    yield procs
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _run(mp, target, args, parent_side):
    child = mp.Process(target=target, args=args)
    child.start()
    try:
        deadline = time.monotonic() + BOUND
        parent_side(deadline)
        child.join(max(1.0, deadline - time.monotonic()))
        assert child.exitcode == 0, child.exitcode
    finally:
        if child.is_alive():
            child.kill()
            child.join(5)


def _left(deadline):
    left = deadline - time.monotonic()
    assert left > 0, "the exchange did not finish in time"
    return left


def _event_echo(ping, pong, rounds):
    for _ in range(rounds):
        if not ping.wait(BOUND):
            os._exit(2)
        ping.clear()
        pong.set()


def test_event_ping_pong(mp, hogs):
    ping, pong = mp.Event(), mp.Event()

    def parent(deadline):
        for _ in range(ROUNDS):
            ping.set()
            assert pong.wait(_left(deadline))
            pong.clear()

    _run(mp, _event_echo, (ping, pong, ROUNDS), parent)


def _semaphore_echo(ping, pong, rounds):
    for _ in range(rounds):
        if not ping.acquire(timeout=BOUND):
            os._exit(2)
        pong.release()


def test_semaphore_ping_pong(mp, hogs):
    ping, pong = mp.Semaphore(0), mp.Semaphore(0)

    def parent(deadline):
        for _ in range(ROUNDS):
            ping.release()
            assert pong.acquire(timeout=_left(deadline))

    _run(mp, _semaphore_echo, (ping, pong, ROUNDS), parent)


def _condition_echo(cond, turn, rounds):
    with cond:
        for _ in range(rounds):
            if not cond.wait_for(lambda: turn.value == 1, BOUND):
                os._exit(2)
            turn.value = 0
            cond.notify()


def test_condition_ping_pong(mp, hogs):
    cond = mp.Condition()
    turn = mp.Value("i", 0, lock=False)

    def parent(deadline):
        with cond:
            for _ in range(ROUNDS):
                turn.value = 1
                cond.notify()
                assert cond.wait_for(lambda: turn.value == 0, _left(deadline))

    _run(mp, _condition_echo, (cond, turn, ROUNDS), parent)


def _lock_contend(lock, counter, rounds):
    for _ in range(rounds):
        if not lock.acquire(timeout=BOUND):
            os._exit(2)
        counter.value += 1
        lock.release()


def test_lock_contended(mp, hogs):
    lock = mp.Lock()
    counter = mp.Value("q", 0, lock=False)
    rounds = ROUNDS * 10

    def parent(deadline):
        for _ in range(rounds):
            assert lock.acquire(timeout=_left(deadline))
            counter.value += 1
            lock.release()

    _run(mp, _lock_contend, (lock, counter, rounds), parent)
    assert counter.value == 2 * rounds


def _queue_echo(requests, replies, rounds):
    for _ in range(rounds):
        replies.put(requests.get(timeout=BOUND))


def test_queue_request_reply(mp, hogs):
    requests, replies = mp.Queue(), mp.Queue()

    def parent(deadline):
        for i in range(ROUNDS):
            requests.put(("task", i))
            assert replies.get(timeout=_left(deadline)) == ("task", i)

    _run(mp, _queue_echo, (requests, replies, ROUNDS), parent)


def _queue_drain(q, done, n):
    for i in range(n):
        assert q.get(timeout=BOUND) == i
    done.set()


def test_queue_stream_bounded(mp, hogs):
    # maxsize makes the producer wait for space as well as the consumer for data
    q = mp.Queue(maxsize=4)
    done = mp.Event()
    n = ROUNDS * 5

    def parent(deadline):
        for i in range(n):
            q.put(i, timeout=_left(deadline))
        assert done.wait(_left(deadline))

    _run(mp, _queue_drain, (q, done, n), parent)


def _large_drain(q, n, size):
    for _ in range(n):
        assert len(q.get(timeout=BOUND)) == size


def test_queue_large_messages(mp, hogs):
    # streamed through the ring or spilled: both under load
    q = mp.Queue()
    n, size = 40, 1 << 20
    payload = b"x" * size

    def parent(deadline):
        for _ in range(n):
            q.put(payload)
            _left(deadline)

    _run(mp, _large_drain, (q, n, size), parent)


def _pipe_echo(conn, rounds):
    for _ in range(rounds):
        if not conn.poll(BOUND):
            os._exit(2)
        conn.send(conn.recv())


def test_pipe_round_trip(mp, hogs):
    a, b = mp.Pipe()

    def parent(deadline):
        for i in range(ROUNDS):
            a.send(i)
            assert a.poll(_left(deadline))
            assert a.recv() == i

    _run(mp, _pipe_echo, (b, ROUNDS), parent)


def _barrier_rounds(barrier, rounds):
    for _ in range(rounds):
        barrier.wait(BOUND)


def test_barrier_rounds(mp, hogs):
    barrier = mp.Barrier(2)
    rounds = ROUNDS // 4

    def parent(deadline):
        for _ in range(rounds):
            barrier.wait(_left(deadline))

    _run(mp, _barrier_rounds, (barrier, rounds), parent)


def test_spinning_can_be_switched_off(cmp, hogs):
    """CMP_SPIN=0: every wait sleeps at once; a ping-pong still works."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import cmultiprocessing as mp\n"
        "def echo(a, b):\n"
        "    for _ in range(500):\n"
        "        a.acquire(); b.release()\n"
        "if __name__ == '__main__':\n"
        "    a, b = mp.Semaphore(0), mp.Semaphore(0)\n"
        "    p = mp.Process(target=echo, args=(a, b)); p.start()\n"
        "    for _ in range(500):\n"
        "        a.release(); assert b.acquire(timeout=60)\n"
        "    p.join(60); assert p.exitcode == 0\n"
        "    print('ok')\n" % os.path.dirname(os.path.dirname(cmp.__file__)))
    env = dict(os.environ, CMP_SPIN="0")
    out = subprocess.run([os.sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _pid_and_square(x):
    return os.getpid(), x * x


def test_pool_recycles_workers_under_load(mp, hogs):
    """maxtasksperchild with a hog on every core: every result arrives, no
    worker runs more tasks than allowed, and the replacements keep coming."""
    with mp.Pool(2, maxtasksperchild=3) as p:
        got = p.map_async(_pid_and_square, range(120), chunksize=1).get(BOUND)
        streamed = list(p.imap(_pid_and_square, range(60)))
    assert [sq for _, sq in got] == [x * x for x in range(120)]
    assert [sq for _, sq in streamed] == [x * x for x in range(60)]
    pids = [pid for pid, _ in got + streamed]
    assert max(pids.count(pid) for pid in set(pids)) <= 3
    assert len(set(pids)) >= 60
