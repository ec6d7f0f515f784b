/* cache/stream.h — one stream: the cache of one (layer, kv_head) of a session.
 * A stream owns a block table (list of pool pages) and a count of slots in
 * use; slot j is in page j / slots_per_page. In an f32 page the layout is
 *   [K: spp x head_dim f32][V: spp x head_dim f32][meta: spp x kvd_slot_meta]
 * with each block starting on a 64-byte boundary, so one slot costs
 * 2*head_dim*4 + sizeof(kvd_slot_meta) bytes plus page slack, all inside the
 * pool and all counted. Appending never fails half-way: the caller first
 * reserves block-table room and takes pages from the pool, then appends. */
#ifndef KVD_CACHE_STREAM_H
#define KVD_CACHE_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attention/attention.h"
#include "cache/pool.h"
#include "cache/types.h"

/* Per-slot metadata stored in the page beside the slot's key and value. */
typedef struct kvd_slot_meta {
    int64_t position; /* original token position (tokens appended before it) */
} kvd_slot_meta;     /* 8 bytes a token: key norms (l2norm) and scores (h2o)
                        live in the eviction index, so only sessions with a
                        policy pay for them and scoring never writes a page
                        shared with a fork */

typedef struct kvd_evict_index kvd_evict_index; /* cache/evict.c */

/* How a stream stores its tokens: the cache dtype and its parameters. */
typedef struct kvd_stream_format {
    kvd_dtype dtype;         /* KVD_DTYPE_F32 (0) unless set */
    uint32_t group;          /* int4/KIVI group size (channels; KIVI keys: tokens) */
    uint32_t residual;       /* KIVI: newest tokens kept in f32, a multiple of group */
} kvd_stream_format;

typedef struct kvd_stream {
    void **pages;            /* block table: n_pages pool pages */
    size_t n_pages;
    size_t cap_pages;        /* allocated length of `pages` */
    size_t n_tokens;         /* slots in use: 0..n_tokens-1 */
    uint64_t appended;       /* tokens ever appended (next position) */
    uint64_t evicted;        /* tokens ever evicted */
    uint32_t head_dim;
    uint32_t slots_per_page;
    uint32_t k_offset, v_offset, meta_offset; /* byte offsets inside a page */
    /* Copy-on-write: shared[i] != 0 when page i may also belong to a fork
     * (set by kvd_stream_fork on both sides); writing into such a page first
     * copies it unless its refcount has dropped back to 1. [cap_pages] */
    unsigned char *shared;
    size_t n_shared;          /* pages flagged in `shared` */
    kvd_evict_index *evict;   /* NULL: no eviction policy (cache/evict.h) */
    kvd_stream_format fmt;
    uint32_t k_row_bytes, v_row_bytes; /* per token row; KIVI keys: per key block */
    /* KIVI only: the newest tokens, in f32, in their own pages. n_tokens and
     * appended above count them too; the quantized part holds n_tokens -
     * residual->n_tokens tokens (slots 0..nq-1, then the residual's). Without
     * eviction they are in position order and nq is a multiple of group;
     * eviction reorders slots and may leave a partial last key block, which
     * the next kvd_stream_settle completes. NULL for other dtypes. */
    struct kvd_stream *residual;
    /* Tensor attention: the stream of k2/v2 that must keep the same slot
     * order; every eviction move here is repeated there (same dtype, no
     * index, never shared). NULL otherwise. */
    struct kvd_stream *mirror;
} kvd_stream;

/* Slots of `head_dim` f32 keys and values that fit in one page (with the
 * 64-byte block alignment); 0 if not even one fits. */
uint32_t kvd_stream_slots_per_page(size_t page_bytes, uint32_t head_dim);

/* Initializes an empty f32 stream (no pages). slots_per_page(page_bytes, head_dim)
 * must be >= 1. */
void kvd_stream_init(kvd_stream *s, size_t page_bytes, uint32_t head_dim);

/* Slots per page and initialization for any dtype. The page layout is the
 * same [K region][V region][meta] with the dtype's row sizes; for KIVI,
 * slots_per_page is a multiple of fmt->group (whole key blocks per page) and
 * the residual sub-stream is f32. 0 slots: not even one row or block fits.
 * kvd_stream_init_format returns 0, -EINVAL (nothing fits) or -ENOMEM. */
