/* tests/support/checked_session.c — drives a kvd session and its reference
 * side by side. */
#define _GNU_SOURCE
#include "tests/support/checked_session.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/kvd_client.h"

/* Floor for the output scale: outputs of a session whose values are all
 * tiny are still compared at this absolute scale. */
#define MIN_OUTPUT_SCALE 1e-3

/* Each prepared output array is followed by the stream's token count and the
 * output scale as of that step. */
enum { WANT_TOKENS, WANT_SCALE, WANT_EXTRA };

void cs_create(checked_session *cs, int port, size_t layers, size_t heads, size_t kv_heads, size_t head_dim,
               double scale, const char *extra_json, uint64_t seed, double tol_rel)
{
    memset(cs, 0, sizeof *cs);
    cs->port = port;
    cs->layers = layers;
    cs->heads = heads;
    cs->kv_heads = kv_heads;
    cs->head_dim = head_dim;
    cs->kv_row = kv_heads * head_dim;
    cs->q_row = heads * head_dim;
    cs->tol_rel = tol_rel;
    rng_seed(&cs->r, seed);
    cs->ref = ref_session_new(layers, heads, kv_heads, head_dim, scale);
    sbuf b;
    sb_init(&b);
    sb_printf(&b, "{\"layers\":%zu,\"heads\":%zu,\"kv_heads\":%zu,\"head_dim\":%zu", layers, heads, kv_heads,
              head_dim);
    if (extra_json)
        sb_printf(&b, ",%s", extra_json);
    sb_puts(&b, "}");
    cJSON *resp = NULL;
    cs->id = kvd_create_session(port, b.s, &resp);
    ck_assert_int_eq((long)kvd_json_num(resp, "config.layers"), (long)layers);
    ck_assert_int_eq((long)kvd_json_num(resp, "config.heads"), (long)heads);
    ck_assert_int_eq((long)kvd_json_num(resp, "config.kv_heads"), (long)kv_heads);
    ck_assert_int_eq((long)kvd_json_num(resp, "config.head_dim"), (long)head_dim);
    cJSON_Delete(resp);
    sb_free(&b);
}

void cs_free(checked_session *cs)
{
    free(cs->id);
    ref_session_free(cs->ref);
    memset(cs, 0, sizeof *cs);
}

step_spec cs_spec(checked_session *cs, long layer, size_t m, size_t m_q, const char *mask, bool b64)
{
    step_spec s = {.layer = layer, .m = m, .m_q = m_q, .mask = mask, .b64 = b64};
    s.k = rng_tensor(&cs->r, m * cs->kv_row, -1.0f, 1.0f);
    s.v = rng_tensor(&cs->r, m * cs->kv_row, -1.0f, 1.0f);
    s.q = rng_tensor(&cs->r, m_q * cs->q_row, -2.0f, 2.0f);
    return s;
}

void cs_spec_free(step_spec *s)
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

char *cs_prepare(checked_session *cs, const step_spec *specs, size_t n, bool multi, const char *encoding,
                 double ***want)
{
    ck_assert_msg(multi || n == 1, "a single-step body holds one step");
    double **w = calloc(n, sizeof *w);
    ck_assert_ptr_nonnull(w);
    for (size_t i = 0; i < n; i++) {
        const step_spec *s = &specs[i];
        size_t n_out = s->m_q * cs->q_row;
        w[i] = calloc(n_out + WANT_EXTRA, sizeof **w);
        ck_assert_ptr_nonnull(w[i]);
        ck_assert_msg(ref_step(cs->ref, (size_t)s->layer, s->k, s->v, s->m, s->q, s->m_q, mask_of(s), w[i]) == 0,
                      "test bug: the reference refuses step %zu", i);
        /* What the answer must say as of this step (later prepared steps
         * move the reference on). */
        w[i][n_out + WANT_TOKENS] = (double)ref_tokens(cs->ref, (size_t)s->layer);
        w[i][n_out + WANT_SCALE] = fmax(ref_max_abs_v(cs->ref), MIN_OUTPUT_SCALE);
    }
    *want = w;
    return multi ? steps_body(specs, n, cs->kv_row, cs->q_row, encoding)
                 : step_body(specs, cs->kv_row, cs->q_row, encoding);
}

void cs_want_free(double **want, size_t n)
{
    if (!want)
        return;
    for (size_t i = 0; i < n; i++)
        free(want[i]);
    free(want);
}

