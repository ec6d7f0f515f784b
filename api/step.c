/* api/step.c — one step request, run on a worker: parse and validate the
 * whole body, take every page the step could need from the pool at once (or
 * fail with 503 and change nothing), then per entry append the new tokens,
 * run attention for each query, score (h2o) and evict to the budget, and
 * render the response. The session is touched only after every check and
 * allocation that can fail has passed; pages reserved but not used go back. */
#include "api/internal.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "attention/attention.h"
#include "attention/tensor.h"
#include "cache/evict.h"

/* Scratch a step needs before it may touch the session (all freed together). */
typedef struct step_plan {
    size_t *new_tokens;      /* [n_streams] tokens this request appends per stream */
    void **pages;            /* [total_pages] taken from the pool, used in order */
    size_t total_pages;
    size_t cursor;           /* pages[0..cursor) placed in streams */
    float **outputs;         /* [n_layers] each [m_q][heads][head_dim] */
    size_t *tokens_after;    /* [n_layers] stream tokens after each entry */
    size_t *evicted;         /* [n_layers] tokens evicted per stream by each entry */
    float *weights;          /* h2o: [max_tokens] weight received per slot */
    float *scratch;          /* h2o: [max_tokens] one head's scores */
    float **exact;           /* shadow: [n_layers] each [m_q][heads][head_dim] */
    double *err_sq, *ref_sq, *max_abs; /* shadow: [n_layers] per-entry error terms */
    float *pair_k, *pair_v;  /* two-cache: [2 * max_tokens][head_dim] one token's new pair rows */
    double *norm_factor;     /* tensor l2norm: [max m] ||k2|| of an entry's new tokens */
} step_plan;

static void plan_free(step_plan *p, size_t n_layers)
{
    free(p->new_tokens);
    free(p->pages);
    if (p->outputs)
        for (size_t i = 0; i < n_layers; i++)
            free(p->outputs[i]);
    free(p->outputs);
    free(p->tokens_after);
    free(p->evicted);
    free(p->weights);
    free(p->scratch);
    if (p->exact)
        for (size_t i = 0; i < n_layers; i++)
            free(p->exact[i]);
    free(p->exact);
    free(p->err_sq);
    free(p->ref_sq);
    free(p->max_abs);
    free(p->pair_k);
    free(p->pair_v);
    free(p->norm_factor);
}

static int fail(api_job *job, int status, const char *code, const char *msg)
{
    kvd_api_error err;
    kvd_api_error_set(&err, status, code, NULL, "%s", msg);
    kvd_response_error(&job->resp, &err);
    return -1;
}

static size_t div_up(size_t a, size_t b)
{
    return a / b + (a % b != 0);
}

/* Most pages stream `s` can take from the plan while the request's entries
 * for `layer` run: every page boundary crossed by an append, assuming each
 * eviction frees as much as the budget allows (more freed now means more to
 * take again later, so this is the worst case), plus copies of pages shared
 * with a fork that a write may hit. Exact for ordinary decode. */
static size_t stream_page_bound(const kvd_stream *s, const kvd_step_request *req, uint32_t layer,
                                uint32_t budget)
{
    size_t n = s->n_tokens, pages = s->n_pages, taken = 0, appended = 0;
    const size_t spp = s->slots_per_page;
    for (size_t i = 0; i < req->n_layers; i++) {
        const kvd_step_layer *st = &req->layers[i];
        if (st->layer != layer)
            continue;
        size_t want = div_up(n + st->m, spp);
        if (want > pages) {
            taken += want - pages;
            pages = want;
        }
        n += st->m;
        appended += st->m;
        if (budget && n > budget) {
            n = budget;
            pages = div_up(n, spp);
        }
    }
    if (s->n_shared) {
        /* A shared tail page copied by the first append, and one copy per
         * eviction at most (a hole written in a shared page). */
        size_t over = s->n_tokens > budget && budget ? s->n_tokens - budget : 0;
        size_t writes = 1 + appended + over;
        taken += writes < s->n_shared ? writes : s->n_shared;
    }
    return taken;
}

/* KIVI: pages for the request's entries of `layer`. One entry, or no
 * eviction: exactly kvd_stream_pages_needed for the total. Several entries
 * with eviction: each entry may take again what an earlier one's eviction
 * gave back, so each is bounded on its own — its residual rows (m / spp + 1
 * pages) and the quantized pages a settle of everything could need — and
 * what is not used goes back after the step. */
