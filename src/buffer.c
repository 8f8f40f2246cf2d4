/* Growable byte buffers: results, replies and received messages whose
 * length is known only as the bytes come. */
#include "internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

void *cmp__grow(void *buf, size_t *cap, size_t len)
{
    if (len <= *cap && buf)
        return buf;
    size_t want = *cap ? *cap : 256;
    while (want < len)
        want = want > SIZE_MAX / 2 ? len : want * 2;
    void *p = realloc(buf, want);
    if (p)
        *cap = want;
    return p;
}
