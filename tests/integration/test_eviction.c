/* tests/integration/test_eviction.c — eviction policies over HTTP against an
 * exact model of the kept token set (tests/support/ref_cache.h): 5,000 decode
 * steps under "recency" and "l2norm" budgets and a shorter "h2o" run, every
 * step's output compared with double attention over the tokens the policy
 * must have kept, "tokens"/"evicted" per step, per-stream stats, flat memory
 * once the budget is reached, and kvd_evictions_total{policy}. Each test case
 * runs its own kvd. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/cache_session.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

/* Output tolerance relative to max|v|, as in test_decode.c: f32 scores over
 * d = 16 err by ~1e-6, an output by about that times max|v| plus ~n * 2^-24
 * for n <= 257 tokens; a wrong kept set (one token too many or too few)
 * moves an output by ~1/n of the value range, ~4e-3 here, far above this. */
#define OUTPUT_TOL_REL 1e-4
/* l2norm decisions: kvd ranks keys by an f32 norm (about 1 ulp, ~3e-7, from
 * the double norm of the same f32 key). Random data whose largest candidate
 * norm is within this of the next one is redrawn, so no decision checked
 * here could go either way by rounding alone. */
#define L2NORM_TIE_MARGIN 1e-5
/* h2o decisions: kvd sums f32 weights (each within ~1e-6 relative of the
 * double weight: f32 dot products and expf) into double scores; a victim is a
 * smallest score, here below ~20, so its error stays under ~2e-5. Decisions
 * whose two smallest candidate scores differ by less than this are redrawn. */
#define H2O_TIE_MARGIN 1e-4
/* Bytes once the budget is reached: none. A stream gives an emptied tail page
 * back at once (cache/evict.h), so its pages are always ceil(tokens / slots
 * per page), and tokens stay exactly at the budget after every step. */
#define BYTES_FLAT_TOL_PAGES 0

#define PAGE_BYTES 4096
#define HEADS 4
#define KV_HEADS 2
#define HEAD_DIM 16
#define DECODE_STEPS 5000
#define BUDGET 256
#define FLAT_FROM_STEP 300      /* bytes measured here and compared later */
#define STATS_EVERY 500         /* full stats check this often */
#define H2O_STEPS 300
#define H2O_BUDGET 32
#define H2O_SINK 2
#define H2O_RECENT 4
#define CASE_TIMEOUT_S 600

static const char *const server_args[] = {"--page-bytes", "4096", "--memory", "16MiB", "--threads", "2", NULL};

static double session_bytes(int port, const char *id, double *pages)
{
    cJSON *st = kvd_session_stats(port, id);
    double b = kvd_json_num(st, "bytes");
    if (pages)
        *pages = kvd_json_num(st, "pages");
    cJSON_Delete(st);
    return b;
}

/* kvd_evictions_total{policy} equals the evictions the model made and the
 * server's per-stream "evicted" summed. */
static void check_eviction_metric(cache_session *cs, ref_evict_policy policy, const char *what)
{
    cJSON *st = cache_session_check_stats(cs, what);
    double per_stream = 0;
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(st, "layers"), *lo;
    cJSON_ArrayForEach(lo, layers)
    {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(lo, "evicted")) per_stream += e->valuedouble;
    }
    cJSON_Delete(st);
    char labels[64];
    snprintf(labels, sizeof labels, "policy=\"%s\"", cache_policy_name(policy));
    double metric = kvd_metric_now(cs->port, "kvd_evictions_total", labels);
    double want = (double)ref_cache_total_evicted(cs->ref);
    ck_assert_msg(metric == want && per_stream == want,
                  "%s: kvd_evictions_total{%s} = %g, streams' \"evicted\" sum to %g, the model evicted %g", what,
                  labels, metric, per_stream, want);
}

