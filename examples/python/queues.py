"""Producer/consumer (named queues.py, not queue.py, so that it does not
shadow the standard queue module when run as a script): two producers put
numbers on a Queue, one consumer adds them up; None tells the consumer that a producer is done."""
import multiprocessing

N = 100  # numbers per producer


def produce(q, start):
    for i in range(start, start + N):
        q.put(i * i)
    q.put(None)


def consume(q, results, producers):
    count = total = finished = 0
    while finished < producers:
        item = q.get()
        if item is None:
            finished += 1
        else:
            count += 1
            total += item
    results.put((count, total))


if __name__ == "__main__":
    q, results = multiprocessing.Queue(), multiprocessing.Queue()
    consumer = multiprocessing.Process(target=consume, args=(q, results, 2))
    producers = [multiprocessing.Process(target=produce, args=(q, k * N)) for k in range(2)]
    for p in [consumer] + producers:
        p.start()
    count, total = results.get(timeout=60)
    for p in [consumer] + producers:
        p.join()
    print(f"consumed {count} items, sum of squares {total}")
    raise SystemExit(max(p.exitcode for p in [consumer] + producers))
