/* cache/step.c — the step engine (cache/step.h). After the plan has taken
 * every page and buffer the request could need (cache/plan.c), each entry
 * runs in order: append its tokens (tensor: k2/v2 and the two-cache's pair
 * rows too), attend for each query, add h2o weights, evict to the budget or
 * slide the tensor window, rebuild pair rows after an eviction, and run the
 * exact shadow copy beside it. KIVI streams settle once at the end. Nothing
 * after the plan can fail; pages the bounds reserved but the step did not
 * use go back to the pool. A large entry's attention runs as (stream, query
 * range) pieces on a kvd_parallel executor. A rotated session (cache.rotate)
 * runs on a rotated copy of the entries and rotates its outputs back here,
 * once per query head (cache/rotate.c). A non-f32 four-cache entry copies
 * each kv head's streams into the plan's f32 row pages (pool pages, a
 * round of heads at a time) just before that head attends, so the SIMD
 * kernels read them. (About 740 lines: the entry's phases read best side
 * by side in one file.) */
#include "cache/step.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/prefill.h"
#include "attention/tensor.h"
#include "attention/weights.h"
#include "cache/evict.h"
#include "cache/plan.h"
#include "cache/rotate.h"
#include "cache/stream.h"
#include "cache/subgen.h"

static bool is_kivi(const kvd_session_config *cfg)
{
    return cfg->cache.dtype == KVD_DTYPE_KIVI2 || cfg->cache.dtype == KVD_DTYPE_KIVI4;
}

/* The planned pages not placed yet. A plan that needed none has no table
 * (NULL): hand out an empty one instead, since the streams offset what they
 * get (NULL + 0 is undefined behaviour in C; found by tests/fuzz). */
static void *const *rest_pages(const kvd__step_plan *p)
{
    static void *const no_pages[1];
    return p->pages ? p->pages + p->cursor : no_pages;
}

/* The next n planned pages (the plan's bounds guarantee they exist). */
static void *const *take_pages(kvd__step_plan *p, size_t n)
{
    void *const *pages = rest_pages(p);
    p->cursor += n;
    assert(p->cursor <= p->total_pages && "the plan undercounted pages");
    return pages;
}

/* Number of cache slots query i of an entry sees; n_before = stream tokens
 * before the entry's append (DESIGN.md §3, see kvd_mask). */
static size_t visible_tokens(const kvd_step_entry *e, size_t n_before, size_t i)
{
    return n_before + (e->mask == KVD_MASK_CAUSAL ? e->m - e->m_q + i + 1 : e->m);
}

/* All tokens of a stream as tensor attention reads them (KIVI: two segments). */
static kvd_tensor_view tensor_view(const kvd_stream *s)
{
    kvd_tensor_view v;
    v.n_seg = kvd_stream_segments(s, s->n_tokens, v.seg);
    return v;
}

/* Appends one entry's tokens to its layer's kv_heads streams (of the
 * session or of its shadow copy). */
static void append_tokens(kvd_session *sess, kvd_pool *pool, const kvd_step_entry *e, kvd__step_plan *p)
{
    const kvd_session_config *cfg = &sess->config;
    const size_t row = (size_t)cfg->kv_heads * cfg->head_dim;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        kvd_stream *s = kvd_session_stream(sess, e->layer, g);
        void *const *pages = take_pages(p, kvd_stream_pages_needed(s, e->m));
        kvd_stream_append(s, pool, e->m, e->k + (size_t)g * cfg->head_dim, e->v + (size_t)g * cfg->head_dim,
                          row, pages);
    }
}

/* Tensor sessions: k2/v2 of the entry's tokens, and for the two-cache the
 * 2t+1 pair rows of each new token t, built from the four caches (k1/v1
 * went in through append_tokens). */
static void append_tensor(kvd_session *sess, kvd_pool *pool, const kvd_step_entry *e, kvd__step_plan *p)
{
    const kvd_session_config *cfg = &sess->config;
    const size_t row = (size_t)cfg->kv_heads * cfg->head_dim;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        const size_t idx = (size_t)e->layer * cfg->kv_heads + g;
        kvd_stream *b = &sess->tensor_b[idx];
        void *const *pages = take_pages(p, kvd_stream_pages_needed(b, e->m));
        kvd_stream_append(b, pool, e->m, e->k2 + (size_t)g * cfg->head_dim, e->v2 + (size_t)g * cfg->head_dim,
                          row, pages);
        if (p->norm_factor && cfg->cache.eviction == KVD_EVICT_L2NORM) { /* not the shadow copy */
            /* l2norm ranks a tensor slot by ||k1|| * ||k2|| (DESIGN.md §5):
             * the index holds ||k1|| from the append; scale by ||k2||. */
            for (size_t t = 0; t < e->m; t++) {
                const float *k2 = e->k2 + t * row + (size_t)g * cfg->head_dim;
                double sq = 0;
                for (size_t c = 0; c < cfg->head_dim; c++)
                    sq += (double)k2[c] * k2[c];
                p->norm_factor[t] = sqrt(sq);
            }
            kvd__stream_scale_key_norms(&sess->streams[idx], b->n_tokens - e->m, e->m, p->norm_factor);
        }
        if (!sess->pairs)
            continue;
        kvd_stream *pr = &sess->pairs[idx];
        const kvd_tensor_view a_view = tensor_view(&sess->streams[idx]), b_view = tensor_view(b);
        for (size_t t = b->n_tokens - e->m; t < b->n_tokens; t++) {
            const size_t rows = kvd_tensor_pair_rows_added(t);
            kvd_tensor_pair_rows_view(&a_view, &b_view, t, p->pair_k, p->pair_v);
            pages = take_pages(p, kvd_stream_pages_needed(pr, rows));
            kvd_stream_append(pr, pool, rows, p->pair_k, p->pair_v, cfg->head_dim, pages);
        }
    }
}

