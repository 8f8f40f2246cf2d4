"""The Python glue of the spawn and forkserver start methods.

A child started by spawn is a new interpreter; one started by forkserver is
a fork of a server interpreter that has imported (preloaded) the parent's
``__main__`` and cmultiprocessing. Either way it inherits nothing, so the
parent pickles what the child needs: the preparation data (name, authkey,
sys.path, sys.argv, working directory, how to find ``__main__``) and the
Process object itself. While that pickle is made our objects reduce to the
shared memory and fds they stand for (_cmp/spawn.c); those fds cross at
the same numbers (across exec for spawn, by SCM_RIGHTS through the fork
server). The child imports the parent's ``__main__`` as ``__mp_main__``
(so the ``if __name__ == '__main__'`` block does not run again), unpickles
the Process and runs it through the same C bootstrap a forked child uses.

What is Python here is what has to be: importing ``__main__`` and
pickling. Starting the program, the fork server's loop and the transfer of
fds are C (_cmp/spawn.c, libcmp's process.c and forkserver.c).
"""
import copyreg
import io
import os
import pickle
import signal
import sys
import threading
import types

from . import _cmp

METHODS = ("fork", "spawn", "forkserver")
# How many old __main__ modules the child keeps alive (objects of the
# parent's may refer to the module they were defined in).
_old_main_modules = []


# ---- the parent -----------------------------------------------------------

def _aliased():
    """True under `python3 -m cmultiprocessing`: the child must resolve
    multiprocessing to us too before it imports __main__ or unpickles."""
    mp = sys.modules.get("multiprocessing")
    return mp is not None and mp is sys.modules.get("cmultiprocessing")


def get_preparation_data(name, method):
    """What the child needs to rebuild the parent's state, as the stdlib's
    spawn.get_preparation_data() gives (plain values only)."""
    cur = _cmp.current_process()
    d = dict(
        name=name,
        sys_path=sys.path,
        sys_argv=sys.argv,
        authkey=bytes(cur.authkey),
        dir=os.getcwd(),
        orig_dir=_cmp._original_dir,
        start_method=METHODS[method],
        alias=_aliased(),
    )
    logging = sys.modules.get("logging")
    # once the package's logger exists (get_logger(), log_to_stderr()), its
    # effective level goes to the child, as the stdlib's spawn sends it;
    # not made here for the asking
    lg = logging and logging.Logger.manager.loggerDict.get("multiprocessing")
    if lg is not None and isinstance(lg, logging.Logger):
        d["log_level"] = lg.getEffectiveLevel()
        if lg.handlers:
            d["log_to_stderr"] = True
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    main_name = getattr(spec, "name", None)
    if main_name is not None:
        d["init_main_from_name"] = main_name
    else:
        path = getattr(main, "__file__", None)
        if path is not None:
            if not os.path.isabs(path) and _cmp._original_dir is not None:
                path = os.path.join(_cmp._original_dir, path)
            d["init_main_from_path"] = os.path.normpath(path)
    return d


class _ChildPickler(pickle.Pickler):
    """Pickles for a spawned child: ctypes objects in our shared heap
    (RawValue, RawArray) and sockets travel as the memory and fds they
    are, not as copies; whatever ForkingPickler.register() registered
    (the stdlib's Connection among them) reduces as it does for the
    stdlib's spawn, through context.get_spawning_popen()."""

    def __init__(self, *args):
        super().__init__(*args)
        from .reduction import ForkingPickler
        table = copyreg.dispatch_table.copy()
        table.update(ForkingPickler._extra_reducers)
        self.dispatch_table = table

    def reducer_override(self, obj):
        ctypes = sys.modules.get("ctypes")
        if ctypes is not None and isinstance(obj, (ctypes._SimpleCData, ctypes.Array,
                                                   ctypes.Structure, ctypes.Union)):
            where = _cmp._shared_block_of(obj)
            if where is not None:
                block, offset = where
                if isinstance(obj, ctypes.Array):
                    return _rebuild_ctype, (obj._type_, len(obj), block, offset)
                return _rebuild_ctype, (type(obj), None, block, offset)
        socket = sys.modules.get("socket")
        if socket is not None and isinstance(obj, socket.socket):
            fd = obj.fileno()
            _cmp._spawn_pass_fd(fd)
            return _rebuild_socket, (fd, int(obj.family), int(obj.type), obj.proto)
        return NotImplemented


