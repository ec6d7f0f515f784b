/* cache/plan.h — private to cache/: the step engine's plan. Before a step
 * touches its session, the plan bounds every page each stream can take over
 * the request's entries (appends, copies of pages shared with a fork,
 * KIVI settles, two-cache pair rows, the shadow copy), grows block tables and
 * eviction indexes for them, allocates the step's scratch and takes all the
 * pages from the pool at once. Anything that can fail fails here. */
#ifndef KVD_CACHE_PLAN_H
#define KVD_CACHE_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attention.h"
#include "cache/entry.h"
#include "cache/pool.h"
#include "cache/session.h"

/* Everything a step needs before it may touch the session (freed together). */
typedef struct kvd__step_plan {
    size_t *new_tokens;      /* [n_streams] tokens the request appends per stream */
    void **pages;            /* [total_pages] taken from the pool, used in order */
    size_t total_pages;
    size_t cursor;           /* pages[0 .. cursor) placed in streams */
    float **outputs;         /* [n_entries] each [m_q][heads][head_dim] (NULL if m_q = 0) */
    float *weights;          /* h2o: [max_tokens] weight received per slot */
    float *scratch;          /* h2o: [max m_q][heads] the lse the weights need */
    float *scores;           /* h2o, standard, an entry below the tiled threshold:
                                [group][max_tokens] the scores one decode call
                                stored (attend_lse_scores), or NULL */
    float **exact;           /* shadow: [n_entries] each [m_q][heads][head_dim] */
    float *pair_k, *pair_v;  /* two-cache: [2 * max_tokens][head_dim] one token's new pair rows */
    double *norm_factor;     /* tensor l2norm: [max m] ||k2|| of an entry's new tokens */
    /* four-cache tensor, not f32: the dequantized f32 rows the SIMD kernels
     * read, for row_heads kv heads at a time (plan_tensor_rows). They live
     * in pool pages, counted in --memory like the cache itself: the
     * row_pages pages after pages[0 .. total_pages), which the cursor never
     * reaches. row_views[2 s] (k1, v1) and row_views[2 s + 1] (k2, v2) are
     * slot s's views, each over per_view pages of row_tables, holding up to
     * rows_cap tokens. row_heads = 0 when the session needs no copy. */
    size_t row_heads, rows_cap, row_pages;
    const unsigned char **row_tables;
    kvd_kv_pages *row_views;
    /* subgen: [max_tokens] the slots leaving a stream's window, and
     * [head_dim] one query's numerator in double. */
    struct kvd__subgen_victim *victims;
    double *sg_num;
    float *sg_qk;            /* subgen tensor: [head_dim] q (.) k of one token */
    /* subgen: [sg_n = 2 * n_streams] for stream i's sketch b (0: k, 1: k2)
     * at 2i + b, the cluster of each token it sketches in this request, in
     * sketching order (the plan's dry run; n_clusters or more: one the
     * request opens), or NULL when it sketches none; sg_at: how many the
     * step has used. */
    size_t **sg_assign;
    size_t *sg_at;
    size_t sg_n;
} kvd__step_plan;

/* A token leaving a subgen stream's protected window (sketched oldest first). */
typedef struct kvd__subgen_victim {
    int64_t position;
    size_t slot;
} kvd__subgen_victim;

/* Fills *p for the entries (p is zeroed first). row_heads: kv heads whose
 * tensor rows the step holds at once (1 for a step on one thread; the
 * executor's width for a split one), clamped to [1, kv_heads]. Returns
 * KVD_STEP_OK, or KVD_STEP_NOMEM / KVD_STEP_POOL_FULL / KVD_STEP_TOO_BIG
 * with *need_pages set for the last two (tensor row pages included); on
 * failure nothing a reader can see changed (block tables and indexes may
 * have grown), no page is held, and the caller still frees p with
 * kvd__step_plan_free. */
int kvd__step_plan_make(kvd__step_plan *p, kvd_session *sess, kvd_session *shadow, kvd_pool *pool,
                        const kvd_step_entry *entries, size_t n, size_t row_heads, size_t *need_pages);

/* Gives back the pages the step did not place (pages[cursor ..
 * total_pages)) and the tensor row pages: at the end of a step, or all of
 * them (cursor 0) when it fails before touching the session. */
void kvd__step_plan_release(kvd__step_plan *p, kvd_pool *pool);

/* Frees what the plan allocated (not the pages: the step places them or
 * gives them back). Outputs handed over to a result are NULL here. */
void kvd__step_plan_free(kvd__step_plan *p, size_t n_entries);

#endif