/* Attention of stream g for queries [i0, i1) of one entry. Query heads
 * g*group .. g*group+group-1 share kv head g and are adjacent in q, so one
 * kernel call serves the group. With `weights` (h2o; then i0 = 0, i1 = m_q)
 * the stream also gets the softmax weight each of its slots received, from
 * the lse the attention call wrote (into `scratch`, [m_q][heads], when the
 * entry did not ask for it): below the tiled threshold from the scores the
 * decode kernel stored in `scores` ([group][the stream's tokens], this
 * piece's own) as it attended, else by recomputing them (weights.h). */
static void attend_standard_piece(kvd_session *sess, const kvd_step_entry *e, size_t n_before, uint32_t g,
                                  size_t i0, size_t i1, float *o, float *weights, float *scratch, float *scores,
                                  float *lse)
{
    const kvd_session_config *cfg = &sess->config;
    const kvd_attention_kernels *kern = kvd_attention_kernels_get();
    const uint32_t group = cfg->heads / cfg->kv_heads;
    const size_t d = cfg->head_dim;
    kvd_stream *s = kvd_session_stream(sess, e->layer, g);
    if (weights) {
        memset(weights, 0, s->n_tokens * sizeof(float));
        lse = lse ? lse : scratch;
    }
    /* An entry of many queries: one tiled call (attention/prefill.h) reads
     * each K/V block once for a tile of them; query i sees
     * visible_tokens(i). Chosen per entry, not per piece, so a split step
     * stays bit-identical to the unsplit one (the tiled kernel's rows do
     * not depend on which tile holds them). */
    const bool tiled = e->m_q >= KVD_PREFILL_MIN_QUERIES;
    if (tiled) {
        const size_t off = (i0 * cfg->heads + (size_t)g * group) * d;
        kvd_kv_segment seg[2];
        size_t n_seg = kvd_stream_segments(s, visible_tokens(e, n_before, i1 - 1), seg);
        const kvd_prefill_mask mask = {.n0 = visible_tokens(e, n_before, i0),
                                       .step = e->mask == KVD_MASK_CAUSAL ? 1 : 0};
        kvd_attend_prefill(seg, n_seg, e->q + off, i1 - i0, group, (size_t)cfg->heads * d, mask,
                           cfg->scale, o + off, lse ? lse + i0 * cfg->heads + (size_t)g * group : NULL,
                           cfg->heads);
    }
    for (size_t i = i0; i < i1 && !tiled; i++) {
        const size_t off = (i * cfg->heads + (size_t)g * group) * d;
        kvd_kv_segment seg[2];
        size_t n_seg = kvd_stream_segments(s, visible_tokens(e, n_before, i), seg);
        float *lse_i = lse ? lse + i * cfg->heads + (size_t)g * group : NULL;
        if (!weights) {
            kern->attend_lse(seg, n_seg, e->q + off, group, cfg->scale, o + off, lse_i);
            continue;
        }
        /* h2o: the scores the softmax used, then exp(score - lse) from them */
        size_t vis = 0;
        for (size_t k = 0; k < n_seg; k++)
            vis += seg[k].n;
        assert(scores && vis <= s->n_tokens);
        kern->attend_lse_scores(seg, n_seg, e->q + off, group, cfg->scale, o + off, lse_i, scores, vis);
        kvd_attention_weights_from_scores(scores, vis, vis, group, lse_i, weights);
    }
    if (weights && tiled) { /* every query at once: exp(score - lse), attention/weights.h */
        kvd_kv_segment seg[2];
        size_t n_seg = kvd_stream_segments(s, visible_tokens(e, n_before, i1 - 1), seg);
        const kvd_prefill_mask mask = {.n0 = visible_tokens(e, n_before, i0),
                                       .step = e->mask == KVD_MASK_CAUSAL ? 1 : 0};
        kvd_attention_weights(seg, n_seg, e->q + (i0 * cfg->heads + (size_t)g * group) * d, i1 - i0, group,
                              (size_t)cfg->heads * d, mask, cfg->scale, lse + i0 * cfg->heads + (size_t)g * group,
                              cfg->heads, weights);
    }
    if (weights)
        kvd_stream_add_weights(s, weights, s->n_tokens);
}

/* subgen (DESIGN.md §4): each query head of group g reads kv head g's
 * sketch plus the stream's exact tokens (its protected window and the
 * entry's new tokens it may see), one running max over all the terms:
 *   o = (nu_sketch + nu_exact) / (tau_sketch + tau_exact). */
