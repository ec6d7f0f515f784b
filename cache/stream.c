/* cache/stream.c — one stream's f32 slots and block table: page layout
 * (K block, V block, slot metadata, each 64-byte aligned), append of new
 * tokens into pages the caller took from the pool, and the read-only view the
 * attention kernels use. Pages come from and go back to cache/pool.c. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

size_t kvd_stream_pages_needed(const kvd_stream *s, size_t m)
{
    if (m == 0)
        return 0;
    /* Slots 0..n_tokens-1 are in use; the pages already held cover
     * n_pages * spp slots (eviction can leave whole free pages at the end). */
    if (s->slots_per_page == 0 || m > SIZE_MAX - s->n_tokens)
        return SIZE_MAX; /* cannot be satisfied: the pool answers -ENOSPC */
    const size_t slots = s->n_tokens + m;
    const size_t pages = slots / s->slots_per_page + (slots % s->slots_per_page != 0);
    return pages > s->n_pages ? pages - s->n_pages : 0;
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
    s->cap_pages = cap;
    return 0;
}

static float *slot_row(const kvd_stream *s, size_t j, uint32_t offset)
{
    unsigned char *page = s->pages[j / s->slots_per_page];
    return (float *)(page + offset) + (j % s->slots_per_page) * s->head_dim;
}

kvd_slot_meta *kvd_stream_meta(const kvd_stream *s, size_t j)
{
    unsigned char *page = s->pages[j / s->slots_per_page];
    return (kvd_slot_meta *)(page + s->meta_offset) + j % s->slots_per_page;
}

void kvd_stream_append(kvd_stream *s, size_t m, const float *restrict k,
                       const float *restrict v, size_t row_stride, void *const *new_pages)
{
    const size_t n_new = kvd_stream_pages_needed(s, m);
    assert(s->n_pages + n_new <= s->cap_pages && "reserve_table before append");
    for (size_t i = 0; i < n_new; i++)
        s->pages[s->n_pages + i] = new_pages[i];
    s->n_pages += n_new;

    const size_t d = s->head_dim;
    for (size_t t = 0; t < m; t++) {
        const size_t j = s->n_tokens + t;
        const float *restrict kt = k + t * row_stride;
        const float *restrict vt = v + t * row_stride;
        memcpy(slot_row(s, j, s->k_offset), kt, d * sizeof(float));
        memcpy(slot_row(s, j, s->v_offset), vt, d * sizeof(float));
        /* Norm in double: eviction compares norms of keys that may differ in
         * the last bits; a sum of squares in f32 could also overflow. */
        double sq = 0.0;
        for (size_t i = 0; i < d; i++)
            sq += (double)kt[i] * kt[i];
        kvd_slot_meta *meta = kvd_stream_meta(s, j);
        meta->position = (int64_t)(s->appended + t);
        meta->key_norm = (float)sqrt(sq);
        meta->score = 0.0f;
    }
    s->n_tokens += m;
    s->appended += m;
}

void kvd_stream_release(kvd_stream *s, kvd_pool *pool)
{
    if (s->n_pages > 0)
        kvd_pool_release(pool, s->pages, s->n_pages);
    free(s->pages);
    /* Empty again, same shape: as if freshly initialized. */
    s->pages = NULL;
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
