"""Targets for test_start_methods.py: a spawned or fork-server child
imports them by name, so they live in a module of their own."""
import os
import sys
import time

unpicklable = lambda: None  # noqa: E731 (a lambda: pickled by name, which fails)


def exit_with(code):
    sys.exit(code)


def sleep(seconds):
    time.sleep(seconds)


def square(x):
    return x * x


STATE = "as imported"


def set_state(value):
    global STATE
    STATE = value


def worker_info(_):
    """What a pool worker sees: this module's state and its own name."""
    for name in ("cmultiprocessing", "multiprocessing"):
        mp = sys.modules.get(name)
        if mp is not None and mp.current_process().name != "MainProcess":
            break
    return STATE, mp.current_process().name.split("-")[0], os.getpid()


def report(out, parent_pid):
    """What the child knows of itself and its parent."""
    import importlib
    mp = importlib.import_module(type(out).__module__.split(".")[0])
    cur = mp.current_process()
    parent = mp.parent_process()
    out.put(dict(name=cur.name, daemon=cur.daemon, authkey=bytes(cur.authkey),
                 parent_pid=parent.pid if parent else None,
                 parent_alive=parent.is_alive() if parent else None,
                 ppid_is_parent=os.getppid() == parent_pid,
                 cwd=os.getcwd(), path=list(sys.path)))


def use_objects(objs, out):
    """Uses each object the parent passed; the parent checks the effects."""
    (lock, rlock, sem, bsem, event, cond, barrier, value, array, raw, rawvalue, queue, squeue,
     jqueue, conn, sock, proxy) = objs
    r = {"lock_taken": lock.acquire(timeout=0.05)}  # the parent holds it
    with rlock:
        with rlock:
            r["rlock"] = True
    sem.release()
    bsem.acquire()
    bsem.release()
    try:
        bsem.release()
        r["bsem"] = "no error"
    except ValueError:
        r["bsem"] = "ValueError"
    with cond:
        r["notified"] = cond.wait(10)  # the parent notifies once we wait
    event.set()
    r["barrier"] = barrier.wait(10) in (0, 1)
    with value.get_lock():
        value.value += 5
    array[0] = 42
    raw[1] = 7
    rawvalue.value = 2.5
    queue.put("q")
    queue.put(b"x" * (4 << 20))  # more than the ring holds
    squeue.put("sq")
    jqueue.put("jq")
    conn.send(("conn", conn.recv()))
    sock.sendall(b"sock")
    proxy["child"] = os.getpid()
    out.put(r)


def put_after(q, seconds, value):
    time.sleep(seconds)
    q.put(value)


import ctypes  # noqa: E402


class Pair(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


def bump_pair(pair):
    with pair.get_lock():
        pair.x += 1
        pair.y *= 2


class StateBox:
    """Held by a manager's server: what that process sees of STATE."""

    def state(self):
        return STATE, os.getpid()


import multiprocessing.managers as _std_managers  # noqa: E402
import cmultiprocessing.managers as _our_managers  # noqa: E402


class StdStateManager(_std_managers.BaseManager):
    pass


class OurStateManager(_our_managers.BaseManager):
    pass


for _cls in (StdStateManager, OurStateManager):
    _cls.register("StateBox", StateBox)
STATE_MANAGERS = {"multiprocessing": StdStateManager, "cmultiprocessing": OurStateManager}


def fill_proxies(d, lst, key):
    """A child's use of manager proxies passed to it."""
    d[key] = os.getpid()
    lst.append(key)


def send_start_method_and_log_level(conn, impl):
    """What a child sees as its default start method and its package
    logger's effective level."""
    import importlib
    mp = importlib.import_module(impl)
    conn.send((mp.get_start_method(), mp.get_logger().getEffectiveLevel()))
    conn.close()


def big_result(i):
    """A result of 1 MiB: two of them at once overflow a pool's result ring
    into its spill file."""
    time.sleep(0.05)
    return b"x" * (1 << 20) + bytes([i])
