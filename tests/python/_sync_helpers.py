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


class _CloneArgs(ctypes.Structure):
    # struct clone_args of linux/sched.h, up to set_tid_size (Linux 5.5)
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
        "stack_size", "tls", "set_tid", "set_tid_size")]


_SYS_clone3 = 435


class PidSquatter:
    """A process given exactly `pid` (clone3 with set_tid), which must be
    free: a dead lock holder's, once reaped. It sleeps until stop() (at most
    60 s). Skips the test where the kernel refuses (set_tid needs root:
    CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE). Waits 20 ms first, more than a
    clock tick, so that its start time differs from the dead holder's."""

    def __init__(self, pid):
        time.sleep(0.02)
        want = ctypes.c_int(pid)
        args = _CloneArgs(exit_signal=signal.SIGCHLD, set_tid=ctypes.addressof(want),
                          set_tid_size=1)
        # PyDLL keeps the GIL across the call: the child has only this
        # thread, and must not wait for a GIL another thread held.
        libc = ctypes.PyDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        r = libc.syscall(ctypes.c_long(_SYS_clone3), ctypes.byref(args),
                         ctypes.c_size_t(ctypes.sizeof(args)))
        if r == 0:
            # a raw clone ran no fork hooks: leave Python at once
            try:
                os.execv("/bin/sleep", ["sleep", "60"])
            finally:
                os._exit(1)
        if r < 0:
            pytest.skip("clone3 with set_tid refused (%s): cannot reuse a pid"
                        % os.strerror(ctypes.get_errno()))
        assert r == pid
        self.pid = r

    def stop(self):
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _run_if_pid(pid, fn, args):
    if os.getpid() != pid:
        return 0  # another pid: the parent tries again
    return fn(*args)


def fork_as(pid, fn, *args):
    """fork(fn, *args), but the child gets exactly `pid` (free: a reaped
    holder's), and so can use the locks itself (a raw clone3 runs no fork
    hooks; this is an ordinary fork). Sets ns_last_pid (root), retried when
    another process takes the pid first; skips the test where that is
    refused. Waits 20 ms first, as PidSquatter."""
    time.sleep(0.02)
    for _ in range(20):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
        except OSError as e:
            pytest.skip(f"ns_last_pid refused ({e.strerror}): cannot reuse a pid")
        child = fork(_run_if_pid, pid, fn, args)
        if child == pid:
            return child
        join(child)
    pytest.skip(f"other processes kept taking pid {pid}")


def acquire_abandoned(lock, expect_repr):
    """In a child: acquire(timeout=1) of a lock whose holder died must
    return True with AbandonedLockWarning (a RuntimeWarning) and leave the
    repr expect_repr. An exit status: 0 if so."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = lock.acquire(timeout=1)
    ok = got is True and repr(lock) == expect_repr and any(
        issubclass(w.category, RuntimeWarning) for w in caught)
    lock.release()
    return 0 if ok else 1
