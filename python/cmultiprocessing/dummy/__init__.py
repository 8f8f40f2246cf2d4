"""multiprocessing.dummy: the thread-backed twin of the package. The
standard library's own (threads need none of the C machinery): every name
it defines, not only its __all__, since programs and the stdlib's own tests
use dummy.Value, dummy.Array, dummy.Namespace and dummy.connection too."""
from multiprocessing.dummy import (  # noqa: F401
    Array, Barrier, BoundedSemaphore, Condition, DummyProcess, Event, JoinableQueue,
    Lock, Manager, Namespace, Pipe, Pool, Process, Queue, RLock, Semaphore, Value,
    __all__, active_children, current_process, dict, freeze_support, list, shutdown)

from . import connection  # noqa: F401
