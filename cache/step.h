/* cache/step.h — the step engine: applies one request's layer entries to a
 * session (and its shadow copy). It plans and takes every page the request
 * could need first (cache/plan.c), so a step either fails whole with nothing
 * changed or runs to the end: append, attend, score, evict or slide the
 * window, keep a two-cache's pair rows, settle KIVI, measure the shadow
 * error. Plain structs in and out: no JSON, no HTTP. Not thread-safe: one
 * step of a session at a time (the API's per-session queue); a large step's
 * attention may itself be split over a kvd_parallel executor. */
#ifndef KVD_CACHE_STEP_H
#define KVD_CACHE_STEP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/entry.h"
#include "cache/pool.h"
#include "cache/session.h"

/* What one entry produced. */
typedef struct kvd_step_result {
    float *o;               /* [m_q][heads][head_dim]; NULL when m_q == 0 */
    float *lse;             /* [m_q][heads] when the entry asked (return_lse) and
                               m_q > 0, else NULL: log of each query head's
                               softmax denominator, -inf where it sees no token */
    size_t tokens;          /* tokens per stream of the entry's layer after it */
    size_t evicted;         /* most tokens the entry evicted (or slid out of a
                               window) from one stream of its layer */
    /* Shadow sessions, entries with queries: o against exact f32 attention
     * over every token the session was ever sent. */
    bool has_shadow;
    double relative_error;  /* ||o - o_exact|| / ||o_exact|| (0 when both are 0) */
    double max_abs_error;   /* max |o - o_exact| */
} kvd_step_result;

typedef struct kvd_step_output {
    kvd_step_result *results;  /* [n_entries], in entry order */
    size_t n_results;
    uint64_t tokens_in;        /* new tokens received: m summed over entries */
    uint64_t evicted_total;    /* tokens the policy evicted, summed over streams */
    /* Set when kvd_step_run returns KVD_STEP_POOL_FULL or KVD_STEP_TOO_BIG. */
    size_t need_pages;         /* pages the step asked for at once */
    /* Pool pages of the f32 copy a non-f32 four-cache tensor step attends
     * over (cache/plan.h), held only while the step runs: on success the
     * pages it borrowed, on KVD_STEP_POOL_FULL / KVD_STEP_TOO_BIG those of
     * need_pages that were for it (0 when the step needs no copy). */
    size_t row_pages;
} kvd_step_output;

/* A parallel-for the step engine can use without knowing about threads:
 * run(self, ctx, fn, n) calls fn(ctx, i) exactly once for every i in
 * [0, n) and returns when all have returned. It must not fail: when no
 * helper is free the calling thread runs every piece itself. Pieces write
 * disjoint memory. */
typedef void (*kvd_parallel_fn)(void *ctx, size_t i);
typedef struct kvd_parallel {
    void (*run)(void *self, void *ctx, kvd_parallel_fn fn, size_t n);
    void *self;
    /* Threads a run can use at most (0: unknown). A non-f32 four-cache
     * tensor step holds the f32 rows of this many kv heads at once. */
    size_t width;
} kvd_parallel;

/* Estimated multiply-adds (visible tokens x head_dim x query heads, summed
 * over an entry's queries; tensor four/two-cache: visible^2 tokens) from
 * which an entry's attention is split into (stream, query range) pieces.
 * Below it (a small decode: 8 heads, d 64, n 1k is 2^19) one thread runs it. */
#define KVD_STEP_SPLIT_WORK ((uint64_t)1 << 21)

/* Runs entries[0 .. n) in order on sess (and on shadow, an exact f32 copy of
 * sess with no policy, or NULL). On KVD_STEP_OK, out holds one result per
 * entry (free with kvd_step_output_free); otherwise out->results is NULL and
 * need_pages says what the pool could not give. A session with cache.rotate
 * "hadamard" attends over a rotated copy of the entries' k, v and q (one more
 * allocation the size of the request's tensors, KVD_STEP_NOMEM when it fails)
 * and answers outputs rotated back; its shadow runs the entries as sent. */
int kvd_step_run(kvd_session *sess, kvd_session *shadow, kvd_pool *pool, const kvd_step_entry *entries,
                 size_t n, kvd_step_output *out);

/* kvd_step_run whose large entries' attention (standard, tensor four and
 * two-cache, the shadow copy's, h2o scoring) runs as pieces on par (NULL:
 * one thread). Every piece runs the same kernel calls on the same inputs as
 * the unsplit step, and one stream's h2o weights stay in one piece, in
 * query order: outputs and eviction are bit-identical to kvd_step_run. */
int kvd_step_run_parallel(kvd_session *sess, kvd_session *shadow, kvd_pool *pool, const kvd_step_entry *entries,
                          size_t n, const kvd_parallel *par, kvd_step_output *out);

/* Frees the results' buffers; out is left empty. NULL-safe. */
void kvd_step_output_free(kvd_step_output *out);

#endif
