"""multiprocessing.pool: Pool and its results (re-exports).

Pool, ApplyResult (AsyncResult), MapResult, WorkerLostError and
InitializerError are implemented in the C extension. ThreadPool and the
exception classes that carry a task's error across processes
(MaybeEncodingError, RemoteTraceback) are the standard library's own, so
that except clauses and isinstance checks written against either module
work with both.
"""
import multiprocessing.context as _std_context
import multiprocessing.pool as _std_pool
import multiprocessing.queues as _std_queues
from multiprocessing.pool import (  # noqa: F401
    ExceptionWithTraceback, MaybeEncodingError, RemoteTraceback)
# The pool states (Pool._state is one of them), and the function the
# stdlib's ExceptionWithTraceback pickles itself as: a worker's exception is
# rebuilt by looking up multiprocessing.pool.rebuild_exc, which is this
# module under `python3 -m cmultiprocessing`.
from multiprocessing.pool import CLOSE, INIT, RUN, TERMINATE, rebuild_exc  # noqa: F401

from ._cmp import (  # noqa: F401
    ApplyResult, AsyncResult, IMapIterator, IMapUnorderedIterator, InitializerError,
    MapResult, TimeoutError, WorkerLostError)
from ._cmp import _Pool as Pool

__all__ = ["Pool", "ThreadPool"]


class _ThreadPoolContext(_std_context.ForkContext):
    """The context the stdlib's ThreadPool runs with. Its result handler
    waits on the pipe of the stdlib's own SimpleQueue; under `python3 -m
    cmultiprocessing` the stdlib context's lazy imports would hand it ours,
    which has no pipe."""

    def SimpleQueue(self):
        return _std_queues.SimpleQueue(ctx=self)


class ThreadPool(_std_pool.ThreadPool, Pool):
    """multiprocessing.pool.ThreadPool: the stdlib's, with its own queues.
    Like the stdlib's, an instance of Pool (whose methods it does not use:
    the stdlib's come first)."""

    # the stdlib's __init__ sets these on the instance; Pool's read-only
    # attributes of the same names must not shadow them
    _processes = None
    _pool = None
    _state = None

    def __init__(self, processes=None, initializer=None, initargs=()):
        _std_pool.Pool.__init__(self, processes, initializer, initargs,
                                context=_ThreadPoolContext())


class _ContextProcessPool(_std_pool.Pool, Pool):
    """Pool(context=ctx) for a context whose Process is neither ours nor
    the stdlib's (a library's own context, a test's stand-in): the stdlib's
    Pool, which starts every worker with ctx.Process and talks to it
    through ctx's queues, so that whatever that Process does is honoured.
    An instance of Pool, as ThreadPool is; the contexts ours or the
    stdlib's name keep our pool (_foreign_pool_class says which)."""

    _processes = None
    _pool = None
    _state = None


def _foreign_pool_class(context):
    """The class Pool(context=context) makes, or None for ours (called by
    Pool() only for a context that is not one of ours)."""
    process = getattr(context, "Process", None)
    if not isinstance(process, type) or process in _STDLIB_PROCESSES:
        # ours starts its workers as that method does (a stand-in context
        # without a Process class forks, as the default does)
        return None
    return _ContextProcessPool


def _stdlib_processes():
    import multiprocessing.process as _std_process
    return (_std_process.BaseProcess, _std_context.Process, _std_context.ForkProcess,
            _std_context.SpawnProcess, _std_context.ForkServerProcess)


_STDLIB_PROCESSES = _stdlib_processes()
