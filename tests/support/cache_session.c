/* tests/support/cache_session.c — drives a kvd session with a cache policy
 * and its evicting reference side by side. */
#define _GNU_SOURCE
#include "tests/support/cache_session.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/kvd_client.h"

/* Floor for the output scale (as in checked_session.c): outputs of a
 * session whose values are all tiny are still compared at this scale. */
#define MIN_OUTPUT_SCALE 1e-3
/* Enough of a body to show what went wrong in a failure message. */
#define BODY_SNIPPET 400
/* Page layout constants from cache/stream.h. */
#define PAGE_BLOCK_ALIGN 64
#define SLOT_META_BYTES 8

const char *cache_policy_name(ref_evict_policy p)
{
    switch (p) {
    case REF_EVICT_RECENCY: return "recency";
    case REF_EVICT_L2NORM: return "l2norm";
    case REF_EVICT_H2O: return "h2o";
    case REF_EVICT_NONE: break;
    }
    return "none";
}

static void init_common(cache_session *cs, int port, uint64_t seed, double tol_rel, double min_margin)
{
    const ref_cache_config *cfg = ref_cache_cfg(cs->ref);
    cs->port = port;
    cs->kv_row = cfg->kv_heads * cfg->head_dim;
    cs->q_row = cfg->heads * cfg->head_dim;
    cs->tol_rel = tol_rel;
    cs->min_margin = min_margin;
    cs->encoding = "b64";
    rng_seed(&cs->r, seed);
}

void cache_session_create(cache_session *cs, int port, const ref_cache_config *cfg, const char *extra_json,
                          uint64_t seed, double tol_rel, double min_margin)
{
    memset(cs, 0, sizeof *cs);
    cs->ref = ref_cache_new(cfg);
    init_common(cs, port, seed, tol_rel, min_margin);
    sbuf b;
    sb_init(&b);
    sb_printf(&b, "{\"layers\":%zu,\"heads\":%zu,\"kv_heads\":%zu,\"head_dim\":%zu", cfg->layers, cfg->heads,
              cfg->kv_heads, cfg->head_dim);
    if (cfg->scale > 0)
        sb_printf(&b, ",\"scale\":%.9g", cfg->scale);
    if (cfg->policy != REF_EVICT_NONE)
        sb_printf(&b, ",\"cache\":{\"eviction\":\"%s\",\"budget\":%zu,\"sink\":%zu,\"recent\":%zu}",
                  cache_policy_name(cfg->policy), cfg->budget, cfg->sink, cfg->recent);
    if (extra_json)
        sb_printf(&b, ",%s", extra_json);
    sb_puts(&b, "}");
    cJSON *resp = NULL;
    cs->id = kvd_create_session(port, b.s, &resp);
    ck_assert_str_eq(kvd_json_str(resp, "config.cache.eviction"), cache_policy_name(cfg->policy));
    if (cfg->policy != REF_EVICT_NONE) {
        ck_assert_msg(kvd_json_num(resp, "config.cache.budget") == (double)cfg->budget &&
                          kvd_json_num(resp, "config.cache.sink") == (double)cfg->sink &&
                          kvd_json_num(resp, "config.cache.recent") == (double)cfg->recent,
                      "create %s: resolved cache config differs", b.s);
    }
    cJSON_Delete(resp);
    sb_free(&b);
}

void cache_session_adopt(cache_session *cs, int port, const char *id, const ref_cache *ref, uint64_t seed,
                         double tol_rel, double min_margin)
{
    memset(cs, 0, sizeof *cs);
    cs->ref = ref_cache_clone(ref);
    init_common(cs, port, seed, tol_rel, min_margin);
    cs->id = strdup(id);
    ck_assert_ptr_nonnull(cs->id);
}

void cache_session_free(cache_session *cs)
{
    free(cs->id);
    ref_cache_free(cs->ref);
    memset(cs, 0, sizeof *cs);
}

step_spec cache_spec(cache_session *cs, long layer, size_t m, size_t m_q, const char *mask, bool b64)
{
    step_spec s = {.layer = layer, .m = m, .m_q = m_q, .mask = mask, .b64 = b64};
    s.k = rng_tensor(&cs->r, m * cs->kv_row, -1.0f, 1.0f);
    s.v = rng_tensor(&cs->r, m * cs->kv_row, -1.0f, 1.0f);
    s.q = rng_tensor(&cs->r, m_q * cs->q_row, -2.0f, 2.0f);
    return s;
}

