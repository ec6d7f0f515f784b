/* cache/stream.c — one stream's f32 slots and block table: page layout
 * (K block, V block, slot metadata, each 64-byte aligned), append of new
 * tokens into pages the caller took from the pool (copying a tail page shared
 * with a fork first), copy-on-write forks, and the read-only view the
 * attention kernels use. Pages come from and go back to cache/pool.c; the
 * eviction index belongs to cache/evict.c. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"
#include "cache/stream.h"

#define ALIGN 64 /* every block of a page starts on a cache line */

static size_t align_up(size_t x)
{
    return (x + (ALIGN - 1)) & ~(size_t)(ALIGN - 1);
}

/* Bytes of one page block holding `spp` rows of `head_dim` f32, padded so
 * the next block starts aligned. Callers keep spp * head_dim * 4 far below
 * SIZE_MAX (both are bounded by the capped page size). */
static size_t row_block_bytes(size_t spp, size_t head_dim)
{
    return align_up(spp * head_dim * sizeof(float));
}

/* Bytes a page needs for spp slots: K, V, then the metadata array. */
static size_t layout_bytes(size_t spp, size_t head_dim)
{
    return 2 * row_block_bytes(spp, head_dim) + spp * sizeof(kvd_slot_meta);
}

uint32_t kvd_stream_slots_per_page(size_t page_bytes, uint32_t head_dim)
{
    if (head_dim == 0)
        return 0;
    /* Offsets are stored as uint32_t: only the first 4 GiB of a (hypothetical)
     * larger page is usable, which also keeps every product below exact. */
    const size_t cap = (size_t)UINT32_MAX & ~(size_t)(ALIGN - 1);
    if (page_bytes > cap)
        page_bytes = cap;
    /* Without padding a slot costs exactly slot_bytes, so this is an upper
     * bound; padding wastes < 2 * 64 bytes, i.e. fewer than
     * 128 / slot_bytes + 1 <= 6 slots (slot_bytes >= 24), so the downward
     * search below takes a handful of steps. */
    const size_t slot_bytes = 2 * (size_t)head_dim * sizeof(float) + sizeof(kvd_slot_meta);
    size_t spp = page_bytes / slot_bytes;
    while (spp > 0 && layout_bytes(spp, head_dim) > page_bytes)
        spp--;
    return (uint32_t)spp;
}

void kvd_stream_init(kvd_stream *s, size_t page_bytes, uint32_t head_dim)
{
    memset(s, 0, sizeof *s);
    s->head_dim = head_dim;
    s->slots_per_page = kvd_stream_slots_per_page(page_bytes, head_dim);
    assert(s->slots_per_page >= 1 && "a slot must fit in a page (check before init)");
    if (s->slots_per_page == 0)
        return; /* unusable; pages_needed reports it */
    const size_t block = row_block_bytes(s->slots_per_page, head_dim);
    s->k_offset = 0;
    s->v_offset = (uint32_t)block;      /* < page size <= UINT32_MAX (capped above) */
    s->meta_offset = (uint32_t)(2 * block);
}

/* Index of the existing page the next appended token goes into, if that page
 * is shared with a fork (and so must be copied first); SIZE_MAX otherwise. */
static size_t shared_write_page(const kvd_stream *s)
{
    const size_t first = s->n_tokens / s->slots_per_page;
    if (s->shared == NULL || first >= s->n_pages || !s->shared[first])
        return SIZE_MAX;
    return first;
}

size_t kvd_stream_pages_needed(const kvd_stream *s, size_t m)
{
    if (m == 0)
        return 0;
    /* Slots 0..n_tokens-1 are in use; the pages already held cover
     * n_pages * spp slots (eviction gives an emptied tail page back at once,
     * so normally n_pages = ceil(n_tokens / spp)). */
    if (s->slots_per_page == 0 || m > SIZE_MAX - s->n_tokens)
        return SIZE_MAX; /* cannot be satisfied: the pool answers -ENOSPC */
    const size_t slots = s->n_tokens + m;
    const size_t pages = slots / s->slots_per_page + (slots % s->slots_per_page != 0);
    const size_t grow = pages > s->n_pages ? pages - s->n_pages : 0;
    /* One more for the copy of a shared, partly filled tail page. Counted
     * even if the fork has let go of it meanwhile (append then gives the
     * page straight back): the refcount is the pool's to read, and planning
     * must not depend on another session's timing. */
    return grow + (shared_write_page(s) != SIZE_MAX);
}

