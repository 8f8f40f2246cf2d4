/* What the manager's server (manager.c), its process (manager_process.c)
 * and its client (manager_client.c) share. Internal to libcmp. */
#ifndef CMP_MANAGER_INTERNAL_H
#define CMP_MANAGER_INTERNAL_H

#include "internal.h"

#include <stdint.h>

/* A client's first message when it wants a mailbox. It cannot be a
 * request of the stdlib's protocol (a pickle starts with 0x80), so a
 * server tells the two apart by it. */
#define CMP__MANAGER_HELLO "\0cmp-manager-mailbox-1"

/* The server's answer to the hello: a framed message of this payload,
 * with the mailbox's memfd attached (SCM_RIGHTS) when status is 0. */
#define CMP__MANAGER_HELLO_REPLY "cmpmbox1"
struct cmp__manager_hello_reply {
    char magic[8];
    int32_t status; /* 0, or a positive errno: no mailbox */
    int32_t pid;    /* the server's process */
    uint64_t size;  /* bytes of the memfd */
};

/* The socket from which a started server reads its starter's stop byte;
 * the server closes it. */
void cmp__manager_set_ctl(cmp_manager_t *m, int fd);

#endif /* CMP_MANAGER_INTERNAL_H */