static size_t kivi_page_bound(const kvd_stream *s, const kvd_step_request *req, uint32_t layer,
                              const kvd_session_config *cfg)
{
    size_t entries = 0, total = 0;
    for (size_t i = 0; i < req->n_layers; i++)
        if (req->layers[i].layer == layer) {
            entries++;
            total += req->layers[i].m;
        }
    if (entries <= 1 || cfg->cache.eviction == KVD_EVICT_NONE)
        return kvd_stream_pages_needed(s, total);
    const size_t spp_res = s->residual->slots_per_page, spp_q = s->slots_per_page;
    const size_t settle_pages = div_up(s->residual->n_tokens + cfg->cache.residual + cfg->cache.group + total,
                                       spp_q) + 1;
    size_t bound = 0;
    for (size_t i = 0; i < req->n_layers; i++)
        if (req->layers[i].layer == layer)
            bound += div_up(req->layers[i].m, spp_res) + 1 + settle_pages;
    return bound;
}

/* Allocations first; then the pool, all or nothing. Returns 0, or -1 with the
 * job's response set (nothing in the session changed). */
static bool is_kivi(const kvd_session_config *cfg)
{
    return cfg->cache.dtype == KVD_DTYPE_KIVI2 || cfg->cache.dtype == KVD_DTYPE_KIVI4;
}

/* Tokens a stream keeps after each entry: the tensor window, else the
 * eviction budget (0 = no limit). */
static uint32_t keep_limit(const kvd_session_config *cfg)
{
    return cfg->window ? cfg->window : cfg->cache.budget;
}

/* Pages the two-cache's pair rows can take over the request's entries of
 * `layer` when the stream starts at n tokens: rows grow to (n + m)^2 per
 * entry and, with a limit, shrink back to limit^2 after it (the rows are
 * rebuilt in place), so each entry may take again what an earlier one gave
 * back. Same worst case as stream_page_bound. */
static size_t pair_page_bound(const kvd_stream *pr, const kvd_step_request *req, uint32_t layer, size_t n,
                              uint32_t limit)
{
    const size_t spp = pr->slots_per_page;
    size_t pages = pr->n_pages, taken = 0;
    for (size_t i = 0; i < req->n_layers; i++) {
        const kvd_step_layer *st = &req->layers[i];
        if (st->layer != layer)
            continue;
        n += st->m;
        size_t want = div_up(n * n, spp);
        if (want > pages) {
            taken += want - pages;
            pages = want;
        }
        if (limit && n > limit) {
            n = limit;
            pages = div_up(n * n, spp);
        }
    }
    return taken;
}

/* KIVI two-cache pair rows: the rows the request appends (exact), plus,
 * with a policy, a rebuild after each entry of the layer — every kept pair
 * row appended anew, in f32 in the residual until the request's settle, with
 * its quantized pages attached: at most rows / spp + 1 of each kind. */
static size_t kivi_pair_page_bound(const kvd_stream *pr, const kvd_step_request *req, uint32_t layer, size_t n,
                                   const kvd_session_config *cfg)
{
    size_t m = 0, entries = 0;
    for (size_t i = 0; i < req->n_layers; i++)
        if (req->layers[i].layer == layer) {
            m += req->layers[i].m;
            entries++;
        }
    size_t need = kvd_stream_pages_needed(pr, (n + m) * (n + m) - n * n);
    if (cfg->cache.eviction != KVD_EVICT_NONE && cfg->cache.budget) {
        const size_t rows = (size_t)cfg->cache.budget * cfg->cache.budget;
        const size_t per_rebuild = div_up(rows, pr->residual->slots_per_page) + 1 + div_up(rows, pr->slots_per_page) + 1;
        need += entries * (per_rebuild + 2); /* + page rounding of each entry's growth */
    }
    return need;
}

/* Tensor sessions: pages for k2/v2 (one slot a token, like k1/v1) and for
 * the two-cache's pair rows ((n + m)^2 - n^2 rows for m new tokens), plus
 * the scratch that holds one token's 2t+1 new pair rows. */
