/* Start a child process that greets, wait for it, report its exit code.
 * The C twin of examples/python/process.py. */
#include <stdio.h>

#include "cmp.h"

static int greet(void *arg)
{
    printf("Hello from Process-%d\n", *(int *)arg);
    return 0; /* the child's exit status (stdio is flushed on the way out) */
}

int main(void)
{
    cmp_process_t child;
    int n = 1;
    int rc = cmp_process_start(&child, greet, &n, 0);
    if (rc < 0) {
        fprintf(stderr, "start: %s\n", cmp_strerror(rc));
        return 1;
    }
    rc = cmp_process_join(&child, NULL);
    int code = -1;
    if (rc == 0)
        rc = cmp_process_exitcode(&child, &code);
    cmp_process_close(&child);
    if (rc < 0) {
        fprintf(stderr, "join: %s\n", cmp_strerror(rc));
        return 1;
    }
    return code == 0 ? 0 : 1;
}
