/* cmp_cond_t: wait/notify with a lock and an rlock, timeouts, notify(n)
 * counts, no stolen wake-ups, producer/consumer across processes, dead
 * holder of the condition's lock, EINTR, the split prepare/sleep form. */
#include "sync_helpers.h"

struct cond_shared {
    cmp_lock_t lock;
    cmp_rlock_t rlock;
    cmp_cond_t cond;
    cmp_cond_t not_full;
    uint32_t ready;
    uint32_t woken;
    uint32_t go;
    /* a bounded buffer */
    uint32_t head, tail;
    uint64_t items[4];
};

static struct cond_shared *new_shared(void)
{
    struct cond_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    cmp_rlock_init(&s->rlock);
    cmp_cond_init(&s->cond);
    cmp_cond_init(&s->not_full);
    return s;
}

Test(cond, misuse_is_eperm, .timeout = 10)
{
    struct cond_shared *s = new_shared();
    struct timespec d = test_deadline(0.01);
    cr_assert_eq(cmp_cond_wait_lock(&s->cond, &s->lock, &d), -EPERM);
    cr_assert_eq(cmp_cond_wait_rlock(&s->cond, &s->rlock, &d), -EPERM);
    cr_assert_eq(cmp_cond_notify(&s->cond, 1), 0);
    cr_assert_eq(cmp_cond_notify_all(&s->cond), 0);
}

Test(cond, timeout_reacquires_lock, .timeout = 10)
{
    struct cond_shared *s = new_shared();
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    struct timespec d = test_deadline(0.1);
    double t0 = sync_now();
    cr_assert_eq(cmp_cond_wait_lock(&s->cond, &s->lock, &d), -ETIMEDOUT);
    cr_assert(sync_now() - t0 >= 0.095);
    cr_assert_eq(cmp_lock_is_locked(&s->lock), 1);
    cr_assert_eq(cmp_cond_n_waiting(&s->cond), 0);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);

    /* with an rlock held three deep: all levels come back */
    for (int i = 0; i < 3; i++)
        cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    d = test_deadline(0.05);
    cr_assert_eq(cmp_cond_wait_rlock(&s->cond, &s->rlock, &d), -ETIMEDOUT);
    cr_assert_eq(cmp_rlock_count(&s->rlock), 3);
    cr_assert_eq(cmp_rlock_release_all(&s->rlock), 3);
}

static pid_t spawn_waiter(struct cond_shared *s, int use_rlock, double timeout)
{
    struct sync_cond_objects o = {&s->cond, &s->lock, &s->rlock, &s->ready, &s->woken};
    return sync_spawn_cond_waiter(&o, use_rlock, timeout);
}

static void notify_counts(int use_rlock)
{
    struct cond_shared *s = new_shared();
    enum { N = 5 };
    pid_t pids[N];
    for (int i = 0; i < N; i++)
        pids[i] = spawn_waiter(s, use_rlock, 10);
    sync_wait_registered(&s->cond, N, 5);

    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    cr_assert_eq(cmp_cond_notify(&s->cond, 2), 2);
    cr_assert_eq(cmp_cond_n_waiting(&s->cond), 3);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);

    sync_wait_flag(&s->woken, 2, 5);
    sync_sleep(0.1);
    cr_assert_eq(__atomic_load_n(&s->woken, __ATOMIC_ACQUIRE), 2, "notify(2) woke more than 2");

    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    cr_assert_eq(cmp_cond_notify_all(&s->cond), 3);
    cr_assert_eq(cmp_cond_notify_all(&s->cond), 0);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
    for (int i = 0; i < N; i++)
        sync_reap_ok(pids[i]);
    cr_assert_eq(s->woken, N);
    cr_assert_eq(cmp_cond_n_waiting(&s->cond), 0);
}

Test(cond, notify_n_counts_with_lock, .timeout = 20)
{
    notify_counts(0);
}

Test(cond, notify_n_counts_with_rlock, .timeout = 20)
{
    notify_counts(1);
}

