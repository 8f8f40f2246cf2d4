/* Random bytes from the kernel, for keys and challenges that another
 * process must not guess. */
#include "internal.h"

#include <errno.h>
#include <sys/random.h>

int cmp__random_bytes(void *out, size_t len)
{
    size_t got = 0;
    while (got < len) {
        /* a signal may cut a large request short, or interrupt it */
        ssize_t r = getrandom((char *)out + got, len - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        got += (size_t)r;
    }
    return 0;
}