static void attend_subgen(kvd_session *sess, const kvd_step_entry *e, size_t n_before, float *o, double *num)
{
    const kvd_session_config *cfg = &sess->config;
    const uint32_t group = cfg->heads / cfg->kv_heads;
    const size_t d = cfg->head_dim;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        const size_t idx = (size_t)e->layer * cfg->kv_heads + g;
        const kvd_kv_pages kv = kvd_stream_view(&sess->streams[idx]);
        for (size_t i = 0; i < e->m_q; i++) {
            const size_t visible = visible_tokens(e, n_before, i);
            for (uint32_t h = 0; h < group; h++) {
                const size_t off = (i * cfg->heads + (size_t)g * group + h) * d;
                const float *q = e->q + off;
                kvd_subgen_acc acc;
                kvd_subgen_acc_reset(&acc, num, d);
                for (size_t j = 0; j < visible; j++) {
                    const float *k = kvd_kv_key(&kv, j);
                    double x = 0;
                    for (size_t c = 0; c < d; c++)
                        x += (double)q[c] * k[c];
                    kvd_subgen_acc_exact(&acc, (double)cfg->scale * x, kvd_kv_value(&kv, j));
                }
                kvd_subgen_attend(&sess->subgen[idx], q, cfg->scale, &acc);
                kvd_subgen_acc_finish(&acc, o + off);
            }
        }
    }
}

/* SubGen4Cache (tensor attention, four caches, subgen): over the pairs of
 * E (the exact tokens the query sees) and S (the sketched ones), scores
 * scale <q, k1_j (.) k2_k>, values v1_j (.) v2_k, one running max:
 * E x E exact; E x S from the k2 sketch with query q (.) k1_j and values
 * times v1_j; S x E from the k1 sketch with q (.) k2_k, values times v2_k;
 * S x S over cluster pairs and sample pairs (kvd_subgen_attend_pairs). */
static void attend_subgen_tensor(kvd_session *sess, const kvd_step_entry *e, size_t n_before, float *o,
                                 double *num, float *qk)
{
    const kvd_session_config *cfg = &sess->config;
    const uint32_t group = cfg->heads / cfg->kv_heads;
    const size_t d = cfg->head_dim;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        const size_t idx = (size_t)e->layer * cfg->kv_heads + g;
        const kvd_kv_pages a = kvd_stream_view(&sess->streams[idx]), b = kvd_stream_view(&sess->tensor_b[idx]);
        const kvd_subgen *s1 = &sess->subgen[idx], *s2 = &sess->subgen_b[idx];
        for (size_t i = 0; i < e->m_q; i++) {
            const size_t visible = visible_tokens(e, n_before, i);
            for (uint32_t h = 0; h < group; h++) {
                const size_t off = (i * cfg->heads + (size_t)g * group + h) * d;
                const float *q = e->q + off;
                kvd_subgen_acc acc;
                kvd_subgen_acc_reset(&acc, num, d);
                for (size_t j = 0; j < visible; j++) {
                    const float *k1 = kvd_kv_key(&a, j), *v1 = kvd_kv_value(&a, j);
                    for (size_t c = 0; c < d; c++)
                        qk[c] = q[c] * k1[c];
                    for (size_t k = 0; k < visible; k++) {
                        const float *k2 = kvd_kv_key(&b, k);
                        double x = 0;
                        for (size_t c = 0; c < d; c++)
                            x += (double)qk[c] * k2[c];
                        kvd_subgen_acc_exact2(&acc, (double)cfg->scale * x, v1, kvd_kv_value(&b, k));
                    }
                    kvd_subgen_terms(s2, qk, cfg->scale, 1.0, 1.0, v1, &acc);
                }
                for (size_t k = 0; k < visible; k++) {
                    const float *k2 = kvd_kv_key(&b, k);
                    for (size_t c = 0; c < d; c++)
                        qk[c] = q[c] * k2[c];
                    kvd_subgen_terms(s1, qk, cfg->scale, 1.0, 1.0, kvd_kv_value(&b, k), &acc);
                }
                kvd_subgen_attend_pairs(s1, s2, q, cfg->scale, qk, &acc);
                kvd_subgen_acc_finish(&acc, o + off);
            }
        }
    }
}

static int by_position(const void *a, const void *b)
{
    const int64_t x = ((const kvd__subgen_victim *)a)->position, y = ((const kvd__subgen_victim *)b)->position;
    return (x > y) - (x < y);
}

/* subgen: every token of the entry's layer that left the protected window
 * (position >= sink and < appended - recent) goes into the stream's sketch,
 * oldest first (so the sketch, and its random draws, depend only on the
 * token sequence, not on how it was split into steps); then the recency
 * index evicts exactly those slots. Returns the most sketched from one
 * stream; adds every sketched token to *total. */
