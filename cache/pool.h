/* cache/pool.h — the page pool: one arena of --memory bytes cut into
 * fixed-size pages, with a free list, per-page reference counts (for forks)
 * and exact accounting. The pool never grows: a failed allocation is the
 * signal for eviction or a 503, so it is an ordinary return value here.
 * All functions are thread-safe (steps of different sessions run in parallel).
 * Errors are negative errno values (libuv style): -EINVAL, -ENOMEM, -ENOSPC. */
#ifndef KVD_CACHE_POOL_H
#define KVD_CACHE_POOL_H

#include <stddef.h>

typedef struct kvd_pool kvd_pool;

/* Minimum page size and alignment. Pages are 64-byte aligned (cache line,
 * AVX-512 vector) and page_bytes must be a multiple of 64. */
#define KVD_POOL_PAGE_ALIGN 64
#define KVD_POOL_MIN_PAGE_BYTES 1024

/* Creates a pool of floor(memory_bytes / page_bytes) pages.
 * Returns 0 and *out, -EINVAL (bad sizes, fewer than one page) or -ENOMEM.
 * Caller frees with kvd_pool_destroy. */
int kvd_pool_create(size_t memory_bytes, size_t page_bytes, kvd_pool **out);
void kvd_pool_destroy(kvd_pool *pool);

size_t kvd_pool_page_bytes(const kvd_pool *pool);
size_t kvd_pool_pages_total(const kvd_pool *pool);
size_t kvd_pool_pages_free(const kvd_pool *pool);   /* a consistent snapshot */
size_t kvd_pool_pages_used(const kvd_pool *pool);   /* total - free, same snapshot rules */

/* All-or-nothing: takes n pages (reference count 1 each) into pages_out, or
 * none and returns -ENOSPC. n == 0 succeeds and takes nothing. */
int kvd_pool_alloc(kvd_pool *pool, size_t n, void **pages_out);

/* Drops one reference from each page; a page whose count reaches zero goes
 * back on the free list. Passing a page not from this pool, or one already
 * free, is a programming error (asserted). */
void kvd_pool_release(kvd_pool *pool, void *const *pages, size_t n);

/* Adds one reference to each page (a fork sharing them copy-on-write). */
void kvd_pool_retain(kvd_pool *pool, void *const *pages, size_t n);

/* Current reference count of a page (0 = free). */
unsigned kvd_pool_refcount(const kvd_pool *pool, const void *page);

/* Copy-on-write bookkeeping: streams call count_copy once per page they copy
 * because it was shared; copies() is the running total (for /metrics). */
void kvd__pool_count_copy(kvd_pool *pool);
unsigned long long kvd_pool_copies(const kvd_pool *pool);

#endif
