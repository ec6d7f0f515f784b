/* cache/entry.h — what the step engine takes and answers with, apart from
 * the engine itself: a step's decoded layer entries and the engine's
 * outcome codes. cache/plan.c and cache/step.c both read them (so neither
 * has to include the other's header); the API decodes bodies into them. */
#ifndef KVD_CACHE_ENTRY_H
#define KVD_CACHE_ENTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
    bool return_lse; /* also answer each query head's log-sum-exp (standard and
                        tensor attention; not subgen) */
} kvd_step_entry;

/* kvd_step_run's outcomes (and the plan's). Every failure leaves the
 * session, its shadow and the pool exactly as they were. */
enum {
    KVD_STEP_OK = 0,
    KVD_STEP_NOMEM = -1,     /* scratch or block-table memory (malloc) failed */
    KVD_STEP_POOL_FULL = -2, /* the pool has fewer free pages than need_pages */
    KVD_STEP_TOO_BIG = -3,   /* need_pages exceeds the whole pool: retrying cannot help */
};

#endif
