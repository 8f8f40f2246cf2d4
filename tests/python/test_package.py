"""The package as a whole: exceptions, the warning for abandoned locks."""
import importlib

import pytest

MODULES = ["multiprocessing", "cmultiprocessing"]


@pytest.mark.parametrize("name", MODULES)
def test_exception_hierarchy(name):
    module = importlib.import_module(name)
    assert issubclass(module.ProcessError, Exception)
    for sub in ("BufferTooShort", "TimeoutError", "AuthenticationError"):
        assert issubclass(getattr(module, sub), module.ProcessError)
    with pytest.raises(module.ProcessError):
        raise module.TimeoutError("late")


@pytest.mark.parametrize("name", ["ProcessError", "BufferTooShort", "TimeoutError",
                                  "AuthenticationError"])
def test_exceptions_are_the_stdlibs_own(cmp, name):
    """An except clause written against either module catches both."""
    import multiprocessing
    assert getattr(cmp, name) is getattr(multiprocessing, name)


def test_pool_timeout_caught_as_the_stdlibs(cmp):
    import multiprocessing
    import time
    with cmp.Pool(1) as p:
        r = p.apply_async(time.sleep, (5,))
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(0.05)
        pool = importlib.import_module(cmp.__name__ + ".pool")
        assert issubclass(pool.WorkerLostError, multiprocessing.ProcessError)


def test_abandoned_lock_warning_is_a_runtime_warning(cmp):
    assert issubclass(cmp.AbandonedLockWarning, RuntimeWarning)
    assert cmp.AbandonedLockWarning.__doc__


def test_extension_is_the_implementation(cmp):
    assert cmp._cmp.__file__.endswith(".so")


# Not implemented yet (later issues): the reducer machinery that only
# spawn needs.
NOT_YET = {"reducer"}


def test_star_import_binds_what_the_stdlib_binds(cmp):
    import multiprocessing
    assert set(cmp.__all__) == (set(multiprocessing.__all__) - NOT_YET) | {"AbandonedLockWarning"}
    namespace = {}
    exec("from cmultiprocessing import *", namespace)
    assert "copy" not in namespace  # sharedctypes.copy must not shadow the module
    for name in cmp.__all__:
        assert namespace[name] is getattr(cmp, name)


@pytest.mark.parametrize("name", MODULES)
def test_allow_connection_pickling_loads_the_connection_module(name):
    import sys
    module = importlib.import_module(name)
    assert module.allow_connection_pickling() is None
    assert name + ".connection" in sys.modules
    assert module.get_context("fork").allow_connection_pickling is not None


@pytest.mark.parametrize("name", MODULES)
def test_dummy_has_the_stdlibs_names(name):
    """multiprocessing.dummy's names beyond its __all__ (Value, Array,
    Namespace, the dummy.connection submodule) are there too."""
    dummy = importlib.import_module(name + ".dummy")
    connection = importlib.import_module(name + ".dummy.connection")
    assert dummy.connection is connection
    v = dummy.Value("i", 3)
    v.value += 1
    assert v.value == 4
    assert list(dummy.Array("i", [1, 2])) == [1, 2]
    ns = dummy.Namespace(a=1)
    assert ns.a == 1
    a, b = connection.Pipe()
    a.send("x")
    assert b.poll(5) and b.recv() == "x"
    with dummy.Pool(2) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]


def test_pool_errors_live_in_the_pool_module(cmp):
    """WorkerLostError and InitializerError (beyond the stdlib) are named
    cmultiprocessing.pool.*: the package's own names are the stdlib's."""
    import pickle
    pool = importlib.import_module(cmp.__name__ + ".pool")
    for exc in (cmp.WorkerLostError, cmp.InitializerError):
        assert exc.__module__ == cmp.__name__ + ".pool"
        assert getattr(pool, exc.__name__) is exc
        assert type(pickle.loads(pickle.dumps(exc("x")))) is exc
    own = {n for n, v in vars(cmp).items() if not n.startswith("_")
           and getattr(v, "__module__", None) == cmp.__name__}
    assert own <= set(cmp.__all__)


@pytest.mark.parametrize("name", MODULES)
def test_weak_references_to_the_objects(name):
    """Weak references to the synchronization objects, connections and
    listeners work, as to the stdlib's (util.Finalize, weakref.finalize and
    WeakValueDictionary take them), and die with the object."""
    import gc
    import weakref
    module = importlib.import_module(name)
    connection = importlib.import_module(name + ".connection")
    ctx = module.get_context("fork")
    makers = [ctx.Lock, ctx.RLock, ctx.Semaphore, ctx.BoundedSemaphore, ctx.Event,
              ctx.Condition, lambda: ctx.Barrier(2), lambda: ctx.Pipe()[0],
              lambda: connection.Listener(family="AF_UNIX")]
    for make in makers:
        obj = make()
        finalized = []
        weakref.finalize(obj, finalized.append, True)
        ref = weakref.ref(obj)
        assert ref() is obj
        if hasattr(obj, "close"):
            obj.close()
        del obj
        gc.collect()
        assert ref() is None and finalized == [True], make