static size_t sketch_window(kvd_session *sess, kvd_pool *pool, const kvd_step_entry *e, kvd__step_plan *p,
                            uint64_t *total)
{
    const kvd_session_config *cfg = &sess->config;
    size_t most = 0;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        const size_t idx = (size_t)e->layer * cfg->kv_heads + g;
        kvd_stream *s = &sess->streams[idx];
        const int64_t recent_from = (int64_t)s->appended - (int64_t)cfg->cache.recent;
        size_t n = 0;
        for (size_t j = 0; j < s->n_tokens; j++) {
            const int64_t pos = kvd_stream_meta(s, j)->position;
            if (pos >= (int64_t)cfg->cache.sink && pos < recent_from)
                p->victims[n++] = (kvd__subgen_victim){pos, j};
        }
        if (!n)
            continue;
        qsort(p->victims, n, sizeof *p->victims, by_position);
        const kvd_kv_pages kv = kvd_stream_view(s);
        size_t used = 0;
        /* The clusters the plan's dry run found for these tokens, in this order. */
        const size_t *as = p->sg_assign[2 * idx];
        size_t *at = &p->sg_at[2 * idx];
        assert(as && "the plan counted every token that leaves");
        for (size_t i = 0; i < n; i++)
            kvd_subgen_insert_at(&sess->subgen[idx], as[(*at)++], kvd_kv_key(&kv, p->victims[i].slot),
                                 kvd_kv_value(&kv, p->victims[i].slot), p->pages + p->cursor,
                                 p->total_pages - p->cursor, &used);
        if (sess->subgen_b) { /* SubGen4Cache: (k2, v2) of the same tokens, same slots */
            const kvd_kv_pages kb = kvd_stream_view(&sess->tensor_b[idx]);
            const size_t *bs = p->sg_assign[2 * idx + 1];
            size_t *bt = &p->sg_at[2 * idx + 1];
            assert(bs);
            for (size_t i = 0; i < n; i++)
                kvd_subgen_insert_at(&sess->subgen_b[idx], bs[(*bt)++], kvd_kv_key(&kb, p->victims[i].slot),
                                     kvd_kv_value(&kb, p->victims[i].slot), p->pages + p->cursor,
                                     p->total_pages - p->cursor, &used);
        }
        p->cursor += used;
        used = 0;
        const size_t gone = kvd_stream_evict(s, pool, 0, p->pages + p->cursor, p->total_pages - p->cursor, &used);
        assert(gone == n && "the recency index evicts exactly the unprotected tokens");
        p->cursor += used;
        *total += gone;
        most = gone > most ? gone : most;
    }
    return most;
}

/* Tensor attention of stream g for queries [i0, i1) of one entry
 * (DESIGN.md §5): four caches, O(n^2 d) per query, or one pass over the n^2
 * pair rows with the standard kernels. With `weights` (h2o; then i0 = 0,
 * i1 = m_q) each pair's weight goes to both its tokens. `rows`: stream g's
 * four caches in f32, views (k1, v1) and (k2, v2) over the plan's row pages
 * (fill_rows), or NULL. */
static void attend_tensor_piece(kvd_session *sess, const kvd_step_entry *e, size_t n_before, uint32_t g, size_t i0,
                                size_t i1, float *o, float *weights, float *lse, const kvd_kv_pages *rows)
{
    const kvd_session_config *cfg = &sess->config;
    const kvd_tensor_kernels *kern = kvd_tensor_kernels_get();
    const uint32_t group = cfg->heads / cfg->kv_heads;
    const size_t d = cfg->head_dim;
    /* The SIMD tensor kernels read f32 pages: the stream's own, or with
     * another dtype (KIVI's two segments included) the plan's f32 copy of
     * its rows; without that copy (head_dim beyond the kernels' tiles) the
     * scalar kernel dequantizes row by row. */
    const bool f32 = cfg->cache.dtype == KVD_DTYPE_F32 || rows;
    const size_t idx = (size_t)e->layer * cfg->kv_heads + g;
    const kvd_kv_pages a = rows ? rows[0] : kvd_stream_view(&sess->streams[idx]);
    const kvd_kv_pages b = rows ? rows[1] : kvd_stream_view(&sess->tensor_b[idx]);
    const kvd_tensor_view av = tensor_view(&sess->streams[idx]), bv = tensor_view(&sess->tensor_b[idx]);
    kvd_stream *s = &sess->streams[idx];
    if (weights)
        memset(weights, 0, s->n_tokens * sizeof(float));
    for (size_t i = i0; i < i1; i++) {
        const size_t off = (i * cfg->heads + (size_t)g * group) * d;
        const size_t visible = visible_tokens(e, n_before, i);
        float *lse_i = lse ? lse + i * cfg->heads + (size_t)g * group : NULL;
        if (sess->pairs) {
            /* the two-cache is standard attention over its first
             * visible^2 pair rows, and the standard kernels read every
             * dtype */
            kvd_kv_segment seg[2];
            size_t n_seg = kvd_stream_segments(&sess->pairs[idx], visible * visible, seg);
            kvd_attention_kernels_get()->attend_lse(seg, n_seg, e->q + off, group, cfg->scale, o + off, lse_i);
        } else if (f32) {
            kern->four_lse(&a, &b, visible, cfg->window, e->q + off, group, cfg->scale, o + off, lse_i);
        } else {
            kvd_tensor_four_view_lse(&av, &bv, visible, cfg->window, e->q + off, group, cfg->scale, o + off,
                                     lse_i);
        }
        if (weights) /* h2o: each pair's weight goes to both its tokens */
            kvd_tensor_weights_view(&av, &bv, visible, cfg->window, e->q + off, group, cfg->scale, weights);
    }
    if (weights)
        kvd_stream_add_weights(s, weights, s->n_tokens);
}

