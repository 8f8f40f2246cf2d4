"""shared_memory: SharedMemory, ShareableList, SharedMemoryManager and the
resource tracker. The standard behaviour is differential (both modules);
what goes beyond the standard library (interop by name, SIGKILL of a whole
program, no false "leaked" warnings, any umask) is tested on ours alone."""
import importlib
import os
import pickle
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import IMPLEMENTATIONS, PKG_DIR

PKG = os.path.abspath(PKG_DIR)


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    return request.param


@pytest.fixture
def sm(impl):
    return importlib.import_module(impl + ".shared_memory")


@pytest.fixture
def osm():
    return importlib.import_module("cmultiprocessing.shared_memory")


@pytest.fixture
def ssm():
    return importlib.import_module("multiprocessing.shared_memory")


def exists(name):
    return os.path.exists("/dev/shm/" + name)


def wait_gone(name, timeout=10):
    deadline = time.monotonic() + timeout
    while exists(name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def run(code, timeout=60, **kw):
    """Runs code in a new interpreter that imports ours from PKG."""
    env = dict(os.environ, PYTHONPATH=PKG)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)


@pytest.fixture
def segments():
    """Names to unlink after the test, whatever happened."""
    names = []
    yield names
    for name in names:
        try:
            os.unlink("/dev/shm/" + name)
        except FileNotFoundError:
            pass


# ---- SharedMemory: the standard behaviour ---------------------------------

def test_create_attach_and_properties(sm):
    a = sm.SharedMemory(create=True, size=100)
    try:
        assert a.name.startswith("psm_") and len(a.name) <= 14
        assert a.size == 100 and len(a.buf) == 100 and a.buf[99] == 0
        assert repr(a) == "SharedMemory(%r, size=100)" % a.name
        b = sm.SharedMemory(a.name)
        assert b.size == 100
        b.buf[:5] = b"hello"
        assert bytes(a.buf[:5]) == b"hello"
        b.close()
        assert b.buf is None
        b.close()  # twice is fine
    finally:
        a.close()
        a.unlink()
    assert not exists(a.name)


def test_named_create_and_size_ignored_on_attach(sm, segments):
    name = "cmp_test_%d_named" % os.getpid()
    segments.append(name)
    a = sm.SharedMemory(name, create=True, size=10)
    b = sm.SharedMemory(name, size=5000)
    assert a.name == b.name == name and b.size == 10
    b.close()
    a.close()
    a.unlink()


def test_errors(sm, segments):
    name = "cmp_test_%d_errors" % os.getpid()
    segments.append(name)
    with pytest.raises(ValueError):
        sm.SharedMemory(create=True, size=0)
    with pytest.raises(ValueError):
        sm.SharedMemory(create=True, size=-1)
    with pytest.raises(ValueError):
        sm.SharedMemory()
    with pytest.raises(FileNotFoundError) as info:
        sm.SharedMemory(name)
    assert info.value.filename == "/" + name
    a = sm.SharedMemory(name, create=True, size=10)
    with pytest.raises(FileExistsError):
        sm.SharedMemory(name, create=True, size=10)
    a.close()
    a.unlink()
    with pytest.raises(FileNotFoundError):
        a.unlink()


def test_close_with_a_view_out_raises_buffer_error(sm):
    a = sm.SharedMemory(create=True, size=16)
    view = a.buf[2:6]
    with pytest.raises(BufferError):
        a.close()
    view.release()
    a.close()
    a.unlink()


