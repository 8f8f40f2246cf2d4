#include "cmp.h"

#include <errno.h>
#include <string.h>

const char *cmp_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case CMP_OWNER_DIED:
        return "acquired; the previous holder died while holding it";
    case -ETIMEDOUT:
        return "timed out";
    case -EAGAIN:
        return "would block";
    case -EINTR:
        return "interrupted by a signal";
    case -EPERM:
        return "not held by the caller";
    case -EOVERFLOW:
        return "released too many times";
    case -EPIPE:
        return "broken: the barrier was broken, or the other end is closed";
    default:
        /* strerror's table is static and never freed: safe to return. */
        return err < 0 ? strerror(-err) : "unknown result";
    }
}