int kvd_stream_reserve_table(kvd_stream *s, size_t extra_pages)
{
    size_t need;
    if (__builtin_add_overflow(s->n_pages, extra_pages, &need))
        return -ENOMEM;
    if (need <= s->cap_pages)
        return 0;
    /* Geometric growth: amortized O(1) per appended page. */
    size_t cap = s->cap_pages < 4 ? 4 : s->cap_pages;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    size_t bytes;
    if (__builtin_mul_overflow(cap, sizeof *s->pages, &bytes))
        return -ENOMEM;
    void **pages = realloc(s->pages, bytes);
    if (pages == NULL)
        return -ENOMEM; /* s->pages is untouched */
    s->pages = pages;
    /* `shared` grows alongside. If this fails, `pages` is merely longer than
     * cap_pages says: nothing a reader can see has changed. */
    unsigned char *shared = realloc(s->shared, cap);
    if (shared == NULL)
        return -ENOMEM;
    memset(shared + s->cap_pages, 0, cap - s->cap_pages);
    s->shared = shared;
    s->cap_pages = cap;
    return 0;
}

kvd_slot_meta *kvd_stream_meta(const kvd_stream *s, size_t j)
{
    unsigned char *page = s->pages[j / s->slots_per_page];
    return (kvd_slot_meta *)(page + s->meta_offset) + j % s->slots_per_page;
}

int kvd__stream_unshare(kvd_stream *s, kvd_pool *pool, size_t i, void *spare)
{
    assert(i < s->n_pages && s->shared != NULL && s->shared[i]);
    int used = 0;
    /* A count of 1 means every other holder has let go, and none can come
     * back (only a holder can fork), so writing in place is safe. A count
     * read as > 1 may drop to 1 before we release: then the copy was merely
     * unneeded, never wrong. */
    if (kvd_pool_refcount(pool, s->pages[i]) > 1) {
        if (spare == NULL)
            return -1;
        void *old = s->pages[i];
        memcpy(spare, old, kvd_pool_page_bytes(pool));
        s->pages[i] = spare;
        kvd_pool_release(pool, &old, 1);
        kvd_pool_count_copy(pool);
        used = 1;
    }
    s->shared[i] = 0;
    s->n_shared--;
    return used;
}

void kvd_stream_append(kvd_stream *s, kvd_pool *pool, size_t m, const float *restrict k,
                       const float *restrict v, size_t row_stride, void *const *new_pages)
{
    if (m == 0)
        return;
    size_t taken = 0;
    const size_t tail = shared_write_page(s);
    if (tail != SIZE_MAX) {
        /* new_pages[0] was taken for this copy; if none was needed after
         * all, it goes straight back so the pool's count stays exact. */
        if (kvd__stream_unshare(s, pool, tail, new_pages[0]) == 0)
            kvd_pool_release(pool, new_pages, 1);
        taken = 1;
    }
    const size_t n_new = kvd_stream_pages_needed(s, m); /* growth only now */
    assert(s->n_pages + n_new <= s->cap_pages && "reserve_table before append");
    for (size_t i = 0; i < n_new; i++) {
        s->pages[s->n_pages + i] = new_pages[taken + i];
        s->shared[s->n_pages + i] = 0;
    }
    s->n_pages += n_new;

    const size_t d = s->head_dim;
    for (size_t t = 0; t < m; t++) {
        const size_t j = s->n_tokens + t;
        const float *restrict kt = k + t * row_stride;
        const float *restrict vt = v + t * row_stride;
        memcpy(kvd__stream_row(s, j, s->k_offset), kt, d * sizeof(float));
        memcpy(kvd__stream_row(s, j, s->v_offset), vt, d * sizeof(float));
        /* Norm in double: eviction compares norms of keys that may differ in
         * the last bits; a sum of squares in f32 could also overflow. */
        double sq = 0.0;
        for (size_t i = 0; i < d; i++)
            sq += (double)kt[i] * kt[i];
        kvd_slot_meta *meta = kvd_stream_meta(s, j);
        meta->position = (int64_t)(s->appended + t);
        meta->key_norm = (float)sqrt(sq);
        meta->reserved = 0;
        if (s->evict != NULL)
            kvd__evict_on_append(s, j, meta->position);
    }
    s->n_tokens += m;
    s->appended += m;
}