void cache_spec_free(step_spec *s)
{
    free((void *)s->k);
    free((void *)s->v);
    free((void *)s->q);
    s->k = s->v = s->q = NULL;
}

static ref_mask mask_of(const step_spec *s)
{
    if (!s->mask)
        return ref_default_mask(s->m, s->m_q);
    return strcmp(s->mask, "block") == 0 ? REF_MASK_BLOCK : REF_MASK_CAUSAL;
}

/* Runs the step on a copy of the reference: returns the copy, *want
 * (malloc'd [m_q][heads][d]) and *res. */
static ref_cache *trial(const cache_session *cs, const step_spec *s, double **want, ref_entry_result *res)
{
    ref_cache *t = ref_cache_clone(cs->ref);
    const size_t n_out = s->m_q * cs->q_row;
    double *w = malloc((n_out > 0 ? n_out : 1) * sizeof *w);
    ck_assert_ptr_nonnull(w);
    ck_assert_msg(ref_cache_step(t, (size_t)s->layer, s->k, s->v, s->m, s->q, s->m_q, mask_of(s), w, res) == 0,
                  "test bug: the reference refuses the step");
    *want = w;
    return t;
}

http_response *cache_session_try(cache_session *cs, const step_spec *s, ref_entry_result *res, const char *what)
{
    double *want;
    ref_entry_result r;
    ref_cache *t = trial(cs, s, &want, &r);
    char *body = step_body(s, cs->kv_row, cs->q_row, cs->encoding);
    http_response *resp = kvd_step(cs->port, cs->id, body);
    free(body);
    if (resp->status == 200) {
        ref_cache_free(cs->ref);
        cs->ref = t;
        cs->steps_sent++;
        cJSON *j = http_response_json(resp);
        ck_assert_msg(cJSON_IsObject(j) && !cJSON_HasObjectItem(j, "error"), "%s: 200 without a result object: %.*s",
                      what, BODY_SNIPPET, resp->body);
        const double scale = fmax(ref_cache_max_abs_v(cs->ref), MIN_OUTPUT_SCALE);
        kvd_check_tensor(cJSON_GetObjectItemCaseSensitive(j, "o"), want, s->m_q * cs->q_row, cs->tol_rel * scale,
                         what);
        double tokens = kvd_json_num(j, "tokens"), evicted = kvd_json_num(j, "evicted");
        ck_assert_msg(tokens == (double)r.tokens, "%s: \"tokens\" %g, expected %zu", what, tokens, r.tokens);
        ck_assert_msg(evicted == (double)r.evicted, "%s: \"evicted\" %g, expected %zu", what, evicted, r.evicted);
        cJSON_Delete(j);
    } else {
        ref_cache_free(t);
    }
    free(want);
    if (res)
        *res = r;
    return resp;
}

ref_entry_result cache_session_step(cache_session *cs, const step_spec *s, const char *what)
{
    ref_entry_result r;
    http_response *resp = cache_session_try(cs, s, &r, what);
    ck_assert_msg(resp->status == 200, "%s: status %d: %.*s", what, resp->status, BODY_SNIPPET,
                  resp->status < 0 ? resp->error : resp->body);
    http_response_free(resp);
    return r;
}

