/* cache/session.h — a session's resolved configuration and its streams.
 * A session is one decode sequence of fixed shape; it owns layers * kv_heads
 * streams (stream of layer l, kv head g at index l * kv_heads + g). It is not
 * thread-safe: the API layer runs one step of a session at a time. */
#ifndef KVD_CACHE_SESSION_H
#define KVD_CACHE_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/pool.h"
#include "cache/stream.h"
#include "cache/subgen.h"
#include "cache/types.h"

/* The resolved create body (DESIGN.md §3): every default filled in. */
typedef struct kvd_session_config {
    uint32_t layers, heads, kv_heads, head_dim;
    kvd_attention_kind attention;
    float scale;                  /* default 1/sqrt(head_dim) */
    kvd_tensor_cache tensor_cache;
    uint32_t window;              /* 0 = unlimited */
    struct {
        kvd_dtype dtype;
        uint32_t budget;          /* tokens per stream, 0 = unlimited */
        kvd_eviction eviction;
        uint32_t sink, recent, group, residual;
        double delta;             /* subgen only */
        uint32_t cluster_samples, value_samples; /* subgen only */
        uint32_t max_clusters;    /* subgen only: clusters per sketch, 0 = no cap */
        kvd_rotate rotate;        /* KVD_ROTATE_NONE (0) unless asked: cache/rotate.h */
    } cache;
    bool shadow;
    uint64_t seed;
    double ttl_seconds;
} kvd_session_config;

typedef struct kvd_session {
    kvd_session_config config;
    kvd_stream *streams;          /* [layers][kv_heads]: k and v; tensor: k1 and v1 */
    size_t n_streams;
    /* Tensor attention only (NULL otherwise), same [layers][kv_heads] shape,
     * in the session's dtype: k2 and v2 of each token (slot order mirrors
     * streams[]), and for tensor_cache "two" the pair rows k1_j ⊙ k2_k and
     * v1_j ⊙ v2_k in kvd_tensor_pair_row order. */
    kvd_stream *tensor_b;
    kvd_stream *pairs;
    /* Eviction "subgen" only (NULL otherwise), [layers][kv_heads]: the
     * sketch of each stream's tokens that left its sink + recent window;
     * streams[] then hold exactly the protected tokens (DESIGN.md §4). */
    kvd_subgen *subgen;
    /* Tensor attention, four caches, subgen (SubGen4Cache): subgen[] sketches
     * (k1, v1) and subgen_b[] (k2, v2) of the same tokens, separately. */
    kvd_subgen *subgen_b;
} kvd_session;

/* Whether cfg may run rotated (cache.rotate, cache/rotate.h): 0, or
 * -EINVAL when rotation is asked with a head_dim that is not a power of
 * two, tensor attention (<q, k1 (.) k2> is not invariant under one rotation
 * of q, k1 and k2) or eviction subgen (its sketch is f32 and exact-window:
 * rotation buys it nothing). */
int kvd_session_check_rotate(const kvd_session_config *cfg);

/* Creates a session with empty streams (no pages yet) in cfg->cache's dtype,
 * group and residual, with an eviction index per stream when it has a
 * policy. Returns 0, -ENOMEM, or -EINVAL if one slot does not fit in a page
 * or cfg->cache.rotate cannot apply (kvd_session_check_rotate).
 * Free with kvd_session_destroy. */
int kvd_session_create(const kvd_session_config *cfg, size_t page_bytes, kvd_session **out);

/* The config of a session's shadow copy (DESIGN.md §3 "shadow"): the same
 * shape and attention, f32, no policy, no window, not rotated, so it keeps
 * every token exactly as sent (tensor attention: a four-cache, also for a
 * two-cache session); the step engine compares the session's outputs
 * against it. */
kvd_session_config kvd_session_shadow_config(const kvd_session_config *cfg);

/* A copy-on-write fork: same config and tokens, every page shared (see
 * kvd_stream_fork), a tensor session's k2/v2 and pair rows too. The
 * parent's pages get flagged shared too. A subgen session's sketches are
 * copied whole (same rows, F, items and random state), into pages taken from
 * the pool all at once. KIVI streams fork their f32 residual too. Returns
 * 0, -ENOMEM or -ENOSPC (the pool lacks the sketches' pages), with nothing
 * changed. */