def _rebuild_ctype(ctype, length, block, offset):
    import ctypes
    if length is not None:
        ctype = ctype * length
    # from_buffer keeps the block alive as long as the object
    return ctypes.pointer(ctype.from_buffer(block, offset)).contents


def _rebuild_socket(fd, family, type_, proto):
    import socket
    return socket.socket(family, type_, proto, fileno=fd)


# One pickle for a child at a time: which fds a reduction passes is
# process-wide state (_cmp/spawn.c) while it runs.
_pickling = threading.Lock()


def _payload(process, method, parent_fd):
    """The bytes a child reads: the preparation data, the Process, and the
    segment fds it closes once done; and the fds it must find."""
    buf = io.BytesIO()
    prep = get_preparation_data(process.name, method)
    prep["parent_fd"] = parent_fd
    with _pickling:
        return _pickle_for_child(buf, prep, process, parent_fd)


class _SpawningPopen:
    """What objects that pickle themselves for a new process ask of it
    (context.get_spawning_popen(), ours and the stdlib's): an fd to pass,
    which crosses at its own number, and a picklable stand-in for it that
    gives the fd back in the child."""

    def __init__(self, method):
        self.method = method

    def duplicate_for_child(self, fd):
        _cmp._spawn_pass_fd(fd)
        return fd

    def DupFd(self, fd):
        # the stdlib's class: it only remembers the fd, and its detach()
        # returns it, which is right for fds passed at their own numbers
        from multiprocessing.popen_spawn_posix import _DupFd
        return _DupFd(fd)


def _pickle_for_child(buf, prep, process, parent_fd):
    from . import context
    _cmp._spawning_begin()
    context.set_spawning_popen(_SpawningPopen(prep.get("start_method")))
    try:
        # the child joins this program's resource tracker (if it runs), as
        # a forked child does: a segment it attaches is the program's, not
        # a program of its own's, which would warn it leaked at the end
        tracker_fd = _cmp._tracker_fd()
        if tracker_fd >= 0:
            _cmp._spawn_pass_fd(tracker_fd)
            prep["tracker_fd"] = tracker_fd
        pickler = _ChildPickler(buf, pickle.HIGHEST_PROTOCOL)
        pickler.dump(prep)
        pickler.clear_memo()  # the child loads each with a fresh memo
        pickler.dump(process)
    finally:
        context.set_spawning_popen(None)
        fds, segments = _cmp._spawning_end()
    pickle.dump(segments, buf, pickle.HIGHEST_PROTOCOL)
    fds.append(parent_fd)
    return buf.getbuffer(), fds


def _executable():
    exe = _cmp._spawn_settings()[0]
    return os.fsdecode(exe) if exe is not None else sys.executable


def _interpreter_flags():
    import subprocess
    return subprocess._args_from_interpreter_flags()


# Where this package was imported from: the child must find it before it
# gets the parent's sys.path (the stdlib's multiprocessing is always there;
# we may have come from PYTHONPATH, a source tree, a virtualenv...).
_HOME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(call):
    """argv that runs `call` (a function of this module, with its
    arguments) in a new interpreter."""
    return [_executable(), *_interpreter_flags(), "-c",
            "import sys; sys.path.insert(0, %r); "
            "from cmultiprocessing._spawn import %s" % (_HOME, call.split("(")[0]) + "; " + call]


def _launch(process, method):
    """Starts process (spawn: 1, forkserver: 2): (pid, pidfd, status fd or
    -1) for the Process object to follow it by."""
    parent_fd = os.pidfd_open(os.getpid())
    try:
        payload, fds = _payload(process, method, parent_fd)
        if method == 2:
            return _forkserver.start(payload, fds)
        r, w = os.pipe()
        try:
            argv = _command("spawn_main(%d)" % r) + ["--multiprocessing-fork"]
            pid, pidfd = _cmp._spawn_exec(argv, fds + [r])
        finally:
            os.close(r)
        try:
            with open(w, "wb", closefd=True) as f:
                f.write(payload)
        except BrokenPipeError:
            pass  # the child died early: its exit code tells
        return pid, pidfd, -1
    finally:
        os.close(parent_fd)


