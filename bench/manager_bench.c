/* Manager round trips: a client process calls a server process whose
 * handler answers at once (a request of 16 bytes, a reply of 8: the size of
 * a small pickled dict get), through the shared-memory mailbox and through
 * the socket (AF_UNIX, and TCP on loopback), at --load N CPU hogs. The
 * Python layer's target is a dict get+set at <= 0.05 x the stdlib's
 * 31-105 us, so the C round trip should stay near 1 us on an idle machine.
 * Also a 1 MiB and a 64 MiB request through the mailbox. */
#include "hogs.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmp.h"

static int answer(void *arg, uint64_t client, const void *req, size_t len,
                  cmp_manager_reply_t *reply)
{
    (void)arg;
    (void)client;
    (void)req;
    uint64_t v = len;
    memcpy(cmp_manager_reply_extend(reply, sizeof v), &v, sizeof v);
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Seconds per call of len bytes, the best of 3 runs of n calls. */
static double round_trip(cmp_manager_client_t *c, size_t len, long n)
{
    unsigned char *req = calloc(1, len);
    const void *reply;
    size_t rlen;
    for (long i = 0; i < n / 10 + 1; i++) /* warm up: spin budgets, pages */
        cmp_manager_call(c, req, len, &reply, &rlen, NULL);
    double best = 1e9;
    for (int run = 0; run < 3; run++) {
        double t0 = now();
        for (long i = 0; i < n; i++) {
            int rc = cmp_manager_call(c, req, len, &reply, &rlen, NULL);
            if (rc != 0 || rlen != 8) {
                fprintf(stderr, "call: %s\n", cmp_strerror(rc));
                exit(1);
            }
        }
        double t = (now() - t0) / (double)n;
        if (t < best)
            best = t;
    }
    free(req);
    return best;
}

static cmp_manager_client_t *client(const cmp_manager_process_t *p, unsigned flags)
{
    cmp_manager_client_t *c;
    struct timespec dl;
    cmp_deadline_after(5, &dl);
    int rc =
        cmp_manager_connect(&c, (const struct sockaddr *)&p->addr, p->addrlen, NULL, 0, flags, &dl);
    if (rc < 0) {
        fprintf(stderr, "connect: %s\n", cmp_strerror(rc));
        exit(1);
    }
    return c;
}

static void start(cmp_manager_process_t *p, const struct sockaddr *addr, socklen_t len)
{
    cmp_manager_options_t opt = {.handler = answer, .addr = addr, .addrlen = len};
    int rc = cmp_manager_start(p, &opt, 0);
    if (rc < 0) {
        fprintf(stderr, "start: %s\n", cmp_strerror(rc));
        exit(1);
    }
}

/* Seconds per start + shutdown of a server process, and per connect +
 * one call + disconnect of a mailbox client. */
static void lifecycle(double *start_stop, double *connect)
{
    enum { STARTS = 20, CONNECTS = 200 };
    double t0 = now();
    cmp_manager_process_t p;
    struct timespec dl;
    for (int i = 0; i < STARTS; i++) {
        start(&p, NULL, 0);
        cmp_deadline_after(5, &dl);
        cmp_manager_shutdown(&p, &dl);
        cmp_manager_close(&p);
    }
    *start_stop = (now() - t0) / STARTS;
    start(&p, NULL, 0);
    t0 = now();
    for (int i = 0; i < CONNECTS; i++) {
        cmp_manager_client_t *c = client(&p, 0);
        const void *reply;
        size_t len;
        cmp_manager_call(c, "x", 1, &reply, &len, NULL);
        cmp_manager_disconnect(c);
    }
    *connect = (now() - t0) / CONNECTS;
    cmp_deadline_after(5, &dl);
    cmp_manager_shutdown(&p, &dl);
    cmp_manager_close(&p);
}

int main(int argc, char **argv)
{
    int load = hogs_parse_load(argc, argv);
    long n = load ? 20000 : 100000;
    printf("manager round trips (16 B request, 8 B reply), %d CPU hog%s running\n", load,
           load == 1 ? "" : "s");
    struct hogs h;
    hogs_start(&h, load);

    cmp_manager_process_t p;
    start(&p, NULL, 0);
    cmp_manager_client_t *m = client(&p, 0), *s = client(&p, CMP_MANAGER_SOCKET);
    printf("mailbox (shared memory) %8.2f us/call\n", round_trip(m, 16, n) * 1e6);
    printf("AF_UNIX socket          %8.2f us/call\n", round_trip(s, 16, n / 2) * 1e6);
    printf("mailbox 1 MiB request   %8.1f us/call\n", round_trip(m, 1u << 20, 200) * 1e6);
    printf("mailbox 64 MiB request  %8.2f ms/call\n", round_trip(m, 64u << 20, 3) * 1e3);
    cmp_manager_disconnect(m);
    cmp_manager_disconnect(s);
    struct timespec dl;
    cmp_deadline_after(5, &dl);
    cmp_manager_shutdown(&p, &dl);
    cmp_manager_close(&p);

    struct sockaddr_storage ss;
    socklen_t sl;
    cmp_sockaddr_inet(&ss, &sl, "127.0.0.1", 0);
    start(&p, (struct sockaddr *)&ss, sl);
    cmp_manager_client_t *t = client(&p, 0);
    printf("TCP loopback            %8.2f us/call\n", round_trip(t, 16, n / 2) * 1e6);
    cmp_manager_disconnect(t);
    cmp_deadline_after(5, &dl);
    cmp_manager_shutdown(&p, &dl);
    cmp_manager_close(&p);

    double startstop, cc;
    lifecycle(&startstop, &cc);
    printf("server start + shutdown %8.2f ms\n", startstop * 1e3);
    printf("connect + call + close  %8.1f us (mailbox)\n", cc * 1e6);

    hogs_stop(&h);
    return 0;
}
