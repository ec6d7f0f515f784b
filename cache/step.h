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

#include "cache/pool.h"
#include "cache/session.h"

/* Which new tokens a query sees (DESIGN.md §3). causal requires m_q <= m:
 * query i belongs to new token m - m_q + i and sees the cache plus new
 * tokens 0 .. m - m_q + i. block: every query sees the cache plus all m new
 * tokens (one VAR scale, or a pure query when m = 0). */
typedef enum { KVD_MASK_CAUSAL, KVD_MASK_BLOCK } kvd_mask;

/* One layer's entry of a step, already decoded and validated against the
 * session's config (shapes, layer < layers, causal => m_q <= m). Buffers are
 * the caller's, row-major f32:
 *   k, v:   [m][kv_heads][head_dim]   (tensor sessions: k1, v1)
 *   k2, v2: [m][kv_heads][head_dim]   (tensor sessions only, else NULL)
 *   q:      [m_q][heads][head_dim] */
typedef struct kvd_step_entry {
    uint32_t layer;
    size_t m, m_q;
    const float *k, *v;
    const float *k2, *v2;
    const float *q;
    kvd_mask mask;
} kvd_step_entry;

/* What one entry produced. */
typedef struct kvd_step_result {
    float *o;               /* [m_q][heads][head_dim]; NULL when m_q == 0 */
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

/* kvd_step_run's outcomes. Every failure leaves the session, its shadow and
 * the pool exactly as they were. */
enum {
    KVD_STEP_OK = 0,
    KVD_STEP_NOMEM = -1,     /* scratch or block-table memory (malloc) failed */
    KVD_STEP_POOL_FULL = -2, /* the pool has fewer free pages than need_pages */
    KVD_STEP_TOO_BIG = -3,   /* need_pages exceeds the whole pool: retrying cannot help */
};

/* Runs entries[0 .. n) in order on sess (and on shadow, an exact f32 copy of
 * sess with no policy, or NULL). On KVD_STEP_OK, out holds one result per
 * entry (free with kvd_step_output_free); otherwise out->results is NULL and
 * need_pages says what the pool could not give. */
int kvd_step_run(kvd_session *sess, kvd_session *shadow, kvd_pool *pool, const kvd_step_entry *entries,
                 size_t n, kvd_step_output *out);

/* Frees the results' buffers; out is left empty. NULL-safe. */
void kvd_step_output_free(kvd_step_output *out);

#endif