/* One entry's standard or tensor attention, split into pieces (stream g,
 * queries [i0, i1)): piece p is stream p / q_chunks, query chunk
 * p % q_chunks. Pieces write disjoint rows of o; with h2o a stream is one
 * piece (q_chunks = 1) with its own weights row and scores buffer, so its
 * sums run in the unsplit order (the lse scratch is shared: pieces write
 * disjoint heads). */
typedef struct attend_split {
    kvd_session *sess;
    const kvd_step_entry *e;
    size_t n_before;
    float *o;
    float *lse;             /* [m_q][heads] log-sum-exp, or NULL */
    bool tensor;
    size_t q_chunks, chunk; /* chunks per stream, queries per chunk */
    float *weights;         /* h2o: [kv_heads][stride] or NULL */
    float *scratch;         /* h2o standard: [m_q][heads] lse (the plan's) */
    size_t stride;
    float *scores;          /* h2o standard decode: [kv_heads][scores_stride] or NULL */
    size_t scores_stride;
    /* tensor, not f32: the plan's row views, [2 s] (k1, v1) and [2 s + 1]
     * (k2, v2) holding kv head g0 + s, for the heads [g0, g1) of this
     * round; NULL = the streams themselves */
    const kvd_kv_pages *rows;
    uint32_t g0, g1;
} attend_split;

/* Stream g's two row views in sp->rows, or NULL. */
static const kvd_kv_pages *stream_rows(const attend_split *sp, uint32_t g)
{
    return sp->rows ? sp->rows + 2 * (size_t)(g - sp->g0) : NULL;
}

/* One view's tokens as f32 rows into its row pages, page by page. */
static void fill_view(const kvd_stream *s, const kvd_kv_pages *to)
{
    const kvd_tensor_view v = tensor_view(s);
    const size_t spp = to->slots_per_page, d = to->head_dim;
    for (size_t j = 0, p = 0; j < s->n_tokens; j += spp, p++) {
        float *page = (float *)(uintptr_t)to->pages[p]; /* the plan's own pages, writable */
        const size_t cnt = s->n_tokens - j < spp ? s->n_tokens - j : spp;
        kvd_tensor_view_rows_from(&v, j, cnt, page, page + spp * d);
    }
}

/* The four caches of kv heads [g0, g1) of e's layer as f32 rows into the
 * plan's row views (slot s = head g0 + s): O(n d) per stream, once per
 * entry and head, before any piece of that head reads them. */
static void fill_rows(const kvd_session *sess, const kvd_step_entry *e, uint32_t g0, uint32_t g1,
                      const kvd_kv_pages *views, size_t rows_cap)
{
    const kvd_session_config *cfg = &sess->config;
    for (uint32_t g = g0; g < g1; g++) {
        const size_t idx = (size_t)e->layer * cfg->kv_heads + g;
        const kvd_stream *s = &sess->streams[idx], *b = &sess->tensor_b[idx];
        assert(s->n_tokens <= rows_cap && b->n_tokens == s->n_tokens && "the plan counted every token");
        (void)rows_cap;
        fill_view(s, &views[2 * (size_t)(g - g0)]);
        fill_view(b, &views[2 * (size_t)(g - g0) + 1]);
    }
}

static void attend_piece(void *ctx, size_t piece)
{
    const attend_split *sp = ctx;
    const uint32_t g = sp->g0 + (uint32_t)(piece / sp->q_chunks);
    const size_t i0 = (piece % sp->q_chunks) * sp->chunk;
    const size_t i1 = i0 + sp->chunk < sp->e->m_q ? i0 + sp->chunk : sp->e->m_q;
    float *w = sp->weights ? sp->weights + (size_t)g * sp->stride : NULL;
    if (sp->tensor)
        attend_tensor_piece(sp->sess, sp->e, sp->n_before, g, i0, i1, sp->o, w, sp->lse, stream_rows(sp, g));
    else
        attend_standard_piece(sp->sess, sp->e, sp->n_before, g, i0, i1, sp->o, w, sp->scratch,
                              sp->scores ? sp->scores + (size_t)g * sp->scores_stride : NULL, sp->lse);
}

/* KVD_STEP_SPLIT_WORK's estimate for one entry: the last query sees the
 * most, so m_q x that bounds the sum. */
static uint64_t attend_work(const kvd_session *sess, const kvd_step_entry *e, size_t n_before)
{
    const kvd_session_config *cfg = &sess->config;
    uint64_t n = visible_tokens(e, n_before, e->m_q - 1);
    if (sess->tensor_b)
        n *= n; /* four caches: n^2 pairs; two-cache: n^2 pair rows */
    return (uint64_t)e->m_q * n * cfg->head_dim * cfg->heads;
}

/* Pieces per entry the split aims at: enough for the dynamic schedule to
 * even out uneven pieces (causal prefill) on a handful of cores. */
#define SPLIT_PIECES 32