Test(cond, later_waiter_does_not_steal_a_notify, .timeout = 10)
{
    struct cond_shared *s = new_shared();
    pid_t pid = spawn_waiter(s, 0, 5);
    sync_wait_registered(&s->cond, 1, 5);
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    cr_assert_eq(cmp_cond_notify(&s->cond, 1), 1);
    /* we register after the notify: the wake-up is the child's */
    struct timespec d = test_deadline(0.3);
    cr_assert_eq(cmp_cond_wait_lock(&s->cond, &s->lock, &d), -ETIMEDOUT);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
    sync_reap_ok(pid);
    cr_assert_eq(s->woken, 1);
}

#define NITEMS 2000

static void produce(struct cond_shared *s, uint64_t first, uint64_t count)
{
    for (uint64_t i = first; i < first + count; i++) {
        cmp_lock_acquire(&s->lock, NULL);
        while (s->tail - s->head == 4)
            cmp_cond_wait_lock(&s->not_full, &s->lock, NULL);
        s->items[s->tail % 4] = i;
        s->tail++;
        cmp_cond_notify(&s->cond, 1);
        cmp_lock_release(&s->lock);
    }
}

Test(cond, producer_consumer_across_processes, .timeout = 60)
{
    struct cond_shared *s = new_shared();
    pid_t p1 = fork();
    cr_assert(p1 >= 0);
    if (p1 == 0) {
        produce(s, 1, NITEMS / 2);
        _exit(0);
    }
    pid_t p2 = fork();
    cr_assert(p2 >= 0);
    if (p2 == 0) {
        produce(s, NITEMS / 2 + 1, NITEMS / 2);
        _exit(0);
    }
    uint64_t sum = 0;
    for (int n = 0; n < NITEMS; n++) {
        cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
        while (s->tail == s->head) {
            struct timespec d = test_deadline(10);
            int rc = cmp_cond_wait_lock(&s->cond, &s->lock, &d);
            cr_assert(rc == 0 || rc == -ETIMEDOUT);
            cr_assert(rc == 0 || s->tail != s->head, "consumer starved");
        }
        sum += s->items[s->head % 4];
        s->head++;
        cmp_cond_notify(&s->not_full, 1);
        cr_assert_eq(cmp_lock_release(&s->lock), 0);
    }
    sync_reap_ok(p1);
    sync_reap_ok(p2);
    cr_assert_eq(sum, (uint64_t)NITEMS * (NITEMS + 1) / 2);
}

/* The condition's lock: a child takes it while we wait, and dies holding
 * it. Our wait times out and takes the lock over. */
static void dead_holder_of_cond_lock(int use_rlock)
{
    struct cond_shared *s = new_shared();
    if (use_rlock)
        cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    else
        cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        if (use_rlock)
            cmp_rlock_acquire(&s->rlock, NULL);
        else
            cmp_lock_acquire(&s->lock, NULL);
        kill(getpid(), SIGKILL);
        _exit(2);
    }
    struct timespec d = test_deadline(0.3);
    double t0 = sync_now();
    int rc = use_rlock ? cmp_cond_wait_rlock(&s->cond, &s->rlock, &d)
                       : cmp_cond_wait_lock(&s->cond, &s->lock, &d);
    cr_assert_eq(rc, CMP_OWNER_DIED);
    cr_assert(sync_now() - t0 < 3.0);
    if (use_rlock) {
        cr_assert_eq(cmp_rlock_count(&s->rlock), 1);
        cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
    } else {
        cr_assert_eq(cmp_lock_release(&s->lock), 0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status));
}

Test(cond, dead_holder_of_lock, .timeout = 10)
{
    dead_holder_of_cond_lock(0);
}

Test(cond, dead_holder_of_rlock, .timeout = 10)
{
    dead_holder_of_cond_lock(1);
}

