/* CPU hogs for the C benchmarks' --load N: N forked busy loops at the
 * default nice level, as a user's other jobs would be. They die with the
 * benchmark (PR_SET_PDEATHSIG), however it ends. */
#ifndef BENCH_HOGS_H
#define BENCH_HOGS_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HOGS_MAX 64

struct hogs {
    int n;
    pid_t pid[HOGS_MAX];
};

static inline void hogs_start(struct hogs *h, int n)
{
    h->n = n < HOGS_MAX ? n : HOGS_MAX;
    for (int i = 0; i < h->n; i++) {
        h->pid[i] = fork();
        if (h->pid[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (volatile unsigned long x = 0;; x++) {
            }
        }
    }
    if (h->n) {
        struct timespec settle = {0, 50 * 1000 * 1000};
        nanosleep(&settle, NULL);
    }
}

static inline void hogs_stop(struct hogs *h)
{
    for (int i = 0; i < h->n; i++)
        kill(h->pid[i], SIGKILL);
    for (int i = 0; i < h->n; i++)
        waitpid(h->pid[i], NULL, 0);
    h->n = 0;
}

/* --load N from argv (0 when absent); exits on anything else. */
static inline int hogs_parse_load(int argc, char **argv)
{
    int load = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--load") == 0 && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 0 || v > HOGS_MAX) {
                fprintf(stderr, "--load: a number of hogs, 0 to %d\n", HOGS_MAX);
                exit(2);
            }
            load = (int)v;
        } else {
            fprintf(stderr, "usage: %s [--load N]\n", argv[0]);
            exit(2);
        }
    }
    return load;
}

#endif /* BENCH_HOGS_H */
