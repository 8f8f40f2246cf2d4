"""Managers: Python 3.11's API and semantics, run on the stdlib and on
cmultiprocessing (Manager, SyncManager's proxies across processes,
BaseManager.register, connect, proxies through queues and nested in
managed objects), and what we do beyond it (a killed manager fails fast;
what 3.12-3.14 added). Every wait is bounded and every manager is shut
down in a finally (the context manager)."""
import importlib
import os
import signal
import threading
import time

import pytest

T = 20  # seconds: the bound on any wait here


@pytest.fixture
def mgrs(mp):
    """The managers submodule of the implementation under test."""
    name = type(mp).__module__.split(".")[0]
    return importlib.import_module(name + ".managers")


def join_all(procs):
    for p in procs:
        p.join(T)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


def run_children(mp, target, args, n=1):
    procs = [mp.Process(target=target, args=args) for _ in range(n)]
    for p in procs:
        p.start()
    join_all(procs)


# -- the seed's example and the basics ---------------------------------------

def append_data(lst):
    lst.append("data")


def test_three_processes_append_to_a_managed_list(mp):
    with mp.Manager() as m:
        lst = m.list()
        run_children(mp, append_data, (lst,), 3)
        assert lst[:] == ["data"] * 3
        assert len(lst) == 3


def test_manager_is_a_started_sync_manager(mp, mgrs):
    m = mp.Manager()
    try:
        assert isinstance(m, mgrs.SyncManager)
        assert isinstance(m.address, str)
        d = m.dict(a=1)
        assert isinstance(d, mgrs.BaseProxy)
        assert d.copy() == {"a": 1}
    finally:
        m.shutdown()
    m.join(T)


def test_proxy_repr_str_getvalue_and_errors(mp, mgrs):
    with mp.Manager() as m:
        lst = m.list([1, 2])
        assert repr(lst).startswith("<ListProxy object, typeid 'list' at 0x")
        assert str(lst) == "[1, 2]"
        assert lst._getvalue() == [1, 2]
        assert lst._callmethod("__len__") == 2
        assert lst._callmethod("index", (2,)) == 1
        # an exception in the method is raised as itself in the client
        with pytest.raises(ValueError):
            lst.index(42)
        with pytest.raises(IndexError):
            lst[5]
        # a method that is not exposed: RemoteError with the server's traceback
        with pytest.raises(mgrs.RemoteError) as info:
            lst._callmethod("nonexistent")
        assert "AttributeError" in str(info.value)


# -- every proxy type across processes -----------------------------------------

def use_every_proxy(lst, dct, ns, val, arr, q, jq, lock, rlock, sem, bsem, cond, ev, bar):
    lst.extend([1, 2])
    lst[0] = 10
    dct["k"] = "v"
    dct.update(n=3)
    ns.name = "child"
    val.value = 7
    arr[1] = 5
    q.put("from child")
    jq.put("job")
    with lock:
        pass
    with rlock:
        with rlock:
            pass
    assert sem.acquire(timeout=T)
    sem.release()
    bsem.acquire()
    bsem.release()
    with cond:
        cond.notify_all()
    ev.set()
    bar.wait(T)


def test_every_proxy_type_across_processes(mp):
    with mp.Manager() as m:
        args = (m.list(), m.dict(), m.Namespace(x=1), m.Value("i", 0), m.Array("i", [0, 0, 0]),
                m.Queue(), m.JoinableQueue(), m.Lock(), m.RLock(), m.Semaphore(1),
                m.BoundedSemaphore(1), m.Condition(), m.Event(), m.Barrier(2))
        p = mp.Process(target=use_every_proxy, args=args)
        p.start()
        lst, dct, ns, val, arr, q, jq, lock, rlock, sem, bsem, cond, ev, bar = args
        assert bar.wait(T) in (0, 1)
        join_all([p])
        assert lst[:] == [10, 2]
        assert dct.copy() == {"k": "v", "n": 3}
        assert sorted(dct.keys()) == ["k", "n"]
        assert sorted(dct.items()) == [("k", "v"), ("n", 3)]
        assert ns.name == "child" and ns.x == 1
        assert val.value == 7 and val.get() == 7
        assert list(arr[:]) == [0, 5, 0] and len(arr) == 3
        assert q.get(timeout=T) == "from child"
        assert jq.get(timeout=T) == "job"
        jq.task_done()
        jq.join()
        assert ev.is_set() and ev.wait(T)
        assert lock.acquire(timeout=T)
        lock.release()
        assert bar.parties == 2 and bar.n_waiting == 0 and not bar.broken