static int plan_tensor(api_job *job, kvd_session *sess, const kvd_step_request *req, step_plan *p,
                       size_t pool_pages, size_t *pages)
{
    *pages = 0;
    size_t max_tokens = 0;
    for (size_t i = 0; i < sess->n_streams; i++) {
        const size_t m = p->new_tokens[i];
        if (!m)
            continue;
        kvd_stream *b = &sess->tensor_b[i];
        /* k2/v2 grow and (with a window or a policy) shrink exactly like k1/v1. */
        const uint32_t layer = (uint32_t)(i / sess->config.kv_heads);
        size_t need = is_kivi(&sess->config) ? kivi_page_bound(b, req, layer, &sess->config)
                                             : stream_page_bound(b, req, layer, keep_limit(&sess->config));
        if (kvd_stream_reserve_table(b, need) != 0)
            return fail(job, 500, KVD_ERR_INTERNAL, "out of memory growing a block table");
        *pages += need;
        const size_t n = sess->streams[i].n_tokens;
        if (n + m > max_tokens)
            max_tokens = n + m;
        if (!sess->pairs)
            continue;
        /* n + m <= tokens a pool could ever hold, so the square stays far from
         * overflow; a plan bigger than the whole pool is refused before the
         * block table grows for it. */
        kvd_stream *pr = &sess->pairs[i];
        need = is_kivi(&sess->config) ? kivi_pair_page_bound(pr, req, layer, n, &sess->config)
                                      : pair_page_bound(pr, req, layer, n, keep_limit(&sess->config));
        if (need > pool_pages)
            return -2;
        if (kvd_stream_reserve_table(pr, need) != 0)
            return fail(job, 500, KVD_ERR_INTERNAL, "out of memory growing a block table");
        *pages += need;
    }
    if (sess->config.cache.eviction == KVD_EVICT_L2NORM) {
        size_t max_m = 1;
        for (size_t i = 0; i < req->n_layers; i++)
            max_m = req->layers[i].m > max_m ? req->layers[i].m : max_m;
        if (!(p->norm_factor = malloc(max_m * sizeof *p->norm_factor)))
            return fail(job, 500, KVD_ERR_INTERNAL, "out of memory for key norms");
    }
    if (sess->pairs && max_tokens) {
        const size_t d = sess->config.head_dim;
        p->pair_k = malloc(2 * max_tokens * d * sizeof(float));
        p->pair_v = malloc(2 * max_tokens * d * sizeof(float));
        if (!p->pair_k || !p->pair_v)
            return fail(job, 500, KVD_ERR_INTERNAL, "out of memory for pair rows");
    }
    return 0;
}

/* Pages the exact f32 shadow copy takes for the request's tokens. */
static int plan_shadow(api_job *job, kvd_session *shadow, const step_plan *p, size_t *pages)
{
    *pages = 0;
    for (size_t i = 0; i < shadow->n_streams; i++) {
        if (!p->new_tokens[i])
            continue;
        size_t need = kvd_stream_pages_needed(&shadow->streams[i], p->new_tokens[i]);
        if (kvd_stream_reserve_table(&shadow->streams[i], need) != 0)
            return fail(job, 500, KVD_ERR_INTERNAL, "out of memory growing a block table");
        *pages += need;
    }
    return 0;
}

