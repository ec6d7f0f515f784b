/* tests/integration/test_tensor_evict.c — tensor attention with eviction
 * policies and quantized dtypes over real HTTP. Four- and two-cache sessions
 * get the same requests: they make the same eviction decisions (both rank
 * tokens in the k1/v1 stream, k2/v2 and the pair rows follow), so with f32
 * they must agree to rounding; recency is also checked against a double
 * brute force over the kept tokens (sinks + the newest), and each quantized
 * dtype stays within a loose bound of exact attention over the same kept set. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/kvd_client.h"
#include "tests/support/kvd_data.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

#define H 2
#define D 8
#define BUDGET 9
#define SINK 2
#define MAX_TOKENS 64

/* Four vs two cache in f32: the same pair scores summed in another order
 * (pair rows are f32 products of the same numbers): a few ulps of outputs
 * of magnitude <= 1. */
#define FOUR_TWO_TOL 1e-5
/* Against a double reference over the kept set, f32 accumulation over at
 * most BUDGET^2 pairs: well under this. */
#define F32_REF_TOL 1e-5

typedef struct token {
    float k1[D], k2[D], v1[D], v2[D];
} token;

/* Exact tensor attention of query q over tokens t[0..n) (all pairs). */
static void ref_attend(const token *t, size_t n, const float *q, double *o)
{
    double mx = -INFINITY, z = 0, scale = 1.0 / sqrt(D);
    for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < n; k++) {
            double s = 0;
            for (int l = 0; l < D; l++)
                s += (double)q[l] * t[j].k1[l] * t[k].k2[l];
            mx = fmax(mx, s * scale);
        }
    for (int l = 0; l < D; l++)
        o[l] = 0;
    for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < n; k++) {
            double s = 0;
            for (int l = 0; l < D; l++)
                s += (double)q[l] * t[j].k1[l] * t[k].k2[l];
            double w = exp(s * scale - mx);
            z += w;
            for (int l = 0; l < D; l++)
                o[l] += w * t[j].v1[l] * t[k].v2[l];
        }
    for (int l = 0; l < D; l++)
        o[l] /= z;
}

static void random_token(rng *r, token *t)
{
    rng_fill(r, t->k1, D, -1, 1);
    rng_fill(r, t->k2, D, -1, 1);
    rng_fill(r, t->v1, D, -1, 1);
    rng_fill(r, t->v2, D, -1, 1);
}

/* What recency with BUDGET and SINK keeps of tokens in arrival order: the
 * sinks and the newest BUDGET - SINK. */
static void recency_keep(token *kept, size_t *n)
{
    if (*n <= BUDGET)
        return;
    memmove(kept + SINK, kept + *n - (BUDGET - SINK), (BUDGET - SINK) * sizeof *kept);
    *n = BUDGET;
}

static char *tensor_step(const token *t, size_t m, const float *q)
{
    sbuf b;
    sb_init(&b);
    static const char *const names[4] = {"k1", "k2", "v1", "v2"};
    sb_puts(&b, "{");
    for (int f = 0; f < 4; f++) {
        float rows[MAX_TOKENS * D];
        for (size_t i = 0; i < m; i++)
            memcpy(rows + i * D, f == 0 ? t[i].k1 : f == 1 ? t[i].k2 : f == 2 ? t[i].v1 : t[i].v2,
                   sizeof(float) * D);
        sb_printf(&b, "\"%s\":", names[f]);
        sb_floats_json(&b, rows, m * D);
        sb_puts(&b, ",");
    }
    sb_puts(&b, "\"q\":");
    sb_floats_json(&b, q, m * H * D);
    sb_puts(&b, "}");
    return sb_take(&b);
}

static char *create(int port, const char *layout, const char *cache)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"heads\":%d,\"kv_heads\":1,\"head_dim\":%d,\"attention\":\"tensor\",\"tensor_cache\":\"%s\","
             "\"cache\":%s}", H, D, layout, cache);
    return kvd_create_session(port, body, NULL);
}

/* Runs 30 steps of 1..3 tokens on a four- and a two-cache session with the
 * same cache settings. Checks their agreement (tol), the budget, pair rows,
 * and — when ref_tol > 0 (recency) — every step's last query against the
 * exact attention over the tokens recency keeps. */
