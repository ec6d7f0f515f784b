/* tests/integration/test_quant.c — quantized caches and shadow mode over real
 * HTTP: for every cache dtype a decode session runs beside an exact double
 * reference; the test checks that the server's own shadow report equals the
 * error the test measures itself, that the error stays within each format's
 * loose sanity bound, that f32 with shadow reports exactly zero, and that the
 * stats' bits per coordinate follow the documented byte layouts. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/kvd_client.h"
#include "tests/support/kvd_data.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/ref_attention.h"
#include "tests/support/check_main.h"

#define HEADS 4
#define KV_HEADS 2
#define D 64
#define PREFILL 40
#define DECODE 24

/* The server's shadow error is computed in f32 against f32 exact attention;
 * ours in double against a double reference. They differ by f32 rounding of
 * the reference (~1e-7 relative), far below this. */
#define SHADOW_REPORT_TOL 1e-4

typedef struct dtype_case {
    const char *name;
    const char *cache;          /* the "cache" object of the create body */
    double max_rel_error;       /* loose sanity bound on ||o - exact|| / ||exact|| */
    bool exact;                 /* the shadow must report exactly 0 (f32: same bytes, same kernel) */
} dtype_case;

/* Bounds are an order of magnitude above what these formats give on this
 * data (uniform keys and values in [-1, 1]); they catch a broken kernel
 * (errors of order 1), not a slightly worse rounding. */
static const dtype_case cases[] = {
    {"f32", "{\"dtype\":\"f32\"}", 1e-5, true}, /* f32 rounding against a double reference */
    {"f16", "{\"dtype\":\"f16\"}", 5e-3, false},
    {"bf16", "{\"dtype\":\"bf16\"}", 3e-2, false},
    {"int8", "{\"dtype\":\"int8\"}", 3e-2, false},
    {"int4", "{\"dtype\":\"int4\",\"group\":32}", 0.25, false},
    {"kivi4", "{\"dtype\":\"kivi4\",\"group\":16,\"residual\":0}", 0.25, false},
    {"kivi2", "{\"dtype\":\"kivi2\",\"group\":16,\"residual\":16}", 0.8, false},
};

/* Payload bytes per stream for `tokens` tokens, from attention/formats.h's
 * layouts (d = 64), for the bits-per-coordinate check. */
static double expected_payload(const char *name, size_t tokens)
{
    if (!strcmp(name, "f32"))
        return tokens * 2.0 * 4 * D;
    if (!strcmp(name, "f16") || !strcmp(name, "bf16"))
        return tokens * 2.0 * 2 * D;
    if (!strcmp(name, "int8"))
        return tokens * 2.0 * (4 + D);
    if (!strcmp(name, "int4")) /* 2 groups x {f16 s, f16 z} + 32 bytes of nibbles */
        return tokens * 2.0 * (2 * 4 + D / 2);
    /* KIVI, group 16: settled blocks (4d + 16 * d*B/8 bytes of keys, 16 value
     * rows of 4*(d/16) + d*B/8 bytes) plus f32 residual tokens. Blocks move
     * once the residual holds residual + group tokens. */
    size_t bits = !strcmp(name, "kivi4") ? 4 : 2, residual = !strcmp(name, "kivi4") ? 0 : 16;
    size_t blocks = tokens >= residual + 16 ? (tokens - residual) / 16 : 0;
    size_t quantized = blocks * 16, f32_tokens = tokens - quantized;
    double key_block = 4.0 * D + 16.0 * (D * bits / 8);
    double value_row = 4.0 * (D / 16) + (double)(D * bits / 8);
    return blocks * key_block + quantized * value_row + f32_tokens * 2.0 * 4 * D;
}

static double rel_error(const float *got, const double *want, size_t n, double *max_abs)
{
    double err = 0, ref = 0;
    *max_abs = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        err += d * d;
        ref += want[i] * want[i];
        if (fabs(d) > *max_abs)
            *max_abs = fabs(d);
    }
    return ref > 0 ? sqrt(err / ref) : sqrt(err);
}