/* 5,000 single-token decode steps under a budget, each checked. */
static void decode_run(ref_evict_policy policy, size_t sink, size_t recent, double margin, uint64_t seed)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    ref_cache_config cfg = {.layers = 1, .heads = HEADS, .kv_heads = KV_HEADS, .head_dim = HEAD_DIM,
                            .policy = policy, .budget = BUDGET, .sink = sink, .recent = recent};
    cache_session cs;
    cache_session_create(&cs, port, &cfg, NULL, seed, OUTPUT_TOL_REL, margin);

    const size_t spp = kvd_slots_per_page(PAGE_BYTES, HEAD_DIM);
    const double flat_pages = (double)(KV_HEADS * kvd_pages_for(BUDGET, spp));
    double flat_bytes = -1;
    char what[128];
    for (size_t t = 1; t <= DECODE_STEPS; t++) {
        snprintf(what, sizeof what, "%s decode step %zu", cache_policy_name(policy), t);
        ref_entry_result r = cache_session_random_step(&cs, 0, 1, 1, "causal", what);
        /* Independent of the model: the budget is reached at step 256 and
         * from then on each step appends one token and evicts one. */
        size_t want_tokens = t < BUDGET ? t : BUDGET;
        ck_assert_msg(r.tokens == want_tokens && r.evicted == (t > BUDGET ? 1u : 0u),
                      "%s: model says tokens %zu evicted %zu", what, r.tokens, r.evicted);
        if (t == FLAT_FROM_STEP) {
            double pages;
            flat_bytes = session_bytes(port, cs.id, &pages);
            ck_assert_msg(pages == flat_pages, "%s: %g pages, expected %d kv heads x ceil(%d / %zu slots) = %g", what,
                          pages, KV_HEADS, BUDGET, spp, flat_pages);
            ck_assert_msg(flat_bytes == pages * PAGE_BYTES, "%s: bytes %g for %g pages of %d", what, flat_bytes,
                          pages, PAGE_BYTES);
        }
        if (t > FLAT_FROM_STEP && (t % STATS_EVERY == 0 || t == DECODE_STEPS)) {
            double b = session_bytes(port, cs.id, NULL);
            ck_assert_msg(fabs(b - flat_bytes) <= BYTES_FLAT_TOL_PAGES * PAGE_BYTES,
                          "%s: bytes %g, %g after step %d: memory must stay flat under a budget", what, b,
                          flat_bytes, FLAT_FROM_STEP);
            cJSON_Delete(cache_session_check_stats(&cs, what));
        }
    }
    check_eviction_metric(&cs, policy, "after the decode run");

    /* A multi-token causal step evicts as many tokens as it appends, all
     * after its attention; a pure query evicts nothing. */
    snprintf(what, sizeof what, "%s prefill-style step of 12", cache_policy_name(policy));
    ref_entry_result r = cache_session_random_step(&cs, 0, 12, 12, "causal", what);
    ck_assert_msg(r.tokens == BUDGET && r.evicted == 12, "%s: model says tokens %zu evicted %zu", what, r.tokens,
                  r.evicted);
    snprintf(what, sizeof what, "%s block step of 5 with 2 queries", cache_policy_name(policy));
    cache_session_random_step(&cs, 0, 5, 2, "block", what);
    snprintf(what, sizeof what, "%s pure query", cache_policy_name(policy));
    r = cache_session_random_step(&cs, 0, 0, 3, "block", what);
    ck_assert_msg(r.tokens == BUDGET && r.evicted == 0, "%s: model says tokens %zu evicted %zu", what, r.tokens,
                  r.evicted);
    check_eviction_metric(&cs, policy, "at the end");
    double pages;
    session_bytes(port, cs.id, &pages);
    ck_assert_msg(pages == flat_pages, "at the end: %g pages, expected %g", pages, flat_pages);
    if (cs.redraws)
        fprintf(stderr, "%s: %zu random steps redrawn for a near tie\n", cache_policy_name(policy), cs.redraws);

    kvd_delete_session(port, cs.id);
    ck_assert_msg(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"") == 0, "pages left after DELETE");
    cache_session_free(&cs);
    kvd_proc_stop_ck(p);
}

START_TEST(recency_5000_steps)
{
    decode_run(REF_EVICT_RECENCY, 4, 0, 0.0, 501);
}
END_TEST

START_TEST(l2norm_5000_steps)
{
    decode_run(REF_EVICT_L2NORM, 4, 8, L2NORM_TIE_MARGIN, 502);
}
END_TEST

/* h2o: scores are the model's own double softmax weights, summed over the
 * group's query heads, queries and steps. Random data, redrawn at near ties
 * (H2O_TIE_MARGIN); multi-query and pure-query steps score too. */
START_TEST(h2o_scores)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    ref_cache_config cfg = {.layers = 2, .heads = HEADS, .kv_heads = KV_HEADS, .head_dim = HEAD_DIM,
                            .policy = REF_EVICT_H2O, .budget = H2O_BUDGET, .sink = H2O_SINK, .recent = H2O_RECENT};
    cache_session cs;
    cache_session_create(&cs, port, &cfg, NULL, 503, OUTPUT_TOL_REL, H2O_TIE_MARGIN);
    char what[128];
    for (size_t t = 1; t <= H2O_STEPS; t++) {
        /* Layer 0: decode, with a 3-token causal step and a pure query now
         * and then; layer 1: a block step of 2 tokens with 1 query. */
        long layer = (long)(t % 2);
        snprintf(what, sizeof what, "h2o step %zu (layer %ld)", t, layer);
        if (layer == 1)
            cache_session_random_step(&cs, 1, 2, 1, "block", what);
        else if (t % 10 == 0)
            cache_session_random_step(&cs, 0, 3, 3, "causal", what);
        else if (t % 14 == 0)
            cache_session_random_step(&cs, 0, 0, 2, "block", what);
        else
            cache_session_random_step(&cs, 0, 1, 1, "causal", what);
        if (t % 50 == 0)
            cJSON_Delete(cache_session_check_stats(&cs, what));
    }
    ck_assert_msg(ref_cache_tokens(cs.ref, 0, 0) == H2O_BUDGET && ref_cache_tokens(cs.ref, 1, 1) == H2O_BUDGET,
                  "test bug: the run never reached the budget");
    check_eviction_metric(&cs, REF_EVICT_H2O, "after the h2o run");
    fprintf(stderr, "h2o: %zu random steps redrawn for a near tie\n", cs.redraws);
    cache_session_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

