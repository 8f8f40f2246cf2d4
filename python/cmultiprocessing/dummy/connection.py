"""multiprocessing.dummy.connection: Pipe, Listener and Client over queues
between threads (the standard library's own, re-exported)."""
from multiprocessing.dummy.connection import (  # noqa: F401
    Client, Connection, Listener, Pipe, __all__, families)