def test_namespace_delattr_and_missing(mp):
    with mp.Manager() as m:
        ns = m.Namespace(a=1)
        del ns.a
        with pytest.raises(AttributeError):
            ns.a
        ns.b = [1]
        assert ns.b == [1]


def test_condition_wait_and_notify(mp):
    with mp.Manager() as m:
        cond = m.Condition()
        lst = m.list()
        p = mp.Process(target=notify_after, args=(cond, lst))
        with cond:
            p.start()
            assert cond.wait_for(lambda: len(lst) == 1, T)
        join_all([p])


def notify_after(cond, lst):
    time.sleep(0.1)
    with cond:
        lst.append(1)
        cond.notify()


def test_iterators_and_pool(mp):
    with mp.Manager() as m:
        d = m.dict(a=1, b=2)
        assert sorted(iter(d)) == ["a", "b"]
        with m.Pool(2) as pool:
            assert pool.map(abs, [-1, -2]) == [1, 2]
            assert pool.apply_async(abs, (-3,)).get(T) == 3
            assert sorted(pool.imap_unordered(abs, [-4, -5])) == [4, 5]


def keep_and_use(lst, q):
    global KEPT
    KEPT = q.get(timeout=T)  # kept until the child exits
    KEPT.append("q")
    lst.append("arg")


def test_a_childs_references_are_given_back_at_its_exit(mp):
    import gc
    with mp.Manager() as m:
        lst, other = m.list(), m.list()
        q = mp.Queue()
        q.put(other)
        run_children(mp, keep_and_use, (lst, q))
        assert lst[:] == ["arg"] and other[:] == ["q"]
        del lst, other
        gc.collect()
        assert m._number_of_objects() == 0


# -- a shared dict under a manager Lock --------------------------------------------

def add_many(d, lock, n):
    for _ in range(n):
        with lock:
            d["count"] = d["count"] + 1


def test_four_processes_update_a_dict_under_a_manager_lock(mp):
    with mp.Manager() as m:
        d = m.dict(count=0)
        lock = m.Lock()
        run_children(mp, add_many, (d, lock, 1000), 4)
        assert d["count"] == 4000


# -- register, exposed, method_to_typeid ---------------------------------------------

class Counter:
    def __init__(self, start=0):
        self.n = start

    def add(self, k=1):
        self.n += k
        return self.n

    def value(self):
        return self.n

    def _private(self):
        return "hidden"

    def children(self):
        return [self.n, self.n + 1]


def make_manager_class(mgrs):
    class MyManager(mgrs.BaseManager):
        pass
    MyManager.register("Counter", Counter)
    MyManager.register("LimitedCounter", Counter, exposed=("add",))
    MyManager.register("ParentCounter", Counter, method_to_typeid={"children": "list"})
    MyManager.register("list", list)
    return MyManager


def bump(c):
    c.add(5)


def test_register_custom_class(mp, mgrs):
    MyManager = make_manager_class(mgrs)
    with MyManager(ctx=mp) as m:
        c = m.Counter(10)
        assert c.add() == 11
        assert c.add(k=2) == 13
        run_children(mp, bump, (c,))
        assert c.value() == 18
        assert not hasattr(c, "_private")
        assert type(c).__name__ == "AutoProxy[Counter]"
        limited = m.LimitedCounter()
        assert limited.add() == 1
        assert not hasattr(limited, "value")
        with pytest.raises(mgrs.RemoteError):
            limited._callmethod("value")
        parent = m.ParentCounter(3)
        kids = parent.children()
        assert isinstance(kids, mgrs.BaseProxy)
        assert kids._getvalue() == [3, 4]
        kids.append(5)
        assert kids.count(5) == 1 and kids._getvalue() == [3, 4, 5]
    # the base class has none of it
    assert not hasattr(mgrs.BaseManager, "Counter")


def test_register_without_create_method_and_make_proxy_type(mp, mgrs):
    class M(mgrs.BaseManager):
        pass
    CounterProxy = mgrs.MakeProxyType("CounterProxy", ("add", "value"))
    M.register("Counter", Counter, CounterProxy)
    M.register("Hidden", Counter, create_method=False)
    assert not hasattr(M, "Hidden")
    with M(ctx=mp) as m:
        c = m.Counter()
        assert isinstance(c, CounterProxy)
        assert c.add(3) == 3 and c.value() == 3
        assert CounterProxy._exposed_ == ("add", "value")


