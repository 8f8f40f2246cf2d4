"""A manager process holds a list; three worker processes each append
"data" to it through their proxy, and the list has three items. Runs
unchanged on the standard library and, with
`python3 -m cmultiprocessing examples/python/manager.py`, on
cmultiprocessing. The C twin is examples/c/manager.c."""
from multiprocessing import Manager, Process


def work(shared):
    shared.append("data")


if __name__ == "__main__":
    with Manager() as manager:
        shared = manager.list()
        workers = [Process(target=work, args=(shared,)) for _ in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        print(shared)
