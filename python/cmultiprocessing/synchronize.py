"""multiprocessing.synchronize: the synchronization primitives (re-exports)."""
from ._cmp import (Barrier, BoundedSemaphore, Condition, Event, Lock,  # noqa: F401
                   RLock, Semaphore)

__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition",
           "Event", "Barrier"]


class SemLock:
    """The stdlib's base class of its locks and semaphores (a Python class
    over _multiprocessing.SemLock). Ours are C types on futexes, not named
    semaphores, and do not derive from it; the class exists so that code
    that adjusts it (loky sets SemLock._make_name) imports."""

    @staticmethod
    def _make_name():
        import os
        import tempfile
        return "%s-%s" % (getattr(os, "getpid")(), next(tempfile._get_candidate_names()))