int kvd_session_fork(kvd_session *parent, kvd_pool *pool, kvd_session **out);

/* Releases every page to the pool and frees the session. NULL is a no-op. */
void kvd_session_destroy(kvd_session *s, kvd_pool *pool);

static inline kvd_stream *kvd_session_stream(kvd_session *s, uint32_t layer, uint32_t kv_head)
{
    return &s->streams[(size_t)layer * s->config.kv_heads + kv_head];
}

/* Totals over all streams. tokens/appended/evicted count tokens once per
 * (layer, kv head), whatever the layout; pages count every page held. */
size_t kvd_session_tokens(const kvd_session *s);
uint64_t kvd_session_appended(const kvd_session *s);
uint64_t kvd_session_evicted(const kvd_session *s);
size_t kvd_session_pages(const kvd_session *s);
/* Pages still flagged shared with a fork (copied on first write), over
 * every stream array (a tensor session's k2/v2 and pair rows too). */
size_t kvd_session_shared_pages(const kvd_session *s);
/* Two-cache tensor sessions: pair rows held, summed over streams (else 0). */
size_t kvd_session_pair_rows(const kvd_session *s);

/* Ordinary heap (outside the pool) the session holds now, in bytes of the
 * allocations' requested sizes (malloc's own overhead not counted): the
 * session struct, its stream arrays (streams, and tensor_b / pairs for
 * tensor sessions), and each stream's kvd_stream_heap_bytes (block table
 * and shared flags at capacity, eviction index at capacity, KIVI residual
 * and gather buffer). An empty session costs sizeof(kvd_session) +
 * streams * sizeof(kvd_stream) per array plus its indexes; it grows as
 * steps add pages (block tables: <= 2 * (sizeof(void *) + 1) bytes a page,
 * doubling) and tokens (indexes: <= 2 * (24 + 8 [+ 8 with a score]) bytes
 * a token, doubling), and never shrinks before destroy. */
size_t kvd_session_heap_bytes(const kvd_session *s);

/* What kvd_session_create(cfg, ...) allocates: kvd_session_heap_bytes of
 * the empty session it would make, known before anything is allocated. */
size_t kvd_session_heap_bytes_new(const kvd_session_config *cfg);

/* What kvd_session_fork(parent, ...) would allocate for the child (tables
 * trimmed to the parent's pages, indexes at the parent's capacity): its
 * kvd_session_heap_bytes right after the fork. */
size_t kvd_session_fork_heap_bytes(const kvd_session *parent);

/* ---- Private to cache/ (the step engine and reclaim). ---- */

/* Two-cache, any per-token dtype (not KIVI): after streams[idx] (and its
 * k2/v2 mirror) evicted, rewrites the pair rows in the new slot order in
 * place and cuts the rest, giving emptied pages back: pairs[idx] holds
 * n^2 rows again (n = tokens kept). Needs no page, only scratch pair_k and
 * pair_v of [2 * n][head_dim] f32 each. No-op when the rows already match. */
void kvd__session_rebuild_pairs(kvd_session *s, kvd_pool *pool, size_t idx, float *pair_k, float *pair_v);

/* Pages a step rewrites in place that may still be shared with a fork:
 * before an entry appends to stream idx, the step makes them private — all
 * of a stream whose rows a step moves anywhere (a tensor window sliding
 * k1/v1 and k2/v2; with a policy, k2/v2 following k1/v1's moves, rebuilt
 * pair rows, and every KIVI stream), else a KIVI stream's residual and the
 * page its settle writes. bound: the pages that can take (0 when nothing is
 * shared); unshare takes them from spare[0..n_spare) in order and returns
 * how many it took. */
size_t kvd__session_unshare_bound(const kvd_session *s, size_t idx);
size_t kvd__session_unshare(kvd_session *s, kvd_pool *pool, size_t idx, void *const *spare, size_t n_spare);

#endif
