"""Sharing a number and an array with a child process.

Runs unchanged on the standard library: replace the import below with
``import multiprocessing``.
"""
import cmultiprocessing as multiprocessing


def work(num, arr):
    num.value += 1
    arr[0] = 2


if __name__ == "__main__":
    num = multiprocessing.Value("i", 0)
    arr = multiprocessing.Array("i", [1, 2, 3])
    p = multiprocessing.Process(target=work, args=(num, arr))
    p.start()
    p.join()
    print(num.value, arr[:])