static int plan_step(kvd_api *api, api_job *job, kvd_session *sess, const kvd_step_request *req,
                     step_plan *p)
{
    const kvd_session_config *cfg = &sess->config;
    memset(p, 0, sizeof *p);
    p->new_tokens = calloc(sess->n_streams, sizeof *p->new_tokens);
    p->outputs = calloc(req->n_layers, sizeof *p->outputs);
    p->tokens_after = calloc(req->n_layers, sizeof *p->tokens_after);
    p->evicted = calloc(req->n_layers, sizeof *p->evicted);
    if (!p->new_tokens || !p->outputs || !p->tokens_after || !p->evicted)
        return fail(job, 500, KVD_ERR_INTERNAL, "out of memory planning the step");
    size_t q_row = (size_t)cfg->heads * cfg->head_dim;
    for (size_t i = 0; i < req->n_layers; i++) {
        const kvd_step_layer *st = &req->layers[i];
        for (uint32_t g = 0; g < cfg->kv_heads; g++)
            p->new_tokens[(size_t)st->layer * cfg->kv_heads + g] += st->m;
        if (st->m_q) {
            p->outputs[i] = malloc(st->m_q * q_row * sizeof(float));
            if (!p->outputs[i])
                return fail(job, 500, KVD_ERR_INTERNAL, "out of memory for the step output");
        }
    }
    size_t max_tokens = 0;
    for (size_t i = 0; i < sess->n_streams; i++) {
        kvd_stream *s = &sess->streams[i];
        if (!p->new_tokens[i])
            continue;
        uint32_t layer = (uint32_t)(i / cfg->kv_heads);
        /* KIVI streams settle once, after the whole request: their own count
         * for the request's total is exact, unless eviction between entries
         * of the same layer frees pages that a later entry takes again. */
        size_t need = is_kivi(cfg) ? kivi_page_bound(s, req, layer, cfg)
                      : stream_page_bound(s, req, layer, keep_limit(cfg));
        if (kvd_stream_reserve_table(s, need) != 0 ||
            (s->evict && kvd_stream_evict_reserve(s, p->new_tokens[i]) != 0))
            return fail(job, 500, KVD_ERR_INTERNAL, "out of memory growing a block table");
        p->total_pages += need;
        if (s->n_tokens + p->new_tokens[i] > max_tokens)
            max_tokens = s->n_tokens + p->new_tokens[i];
    }
    if (cfg->cache.eviction == KVD_EVICT_H2O) {
        for (size_t i = 0; i < sess->n_streams; i++)
            if (sess->streams[i].n_tokens > max_tokens)
                max_tokens = sess->streams[i].n_tokens; /* pure queries score too */
        p->weights = malloc((max_tokens ? max_tokens : 1) * sizeof(float));
        p->scratch = malloc((max_tokens ? max_tokens : 1) * sizeof(float));
        if (!p->weights || !p->scratch)
            return fail(job, 500, KVD_ERR_INTERNAL, "out of memory for h2o scores");
    }
    if (sess->tensor_b) {
        size_t tensor_pages;
        int rc = plan_tensor(job, sess, req, p, kvd_pool_pages_total(api->pool), &tensor_pages);
        if (rc == -1)
            return -1;
        p->total_pages = rc == -2 ? SIZE_MAX : p->total_pages + tensor_pages;
    }
    kvd_session *shadow = job->session->shadow;
    if (shadow) {
        size_t shadow_pages;
        p->exact = calloc(req->n_layers, sizeof *p->exact);
        p->err_sq = calloc(req->n_layers, sizeof *p->err_sq);
        p->ref_sq = calloc(req->n_layers, sizeof *p->ref_sq);
        p->max_abs = calloc(req->n_layers, sizeof *p->max_abs);
        if (!p->exact || !p->err_sq || !p->ref_sq || !p->max_abs)
            return fail(job, 500, KVD_ERR_INTERNAL, "out of memory for shadow outputs");
        for (size_t i = 0; i < req->n_layers; i++)
            if (req->layers[i].m_q && !(p->exact[i] = malloc(req->layers[i].m_q * q_row * sizeof(float))))
                return fail(job, 500, KVD_ERR_INTERNAL, "out of memory for shadow outputs");
        if (plan_shadow(job, shadow, p, &shadow_pages) != 0)
            return -1;
        p->total_pages += shadow_pages;
    }
    if (p->total_pages) {
        /* More than the whole pool can never be granted: refuse it as full
         * without allocating a table for it. */
        bool too_big = p->total_pages > kvd_pool_pages_total(api->pool);
        if (!too_big && !(p->pages = malloc(p->total_pages * sizeof *p->pages)))
            return fail(job, 500, KVD_ERR_INTERNAL, "out of memory planning the step");
        if (too_big || kvd_pool_alloc(api->pool, p->total_pages, p->pages) != 0) {
            if (too_big)
                p->total_pages = kvd_pool_pages_total(api->pool) + 1;
            kvd_api_error err;
            kvd_api_error_set(&err, 503, KVD_ERR_EXHAUSTED, NULL,
                              "KV pool exhausted: this step needs up to %zu pages, %zu of %zu are free",
                              p->total_pages, kvd_pool_pages_free(api->pool),
                              kvd_pool_pages_total(api->pool));
            kvd_response_error(&job->resp, &err);
            free(p->pages);
            p->pages = NULL;
            job->pool_full = true;
            job->need_pages = p->total_pages;
            return -1;
        }
    }
    return 0;
}

/* Appends one entry's tokens to its layer's kv_heads streams (of the
 * session or of its shadow copy). Cannot fail. */
static void apply_append(kvd_api *api, kvd_session *sess, const kvd_step_layer *st, step_plan *p)
{
    const kvd_session_config *cfg = &sess->config;
    size_t row = (size_t)cfg->kv_heads * cfg->head_dim;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        kvd_stream *s = kvd_session_stream(sess, st->layer, g);
        size_t need = kvd_stream_pages_needed(s, st->m);
        kvd_stream_append(s, api->pool, st->m, st->k + (size_t)g * cfg->head_dim,
                          st->v + (size_t)g * cfg->head_dim, row, p->pages + p->cursor);
        p->cursor += need;
    }
}

static size_t visible_tokens(const kvd_step_layer *st, size_t n_before, size_t i);

/* All tokens of a stream as tensor attention reads them (KIVI: two segments). */
static kvd_tensor_view tensor_view(const kvd_stream *s)
{
    kvd_tensor_view v;
    v.n_seg = kvd_stream_segments(s, s->n_tokens, v.seg);
    return v;
}

/* Tensor sessions: k2/v2 of the entry's tokens, and for the two-cache the
 * 2t+1 pair rows of each new token t, built from the four caches (k1/v1 were
 * appended by apply_append). Cannot fail. */