static void run(int port, const char *cache, double four_two_tol, double ref_tol)
{
    char *four = create(port, "four", cache), *two = create(port, "two", cache);
    rng r;
    rng_seed(&r, 21);
    token kept[MAX_TOKENS];
    size_t n_kept = 0;
    size_t appended = 0;
    for (int s = 0; s < 30; s++) {
        size_t m = 1 + (size_t)(s % 3);
        token t[3];
        for (size_t i = 0; i < m; i++) {
            random_token(&r, &t[i]);
        }
        float q[3 * H * D];
        rng_fill(&r, q, m * H * D, -1, 1);
        char *b = tensor_step(t, m, q);
        cJSON *a4 = kvd_step_ok(port, four, b), *a2 = kvd_step_ok(port, two, b);
        float *o4, *o2;
        size_t n4, n2;
        ck_assert_int_eq(tensor_from_json(cJSON_GetObjectItemCaseSensitive(a4, "o"), &o4, &n4), 0);
        ck_assert_int_eq(tensor_from_json(cJSON_GetObjectItemCaseSensitive(a2, "o"), &o2, &n2), 0);
        ck_assert_uint_eq(n4, m * H * D);
        for (size_t i = 0; i < n4; i++)
            ck_assert_msg(fabs((double)o4[i] - o2[i]) <= four_two_tol, "%s step %d: four %g two %g", cache, s,
                          (double)o4[i], (double)o2[i]);
        appended += m;
        const double want_tokens = appended < BUDGET ? (double)appended : BUDGET;
        ck_assert_double_eq(kvd_json_num(a4, "tokens"), want_tokens);
        ck_assert_double_eq(kvd_json_num(a2, "tokens"), want_tokens);
        if (ref_tol > 0) {
            /* The causal last query sees the kept set plus all m new tokens. */
            for (size_t i = 0; i < m; i++)
                kept[n_kept++] = t[i];
            double want[D];
            ref_attend(kept, n_kept, q + (m - 1) * H * D, want);
            for (int l = 0; l < D; l++)
                ck_assert_msg(fabs(o4[(m - 1) * H * D + l] - want[l]) <= ref_tol, "%s step %d: o %g want %g", cache,
                              s, (double)o4[(m - 1) * H * D + l], want[l]);
            recency_keep(kept, &n_kept);
        }
        free(o4);
        free(o2);
        cJSON_Delete(a4);
        cJSON_Delete(a2);
        free(b);
    }
    cJSON *st = kvd_session_stats(port, two);
    ck_assert_double_eq(kvd_json_num(st, "pair_rows"), BUDGET * BUDGET);
    ck_assert_double_eq(kvd_json_num(st, "evicted"), (double)(appended - BUDGET));
    ck_assert_str_eq(kvd_json_str(st, "memory_scaling"), "n^2*d");
    cJSON_Delete(st);
    kvd_delete_session(port, four);
    kvd_delete_session(port, two);
    free(four);
    free(two);
}

START_TEST(policies_agree_across_layouts)
{
    const char *const extra[] = {"--page-bytes", "1024", NULL};
    kvd_proc *p = kvd_proc_start_ck(extra);
    int port = kvd_proc_port(p);
    char cache[160];
    static const char *const policies[] = {"recency", "l2norm", "h2o"};
    for (int i = 0; i < 3; i++) {
        snprintf(cache, sizeof cache, "{\"eviction\":\"%s\",\"budget\":%d,\"sink\":%d}", policies[i], BUDGET, SINK);
        run(port, cache, FOUR_TWO_TOL, i == 0 ? F32_REF_TOL : 0);
    }
    ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""), 0);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(quantized_tensor_caches)
{
    /* The four-cache quantizes k1, k2, v1, v2 and the two-cache their
     * products, so they differ by their formats' rounding; each is checked
     * against exact attention over the same kept set (recency), with bounds
     * an order of magnitude above what these formats give on this data. */
    const char *const extra[] = {"--page-bytes", "1024", NULL};
    kvd_proc *p = kvd_proc_start_ck(extra);
    int port = kvd_proc_port(p);
    static const struct { const char *dtype; double tol; } cases[] = {
        {"f16", 2e-3}, {"bf16", 2e-2}, {"int8", 3e-2}, {"int4", 0.15},
    };
    char cache[200];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(cache, sizeof cache, "{\"dtype\":\"%s\",\"group\":4,\"eviction\":\"recency\",\"budget\":%d,\"sink\":%d}",
                 cases[i].dtype, BUDGET, SINK);
        run(port, cache, 2 * cases[i].tol, cases[i].tol);
    }
    kvd_proc_stop_ck(p);
}
END_TEST

/* KIVI tensor caches with eviction: a four-cache (key blocks re-quantized
 * when a token moves into them, k2/v2 following) and a two-cache (pair rows
 * rebuilt after each eviction), each against exact attention over what
 * recency keeps. */
