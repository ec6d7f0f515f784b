/* tests/support/ref_cache.h — an exact reference for a standard-attention
 * session whose streams evict (DESIGN.md §4), written from the contract and
 * sharing no code with kvd: per (layer, kv head) it keeps the token set the
 * policy keeps (position, key and value in double, key L2 norm in double, h2o
 * score in double), computes outputs with a two-pass softmax in double over
 * that set, then evicts exactly as the contract says. It also reports how
 * close each eviction decision was (its margin), so a test can refuse inputs
 * whose decision the server's f32 arithmetic could legitimately take the
 * other way. Clonable, for forks and for trying a step before sending it. */
#ifndef KVD_TEST_REF_CACHE_H
#define KVD_TEST_REF_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "tests/support/ref_attention.h"

typedef enum { REF_EVICT_NONE, REF_EVICT_RECENCY, REF_EVICT_L2NORM, REF_EVICT_H2O } ref_evict_policy;

typedef struct ref_cache_config {
    size_t layers, heads, kv_heads, head_dim;
    double scale;              /* <= 0: 1/sqrt(head_dim) */
    ref_evict_policy policy;
    size_t budget;             /* tokens per stream; 0 = evict only when asked (ref_cache_evict) */
    size_t sink, recent;       /* protected: position < sink or position >= appended - recent */
} ref_cache_config;

typedef struct ref_cache ref_cache;

/* What one step entry did, as kvd's step response reports it. */
typedef struct ref_entry_result {
    size_t tokens;   /* tokens per stream after eviction (kv head 0) */
    size_t evicted;  /* most tokens evicted from one stream of the layer */
    /* Smallest gap, over every victim of the entry, between the victim's key
     * and the best remaining candidate's (l2norm: norm gap; h2o: score gap);
     * INFINITY when nothing was evicted, when a victim had no rival, or for
     * recency (positions are exact integers). */
    double margin;
} ref_entry_result;

/* Never returns NULL. */
ref_cache *ref_cache_new(const ref_cache_config *cfg);
/* A deep copy (a fork, or a trial step). Never returns NULL. */
ref_cache *ref_cache_clone(const ref_cache *c);
void ref_cache_free(ref_cache *c);
const ref_cache_config *ref_cache_cfg(const ref_cache *c);

/* One step entry on `layer`: appends m tokens (k, v: [m][kv_heads][head_dim]),
 * computes o: [m_q][heads][head_dim] (causal: query i sees the kept tokens
 * plus new tokens 0 .. m - m_q + i; block: the kept tokens plus all m new),
 * adds every query head's softmax weights to the h2o scores of the tokens it
 * saw, then evicts each stream of the layer down to the budget. Returns 0, or
 * -1 (nothing changed) for a causal step with m_q > m or a bad layer. */
int ref_cache_step(ref_cache *c, size_t layer, const float *k, const float *v, size_t m, const float *q,
                   size_t m_q, ref_mask mask, double *o, ref_entry_result *res);

/* Evicts from one stream by its policy until it holds <= target tokens or
 * only protected ones remain (what kvd's --on-full evict does with target 0).
 * Returns the number evicted. */
size_t ref_cache_evict(ref_cache *c, size_t layer, size_t kv_head, size_t target);

size_t ref_cache_tokens(const ref_cache *c, size_t layer, size_t kv_head);
size_t ref_cache_stream_evicted(const ref_cache *c, size_t layer, size_t kv_head);
/* Tokens a stream could lose to ref_cache_evict(.., 0) now. */
size_t ref_cache_evictable(const ref_cache *c, size_t layer, size_t kv_head);
/* Sums over every stream (layers * kv_heads), as session stats report. */
size_t ref_cache_total_tokens(const ref_cache *c);
uint64_t ref_cache_total_appended(const ref_cache *c);
uint64_t ref_cache_total_evicted(const ref_cache *c);
/* Largest |v| ever appended (the scale of any output). */
double ref_cache_max_abs_v(const ref_cache *c);
/* Smallest |norm - n| over the key norms a stream keeps (INFINITY if empty). */
double ref_cache_norm_gap(const ref_cache *c, size_t layer, size_t kv_head, double norm);
/* Copies the kept positions of one stream, ascending, into out (up to cap);
 * returns how many the stream holds. */
size_t ref_cache_positions(const ref_cache *c, size_t layer, size_t kv_head, int64_t *out, size_t cap);

#endif