static void apply_tensor_append(kvd_api *api, kvd_session *sess, const kvd_step_layer *st, step_plan *p)
{
    const kvd_session_config *cfg = &sess->config;
    const size_t row = (size_t)cfg->kv_heads * cfg->head_dim;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        size_t idx = (size_t)st->layer * cfg->kv_heads + g;
        kvd_stream *b = &sess->tensor_b[idx];
        size_t need = kvd_stream_pages_needed(b, st->m);
        kvd_stream_append(b, api->pool, st->m, st->k2 + (size_t)g * cfg->head_dim,
                          st->v2 + (size_t)g * cfg->head_dim, row, p->pages + p->cursor);
        p->cursor += need;
        if (p->norm_factor) {
            /* l2norm ranks a tensor slot by ||k1|| * ||k2|| (DESIGN.md §5):
             * the index holds ||k1|| from the append; scale by ||k2||. */
            for (size_t t = 0; t < st->m; t++) {
                const float *k2 = st->k2 + t * row + (size_t)g * cfg->head_dim;
                double sq = 0;
                for (size_t c = 0; c < cfg->head_dim; c++)
                    sq += (double)k2[c] * k2[c];
                p->norm_factor[t] = sqrt(sq);
            }
            kvd_stream_scale_key_norms(&sess->streams[idx], b->n_tokens - st->m, st->m, p->norm_factor);
        }
        if (!sess->pairs)
            continue;
        kvd_stream *pr = &sess->pairs[idx];
        const kvd_tensor_view a_view = tensor_view(&sess->streams[idx]), b_view = tensor_view(b);
        for (size_t t = b->n_tokens - st->m; t < b->n_tokens; t++) {
            size_t rows = kvd_tensor_pair_rows_added(t);
            kvd_tensor_pair_rows_view(&a_view, &b_view, t, p->pair_k, p->pair_v);
            need = kvd_stream_pages_needed(pr, rows);
            kvd_stream_append(pr, api->pool, rows, p->pair_k, p->pair_v, cfg->head_dim, p->pages + p->cursor);
            p->cursor += need;
        }
    }
}

/* Tensor attention for every query of one entry (DESIGN.md §5): four
 * caches, O(n^2 d) per query, or one pass over the n^2 pair rows. */
static void apply_tensor_attention(kvd_session *sess, const kvd_step_layer *st, size_t n_before, float *o,
                                   step_plan *p)
{
    const kvd_session_config *cfg = &sess->config;
    const kvd_tensor_kernels *kern = kvd_tensor_kernels_get();
    const uint32_t group = cfg->heads / cfg->kv_heads;
    const size_t d = cfg->head_dim;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        size_t idx = (size_t)st->layer * cfg->kv_heads + g;
        const kvd_kv_pages a = kvd_stream_view(&sess->streams[idx]);
        const kvd_kv_pages b = kvd_stream_view(&sess->tensor_b[idx]);
        const kvd_tensor_view av = tensor_view(&sess->streams[idx]), bv = tensor_view(&sess->tensor_b[idx]);
        /* The SIMD tensor kernels read f32 pages; every other dtype (KIVI's
         * two segments included) runs kvd_tensor_four_view over dequantized rows. */
        const bool f32 = sess->config.cache.dtype == KVD_DTYPE_F32;
        kvd_stream *s = &sess->streams[idx];
        if (p->weights)
            memset(p->weights, 0, s->n_tokens * sizeof(float));
        for (size_t i = 0; i < st->m_q; i++) {
            size_t off = (i * cfg->heads + (size_t)g * group) * d;
            size_t visible = visible_tokens(st, n_before, i);
            if (sess->pairs) {
                /* the two-cache is standard attention over its pair rows,
                 * and the standard kernels read every dtype */
                kvd_kv_segment seg[2];
                size_t n_seg = kvd_stream_segments(&sess->pairs[idx], visible * visible, seg);
                kvd_attention_kernels_get()->attend(seg, n_seg, st->q + off, group, cfg->scale, o + off);
            } else if (f32) {
                kern->four(&a, &b, visible, cfg->window, st->q + off, group, cfg->scale, o + off);
            } else {
                kvd_tensor_four_view(&av, &bv, visible, cfg->window, st->q + off, group, cfg->scale,
                                     o + off);
            }
            if (p->weights) /* h2o: each pair's weight goes to both its tokens */
                kvd_tensor_weights_view(&av, &bv, visible, cfg->window, st->q + off, group, cfg->scale,
                                        p->weights);
        }
        if (p->weights)
            kvd_stream_add_weights(s, p->weights, s->n_tokens);
    }
}

/* Number of cache slots query i of an entry sees; n_before = stream tokens
 * before the entry's append. causal: query i belongs to new token
 * m - m_q + i and sees it and everything before; block: all m new tokens. */
static size_t visible_tokens(const kvd_step_layer *st, size_t n_before, size_t i)
{
    return n_before + (st->mask == KVD_MASK_CAUSAL ? st->m - st->m_q + i + 1 : st->m);
}

/* Attention for every query of one entry. Query heads g*group ..
 * g*group+group-1 share kv head g and are adjacent in q, so one kernel call
 * serves the group. With `score` (h2o) streams also get the weights each
 * slot received. */