/* A "steps" request: eviction runs at the end of each entry, so a later
 * entry on the same layer sees the earlier entry's kept set, and each result
 * reports the tokens and evictions as of its own entry. */
START_TEST(steps_form)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    ref_cache_config cfg = {.layers = 2, .heads = HEADS, .kv_heads = KV_HEADS, .head_dim = HEAD_DIM,
                            .policy = REF_EVICT_RECENCY, .budget = 16, .sink = 2, .recent = 3};
    cache_session cs;
    cache_session_create(&cs, port, &cfg, NULL, 504, OUTPUT_TOL_REL, 0);
    struct {
        long layer;
        size_t m, m_q;
        const char *mask;
    } plan[] = {{0, 10, 10, "causal"}, {1, 12, 1, "block"}, {0, 10, 2, "causal"},
                {1, 7, 3, "block"},    {0, 0, 2, "block"},  {0, 1, 1, "causal"}};
    const size_t n = sizeof plan / sizeof plan[0];
    step_spec specs[sizeof plan / sizeof plan[0]];
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < n; i++)
            specs[i] = cache_spec(&cs, plan[i].layer, plan[i].m, plan[i].m_q, plan[i].mask, true);
        ref_entry_result res[sizeof plan / sizeof plan[0]];
        cache_session_steps(&cs, specs, n, res, "steps request");
        if (round == 0)
            ck_assert_msg(res[0].evicted == 0 && res[2].tokens == 16 && res[2].evicted == 4 && res[3].evicted == 3,
                          "test bug: the plan does not evict as intended");
        for (size_t i = 0; i < n; i++)
            cache_spec_free(&specs[i]);
        cJSON_Delete(cache_session_check_stats(&cs, "after a steps request"));
    }
    check_eviction_metric(&cs, REF_EVICT_RECENCY, "after the steps requests");
    cache_session_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

/* Each policy's counter counts only its own sessions. */
START_TEST(metrics_by_policy)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    const ref_evict_policy policies[] = {REF_EVICT_RECENCY, REF_EVICT_L2NORM, REF_EVICT_H2O};
    const size_t n_pol = sizeof policies / sizeof policies[0];
    cache_session cs[3];
    char what[128];
    for (size_t i = 0; i < n_pol; i++) {
        ref_cache_config cfg = {.layers = 1, .heads = 2, .kv_heads = 1, .head_dim = 8, .policy = policies[i],
                                .budget = 10 + i, .sink = 1, .recent = 2};
        cache_session_create(&cs[i], port, &cfg, NULL, 600 + i,
                             OUTPUT_TOL_REL, policies[i] == REF_EVICT_H2O ? H2O_TIE_MARGIN : L2NORM_TIE_MARGIN);
        for (size_t t = 0; t < 20 + 5 * i; t++) {
            snprintf(what, sizeof what, "%s step %zu", cache_policy_name(policies[i]), t);
            cache_session_random_step(&cs[i], 0, 1, 1, NULL, what);
        }
    }
    char *text = kvd_metrics_text(port);
    for (size_t i = 0; i < n_pol; i++) {
        char labels[64];
        snprintf(labels, sizeof labels, "policy=\"%s\"", cache_policy_name(policies[i]));
        double got = kvd_metric(text, "kvd_evictions_total", labels);
        double want = (double)ref_cache_total_evicted(cs[i].ref);
        ck_assert_msg(got == want && want > 0, "kvd_evictions_total{%s} = %g, expected %g", labels, got, want);
        cJSON_Delete(cache_session_check_stats(&cs[i], labels));
        cache_session_free(&cs[i]);
    }
    free(text);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *eviction_suite(void)
{
    Suite *s = suite_create("integration_eviction");
    TCase *tc = tcase_create("eviction");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, recency_5000_steps);
    tcase_add_test(tc, l2norm_5000_steps);
    tcase_add_test(tc, h2o_scores);
    tcase_add_test(tc, steps_form);
    tcase_add_test(tc, metrics_by_policy);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(eviction_suite)
