"""Start a child process that greets, and wait for it."""
import multiprocessing


def greet():
    print(f"Hello from {multiprocessing.current_process().name}", flush=True)


if __name__ == "__main__":
    p = multiprocessing.Process(target=greet)
    p.start()
    p.join()
    raise SystemExit(p.exitcode)