static void apply_attention(kvd_session *sess, const kvd_step_layer *st, size_t n_before, float *o,
                            step_plan *p, bool score)
{
    const kvd_session_config *cfg = &sess->config;
    const kvd_attention_kernels *kern = kvd_attention_kernels_get();
    uint32_t group = cfg->heads / cfg->kv_heads;
    size_t d = cfg->head_dim;
    float *weights = score ? p->weights : NULL;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        kvd_stream *s = kvd_session_stream(sess, st->layer, g);
        if (weights)
            memset(weights, 0, s->n_tokens * sizeof(float));
        for (size_t i = 0; i < st->m_q; i++) {
            size_t off = (i * cfg->heads + (size_t)g * group) * d;
            kvd_kv_segment seg[2];
            size_t n_seg = kvd_stream_segments(s, visible_tokens(st, n_before, i), seg);
            kern->attend(seg, n_seg, st->q + off, group, cfg->scale, o + off);
            if (weights)
                kvd_attention_weights(seg, n_seg, st->q + off, group, cfg->scale, p->scratch,
                                      weights);
        }
        if (weights)
            kvd_stream_add_weights(s, weights, s->n_tokens);
    }
}

/* Evicts each stream of the entry's layer down to the budget (DESIGN.md §4:
 * at the end of the step, after its attention). Returns the most evicted
 * from one stream. */
static size_t apply_eviction(kvd_api *api, kvd_session *sess, const kvd_step_layer *st, step_plan *p)
{
    const kvd_session_config *cfg = &sess->config;
    size_t most = 0;
    if (!cfg->cache.budget || cfg->cache.eviction == KVD_EVICT_NONE)
        return 0;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        kvd_stream *s = kvd_session_stream(sess, st->layer, g);
        if (s->n_tokens <= cfg->cache.budget)
            continue;
        size_t used = 0;
        size_t n = kvd_stream_evict(s, api->pool, cfg->cache.budget, p->pages + p->cursor,
                                    p->total_pages - p->cursor, &used);
        p->cursor += used;
        atomic_fetch_add_explicit(&api->stats.evictions[cfg->cache.eviction], n, memory_order_relaxed);
        if (n > most)
            most = n;
    }
    return most;
}

/* Adds ||o - e||^2, ||e||^2 and max |o - e| over n outputs (in double). */
static void shadow_compare(const float *o, const float *e, size_t n, double *err_sq, double *ref_sq,
                           double *max_abs)
{
    for (size_t i = 0; i < n; i++) {
        double diff = (double)o[i] - (double)e[i];
        *err_sq += diff * diff;
        *ref_sq += (double)e[i] * e[i];
        if (fabs(diff) > *max_abs)
            *max_abs = fabs(diff);
    }
}

/* Relative L2 error ||o - e|| / ||e||; 0 when both are zero. */
static double relative_error(double err_sq, double ref_sq)
{
    return ref_sq > 0 ? sqrt(err_sq / ref_sq) : (err_sq > 0 ? INFINITY : 0.0);
}

/* One shadow observation per request that had queries: its outputs, all
 * entries together, against the exact f32 attention over every token. */
static void shadow_account(kvd_api *api, api_session *s, const kvd_step_request *req, const step_plan *p)
{
    double err = 0, ref = 0, max_abs = 0;
    bool any = false;
    for (size_t i = 0; i < req->n_layers; i++) {
        if (!req->layers[i].m_q)
            continue;
        any = true;
        err += p->err_sq[i];
        ref += p->ref_sq[i];
        if (p->max_abs[i] > max_abs)
            max_abs = p->max_abs[i];
    }
    if (!any)
        return;
    double rel = relative_error(err, ref);
    api_shadow_stats *st = &s->shadow_stats;
    st->steps++;
    st->last_relative_error = rel;
    st->sum_relative_error += rel;
    if (max_abs > st->max_abs_error)
        st->max_abs_error = max_abs;
    kvd_histogram_observe_value(&api->stats.shadow_relative_error, kvd_shadow_error_bounds, rel);
}

/* Two-cache after an eviction: the kept tokens' slots were reordered (a
 * victim's hole takes the last slot, in k1/v1 and k2/v2 alike), so the pair
 * rows are rebuilt in place for the new slot order and the rest is cut:
 * O(n^2 d) writes, the order of one two-cache query. */
