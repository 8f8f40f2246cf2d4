"""multiprocessing.dummy: the thread-backed twin of the package. The
standard library's own (threads need none of the C machinery)."""
from multiprocessing.dummy import *  # noqa: F401,F403
from multiprocessing.dummy import __all__  # noqa: F401
