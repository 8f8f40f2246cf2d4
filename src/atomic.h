/*
 * Atomics for words that live in shared memory, one place for all of them.
 * Plain uint32_t fields (see cmp.h) accessed through GCC/Clang builtins,
 * which work across processes as long as the memory is shared.
 *
 * Every release store in the code says in a comment who must see the write.
 */
#ifndef CMP_ATOMIC_H
#define CMP_ATOMIC_H

#include <stdint.h>

static inline uint32_t cmp__load_relaxed(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline uint32_t cmp__load_acquire(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void cmp__store_relaxed(uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static inline void cmp__store_release(uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* Strong compare-and-swap; on failure *expected receives the current value. */
static inline int cmp__cas_acquire(uint32_t *p, uint32_t *expected, uint32_t desired)
{
    return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

static inline int cmp__cas_acq_rel(uint32_t *p, uint32_t *expected, uint32_t desired)
{
    return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

static inline uint32_t cmp__swap_release(uint32_t *p, uint32_t v)
{
    return __atomic_exchange_n(p, v, __ATOMIC_RELEASE);
}

static inline uint32_t cmp__swap_acq_rel(uint32_t *p, uint32_t v)
{
    return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
}

static inline uint32_t cmp__fetch_add(uint32_t *p, uint32_t v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
}

static inline uint32_t cmp__fetch_sub(uint32_t *p, uint32_t v)
{
    return __atomic_fetch_sub(p, v, __ATOMIC_ACQ_REL);
}

/* 64-bit words (ring positions, lock words). */
static inline uint64_t cmp__load64_relaxed(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline uint64_t cmp__load64_acquire(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void cmp__store64_relaxed(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static inline void cmp__store64_release(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* Strong 64-bit compare-and-swap (lock words); on failure *expected
 * receives the current value. */
static inline int cmp__cas64_acquire(uint64_t *p, uint64_t *expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

/* Orders a plain store before a later load (Dekker-style waiter checks). */
static inline void cmp__fence_seq_cst(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static inline void cmp__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif /* CMP_ATOMIC_H */
