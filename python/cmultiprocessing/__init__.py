"""cmultiprocessing: Python's multiprocessing, implemented in C.

    import cmultiprocessing as multiprocessing

Every name is implemented in the C extension ``_cmp`` (on top of libcmp);
this file only re-exports them: the public names of the standard library's
multiprocessing that are implemented so far, plus AbandonedLockWarning.
Names that the standard library keeps in submodules (sharedctypes.copy,
connection.Listener, ...) are re-exported by the submodules of the same
name, not here, so that ``from cmultiprocessing import *`` binds exactly
what ``from multiprocessing import *`` binds.
"""
from . import _cmp
from ._cmp import (  # noqa: F401
    AbandonedLockWarning, Array, AuthenticationError, Barrier, BoundedSemaphore,
    BufferTooShort, Condition, Event, JoinableQueue, Lock, Manager, Pipe, Pool, Process, ProcessError,
    Queue, RLock, RawArray, RawValue, Semaphore, SimpleQueue, TimeoutError, Value,
    active_children, allow_connection_pickling, cpu_count, current_process, freeze_support, get_all_start_methods,
    get_context, get_logger, get_start_method, log_to_stderr, parent_process,
    set_executable, set_forkserver_preload, set_start_method)
from ._cmp import InitializerError, WorkerLostError  # noqa: F401  (beyond the stdlib)

import sys as _sys

__version__ = "0.1.0"
__all__ = [
    "AbandonedLockWarning", "Array", "AuthenticationError", "Barrier", "BoundedSemaphore",
    "BufferTooShort", "Condition", "Event", "JoinableQueue", "Lock", "Manager", "Pipe", "Pool", "Process",
    "ProcessError", "Queue", "RLock", "RawArray", "RawValue", "Semaphore", "SimpleQueue",
    "TimeoutError", "Value", "active_children", "allow_connection_pickling", "cpu_count", "current_process",
    "freeze_support", "get_all_start_methods", "get_context", "get_logger",
    "get_start_method", "log_to_stderr", "parent_process", "set_executable",
    "set_forkserver_preload", "set_start_method",
]


# Submodules as attributes, imported on first use as the stdlib's package
# has them (concurrent.futures reads multiprocessing.util.debug).
_SUBMODULES = frozenset(("connection", "context", "dummy", "heap", "managers", "pool", "process",
                         "queues", "reduction", "resource_tracker", "shared_memory",
                         "sharedctypes", "synchronize", "util"))


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib
        return importlib.import_module(__name__ + "." + name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _share_reducers():
    """ForkingPickler.register() (ours is the stdlib's class) reaches our
    transports: the C pickler consults the same registry; and
    ForkingPickler.dumps() knows our Connection."""
    from multiprocessing.reduction import ForkingPickler
    _cmp._set_extra_reducers(ForkingPickler._extra_reducers)
    ForkingPickler.register(_cmp._Connection, _cmp._reduce_connection)


def _adopt_coverage():
    """`coverage run` with concurrency=multiprocessing patched the stdlib's
    BaseProcess._bootstrap before this package was imported (a script that
    imports cmultiprocessing, or `coverage run -m cmultiprocessing`): give
    ours the same treatment, so that our children are measured too. Under
    `python3 -m cmultiprocessing -m coverage run`, coverage patches ours
    itself."""
    std = _sys.modules.get("multiprocessing")
    cm = _sys.modules.get("coverage.multiproc")
    if cm is None or std is None or not getattr(std, getattr(cm, "PATCHED_MARKER", "?"), False):
        return
    own = Process._bootstrap

    def _bootstrap(self, *args, **kwargs):
        from coverage import Coverage
        cov = Coverage(data_suffix=True, auto_data=True)
        cov._warn_preimported_source = False
        cov.start()
        try:
            return own(self, *args, **kwargs)
        finally:
            cov.stop()
            cov.save()

    Process._bootstrap = _bootstrap


_share_reducers()
_adopt_coverage()