def test_start_twice_and_after_shutdown(mp, mgrs):
    m = mgrs.BaseManager(ctx=mp)
    m.start()
    with pytest.raises(mp.ProcessError):
        m.start()
    m.shutdown()
    with pytest.raises(mp.ProcessError):
        m.start()


def init_marker(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))


def test_start_with_initializer(mp, mgrs, tmp_path):
    path = str(tmp_path / "init")
    m = mgrs.SyncManager(ctx=mp)
    m.start(init_marker, (path,))
    try:
        m.list()
        with open(path) as f:
            assert int(f.read()) != os.getpid()
    finally:
        m.shutdown()
    with pytest.raises(TypeError):
        mgrs.SyncManager(ctx=mp).start(initializer=42)


# -- proxies through queues, pipes, nested ---------------------------------------------

def append_from_queue(q):
    lst = q.get(timeout=T)
    lst.append("via queue")


def test_proxy_through_a_queue(mp):
    with mp.Manager() as m:
        lst = m.list()
        q = mp.Queue()
        p = mp.Process(target=append_from_queue, args=(q,))
        p.start()
        q.put(lst)
        join_all([p])
        assert lst[:] == ["via queue"]


def append_from_pipe(conn):
    conn.recv().append("via pipe")


def test_proxy_through_a_pipe(mp):
    with mp.Manager() as m:
        lst = m.list()
        a, b = mp.Pipe()
        p = mp.Process(target=append_from_pipe, args=(b,))
        p.start()
        a.send(lst)
        join_all([p])
        assert lst[:] == ["via pipe"]


def append_nested(d):
    d["inner"].append("child")


def test_nested_proxies(mp, mgrs):
    with mp.Manager() as m:
        d = m.dict()
        inner = m.list([1])
        d["inner"] = inner
        got = d["inner"]
        assert isinstance(got, mgrs.BaseProxy)
        got.append(2)
        assert inner[:] == [1, 2]
        run_children(mp, append_nested, (d,))
        assert inner[:] == [1, 2, "child"]
        outer = m.list([m.dict(x=1)])
        assert outer[0]["x"] == 1
        del inner, got
        assert d["inner"][:] == [1, 2, "child"]  # the server's reference keeps it


def test_nested_plain_object_is_a_copy(mp):
    """d['k'].append(x) on a plain list value changes a copy: the stdlib's
    semantics, kept (store a managed list to share the inner list)."""
    with mp.Manager() as m:
        d = m.dict(k=[])
        d["k"].append(1)
        assert d["k"] == []


def test_deepcopy_is_the_value(mp):
    import copy
    with mp.Manager() as m:
        lst = m.list([[1]])
        c = copy.deepcopy(lst)
        assert c == [[1]] and isinstance(c, list)


# -- connect() ------------------------------------------------------------------------

def connect_and_append(mgrs_name, address, authkey):
    mgrs = importlib.import_module(mgrs_name)

    class Client(mgrs.BaseManager):
        pass
    Client.register("get_list")
    m = Client(address=address, authkey=authkey)
    m.connect()
    m.get_list().append("connected")


def test_connect_from_a_process_that_knows_only_the_address(mp, mgrs):
    shared = []

    class Server(mgrs.BaseManager):
        pass
    Server.register("get_list", callable=lambda: shared)
    with Server(address=("127.0.0.1", 0), authkey=b"secret", ctx=mp) as m:
        host, port = m.address
        assert port != 0
        run_children(mp, connect_and_append, (mgrs.__name__, m.address, b"secret"))
        assert m.get_list()._getvalue() == ["connected"]
        bad = Server(address=m.address, authkey=b"wrong")
        with pytest.raises(mp.AuthenticationError):
            bad.connect()


def test_connect_to_nothing_raises(mp, mgrs, tmp_path):
    m = mgrs.BaseManager(address=str(tmp_path / "nobody"), authkey=b"x")
    with pytest.raises(OSError):
        m.connect()


# -- a killed client ----------------------------------------------------------------------

def block_on(q):
    q.get(timeout=T)


def test_a_killed_client_leaves_the_server_serving(mp):
    with mp.Manager() as m:
        q = m.Queue()
        lst = m.list()
        p = mp.Process(target=block_on, args=(q,))
        p.start()
        time.sleep(0.3)
        p.kill()
        p.join(T)
        lst.append(1)
        run_children(mp, append_data, (lst,), 2)
        assert lst[:] == [1, "data", "data"]
        other = m.Queue()  # (q itself: the killed client's get may still wait in the server)
        other.put("still served")
        assert other.get(timeout=T) == "still served"


