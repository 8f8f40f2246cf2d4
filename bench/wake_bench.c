/* Wake-up cost between two processes: a ping-pong through each libcmp
 * primitive, next to the same ping-pong on a bare futex (sleep at once,
 * never spin: the kernel's floor for a hand-off that sleeps) and on a bare
 * busy wait (spin forever: the floor when both parties own a CPU). Run
 * under `--load N` CPU hogs this tells what a wake-up can cost on a busy
 * machine, whatever the policy (`make bench-c LOAD=N`).
 *
 * Per round trip: wall time, CPU time of both parties together, and
 * context switches (voluntary + involuntary, both parties). */
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cmp.h"
#include "hogs.h"

#define MIN_SECONDS 0.5

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(const struct rusage *ru)
{
    return (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec / 1e6 +
           (double)ru->ru_stime.tv_sec + (double)ru->ru_stime.tv_usec / 1e6;
}

/* One direction of the ping-pong: a sequence number the sender bumps. */
struct channel {
    _Atomic uint32_t seq;
    _Atomic uint32_t sleeping;
    cmp_sem_t sem;
    cmp_event_t event;
    cmp_lock_t lock;
    cmp_cond_t cond;
    char pad[64];
};

struct shared {
    struct channel ch[2]; /* 0: parent -> child, 1: child -> parent */
    _Atomic int stop;
    uint32_t turn; /* the Condition ping-pong's state, under ch[0].lock */
};

enum mode { FUTEX, SPIN, SOCKET, SEM, EVENT, COND };

/* SOCKET: a 16-byte message each way over a socketpair, blocking reads:
 * the floor under a Pipe round trip that sleeps. */
static int sock[2];
static char msg[16];

static void futex_post(struct channel *c)
{
    atomic_fetch_add(&c->seq, 1);
    if (atomic_load(&c->sleeping))
        syscall(SYS_futex, &c->seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static void futex_wait_for(struct channel *c, uint32_t want)
{
    uint32_t v;
    while ((v = atomic_load(&c->seq)) != want) {
        atomic_store(&c->sleeping, 1);
        if (atomic_load(&c->seq) == v)
            syscall(SYS_futex, &c->seq, FUTEX_WAIT, v, NULL, NULL, 0);
        atomic_store(&c->sleeping, 0);
    }
}

static void spin_wait_for(struct channel *c, uint32_t want)
{
    while (atomic_load_explicit(&c->seq, memory_order_acquire) != want)
        __builtin_ia32_pause();
}

static void post(struct shared *s, enum mode m, int dir)
{
    struct channel *c = &s->ch[dir];
    switch (m) {
    case FUTEX:
        futex_post(c);
        break;
    case SPIN:
        atomic_fetch_add_explicit(&c->seq, 1, memory_order_release);
        break;
    case SEM:
        cmp_sem_release(&c->sem);
        break;
    case EVENT:
        cmp_event_set(&c->event);
        break;
    case SOCKET:
        if (write(sock[dir == 0 ? 0 : 1], msg, sizeof msg) != sizeof msg)
            _exit(3);
        break;
    case COND:
        break; /* see cond_turn() */
    }
}

static void wait_for(struct shared *s, enum mode m, int dir, uint32_t i)
{
    struct channel *c = &s->ch[dir];
    switch (m) {
    case FUTEX:
        futex_wait_for(c, i);
        break;
    case SPIN:
        spin_wait_for(c, i);
        break;
    case SEM:
        cmp_sem_acquire(&c->sem, NULL);
        break;
    case EVENT:
        cmp_event_wait(&c->event, NULL);
        cmp_event_clear(&c->event);
        break;
    case SOCKET: {
        char buf[sizeof msg];
        if (read(sock[dir == 0 ? 1 : 0], buf, sizeof buf) != sizeof buf)
            _exit(3);
        break;
    }
    case COND:
        break;
    }
}

/* A Condition ping-pong: under one lock, set `turn` for the other side,
 * notify, wait until it is ours again. */
static void cond_turn(struct shared *s, uint32_t mine, uint32_t other)
{
    s->turn = other;
    cmp_cond_notify_lock(&s->ch[0].cond, &s->ch[0].lock, 1);
    while (s->turn != mine && !atomic_load(&s->stop))
        cmp_cond_wait_lock(&s->ch[0].cond, &s->ch[0].lock, NULL);
}

static void child(struct shared *s, enum mode m)
{
    if (m == COND) {
        cmp_lock_acquire(&s->ch[0].lock, NULL);
        while (s->turn != 1)
            cmp_cond_wait_lock(&s->ch[0].cond, &s->ch[0].lock, NULL);
        while (!atomic_load(&s->stop))
            cond_turn(s, 1, 2);
        s->turn = 2;
        cmp_cond_notify_all(&s->ch[0].cond);
        cmp_lock_release(&s->ch[0].lock);
        _exit(0);
    }
    for (uint32_t i = 1;; i++) {
        wait_for(s, m, 0, i);
        int stop = atomic_load(&s->stop);
        post(s, m, 1);
        if (stop)
            _exit(0);
    }
}

struct result {
    double us, cpu_us, switches;
};

static struct result pingpong(enum mode m)
{
    struct shared *s =
        mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    for (int d = 0; d < 2; d++) {
        cmp_sem_init(&s->ch[d].sem, 0, CMP_SEM_VALUE_MAX);
        cmp_event_init(&s->ch[d].event);
        cmp_lock_init(&s->ch[d].lock);
        cmp_cond_init(&s->ch[d].cond);
    }
    if (m == SOCKET && socketpair(AF_UNIX, SOCK_STREAM, 0, sock) < 0) {
        perror("socketpair");
        exit(1);
    }
    struct rusage before, after, kid;
    getrusage(RUSAGE_SELF, &before);
    pid_t pid = fork();
    if (pid == 0)
        child(s, m);
    long n = 0;
    double t0 = now(), t;
    if (m == COND)
        cmp_lock_acquire(&s->ch[0].lock, NULL);
    for (uint32_t i = 1;; i++) {
        if (m == COND) {
            cond_turn(s, 2, 1);
        } else {
            post(s, m, 0);
            wait_for(s, m, 1, i);
        }
        n++;
        if ((n & 255) == 0 && (t = now() - t0) >= MIN_SECONDS)
            break;
    }
    atomic_store(&s->stop, 1);
    if (m == COND) {
        s->turn = 1;
        cmp_cond_notify_all(&s->ch[0].cond);
        cmp_lock_release(&s->ch[0].lock);
    } else {
        post(s, m, 0); /* the child sees stop after this wait, answers, exits */
    }
    int status;
    waitpid(pid, &status, 0);
    getrusage(RUSAGE_SELF, &after);
    getrusage(RUSAGE_CHILDREN, &kid); /* this child's, plus earlier ones' */
    static double kid_cpu_before, kid_sw_before;
    double kid_cpu = cpu_seconds(&kid) - kid_cpu_before;
    double kid_sw = (double)(kid.ru_nvcsw + kid.ru_nivcsw) - kid_sw_before;
    kid_cpu_before = cpu_seconds(&kid);
    kid_sw_before = (double)(kid.ru_nvcsw + kid.ru_nivcsw);
    double cpu = cpu_seconds(&after) - cpu_seconds(&before) + kid_cpu;
    double sw =
        (double)(after.ru_nvcsw + after.ru_nivcsw - before.ru_nvcsw - before.ru_nivcsw) + kid_sw;
    munmap(s, sizeof *s);
    if (m == SOCKET) {
        close(sock[0]);
        close(sock[1]);
    }
    return (struct result){t / (double)n * 1e6, cpu / (double)n * 1e6, sw / (double)n};
}

int main(int argc, char **argv)
{
    int load = hogs_parse_load(argc, argv);
    static const struct {
        enum mode m;
        const char *name;
    } rows[] = {
        {FUTEX, "bare futex, sleep at once (floor)"}, {SPIN, "bare busy wait, never sleep"},
        {SOCKET, "bare socketpair, blocking reads"},  {SEM, "cmp_sem ping-pong"},
        {EVENT, "cmp_event ping-pong (wait, clear)"}, {COND, "cmp_cond notify/wait ping-pong"},
    };
    printf("round trip between two processes, %d CPU hog%s running\n", load, load == 1 ? "" : "s");
    printf("%-36s %10s %12s %14s\n", "", "wall", "CPU (both)", "ctx switches");
    struct hogs h;
    hogs_start(&h, load);
    /* Off the record: the first ping-pong after the hogs start runs while
     * the scheduler still settles them (10x slower here at load 2). */
    pingpong(FUTEX);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        struct result r = pingpong(rows[i].m);
        printf("%-36s %7.2f us %9.2f us %14.2f\n", rows[i].name, r.us, r.cpu_us, r.switches);
        fflush(stdout);
    }
    hogs_stop(&h);
    return 0;
}
