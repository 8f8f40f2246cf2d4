"""Smoke test run by test_python_versions.py under other interpreters:
the main primitives across processes, with no pytest needed."""
import sys
sys.path.insert(0, sys.argv[1])
import cmultiprocessing as mp

class Point:
    pass

def work(v, a, lock, q=None):
    with lock:
        v.value += 1
    a[0] = 7

if __name__ == "__main__":
    v = mp.Value("i", 0); a = mp.Array("d", 3); lock = mp.Lock()
    ps = [mp.Process(target=work, args=(v, a, lock)) for _ in range(3)]
    for p in ps: p.start()
    for p in ps: p.join(10)
    assert v.value == 3 and a[0] == 7.0, (v.value, a[:])
    assert [p.exitcode for p in ps] == [0, 0, 0]
    e = mp.Event(); e.set(); assert e.wait(1)
    s = mp.BoundedSemaphore(2); s.acquire(); s.release()
    c = mp.Condition()
    with c: assert c.wait(0.01) is False
    b = mp.Barrier(1); assert b.wait(1) == 0
    r = mp.RLock()
    with r:
        with r: pass
    # a Connection and a socket through a queue and a connection (the
    # pickling of our transports, on this interpreter's _pickle)
    import copyreg, socket
    q = mp.Queue(); x, y = mp.Pipe(); q.put(y); y2 = q.get(timeout=10)
    y2.send("fd"); assert x.poll(10) and x.recv() == "fd"
    s1, s2 = socket.socketpair(); x.send(s1); s3 = y2.recv(); s3.sendall(b"k")
    assert s2.recv(1) == b"k"
    copyreg.pickle(Point, lambda p: (int, (5,))); q.put([Point()])
    assert q.get(timeout=10) == [5]
    print(sys.version.split()[0], "ok")
