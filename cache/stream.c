/* cache/stream.c — one stream's slots and block table in any cache dtype:
 * page layout (K region, V region, slot metadata, each 64-byte aligned, row
 * sizes from attention/formats.h), append of new tokens (quantized into
 * their slots by cache/quant.c) into pages the caller took from the pool
 * (copying a tail page shared with a fork first), KIVI's f32 residual and the
 * settling of whole key groups out of it, copy-on-write forks, and the
 * read-only views the attention kernels use. Pages come from and go back to
 * cache/pool.c; the eviction index belongs to cache/evict.c. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"
#include "cache/quant.h"
#include "cache/stream.h"

#define ALIGN 64 /* every region of a page starts on a cache line */

static size_t align_up(size_t x)
{
    return (x + (ALIGN - 1)) & ~(size_t)(ALIGN - 1);
}

/* KIVI's residual sub-stream, allocated with a gather buffer so settle
 * never allocates: the `group` oldest residual keys may straddle residual
 * pages, and kvd_quant_key_block wants them as one strided array. The
 * buffer ([group][head_dim] f32) lives outside the pool, like block tables
 * and eviction indexes: bookkeeping, not cached tokens. */
typedef struct kivi_residual {
    kvd_stream s; /* first member: s->residual points here */
    float gather[];
} kivi_residual;

static bool dtype_is_kivi(kvd_dtype d)
{
    return d == KVD_DTYPE_KIVI2 || d == KVD_DTYPE_KIVI4;
}

/* Row sizes of a format: keys (KIVI: per key block of `group` tokens) and
 * values. False for an unknown dtype or a grouped format with group 0. */
static bool row_sizes(uint32_t head_dim, const kvd_stream_format *fmt, size_t *k_row,
                      size_t *v_row)
{
    switch (fmt->dtype) {
    case KVD_DTYPE_F32:
    case KVD_DTYPE_F16:
    case KVD_DTYPE_BF16:
    case KVD_DTYPE_INT8:
        break;
    case KVD_DTYPE_INT4:
    case KVD_DTYPE_KIVI2:
    case KVD_DTYPE_KIVI4:
        if (fmt->group == 0)
            return false;
        break;
    default:
        return false;
    }
    if (head_dim == 0)
        return false;
    *k_row = kvd_row_bytes(kvd_dtype_key_format(fmt->dtype), head_dim, fmt->group);
    *v_row = kvd_row_bytes(kvd_dtype_value_format(fmt->dtype), head_dim, fmt->group);
    return *k_row > 0 && *v_row > 0;
}

/* Bytes a page needs for spp slots: K region, V region (each padded to
 * 64), then the metadata array. KIVI's K region holds spp / group blocks.
 * Callers keep spp * row <= the capped page size: no overflow. */
static size_t layout_bytes(size_t spp, size_t k_row, size_t v_row, size_t kivi_group)
{
    const size_t k_units = kivi_group ? spp / kivi_group : spp;
    return align_up(k_units * k_row) + align_up(spp * v_row) + spp * sizeof(kvd_slot_meta);
}

uint32_t kvd_stream_slots_per_page(size_t page_bytes, uint32_t head_dim)
{
    const kvd_stream_format f32 = {.dtype = KVD_DTYPE_F32};
    return kvd_stream_slots_per_page_format(page_bytes, head_dim, &f32);
}

