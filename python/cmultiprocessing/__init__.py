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
