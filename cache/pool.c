/* cache/pool.c — the page pool: one anonymous mapping of n_pages * page_bytes
 * cut into pages, a free list kept as a stack of page indices, a reference
 * count per page, and one mutex over both. Mechanism only: deciding what to
 * evict when an allocation fails belongs to the caller. */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "cache/pool.h"

struct kvd_pool {
    pthread_mutex_t lock;   /* guards free_stack, n_free and refcount */
    unsigned char *base;    /* arena: [n_pages][page_bytes], page-aligned mapping */
    size_t arena_bytes;     /* n_pages * page_bytes */
    size_t page_bytes;
    size_t n_pages;
    size_t n_free;          /* free_stack[0..n_free) are the free pages */
    size_t *free_stack;     /* [n_pages] page indices; top = n_free - 1 */
    uint32_t *refcount;     /* [n_pages] 0 = free */
    /* Pages copied because a fork shared them (for /metrics). Atomic, not
     * under `lock`: streams of different sessions count concurrently and a
     * counter needs no ordering with the free list. */
    atomic_ullong copies;
};

/* The accessors take the lock on a pool the caller sees as const: the lock is
 * bookkeeping, not part of the pool's observable value. Every pool is created
 * non-const by kvd_pool_create, so casting const away is well defined. */
static kvd_pool *unconst(const kvd_pool *pool)
{
    return (kvd_pool *)pool;
}