uint32_t kvd_stream_slots_per_page_format(size_t page_bytes, uint32_t head_dim,
                                          const kvd_stream_format *fmt)
{
    size_t k_row, v_row;
    if (!row_sizes(head_dim, fmt, &k_row, &v_row))
        return 0;
    /* Offsets are stored as uint32_t: only the first 4 GiB of a (hypothetical)
     * larger page is usable, which also keeps every product below exact. */
    const size_t cap = (size_t)UINT32_MAX & ~(size_t)(ALIGN - 1);
    if (page_bytes > cap)
        page_bytes = cap;
    if (k_row > page_bytes || v_row > page_bytes)
        return 0;
    /* The unit of allocation: one token, or for KIVI one key block and its
     * group tokens' values and metadata (a block never straddles pages). */
    const bool kivi = dtype_is_kivi(fmt->dtype);
    const size_t tokens = kivi ? fmt->group : 1;
    size_t unit_bytes;
    if (__builtin_mul_overflow(tokens, v_row + sizeof(kvd_slot_meta), &unit_bytes) ||
        __builtin_add_overflow(unit_bytes, k_row, &unit_bytes) || unit_bytes > page_bytes)
        return 0;
    /* Without padding a unit costs exactly unit_bytes, so this is an upper
     * bound; padding wastes < 2 * 64 bytes, i.e. fewer than
     * 128 / unit_bytes + 1 <= 9 units (unit_bytes >= 16), so the downward
     * search takes a handful of steps. */
    size_t units = page_bytes / unit_bytes;
    while (units > 0 && layout_bytes(units * tokens, k_row, v_row, kivi ? tokens : 0) > page_bytes)
        units--;
    /* KIVI's residual is f32 in pages of the same size: it must hold a
     * token too (a KIVI unit always costs more than an f32 token, so this
     * only matters at the padding's edge). */
    if (kivi && units > 0 && kvd_stream_slots_per_page(page_bytes, head_dim) == 0)
        return 0;
    return (uint32_t)(units * tokens); /* <= page_bytes / 8 < 2^29 */
}

int kvd_stream_init_format(kvd_stream *s, size_t page_bytes, uint32_t head_dim,
                           const kvd_stream_format *fmt)
{
    memset(s, 0, sizeof *s);
    s->head_dim = head_dim;
    s->fmt = *fmt;
    const uint32_t spp = kvd_stream_slots_per_page_format(page_bytes, head_dim, fmt);
    if (spp == 0)
        return -EINVAL;
    size_t k_row = 0, v_row = 0;
    row_sizes(head_dim, fmt, &k_row, &v_row); /* succeeded inside slots_per_page */
    const bool kivi = dtype_is_kivi(fmt->dtype);
    s->slots_per_page = spp;
    s->k_row_bytes = (uint32_t)k_row; /* <= page size <= UINT32_MAX (capped) */
    s->v_row_bytes = (uint32_t)v_row;
    const size_t k_units = kivi ? spp / fmt->group : spp;
    s->k_offset = 0;
    s->v_offset = (uint32_t)align_up(k_units * k_row);
    s->meta_offset = (uint32_t)(s->v_offset + align_up((size_t)spp * v_row));
    if (kivi) {
        size_t gather;
        if (__builtin_mul_overflow((size_t)fmt->group, (size_t)head_dim, &gather) ||
            __builtin_mul_overflow(gather, sizeof(float), &gather) ||
            __builtin_add_overflow(gather, sizeof(kivi_residual), &gather))
            return -ENOMEM;
        kivi_residual *r = malloc(gather);
        if (r == NULL)
            return -ENOMEM;
        kvd_stream_init(&r->s, page_bytes, head_dim);
        s->residual = &r->s;
    }
    return 0;
}

void kvd_stream_init(kvd_stream *s, size_t page_bytes, uint32_t head_dim)
{
    const kvd_stream_format f32 = {.dtype = KVD_DTYPE_F32};
    const int rc = kvd_stream_init_format(s, page_bytes, head_dim, &f32);
    assert(rc == 0 && "a slot must fit in a page (check before init)");
    (void)rc; /* on failure: spp 0, unusable; pages_needed reports it */
}

static kivi_residual *residual_of(const kvd_stream *s)
{
    return (kivi_residual *)s->residual; /* its first member */
}

/* Index of the existing page the next appended token goes into, if that page
 * is shared with a fork (and so must be copied first); SIZE_MAX otherwise. */
static size_t shared_write_page(const kvd_stream *s)
{
    const size_t first = kvd__stream_paged_tokens(s) / s->slots_per_page;
    if (s->shared == NULL || first >= s->n_pages || !s->shared[first])
        return SIZE_MAX;
    return first;
}