# -- get_server().serve_forever() ------------------------------------------------------

SERVED = []


def serve_forever_here(mgrs_name, address):
    mgrs = importlib.import_module(mgrs_name)

    class S(mgrs.BaseManager):
        pass
    S.register("get_list", callable=lambda: SERVED)
    S(address=address, authkey=b"served").get_server().serve_forever()


def connect_when_up(c):
    """c.connect(), once the server (starting in a child) listens."""
    deadline = time.monotonic() + T
    while True:
        try:
            return c.connect()
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_get_server_serve_forever(mp, mgrs, tmp_path):
    address = str(tmp_path / "served")
    p = mp.Process(target=serve_forever_here, args=(mgrs.__name__, address))
    p.start()
    try:
        class C(mgrs.BaseManager):
            pass
        C.register("get_list")
        c = C(address=address, authkey=b"served")
        connect_when_up(c)
        lst = c.get_list()
        lst.append("served")
        assert lst._getvalue() == ["served"]
        assert isinstance(mgrs.BaseManager(address=("127.0.0.1", 0)).get_server().address, tuple)
    finally:
        p.terminate()
        p.join(T)


def test_serve_forever_ends_on_a_clients_shutdown(cmp, tmp_path):
    from cmultiprocessing import managers
    address = str(tmp_path / "served")
    p = cmp.Process(target=serve_forever_here, args=(managers.__name__, address))
    p.start()
    try:
        c = managers.BaseManager(address=address, authkey=b"served")
        connect_when_up(c)
        c._call_server("shutdown")
        p.join(T)
        assert p.exitcode == 0
    finally:
        p.terminate()
        p.join(T)


# -- Ctrl-C in a blocked proxy call -------------------------------------------------------

def test_ctrl_c_in_a_blocked_proxy_call(mp):
    with mp.Manager() as m:
        q = m.Queue()
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                q.get(timeout=T)
        finally:
            timer.cancel()
        assert time.monotonic() - t0 < 5


# -- beyond the stdlib ---------------------------------------------------------------------

def test_a_killed_manager_fails_fast(cmp):
    from cmultiprocessing import managers
    m = cmp.Manager()
    lst = m.list([1])
    q = m.Queue()
    os.kill(m._process.pid, signal.SIGKILL)
    m.join(T)
    t0 = time.monotonic()
    with pytest.raises(managers.ManagerGoneError) as info:
        lst.append(2)
    assert isinstance(info.value, ConnectionError)
    assert m.address in str(info.value) or repr(m.address) in str(info.value)
    with pytest.raises(ConnectionError):
        lst.append(3)
    with pytest.raises(ConnectionError):
        q.get(timeout=1)
    assert time.monotonic() - t0 < 2
    m.shutdown()


def blocked_get(q, result):
    try:
        q.get()
    except ConnectionError as e:
        result.put(type(e).__name__)


def test_a_manager_killed_under_a_blocked_call(cmp):
    m = cmp.Manager()
    q = m.Queue()
    result = cmp.Queue()
    p = cmp.Process(target=blocked_get, args=(q, result))
    p.start()
    time.sleep(0.3)
    os.kill(m._process.pid, signal.SIGKILL)
    assert result.get(timeout=5) == "ManagerGoneError"
    p.join(T)
    m.shutdown()


def test_uses_the_mailbox_on_this_machine(cmp):
    with cmp.Manager() as m:
        lst = m.list()
        assert lst._channel.is_mailbox()


def test_what_312_to_314_added(cmp):
    with cmp.Manager() as m:
        s = m.set([1, 2])
        s.add(3)
        assert 3 in s and len(s) == 3
        s |= {4}
        assert sorted(s._getvalue()) == [1, 2, 3, 4]
        d = m.dict(a=1)
        assert d | {"b": 2} == {"a": 1, "b": 2}
        d |= {"c": 3}
        assert d.copy() == {"a": 1, "c": 3}
        lst = m.list([1, 2])
        assert lst.copy() == [1, 2]
        lst.clear()
        assert len(lst) == 0


def test_refcounts_drop_with_the_proxies(cmp):
    import gc
    with cmp.Manager() as m:
        base = m._number_of_objects()
        lst = m.list()
        d = m.dict()
        assert m._number_of_objects() == base + 2
        del lst, d
        gc.collect()
        assert m._number_of_objects() == base


# -- the stdlib's wire protocol, both ways -------------------------------------------------

