"""multiprocessing.resource_tracker, on libcmp's tracker (src/tracker.c).

The names and calls of the standard library's module (``register``,
``unregister``, ``ensure_running``, ``getfd``) with its purpose: the named
resources a program registers ("shared_memory", "semaphore") are removed
once the whole program is dead. How it differs, beyond the standard
library:

- The registry is not held in a tracker process's memory but in
  ``/dev/shm/.cmp-tracker-<uid>/`` (one directory per program, written
  before ``register`` returns), and the program's liveness is an ``flock``
  that every one of its processes holds through an inherited descriptor.
  So nothing is lost when the whole program, its watcher included, is
  killed with SIGKILL: the next program that registers a resource (or
  calls ``sweep()``) removes what the dead one left.
- A watcher process still removes leftovers the moment the program ends
  and warns about them, as the standard library's tracker does.
- A resource that another living process still maps or holds open is
  never removed, and no "leaked" warning is printed for it: it stays
  listed until a later sweep finds it unused.
"""
from . import _cmp

__all__ = ['ensure_running', 'register', 'unregister']


class ResourceTracker(object):
    """The tracker of this program. ``_fd`` is the registry's descriptor:
    an exec'd child that is given it (``pass_fds``) joins the program by
    setting it, as the standard library's spawn does with its tracker fd."""

    def ensure_running(self):
        """Creates the program's registry and its watcher, once."""
        _cmp._tracker_start()

    def getfd(self):
        self.ensure_running()
        return _cmp._tracker_fd()

    def register(self, name, rtype):
        """Lists the resource: it is removed once the program is dead."""
        _cmp._tracker_register(name, rtype)

    def unregister(self, name, rtype):
        """Forgets the resource (its owner removed it)."""
        _cmp._tracker_unregister(name, rtype)

    @property
    def _fd(self):
        fd = _cmp._tracker_fd()
        return None if fd < 0 else fd

    @_fd.setter
    def _fd(self, fd):
        if fd is not None:
            _cmp._tracker_adopt(fd)

    @property
    def _pid(self):
        return _cmp._tracker_watcher_pid() or None

    def _check_alive(self):
        return self._fd is not None

    def _stop(self):
        """Nothing to stop: the watcher ends with the program."""


_resource_tracker = ResourceTracker()
ensure_running = _resource_tracker.ensure_running
register = _resource_tracker.register
unregister = _resource_tracker.unregister
getfd = _resource_tracker.getfd


def sweep():
    """Removes what dead programs registered and no living process uses
    (beyond the standard library); returns how many resources it removed.
    Runs by itself at each program's first registration."""
    return _cmp._tracker_sweep()