/* Pages beyond those held that `slots` slots of the stream's own pages need. */
static size_t grow_for(const kvd_stream *s, size_t slots)
{
    const size_t pages = slots / s->slots_per_page + (slots % s->slots_per_page != 0);
    return pages > s->n_pages ? pages - s->n_pages : 0;
}

/* KIVI: tokens in the quantized part once kvd_stream_settle has run on a
 * stream of nq quantized and nr residual tokens. Settle first completes a
 * partial last key block (left by eviction, cache/evict.c) with the oldest
 * G - nq % G residual tokens, then moves whole groups, always keeping at
 * least `residual` tokens in f32; so the quantized part ends at the largest
 * multiple of G that is <= nq + nr - residual, or stays at nq when that is
 * below nq (not enough residual tokens to complete the partial block).
 * Non-decreasing in nq and in nr, so evicting never raises it. */
static size_t settled_quantized(const kvd_stream *s, size_t nq, size_t nr)
{
    const size_t R = s->fmt.residual, G = s->fmt.group;
    if (nr <= R)
        return nq;
    const size_t whole = (nq + (nr - R)) / G * G;
    return whole > nq ? whole : nq;
}

static size_t div_up(size_t a, size_t b)
{
    return a / b + (a % b != 0);
}

size_t kvd_stream_pages_needed(const kvd_stream *s, size_t m)
{
    if (s->slots_per_page == 0 || m > SIZE_MAX - s->n_tokens)
        return SIZE_MAX; /* cannot be satisfied: the pool answers -ENOSPC */
    if (kvd__stream_is_kivi(s)) {
        const kvd_stream *r = s->residual;
        if (r == NULL)
            return SIZE_MAX; /* released: re-initialize before use */
        /* The residual holds all r->n_tokens + m between append and settle
         * (its peak); settle then fills the quantized part up to
         * settled_quantized(nq, nr) slots (completing a partial last block
         * first, then whole groups), whose pages the stream may already hold
         * (append attaches them, see kvd_stream_append), and gives emptied
         * residual pages back. Eviction between append and settle only
         * lowers both counts, and settled_quantized is monotone, so it never
         * needs more; it keeps the quantized pages the settle will fill
         * (kvd__stream_kivi_trim). A partial last block sits in a page the
         * stream already holds (pages hold whole blocks), so the count in
         * slots, rounded up to pages, is the bound either way. */
        const size_t nr = r->n_tokens + m;
        const size_t nq = s->n_tokens - r->n_tokens;
        return kvd_stream_pages_needed(r, m) + grow_for(s, settled_quantized(s, nq, nr));
    }
    if (m == 0)
        return 0;
    /* Slots 0..n_tokens-1 are in use; the pages already held cover
     * n_pages * spp slots (eviction gives an emptied tail page back at once,
     * so normally n_pages = ceil(n_tokens / spp)). One more for the copy of
     * a shared, partly filled tail page. Counted even if the fork has let go
     * of it meanwhile (append then gives the page straight back): the
     * refcount is the pool's to read, and planning must not depend on
     * another session's timing. */
    return grow_for(s, s->n_tokens + m) + (shared_write_page(s) != SIZE_MAX);
}

static int reserve_one(kvd_stream *s, size_t extra_pages)
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

int kvd_stream_reserve_table(kvd_stream *s, size_t extra_pages)
{
    /* KIVI: the caller plans pages for the stream as a whole, so both
     * tables get room for all of them (a few unused entries at most). */
    const int rc = reserve_one(s, extra_pages);
    if (rc != 0 || s->residual == NULL)
        return rc;
    return reserve_one(s->residual, extra_pages);
}

/* Metadata of slot j of the stream's own pages. */
static kvd_slot_meta *page_meta(const kvd_stream *s, size_t j)
{
    unsigned char *page = s->pages[j / s->slots_per_page];
    return (kvd_slot_meta *)(page + s->meta_offset) + j % s->slots_per_page;
}