uint32_t kvd_stream_slots_per_page_format(size_t page_bytes, uint32_t head_dim,
                                          const kvd_stream_format *fmt);
int kvd_stream_init_format(kvd_stream *s, size_t page_bytes, uint32_t head_dim,
                           const kvd_stream_format *fmt);

/* KIVI: moves whole key groups out of the f32 residual once it holds at
 * least residual + group tokens (oldest slots first), quantizing each group
 * as a key block and its values per token; a partial last key block left by
 * eviction is first completed (re-quantized with the group - nq % group
 * oldest residual tokens) once the residual holds residual + that many. Takes pages for the quantized part
 * from spare[0..n_spare) in order (adding to *spare_used) and gives emptied
 * residual pages back to the pool. No-op for other dtypes. Call at the end
 * of a step; kvd_stream_pages_needed(s, m) already counts these pages.
 * Cannot fail given those pages. */
void kvd_stream_settle(kvd_stream *s, kvd_pool *pool, void *const *spare, size_t n_spare,
                       size_t *spare_used);

/* The segments attention reads for the first n_visible tokens (oldest
 * first): one for per-token dtypes; for KIVI the quantized part, then the
 * residual. Returns the count (<= 2) written to out. */
size_t kvd_stream_segments(const kvd_stream *s, size_t n_visible, kvd_kv_segment out[2]);

/* Exact bytes of cached K/V payload for the tokens held now, scales and
 * f32 residual tokens included; slot metadata and page slack excluded (for
 * bits per coordinate = 8 * payload / (2 * head_dim * tokens)). */
size_t kvd_stream_payload_bytes(const kvd_stream *s);

/* Pages the stream must take from the pool to append m more tokens,
 * including one copy of a shared, partly filled tail page and, for KIVI, the
 * residual's growth and the quantized pages kvd_stream_settle will take. */
size_t kvd_stream_pages_needed(const kvd_stream *s, size_t m);

/* Makes room in the block table for `extra_pages` more pages. Changes nothing
 * a reader can see; returns 0 or -ENOMEM. */
int kvd_stream_reserve_table(kvd_stream *s, size_t extra_pages);

/* Appends m tokens. Key t is k[t * row_stride .. + head_dim], value t likewise
 * in v (row_stride lets the caller pass one kv head of a [m][kv_heads][d]
 * tensor). new_pages holds exactly kvd_stream_pages_needed(s, m) pages taken
 * from the pool, and the table (reserve_table) and eviction index
 * (kvd_stream_evict_reserve) must have room. A shared tail page is copied
 * into new_pages[0] first and its reference dropped in `pool`. Slot positions
 * continue from s->appended. Keys and values are quantized into the slots
 * (f32: copied). KIVI: the tokens go to the f32 residual (its new pages
 * first in new_pages); the rest of new_pages are the quantized pages the next
 * kvd_stream_settle fills, attached to the table now, still empty, so append
 * takes all the pages it was given for every dtype. Cannot fail. */
void kvd_stream_append(kvd_stream *s, kvd_pool *pool, size_t m, const float *k, const float *v,
                       size_t row_stride, void *const *new_pages);

/* Makes dst a copy-on-write fork of src: same tokens, same pages (one more
 * reference each), its own block table and eviction index (KIVI: its own
 * residual, forked alike); every page is flagged shared in both. dst must
 * be uninitialized. 0 or -ENOMEM; then nothing changed, dst empty. */
int kvd_stream_fork(kvd_stream *src, kvd_stream *dst, kvd_pool *pool);

/* Gives every page back to the pool (drops its references) and frees the
 * block table, eviction index and KIVI residual; the stream is empty
 * afterwards (a KIVI stream needs kvd_stream_init_format before reuse). */
void kvd_stream_release(kvd_stream *s, kvd_pool *pool);

/* Heap (outside the pool) the stream holds beyond its own struct: block
 * table and shared flags at capacity, eviction index, and for KIVI the
 * residual sub-stream with its gather buffer and table. Grows with pages
 * (the table) and tokens (the index); never shrinks until release. */
size_t kvd_stream_heap_bytes(const kvd_stream *s);