static void rebuild_pairs(kvd_api *api, kvd_session *sess, const kvd_step_layer *st, step_plan *p)
{
    const kvd_session_config *cfg = &sess->config;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        const size_t idx = (size_t)st->layer * cfg->kv_heads + g;
        const size_t n = sess->streams[idx].n_tokens;
        kvd_stream *pr = &sess->pairs[idx];
        if (pr->n_tokens == n * n)
            continue; /* this head evicted nothing */
        const kvd_tensor_view a = tensor_view(&sess->streams[idx]), b = tensor_view(&sess->tensor_b[idx]);
        if (is_kivi(cfg)) {
            /* KIVI rows live in key blocks and a residual: rebuilt by
             * appending anew, into pages the plan reserved for it (settled
             * with the rest at the end of the request). */
            kvd_stream_clear(pr, api->pool);
            for (size_t t = 0; t < n; t++) {
                const size_t rows = kvd_tensor_pair_rows_added(t), need = kvd_stream_pages_needed(pr, rows);
                kvd_tensor_pair_rows_view(&a, &b, t, p->pair_k, p->pair_v);
                kvd_stream_append(pr, api->pool, rows, p->pair_k, p->pair_v, cfg->head_dim, p->pages + p->cursor);
                p->cursor += need;
            }
            continue;
        }
        for (size_t t = 0; t < n; t++) {
            kvd_tensor_pair_rows_view(&a, &b, t, p->pair_k, p->pair_v);
            kvd_stream_overwrite(pr, t * t, kvd_tensor_pair_rows_added(t), p->pair_k, p->pair_v, cfg->head_dim);
        }
        kvd_stream_truncate(pr, api->pool, n * n);
    }
}

/* A tensor window keeps only the last W tokens of each stream: older ones
 * can never be seen again, so they leave at the end of the entry, like an
 * eviction (the four-cache's O(W * d) memory). Returns tokens dropped per
 * stream. */
static size_t apply_window(kvd_api *api, kvd_session *sess, const kvd_step_layer *st)
{
    const kvd_session_config *cfg = &sess->config;
    size_t dropped = 0;
    for (uint32_t g = 0; cfg->window && g < cfg->kv_heads; g++) {
        size_t idx = (size_t)st->layer * cfg->kv_heads + g;
        kvd_stream *a = &sess->streams[idx];
        if (a->n_tokens <= cfg->window)
            continue;
        dropped = a->n_tokens - cfg->window;
        kvd_stream_drop_oldest(a, api->pool, dropped);
        kvd_stream_drop_oldest(&sess->tensor_b[idx], api->pool, dropped);
    }
    return dropped;
}

static cJSON *layer_result(const kvd_session *sess, const kvd_step_layer *st, const float *o,
                           size_t tokens, size_t evicted, kvd_encoding enc)
{
    const kvd_session_config *cfg = &sess->config;
    cJSON *r = cJSON_CreateObject();
    cJSON *ot = kvd_tensor_encode(o, st->m_q * cfg->heads * cfg->head_dim, enc);
    if (!r || !ot) {
        cJSON_Delete(r);
        cJSON_Delete(ot);
        return NULL;
    }
    cJSON_AddItemToObject(r, "o", ot);
    cJSON_AddNumberToObject(r, "tokens", (double)tokens);
    cJSON_AddNumberToObject(r, "evicted", (double)evicted);
    return r;
}

/* "shadow": {"relative_error", "max_abs_error"} of entry i's outputs. */
static void add_shadow(cJSON *r, const step_plan *p, size_t i)
{
    cJSON *sh = cJSON_AddObjectToObject(r, "shadow");
    if (!sh)
        return;
    cJSON_AddNumberToObject(sh, "relative_error", relative_error(p->err_sq[i], p->ref_sq[i]));
    cJSON_AddNumberToObject(sh, "max_abs_error", p->max_abs[i]);
}

/* Parses the body unless a retry (after reclaiming pages) already did. */
static int parse_once(kvd_api *api, api_job *job, const kvd_session *sess)
{
    if (job->parsed)
        return 0;
    kvd_api_error err;
    cJSON *body = kvd_json_parse_object(job->body, job->body_len, &err);
    if (!body) {
        kvd_response_error(&job->resp, &err);
        return -1;
    }
    job->multi = cJSON_GetObjectItemCaseSensitive(body, "steps") != NULL;
    int rc = kvd_step_request_parse(body, &sess->config, &api->limits, &job->req, &err);
    cJSON_Delete(body);
    free(job->body); /* may be 64 MiB: not kept while attention runs */
    job->body = NULL;
    if (rc != 0) {
        kvd_response_error(&job->resp, &err);
        return -1;
    }
    job->parsed = true;
    return 0;
}