/* Attention for every query of one entry (standard, or tensor when the
 * session has tensor_b), split over par when the entry is large enough.
 * `weights`/`scratch`/`scores`: the plan's h2o buffers (NULL without h2o;
 * scores only for a standard entry below the tiled threshold), which the
 * unsplit run uses; a split one allocates a weights row and a scores
 * buffer per stream (the lse scratch is shared: each piece writes its own
 * heads), and runs unsplit if it cannot. `rows`: the plan's tensor row views (tensor
 * sessions of a non-f32 dtype, 2 per slot for row_heads kv heads), or NULL
 * = the streams themselves. With rows the kv heads attend in rounds of
 * row_heads: each round fills its heads' rows, then runs their pieces (all
 * of them split, or one after another), so the copy never holds more than
 * row_heads heads; every piece computes what it would in one round, so the
 * results do not depend on the rounds. */
static void attend_entry(kvd_session *sess, const kvd_step_entry *e, size_t n_before, float *o, float *lse,
                         float *weights, float *scratch, float *scores, const kvd_kv_pages *rows,
                         size_t row_heads, size_t rows_cap, const kvd_parallel *par)
{
    const kvd_session_config *cfg = &sess->config;
    const bool tensor = sess->tensor_b != NULL;
    attend_split sp = {.sess = sess, .e = e, .n_before = n_before, .o = o, .lse = lse, .tensor = tensor,
                       .q_chunks = 1, .chunk = e->m_q, .rows = tensor ? rows : NULL};
    const uint32_t round = sp.rows ? (uint32_t)row_heads : cfg->kv_heads;
    assert(round >= 1 && round <= cfg->kv_heads);
    /* h2o splits by stream only: one stream (MQA) has nothing to split */
    const size_t can_split = weights ? cfg->kv_heads : cfg->kv_heads * (size_t)e->m_q;
    bool split = par && can_split > 1 && attend_work(sess, e, n_before) >= KVD_STEP_SPLIT_WORK;
    if (split && weights) {
        size_t most = 1;
        for (uint32_t g = 0; g < cfg->kv_heads; g++) {
            const size_t n = kvd_session_stream(sess, e->layer, g)->n_tokens;
            most = n > most ? n : most;
        }
        sp.stride = most;
        sp.weights = malloc((size_t)cfg->kv_heads * most * sizeof(float));
        sp.scratch = scratch;
        if (scores) { /* decode-path scores: [group][most] per stream */
            sp.scores_stride = (size_t)(cfg->heads / cfg->kv_heads) * most;
            sp.scores = malloc((size_t)cfg->kv_heads * sp.scores_stride * sizeof(float));
        }
        if (!sp.weights || (scores && !sp.scores)) /* no memory for the split: run it on this thread */
            split = false;
    } else if (split) {
        const size_t want = (SPLIT_PIECES + cfg->kv_heads - 1) / cfg->kv_heads;
        sp.q_chunks = want < e->m_q ? want : e->m_q;
        sp.chunk = (e->m_q + sp.q_chunks - 1) / sp.q_chunks;
        sp.q_chunks = (e->m_q + sp.chunk - 1) / sp.chunk; /* no empty chunk */
    }
    for (uint32_t g0 = 0; g0 < cfg->kv_heads; g0 += round) {
        sp.g0 = g0;
        sp.g1 = cfg->kv_heads - g0 < round ? cfg->kv_heads : g0 + round;
        if (sp.rows)
            fill_rows(sess, e, sp.g0, sp.g1, sp.rows, rows_cap);
        if (split) {
            par->run(par->self, &sp, attend_piece, (size_t)(sp.g1 - sp.g0) * sp.q_chunks);
            continue;
        }
        for (uint32_t g = sp.g0; g < sp.g1; g++) {
            if (tensor)
                attend_tensor_piece(sess, e, n_before, g, 0, e->m_q, o, weights, lse, stream_rows(&sp, g));
            else
                attend_standard_piece(sess, e, n_before, g, 0, e->m_q, o, weights, scratch, scores, lse);
        }
    }
    free(sp.weights);
    free(sp.scores);
}

/* Evicts each stream of the entry's layer down to the budget (DESIGN.md §4:
 * at the end of the entry, after its attention). Returns the most evicted
 * from one stream; adds every evicted token to *total. */
static size_t evict_to_budget(kvd_session *sess, kvd_pool *pool, const kvd_step_entry *e, kvd__step_plan *p,
                              uint64_t *total)
{
    const kvd_session_config *cfg = &sess->config;
    size_t most = 0;
    if (!cfg->cache.budget || cfg->cache.eviction == KVD_EVICT_NONE)
        return 0;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        kvd_stream *s = kvd_session_stream(sess, e->layer, g);
        if (s->n_tokens <= cfg->cache.budget)
            continue;
        size_t used = 0;
        size_t n = kvd_stream_evict(s, pool, cfg->cache.budget, rest_pages(p), p->total_pages - p->cursor,
                                    &used);
        p->cursor += used;
        *total += n;
        if (n > most)
            most = n;
    }
    return most;
}

/* A tensor window keeps only the last W tokens of each stream: older ones
 * can never be seen again, so they leave at the end of the entry, like an
 * eviction (the four-cache's O(W * d) memory). Returns tokens dropped per
 * stream. */