def test_pickle_and_child_by_name(sm, mp):
    a = sm.SharedMemory(create=True, size=64)
    try:
        b = pickle.loads(pickle.dumps(a))
        assert (b.name, b.size) == (a.name, a.size)
        b.close()
        p = mp.Process(target=_child_write, args=(a,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert bytes(a.buf[:5]) == b"child"
    finally:
        a.close()
        a.unlink()


def _child_write(shm):
    shm.buf[:5] = b"child"
    shm.close()


def mode_under_umask(sm, mask):
    """The mode of a segment created under umask mask."""
    old = os.umask(mask)
    try:
        a = sm.SharedMemory(create=True, size=8)
    finally:
        os.umask(old)
    try:
        return stat.S_IMODE(os.stat("/dev/shm/" + a.name).st_mode)
    finally:
        a.close()
        a.unlink()


def test_umask_0_gives_0600(sm):
    assert mode_under_umask(sm, 0) == 0o600


def test_leaked_segment_is_removed_when_the_program_ends_with_a_warning(impl):
    r = run(f"""
        import {impl}.shared_memory as sm
        a = sm.SharedMemory(create=True, size=10)
        print(a.name)
    """)
    assert r.returncode == 0, r.stderr
    assert wait_gone(r.stdout.strip())
    assert "leaked shared_memory" in r.stderr


def test_unlinked_segment_gives_no_warning(impl):
    r = run(f"""
        import {impl}.shared_memory as sm
        a = sm.SharedMemory(create=True, size=10)
        a.close()
        a.unlink()
    """)
    assert r.returncode == 0, r.stderr
    assert "leaked" not in r.stderr


def test_subclass_with_its_own_init(sm):
    class Mine(sm.SharedMemory):
        def __init__(self, size, tag):
            super().__init__(create=True, size=size)
            self.tag = tag
    a = Mine(32, "x")
    try:
        assert a.tag == "x" and a.size == 32
        assert repr(a).startswith("Mine(")
    finally:
        a.close()
        a.unlink()


# ---- ShareableList --------------------------------------------------------

def test_shareable_list(sm):
    sl = sm.ShareableList([1, 2.5, True, "héllo", b"by", None])
    try:
        assert list(sl) == [1, 2.5, True, "héllo", b"by", None]
        assert len(sl) == 6
        assert sl.format == "qdxxxxxxx?8s8sxxxxxx?x"
        assert sl[-1] is None and sl[2] is True
        sl[0] = "xy"
        sl[3] = 99
        sl[5] = 1.5
        assert list(sl) == ["xy", 2.5, True, 99, b"by", 1.5]
        assert sl.count(2.5) == 1 and sl.index(b"by") == 4
        with pytest.raises(ValueError):
            sl.index(12345)
        with pytest.raises(ValueError):
            sl[4] = b"123456789"
        with pytest.raises(IndexError):
            sl[6]
        with pytest.raises(IndexError):
            sl[6] = 1
        with pytest.raises(KeyError):
            sl[0] = [1]
        with pytest.raises(KeyError):
            sl[0] = False.__class__  # a type has no format
        with pytest.raises(struct.error):
            sl[0] = 2 ** 64
        with pytest.raises(TypeError):
            sl[0:2]
        sl[0] = 2 ** 63 - 1
        assert sl[0] == 2 ** 63 - 1
        sl[0] = "xy"
        other = sm.ShareableList(name=sl.shm.name)
        assert list(other) == list(sl)
        other.shm.close()
        assert repr(sl) == "ShareableList(%r, name=%r)" % (list(sl), sl.shm.name)
        again = pickle.loads(pickle.dumps(sl))
        assert list(again) == list(sl)
        again.shm.close()
        again = sm.ShareableList(name=sl.shm.name)
        again.shm.close()
        with pytest.raises(TypeError):
            again[0]
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shareable_list_empty_and_child(sm, mp):
    empty = sm.ShareableList()
    assert len(empty) == 0 and list(empty) == []
    empty.shm.close()
    empty.shm.unlink()
    sl = sm.ShareableList([0, "abc"])
    try:
        p = mp.Process(target=_child_list, args=(sl,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert list(sl) == [42, "z"]
    finally:
        sl.shm.close()
        sl.shm.unlink()


def _child_list(sl):
    sl[0] = 42
    sl[1] = "z"
    sl.shm.close()


# ---- SharedMemoryManager --------------------------------------------------

def test_shared_memory_manager(impl):
    managers = importlib.import_module(impl + ".managers")
    with managers.SharedMemoryManager() as smm:
        a = smm.SharedMemory(100)
        sl = smm.ShareableList([1, "two"])
        assert a.size == 100 and list(sl) == [1, "two"]
        names = [a.name, sl.shm.name]
        assert all(exists(n) for n in names)
    assert not any(exists(n) for n in names)
    with pytest.raises(Exception):
        smm.SharedMemory(10)


# ---- beyond the standard library: ours only -------------------------------

def test_interop_both_directions(osm, ssm):
    # ours creates and the stdlib attaches, then the other way round
    for creator, attacher, size, i, v in ((osm, ssm, 32, 0, 7), (ssm, osm, 16, 1, 9)):
        made = creator.SharedMemory(create=True, size=size)
        attached = attacher.SharedMemory(made.name)
        attached.buf[i] = v
        assert made.buf[i] == v and attached.size == size
        attached.close()
        made.close()
        made.unlink()


def test_shareable_list_interop_both_directions(osm, ssm):
    for make, attach in ((osm, ssm), (ssm, osm)):
        a = make.ShareableList([1, "abc", None, 2.0, b"x"])
        b = attach.ShareableList(name=a.shm.name)
        assert list(b) == [1, "abc", None, 2.0, b"x"] and b.format == a.format
        b[1] = 5
        b[2] = "hi"
        assert list(a) == [1, 5, "hi", 2.0, b"x"]
        b.shm.close()
        a.shm.close()
        a.shm.unlink()
    # the very same bytes in the segment
    a = osm.ShareableList([1, "abc", True, None])
    b = ssm.ShareableList([1, "abc", True, None])
    try:
        assert bytes(a.shm.buf) == bytes(b.shm.buf)
    finally:
        for x in (a, b):
            x.shm.close()
            x.shm.unlink()


def test_track_keyword_on_every_version(osm, segments):
    r = run("""
        from cmultiprocessing import shared_memory as sm
        a = sm.SharedMemory(create=True, size=10, track=False)
        print(a.name)
    """)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    segments.append(name)
    time.sleep(0.2)
    assert exists(name), "an untracked segment outlives its program, as in 3.13"
    assert "leaked" not in r.stderr
    a = osm.SharedMemory(name, track=False)
    a.close()
    a.unlink()


def test_any_umask_gives_0600(osm):
    # the stdlib's would be 0000 under 0777: its creator could not reopen it
    for mask in (0o777, 0o077, 0o022):
        assert mode_under_umask(osm, mask) == 0o600


KILLED_PROGRAM = """
    import sys, time
    import cmultiprocessing as mp
    from cmultiprocessing import shared_memory as sm
    def child():
        s = sm.SharedMemory(create=True, size=4096)
        l = sm.ShareableList([1, 2])
        print(s.name, l.shm.name, flush=True)
        time.sleep(60)
    if __name__ == "__main__":
        s = sm.SharedMemory(create=True, size=4096)
        print(s.name, flush=True)
        mp.Process(target=child).start()
        time.sleep(60)
"""


def start_killed_program(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(KILLED_PROGRAM))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=PKG), start_new_session=True)
    names = p.stdout.readline().split() + p.stdout.readline().split()
    return p, names


def group_alive(pgid):
    """Whether a process of the group still runs (zombies do not count:
    what they held is released already)."""
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            return True
    return False


def kill_tree(p):
    os.killpg(p.pid, signal.SIGKILL)  # the program, its child and its watcher
    p.wait(10)
    p.stdout.close()
    # SIGKILL ends the others asynchronously
    deadline = time.monotonic() + 10
    while group_alive(p.pid):
        assert time.monotonic() < deadline, "the killed program's processes live on"
        time.sleep(0.01)


def test_sigkill_of_the_whole_program_leaves_nothing(tmp_path, segments):
    p, names = start_killed_program(tmp_path)
    segments.extend(names)
    assert len(names) == 3 and all(exists(n) for n in names)
    kill_tree(p)
    # the next program that creates a segment sweeps the dead one's
    r = run("""
        from cmultiprocessing import shared_memory as sm
        a = sm.SharedMemory(create=True, size=10)
        a.close()
        a.unlink()
    """)
    assert r.returncode == 0, r.stderr
    assert not any(exists(n) for n in names)


def test_sweep_keeps_what_a_living_process_maps(tmp_path, osm, segments):
    from cmultiprocessing import resource_tracker
    p, names = start_killed_program(tmp_path)
    segments.extend(names)
    held = osm.SharedMemory(names[0], track=False)
    kill_tree(p)
    r = subprocess.run([sys.executable, "-m", "cmultiprocessing.resource_tracker"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=PKG))
    assert r.returncode == 0 and "removed" in r.stdout, r.stderr
    assert exists(names[0]), "removed while this process maps it"
    assert not exists(names[1])
    assert bytes(held.buf[:4]) == b"\0\0\0\0"
    held.close()
    resource_tracker.sweep()
    assert not exists(names[0])


def test_no_false_leak_warning_for_a_segment_still_in_use(osm):
    a = osm.SharedMemory(create=True, size=10)
    try:
        # another program attaches (tracked) and ends without closing
        r = run(f"""
            from cmultiprocessing import shared_memory as sm
            b = sm.SharedMemory({a.name!r})
            b.buf[0] = 5
        """)
        assert r.returncode == 0, r.stderr
        assert "leaked" not in r.stderr
        time.sleep(0.2)
        assert exists(a.name) and a.buf[0] == 5, "the attacher's end removed it"
    finally:
        a.close()
        a.unlink()


def test_killed_watcher_alone_leaves_nothing(segments):
    r = run("""
        import os, signal
        from cmultiprocessing import shared_memory as sm, resource_tracker
        a = sm.SharedMemory(create=True, size=10)
        os.kill(resource_tracker._resource_tracker._pid, signal.SIGKILL)
        print(a.name)
    """)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    segments.append(name)
    from cmultiprocessing import resource_tracker
    # the watcher dies asynchronously, holding what it inherited till then
    deadline = time.monotonic() + 10
    while exists(name) and time.monotonic() < deadline:
        resource_tracker.sweep()
        time.sleep(0.01)
    assert not exists(name)


def test_resource_tracker_api(osm):
    from cmultiprocessing import resource_tracker
    resource_tracker.ensure_running()
    fd = resource_tracker.getfd()
    assert fd >= 0 and resource_tracker._resource_tracker._fd == fd
    a = osm.SharedMemory(create=True, size=10, track=False)
    assert a._name == "/" + a.name  # what programs pass to unregister
    resource_tracker.register(a._name, "shared_memory")
    resource_tracker.unregister(a._name, "shared_memory")
    resource_tracker.register("/" + a.name, "noop")
    with pytest.raises(ValueError):
        resource_tracker.register("/" + a.name, "nonsense")
    a.close()
    a.unlink()


def test_resource_tracker_names_and_limits(impl):
    rt = importlib.import_module(impl + ".resource_tracker")
    assert {"noop", "shared_memory"} <= set(rt._CLEANUP_FUNCS)
    with pytest.raises(ValueError):
        rt.register("a" * 500, "shared_memory")


def test_a_killed_watcher_is_replaced_with_a_warning():
    r = run("""
        import os, signal, time, warnings
        from cmultiprocessing import shared_memory as sm, resource_tracker as rt
        a = sm.SharedMemory(create=True, size=10)
        old = rt._resource_tracker._pid
        os.kill(old, signal.SIGKILL)
        os.waitpid(old, 0)  # a child of ours, as the stdlib's tracker is
        assert not rt._resource_tracker._check_alive()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            rt.ensure_running()
        assert "resource_tracker: process died" in str(w[0].message), w
        assert rt._resource_tracker._pid not in (None, old)
        assert rt._resource_tracker._check_alive()
        print(a.name)
    """)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    assert wait_gone(name), "the new watcher did not remove the leftover"
    assert "leaked shared_memory" in r.stderr


ADOPTER = """
    import sys
    from cmultiprocessing import shared_memory as sm, resource_tracker as rt
    if len(sys.argv) > 1:
        rt._resource_tracker._fd = int(sys.argv[1])  # as a spawned child does
    a = sm.SharedMemory(create=True, size=10)
    print(a.name)
"""


def test_an_exec_child_given_the_fd_joins_the_program(segments):
    from cmultiprocessing import resource_tracker as rt
    fd = rt.getfd()
    env = dict(os.environ, PYTHONPATH=PKG)
    for joins in (True, False):
        args = [sys.executable, "-c", textwrap.dedent(ADOPTER)] + ([str(fd)] if joins else [])
        r = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env,
                           pass_fds=[fd] if joins else [])
        assert r.returncode == 0, r.stderr
        name = r.stdout.strip()
        segments.append(name)
        if joins:
            # its program (this one) lives on: the segment stays, as the
            # stdlib's tracker keeps what a spawned child registered
            time.sleep(0.2)
            assert exists(name) and "leaked" not in r.stderr
            os.unlink("/dev/shm/" + name)
        else:
            assert wait_gone(name) and "leaked shared_memory" in r.stderr


def test_runner_resolves_the_submodules(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing.shared_memory as sm
        import multiprocessing.resource_tracker as rt
        from multiprocessing.managers import SharedMemoryManager
        print(sm.SharedMemory.__module__, rt.__name__, SharedMemoryManager.__module__)
        with SharedMemoryManager() as smm:
            s = smm.SharedMemory(10)
            print(type(s).__module__)
    """))
    r = subprocess.run([sys.executable, "-m", "cmultiprocessing", str(script)],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=PKG))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["cmultiprocessing.shared_memory",
                                "cmultiprocessing.resource_tracker",
                                "cmultiprocessing.managers", "cmultiprocessing.shared_memory"]