static void run_case(int port, const dtype_case *c)
{
    char body[512];
    snprintf(body, sizeof body,
             "{\"layers\":1,\"heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,\"cache\":%s,\"shadow\":true}",
             HEADS, KV_HEADS, D, c->cache);
    char *id = kvd_create_session(port, body, NULL);
    ref_session *ref = ref_session_new(1, HEADS, KV_HEADS, D, 1.0 / sqrt(D));
    rng r;
    rng_seed(&r, 1234);
    const size_t kv_row = KV_HEADS * D, q_row = HEADS * D;
    double worst = 0, sum_rel = 0;
    int steps = 0;
    for (int s = 0; s <= DECODE; s++) {
        size_t m = s == 0 ? PREFILL : 1;
        float *k = rng_tensor(&r, m * kv_row, -1, 1), *v = rng_tensor(&r, m * kv_row, -1, 1);
        float *q = rng_tensor(&r, m * q_row, -1, 1);
        double *want = malloc(m * q_row * sizeof *want);
        ck_assert_int_eq(ref_step(ref, 0, k, v, m, q, m, REF_MASK_CAUSAL, want), 0);
        step_spec sp = {.layer = 0, .k = k, .v = v, .m = m, .q = q, .m_q = m, .b64 = true};
        char *b = step_body(&sp, kv_row, q_row, "b64");
        cJSON *j = kvd_step_ok(port, id, b);
        float *o;
        size_t n;
        ck_assert_int_eq(tensor_from_json(cJSON_GetObjectItemCaseSensitive(j, "o"), &o, &n), 0);
        ck_assert_uint_eq(n, m * q_row);
        double max_abs, rel = rel_error(o, want, n, &max_abs);
        double reported = kvd_json_num(j, "shadow.relative_error");
        ck_assert_msg(!isnan(reported), "%s: no shadow.relative_error", c->name);
        ck_assert_msg(fabs(reported - rel) <= SHADOW_REPORT_TOL,
                      "%s step %d: server reports relative error %g, measured %g", c->name, s, reported, rel);
        ck_assert_msg(fabs(kvd_json_num(j, "shadow.max_abs_error") - max_abs) <= SHADOW_REPORT_TOL,
                      "%s step %d: max_abs_error", c->name, s);
        if (c->exact)
            ck_assert_msg(reported == 0.0, "f32 with shadow must report exactly 0, got %g", reported);
        ck_assert_msg(rel <= c->max_rel_error, "%s step %d: relative error %g over %g", c->name, s, rel,
                      c->max_rel_error);
        if (rel > worst)
            worst = rel;
        sum_rel += reported;
        steps++;
        free(o);
        cJSON_Delete(j);
        free(b);
        free(k);
        free(v);
        free(q);
        free(want);
    }
    const size_t tokens = PREFILL + DECODE;
    cJSON *st = kvd_session_stats(port, id);
    ck_assert_str_eq(kvd_json_str(st, "dtype"), c->name);
    ck_assert_double_eq(kvd_json_num(st, "tokens"), (double)(tokens * KV_HEADS));
    ck_assert_double_eq(kvd_json_num(st, "shadow.steps"), steps);
    ck_assert_double_eq_tol(kvd_json_num(st, "shadow.mean_relative_error"), sum_rel / steps, 1e-9);
    ck_assert_double_gt(kvd_json_num(st, "shadow_bytes"), 0);
    double bits = expected_payload(c->name, tokens) * 8.0 / (2.0 * D * tokens);
    ck_assert_msg(fabs(kvd_json_num(st, "bits_per_coordinate") - bits) < 1e-9,
                  "%s: bits_per_coordinate %g, layouts give %g", c->name,
                  kvd_json_num(st, "bits_per_coordinate"), bits);
    printf("  %-6s %6.2f bits/coordinate, %8.0f bytes cached, worst relative error %.2e\n", c->name, bits,
           kvd_json_num(st, "bytes"), worst);
    cJSON_Delete(st);
    kvd_delete_session(port, id);
    ref_session_free(ref);
    free(id);
}