static size_t slide_window(kvd_session *sess, kvd_pool *pool, const kvd_step_entry *e)
{
    const kvd_session_config *cfg = &sess->config;
    size_t dropped = 0;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        const size_t idx = (size_t)e->layer * cfg->kv_heads + g;
        kvd_stream *a = &sess->streams[idx];
        if (a->n_tokens <= cfg->window)
            continue;
        dropped = a->n_tokens - cfg->window;
        kvd__stream_drop_oldest(a, pool, dropped);
        kvd__stream_drop_oldest(&sess->tensor_b[idx], pool, dropped);
    }
    return dropped;
}

/* Two-cache after an eviction: the kept tokens' slots were reordered (a
 * victim's hole takes the last slot, in k1/v1 and k2/v2 alike), so the pair
 * rows are rebuilt for the new slot order and the rest is cut: O(n^2 d)
 * writes, the order of one two-cache query. */
static void rebuild_pairs(kvd_session *sess, kvd_pool *pool, const kvd_step_entry *e, kvd__step_plan *p)
{
    const kvd_session_config *cfg = &sess->config;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        const size_t idx = (size_t)e->layer * cfg->kv_heads + g;
        const size_t n = sess->streams[idx].n_tokens;
        kvd_stream *pr = &sess->pairs[idx];
        if (pr->n_tokens == n * n)
            continue; /* this head evicted nothing */
        if (is_kivi(cfg)) {
            const kvd_tensor_view a = tensor_view(&sess->streams[idx]), b = tensor_view(&sess->tensor_b[idx]);
            /* KIVI rows live in key blocks and a residual: rebuilt by
             * appending anew, into pages the plan reserved for it (settled
             * with the rest at the end of the request). */
            kvd__stream_clear(pr, pool);
            for (size_t t = 0; t < n; t++) {
                const size_t rows = kvd_tensor_pair_rows_added(t);
                void *const *pages = take_pages(p, kvd_stream_pages_needed(pr, rows));
                kvd_tensor_pair_rows_view(&a, &b, t, p->pair_k, p->pair_v);
                kvd_stream_append(pr, pool, rows, p->pair_k, p->pair_v, cfg->head_dim, pages);
            }
            continue;
        }
        kvd__session_rebuild_pairs(sess, pool, idx, p->pair_k, p->pair_v);
    }
}

/* KIVI: whole key groups past the residual window are quantized now, once
 * per request (the plan counted exactly this). */
static void settle_kivi(kvd_session *sess, kvd_pool *pool, kvd__step_plan *p)
{
    for (size_t i = 0; i < sess->n_streams; i++) {
        kvd_stream *parts[3] = {&sess->streams[i], sess->tensor_b ? &sess->tensor_b[i] : NULL,
                                sess->pairs ? &sess->pairs[i] : NULL};
        for (int k = 0; k < 3; k++) {
            size_t used = 0;
            if (!parts[k])
                continue;
            kvd_stream_settle(parts[k], pool, rest_pages(p), p->total_pages - p->cursor, &used);
            p->cursor += used;
        }
    }
}

/* The entry's outputs against the exact ones, in double: relative L2 error
 * ||o - e|| / ||e|| (0 when both are zero, inf when only e is) and max |o - e|. */
static void shadow_compare(const float *o, const float *exact, size_t n, kvd_step_result *r)
{
    double err_sq = 0, ref_sq = 0, max_abs = 0;
    for (size_t i = 0; i < n; i++) {
        const double diff = (double)o[i] - (double)exact[i];
        err_sq += diff * diff;
        ref_sq += (double)exact[i] * exact[i];
        if (fabs(diff) > max_abs)
            max_abs = fabs(diff);
    }
    r->has_shadow = true;
    r->relative_error = ref_sq > 0 ? sqrt(err_sq / ref_sq) : (err_sq > 0 ? INFINITY : 0.0);
    r->max_abs_error = max_abs;
}

/* One entry on the session, then on its shadow copy. A rotated session
 * (cache/rotate.h) runs e, the entry in its rotated basis, and its output
 * is rotated back before anything sees it; the shadow copy runs `sent`,
 * the entry as the client sent it (e itself when not rotated), so the
 * shadow error is the rotated, quantized output against exact unrotated
 * f32 attention. */