kvd_slot_meta *kvd_stream_meta(const kvd_stream *s, size_t j)
{
    if (s->residual != NULL) { /* KIVI: the newest tokens are the residual's */
        const size_t paged = kvd__stream_paged_tokens(s);
        if (j >= paged)
            return page_meta(s->residual, j - paged);
    }
    return page_meta(s, j);
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

/* Writes x[0..d) into a row of format f; f32 stays a plain copy. */
static void store_row(kvd_row_format f, const float *x, size_t d, uint32_t group,
                      unsigned char *dst)
{
    if (f == KVD_ROW_F32)
        memcpy(dst, x, d * sizeof *x);
    else
        kvd_quant_row(f, x, d, group, dst);
}

/* Puts pages[0..n) at the end of the table (reserved by the caller). */
static void attach_pages(kvd_stream *s, void *const *pages, size_t n)
{
    assert(s->n_pages + n <= s->cap_pages && "reserve_table before append");
    for (size_t i = 0; i < n; i++) {
        s->pages[s->n_pages + i] = pages[i];
        s->shared[s->n_pages + i] = 0;
    }
    s->n_pages += n;
}

void kvd_stream_append(kvd_stream *s, kvd_pool *pool, size_t m, const float *restrict k,
                       const float *restrict v, size_t row_stride, void *const *new_pages)
{
    if (kvd__stream_is_kivi(s)) {
        /* New tokens go to the f32 residual; its growth comes first in
         * new_pages. The rest are the quantized pages the next settle will
         * fill: attached now, empty, so that append takes exactly
         * pages_needed(s, m) pages like every other dtype and the caller
         * needs to know nothing of the split. */
        kvd_stream *r = s->residual;
        assert(r != NULL && "KIVI stream used after release");
        const size_t need = kvd_stream_pages_needed(s, m), r_need = kvd_stream_pages_needed(r, m);
        kvd_stream_append(r, pool, m, k, v, row_stride, new_pages);
        attach_pages(s, new_pages + r_need, need - r_need);
        if (s->evict != NULL) {
            /* The residual has no index of its own: the stream's index
             * numbers slots across both parts (quantized first), and the new
             * tokens are its last slots. Norms as for other dtypes: of the
             * f32 key as received, in double. */
            const bool norms = kvd__evict_wants_norm(s->evict);
            for (size_t t = 0; t < m; t++) {
                double norm = 0.0;
                if (norms) {
                    const float *kt = k + t * row_stride;
                    for (size_t i = 0; i < s->head_dim; i++)
                        norm += (double)kt[i] * kt[i];
                    norm = sqrt(norm);
                }
                kvd__evict_on_append(s, s->n_tokens + t, (int64_t)(s->appended + t), norm);
            }
        }
        s->n_tokens += m;
        s->appended += m;
        return;
    }
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
    attach_pages(s, new_pages + taken, kvd_stream_pages_needed(s, m)); /* growth only now */

    const size_t d = s->head_dim;
    const kvd_row_format kf = kvd_dtype_key_format(s->fmt.dtype);
    const kvd_row_format vf = kvd_dtype_value_format(s->fmt.dtype);
    const bool norms = s->evict != NULL && kvd__evict_wants_norm(s->evict);
    for (size_t t = 0; t < m; t++) {
        const size_t j = s->n_tokens + t;
        const float *restrict kt = k + t * row_stride;
        const float *restrict vt = v + t * row_stride;
        store_row(kf, kt, d, s->fmt.group, kvd__stream_key(s, j));
        store_row(vf, vt, d, s->fmt.group, kvd__stream_value(s, j));
        kvd_slot_meta *meta = page_meta(s, j);
        meta->position = (int64_t)(s->appended + t);
        if (s->evict == NULL)
            continue;
        /* Norm of the key as received, in double: eviction compares norms
         * of keys that may differ in the last bits (quantization would blur
         * them), and a sum of squares in f32 could overflow. */
        double norm = 0.0;
        if (norms) {
            for (size_t i = 0; i < d; i++)
                norm += (double)kt[i] * kt[i];
            norm = sqrt(norm);
        }
        kvd__evict_on_append(s, j, meta->position, norm);
    }
    s->n_tokens += m;
    s->appended += m;
}

/* Residual slot j's f32 key and value rows. */
static float *res_key(const kvd_stream *r, size_t j)
{
    return (float *)kvd__stream_key(r, j);
}

static float *res_value(const kvd_stream *r, size_t j)
{
    return (float *)kvd__stream_value(r, j);
}

/* KIVI: gives back the pages neither part needs: residual pages past its
 * tokens, and quantized pages past those the next settle fills
 * (settled_quantized: after a settle, the quantized tokens themselves).
 * Keeping the latter is what lets a step evict between append and settle
 * without the settle needing pages the plan did not count. */
void kvd__stream_kivi_trim(kvd_stream *s, kvd_pool *pool)
{
    kvd_stream *r = s->residual;
    const size_t nr = r->n_tokens, nq = s->n_tokens - nr;
    const size_t r_keep = div_up(nr, r->slots_per_page);
    if (r->n_pages > r_keep) {
        kvd_pool_release(pool, r->pages + r_keep, r->n_pages - r_keep);
        r->n_pages = r_keep;
    }
    const size_t q_keep = div_up(settled_quantized(s, nq, nr), s->slots_per_page);
    if (s->n_pages > q_keep) {
        kvd_pool_release(pool, s->pages + q_keep, s->n_pages - q_keep);
        s->n_pages = q_keep;
    }
}

void kvd_stream_settle(kvd_stream *s, kvd_pool *pool, void *const *spare, size_t n_spare,
                       size_t *spare_used)
{
    if (!kvd__stream_is_kivi(s) || s->residual == NULL)
        return;
    kvd_stream *r = s->residual;
    size_t nq = s->n_tokens - r->n_tokens, used = 0, moved = 0;
    const size_t target = settled_quantized(s, nq, r->n_tokens);
    const size_t G = s->fmt.group, d = s->head_dim, spp = s->slots_per_page;
    const kvd_row_format kf = kvd_dtype_key_format(s->fmt.dtype);
    const kvd_row_format vf = kvd_dtype_value_format(s->fmt.dtype);
    float *gather = residual_of(s)->gather; /* [G][d] */

    /* A partial last key block (eviction moved its last token away, see
     * kvd__stream_kivi_move_rows) is completed first with the oldest
     * residual tokens: its existing keys are read back through the
     * reference dequantizer, the new ones added in f32, and the whole block
     * quantized again (its older tokens take one more rounding step, as in
     * eviction). It already has its page. Only once the residual can give
     * all G - nq % G tokens and still keep `residual` (target > nq). */
    if (target > nq && nq % G != 0) {
        const size_t have = nq % G, fill = G - have, b0 = nq - have;
        unsigned char *block = kvd__stream_key(s, b0);
        for (size_t t = 0; t < have; t++)
            kvd_dequant_row(kf, block, t, d, s->fmt.group, gather + t * d);
        for (size_t t = 0; t < fill; t++)
            memcpy(gather + (have + t) * d, res_key(r, t), d * sizeof *gather);
        kvd_quant_key_block(kf, gather, d, G, d, s->fmt.group, block);
        for (size_t t = 0; t < fill; t++) {
            kvd_quant_row(vf, res_value(r, t), d, s->fmt.group, kvd__stream_value(s, nq + t));
            *page_meta(s, nq + t) = *page_meta(r, t);
        }
        nq += fill;
        moved = fill;
    }

    /* Then whole groups of the oldest residual tokens, one key block at a
     * time. nq is a multiple of G here and spp of G, so a block starts a
     * page or fits in the current one. */
    for (; nq < target; nq += G, moved += G) {
        if (nq / spp >= s->n_pages) { /* normally attached by append already */
            assert(used < n_spare && "kvd_stream_pages_needed undercounted");
            if (used >= n_spare || s->n_pages >= s->cap_pages)
                break; /* no page or table room: the rest stays in f32 */
            attach_pages(s, spare + used, 1);
            used++;
        }
        const size_t first = moved; /* residual slot of the block's oldest token */
        for (size_t t = 0; t < G; t++)
            memcpy(gather + t * d, res_key(r, first + t), d * sizeof *gather);
        kvd_quant_key_block(kf, gather, d, G, d, s->fmt.group, kvd__stream_key(s, nq));
        for (size_t t = 0; t < G; t++) {
            kvd_quant_row(vf, res_value(r, first + t), d, s->fmt.group,
                          kvd__stream_value(s, nq + t));
            *page_meta(s, nq + t) = *page_meta(r, first + t);
        }
    }

    /* Shift the remaining residual rows down to slot 0 (oldest first).
     * Slot j takes slot j + moved; going up, every source is read before
     * anything overwrites it, and distinct slots never overlap. O(residual
     * * d) per settle, the same order as the quantization above. Unified
     * slot numbers (quantized first) do not change, so the eviction index
     * needs no update. */
    if (moved > 0) {
        const size_t left = r->n_tokens - moved;
        for (size_t j = 0; j < left; j++) {
            memcpy(res_key(r, j), res_key(r, j + moved), d * sizeof(float));
            memcpy(res_value(r, j), res_value(r, j + moved), d * sizeof(float));
            *page_meta(r, j) = *page_meta(r, j + moved);
        }
        r->n_tokens = left;
    }
    /* Emptied residual pages, and quantized pages a step's eviction left
     * unneeded, go back at once. */
    kvd__stream_kivi_trim(s, pool);
    *spare_used += used;
}

/* KIVI eviction: moving the last slot `from` into the hole `to`.
 *  - Both in the residual: an f32 row move inside the residual.
 *  - `to` in the quantized part: its value row is quantized again from the
 *    moved token's f32 value (per token, kvd_quant_row), or copied byte for
 *    byte when the moved token is itself quantized (a value row carries its
 *    own scales, so it means the same in any slot: no new error). Its key
 *    block b = to / group is quantized again: its tokens are read back
 *    (kvd_dequant_row) into the residual's gather buffer [group][d]
 *    (allocated with the stream: eviction never allocates), row to % group
 *    is overwritten with the moved token's key (in f32 from the residual,
 *    else read back from its own block first), and kvd_quant_key_block
 *    runs over the block's count. Re-quantizing compounds the error of the
 *    block's other tokens by at most one more rounding step: each read-back
 *    value is rounded again on the new per-channel grid, within half its
 *    step, i.e. within (new range of the channel over the block) /
 *    (2 (2^B - 1)) of what it read before (plus f16 rounding of the stored
 *    scale, which is rounded up so that the bound holds). A moved
 *    quantized token likewise takes one more step.
 *  - `from` in the quantized part (the residual is empty): it leaves its
 *    block, which becomes a partial LAST block (nq no longer a multiple of
 *    group). That block is not re-quantized: its scales still cover its
 *    remaining tokens, whose codes are unchanged; kernels read only the
 *    first n tokens of a segment, so a partial last block reads like a
 *    partly filled one, and kvd_stream_settle completes it later.
 * Metadata and index back-pointers are cache/evict.c's (unified slots). */
void kvd__stream_kivi_move_rows(kvd_stream *s, size_t from, size_t to)
{
    kvd_stream *r = s->residual;
    const size_t nq = s->n_tokens - r->n_tokens, d = s->head_dim, G = s->fmt.group;
    assert(from + 1 == s->n_tokens && to < from);
    if (to >= nq) {
        memcpy(res_key(r, to - nq), res_key(r, from - nq), d * sizeof(float));
        memcpy(res_value(r, to - nq), res_value(r, from - nq), d * sizeof(float));
        return;
    }
    const kvd_row_format kf = kvd_dtype_key_format(s->fmt.dtype);
    const kvd_row_format vf = kvd_dtype_value_format(s->fmt.dtype);
    float *scratch = residual_of(s)->gather; /* [G][d] */
    const size_t b0 = to - to % G;
    /* Quantized tokens once `from` has left: the block's count excludes it
     * when it was the block's own last token. */
    const size_t nq_after = from >= nq ? nq : nq - 1;
    const size_t count = nq_after - b0 < G ? nq_after - b0 : G;
    unsigned char *block = kvd__stream_key(s, to);
    for (size_t t = 0; t < count; t++)
        kvd_dequant_row(kf, block, t, d, s->fmt.group, scratch + t * d);
    float *row = scratch + (to - b0) * d;
    if (from >= nq) {
        memcpy(row, res_key(r, from - nq), d * sizeof *row);
        kvd_quant_row(vf, res_value(r, from - nq), d, s->fmt.group, kvd__stream_value(s, to));
    } else {
        kvd_dequant_row(kf, kvd__stream_key(s, from), from % G, d, s->fmt.group, row);
        memcpy(kvd__stream_value(s, to), kvd__stream_value(s, from), s->v_row_bytes);
    }
    kvd_quant_key_block(kf, scratch, d, count, d, s->fmt.group, block);
}

void kvd__stream_kivi_drop_last(kvd_stream *s, kvd_pool *pool)
{
    kvd_stream *r = s->residual;
    if (r->n_tokens > 0)
        r->n_tokens--;
    s->n_tokens--;
    kvd__stream_kivi_trim(s, pool);
}

void kvd__stream_key_f32(const kvd_stream *s, size_t j, float *out)
{
    const size_t d = s->head_dim;
    if (s->residual != NULL) {
        const size_t nq = kvd__stream_paged_tokens(s);
        if (j >= nq) {
            memcpy(out, res_key(s->residual, j - nq), d * sizeof *out);
            return;
        }
    }
    const size_t t = kvd__stream_is_kivi(s) ? j % s->fmt.group : 0;
    kvd_dequant_row(kvd_dtype_key_format(s->fmt.dtype), kvd__stream_key(s, j), t, d,
                        s->fmt.group, out);
}

void kvd_stream_overwrite(kvd_stream *s, size_t first, size_t m, const float *restrict k,
                          const float *restrict v, size_t row_stride)
{
    assert(!kvd__stream_is_kivi(s) && first + m <= s->n_tokens && !s->n_shared);
    const kvd_row_format kf = kvd_dtype_key_format(s->fmt.dtype);
    const kvd_row_format vf = kvd_dtype_value_format(s->fmt.dtype);
    for (size_t t = 0; t < m; t++) {
        store_row(kf, k + t * row_stride, s->head_dim, s->fmt.group, kvd__stream_key(s, first + t));
        store_row(vf, v + t * row_stride, s->head_dim, s->fmt.group, kvd__stream_value(s, first + t));
    }
}

void kvd_stream_clear(kvd_stream *s, kvd_pool *pool)
{
    assert(!s->evict && !s->n_shared);
    kvd_stream *r = s->residual;
    if (r != NULL) {
        if (r->n_pages)
            kvd_pool_release(pool, r->pages, r->n_pages);
        r->n_pages = 0;
        r->n_tokens = 0;
    }
    if (s->n_pages)
        kvd_pool_release(pool, s->pages, s->n_pages);
    s->n_pages = 0;
    s->n_tokens = 0;
}

void kvd_stream_truncate(kvd_stream *s, kvd_pool *pool, size_t n)
{
    assert(!kvd__stream_is_kivi(s) && !s->evict && !s->n_shared && n <= s->n_tokens);
    s->n_tokens = n;
    const size_t keep = n / s->slots_per_page + (n % s->slots_per_page != 0);
    if (s->n_pages > keep) {
        kvd_pool_release(pool, s->pages + keep, s->n_pages - keep);
        s->n_pages = keep;
    }
}

void kvd_stream_drop_oldest(kvd_stream *s, kvd_pool *pool, size_t k)
{
    assert(!kvd__stream_is_kivi(s) && !s->evict && !s->n_shared && "per-token streams without a policy");
    if (k == 0)
        return;
    if (k > s->n_tokens)
        k = s->n_tokens;
    const size_t left = s->n_tokens - k;
    /* Slot j takes slot j + k, going up: every source is read before it is
     * overwritten, and slots never partly overlap. A per-token row carries
     * its own scales, so it moves byte for byte. */
    for (size_t j = 0; j < left; j++) {
        memcpy(kvd__stream_key(s, j), kvd__stream_key(s, j + k), s->k_row_bytes);
        memcpy(kvd__stream_value(s, j), kvd__stream_value(s, j + k), s->v_row_bytes);
        *page_meta(s, j) = *page_meta(s, j + k);
    }
    s->evicted += k;
    kvd_stream_truncate(s, pool, left);
}

static kvd_kv_pages view_of(const kvd_stream *s)
{
    /* void * and unsigned char * share representation (C11 6.2.5p28); the
     * block table is read through the kernels' byte-pointer view. */
    return (kvd_kv_pages){
        .pages = (const unsigned char *const *)s->pages,
        .slots_per_page = s->slots_per_page,
        .head_dim = s->head_dim,
        .k_offset = s->k_offset,
        .v_offset = s->v_offset,
        .k_format = kvd_dtype_key_format(s->fmt.dtype),
        .v_format = kvd_dtype_value_format(s->fmt.dtype),
        .k_row_bytes = s->k_row_bytes,
        .v_row_bytes = s->v_row_bytes,
        .group = s->fmt.group,
    };
}

kvd_kv_pages kvd_stream_view(const kvd_stream *s)
{
    return view_of(s);
}

size_t kvd_stream_segments(const kvd_stream *s, size_t n_visible, kvd_kv_segment out[2])
{
    assert(n_visible <= s->n_tokens);
    if (n_visible > s->n_tokens)
        n_visible = s->n_tokens;
    out[0].kv = view_of(s);
    if (!kvd__stream_is_kivi(s) || s->residual == NULL) {
        out[0].n = n_visible;
        return 1;
    }
    /* KIVI: the quantized (older) tokens, then the f32 residual. */
    const size_t nq = kvd__stream_paged_tokens(s);
    out[0].n = n_visible < nq ? n_visible : nq;
    out[1].kv = view_of(s->residual);
    out[1].n = n_visible - out[0].n;
    return 2;
}

size_t kvd_stream_payload_bytes(const kvd_stream *s)
{
    const size_t rows = s->k_row_bytes + (size_t)s->v_row_bytes;
    if (!kvd__stream_is_kivi(s) || s->residual == NULL)
        return s->n_tokens * rows;
    const size_t nr = s->residual->n_tokens, nq = s->n_tokens - nr;
    /* a partial last key block (after eviction) takes a whole block */
    return div_up(nq, s->fmt.group) * s->k_row_bytes + nq * (size_t)s->v_row_bytes +
           nr * 2 * (size_t)s->head_dim * sizeof(float);
}

int kvd__stream_fork_prepare(const kvd_stream *src, kvd_stream *dst)
{
    /* KIVI forks are not supported (the API refuses them first): a fork
     * shares pages copy-on-write, but the settle that follows each step
     * rewrites the residual and fills key blocks in place, so both sides
     * would need their own residual at once and settling one side would
     * copy pages the other still reads; not worth it before anyone asks. */
    if (kvd__stream_is_kivi(src)) {
        memset(dst, 0, sizeof *dst);
        return -ENOTSUP;
    }
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
    const int rc = kvd__stream_fork_prepare(src, dst);
    if (rc != 0)
        return rc;
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
    if (s->residual != NULL) {
        kvd_stream_release(s->residual, pool);
        free(residual_of(s));
    }
    /* Empty again, same shape: as if freshly initialized, except that a
     * KIVI stream has no residual any more (init_format it again). */
    s->pages = NULL;
    s->shared = NULL;
    s->evict = NULL;
    s->residual = NULL;
    s->n_shared = 0;
    s->n_pages = 0;
    s->cap_pages = 0;
    s->n_tokens = 0;
    s->appended = 0;
    s->evicted = 0;
}
