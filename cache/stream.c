/* cache/stream.c — one stream's slots and block table in any cache dtype:
 * page layout (K region, V region, slot metadata, each 64-byte aligned, row
 * sizes from attention/formats.h), append of new tokens (quantized into
 * their slots by cache/quant.c) into pages the caller took from the pool
 * (copying a tail page shared with a fork first), in-place rewrites and
 * truncation, and the read-only views the attention kernels use.
 * Copy-on-write forks and unsharing are cache/stream_fork.c's; KIVI's
 * residual, settle and row moves cache/stream_kivi.c's; the eviction index
 * belongs to cache/evict.c. */
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
            __builtin_add_overflow(gather, sizeof(kvd__kivi_residual), &gather))
            return -ENOMEM;
        kvd__kivi_residual *r = malloc(gather);
        if (r == NULL)
            return -ENOMEM;
        kvd_stream_init(&r->s, page_bytes, head_dim);
        s->residual = &r->s;
    }
    return 0;
}

size_t kvd__stream_heap_bytes_init(uint32_t head_dim, const kvd_stream_format *fmt)
{
    if (!dtype_is_kivi(fmt->dtype))
        return 0;
    /* The residual and its gather buffer, one allocation (init_format). */
    return sizeof(kvd__kivi_residual) + (size_t)fmt->group * head_dim * sizeof(float);
}

size_t kvd_stream_heap_bytes(const kvd_stream *s)
{
    /* The block table and its shared flags grow together to cap_pages. */
    size_t n = s->cap_pages * (sizeof *s->pages + sizeof *s->shared) + kvd__evict_heap_bytes(s->evict);
    if (s->residual != NULL)
        n += kvd__stream_heap_bytes_init(s->head_dim, &s->fmt) + kvd_stream_heap_bytes(s->residual);
    return n;
}

void kvd_stream_init(kvd_stream *s, size_t page_bytes, uint32_t head_dim)
{
    const kvd_stream_format f32 = {.dtype = KVD_DTYPE_F32};
    const int rc = kvd_stream_init_format(s, page_bytes, head_dim, &f32);
    assert(rc == 0 && "a slot must fit in a page (check before init)");
    (void)rc; /* on failure: spp 0, unusable; pages_needed reports it */
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
         * kvd__stream_kivi_settled(nq, nr) slots (completing a partial last block
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
        return kvd_stream_pages_needed(r, m) + grow_for(s, kvd__stream_kivi_settled(s, nq, nr));
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

kvd_slot_meta *kvd_stream_meta(const kvd_stream *s, size_t j)
{
    if (s->residual != NULL) { /* KIVI: the newest tokens are the residual's */
        const size_t paged = kvd__stream_paged_tokens(s);
        if (j >= paged)
            return kvd__stream_page_meta(s->residual, j - paged);
    }
    return kvd__stream_page_meta(s, j);
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

void kvd__stream_attach_pages(kvd_stream *s, void *const *pages, size_t n)
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
        kvd__stream_attach_pages(s, new_pages + r_need, need - r_need);
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
    kvd__stream_attach_pages(s, new_pages + taken, kvd_stream_pages_needed(s, m)); /* growth only now */

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
        kvd_slot_meta *meta = kvd__stream_page_meta(s, j);
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

void kvd__stream_key_f32(const kvd_stream *s, size_t j, float *out)
{
    const size_t d = s->head_dim;
    if (s->residual != NULL) {
        const size_t nq = kvd__stream_paged_tokens(s);
        if (j >= nq) {
            memcpy(out, kvd__stream_key(s->residual, j - nq), d * sizeof *out); /* f32 */
            return;
        }
    }
    const size_t t = kvd__stream_is_kivi(s) ? j % s->fmt.group : 0;
    kvd_dequant_row(kvd_dtype_key_format(s->fmt.dtype), kvd__stream_key(s, j), t, d,
                        s->fmt.group, out);
}

void kvd__stream_overwrite(kvd_stream *s, size_t first, size_t m, const float *restrict k,
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

void kvd__stream_clear(kvd_stream *s, kvd_pool *pool)
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

void kvd__stream_truncate(kvd_stream *s, kvd_pool *pool, size_t n)
{
    assert(!kvd__stream_is_kivi(s) && !s->evict && !s->n_shared && n <= s->n_tokens);
    s->n_tokens = n;
    const size_t keep = n / s->slots_per_page + (n % s->slots_per_page != 0);
    if (s->n_pages > keep) {
        kvd_pool_release(pool, s->pages + keep, s->n_pages - keep);
        s->n_pages = keep;
    }
}

void kvd__stream_drop_oldest(kvd_stream *s, kvd_pool *pool, size_t k)
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
        *kvd__stream_page_meta(s, j) = *kvd__stream_page_meta(s, j + k);
    }
    s->evicted += k;
    kvd__stream_truncate(s, pool, left);
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

void kvd_stream_release(kvd_stream *s, kvd_pool *pool)
{
    if (s->n_pages > 0)
        kvd_pool_release(pool, s->pages, s->n_pages);
    free(s->pages);
    free(s->shared);
    kvd__evict_free(s->evict);
    if (s->residual != NULL) {
        kvd_stream_release(s->residual, pool);
        free(s->residual); /* the kvd__kivi_residual, its first member */
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