int kvd__stream_fork_prepare(const kvd_stream *src, kvd_stream *dst)
{
    *dst = *src; /* shape, counters; every owned pointer is replaced below */
    dst->pages = NULL;
    dst->shared = NULL;
    dst->evict = NULL;
    dst->cap_pages = 0;
    dst->n_shared = 0;
    if (src->n_pages > 0) {
        dst->pages = malloc(src->n_pages * sizeof *dst->pages); /* <= src's table: no overflow */
        dst->shared = calloc(src->n_pages, 1);
        if (dst->pages == NULL || dst->shared == NULL)
            goto fail;
        memcpy(dst->pages, src->pages, src->n_pages * sizeof *dst->pages);
        dst->cap_pages = src->n_pages;
    }
    if (src->evict != NULL && kvd__evict_clone(src->evict, src->n_tokens, &dst->evict) != 0)
        goto fail;
    return 0;

fail:
    kvd__stream_fork_abort(dst);
    return -ENOMEM;
}

void kvd__stream_fork_commit(kvd_stream *src, kvd_stream *dst, kvd_pool *pool)
{
    if (src->n_pages == 0)
        return;
    assert(src->shared != NULL && src->cap_pages >= src->n_pages);
    kvd_pool_retain(pool, src->pages, src->n_pages);
    memset(src->shared, 1, src->n_pages);
    memset(dst->shared, 1, src->n_pages);
    src->n_shared = dst->n_shared = src->n_pages;
}

void kvd__stream_fork_abort(kvd_stream *dst)
{
    free(dst->pages);
    free(dst->shared);
    kvd__evict_free(dst->evict);
    /* an empty stream of the same shape, as kvd_stream_init leaves it */
    dst->pages = NULL;
    dst->shared = NULL;
    dst->evict = NULL;
    dst->n_pages = dst->cap_pages = dst->n_shared = dst->n_tokens = 0;
    dst->appended = dst->evicted = 0;
}

int kvd_stream_fork(kvd_stream *src, kvd_stream *dst, kvd_pool *pool)
{
    if (kvd__stream_fork_prepare(src, dst) != 0)
        return -ENOMEM;
    kvd__stream_fork_commit(src, dst, pool);
    return 0;
}

void kvd_stream_release(kvd_stream *s, kvd_pool *pool)
{
    if (s->n_pages > 0)
        kvd_pool_release(pool, s->pages, s->n_pages);
    free(s->pages);
    free(s->shared);
    kvd__evict_free(s->evict);
    /* Empty again, same shape: as if freshly initialized. */
    s->pages = NULL;
    s->shared = NULL;
    s->evict = NULL;
    s->n_shared = 0;
    s->n_pages = 0;
    s->cap_pages = 0;
    s->n_tokens = 0;
    s->appended = 0;
    s->evicted = 0;
}

kvd_kv_pages kvd_stream_view(const kvd_stream *s)
{
    /* void * and unsigned char * share representation (C11 6.2.5p28); the
     * block table is read through the kernels' byte-pointer view. */
    return (kvd_kv_pages){
        .pages = (const unsigned char *const *)s->pages,
        .slots_per_page = s->slots_per_page,
        .head_dim = s->head_dim,
        .k_offset = s->k_offset,
        .v_offset = s->v_offset,
    };
}