int kvd_pool_create(size_t memory_bytes, size_t page_bytes, kvd_pool **out)
{
    *out = NULL;
    if (page_bytes < KVD_POOL_MIN_PAGE_BYTES || page_bytes % KVD_POOL_PAGE_ALIGN != 0)
        return -EINVAL;
    const size_t n_pages = memory_bytes / page_bytes;
    if (n_pages == 0)
        return -EINVAL;
    /* Page indices and counts are size_t, refcounts uint32_t: the bookkeeping
     * arrays are at most 12 bytes per >= 1 KiB page; check anyway. */
    size_t stack_bytes, ref_bytes;
    if (__builtin_mul_overflow(n_pages, sizeof(size_t), &stack_bytes) ||
        __builtin_mul_overflow(n_pages, sizeof(uint32_t), &ref_bytes))
        return -ENOMEM;

    kvd_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return -ENOMEM;
    pool->page_bytes = page_bytes;
    pool->n_pages = n_pages;
    pool->arena_bytes = n_pages * page_bytes; /* <= memory_bytes: cannot overflow */
    pool->free_stack = malloc(stack_bytes);
    pool->refcount = calloc(n_pages, sizeof(uint32_t));
    if (pool->free_stack == NULL || pool->refcount == NULL)
        goto fail;

    /* MAP_NORESERVE + anonymous: the kernel backs a page with memory only
     * when it is first written, so a 1 GiB pool costs RSS only for pages in
     * use (and --memory may exceed what is free at start-up). The mapping is
     * page-aligned and page_bytes is a multiple of 64, so every pool page is
     * 64-byte aligned. */
    void *base = mmap(NULL, pool->arena_bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        goto fail;
    pool->base = base;
#ifdef MADV_HUGEPAGE
    /* Ask for transparent huge pages (Debian's default THP mode is
     * "madvise", so without this the arena is 4 KiB pages): a decode streams
     * every page of a long context, and with 2 MiB pages it takes far fewer
     * TLB misses — bench_attention_decode at n = 32k ran 6-10% faster (f32,
     * every tier). Advice only: a kernel without THP says EINVAL and the
     * pool works as before. Resident memory then grows in steps of up to
     * 2 MiB as pages are first written, still from the arena's start. */
    (void)madvise(base, pool->arena_bytes, MADV_HUGEPAGE);
#endif

    if (pthread_mutex_init(&pool->lock, NULL) != 0) {
        munmap(pool->base, pool->arena_bytes);
        goto fail;
    }

    /* Lowest index on top: pages are handed out from the start of the arena
     * first, which keeps the touched (resident) part of the mapping compact. */
    for (size_t i = 0; i < n_pages; i++)
        pool->free_stack[i] = n_pages - 1 - i;
    pool->n_free = n_pages;
    atomic_init(&pool->copies, 0);
    *out = pool;
    return 0;

fail:
    free(pool->free_stack);
    free(pool->refcount);
    free(pool);
    return -ENOMEM;
}

void kvd_pool_destroy(kvd_pool *pool)
{
    if (pool == NULL)
        return;
    pthread_mutex_destroy(&pool->lock);
    munmap(pool->base, pool->arena_bytes);
    free(pool->free_stack);
    free(pool->refcount);
    free(pool);
}

size_t kvd_pool_page_bytes(const kvd_pool *pool)
{
    return pool->page_bytes;
}

size_t kvd_pool_pages_total(const kvd_pool *pool)
{
    return pool->n_pages;
}

size_t kvd_pool_pages_free(const kvd_pool *pool)
{
    kvd_pool *p = unconst(pool);
    pthread_mutex_lock(&p->lock);
    const size_t n = p->n_free;
    pthread_mutex_unlock(&p->lock);
    return n;
}

size_t kvd_pool_pages_used(const kvd_pool *pool)
{
    return pool->n_pages - kvd_pool_pages_free(pool);
}

int kvd_pool_alloc(kvd_pool *pool, size_t n, void **pages_out)
{
    if (n == 0)
        return 0;
    pthread_mutex_lock(&pool->lock);
    if (n > pool->n_free) { /* all or nothing: check before taking any */
        pthread_mutex_unlock(&pool->lock);
        return -ENOSPC;
    }
    for (size_t i = 0; i < n; i++) {
        const size_t idx = pool->free_stack[--pool->n_free];
        assert(pool->refcount[idx] == 0);
        pool->refcount[idx] = 1;
        pages_out[i] = pool->base + idx * pool->page_bytes;
    }
    pthread_mutex_unlock(&pool->lock);
    return 0;
}

/* Index of `page`, or SIZE_MAX if it is not the start of a page of this pool.
 * Comparing addresses as integers: the page may come from anywhere. */
static size_t page_index(const kvd_pool *pool, const void *page)
{
    const uintptr_t addr = (uintptr_t)page, base = (uintptr_t)pool->base;
    if (addr < base || addr - base >= pool->arena_bytes)
        return SIZE_MAX;
    const size_t off = (size_t)(addr - base);
    if (off % pool->page_bytes != 0)
        return SIZE_MAX;
    return off / pool->page_bytes;
}

void kvd_pool_release(kvd_pool *pool, void *const *pages, size_t n)
{
    if (n == 0)
        return;
    pthread_mutex_lock(&pool->lock);
    for (size_t i = 0; i < n; i++) {
        const size_t idx = page_index(pool, pages[i]);
        assert(idx != SIZE_MAX && "releasing a page that is not from this pool");
        assert(pool->refcount[idx] > 0 && "releasing a page that is already free");
        /* In a build without asserts, skip the bad page rather than corrupt
         * the free list (a double push would hand one page out twice). */
        if (idx == SIZE_MAX || pool->refcount[idx] == 0)
            continue;
        if (--pool->refcount[idx] == 0)
            pool->free_stack[pool->n_free++] = idx;
    }
    pthread_mutex_unlock(&pool->lock);
}

void kvd_pool_retain(kvd_pool *pool, void *const *pages, size_t n)
{
    if (n == 0)
        return;
    pthread_mutex_lock(&pool->lock);
    for (size_t i = 0; i < n; i++) {
        const size_t idx = page_index(pool, pages[i]);
        assert(idx != SIZE_MAX && "retaining a page that is not from this pool");
        assert(pool->refcount[idx] > 0 && "retaining a free page");
        assert(pool->refcount[idx] < UINT32_MAX && "page reference count overflow");
        if (idx == SIZE_MAX || pool->refcount[idx] == 0 || pool->refcount[idx] == UINT32_MAX)
            continue;
        pool->refcount[idx]++;
    }
    pthread_mutex_unlock(&pool->lock);
}

unsigned kvd_pool_refcount(const kvd_pool *pool, const void *page)
{
    const size_t idx = page_index(pool, page);
    if (idx == SIZE_MAX)
        return 0;
    kvd_pool *p = unconst(pool);
    pthread_mutex_lock(&p->lock);
    const unsigned n = p->refcount[idx];
    pthread_mutex_unlock(&p->lock);
    return n;
}

void kvd__pool_count_copy(kvd_pool *pool)
{
    atomic_fetch_add_explicit(&pool->copies, 1, memory_order_relaxed);
}

unsigned long long kvd_pool_copies(const kvd_pool *pool)
{
    return atomic_load_explicit(&unconst(pool)->copies, memory_order_relaxed);
}