def serve_shared_dict(mgrs, shared):
    class Server(mgrs.BaseManager):
        pass
    Server.register("get_dict", callable=lambda: shared, proxytype=mgrs.DictProxy)
    Server.register("Counter", Counter)
    return Server(address=("127.0.0.1", 0), authkey=b"wire")


def client_of(mgrs, address):
    class Client(mgrs.BaseManager):
        pass
    Client.register("get_dict", proxytype=mgrs.DictProxy)
    Client.register("Counter")
    c = Client(address=address, authkey=b"wire")
    c.connect()
    return c


def use_remote(client_mgrs, c):
    d = c.get_dict()
    d["x"] = 1
    d.update(y=2)
    assert d["x"] == 1 and len(d) == 2 and sorted(d.keys()) == ["x", "y"]
    with pytest.raises(KeyError):
        d["missing"]
    k = c.Counter(3)
    assert k.add() == 4 and k.add(k=2) == 6
    with pytest.raises(client_mgrs.RemoteError):
        k._callmethod("nonexistent")
    assert str(d) in ("{'x': 1, 'y': 2}", "{'y': 2, 'x': 1}")
    return d


@pytest.mark.parametrize("server_side", ["stdlib server, our client",
                                         "our server, stdlib client"])
def test_remote_manager_speaks_the_stdlib_protocol(cmp, server_side):
    import gc
    import multiprocessing.managers as std
    from cmultiprocessing import managers as ours
    server_mgrs, client_mgrs = (std, ours) if server_side.startswith("stdlib") else (ours, std)
    with serve_shared_dict(server_mgrs, {}) as srv:
        c = client_of(client_mgrs, srv.address)
        d = use_remote(client_mgrs, c)
        assert srv.get_dict()._getvalue() == {"x": 1, "y": 2}
        del d
        gc.collect()


def xml_putter(mgrs_name, address, values):
    mgrs = importlib.import_module(mgrs_name)

    class Client(mgrs.BaseManager):
        pass
    Client.register("get_queue")
    c = Client(address=address, authkey=b"xml", serializer="xmlrpclib")
    c.connect()
    c.get_queue().put(tuple(values))


def test_xmlrpclib_serializer(mp, mgrs):
    import queue
    shared = queue.Queue()

    class Server(mgrs.BaseManager):
        pass
    Server.register("get_queue", callable=lambda: shared)
    values = ["hello", None, True, 2.25, "h\xe4", b"bytes"]
    with Server(address=("127.0.0.1", 0), authkey=b"xml", serializer="xmlrpclib", ctx=mp) as m:
        run_children(mp, xml_putter, (mgrs.__name__, m.address, values))
        q = m.get_queue()
        assert q.get(timeout=T) == values  # XML-RPC has no tuples: a list
        with pytest.raises(Exception):
            q.put(time.sleep)  # not marshallable


def test_our_client_on_a_stdlib_unix_manager(cmp):
    import multiprocessing
    from cmultiprocessing import managers as ours
    with multiprocessing.get_context("fork").Manager() as std_mgr:
        lst = std_mgr.list([1])
        c = ours.SyncManager(address=std_mgr.address, authkey=multiprocessing.current_process().authkey)
        c.connect()
        mine = c.list([1, 2])
        mine.append(3)
        assert mine[:] == [1, 2, 3] and len(mine) == 3
        assert not mine._channel.is_mailbox()
        lst.append(2)
        assert lst[:] == [1, 2]


def server_threads(m):
    return len(os.listdir(f"/proc/{m._process.pid}/task"))


def test_a_thread_that_ends_lets_go_of_its_connection(cmp):
    with cmp.Manager() as m:
        lst = m.list()
        lst.append(0)
        base = server_threads(m)
        threads = [threading.Thread(target=lst.append, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T)
        assert len(lst) == 21
        deadline = time.monotonic() + T
        while server_threads(m) > base and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server_threads(m) == base


def start_manager_and_die(conn):
    import cmultiprocessing
    m = cmultiprocessing.Manager()
    m.list()
    conn.send(m._process.pid)
    os._exit(0)  # no shutdown


def test_the_server_dies_with_its_starter(cmp):
    a, b = cmp.Pipe()
    p = cmp.Process(target=start_manager_and_die, args=(b,))
    p.start()
    assert a.poll(T)
    server = a.recv()
    p.join(T)
    deadline = time.monotonic() + T
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{server}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    break  # dead, not yet reaped by init
        except FileNotFoundError:
            break  # dead and reaped
        time.sleep(0.02)
    assert time.monotonic() < deadline
