"""multiprocessing.queues: Queue, SimpleQueue and JoinableQueue (re-exports)."""
from ._cmp import JoinableQueue, Queue, SimpleQueue  # noqa: F401

__all__ = ["Queue", "SimpleQueue", "JoinableQueue"]