Test(cond, eintr_from_signal_keeps_lock, .timeout = 10)
{
    struct cond_shared *s = new_shared();
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    struct sync_interrupter it;
    sync_interrupt_me_after(&it, 0.1);
    struct timespec d = test_deadline(5);
    double t0 = sync_now();
    int rc = cmp_cond_wait_lock(&s->cond, &s->lock, &d);
    sync_interrupter_join(&it);
    cr_assert_eq(rc, -EINTR);
    cr_assert(sync_now() - t0 < 2.0);
    cr_assert_eq(cmp_lock_is_locked(&s->lock), 1);
    cr_assert_eq(cmp_cond_n_waiting(&s->cond), 0, "interrupted waiter left registered");
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
}

Test(cond, split_form_sleep_retries_after_eintr, .timeout = 10)
{
    struct cond_shared *s = new_shared();
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        /* notifies once the parent has been interrupted at least once */
        sync_wait_flag(&s->go, 1, 5);
        cmp_lock_acquire(&s->lock, NULL);
        int k = cmp_cond_notify(&s->cond, 1);
        cmp_lock_release(&s->lock);
        _exit(k == 1 ? 0 : 1);
    }
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    uint32_t ticket;
    cr_assert_eq(cmp_cond_prepare_wait(&s->cond, &ticket), 0);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
    struct sync_interrupter it;
    sync_interrupt_me_after(&it, 0.05);
    struct timespec d = test_deadline(5);
    int rc, interrupts = 0;
    while ((rc = cmp_cond_sleep(&s->cond, ticket, &d)) == -EINTR) {
        /* still registered across the interruption */
        cr_assert_eq(cmp_cond_n_waiting(&s->cond), 1);
        if (interrupts++ == 0)
            __atomic_store_n(&s->go, 1, __ATOMIC_RELEASE);
    }
    sync_interrupter_join(&it);
    cr_assert_eq(rc, 0);
    cr_assert(interrupts >= 1);
    sync_reap_ok(pid);
    cr_assert_eq(cmp_cond_n_waiting(&s->cond), 0);
}

Test(cond, cancel_after_grant_reports_notified, .timeout = 10)
{
    struct cond_shared *s = new_shared();
    uint32_t ticket;
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    cmp_cond_prepare_wait(&s->cond, &ticket);
    cr_assert_eq(cmp_cond_notify(&s->cond, 1), 1);
    cr_assert_eq(cmp_cond_cancel_wait(&s->cond, ticket), 1);
    cmp_cond_prepare_wait(&s->cond, &ticket);
    cr_assert_eq(cmp_cond_cancel_wait(&s->cond, ticket), 0);
    cr_assert_eq(cmp_cond_n_waiting(&s->cond), 0);
    cr_assert_eq(cmp_cond_notify(&s->cond, 1), 0);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
}

#include "pid_helpers.h"

/* A process died inside the condition's guard and its pid was given to a
 * live process: notify and wait still get through. */
Test(cond, dead_guard_holder_pid_reused, .timeout = 20)
{
    struct cond_shared *s = new_shared();
    pid_t squatter = pid_squatter(pid_die_holding(&s->cond.guard));
    double t0 = sync_now();
    int notified = cmp_cond_notify(&s->cond, 1);
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    struct timespec d = test_deadline(0.1);
    int rc = cmp_cond_wait_lock(&s->cond, &s->lock, &d);
    double took = sync_now() - t0;
    pid_squatter_end(squatter);
    cr_assert_eq(notified, 0);
    cr_assert_eq(rc, -ETIMEDOUT);
    cr_assert(took < 3.0, "took %f s", took);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
}

/* The condition's lock, held by a dead process whose pid was reused. */
Test(cond, dead_lock_holder_pid_reused, .timeout = 20)
{
    struct cond_shared *s = new_shared();
    pid_t squatter = pid_squatter(pid_die_holding(&s->rlock.lock));
    struct timespec d = test_deadline(1);
    int rc = cmp_rlock_acquire(&s->rlock, &d);
    pid_squatter_end(squatter);
    cr_assert_eq(rc, CMP_OWNER_DIED);
    d = test_deadline(0.05);
    cr_assert_eq(cmp_cond_wait_rlock(&s->cond, &s->rlock, &d), -ETIMEDOUT);
    cr_assert_eq(cmp_rlock_count(&s->rlock), 1);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
}
