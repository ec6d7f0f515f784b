/* cache/evict.h — per-stream eviction (DESIGN.md §4): which tokens a stream
 * keeps when it holds more than its budget. The mechanism (cache/evict.c)
 * moves the last slot into the victim's hole, keeps an index so a victim is
 * found in O(log n) (recency, l2norm), gives emptied tail pages back to the
 * pool at once, and copies a page shared with a fork before writing into it.
 * The policies (cache/policy_*.c) only say which unprotected token goes next. */
#ifndef KVD_CACHE_EVICT_H
#define KVD_CACHE_EVICT_H

#include <stddef.h>
#include <stdint.h>

#include "cache/pool.h"
#include "cache/stream.h"
#include "cache/types.h"

/* Protection, exact: a token with position p is protected when p < sink (the
 * oldest tokens ever appended, StreamingLLM's attention sinks) or
 * p >= appended - recent (the newest). Among the others the policy picks:
 *   recency: smallest position;
 *   l2norm:  largest key L2 norm (of the f32 key as received, summed in double,
 *            kept in the index), ties -> smaller position;
 *   h2o:     smallest accumulated softmax weight, ties -> smaller position. */
typedef struct kvd_evict_config {
    kvd_eviction policy;   /* KVD_EVICT_NONE: streams keep everything */
    uint32_t sink, recent;
} kvd_evict_config;

/* Attaches an eviction index to an empty or populated stream (it indexes the
 * tokens already there; l2norm then takes the norms of the keys as stored).
 * Returns 0, -ENOMEM (stream unchanged) or -EINVAL (not a ranking policy).
 * KIVI streams are accepted: evicting re-quantizes the key block a moved
 * token lands in (cache/stream.c, kvd__stream_kivi_move_rows), and a
 * partial last key block is completed by the next kvd_stream_settle. A
 * stream with policy none has no index (s->evict == NULL). */
int kvd_stream_evict_init(kvd_stream *s, const kvd_evict_config *cfg);

/* Grows the index for `extra` more tokens; 0 or -ENOMEM with nothing changed.
 * Call before kvd_stream_append, with the same m (the step's planning phase). */
int kvd_stream_evict_reserve(kvd_stream *s, size_t extra);

/* h2o: adds w[j] (softmax weight received this step, summed over the group's
 * query heads and the step's queries) to the score of slot j, j < n <= n_tokens.
 * No-op for other policies. Scores live in the index, not in pages, so a
 * forked stream's shared pages are not written by scoring. */
void kvd_stream_add_weights(kvd_stream *s, const float *w, size_t n);

/* Upper bound on pages kvd_stream_evict may need to copy (pages shared with a
 * fork that a hole could fall into) when evicting `count` tokens. */
size_t kvd_stream_evict_pages_bound(const kvd_stream *s, size_t count);

/* Evicts until s->n_tokens <= target or only protected tokens remain.
 * spare[0..n_spare) are pool pages the caller took for copy-on-write; the
 * function uses them in order and adds how many to *spare_used (the caller
 * releases the rest). Emptied tail pages go back to the pool. Adds to
 * s->evicted and returns the number evicted. Cannot fail when n_spare >=
 * kvd_stream_evict_pages_bound(s, n_tokens - target). */
size_t kvd_stream_evict(kvd_stream *s, kvd_pool *pool, size_t target, void *const *spare,
                        size_t n_spare, size_t *spare_used);

/* l2norm on a tensor stream ranks by ||k1|| * ||k2||: multiplies the key
 * norms of slots first .. first+m-1 (just appended) by factor[0..m) and
 * re-sorts them among the candidates. No-op for other policies. */
void kvd__stream_scale_key_norms(kvd_stream *s, size_t first, size_t m, const double *factor);

/* Heap bytes kvd_stream_evict_init allocates for an empty stream's index
 * with this policy (0 for none): the size the session's heap account
 * predicts before it creates anything (cache/session.c). */
size_t kvd__evict_heap_bytes_new(kvd_eviction policy, uint32_t recent);

/* Tokens kvd_stream_evict could remove right now (unprotected count). */
size_t kvd_stream_evictable(const kvd_stream *s);

#endif
