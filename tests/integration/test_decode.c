/* tests/integration/test_decode.c — whole decode sessions over HTTP against
 * the double-precision reference: a causal prefill, 50 decode steps, block
 * and pure-query steps, JSON and b64 tensors both ways, the "steps" form,
 * session stats, /metrics pool accounting, and DELETE. Each test case runs
 * its own kvd. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/checked_session.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

/* Output tolerance, relative to max|v| (the scale of any output, a convex
 * combination of values). kvd computes in f32: each score <q,k> over d = 64
 * (|q| <= 2, |k| <= 1) carries a rounding error of about d * 2^-24 * 2 ~ 1e-5
 * absolute at worst, usually ~1e-6; that perturbs each softmax weight by the
 * same relative amount, and o by about that times max|v|, plus ~n * 2^-24
 * from accumulating over n <= 110 tokens in f32. 1e-4 leaves a 10-100x margin
 * for SIMD reordering and exp approximations, while any real bug (a token too
 * many or too few, a wrong kv head, a wrong scale) moves o by ~1/n of the
 * value range, i.e. ~1e-2 here. */
#define OUTPUT_TOL_REL 1e-4

#define PAGE_BYTES 4096
#define LAYERS 2
#define HEADS 8
#define KV_HEADS 2
#define HEAD_DIM 64
#define PREFILL 37
#define DECODE_STEPS 50
#define CASE_TIMEOUT_S 240

static const char *const server_args[] = {"--page-bytes", "4096", "--memory", "16MiB", "--threads", "2", NULL};

/* Asserts the create response's resolved config for the decode session. */
static void check_config(const cJSON *cfg)
{
    ck_assert_msg(cJSON_IsObject(cfg), "no config object");
    ck_assert_str_eq(kvd_json_str(cfg, "attention"), "standard");
    ck_assert_msg(fabs(kvd_json_num(cfg, "scale") - 1.0 / sqrt(HEAD_DIM)) < 1e-7, "scale %g, expected 1/sqrt(%d)",
                  kvd_json_num(cfg, "scale"), HEAD_DIM);
    ck_assert_str_eq(kvd_json_str(cfg, "cache.dtype"), "f32");
    ck_assert_str_eq(kvd_json_str(cfg, "cache.eviction"), "none");
    ck_assert_msg(kvd_json_num(cfg, "cache.budget") == 0, "budget default is 0 (unlimited)");
    ck_assert_msg(kvd_json_at(cfg, "seed") != NULL, "the resolved config shows the seed");
    ck_assert_msg(cJSON_IsFalse(kvd_json_at(cfg, "shadow")), "shadow defaults to false");
}

/* Two layers' decode step with the same (m, m_q, mask) each. */
static void both_layers(checked_session *cs, size_t m, size_t m_q, const char *mask, bool b64_in, bool multi,
                        const char *encoding, const char *what)
{
    step_spec s[LAYERS];
    for (long l = 0; l < LAYERS; l++)
        s[l] = cs_spec(cs, l, m, m_q, mask, b64_in);
    if (multi) {
        cs_steps(cs, s, LAYERS, true, encoding, what);
    } else {
        for (int l = 0; l < LAYERS; l++)
            cs_steps(cs, &s[l], 1, false, encoding, what);
    }
    for (int l = 0; l < LAYERS; l++)
        cs_spec_free(&s[l]);
}

