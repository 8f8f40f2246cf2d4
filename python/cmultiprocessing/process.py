"""multiprocessing.process: Process and process introspection (re-exports).

BaseProcess is our Process (the C type), with the stdlib's _bootstrap
hook: a subclass's _bootstrap, or one patched onto BaseProcess (coverage's
multiprocessing support does this to measure children), runs in the child
instead of ours and calls ours through super() or the original.
"""
import os as _os

from ._cmp import (Process as BaseProcess, Process,  # noqa: F401
                   _AuthenticationString as AuthenticationString,
                   active_children, current_process, parent_process)

__all__ = ["BaseProcess", "Process", "current_process", "active_children",
           "parent_process"]

try:
    ORIGINAL_DIR = _os.path.abspath(_os.getcwd())
except OSError:
    ORIGINAL_DIR = None