START_TEST(every_dtype_with_shadow)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    int port = kvd_proc_port(p);
    printf("quantized caches, d=%d, %d tokens:\n", D, PREFILL + DECODE);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(port, &cases[i]);
    /* One shadow observation per step of every session. */
    double count = kvd_metric_now(port, "kvd_shadow_relative_error_count", NULL);
    ck_assert_double_eq(count, (double)(sizeof cases / sizeof cases[0]) * (DECODE + 1));
    ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""), 0);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(int4_holds_six_times_the_tokens_of_f32)
{
    /* Same tokens, d = 128, 16 KiB pages: the int4 cache takes at most a
     * sixth of f32's pages (slot 168 vs 1032 bytes with 8-byte metadata). */
    kvd_proc *p = kvd_proc_start_ck(NULL);
    int port = kvd_proc_port(p);
    const size_t n = 4096, d = 128;
    rng r;
    rng_seed(&r, 7);
    float *k = rng_tensor(&r, n * d, -1, 1), *v = rng_tensor(&r, n * d, -1, 1);
    double pages[2];
    const char *dtypes[2] = {"f32", "int4"};
    for (int i = 0; i < 2; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"heads\":1,\"head_dim\":128,\"cache\":{\"dtype\":\"%s\"}}", dtypes[i]);
        char *id = kvd_create_session(port, body, NULL);
        step_spec sp = {.layer = 0, .k = k, .v = v, .m = n, .b64 = true};
        char *b = step_body(&sp, d, d, NULL);
        cJSON *j = kvd_step_ok(port, id, b);
        cJSON_Delete(j);
        cJSON *st = kvd_session_stats(port, id);
        pages[i] = kvd_json_num(st, "pages");
        cJSON_Delete(st);
        free(b);
        kvd_delete_session(port, id);
        free(id);
    }
    printf("4096 tokens, d=128: f32 %g pages, int4 %g pages (%.2fx)\n", pages[0], pages[1], pages[0] / pages[1]);
    ck_assert_msg(pages[0] >= 6 * pages[1] - 6, "f32 %g pages vs int4 %g", pages[0], pages[1]);
    free(k);
    free(v);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(quantized_eviction_and_fork)
{
    /* int8 with l2norm eviction and a fork: outputs stay within int8's bound
     * of the shadow, and KIVI refuses what it does not do yet. */
    kvd_proc *p = kvd_proc_start_ck(NULL);
    int port = kvd_proc_port(p);
    char *id = kvd_create_session(port,
                                  "{\"heads\":2,\"kv_heads\":1,\"head_dim\":32,\"shadow\":true,"
                                  "\"cache\":{\"dtype\":\"int8\",\"eviction\":\"l2norm\",\"budget\":16}}",
                                  NULL);
    rng r;
    rng_seed(&r, 3);
    for (int s = 0; s < 40; s++) {
        float *k = rng_tensor(&r, 32, -1, 1), *v = rng_tensor(&r, 32, -1, 1), *q = rng_tensor(&r, 64, -1, 1);
        step_spec sp = {.layer = 0, .k = k, .v = v, .m = 1, .q = q, .m_q = 1};
        char *b = step_body(&sp, 32, 64, NULL);
        cJSON *j = kvd_step_ok(port, id, b);
        ck_assert_double_le(kvd_json_num(j, "tokens"), 16);
        ck_assert(!isnan(kvd_json_num(j, "shadow.relative_error")));
        cJSON_Delete(j);
        free(b);
        free(k);
        free(v);
        free(q);
    }
    cJSON *st = kvd_session_stats(port, id);
    ck_assert_double_eq(kvd_json_num(st, "evicted"), 40 - 16);
    cJSON_Delete(st);
    http_response *fr = http_request(port, "POST", "/v1/sessions/x/fork", NULL, NULL);
    http_response_free(fr);
    char path[80];
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", id);
    fr = http_request(port, "POST", path, NULL, NULL);
    ck_assert_int_eq(fr->status, 201);
    http_response_free(fr);
    char *kivi = kvd_create_session(port, "{\"heads\":1,\"head_dim\":32,\"cache\":{\"dtype\":\"kivi4\"}}", NULL);
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", kivi);
    fr = http_request(port, "POST", path, NULL, NULL);
    ck_assert_int_eq(fr->status, 201); /* KIVI forks too (tests/integration/test_fork.c) */
    http_response_free(fr);
    free(kivi);
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(kivi_evicts_across_repeated_entries)
{
    /* KIVI with eviction, and requests that name the same layer several
     * times: each entry appends, attends and evicts; pages freed by one
     * entry's eviction may be taken again by the next. Small pages make that
     * happen often. Every step must succeed, stay within the budget, keep
     * the pool's accounting exact, and stay close to the exact shadow. */
    const char *const extra[] = {"--page-bytes", "2048", NULL};
    kvd_proc *p = kvd_proc_start_ck(extra);
    int port = kvd_proc_port(p);
    char *id = kvd_create_session(port,
                                  "{\"heads\":2,\"kv_heads\":1,\"head_dim\":16,\"shadow\":true,"
                                  "\"cache\":{\"dtype\":\"kivi4\",\"group\":4,\"residual\":4,"
                                  "\"eviction\":\"recency\",\"budget\":12,\"sink\":2}}",
                                  NULL);
    rng r;
    rng_seed(&r, 11);
    for (int s = 0; s < 60; s++) {
        step_spec sp[3];
        float *bufs[9];
        const size_t ms[3] = {3, 1 + (size_t)(s % 4), 2};
        for (int e = 0; e < 3; e++) {
            bufs[3 * e] = rng_tensor(&r, ms[e] * 16, -1, 1);
            bufs[3 * e + 1] = rng_tensor(&r, ms[e] * 16, -1, 1);
            bufs[3 * e + 2] = rng_tensor(&r, ms[e] * 32, -1, 1);
            sp[e] = (step_spec){.layer = 0, .k = bufs[3 * e], .v = bufs[3 * e + 1], .m = ms[e],
                                .q = bufs[3 * e + 2], .m_q = ms[e]};
        }
        char *b = steps_body(sp, 3, 16, 32, NULL);
        cJSON *j = kvd_step_ok(port, id, b);
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "steps"), *e;
        cJSON_ArrayForEach(e, arr) {
            ck_assert_double_le(kvd_json_num(e, "tokens"), 12);
            /* Reported and finite. Not bounded: the shadow averages every
             * token (its output shrinks like 1/sqrt(n) on random values)
             * while the cache keeps 12, so the relative error can pass 1. */
            ck_assert(isfinite(kvd_json_num(e, "shadow.relative_error")));
        }
        cJSON_Delete(j);
        free(b);
        for (int k = 0; k < 9; k++)
            free(bufs[k]);
    }
    cJSON *st = kvd_session_stats(port, id);
    double used = kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"");
    ck_assert_double_eq(used, kvd_json_num(st, "pages") + kvd_json_num(st, "shadow_bytes") / 2048);
    cJSON_Delete(st);
    kvd_delete_session(port, id);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""), 0);
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/quant");
    TCase *tc = tcase_create("quant");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, every_dtype_with_shadow);
    tcase_add_test(tc, int4_holds_six_times_the_tokens_of_f32);
    tcase_add_test(tc, quantized_eviction_and_fork);
    tcase_add_test(tc, kivi_evicts_across_repeated_entries);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
