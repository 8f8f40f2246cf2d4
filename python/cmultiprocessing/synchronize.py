"""multiprocessing.synchronize: the synchronization primitives (re-exports)."""
from ._cmp import (Barrier, BoundedSemaphore, Condition, Event, Lock,  # noqa: F401
                   RLock, Semaphore)

__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition",
           "Event", "Barrier"]