class _PassedFd:
    """An fd pickled for a spawned child: it crosses at its number, and
    arrives as that int."""

    def __init__(self, fd):
        self.fd = fd

    def __reduce__(self):
        _cmp._spawn_pass_fd(self.fd)
        return int, (self.fd,)


def _launch_pool_worker(method, fd, length, workers, index, max_tasks, initializer, initargs,
                        spill_fds=()):
    """Starts a Pool's worker as a new interpreter (spawn: 1, forkserver:
    2) that serves from the pool's shared region fd: (pid, pidfd, status
    fd or -1). spill_fds (its queues' spill files) cross at their numbers,
    which the region names: without them a result too big for the ring's
    free room could not be put. The worker is a daemonic Process object to
    the child (as the stdlib's, named SpawnPoolWorker-N), but the pool
    follows it, not the parent's active_children()."""
    ctx = _cmp.get_context(METHODS[method])
    process = ctx.Process(target=_pool_worker, daemon=True,
                          args=(_PassedFd(fd), length, workers, index, max_tasks,
                                initializer, tuple(initargs),
                                tuple(_PassedFd(f) for f in spill_fds)))
    process.name = process.name.replace("Process-", "PoolWorker-", 1)
    return _launch(process, method)


def _pool_worker(fd, length, workers, index, max_tasks, initializer, initargs, spill_fds=()):
    sys.exit(_cmp._pool_worker_serve(fd, length, workers, index, max_tasks,
                                     initializer, initargs))


# ---- the child ------------------------------------------------------------

def _import_main_from_path(path):
    main = sys.modules["__main__"]
    if getattr(main, "__file__", None) == path:
        return  # already it (a fork server's child)
    name = os.path.splitext(os.path.basename(path))[0]
    if name == "ipython":
        return
    _old_main_modules.append(main)
    module = types.ModuleType("__mp_main__")
    if path.endswith(".py") and os.path.isfile(path):
        _run_script(path, module)
    else:  # a directory, a zip file, compiled code: what runpy knows
        import runpy
        module.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def _run_script(path, module):
    """Runs the script at path in module, as runpy.run_path(path,
    run_name='__mp_main__') does for a source file (its globals, argv[0]
    set to the path meanwhile) without importing runpy and pkgutil, a few
    milliseconds of every spawned child's start."""
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec", dont_inherit=True)
    module.__dict__.update(__file__=path, __cached__=None, __loader__=None,
                           __package__="", __spec__=None)
    sys.modules["__mp_main__"] = module  # what the script imports as such
    argv0 = sys.argv[0] if sys.argv else None
    if sys.argv:
        sys.argv[0] = path
    try:
        exec(code, module.__dict__)
    finally:
        if sys.argv:
            sys.argv[0] = argv0


def _import_main_from_name(name):
    if name == "__main__" or name.endswith(".__main__"):
        return  # `python -m pkg`: its __main__ has no guard to rely on
    main = sys.modules["__main__"]
    if getattr(getattr(main, "__spec__", None), "name", None) == name:
        return
    _old_main_modules.append(main)
    import runpy
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(runpy.run_module(name, run_name="__mp_main__", alter_sys=True))
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def prepare(data):
    """Makes this fresh interpreter look like the parent (the stdlib's
    spawn.prepare())."""
    if data.get("alias"):
        from .__main__ import alias_multiprocessing
        alias_multiprocessing()
    if "tracker_fd" in data:
        _cmp._tracker_adopt(data["tracker_fd"])
    cur = _cmp.current_process()
    if "name" in data:
        cur.name = data["name"]
    if "authkey" in data:
        cur.authkey = data["authkey"]
    if data.get("log_to_stderr"):
        _cmp.log_to_stderr()
    if "log_level" in data:
        _cmp.get_logger().setLevel(data["log_level"])
    if "sys_path" in data:
        sys.path = data["sys_path"]
    if "sys_argv" in data:
        sys.argv = data["sys_argv"]
    if "dir" in data:
        os.chdir(data["dir"])
    if "orig_dir" in data:
        _cmp._original_dir = data["orig_dir"]
    if "start_method" in data:
        _cmp.set_start_method(data["start_method"], force=True)
    if "init_main_from_name" in data:
        _import_main_from_name(data["init_main_from_name"])
    elif "init_main_from_path" in data:
        _import_main_from_path(data["init_main_from_path"])


