"""multiprocessing.util: logging, finalizers, fork hooks and helpers.

The registries are the standard library's own (this module re-exports its
pure-Python pieces, none of which is on a per-task or per-message path), so
that a library registering through either module is served by both:

- register_after_fork(obj, func): func(obj) runs in every child that
  cmultiprocessing forks (Process.start() and pool workers; the C
  bootstrap calls _run_after_forkers), as in the stdlib's children.
- Finalize(obj, callback, exitpriority=...): runs at garbage collection,
  or at exit for those with an exitpriority, in the main process (the
  stdlib's atexit hook) and at the end of each Process child (ours).

get_logger() and log_to_stderr() are the C extension's and configure the
one 'multiprocessing' logger; debug(), info(), sub_debug() and
sub_warning() log through it once either was called, as the stdlib's do.
"""
import multiprocessing.util as _std

from multiprocessing.util import (  # noqa: F401
    DEBUG, DEFAULT_LOGGING_FORMAT, INFO, LOGGER_NAME, NOTSET, SUBDEBUG, SUBWARNING,
    Finalize, ForkAwareLocal, ForkAwareThreadLock, close_all_fds_except, close_fds,
    debug, get_temp_dir, info, register_after_fork, spawnv_passfds, sub_debug,
    sub_warning, _run_after_forkers, _run_finalizers)

from . import _cmp

__all__ = [
    "sub_debug", "debug", "info", "sub_warning", "get_logger",
    "log_to_stderr", "get_temp_dir", "register_after_fork",
    "is_exiting", "Finalize", "ForkAwareThreadLock", "ForkAwareLocal",
    "close_all_fds_except", "SUBDEBUG", "SUBWARNING",
]


# The rest of the stdlib's module (MAXFD, _args_from_interpreter_flags,
# abstract_sockets_supported, the registries...), as it is.
globals().update({k: v for k, v in vars(_std).items()
                  if not k.startswith("__") and k not in globals()
                  and k not in ("get_logger", "log_to_stderr", "is_exiting", "_exit_function",
                                "_logger", "_log_to_stderr", "_exiting")})


def get_logger():
    """The 'multiprocessing' logger (created and set up on first use)."""
    logger = _cmp.get_logger()
    # the stdlib's helpers (debug(), Finalize's messages...) log once its
    # own module global is set
    _std._logger = logger
    return logger


def log_to_stderr(level=None):
    """Logs the package's messages to stderr, as the stdlib's."""
    logger = _cmp.log_to_stderr(level)
    _std._logger = logger
    _std._log_to_stderr = True
    return logger


def is_exiting():
    """True once the process has begun to exit (or is finalizing)."""
    return _std.is_exiting()


def _exit_function():
    """What runs at exit: finalizers with priority >= 0, daemonic children
    terminated and the others joined (ours, then the stdlib's), and the
    remaining finalizers."""
    _std._run_finalizers(0)
    _cmp._exit_function()
    _std._exit_function()
