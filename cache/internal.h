/* cache/internal.h — private to cache/: what stream.c, evict.c and session.c
 * share beyond the public headers (slot addressing in any dtype, copy-on-write
 * of one page, the eviction index's hooks into append and fork). */
#ifndef KVD_CACHE_INTERNAL_H
#define KVD_CACHE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/pool.h"
#include "cache/stream.h"

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

/* Fork in two phases so a session can fork all its streams or none:
 * prepare allocates dst's table, flags and index (no page references, src
 * untouched; 0, -ENOMEM, or -ENOTSUP for KIVI, with dst empty); commit takes
 * the references and flags every page shared on both sides (cannot fail);
 * abort frees what prepare allocated. */
int kvd__stream_fork_prepare(const kvd_stream *src, kvd_stream *dst);
void kvd__stream_fork_commit(kvd_stream *src, kvd_stream *dst, kvd_pool *pool);
void kvd__stream_fork_abort(kvd_stream *dst);

/* KIVI eviction (stream.c, which knows the residual and its gather
 * buffer): move_rows writes the rows of the last slot `from` into slot
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

/* evict.c: true when the index ranks by key norm (l2norm), so append must
 * compute the norm of each key it stores (others pass 0). */
bool kvd__evict_wants_norm(const kvd_evict_index *ix);
/* evict.c: indexes the token just written into `slot` (position `position`
 * = appended before it; key_norm = L2 norm of its f32 key as received,
 * summed in double, before any quantization); the index must have room
 * (kvd_stream_evict_reserve). */
void kvd__evict_on_append(kvd_stream *s, size_t slot, int64_t position, double key_norm);
/* evict.c: deep copy of the index of a stream of n_tokens (0 or -ENOMEM,
 * *out NULL) and free (NULL is a no-op). */
int kvd__evict_clone(const kvd_evict_index *src, size_t n_tokens, kvd_evict_index **out);
void kvd__evict_free(kvd_evict_index *ix);

#endif