void kvd_api_step_run(kvd_api *api, api_job *job)
{
    double t0 = kvd_clock_mono();
    kvd_session *sess = job->session->cache;
    job->pool_full = false;
    if (parse_once(api, job, sess) != 0)
        return;
    kvd_step_request *req = &job->req;
    step_plan plan;
    if (plan_step(api, job, sess, req, &plan) != 0) {
        plan_free(&plan, req->n_layers);
        return;
    }

    /* From here on nothing can fail: the step is applied whole. */
    kvd_session *shadow = job->session->shadow;
    uint64_t tokens_in = 0;
    for (size_t i = 0; i < req->n_layers; i++) {
        const kvd_step_layer *st = &req->layers[i];
        size_t n_before = kvd_session_stream(sess, st->layer, 0)->n_tokens;
        if (st->m)
            apply_append(api, sess, st, &plan);
        if (st->m && sess->tensor_b)
            apply_tensor_append(api, sess, st, &plan);
        if (st->m_q && sess->tensor_b)
            apply_tensor_attention(sess, st, n_before, plan.outputs[i], &plan);
        else if (st->m_q)
            apply_attention(sess, st, n_before, plan.outputs[i], &plan, plan.weights != NULL);
        if (sess->tensor_b && sess->config.window)
            plan.evicted[i] = apply_window(api, sess, st);
        else
            plan.evicted[i] = apply_eviction(api, sess, st, &plan);
        if (sess->pairs && plan.evicted[i])
            rebuild_pairs(api, sess, st, &plan);
        plan.tokens_after[i] = kvd_session_stream(sess, st->layer, 0)->n_tokens;
        tokens_in += st->m;
        if (shadow) {
            size_t shadow_before = kvd_session_stream(shadow, st->layer, 0)->n_tokens;
            if (st->m)
                apply_append(api, shadow, st, &plan);
            if (st->m_q) {
                apply_attention(shadow, st, shadow_before, plan.exact[i], &plan, false);
                shadow_compare(plan.outputs[i], plan.exact[i], st->m_q * (size_t)sess->config.heads *
                               sess->config.head_dim, &plan.err_sq[i], &plan.ref_sq[i], &plan.max_abs[i]);
            }
        }
    }
    /* KIVI: whole key groups past the residual window are quantized now,
     * once per request (the page plan counted exactly this). */
    if (is_kivi(&sess->config))
        for (size_t i = 0; i < sess->n_streams; i++) {
            kvd_stream *parts[3] = {&sess->streams[i], sess->tensor_b ? &sess->tensor_b[i] : NULL,
                                    sess->pairs ? &sess->pairs[i] : NULL};
            for (int k = 0; k < 3; k++) {
                size_t used = 0;
                if (!parts[k])
                    continue;
                kvd_stream_settle(parts[k], api->pool, plan.pages + plan.cursor, plan.total_pages - plan.cursor,
                                  &used);
                plan.cursor += used;
            }
        }
    assert(plan.cursor <= plan.total_pages && "stream_page_bound undercounted");
    if (shadow)
        shadow_account(api, job->session, req, &plan);
    if (plan.cursor < plan.total_pages) /* the bound was not reached: give back the rest */
        kvd_pool_release(api->pool, plan.pages + plan.cursor, plan.total_pages - plan.cursor);
    job->applied = true;
    job->seconds = kvd_clock_mono() - t0;

    /* Render. A failure here leaves the step applied and says so. */
    cJSON *out = NULL;
    if (job->multi) {
        out = cJSON_CreateObject();
        cJSON *arr = out ? cJSON_AddArrayToObject(out, "steps") : NULL;
        for (size_t i = 0; arr && i < req->n_layers; i++) {
            cJSON *r = layer_result(sess, &req->layers[i], plan.outputs[i], plan.tokens_after[i],
                                    plan.evicted[i], req->encoding);
            if (r && shadow && req->layers[i].m_q)
                add_shadow(r, &plan, i);
            if (!r) {
                cJSON_Delete(out);
                out = NULL;
                break;
            }
            cJSON_AddItemToArray(arr, r);
        }
    } else {
        out = layer_result(sess, &req->layers[0], plan.outputs[0], plan.tokens_after[0],
                           plan.evicted[0], req->encoding);
        if (out && shadow && req->layers[0].m_q)
            add_shadow(out, &plan, 0);
    }
    char *json = out ? cJSON_PrintUnformatted(out) : NULL;
    cJSON_Delete(out);
    if (json)
        kvd_response_json(&job->resp, 200, json);
    else
        fail(job, 500, KVD_ERR_INTERNAL, "out of memory rendering the output; the step was applied");

    api_session *s = job->session;
    atomic_fetch_add_explicit(&s->steps, 1, memory_order_relaxed);
    atomic_store(&s->last_used_at, kvd_clock_unix());
    atomic_store(&s->last_step_seconds, job->seconds);
    kvd_api_session_summarize(s);
    atomic_fetch_add_explicit(&api->stats.steps, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&api->stats.step_tokens, tokens_in, memory_order_relaxed);
    kvd_histogram_observe(&api->stats.step_seconds, job->seconds);
    plan_free(&plan, req->n_layers);
}