START_TEST(kivi_tensor_caches)
{
    const char *const extra[] = {"--page-bytes", "2048", NULL};
    kvd_proc *p = kvd_proc_start_ck(extra);
    int port = kvd_proc_port(p);
    /* kivi4, group 4: per-channel key blocks over 4 tokens; 0.15 as int4 */
    char *four = create(port, "four", "{\"dtype\":\"kivi4\",\"group\":4,\"residual\":4,"
                                       "\"eviction\":\"recency\",\"budget\":9,\"sink\":2}");
    char *two = create(port, "two", "{\"dtype\":\"kivi4\",\"group\":4,\"residual\":4,"
                                     "\"eviction\":\"recency\",\"budget\":9,\"sink\":2}");
    rng r;
    rng_seed(&r, 33);
    token kept[MAX_TOKENS];
    size_t n_kept = 0;
    for (int s = 0; s < 14; s++) {
        size_t m = 1 + (size_t)(s % 3);
        token t[3];
        for (size_t i = 0; i < m; i++) {
            random_token(&r, &t[i]);
            kept[n_kept++] = t[i];
        }
        float q[3 * H * D];
        rng_fill(&r, q, m * H * D, -1, 1);
        char *b = tensor_step(t, m, q);
        const char *ids[2] = {four, two};
        for (int c = 0; c < 2; c++) {
            cJSON *a = kvd_step_ok(port, ids[c], b);
            float *o;
            size_t n;
            ck_assert_int_eq(tensor_from_json(cJSON_GetObjectItemCaseSensitive(a, "o"), &o, &n), 0);
            double want[D];
            ref_attend(kept, n_kept, q + (m - 1) * H * D, want);
            for (int l = 0; l < D; l++)
                ck_assert_msg(fabs(o[(m - 1) * H * D + l] - want[l]) <= 0.15, "kivi %s step %d: o %g want %g",
                              c ? "two" : "four", s, (double)o[(m - 1) * H * D + l], want[l]);
            free(o);
            cJSON_Delete(a);
        }
        recency_keep(kept, &n_kept);
        free(b);
    }
    cJSON *st = kvd_session_stats(port, two);
    ck_assert_double_eq(kvd_json_num(st, "pair_rows"), (double)(BUDGET * BUDGET));
    cJSON_Delete(st);
    kvd_delete_session(port, four);
    kvd_delete_session(port, two);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""), 0);
    free(four);
    free(two);
    kvd_proc_stop_ck(p);
}
END_TEST

/* A window on quantized four-caches: the last W tokens stay (rows move
 * byte for byte, scales included) and the causal last query sees the last W
 * of what it can see; compared with exact attention within each format's
 * bound. */
START_TEST(quantized_windows)
{
    const char *const extra[] = {"--page-bytes", "1024", NULL};
    kvd_proc *p = kvd_proc_start_ck(extra);
    int port = kvd_proc_port(p);
    static const struct { const char *dtype; double tol; } cases[] = {{"f16", 2e-3}, {"int8", 3e-2}, {"int4", 0.15}};
    enum { W = 4 };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"heads\":%d,\"kv_heads\":1,\"head_dim\":%d,\"attention\":\"tensor\",\"window\":%d,"
                 "\"cache\":{\"dtype\":\"%s\",\"group\":4}}", H, D, W, cases[c].dtype);
        char *id = kvd_create_session(port, body, NULL);
        rng r;
        rng_seed(&r, 44 + c);
        token kept[MAX_TOKENS];
        size_t n_kept = 0;
        for (int s = 0; s < 12; s++) {
            size_t m = 1 + (size_t)(s % 3);
            token t[3];
            for (size_t i = 0; i < m; i++) {
                random_token(&r, &t[i]);
                kept[n_kept++] = t[i];
            }
            float q[3 * H * D];
            rng_fill(&r, q, m * H * D, -1, 1);
            char *b = tensor_step(t, m, q);
            cJSON *a = kvd_step_ok(port, id, b);
            float *o;
            size_t n;
            ck_assert_int_eq(tensor_from_json(cJSON_GetObjectItemCaseSensitive(a, "o"), &o, &n), 0);
            const size_t first = n_kept > W ? n_kept - W : 0;
            double want[D];
            ref_attend(kept + first, n_kept - first, q + (m - 1) * H * D, want);
            for (int l = 0; l < D; l++)
                ck_assert_msg(fabs(o[(m - 1) * H * D + l] - want[l]) <= cases[c].tol, "%s window step %d",
                              cases[c].dtype, s);
            ck_assert_double_eq(kvd_json_num(a, "tokens"), (double)(n_kept - first));
            memmove(kept, kept + first, (n_kept - first) * sizeof *kept);
            n_kept -= first;
            free(o);
            cJSON_Delete(a);
            free(b);
        }
        kvd_delete_session(port, id);
        free(id);
    }
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/tensor_evict");
    TCase *tc = tcase_create("tensor_evict");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, policies_agree_across_layouts);
    tcase_add_test(tc, quantized_tensor_caches);
    tcase_add_test(tc, kivi_tensor_caches);
    tcase_add_test(tc, quantized_windows);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