static void verify_one(checked_session *cs, const step_spec *s, const char *encoding, const double *want,
                       const cJSON *r, const char *what)
{
    ck_assert_msg(cJSON_IsObject(r), "%s: step result is not an object", what);
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(r, "o");
    bool b64 = encoding && strcmp(encoding, "b64") == 0;
    if (b64 && s->m_q > 0)
        ck_assert_msg(cJSON_IsString(o) && strncmp(o->valuestring, "b64:", 4) == 0,
                      "%s: encoding b64 but \"o\" is not a \"b64:\" string", what);
    else if (!b64)
        ck_assert_msg(cJSON_IsArray(o), "%s: \"o\" is not a JSON array", what);
    size_t n_out = s->m_q * cs->q_row;
    kvd_check_tensor(o, want, n_out, cs->tol_rel * want[n_out + WANT_SCALE], what);
    double tokens = kvd_json_num(r, "tokens");
    ck_assert_msg(tokens == want[n_out + WANT_TOKENS], "%s: \"tokens\" %g, expected %g (per stream of layer %ld)",
                  what, tokens, want[n_out + WANT_TOKENS], s->layer);
    double evicted = kvd_json_num(r, "evicted");
    ck_assert_msg(evicted == 0, "%s: \"evicted\" %g, expected 0 (eviction none)", what, evicted);
}

void cs_verify(checked_session *cs, const step_spec *specs, size_t n, bool multi, const char *encoding,
               double **want, const cJSON *resp, const char *what)
{
    char label[256];
    if (!multi) {
        verify_one(cs, &specs[0], encoding, want[0], resp, what);
        return;
    }
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(resp, "steps");
    ck_assert_msg(cJSON_IsArray(steps), "%s: a \"steps\" request must answer {\"steps\": [...]}", what);
    ck_assert_msg((size_t)cJSON_GetArraySize(steps) == n, "%s: %d results for %zu steps", what,
                  cJSON_GetArraySize(steps), n);
    for (size_t i = 0; i < n; i++) {
        snprintf(label, sizeof label, "%s, steps[%zu] (layer %ld)", what, i, specs[i].layer);
        verify_one(cs, &specs[i], encoding, want[i], cJSON_GetArrayItem(steps, (int)i), label);
    }
}

void cs_steps(checked_session *cs, const step_spec *specs, size_t n, bool multi, const char *encoding,
              const char *what)
{
    double **want;
    char *body = cs_prepare(cs, specs, n, multi, encoding, &want);
    cJSON *resp = kvd_step_ok(cs->port, cs->id, body);
    cs_verify(cs, specs, n, multi, encoding, want, resp, what);
    cs->steps_sent++;
    cJSON_Delete(resp);
    cs_want_free(want, n);
    free(body);
}

void cs_random_step(checked_session *cs, long layer, size_t m, size_t m_q, const char *mask, bool b64_in,
                    const char *encoding, const char *what)
{
    step_spec s = cs_spec(cs, layer, m, m_q, mask, b64_in);
    cs_steps(cs, &s, 1, false, encoding, what);
    cs_spec_free(&s);
}

cJSON *cs_check_stats(checked_session *cs, const char *what)
{
    cJSON *st = kvd_session_stats(cs->port, cs->id);
    const char *id = kvd_json_str(st, "id");
    ck_assert_msg(id && strcmp(id, cs->id) == 0, "%s: stats id %s", what, id ? id : "(none)");
    double total = (double)ref_total_tokens(cs->ref);
    ck_assert_msg(kvd_json_num(st, "tokens") == total, "%s: stats tokens %g, expected %g", what,
                  kvd_json_num(st, "tokens"), total);
    ck_assert_msg(kvd_json_num(st, "appended") == total, "%s: stats appended %g, expected %g", what,
                  kvd_json_num(st, "appended"), total);
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(st, "layers");
    ck_assert_msg(cJSON_IsArray(layers) && (size_t)cJSON_GetArraySize(layers) == cs->layers,
                  "%s: stats \"layers\" is not an array of %zu", what, cs->layers);
    for (size_t l = 0; l < cs->layers; l++) {
        const cJSON *tok = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(layers, (int)l), "tokens");
        ck_assert_msg(cJSON_IsArray(tok) && (size_t)cJSON_GetArraySize(tok) == cs->kv_heads,
                      "%s: layers[%zu].tokens is not an array of %zu (one per kv head)", what, l, cs->kv_heads);
        for (size_t g = 0; g < cs->kv_heads; g++) {
            const cJSON *t = cJSON_GetArrayItem(tok, (int)g);
            ck_assert_msg(cJSON_IsNumber(t) && t->valuedouble == (double)ref_tokens(cs->ref, l),
                          "%s: layers[%zu].tokens[%zu] = %g, expected %zu", what, l, g,
                          cJSON_IsNumber(t) ? t->valuedouble : -1.0, ref_tokens(cs->ref, l));
        }
    }
    return st;
}