/* Read-only view for attention kernels. Valid until the stream changes. */
kvd_kv_pages kvd_stream_view(const kvd_stream *s);

/* Metadata of slot j (j < n_tokens). */
kvd_slot_meta *kvd_stream_meta(const kvd_stream *s, size_t j);

/* ---- Private to cache/ (kvd__ names): what stream.c shares with evict.c and
 * session.c (slot addressing in any dtype, copy-on-write of one page, fork in
 * two phases, KIVI eviction moves). Here rather than in cache/internal.h so
 * that stream.c, which defines them, includes no header that includes it back
 * (the include check treats stream.c + stream.h as one unit). Nothing outside
 * cache/ may call them. ---- */

/* True for the KIVI dtypes: key blocks of `group` tokens plus an f32
 * residual sub-stream (s->residual, NULL again once released). */
static inline bool kvd__stream_is_kivi(const kvd_stream *s)
{
    return s->fmt.dtype == KVD_DTYPE_KIVI2 || s->fmt.dtype == KVD_DTYPE_KIVI4;
}

/* Slots of the stream's own pages in use: all of them, except for KIVI,
 * where the newest residual->n_tokens live in the residual's pages. */
static inline size_t kvd__stream_paged_tokens(const kvd_stream *s)
{
    return s->residual != NULL ? s->n_tokens - s->residual->n_tokens : s->n_tokens;
}

/* Key of slot j (k_row_bytes bytes); for KIVI the key block holding it (the
 * block of slots j - j % group .. + group - 1, k_row_bytes bytes). */
static inline unsigned char *kvd__stream_key(const kvd_stream *s, size_t j)
{
    unsigned char *page = s->pages[j / s->slots_per_page];
    size_t i = j % s->slots_per_page;
    if (kvd__stream_is_kivi(s))
        i /= s->fmt.group;
    return page + s->k_offset + i * s->k_row_bytes;
}

/* Metadata of slot j of the stream's own pages (KIVI: j < paged tokens;
 * kvd_stream_meta takes the unified numbering). */
static inline kvd_slot_meta *kvd__stream_page_meta(const kvd_stream *s, size_t j)
{
    unsigned char *page = s->pages[j / s->slots_per_page];
    return (kvd_slot_meta *)(page + s->meta_offset) + j % s->slots_per_page;
}

/* Value row of slot j (v_row_bytes bytes). */
static inline unsigned char *kvd__stream_value(const kvd_stream *s, size_t j)
{
    unsigned char *page = s->pages[j / s->slots_per_page];
    return page + s->v_offset + (j % s->slots_per_page) * s->v_row_bytes;
}

/* Makes page i (flagged shared) private before it is written: if another
 * stream still holds it, copies it whole into `spare` (a pool page the caller
 * took), puts the copy in the table, drops the old reference and counts the
 * copy; either way clears the flag. Returns 1 (spare used), 0 (no copy was
 * needed, spare untouched) or -1 (a copy was needed but spare is NULL:
 * nothing changed). */
int kvd__stream_unshare(kvd_stream *s, kvd_pool *pool, size_t i, void *spare);

/* Makes every page still flagged shared private (kvd__stream_unshare each),
 * taking copies from spare[0..n_spare) in order; returns how many it took.
 * n_spare >= s->n_shared always suffices. For writers that move rows all
 * over the stream (a tensor window, k2/v2 following an eviction, rebuilt
 * pair rows), which then find no shared page. */
size_t kvd__stream_unshare_all(kvd_stream *s, kvd_pool *pool, void *const *spare, size_t n_spare);

/* KIVI without eviction: an append writes the residual, and the settle
 * after it shifts every residual row and fills the quantized page of the
 * next key block. unshare makes those pages private (the residual's and
 * that one page, when shared) with copies from spare[0..n_spare) in order
 * and returns how many it took; bound: at most that many. 0 for other
 * dtypes. (With eviction rows move anywhere: kvd__stream_unshare_all of the
 * stream and of its residual.) */
size_t kvd__stream_kivi_unshare_bound(const kvd_stream *s);
size_t kvd__stream_kivi_unshare(kvd_stream *s, kvd_pool *pool, void *const *spare, size_t n_spare);

