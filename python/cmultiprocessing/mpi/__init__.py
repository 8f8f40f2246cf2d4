"""cmultiprocessing.mpi: the Pool over Open MPI ranks.

    mpiexec -n H python3 -m cmultiprocessing.mpi script.py args...

runs script.py on rank 0 (as __main__); every other rank imports it as
__mp_main__ (as multiprocessing's spawn does, so the script's functions
unpickle there) and serves: it runs a local cmultiprocessing pool, one
worker per CPU it was given, and tasks reach it by MPI once per rank, then
a worker through shared memory. In the script, ``Pool`` has the whole API
of ``cmultiprocessing.Pool`` (it is that Pool, on a pool spread over the
ranks) and ``Executor`` is a ``concurrent.futures.Executor``. Outside such a
job (plain ``python3 script.py``), both run on a local cmultiprocessing
Pool, so the same script runs on a laptop and on a cluster.

An exception raised in a task is re-raised as by the local Pool (the
remote traceback as __cause__); a note on it names the host and rank
(``(raised on host H, MPI rank R)``). A worker killed on a rank fails its
task with WorkerLostError, whose message ends ``on host H (MPI rank R)``,
and that rank's pool replaces the worker.

The Python glue here only chooses the pool and runs the script; the tasks,
results and scheduling are C (_cmp's Pool over libcmp_mpi).
"""
import concurrent.futures as _futures
import functools as _functools
import pickle as _pickle

from .. import _cmp
from .._cmp import WorkerLostError  # noqa: F401

try:
    from . import _mpi
except ImportError:  # built without Open MPI: local pools only
    _mpi = None

__all__ = ["Pool", "Executor", "WorkerLostError", "rank", "size", "active"]


def active():
    """True in rank 0 of a job of two or more ranks started by
    ``python3 -m cmultiprocessing.mpi``: pools are then spread over them."""
    return _mpi is not None and _mpi.rank() == 0 and _mpi.size() > 1


def rank():
    """This process's MPI rank (0 outside a job)."""
    return max(_mpi.rank(), 0) if _mpi is not None else 0


def size():
    """The job's number of ranks (1 outside a job)."""
    return max(_mpi.size(), 1) if _mpi is not None else 1


def _dumps(obj):
    try:
        return _pickle.dumps(obj, protocol=5)
    except Exception:
        try:
            import cloudpickle
        except ImportError:
            raise
        return cloudpickle.dumps(obj, protocol=5)


class Pool(_cmp._Pool):
    """Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None)

    cmultiprocessing's Pool on the workers of every serving rank (see the
    module's doc). processes counts workers across all ranks (spread evenly,
    at least one a rank); None: each rank runs one worker per CPU it was
    given. Outside an MPI job: a local Pool."""

    def __init__(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None):
        if active():
            config = _dumps((initializer, tuple(initargs), maxtasksperchild))
            super().__init__(processes, initializer, initargs, maxtasksperchild,
                             _backend=_mpi.backend(config))
        else:
            super().__init__(processes, initializer, initargs, maxtasksperchild)


def _star(fn, args):
    return fn(*args)


class Executor(_futures.Executor):
    """A concurrent.futures Executor on an MPI Pool (local outside a job):
    submit, map (chunksize= as ProcessPoolExecutor's), shutdown."""

    def __init__(self, max_workers=None, initializer=None, initargs=()):
        self._pool = Pool(max_workers, initializer, initargs)
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs):
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        f = _futures.Future()
        f.set_running_or_notify_cancel()  # it is queued at once: no cancel
        self._pool.apply_async(fn, args, kwargs, callback=f.set_result,
                               error_callback=f.set_exception)
        return f

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        it = self._pool.imap(_functools.partial(_star, fn), zip(*iterables), chunksize)
        return self._results(it, timeout)

    @staticmethod
    def _results(it, timeout):
        import time
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                yield it.next(None if end is None else max(0.0, end - time.monotonic()))
            except StopIteration:
                return
            except _cmp.TimeoutError:
                raise _futures.TimeoutError() from None

    def shutdown(self, wait=True, *, cancel_futures=False):
        if self._shutdown:
            return
        self._shutdown = True
        if cancel_futures:
            self._pool.terminate()
        else:
            self._pool.close()
        if wait:
            self._pool.join()