def _run(data):
    """Prepares, unpickles and runs the process in data: its exit code."""
    f = io.BytesIO(data)
    prep = pickle.load(f)
    prepare(prep)
    cur = _cmp.current_process()
    cur._inheriting = True
    try:
        process = pickle.load(f)
    finally:
        del cur._inheriting
        for fd in pickle.load(f):
            try:
                os.close(fd)
            except OSError:
                pass
    return _cmp._bootstrap_spawned(process, prep["parent_fd"])


def spawn_main(fd):
    """Entry point of a spawned child (see _launch's command line)."""
    with open(fd, "rb", closefd=True) as f:
        data = f.read()
    sys.exit(_run(data))


# ---- the fork server ------------------------------------------------------

class _ForkServer:
    """The parent's side of its fork server: started on first use, kept
    while the parent lives (the server exits when the pipe it watches
    closes, that is with the parent)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._address = None
        self._alive_w = None
        self._pid = None
        self._owner = None  # the pid that started the server

    def _start_server(self):
        listen_fd, address = _cmp._forkserver_listen()
        alive_r, alive_w = os.pipe()
        try:
            preload = _cmp._spawn_settings()[1]
            if preload is None:
                preload = ["__main__"]
            config = get_preparation_data("ForkServer", 2)
            keep = {k: config[k] for k in ("sys_path", "dir", "alias",
                                           "init_main_from_path", "init_main_from_name")
                    if k in config}
            if "__main__" not in preload:
                keep.pop("init_main_from_path", None)
                keep.pop("init_main_from_name", None)
            argv = _command("forkserver_main(%d, %d, %r, %r)" % (
                listen_fd, alive_r, [m for m in preload if m != "__main__"], keep))
            pid, pidfd = _cmp._spawn_exec(argv, [listen_fd, alive_r])
            os.close(pidfd)  # it outlives every child it forks: never joined
        except BaseException:
            os.close(alive_w)
            raise
        finally:
            os.close(listen_fd)
            os.close(alive_r)
        if self._alive_w is not None and self._owner == os.getpid():
            os.close(self._alive_w)
        self._address, self._alive_w, self._pid = address, alive_w, pid
        self._owner = os.getpid()

    def start(self, payload, fds):
        with self._lock:
            # a forked child of the parent starts a server of its own: the
            # parent's watches the parent's pipe, not the child's
            if self._address is None or self._owner != os.getpid():
                self._start_server()
            address = self._address
        try:
            return _cmp._forkserver_request(address, payload, fds)
        except (ConnectionRefusedError, FileNotFoundError):
            with self._lock:  # the server died: once more with a new one
                if self._address == address:
                    self._start_server()
                address = self._address
            return _cmp._forkserver_request(address, payload, fds)


_forkserver = _ForkServer()


def forkserver_main(listen_fd, alive_fd, preload, config):
    """Entry point of the fork server."""
    if config.get("alias"):
        from .__main__ import alias_multiprocessing
        alias_multiprocessing()
    if "sys_path" in config:
        sys.path = config["sys_path"]
    if "dir" in config:
        try:
            os.chdir(config["dir"])
        except OSError:
            pass
    _cmp.current_process()._inheriting = True
    try:
        if "init_main_from_name" in config:
            _import_main_from_name(config["init_main_from_name"])
        elif "init_main_from_path" in config:
            _import_main_from_path(config["init_main_from_path"])
    except Exception:
        pass  # as the stdlib: a __main__ that fails to import is not preloaded
    finally:
        del _cmp.current_process()._inheriting
    for name in preload:
        try:
            __import__(name)
        except ImportError:
            pass
    # Ctrl-C in the terminal reaches the whole process group: it is for the
    # parent and the children to handle, not the server
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _cmp._forkserver_serve(listen_fd, alive_fd, _forkserver_child)


def _forkserver_child(data):
    """In a child the fork server forked: its exit code."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return _run(data)