void cache_session_steps(cache_session *cs, const step_spec *specs, size_t n, ref_entry_result *res,
                         const char *what)
{
    ref_cache *t = ref_cache_clone(cs->ref);
    double **want = calloc(n ? n : 1, sizeof *want);
    ref_entry_result *r = calloc(n ? n : 1, sizeof *r);
    double *scale = calloc(n ? n : 1, sizeof *scale);
    ck_assert_msg(want && r && scale, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const step_spec *s = &specs[i];
        want[i] = malloc((s->m_q * cs->q_row > 0 ? s->m_q * cs->q_row : 1) * sizeof **want);
        ck_assert_ptr_nonnull(want[i]);
        ck_assert_msg(ref_cache_step(t, (size_t)s->layer, s->k, s->v, s->m, s->q, s->m_q, mask_of(s), want[i],
                                     &r[i]) == 0,
                      "test bug: the reference refuses entry %zu", i);
        scale[i] = fmax(ref_cache_max_abs_v(t), MIN_OUTPUT_SCALE);
    }
    char *body = steps_body(specs, n, cs->kv_row, cs->q_row, cs->encoding);
    http_response *resp = kvd_step(cs->port, cs->id, body);
    free(body);
    ck_assert_msg(resp->status == 200, "%s: status %d: %.*s", what, resp->status, BODY_SNIPPET,
                  resp->status < 0 ? resp->error : resp->body);
    ref_cache_free(cs->ref);
    cs->ref = t;
    cs->steps_sent++;
    cJSON *j = http_response_json(resp);
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(j, "steps");
    ck_assert_msg(cJSON_IsArray(steps) && (size_t)cJSON_GetArraySize(steps) == n,
                  "%s: expected {\"steps\": [%zu results]}: %.*s", what, n, BODY_SNIPPET, resp->body);
    char label[256];
    for (size_t i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(steps, (int)i);
        snprintf(label, sizeof label, "%s, steps[%zu] (layer %ld)", what, i, specs[i].layer);
        kvd_check_tensor(cJSON_GetObjectItemCaseSensitive(e, "o"), want[i], specs[i].m_q * cs->q_row,
                         cs->tol_rel * scale[i], label);
        double tokens = kvd_json_num(e, "tokens"), evicted = kvd_json_num(e, "evicted");
        ck_assert_msg(tokens == (double)r[i].tokens && evicted == (double)r[i].evicted,
                      "%s: \"tokens\" %g \"evicted\" %g, expected %zu and %zu", label, tokens, evicted, r[i].tokens,
                      r[i].evicted);
        free(want[i]);
    }
    if (res)
        memcpy(res, r, n * sizeof *r);
    cJSON_Delete(j);
    http_response_free(resp);
    free(want);
    free(r);
    free(scale);
}

static double key_norm(const float *k, size_t d)
{
    double sq = 0;
    for (size_t i = 0; i < d; i++)
        sq += (double)k[i] * k[i];
    return sqrt(sq);
}

/* l2norm: two keys of one stream whose norms differ by less than min_margin
 * would be a near tie whenever both are the largest candidates, and such a
 * pair can stay in the kept set for thousands of steps; so each new key row
 * is redrawn until its norm is min_margin away from every key its stream
 * holds and from the step's earlier keys. */
static void separate_norms(cache_session *cs, step_spec *s)
{
    const ref_cache_config *cfg = ref_cache_cfg(cs->ref);
    const size_t d = cfg->head_dim;
    float *k = (float *)s->k;
    for (size_t g = 0; g < cfg->kv_heads; g++) {
        for (size_t t = 0; t < s->m; t++) {
            float *kt = k + t * cs->kv_row + g * d;
            for (int attempt = 0;; attempt++) {
                ck_assert_msg(attempt < CACHE_SESSION_MAX_REDRAWS, "no key norm %g away from the kept ones",
                              cs->min_margin);
                const double n = key_norm(kt, d);
                bool ok = ref_cache_norm_gap(cs->ref, (size_t)s->layer, g, n) >= cs->min_margin;
                for (size_t u = 0; ok && u < t; u++)
                    ok = fabs(key_norm(k + u * cs->kv_row + g * d, d) - n) >= cs->min_margin;
                if (ok)
                    break;
                rng_fill(&cs->r, kt, d, -1.0f, 1.0f);
                cs->redraws++;
            }
        }
    }
}

ref_entry_result cache_session_random_step(cache_session *cs, long layer, size_t m, size_t m_q, const char *mask,
                                           const char *what)
{
    for (int attempt = 0; attempt < CACHE_SESSION_MAX_REDRAWS; attempt++) {
        step_spec s = cache_spec(cs, layer, m, m_q, mask, true);
        if (ref_cache_cfg(cs->ref)->policy == REF_EVICT_L2NORM && cs->min_margin > 0)
            separate_norms(cs, &s);
        double *want;
        ref_entry_result r;
        ref_cache *t = trial(cs, &s, &want, &r);
        free(want);
        ref_cache_free(t);
        if (r.margin >= cs->min_margin) {
            r = cache_session_step(cs, &s, what);
            cache_spec_free(&s);
            return r;
        }
        cs->redraws++;
        cache_spec_free(&s);
    }
    ck_abort_msg("%s: %d random draws all had an eviction decision closer than %g", what, CACHE_SESSION_MAX_REDRAWS,
                 cs->min_margin);
    return (ref_entry_result){0};
}

