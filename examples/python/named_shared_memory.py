"""Sharing memory by name: workers attach a segment the parent created, as
numpy programs share an array (np.ndarray(shape, dtype, buffer=shm.buf)).

Runs unchanged on the standard library: replace the imports below with
``import multiprocessing`` and ``from multiprocessing import shared_memory``.
Beyond it, on cmultiprocessing the segments are removed even if the whole
program, resource tracker included, is killed with SIGKILL.
"""
import cmultiprocessing as multiprocessing
from cmultiprocessing import shared_memory


def fill(name, start, stop):
    shm = shared_memory.SharedMemory(name)  # attached by name
    shm.buf[start:stop] = bytes(range(start, stop))
    shm.close()


def report(results):
    results[1] = results[0] * 2  # the list arrives attached by name too
    results[2] = "done"


if __name__ == "__main__":
    shm = shared_memory.SharedMemory(create=True, size=8)
    workers = [multiprocessing.Process(target=fill, args=(shm.name, i, i + 4)) for i in (0, 4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    results = shared_memory.ShareableList([sum(shm.buf), 0, "pending"])
    w = multiprocessing.Process(target=report, args=(results,))
    w.start()
    w.join()
    print(list(shm.buf), list(results))
    for segment in (shm, results.shm):
        segment.close()
        segment.unlink()