static void run_entry(kvd_session *sess, kvd_session *shadow, kvd_pool *pool, const kvd_step_entry *e,
                      const kvd_step_entry *sent, kvd__step_plan *p, float *o, float *exact, kvd_step_result *r,
                      uint64_t *evicted_total, const kvd_parallel *par)
{
    const kvd_session_config *cfg = &sess->config;
    const size_t n_before = kvd_session_stream(sess, e->layer, 0)->n_tokens;
    for (uint32_t g = 0; e->m && g < cfg->kv_heads; g++) /* pages rewritten in place: none still shared */
        p->cursor += kvd__session_unshare(sess, pool, (size_t)e->layer * cfg->kv_heads + g, rest_pages(p),
                                          p->total_pages - p->cursor);
    if (e->m)
        append_tokens(sess, pool, e, p);
    if (e->m && sess->tensor_b)
        append_tensor(sess, pool, e, p);
    if (e->m_q && sess->tensor_b && sess->subgen)
        attend_subgen_tensor(sess, e, n_before, o, p->sg_num, p->sg_qk);
    else if (e->m_q && sess->tensor_b)
        attend_entry(sess, e, n_before, o, r->lse, p->weights, NULL, NULL, p->row_views, p->row_heads,
                     p->rows_cap, par);
    else if (e->m_q && sess->subgen)
        attend_subgen(sess, e, n_before, o, p->sg_num);
    else if (e->m_q)
        attend_entry(sess, e, n_before, o, r->lse, p->weights, p->scratch,
                     e->m_q < KVD_PREFILL_MIN_QUERIES ? p->scores : NULL, NULL, 0, 0, par);
    if (e->m_q && cfg->cache.rotate == KVD_ROTATE_HADAMARD)
        kvd__rotate_output_back(cfg, e->layer, o, e->m_q);
    if (sess->tensor_b && cfg->window)
        r->evicted = slide_window(sess, pool, e);
    else if (sess->subgen)
        r->evicted = sketch_window(sess, pool, e, p, evicted_total);
    else
        r->evicted = evict_to_budget(sess, pool, e, p, evicted_total);
    if (sess->pairs && r->evicted)
        rebuild_pairs(sess, pool, e, p);
    r->tokens = kvd_session_stream(sess, e->layer, 0)->n_tokens;
    if (!shadow)
        return;
    const size_t shadow_before = kvd_session_stream(shadow, e->layer, 0)->n_tokens;
    if (e->m)
        append_tokens(shadow, pool, sent, p);
    if (e->m && shadow->tensor_b) /* a tensor session's copy: a four-cache (k2/v2 too) */
        append_tensor(shadow, pool, sent, p);
    if (e->m_q) {
        attend_entry(shadow, sent, shadow_before, exact, NULL, NULL, NULL, NULL, NULL, 0, 0, par);
        shadow_compare(o, exact, e->m_q * (size_t)cfg->heads * cfg->head_dim, r);
    }
}

int kvd_step_run(kvd_session *sess, kvd_session *shadow, kvd_pool *pool, const kvd_step_entry *entries,
                 size_t n, kvd_step_output *out)
{
    return kvd_step_run_parallel(sess, shadow, pool, entries, n, NULL, out);
}

int kvd_step_run_parallel(kvd_session *sess, kvd_session *shadow, kvd_pool *pool, const kvd_step_entry *entries,
                          size_t n, const kvd_parallel *par, kvd_step_output *out)
{
    memset(out, 0, sizeof *out);
    /* A rotated session attends over the entries in its basis: copied and
     * rotated first, so a failure changes nothing. */
    kvd_step_entry *rotated = NULL;
    if (sess->config.cache.rotate == KVD_ROTATE_HADAMARD && n
        && !(rotated = kvd__rotate_entries(&sess->config, entries, n)))
        return KVD_STEP_NOMEM;
    kvd__step_plan plan;
    /* tensor rows of one kv head on one thread; split, one per worker */
    const size_t row_heads = !par ? 1 : par->width ? par->width : sess->config.kv_heads;
    int rc = kvd__step_plan_make(&plan, sess, shadow, pool, entries, n, row_heads, &out->need_pages);
    out->row_pages = plan.row_pages;
    kvd_step_result *results = rc == KVD_STEP_OK ? calloc(n ? n : 1, sizeof *results) : NULL;
    if (rc == KVD_STEP_OK && !results) {
        kvd__step_plan_release(&plan, pool);
        rc = KVD_STEP_NOMEM;
    }
    /* lse buffers of the entries that asked, before anything changes */
    for (size_t i = 0; rc == KVD_STEP_OK && i < n; i++)
        if (entries[i].return_lse && entries[i].m_q
            && !(results[i].lse = malloc(entries[i].m_q * sess->config.heads * sizeof(float)))) {
            for (size_t j = 0; j < i; j++)
                free(results[j].lse);
            free(results);
            kvd__step_plan_release(&plan, pool);
            rc = KVD_STEP_NOMEM;
        }
    if (rc != KVD_STEP_OK) {
        kvd__step_plan_free(&plan, n);
        kvd__rotate_entries_free(rotated);
        return rc;
    }

    /* From here on nothing can fail: the step is applied whole. */
    for (size_t i = 0; i < n; i++) {
        run_entry(sess, shadow, pool, rotated ? &rotated[i] : &entries[i], &entries[i], &plan, plan.outputs[i],
                  plan.exact ? plan.exact[i] : NULL, &results[i], &out->evicted_total, par);
        out->tokens_in += entries[i].m;
        results[i].o = plan.outputs[i];
        plan.outputs[i] = NULL; /* handed over to the result */
    }
    if (is_kivi(&sess->config))
        settle_kivi(sess, pool, &plan);
    /* the bound was not reached: give back the rest, and the tensor rows */
    kvd__step_plan_release(&plan, pool);
    kvd__step_plan_free(&plan, n);
    kvd__rotate_entries_free(rotated);
    out->results = results;
    out->n_results = n;
    return KVD_STEP_OK;
}

void kvd_step_output_free(kvd_step_output *out)
{
    if (!out)
        return;
    for (size_t i = 0; out->results && i < out->n_results; i++) {
        free(out->results[i].o);
        free(out->results[i].lse);
    }
    free(out->results);
    memset(out, 0, sizeof *out);
}
