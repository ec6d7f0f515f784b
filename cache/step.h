/* cache/step.h — the step engine: applies one request's layer entries to a
 * session (and its shadow copy). It plans and takes every page the request
 * could need first (cache/plan.c), so a step either fails whole with nothing
 * changed or runs to the end: append, attend, score, evict or slide the
 * window, keep a two-cache's pair rows, settle KIVI, measure the shadow
 * error. Plain structs in and out: no JSON, no HTTP. Not thread-safe: one
 * step of a session at a time (the API's per-session queue). */
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
} kvd_step_output;

/* Runs entries[0 .. n) in order on sess (and on shadow, an exact f32 copy of
 * sess with no policy, or NULL). On KVD_STEP_OK, out holds one result per
 * entry (free with kvd_step_output_free); otherwise out->results is NULL and
 * need_pages says what the pool could not give. */
int kvd_step_run(kvd_session *sess, kvd_session *shadow, kvd_pool *pool, const kvd_step_entry *entries,
                 size_t n, kvd_step_output *out);

/* Frees the results' buffers; out is left empty. NULL-safe. */
void kvd_step_output_free(kvd_step_output *out);

#endif