START_TEST(decode_session)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session cs;
    cs_create(&cs, port, LAYERS, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 12345, OUTPUT_TOL_REL);
    cJSON *st = kvd_session_stats(port, cs.id);
    check_config(kvd_json_at(st, "config"));
    ck_assert_msg(kvd_json_num(st, "tokens") == 0 && kvd_json_num(st, "pages") == 0, "a new session holds nothing");
    cJSON_Delete(st);

    /* Prefill: causal by default (m_q == m); layer 0 as JSON, layer 1 as b64
     * both ways with the mask named. */
    cs_random_step(&cs, 0, PREFILL, PREFILL, NULL, false, NULL, "prefill layer 0 (json)");
    cs_random_step(&cs, 1, PREFILL, PREFILL, "causal", true, "b64", "prefill layer 1 (b64 both ways)");
    cJSON_Delete(cs_check_stats(&cs, "after prefill"));

    char what[128];
    for (int t = 0; t < DECODE_STEPS; t++) {
        switch (t % 3) {
        case 0: /* one request per layer, JSON in and out */
            snprintf(what, sizeof what, "decode %d (single, json)", t);
            both_layers(&cs, 1, 1, NULL, false, false, NULL, what);
            break;
        case 1: /* "steps" form, JSON in, b64 out */
            snprintf(what, sizeof what, "decode %d (steps, json in, b64 out)", t);
            both_layers(&cs, 1, 1, NULL, false, true, "b64", what);
            break;
        default: /* "steps" form, b64 in, JSON out (named) */
            snprintf(what, sizeof what, "decode %d (steps, b64 in, json out)", t);
            both_layers(&cs, 1, 1, "causal", true, true, "json", what);
            break;
        }
        if (t % 10 == 9) {
            snprintf(what, sizeof what, "stats after decode %d", t);
            cJSON_Delete(cs_check_stats(&cs, what));
        }
    }

    /* Block masks: one VAR-like scale (every query sees all new tokens),
     * block named even where m_q == m, and the default for m_q != m. */
    both_layers(&cs, 4, 2, "block", false, true, NULL, "block m=4 m_q=2");
    both_layers(&cs, 3, 3, "block", true, false, NULL, "block m=3 m_q=3 (explicit)");
    both_layers(&cs, 3, 1, NULL, false, true, NULL, "default block m=3 m_q=1");
    /* Causal with fewer queries than tokens: queries are the last m_q. */
    both_layers(&cs, 5, 2, "causal", false, true, "b64", "causal m=5 m_q=2");
    /* Pure queries against the cache (m = 0), default and named block. */
    both_layers(&cs, 0, 3, NULL, false, true, NULL, "pure query m=0 m_q=3");
    both_layers(&cs, 0, 1, "block", true, false, "b64", "pure query m=0 m_q=1 (b64)");
    /* Append only (m_q = 0): an empty "o". */
    both_layers(&cs, 2, 0, "block", false, true, NULL, "append only m=2 m_q=0");
    /* Layers in any order within one request. */
    {
        step_spec s[2] = {cs_spec(&cs, 1, 1, 1, NULL, false), cs_spec(&cs, 0, 1, 1, NULL, false)};
        cs_steps(&cs, s, 2, true, NULL, "steps with layer 1 before layer 0");
        cs_spec_free(&s[0]);
        cs_spec_free(&s[1]);
    }

    /* Stats: exact token counts, and pages/bytes consistent with the page
     * math: each stream needs at least ceil(n * slot payload / page) pages. */
    st = cs_check_stats(&cs, "final stats");
    double pages = kvd_json_num(st, "pages");
    double bytes = kvd_json_num(st, "bytes");
    size_t n = ref_tokens(cs.ref, 0);
    ck_assert_msg(ref_tokens(cs.ref, 1) == n, "test bug: layers out of step");
    size_t payload = 2 * HEAD_DIM * sizeof(float); /* k and v of one slot */
    size_t min_pages_stream = (n * payload + PAGE_BYTES - 1) / PAGE_BYTES;
    ck_assert_msg(pages >= (double)(LAYERS * KV_HEADS * min_pages_stream), "pages %g < %d streams x %zu", pages,
                  LAYERS * KV_HEADS, min_pages_stream);
    ck_assert_msg(bytes == pages * PAGE_BYTES, "bytes %g != pages %g x %d", bytes, pages, PAGE_BYTES);
    ck_assert_msg(kvd_json_num(st, "evicted") == 0, "evicted %g with eviction none", kvd_json_num(st, "evicted"));
    ck_assert_msg(kvd_json_num(st, "steps") >= 1, "steps counter missing");
    ck_assert_msg(kvd_json_num(st, "created_at") > 1.6e9, "created_at is not a Unix time");
    ck_assert_msg(kvd_json_num(st, "last_used_at") >= kvd_json_num(st, "created_at"), "last_used_at < created_at");
    const char *ms = kvd_json_str(st, "memory_scaling");
    ck_assert_msg(ms && strcmp(ms, "n*d") == 0, "memory_scaling %s", ms ? ms : "(none)");
    ck_assert_msg(kvd_json_num(st, "bits_per_coordinate") == 32, "f32 stores 32 bits per coordinate, got %g",
                  kvd_json_num(st, "bits_per_coordinate"));

    /* The pool's view matches the session's, and the list shows it. */
    char *metrics = kvd_metrics_text(port);
    ck_assert_msg(kvd_metric(metrics, "kvd_pool_pages", "state=\"used\"") == pages,
                  "kvd_pool_pages{state=\"used\"} %g != session pages %g",
                  kvd_metric(metrics, "kvd_pool_pages", "state=\"used\""), pages);
    ck_assert_msg(kvd_metric(metrics, "kvd_sessions", NULL) == 1, "kvd_sessions %g",
                  kvd_metric(metrics, "kvd_sessions", NULL));
    /* kvd_step_tokens_total counts one per token per layer (its HELP text),
     * i.e. the appended total without the kv_heads factor. */
    ck_assert_msg(kvd_metric(metrics, "kvd_step_tokens_total", NULL) == kvd_json_num(st, "appended") / KV_HEADS,
                  "kvd_step_tokens_total %g != appended %g / kv_heads %d",
                  kvd_metric(metrics, "kvd_step_tokens_total", NULL), kvd_json_num(st, "appended"), KV_HEADS);
    free(metrics);
    cJSON *list = kvd_get_json(port, "/v1/sessions", 200);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(list, "sessions");
    ck_assert_msg(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == 1, "list holds one session");
    ck_assert_str_eq(kvd_json_str(cJSON_GetArrayItem(arr, 0), "id"), cs.id);
    ck_assert_msg(kvd_json_num(cJSON_GetArrayItem(arr, 0), "tokens") == kvd_json_num(st, "tokens"),
                  "list tokens != stats tokens");
    cJSON_Delete(list);
    cJSON_Delete(st);

    /* DELETE frees every page; the id is gone for every route. */
    kvd_delete_session(port, cs.id);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", cs.id);
    http_response *r = http_request(port, "GET", path, NULL, NULL);
    kvd_expect_error(r, 404, "not_found", NULL, NULL, "GET after DELETE");
    http_response_free(r);
    r = http_request(port, "DELETE", path, NULL, NULL);
    kvd_expect_error(r, 404, "not_found", NULL, NULL, "DELETE after DELETE");
    http_response_free(r);
    step_spec s = cs_spec(&cs, 0, 1, 1, NULL, false);
    char *body = step_body(&s, cs.kv_row, cs.q_row, NULL);
    r = kvd_step(port, cs.id, body);
    kvd_expect_error(r, 404, "not_found", NULL, NULL, "step after DELETE");
    http_response_free(r);
    free(body);
    cs_spec_free(&s);
    metrics = kvd_metrics_text(port);
    ck_assert_msg(kvd_metric(metrics, "kvd_pool_pages", "state=\"used\"") == 0,
                  "pool pages used after DELETE: %g", kvd_metric(metrics, "kvd_pool_pages", "state=\"used\""));
    ck_assert_msg(kvd_metric(metrics, "kvd_sessions", NULL) == 0, "kvd_sessions after DELETE: %g",
                  kvd_metric(metrics, "kvd_sessions", NULL));
    free(metrics);

    cs_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

