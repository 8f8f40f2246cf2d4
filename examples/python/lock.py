"""Three processes take turns with one lock; each says when it has it."""
import multiprocessing


def work(lock):
    with lock:
        print(f"{multiprocessing.current_process().name} acquired the lock", flush=True)


if __name__ == "__main__":
    lock = multiprocessing.Lock()
    procs = [multiprocessing.Process(target=work, args=(lock,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    raise SystemExit(max(p.exitcode for p in procs))
