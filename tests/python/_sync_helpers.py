"""Helpers for the synchronization tests (lock, rlock, semaphore, event,
condition, barrier): forked children that report through their exit
status, a shared int64 counter, polling waits, the SIGINT harness.
Every wait has a timeout."""
import ctypes
import mmap
import os
import signal
import time

import pytest


def fork(fn, *args):
    """Runs fn(*args) in a forked child; its return value (int, default 0)
    is the exit status, an exception exits 99."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            # what Process's bootstrap does: lets the stdlib's locks forget
            # the parent's ownership (cmultiprocessing needs no hook)
            from multiprocessing import util
            util._run_after_forkers()
            r = fn(*args)
            code = 0 if r is None else int(r)
        except BaseException:  # noqa: B902 (reported through the status)
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def join(pid, timeout=30.0):
    """Waits for pid; returns its exit code as Process.exitcode would
    (negative for a signal). Kills it and fails after timeout."""
    end = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not finish in {timeout} s")
        time.sleep(0.002)


class SharedInts:
    """n int64 counters in an anonymous shared mapping (inherited by fork)."""

    def __init__(self, n=1):
        self._map = mmap.mmap(-1, 8 * n)
        self._arr = (ctypes.c_int64 * n).from_buffer(self._map)

    def __getitem__(self, i):
        return self._arr[i]

    def __setitem__(self, i, v):
        self._arr[i] = v


def wait_until(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


def wait_readable(fd, timeout=10.0):
    import select
    r, _, _ = select.select([fd], [], [], timeout)
    assert r, "child did not report in time"
    return os.read(fd, 64)


def join_ok(p, timeout=10):
    """Joins Process p; returns its exit code. Kills it and fails the test
    if it did not finish in time."""
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join(5)
        pytest.fail("child did not finish in time")
    return p.exitcode


def interrupt_status(blocking_call):
    """In a child: runs blocking_call(); 7 if KeyboardInterrupt ended it,
    1 if it returned (an exit status for the parent to check)."""
    try:
        blocking_call()
    except KeyboardInterrupt:
        return 7
    return 1


def sigint_and_join(child, timeout=5):
    """Sends SIGINT to child (a started Process, or a pid from fork()) and
    waits for it. Returns (exit code, seconds from the signal to the exit)."""
    pid = child if isinstance(child, int) else child.pid
    t0 = time.monotonic()
    os.kill(pid, signal.SIGINT)
    if isinstance(child, int):
        code = join(child, timeout)
    else:
        child.join(timeout)
        code = child.exitcode
    return code, time.monotonic() - t0
