/* cache/plan.c — the step engine's plan (cache/plan.h): page bounds per
 * stream over a request's entries, beside the stream's own page arithmetic
 * (kvd_stream_pages_needed), and every allocation a step makes, done before
 * the session is touched. The bounds are exact for ordinary decode and
 * worst cases (never under) when eviction, windows or forks are involved;
 * the step gives back what it did not use. */
#include "cache/plan.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention/prefill.h"
#include "attention/tensor.h"
#include "cache/evict.h"
#include "cache/stream.h"

static size_t div_up(size_t a, size_t b)
{
    return a / b + (a % b != 0);
}

/* a + b, SIZE_MAX if that overflows (a count past the pool is refused anyway). */
static size_t sat_add(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

static bool is_kivi(const kvd_session_config *cfg)
{
    return cfg->cache.dtype == KVD_DTYPE_KIVI2 || cfg->cache.dtype == KVD_DTYPE_KIVI4;
}

/* Tokens a stream keeps after each entry: the tensor window, else the
 * eviction budget (0 = no limit). */
static uint32_t keep_limit(const kvd_session_config *cfg)
{
    if (cfg->cache.eviction == KVD_EVICT_SUBGEN) /* the protected window; the rest is sketched */
        return cfg->cache.sink + cfg->cache.recent;
    return cfg->window ? cfg->window : cfg->cache.budget;
}

/* Most pages stream `s` can take while the entries for `layer` run: every
 * page boundary crossed by an append, assuming each eviction frees as much
 * as the budget allows (more freed now means more to take again later, so
 * this is the worst case), plus copies of pages shared with a fork that a
 * write may hit. Exact for ordinary decode. */
static size_t stream_page_bound(const kvd_stream *s, const kvd_step_entry *e, size_t n_entries, uint32_t layer,
                                uint32_t budget)
{
    size_t n = s->n_tokens, pages = s->n_pages, taken = 0, appended = 0;
    const size_t spp = s->slots_per_page;
    for (size_t i = 0; i < n_entries; i++) {
        if (e[i].layer != layer)
            continue;
        size_t want = div_up(n + e[i].m, spp);
        if (want > pages) {
            taken += want - pages;
            pages = want;
        }
        n += e[i].m;
        appended += e[i].m;
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

/* KIVI: pages for the entries of `layer`. One entry, or no eviction:
 * exactly kvd_stream_pages_needed for the total. Several entries with
 * eviction: each entry may take again what an earlier one's eviction gave
 * back, so each is bounded on its own — its residual rows (m / spp + 1
 * pages) and the quantized pages a settle of everything could need. */
static size_t kivi_page_bound(const kvd_stream *s, const kvd_step_entry *e, size_t n_entries, uint32_t layer,
                              const kvd_session_config *cfg)
{
    size_t entries = 0, total = 0;
    for (size_t i = 0; i < n_entries; i++)
        if (e[i].layer == layer) {
            entries++;
            total += e[i].m;
        }
    if (entries <= 1 || cfg->cache.eviction == KVD_EVICT_NONE)
        return kvd_stream_pages_needed(s, total);
    const size_t spp_res = s->residual->slots_per_page, spp_q = s->slots_per_page;
    const size_t settle_pages =
        div_up(s->residual->n_tokens + cfg->cache.residual + cfg->cache.group + total, spp_q) + 1;
    size_t bound = 0;
    for (size_t i = 0; i < n_entries; i++)
        if (e[i].layer == layer)
            bound += div_up(e[i].m, spp_res) + 1 + settle_pages;
    return bound;
}

/* Pages the two-cache's pair rows can take over the entries of `layer`
 * when the stream starts at n tokens: rows grow to (n + m)^2 per entry and,
 * with a limit, shrink back to limit^2 after it (the rows are rebuilt in
 * place), so each entry may take again what an earlier one gave back. */
static size_t pair_page_bound(const kvd_stream *pr, const kvd_step_entry *e, size_t n_entries, uint32_t layer,
                              size_t n, uint32_t limit)
{
    const size_t spp = pr->slots_per_page;
    size_t pages = pr->n_pages, taken = 0;
    for (size_t i = 0; i < n_entries; i++) {
        if (e[i].layer != layer)
            continue;
        n += e[i].m;
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
static size_t kivi_pair_page_bound(const kvd_stream *pr, const kvd_step_entry *e, size_t n_entries,
                                   uint32_t layer, size_t n, const kvd_session_config *cfg)
{
    size_t m = 0, entries = 0;
    for (size_t i = 0; i < n_entries; i++)
        if (e[i].layer == layer) {
            m += e[i].m;
            entries++;
        }
    size_t need = kvd_stream_pages_needed(pr, (n + m) * (n + m) - n * n);
    if (cfg->cache.eviction != KVD_EVICT_NONE && cfg->cache.budget) {
        const size_t rows = (size_t)cfg->cache.budget * cfg->cache.budget;
        const size_t per_rebuild =
            div_up(rows, pr->residual->slots_per_page) + 1 + div_up(rows, pr->slots_per_page) + 1;
        need += entries * (per_rebuild + 2); /* + page rounding of each entry's growth */
    }
    return need;
}

/* Pages one stream (k/v, or a tensor session's k2/v2) can take. */
static size_t token_stream_bound(const kvd_stream *s, const kvd_step_entry *e, size_t n, uint32_t layer,
                                 const kvd_session_config *cfg)
{
    return is_kivi(cfg) ? kivi_page_bound(s, e, n, layer, cfg) : stream_page_bound(s, e, n, layer, keep_limit(cfg));
}

/* Tensor sessions: pages for k2/v2 (one slot a token, like k1/v1) and for
 * the two-cache's pair rows, plus the scratch that holds one token's 2t+1
 * new pair rows. Adds to *pages (saturating); sets *too_big when the pair
 * rows of one stream alone exceed the pool (refused before a block table
 * grows for them, with their count still added so the answer can say it). */
static int plan_tensor(kvd__step_plan *p, kvd_session *sess, size_t pool_pages, const kvd_step_entry *e,
                       size_t n_entries, size_t *pages, bool *too_big)
{
    const kvd_session_config *cfg = &sess->config;
    size_t max_tokens = 0;
    for (size_t i = 0; i < sess->n_streams; i++) {
        const size_t m = p->new_tokens[i];
        if (!m)
            continue;
        kvd_stream *b = &sess->tensor_b[i];
        const uint32_t layer = (uint32_t)(i / cfg->kv_heads);
        /* k2/v2 grow and (with a window or a policy) shrink exactly like k1/v1. */
        size_t need = token_stream_bound(b, e, n_entries, layer, cfg);
        if (kvd_stream_reserve_table(b, need) != 0)
            return KVD_STEP_NOMEM;
        *pages += need;
        const size_t n = sess->streams[i].n_tokens;
        if (n + m > max_tokens)
            max_tokens = n + m;
        if (!sess->pairs)
            continue;
        /* n + m <= tokens a pool could ever hold, so the square stays far
         * from overflow. */
        kvd_stream *pr = &sess->pairs[i];
        need = is_kivi(cfg) ? kivi_pair_page_bound(pr, e, n_entries, layer, n, cfg)
                            : pair_page_bound(pr, e, n_entries, layer, n, keep_limit(cfg)) +
                                  (pr->n_shared != 0); /* a shared tail copied by the first append */
        if (need > pool_pages || *too_big) {
            *too_big = true; /* no table grows now; the rest is only counted */
            *pages = sat_add(*pages, need);
            continue;
        }
        if (kvd_stream_reserve_table(pr, need) != 0)
            return KVD_STEP_NOMEM;
        *pages += need;
    }
    if (*too_big)
        return KVD_STEP_OK;
    if (cfg->cache.eviction == KVD_EVICT_L2NORM) {
        size_t max_m = 1;
        for (size_t i = 0; i < n_entries; i++)
            max_m = e[i].m > max_m ? e[i].m : max_m;
        if (!(p->norm_factor = malloc(max_m * sizeof *p->norm_factor)))
            return KVD_STEP_NOMEM;
    }
    if (sess->pairs && max_tokens) {
        const size_t d = cfg->head_dim;
        p->pair_k = malloc(2 * max_tokens * d * sizeof(float));
        p->pair_v = malloc(2 * max_tokens * d * sizeof(float));
        if (!p->pair_k || !p->pair_v)
            return KVD_STEP_NOMEM;
    }
    return KVD_STEP_OK;
}

static int victim_by_position(const void *a, const void *b)
{
    const int64_t x = ((const kvd__subgen_victim *)a)->position, y = ((const kvd__subgen_victim *)b)->position;
    return (x > y) - (x < y);
}

/* The clusters one sketch's step will assign, by a dry run: the held
 * tokens that leave the window (victims, by position), then the request's
 * new tokens of `layer` at positions [from, leave_below), in the order the
 * step sketches them (position order, however the entries split them),
 * each matched against the sketch's centres and then the centres earlier
 * tokens of the request would open (kvd_subgen_assign, the choice the
 * insert makes: with the cap reached, "joins the nearest" among both).
 * Fills assign[] (the step reuses it: no second scan) and returns the
 * clusters the request opens (never past the cap). keys: tensor_b's slots and k2 for the
 * k2 sketch. fresh: [tokens] scratch. */
static size_t dry_run(const kvd_subgen *g, const kvd_stream *held, const kvd__subgen_victim *victims,
                      size_t n_victims, const kvd_step_entry *e, size_t n_entries, uint32_t layer, size_t key_off,
                      size_t row, bool k2, uint64_t first_new, uint64_t from, uint64_t leave_below, size_t *assign,
                      const float **fresh)
{
    const kvd_kv_pages kv = kvd_stream_view(held);
    size_t n = 0, opened = 0;
    uint64_t pos = first_new;
    for (size_t i = 0; i <= n_entries; i++) {
        size_t m = i == 0 ? n_victims : 0; /* "entry" 0 is the held victims */
        if (i > 0 && e[i - 1].layer == layer)
            m = e[i - 1].m;
        for (size_t t = 0; t < m; t++) {
            const float *k;
            if (i == 0) {
                k = kvd_kv_key(&kv, victims[t].slot);
            } else {
                const uint64_t at = pos++;
                if (at < from || at >= leave_below)
                    continue; /* stays protected (a sink token, or recent at the end) */
                k = (k2 ? e[i - 1].k2 : e[i - 1].k) + t * row + key_off;
            }
            const size_t c = kvd_subgen_assign(g, k, fresh, opened);
            if (c == g->n_clusters + opened)
                fresh[opened++] = k;
            assign[n++] = c;
        }
    }
    return opened;
}

/* subgen: the tokens each stream sketches in this request are exactly those
 * that leave its window (it holds only protected tokens between steps):
 * n_tokens + new - the protected ones after. A dry run of their cluster
 * assignment (dry_run) counts the clusters they open exactly, in each of
 * its sketches (SubGen4Cache: k1 and k2): a centre, a count and t
 * reservoir rows each, and the s samples with the first token. Grows the
 * sketch tables, adds the pages to *pages, keeps the assignments for the
 * step; the victim, numerator and q (.) k scratch. */
static int plan_subgen(kvd__step_plan *p, kvd_session *sess, const kvd_step_entry *e, size_t n_entries,
                       size_t pool_pages, size_t *pages)
{
    const kvd_session_config *cfg = &sess->config;
    size_t max_tokens = 1;
    for (size_t i = 0; i < sess->n_streams; i++) {
        const size_t items = sess->streams[i].n_tokens + p->new_tokens[i];
        if (items > max_tokens)
            max_tokens = items;
    }
    p->victims = malloc(max_tokens * sizeof *p->victims);
    p->sg_num = malloc((size_t)cfg->head_dim * sizeof *p->sg_num);
    p->sg_qk = malloc((size_t)cfg->head_dim * sizeof *p->sg_qk);
    p->sg_assign = calloc(2 * sess->n_streams, sizeof *p->sg_assign);
    p->sg_at = calloc(2 * sess->n_streams, sizeof *p->sg_at);
    p->sg_n = p->sg_assign ? 2 * sess->n_streams : 0;
    const float **fresh = malloc(max_tokens * sizeof *fresh);
    int rc = p->victims && p->sg_num && p->sg_qk && p->sg_assign && p->sg_at && fresh ? KVD_STEP_OK : KVD_STEP_NOMEM;
    for (size_t i = 0; rc == KVD_STEP_OK && i < sess->n_streams; i++) {
        if (!p->new_tokens[i])
            continue; /* no append: the stream is already within its window */
        const kvd_stream *st = &sess->streams[i];
        const uint64_t first_new = st->appended, after = first_new + p->new_tokens[i];
        const uint64_t leave_below = after > cfg->cache.recent ? after - cfg->cache.recent : 0;
        const uint64_t from = first_new > cfg->cache.sink ? first_new : cfg->cache.sink;
        size_t nv = 0;
        for (size_t j = 0; j < st->n_tokens; j++) {
            const int64_t pos = kvd_stream_meta(st, j)->position;
            if ((uint64_t)pos >= cfg->cache.sink && (uint64_t)pos < leave_below)
                p->victims[nv++] = (kvd__subgen_victim){pos, j};
        }
        const size_t leaving = nv + (size_t)(leave_below > from ? leave_below - from : 0);
        if (!leaving)
            continue;
        qsort(p->victims, nv, sizeof *p->victims, victim_by_position);
        const uint32_t layer = (uint32_t)(i / cfg->kv_heads);
        const size_t key_off = (i % cfg->kv_heads) * (size_t)cfg->head_dim;
        const size_t row = (size_t)cfg->kv_heads * cfg->head_dim;
        kvd_subgen *sk[2] = {&sess->subgen[i], sess->subgen_b ? &sess->subgen_b[i] : NULL};
        for (int b = 0; b < 2 && sk[b]; b++) {
            size_t *assign = p->sg_assign[2 * i + b] = malloc(leaving * sizeof *assign);
            if (!assign) {
                rc = KVD_STEP_NOMEM;
                break;
            }
            const size_t opened = dry_run(sk[b], b ? &sess->tensor_b[i] : st, p->victims, nv, e, n_entries, layer,
                                          key_off, row, b == 1, first_new, from, leave_below, assign, fresh);
            *pages = sat_add(*pages, kvd_subgen_pages_bound(sk[b], opened));
            if (*pages > pool_pages)
                continue; /* refused as too big by the caller: no table grows for it */
            if (kvd_subgen_reserve(sk[b], opened) != 0) {
                rc = KVD_STEP_NOMEM;
                break;
            }
        }
    }
    free(fresh);
    return rc;
}

/* A four-cache session of a dtype the SIMD kernels cannot read (anything
 * but f32; not a two-cache, not subgen, head_dim within the kernels' tiles)
 * attends over f32 copies of its rows, made per kv head just before that
 * head attends (cache/step.c fill_rows). The copy is 4 n d floats per kv
 * head (k1, v1, k2, v2; n = the most tokens a stream of the request holds
 * when it attends) and grows with n without any other bound, so it is not
 * heap scratch: it takes pool pages, planned and reserved here with the
 * step's other pages. It counts against --memory, a pool too full for it is
 * KVD_STEP_POOL_FULL (503 with Retry-After, or --on-full evict's reclaim)
 * and a copy that could never fit is KVD_STEP_TOO_BIG (413), both before
 * the session changes. row_heads kv heads hold copies at once: 1 when the
 * step runs on one thread, the executor's width when it is split (so every
 * worker has a head to attend). A page holds spp tokens of one view (keys,
 * then values at v_offset = spp d floats, a multiple of 64 bytes); a page
 * too small for one token (head_dim 256 with 1 KiB pages) plans no copy and
 * the scalar view kernel reads the streams as they are. Returns the pages
 * in *pages. */
static int plan_tensor_rows(kvd__step_plan *p, const kvd_session *sess, const kvd_step_entry *e, size_t n,
                            size_t row_heads, size_t page_bytes, size_t *pages)
{
    const kvd_session_config *cfg = &sess->config;
    const size_t d = cfg->head_dim;
    bool attends = false;
    *pages = 0;
    for (size_t i = 0; i < n; i++)
        attends = attends || e[i].m_q > 0;
    if (!attends || sess->pairs || sess->subgen || cfg->cache.dtype == KVD_DTYPE_F32
        || cfg->head_dim > KVD_TENSOR_MAX_FAST_DIM)
        return KVD_STEP_OK;
    size_t spp = page_bytes / (2 * d * sizeof(float));
    while (spp && spp * d % 16)
        spp--;
    if (!spp)
        return KVD_STEP_OK;
    size_t most = 1;
    for (size_t i = 0; i < sess->n_streams; i++) {
        const size_t t = sess->streams[i].n_tokens + p->new_tokens[i];
        most = t > most ? t : most;
    }
    const size_t heads = row_heads < 1 ? 1 : row_heads > cfg->kv_heads ? cfg->kv_heads : row_heads;
    const size_t per_view = most / spp + (most % spp != 0);
    if (per_view > SIZE_MAX / 2 / heads / sizeof(void *))
        return KVD_STEP_NOMEM;
    p->row_tables = calloc(2 * heads * per_view, sizeof *p->row_tables);
    p->row_views = calloc(2 * heads, sizeof *p->row_views);
    if (!p->row_tables || !p->row_views)
        return KVD_STEP_NOMEM;
    for (size_t v = 0; v < 2 * heads; v++)
        p->row_views[v] = (kvd_kv_pages){.pages = p->row_tables + v * per_view, .slots_per_page = spp,
                                         .head_dim = d, .v_offset = spp * d * sizeof(float)};
    p->row_heads = heads;
    p->rows_cap = per_view * spp;
    p->row_pages = *pages = 2 * heads * per_view;
    return KVD_STEP_OK;
}

/* The exact f32 shadow copy: its outputs and the pages its tokens take. */
static int plan_shadow(kvd__step_plan *p, kvd_session *shadow, const kvd_step_entry *e, size_t n_entries,
                       size_t q_row, size_t *pages)
{
    if (!(p->exact = calloc(n_entries, sizeof *p->exact)))
        return KVD_STEP_NOMEM;
    for (size_t i = 0; i < n_entries; i++)
        if (e[i].m_q && !(p->exact[i] = malloc(e[i].m_q * q_row * sizeof(float))))
            return KVD_STEP_NOMEM;
    for (size_t i = 0; i < shadow->n_streams; i++) {
        if (!p->new_tokens[i])
            continue;
        size_t need = kvd_stream_pages_needed(&shadow->streams[i], p->new_tokens[i]);
        if (kvd_stream_reserve_table(&shadow->streams[i], need) != 0)
            return KVD_STEP_NOMEM;
        *pages += need;
        if (!shadow->tensor_b)
            continue;
        /* a tensor session's copy is a four-cache: k2/v2 grow like k1/v1 */
        need = kvd_stream_pages_needed(&shadow->tensor_b[i], p->new_tokens[i]);
        if (kvd_stream_reserve_table(&shadow->tensor_b[i], need) != 0)
            return KVD_STEP_NOMEM;
        *pages += need;
    }
    return KVD_STEP_OK;
}

int kvd__step_plan_make(kvd__step_plan *p, kvd_session *sess, kvd_session *shadow, kvd_pool *pool,
                        const kvd_step_entry *e, size_t n, size_t row_heads, size_t *need_pages)
{
    const kvd_session_config *cfg = &sess->config;
    const size_t q_row = (size_t)cfg->heads * cfg->head_dim;
    memset(p, 0, sizeof *p);
    *need_pages = 0;
    p->new_tokens = calloc(sess->n_streams, sizeof *p->new_tokens);
    p->outputs = calloc(n ? n : 1, sizeof *p->outputs);
    if (!p->new_tokens || !p->outputs)
        return KVD_STEP_NOMEM;
    for (size_t i = 0; i < n; i++) {
        for (uint32_t g = 0; g < cfg->kv_heads; g++)
            p->new_tokens[(size_t)e[i].layer * cfg->kv_heads + g] += e[i].m;
        if (e[i].m_q && !(p->outputs[i] = malloc(e[i].m_q * q_row * sizeof(float))))
            return KVD_STEP_NOMEM;
    }
    size_t total = 0, max_tokens = 0;
    for (size_t i = 0; i < sess->n_streams; i++) {
        kvd_stream *s = &sess->streams[i];
        if (!p->new_tokens[i])
            continue;
        /* KIVI streams settle once, after the whole request: their own count
         * for the request's total is exact, unless eviction between entries
         * of the same layer frees pages that a later entry takes again. */
        size_t need = token_stream_bound(s, e, n, (uint32_t)(i / cfg->kv_heads), cfg);
        if (kvd_stream_reserve_table(s, need) != 0 ||
            (s->evict && kvd_stream_evict_reserve(s, p->new_tokens[i]) != 0))
            return KVD_STEP_NOMEM;
        /* pages still shared with a fork that the step rewrites in place
         * are copied first (kvd__session_unshare) */
        total += need + kvd__session_unshare_bound(sess, i);
        if (s->n_tokens + p->new_tokens[i] > max_tokens)
            max_tokens = s->n_tokens + p->new_tokens[i];
    }
    if (cfg->cache.eviction == KVD_EVICT_H2O) {
        for (size_t i = 0; i < sess->n_streams; i++)
            if (sess->streams[i].n_tokens > max_tokens)
                max_tokens = sess->streams[i].n_tokens; /* pure queries score too */
        size_t max_q = 1; /* scratch: an entry's lse when it did not ask for it */
        for (size_t i = 0; i < n; i++)
            max_q = e[i].m_q > max_q ? e[i].m_q : max_q;
        p->weights = malloc((max_tokens ? max_tokens : 1) * sizeof(float));
        p->scratch = malloc(max_q * cfg->heads * sizeof(float));
        if (!p->weights || !p->scratch)
            return KVD_STEP_NOMEM;
        /* the decode path's scores (cache/step.c attend_standard_piece):
         * heads x visible floats for a standard entry of few queries */
        bool decode = false;
        for (size_t i = 0; i < n; i++)
            decode |= e[i].m_q > 0 && e[i].m_q < KVD_PREFILL_MIN_QUERIES;
        if (decode && !sess->tensor_b) {
            const size_t group = cfg->heads / cfg->kv_heads;
            p->scores = malloc(group * (max_tokens ? max_tokens : 1) * sizeof(float));
            if (!p->scores)
                return KVD_STEP_NOMEM;
        }
    }
    const size_t pool_pages = kvd_pool_pages_total(pool);
    if (sess->tensor_b) {
        size_t tensor_pages = 0;
        bool too_big = false;
        int rc = plan_tensor(p, sess, pool_pages, e, n, &tensor_pages, &too_big);
        if (rc != KVD_STEP_OK)
            return rc;
        total = sat_add(total, tensor_pages);
        if (too_big) {
            *need_pages = total;
            return KVD_STEP_TOO_BIG;
        }
    }
    size_t row_pages = 0;
    if (sess->tensor_b
        && plan_tensor_rows(p, sess, e, n, row_heads, kvd_pool_page_bytes(pool), &row_pages) != KVD_STEP_OK)
        return KVD_STEP_NOMEM;
    if (sess->subgen) {
        int rc = plan_subgen(p, sess, e, n, pool_pages, &total);
        if (rc != KVD_STEP_OK)
            return rc;
    }
    if (shadow) {
        size_t shadow_pages = 0;
        int rc = plan_shadow(p, shadow, e, n, q_row, &shadow_pages);
        if (rc != KVD_STEP_OK)
            return rc;
        total = sat_add(total, shadow_pages);
    }
    /* the tensor row copy: after every page the cursor hands out */
    const size_t placed = total;
    total = sat_add(total, row_pages);
    if (!total)
        return KVD_STEP_OK;
    if (total > pool_pages) {
        /* More than the whole pool can never be granted: refused without
         * allocating a table for it. (Pages the session already holds are
         * not counted against it: such a step gets a 503 and may succeed
         * once the session is smaller.) */
        *need_pages = total;
        return KVD_STEP_TOO_BIG;
    }
    if (!(p->pages = malloc(total * sizeof *p->pages)))
        return KVD_STEP_NOMEM;
    if (kvd_pool_alloc(pool, total, p->pages) != 0) {
        *need_pages = total;
        return KVD_STEP_POOL_FULL;
    }
    p->total_pages = placed;
    const unsigned char **table = p->row_tables;
    for (size_t i = 0; i < row_pages; i++)
        table[i] = p->pages[placed + i];
    return KVD_STEP_OK;
}

void kvd__step_plan_release(kvd__step_plan *p, kvd_pool *pool)
{
    if (p->cursor < p->total_pages)
        kvd_pool_release(pool, p->pages + p->cursor, p->total_pages - p->cursor);
    if (p->row_pages && p->pages)
        kvd_pool_release(pool, p->pages + p->total_pages, p->row_pages);
    p->cursor = p->total_pages;
    p->row_pages = 0;
}

void kvd__step_plan_free(kvd__step_plan *p, size_t n_entries)
{
    free(p->new_tokens);
    free(p->pages);
    if (p->outputs)
        for (size_t i = 0; i < n_entries; i++)
            free(p->outputs[i]);
    free(p->outputs);
    free(p->weights);
    free(p->scratch);
    free(p->scores);
    if (p->exact)
        for (size_t i = 0; i < n_entries; i++)
            free(p->exact[i]);
    free(p->exact);
    free(p->pair_k);
    free(p->pair_v);
    free(p->norm_factor);
    free(p->row_tables);
    free(p->row_views);
    free(p->victims);
    if (p->sg_assign)
        for (size_t i = 0; i < p->sg_n; i++)
            free(p->sg_assign[i]);
    free(p->sg_assign);
    free(p->sg_at);
    free(p->sg_num);
    free(p->sg_qk);
    memset(p, 0, sizeof *p);
}
