/* A manager process holds a list; three worker processes, which know only
 * its address, each append "data" to it, and the list is printed: the C
 * twin of the documentation's manager example (a managed list shared by
 * processes). Requests are bytes: 'a' + a string appends it, 'l' asks for
 * the list as Python would print it. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cmp.h"

/* The list, in the manager process; its client threads share it. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char items[4096];
static size_t used;

static int serve(void *arg, uint64_t client, const void *req, size_t len,
                 cmp_manager_reply_t *reply)
{
    (void)arg;
    (void)client;
    const char *r = req;
    pthread_mutex_lock(&mu);
    if (len > 0 && r[0] == 'a' && used + len + 4 < sizeof items) {
        used += (size_t)snprintf(items + used, sizeof items - used, "%s'%.*s'", used ? ", " : "",
                                 (int)(len - 1), r + 1);
    } else if (len == 1 && r[0] == 'l') {
        char *out = cmp_manager_reply_extend(reply, used + 2);
        if (out) {
            out[0] = '[';
            memcpy(out + 1, items, used);
            out[used + 1] = ']';
        }
    }
    pthread_mutex_unlock(&mu);
    return 0;
}

static int call(cmp_manager_process_t *m, const char *req, const void **reply, size_t *len)
{
    cmp_manager_client_t *c;
    int rc = cmp_manager_connect(&c, (struct sockaddr *)&m->addr, m->addrlen, NULL, 0, 0, NULL);
    if (rc < 0)
        return rc;
    rc = cmp_manager_call(c, req, strlen(req), reply, len, NULL);
    if (rc == 0 && *len) /* the reply lives in the client: print it before disconnecting */
        printf("%.*s\n", (int)*len, (const char *)*reply);
    cmp_manager_disconnect(c);
    return rc;
}

int main(void)
{
    cmp_manager_options_t opt = {.handler = serve};
    cmp_manager_process_t m;
    int rc = cmp_manager_start(&m, &opt, 0);
    if (rc < 0) {
        fprintf(stderr, "manager: %s\n", cmp_strerror(rc));
        return 1;
    }
    pid_t workers[3];
    for (int i = 0; i < 3; i++) {
        if ((workers[i] = fork()) == 0) {
            const void *reply;
            size_t len;
            _exit(call(&m, "adata", &reply, &len) == 0 ? 0 : 1);
        }
    }
    int failed = 0;
    for (int i = 0; i < 3; i++) {
        int st;
        waitpid(workers[i], &st, 0);
        failed |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }
    const void *reply;
    size_t len;
    if (failed || (rc = call(&m, "l", &reply, &len)) < 0) {
        fprintf(stderr, "worker or list failed: %s\n", cmp_strerror(rc));
        return 1;
    }
    struct timespec dl;
    cmp_deadline_after(5, &dl);
    rc = cmp_manager_shutdown(&m, &dl);
    cmp_manager_close(&m);
    return rc == 0 ? 0 : 1;
}