cJSON *cache_session_check_stats(cache_session *cs, const char *what)
{
    const ref_cache_config *cfg = ref_cache_cfg(cs->ref);
    cJSON *st = kvd_session_stats(cs->port, cs->id);
    const char *id = kvd_json_str(st, "id");
    ck_assert_msg(id && strcmp(id, cs->id) == 0, "%s: stats id %s", what, id ? id : "(none)");
    struct {
        const char *name;
        double want;
    } totals[] = {{"tokens", (double)ref_cache_total_tokens(cs->ref)},
                  {"appended", (double)ref_cache_total_appended(cs->ref)},
                  {"evicted", (double)ref_cache_total_evicted(cs->ref)}};
    for (size_t i = 0; i < sizeof totals / sizeof totals[0]; i++)
        ck_assert_msg(kvd_json_num(st, totals[i].name) == totals[i].want, "%s: stats %s %g, expected %g", what,
                      totals[i].name, kvd_json_num(st, totals[i].name), totals[i].want);
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(st, "layers");
    ck_assert_msg(cJSON_IsArray(layers) && (size_t)cJSON_GetArraySize(layers) == cfg->layers,
                  "%s: stats \"layers\" is not an array of %zu", what, cfg->layers);
    for (size_t l = 0; l < cfg->layers; l++) {
        const cJSON *lo = cJSON_GetArrayItem(layers, (int)l);
        const cJSON *tok = cJSON_GetObjectItemCaseSensitive(lo, "tokens");
        const cJSON *ev = cJSON_GetObjectItemCaseSensitive(lo, "evicted");
        ck_assert_msg(cJSON_IsArray(tok) && (size_t)cJSON_GetArraySize(tok) == cfg->kv_heads && cJSON_IsArray(ev) &&
                          (size_t)cJSON_GetArraySize(ev) == cfg->kv_heads,
                      "%s: layers[%zu].tokens/evicted are not arrays of %zu (one per kv head)", what, l,
                      cfg->kv_heads);
        for (size_t g = 0; g < cfg->kv_heads; g++) {
            const cJSON *t = cJSON_GetArrayItem(tok, (int)g), *e = cJSON_GetArrayItem(ev, (int)g);
            ck_assert_msg(cJSON_IsNumber(t) && t->valuedouble == (double)ref_cache_tokens(cs->ref, l, g),
                          "%s: layers[%zu].tokens[%zu] = %g, expected %zu", what, l, g,
                          cJSON_IsNumber(t) ? t->valuedouble : -1.0, ref_cache_tokens(cs->ref, l, g));
            ck_assert_msg(cJSON_IsNumber(e) && e->valuedouble == (double)ref_cache_stream_evicted(cs->ref, l, g),
                          "%s: layers[%zu].evicted[%zu] = %g, expected %zu", what, l, g,
                          cJSON_IsNumber(e) ? e->valuedouble : -1.0, ref_cache_stream_evicted(cs->ref, l, g));
        }
    }
    return st;
}

static size_t align_up(size_t x)
{
    return (x + PAGE_BLOCK_ALIGN - 1) / PAGE_BLOCK_ALIGN * PAGE_BLOCK_ALIGN;
}

size_t kvd_slots_per_page(size_t page_bytes, size_t head_dim)
{
    size_t spp = page_bytes / (2 * head_dim * sizeof(float) + SLOT_META_BYTES);
    while (spp > 0 && 2 * align_up(spp * head_dim * sizeof(float)) + spp * SLOT_META_BYTES > page_bytes)
        spp--;
    return spp;
}

size_t kvd_pages_for(size_t tokens, size_t spp)
{
    return tokens / spp + (tokens % spp != 0);
}