/* MQA (one kv head for all query heads) with an explicit scale, and MHA
 * (kv_heads == heads) with head_dim 128 and three layers, side by side in one
 * server: sessions must not see each other's tokens. */
START_TEST(mqa_mha_scale)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session mqa, mha;
    cs_create(&mqa, port, 1, 4, 1, 16, 0.5, "\"scale\":0.5", 777, OUTPUT_TOL_REL);
    cs_create(&mha, port, 3, 2, 2, 128, 0, NULL, 778, OUTPUT_TOL_REL);
    cJSON *st = kvd_session_stats(port, mqa.id);
    ck_assert_msg(kvd_json_num(st, "config.scale") == 0.5, "scale 0.5 resolved as %g",
                  kvd_json_num(st, "config.scale"));
    cJSON_Delete(st);

    cs_random_step(&mqa, 0, 9, 9, NULL, false, NULL, "mqa prefill");
    for (long l = 0; l < 3; l++)
        cs_random_step(&mha, l, 11, 11, NULL, true, "b64", "mha prefill");
    for (int t = 0; t < 8; t++) {
        cs_random_step(&mqa, 0, 1, 1, NULL, t % 2 == 0, t % 2 ? "b64" : NULL, "mqa decode");
        step_spec s[3];
        for (long l = 0; l < 3; l++)
            s[l] = cs_spec(&mha, 2 - l, 1, 1, NULL, t % 2 == 1);
        cs_steps(&mha, s, 3, true, NULL, "mha decode (layers 2,1,0)");
        for (int l = 0; l < 3; l++)
            cs_spec_free(&s[l]);
    }
    cs_random_step(&mqa, 0, 0, 2, NULL, false, NULL, "mqa pure query");
    cJSON_Delete(cs_check_stats(&mqa, "mqa stats"));
    cJSON_Delete(cs_check_stats(&mha, "mha stats"));
    kvd_delete_session(port, mqa.id);
    /* The other session is untouched by the delete. */
    cs_random_step(&mha, 1, 1, 1, NULL, false, NULL, "mha after the mqa delete");
    cJSON_Delete(cs_check_stats(&mha, "mha stats after delete"));
    cs_free(&mqa);
    cs_free(&mha);
    kvd_proc_stop_ck(p);
}
END_TEST

/* One "steps" request may name a layer more than once: the entries apply in
 * order, each query sees what the entries before it appended, and each
 * entry's "tokens" is the stream's count after that entry (DESIGN.md §3:
 * "tokens": cached tokens per stream after the step). */
START_TEST(steps_same_layer_twice)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session cs;
    cs_create(&cs, port, 1, 4, 2, 16, 0, NULL, 4711, OUTPUT_TOL_REL);
    step_spec s[3] = {cs_spec(&cs, 0, 2, 2, NULL, false), cs_spec(&cs, 0, 1, 1, NULL, true),
                      cs_spec(&cs, 0, 0, 2, NULL, false)};
    cs_steps(&cs, s, 3, true, NULL, "layer 0 three times in one request");
    cJSON_Delete(cs_check_stats(&cs, "after the repeated layer"));
    for (int i = 0; i < 3; i++)
        cs_spec_free(&s[i]);
    cs_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *decode_suite(void)
{
    Suite *s = suite_create("integration_decode");
    TCase *tc = tcase_create("decode");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, decode_session);
    tcase_add_test(tc, mqa_mha_scale);
    tcase_add_test(tc, steps_same_layer_twice);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(decode_suite)