/* Fork in two phases so a session can fork all its streams or none:
 * prepare allocates dst's table, flags and index (KIVI: and residual; no page
 * references, src untouched; 0 or -ENOMEM, with dst empty); commit takes
 * the references and flags every page shared on both sides (cannot fail);
 * abort frees what prepare allocated. */
int kvd__stream_fork_prepare(const kvd_stream *src, kvd_stream *dst);
void kvd__stream_fork_commit(kvd_stream *src, kvd_stream *dst, kvd_pool *pool);
void kvd__stream_fork_abort(kvd_stream *dst);

/* KIVI's residual sub-stream, allocated with a gather buffer so settle and
 * eviction never allocate: the `group` oldest residual keys may straddle
 * residual pages, and kvd_quant_key_block wants them as one strided array.
 * The buffer ([group][head_dim] f32) lives outside the pool, like block
 * tables and eviction indexes: bookkeeping, not cached tokens. */
typedef struct kvd__kivi_residual {
    kvd_stream s; /* first member: s->residual points here */
    float gather[];
} kvd__kivi_residual;

static inline float *kvd__stream_kivi_gather(const kvd_stream *s)
{
    return ((kvd__kivi_residual *)s->residual)->gather; /* its first member */
}

/* Heap kvd_stream_init_format allocates for this format (KIVI's residual
 * and gather buffer; 0 for the other dtypes). */
size_t kvd__stream_heap_bytes_init(uint32_t head_dim, const kvd_stream_format *fmt);

/* Puts pages[0..n) at the end of the block table (room reserved by the
 * caller), not shared. */
void kvd__stream_attach_pages(kvd_stream *s, void *const *pages, size_t n);

/* KIVI (cache/stream_kivi.c): tokens in the quantized part once
 * kvd_stream_settle has run on a stream of nq quantized and nr residual
 * tokens (the pages it will need). */
size_t kvd__stream_kivi_settled(const kvd_stream *s, size_t nq, size_t nr);

/* KIVI eviction (cache/stream_kivi.c, which knows the residual and its
 * gather buffer): move_rows writes the rows of the last slot `from` into slot
 * `to` < from (unified numbering: quantized slots, then the residual),
 * re-quantizing the key block (and value row) of a hole in the quantized
 * part; metadata is the caller's. drop_last then forgets the last slot
 * (n_tokens and, if non-empty, the residual's count) and trims pages. trim
 * gives back residual pages past its tokens and quantized pages past those
 * the next kvd_stream_settle fills. Never allocate, cannot fail. */
void kvd__stream_kivi_move_rows(kvd_stream *s, size_t from, size_t to);
void kvd__stream_kivi_drop_last(kvd_stream *s, kvd_pool *pool);
void kvd__stream_kivi_trim(kvd_stream *s, kvd_pool *pool);

/* Key of slot j (unified numbering for KIVI) read back in f32 through the
 * reference dequantizer (exact for f32 rows and the KIVI residual). */
void kvd__stream_key_f32(const kvd_stream *s, size_t j, float *out);

/* For the step engine (cache/step.c): tensor windows and two-cache pair rows. */

/* Removes the k oldest tokens of a per-token stream (any dtype but KIVI)
 * with no eviction index and no shared page (a tensor window sliding on): slots k.. move down by k in
 * order, emptied tail pages go back to the pool. O(n * d) byte moves, which
 * is below the O(n^2 * d) tensor attention it serves. */
void kvd__stream_drop_oldest(kvd_stream *s, kvd_pool *pool, size_t k);

/* Rewrites rows first .. first+m-1 (< n_tokens) of a per-token stream with
 * new keys and values (row t at k + t * row_stride), in place; positions are
 * kept. For a two-cache rebuilding its pair rows after an eviction. */
void kvd__stream_overwrite(kvd_stream *s, size_t first, size_t m, const float *k, const float *v,
                           size_t row_stride);

/* Empties a stream with no eviction index and no shared page, any dtype
 * (KIVI's residual too), giving every page back; it stays initialized. */
void kvd__stream_clear(kvd_stream *s, kvd_pool *pool);

/* Keeps the first n slots of an unshared stream with no eviction index and
 * gives emptied tail pages back to the pool. */
void kvd__stream_truncate(kvd_stream *s, kvd_pool *pool, size_t n);

#endif
