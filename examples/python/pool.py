"""A pool of five worker processes squares 1..5; map returns the results in
input order. Runs unchanged on the standard library and, with
`python3 -m cmultiprocessing examples/python/pool.py`, on cmultiprocessing.
The C twin is examples/c/pool.c."""
from multiprocessing import Pool


def square(x):
    return x * x


if __name__ == "__main__":
    with Pool(5) as pool:
        print(pool.map(square, [1, 2, 3, 4, 5]))
