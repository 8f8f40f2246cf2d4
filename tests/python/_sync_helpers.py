"""Helpers for the lock, rlock and condition tests: forked children that
report through their exit status, a shared int64 counter, polling waits.
Every wait has a timeout."""
import ctypes
import mmap
import os
import signal
import time


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
