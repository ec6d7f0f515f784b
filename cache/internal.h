/* cache/internal.h — private to cache/: what stream.c, evict.c and session.c
 * share beyond the public headers (slot addressing, copy-on-write of one
 * page, the eviction index's hooks into append and fork). */
#ifndef KVD_CACHE_INTERNAL_H
#define KVD_CACHE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "cache/pool.h"
#include "cache/stream.h"

/* Row of slot j in the block at byte `offset` (k_offset or v_offset). */
static inline float *kvd__stream_row(const kvd_stream *s, size_t j, uint32_t offset)
{
    unsigned char *page = s->pages[j / s->slots_per_page];
    return (float *)(page + offset) + (j % s->slots_per_page) * s->head_dim;
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
 * untouched; 0 or -ENOMEM with dst empty); commit takes the references and
 * flags every page shared on both sides (cannot fail); abort frees what
 * prepare allocated. */
int kvd__stream_fork_prepare(const kvd_stream *src, kvd_stream *dst);
void kvd__stream_fork_commit(kvd_stream *src, kvd_stream *dst, kvd_pool *pool);
void kvd__stream_fork_abort(kvd_stream *dst);

/* evict.c: indexes the token just written into `slot` (position `position`
 * = appended before it); the index must have room (kvd_stream_evict_reserve). */
void kvd__evict_on_append(kvd_stream *s, size_t slot, int64_t position);
/* evict.c: deep copy of the index of a stream of n_tokens (0 or -ENOMEM,
 * *out NULL) and free (NULL is a no-op). */
int kvd__evict_clone(const kvd_evict_index *src, size_t n_tokens, kvd_evict_index **out);
void kvd__evict_free(kvd_evict_index *ix);

#endif
