/* tests/integration/test_fork.c — POST /v1/sessions/{id}/fork over HTTP: a
 * fork of a 10,000-token session shares every page (pool used pages and
 * kvd_pool_cow_copies_total unchanged), the first write into a shared page
 * copies it exactly when page math says so, parent and child then evolve
 * independently (each checked against its own exact reference), deleting the
 * parent leaves the child whole; forks of evicting sessions (recency, l2norm,
 * h2o) keep their policy state; forks of tensor sessions (four, two, a
 * window, a policy, a shadow copy) and subgen sessions (standard and
 * SubGen4Cache, the sketch copied) and KIVI sessions answer byte for byte like a fresh twin fed
 * the same history; a subgen fork the pool cannot copy is a 503; 404 / 400 / 503 (--max-sessions) answers.
 * Each test case runs its own kvd. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/cache_session.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"
#include "tests/support/tensor_body.h"

/* See test_eviction.c: f32 attention against the double reference. Over
 * n = 10,000 tokens the f32 accumulation error grows to ~n * 2^-24 ~ 6e-4 of
 * the output scale in the worst case, ~sqrt(n) * 2^-24 ~ 6e-6 typically; a
 * stray token (a parent's token seen by the child) moves an output by ~1/n of
 * the value range, 1e-4 at 10k: the long case uses the tighter bound below,
 * the short cases the usual one. */
#define OUTPUT_TOL_REL 1e-4
#define LONG_OUTPUT_TOL_REL 2e-5
/* Decision margins for random data, see test_eviction.c. */
#define L2NORM_TIE_MARGIN 1e-5
#define H2O_TIE_MARGIN 1e-4

#define LONG_TOKENS 10000
#define LONG_PREFILL_STEPS 4
#define LONG_PAGE_BYTES 16384
#define SHORT_PAGE_BYTES 4096
#define HEAD_DIM 8
#define INDEPENDENT_STEPS 10
#define MAX_SESSIONS 2
#define CASE_TIMEOUT_S 300

static const char *const long_args[] = {"--page-bytes", "16384", "--memory", "64MiB", "--threads", "2", NULL};
static const char *const short_args[] = {"--page-bytes", "4096", "--memory", "8MiB", "--threads", "2", NULL};

typedef struct pool_state {
    double used, free, copies;
} pool_state;

static pool_state pool_now(int port)
{
    char *text = kvd_metrics_text(port);
    pool_state s = {kvd_metric(text, "kvd_pool_pages", "state=\"used\""),
                    kvd_metric(text, "kvd_pool_pages", "state=\"free\""),
                    kvd_metric(text, "kvd_pool_cow_copies_total", NULL)};
    free(text);
    return s;
}

static void expect_pool(int port, double used, double copies, const char *what)
{
    pool_state s = pool_now(port);
    ck_assert_msg(s.used == used && s.copies == copies, "%s: pool used %g cow copies %g, expected %g and %g", what,
                  s.used, s.copies, used, copies);
}

/* POST /v1/sessions/{id}/fork with the given body (NULL: none, no
 * Content-Type). Returns the response (caller frees). */
static http_response *fork_request(int port, const char *id, const char *body)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", id);
    return http_request(port, "POST", path, body ? KVD_JSON : NULL, body);
}

/* Forks parent, asserting 201, {"id": new, "parent": parent, "config":
 * parent's config}. Returns the child id (caller frees). */
static char *fork_ok(int port, const char *parent, const char *body)
{
    http_response *r = fork_request(port, parent, body);
    ck_assert_msg(r->status == 201, "fork %s with body %s: status %d: %s", parent, body ? body : "(none)", r->status,
                  r->status < 0 ? r->error : r->body);
    cJSON *j = http_response_json(r);
    const char *id = kvd_json_str(j, "id"), *par = kvd_json_str(j, "parent");
    ck_assert_msg(kvd_is_session_id(id) && strcmp(id, parent) != 0, "fork: bad child id in %s", r->body);
    ck_assert_msg(par && strcmp(par, parent) == 0, "fork: \"parent\" is %s, expected %s", par ? par : "(none)",
                  parent);
    cJSON *pst = kvd_session_stats(port, parent);
    ck_assert_msg(cJSON_Compare(kvd_json_at(pst, "config"), kvd_json_at(j, "config"), true),
                  "fork: the child's config differs from the parent's: %s", r->body);
    cJSON_Delete(pst);
    char *out = strdup(id);
    ck_assert_ptr_nonnull(out);
    cJSON_Delete(j);
    http_response_free(r);
    return out;
}

typedef struct counts {
    double tokens, appended, steps, pages, shared;
} counts;

static counts counts_of(int port, const char *id)
{
    cJSON *st = kvd_session_stats(port, id);
    counts c = {kvd_json_num(st, "tokens"), kvd_json_num(st, "appended"), kvd_json_num(st, "steps"),
                kvd_json_num(st, "pages"), kvd_json_num(st, "shared_pages")};
    cJSON_Delete(st);
    return c;
}

static void decode(cache_session *cs, const char *who, size_t i)
{
    char what[96];
    snprintf(what, sizeof what, "%s decode %zu", who, i);
    cache_session_random_step(cs, 0, 1, 1, "causal", what);
}

/* Pages the pool holds for a parent and a child that forked at `at` tokens
 * and each appended since (no eviction): the pages full at the fork are never
 * written, so they stay shared; every other page is private to one side. */
static double expected_used(size_t at, size_t parent_tokens, size_t child_tokens, size_t spp)
{
    size_t shared = at / spp;
    return (double)(kvd_pages_for(parent_tokens, spp) + kvd_pages_for(child_tokens, spp) - shared);
}

START_TEST(fork_10k)
{
    kvd_proc *p = kvd_proc_start_ck(long_args);
    int port = kvd_proc_port(p);
    ref_cache_config cfg = {.layers = 1, .heads = 1, .kv_heads = 1, .head_dim = HEAD_DIM, .policy = REF_EVICT_NONE};
    cache_session par;
    cache_session_create(&par, port, &cfg, NULL, 71, LONG_OUTPUT_TOL_REL, 0);
    char what[96];
    for (int i = 0; i < LONG_PREFILL_STEPS; i++) {
        snprintf(what, sizeof what, "prefill %d", i);
        cache_session_random_step(&par, 0, LONG_TOKENS / LONG_PREFILL_STEPS, 1, "block", what);
    }
    const size_t spp = kvd_slots_per_page(LONG_PAGE_BYTES, HEAD_DIM);
    const double pages0 = (double)kvd_pages_for(LONG_TOKENS, spp);
    counts pc = counts_of(port, par.id);
    ck_assert_msg(pc.tokens == LONG_TOKENS && pc.pages == pages0 && pc.shared == 0,
                  "parent: tokens %g pages %g shared %g, expected %d, ceil(%d / %zu) = %g, 0", pc.tokens, pc.pages,
                  pc.shared, LONG_TOKENS, LONG_TOKENS, spp, pages0);
    expect_pool(port, pages0, 0, "before the fork");

    /* The fork copies no page. */
    char *child_id = fork_ok(port, par.id, NULL);
    expect_pool(port, pages0, 0, "after the fork");
    counts cc = counts_of(port, child_id);
    ck_assert_msg(cc.tokens == LONG_TOKENS && cc.appended == LONG_TOKENS && cc.pages == pages0 && cc.shared == pages0,
                  "child: tokens %g appended %g pages %g shared %g", cc.tokens, cc.appended, cc.pages, cc.shared);
    counts pc1 = counts_of(port, par.id);
    ck_assert_msg(pc1.tokens == pc.tokens && pc1.steps == pc.steps && pc1.shared == pages0,
                  "parent after the fork: tokens %g steps %g shared %g", pc1.tokens, pc1.steps, pc1.shared);
    cache_session child;
    cache_session_adopt(&child, port, child_id, par.ref, 72, LONG_OUTPUT_TOL_REL, 0);
    cJSON_Delete(cache_session_check_stats(&child, "child after the fork"));

    /* First write of the child: its tail page is copied if it is partly
     * full (the new token goes into it); if it is exactly full the token
     * goes into a new page and nothing is copied. Either way one page more. */
    const double tail_copies = LONG_TOKENS % spp != 0 ? 1 : 0;
    decode(&child, "child", 0);
    expect_pool(port, pages0 + 1, tail_copies, "after the child's first step");
    counts pc2 = counts_of(port, par.id);
    ck_assert_msg(pc2.tokens == pc.tokens && pc2.appended == pc.appended && pc2.steps == pc.steps,
                  "the child's step changed the parent: tokens %g appended %g steps %g", pc2.tokens, pc2.appended,
                  pc2.steps);
    /* The parent's tail: no longer shared once the child copied it (its
     * reference count is back to 1), or full: no copy either way. */
    decode(&par, "parent", 0);
    expect_pool(port, expected_used(LONG_TOKENS, LONG_TOKENS + 1, LONG_TOKENS + 1, spp), tail_copies,
                "after the parent's first step");

    /* Both sides go on independently: each output matches its own
     * reference, so neither sees the other's tokens. */
    for (size_t i = 1; i <= INDEPENDENT_STEPS; i++) {
        decode(&child, "child", i);
        decode(&par, "parent", i);
        if (i % 2 == 0)
            decode(&par, "parent extra", i);
        expect_pool(port,
                    expected_used(LONG_TOKENS, ref_cache_total_tokens(par.ref), ref_cache_total_tokens(child.ref), spp),
                    tail_copies, "independent steps");
    }
    /* A block step with several queries over each side. */
    cache_session_random_step(&par, 0, 3, 2, "block", "parent block step");
    cache_session_random_step(&child, 0, 0, 2, "block", "child pure query");
    cJSON_Delete(cache_session_check_stats(&par, "parent"));
    cJSON_Delete(cache_session_check_stats(&child, "child"));

    /* Deleting the parent leaves the child whole. */
    kvd_delete_session(port, par.id);
    expect_pool(port, (double)kvd_pages_for(ref_cache_total_tokens(child.ref), spp), tail_copies,
                "after deleting the parent");
    for (size_t i = 0; i < 3; i++)
        decode(&child, "child after the parent's delete", i);
    cache_session_random_step(&child, 0, 0, 3, "block", "child pure query after the parent's delete");
    cJSON_Delete(cache_session_check_stats(&child, "child at the end"));
    expect_pool(port, (double)kvd_pages_for(ref_cache_total_tokens(child.ref), spp), tail_copies,
                "child alone");
    kvd_delete_session(port, child.id);
    expect_pool(port, 0, tail_copies, "after deleting both");

    free(child_id);
    cache_session_free(&par);
    cache_session_free(&child);
    kvd_proc_stop_ck(p);
}
END_TEST

/* Page math for both tails: a fork of a session whose tail page is exactly
 * full copies nothing on either side's first write; one whose tail holds a
 * single token copies it once (for the first writer only). */
START_TEST(cow_page_math)
{
    kvd_proc *p = kvd_proc_start_ck(short_args);
    int port = kvd_proc_port(p);
    const size_t spp = kvd_slots_per_page(SHORT_PAGE_BYTES, HEAD_DIM);
    const size_t sizes[] = {3 * spp, 3 * spp + 1};
    double copies = 0;
    for (size_t k = 0; k < 2; k++) {
        const size_t n = sizes[k];
        ref_cache_config cfg = {.layers = 1, .heads = 2, .kv_heads = 1, .head_dim = HEAD_DIM,
                                .policy = REF_EVICT_NONE};
        cache_session par;
        cache_session_create(&par, port, &cfg, NULL, 80 + k, OUTPUT_TOL_REL, 0);
        cache_session_random_step(&par, 0, n, 2, "block", "prefill");
        const double pages = (double)kvd_pages_for(n, spp);
        ck_assert_msg(counts_of(port, par.id).pages == pages, "%zu tokens: pages %g, expected %g", n,
                      counts_of(port, par.id).pages, pages);
        expect_pool(port, pages, copies, "before the fork");
        /* {} with Content-Type application/json is an empty fork body too. */
        char *child_id = fork_ok(port, par.id, "{}");
        expect_pool(port, pages, copies, "after the fork");
        cache_session child;
        cache_session_adopt(&child, port, child_id, par.ref, 90 + k, OUTPUT_TOL_REL, 0);

        const double tail = n % spp != 0 ? 1 : 0;
        decode(&child, "child", 0);
        copies += tail;
        expect_pool(port, pages + 1, copies, n % spp ? "child writes into the shared tail"
                                                     : "child writes past a full shared tail");
        decode(&par, "parent", 0);
        expect_pool(port, expected_used(n, n + 1, n + 1, spp), copies, "parent's first write");
        for (size_t i = 1; i < 4; i++) {
            decode(&par, "parent", i);
            decode(&child, "child", i);
        }
        expect_pool(port, expected_used(n, n + 4, n + 4, spp), copies, "four steps each");
        cJSON_Delete(cache_session_check_stats(&child, "child"));
        kvd_delete_session(port, child.id);
        kvd_delete_session(port, par.id);
        expect_pool(port, 0, copies, "after deleting both");
        free(child_id);
        cache_session_free(&par);
        cache_session_free(&child);
    }
    kvd_proc_stop_ck(p);
}
END_TEST

/* A fork of an evicting session keeps the kept set and the policy's state
 * (h2o scores, the recent window) as of the fork; both sides then evict
 * independently, with holes written into shared pages. */
START_TEST(fork_evicting)
{
    kvd_proc *p = kvd_proc_start_ck(short_args);
    int port = kvd_proc_port(p);
    const ref_evict_policy policies[] = {REF_EVICT_RECENCY, REF_EVICT_L2NORM, REF_EVICT_H2O};
    const size_t spp = kvd_slots_per_page(SHORT_PAGE_BYTES, HEAD_DIM);
    for (size_t k = 0; k < sizeof policies / sizeof policies[0]; k++) {
        const char *name = cache_policy_name(policies[k]);
        double margin = policies[k] == REF_EVICT_H2O ? H2O_TIE_MARGIN : L2NORM_TIE_MARGIN;
        /* Three pages' worth of budget, the last page partly full. */
        ref_cache_config cfg = {.layers = 1, .heads = 4, .kv_heads = 2, .head_dim = HEAD_DIM, .policy = policies[k],
                                .budget = 2 * spp + spp / 2, .sink = 3, .recent = 5};
        cache_session par;
        cache_session_create(&par, port, &cfg, NULL, 100 + k, OUTPUT_TOL_REL, margin);
        char what[96];
        for (size_t i = 0; i < cfg.budget + 20; i++) {
            snprintf(what, sizeof what, "%s parent before the fork, step %zu", name, i);
            cache_session_random_step(&par, 0, 1, 1, "causal", what);
        }
        pool_state before = pool_now(port);
        char *child_id = fork_ok(port, par.id, NULL);
        pool_state after = pool_now(port);
        ck_assert_msg(after.used == before.used && after.copies == before.copies,
                      "%s: the fork changed the pool: used %g -> %g, copies %g -> %g", name, before.used, after.used,
                      before.copies, after.copies);
        cache_session child;
        cache_session_adopt(&child, port, child_id, par.ref, 110 + k, OUTPUT_TOL_REL, margin);
        cJSON_Delete(cache_session_check_stats(&child, "evicting child after the fork"));
        for (size_t i = 0; i < 40; i++) {
            snprintf(what, sizeof what, "%s child step %zu", name, i);
            cache_session_random_step(&child, 0, 1 + i % 3, 1, "block", what);
            snprintf(what, sizeof what, "%s parent step %zu", name, i);
            cache_session_random_step(&par, 0, 1, 1, "causal", what);
        }
        pool_state end = pool_now(port);
        ck_assert_msg(end.copies > before.copies, "%s: writes into shared pages copied none", name);
        cJSON_Delete(cache_session_check_stats(&par, "evicting parent"));
        cJSON_Delete(cache_session_check_stats(&child, "evicting child"));
        /* Every page accounted for: the child alone holds what it says. */
        kvd_delete_session(port, par.id);
        counts cc = counts_of(port, child.id);
        ck_assert_msg(pool_now(port).used == cc.pages, "%s: pool used %g after deleting the parent, child holds %g",
                      name, pool_now(port).used, cc.pages);
        snprintf(what, sizeof what, "%s child after the parent's delete", name);
        cache_session_random_step(&child, 0, 2, 2, "causal", what);
        kvd_delete_session(port, child.id);
        ck_assert_msg(pool_now(port).used == 0, "%s: pages left after deleting both", name);
        free(child_id);
        cache_session_free(&par);
        cache_session_free(&child);
    }
    kvd_proc_stop_ck(p);
}
END_TEST

/* Tensor session forks: create bodies (one layer, 2 heads, 1 kv head, d 8). */
#define TENSOR_SHAPE "\"attention\":\"tensor\",\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":8"
#define SUBGEN_CACHE "\"cache\":{\"eviction\":\"subgen\",\"sink\":2,\"recent\":3,\"cluster_samples\":4," \
                     "\"value_samples\":8},\"seed\":9"
static const char *const tensor_cases[] = {
    /* subgen (standard attention, then SubGen4Cache): the sketch is copied */
    "{\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":8,\"shadow\":true," SUBGEN_CACHE "}",
    "{" TENSOR_SHAPE ",\"shadow\":true," SUBGEN_CACHE "}",
    "{" TENSOR_SHAPE ",\"tensor_cache\":\"four\"}",
    "{" TENSOR_SHAPE ",\"tensor_cache\":\"two\"}",
    "{" TENSOR_SHAPE ",\"tensor_cache\":\"four\",\"window\":5,\"shadow\":true}",
    "{" TENSOR_SHAPE ",\"tensor_cache\":\"four\",\"shadow\":true,"
    "\"cache\":{\"eviction\":\"h2o\",\"budget\":6,\"sink\":1,\"recent\":2}}",
    "{" TENSOR_SHAPE ",\"tensor_cache\":\"two\",\"cache\":{\"eviction\":\"l2norm\",\"budget\":6,\"sink\":1,\"recent\":2}}",
    /* KIVI: the residual forks too */
    "{\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":8,\"shadow\":true,"
    "\"cache\":{\"dtype\":\"kivi4\",\"group\":4,\"residual\":4}}",
    "{\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":8,"
    "\"cache\":{\"dtype\":\"kivi2\",\"group\":4,\"residual\":4,\"eviction\":\"h2o\",\"budget\":9,\"sink\":1,\"recent\":2}}",
    "{" TENSOR_SHAPE ",\"tensor_cache\":\"two\",\"cache\":{\"dtype\":\"kivi4\",\"group\":4,\"residual\":4,"
    "\"eviction\":\"recency\",\"budget\":9,\"sink\":1}}",
};

/* One tensor step of m tokens and m causal queries drawn from seed, sent to
 * id; returns the answer's text (asserting 200; caller frees). */
static bool tensor; /* the case's sessions take tensor steps */

static char *tensor_send(int port, const char *id, size_t m, uint64_t seed)
{
    rng r;
    rng_seed(&r, seed);
    float *t[5];
    for (int a = 0; a < 4; a++)
        t[a] = rng_tensor(&r, m * HEAD_DIM, -1, 1);
    t[4] = rng_tensor(&r, m * 2 * HEAD_DIM, -2, 2);
    const tensor_step_spec sp = {.layer = 0, .k1 = t[0], .k2 = t[1], .v1 = t[2], .v2 = t[3], .m = m,
                                 .q = t[4], .m_q = m, .mask = "causal", .b64 = true};
    const step_spec ss = {.layer = 0, .k = t[0], .v = t[2], .m = m, .q = t[4], .m_q = m, .mask = "causal",
                          .b64 = true};
    char *body = tensor ? tensor_step_body(&sp, HEAD_DIM, 2 * HEAD_DIM, "b64")
                        : step_body(&ss, HEAD_DIM, 2 * HEAD_DIM, "b64");
    http_response *resp = kvd_step(port, id, body);
    ck_assert_msg(resp->status == 200, "tensor step on %s: %d %s", id, resp->status,
                  resp->status < 0 ? resp->error : resp->body);
    char *out = strdup(resp->body);
    ck_assert_ptr_nonnull(out);
    http_response_free(resp);
    free(body);
    for (int a = 0; a < 5; a++)
        free(t[a]);
    return out;
}

static void expect_same(char *a, char *b, bool same, const char *what, size_t i)
{
    ck_assert_msg((strcmp(a, b) == 0) == same, "%s %zu: answers %s:\n%s\n%s", what, i, same ? "differ" : "agree",
                  a, b);
    free(a);
    free(b);
}

/* Parent P and child C (its fork) each take their own steps; fresh twins
 * FP and FC, fed the same history and then the same steps, answer byte for
 * byte alike (outputs, tokens, evicted, shadow error). The child steps
 * first each round: a write of the child's reaching the parent would show in
 * the parent's next answer. Deleting P leaves C answering like FC. */
START_TEST(fork_tensor)
{
    kvd_proc *p = kvd_proc_start_ck(short_args);
    int port = kvd_proc_port(p);
    const char *create = tensor_cases[_i];
    tensor = strstr(create, "\"tensor\"") != NULL;
    char *par = kvd_create_session(port, create, NULL);
    char *fp = kvd_create_session(port, create, NULL);
    char *fc = kvd_create_session(port, create, NULL);
    static const size_t history[] = {3, 1, 4, 1, 6}, after[] = {1, 2, 1, 3, 1, 1};
    for (size_t i = 0; i < sizeof history / sizeof *history; i++) {
        expect_same(tensor_send(port, par, history[i], 10 + i), tensor_send(port, fp, history[i], 10 + i), true,
                    "history (parent and its twin)", i);
        free(tensor_send(port, fc, history[i], 10 + i));
    }
    pool_state before = pool_now(port);
    char *child = fork_ok(port, par, NULL);
    pool_state forked = pool_now(port);
    ck_assert_msg(forked.copies == before.copies, "%s: the fork copied pages: %g -> %g", create, before.copies,
                  forked.copies);
    counts cc = counts_of(port, child);
    /* every page shared, but a subgen sketch's: copied at once */
    const bool subgen = strstr(create, "subgen") != NULL;
    ck_assert_msg((subgen ? cc.shared < cc.pages : cc.shared == cc.pages) && cc.shared > 0,
                  "%s: child shares %g of %g pages", create, cc.shared, cc.pages);
    ck_assert_msg(forked.used == before.used + (subgen ? cc.pages - cc.shared : 0),
                  "%s: the fork took %g pages", create, forked.used - before.used);
    for (size_t i = 0; i < sizeof after / sizeof *after; i++) {
        char *oc = tensor_send(port, child, after[i], 200 + i);
        char *op = tensor_send(port, par, after[i], 100 + i);
        ck_assert_msg(strcmp(oc, op) != 0, "%s: parent and child answered alike", create);
        expect_same(oc, tensor_send(port, fc, after[i], 200 + i), true, "child against its twin", i);
        expect_same(op, tensor_send(port, fp, after[i], 100 + i), true, "parent against its twin", i);
    }
    ck_assert_msg(pool_now(port).copies > before.copies, "%s: writes into shared pages copied none", create);
    kvd_delete_session(port, par);
    for (size_t i = 0; i < 2; i++)
        expect_same(tensor_send(port, child, 2, 300 + i), tensor_send(port, fc, 2, 300 + i), true,
                    "child after the parent's delete", i);
    kvd_delete_session(port, child);
    kvd_delete_session(port, fp);
    kvd_delete_session(port, fc);
    ck_assert_msg(pool_now(port).used == 0, "%s: pages left after deleting every session", create);
    free(par);
    free(fp);
    free(fc);
    free(child);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(fork_errors)
{
    kvd_proc *p = kvd_proc_start_ck(short_args);
    int port = kvd_proc_port(p);
    http_response *r = fork_request(port, "0123456789abcdef0123456789abcdef", NULL);
    kvd_expect_error(r, 404, "not_found", NULL, NULL, "fork of an unknown id");
    http_response_free(r);

    char *id = kvd_create_session(port, "{\"layers\":1,\"heads\":1,\"head_dim\":8}", NULL);
    cJSON *before = kvd_session_stats(port, id);
    r = fork_request(port, id, "{\"x\":1}");
    kvd_expect_error(r, 400, "invalid_argument", "x", NULL, "fork with an unknown field");
    http_response_free(r);
    r = fork_request(port, id, "{\"cache\":{\"budget\":4}}");
    kvd_expect_error(r, 400, "invalid_argument", "cache", NULL, "fork with a create option");
    http_response_free(r);
    r = fork_request(port, id, "[1");
    kvd_expect_error(r, 400, "invalid_argument", NULL, NULL, "fork with malformed JSON");
    http_response_free(r);
    /* Nothing was created by the refused forks. */
    cJSON *list = kvd_get_json(port, "/v1/sessions", 200);
    ck_assert_msg(kvd_json_num(list, "total") == 1, "refused forks created sessions: total %g",
                  kvd_json_num(list, "total"));
    cJSON_Delete(list);
    cJSON *after = kvd_session_stats(port, id);
    ck_assert_msg(kvd_json_num(after, "steps") == kvd_json_num(before, "steps"), "refused forks changed the parent");
    cJSON_Delete(before);
    cJSON_Delete(after);

    /* A deleted session cannot be forked. */
    kvd_delete_session(port, id);
    r = fork_request(port, id, NULL);
    kvd_expect_error(r, 404, "not_found", NULL, NULL, "fork of a deleted session");
    http_response_free(r);
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(fork_max_sessions)
{
    static const char *const args[] = {"--page-bytes", "4096", "--memory", "8MiB", "--max-sessions", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    ref_cache_config cfg = {.layers = 1, .heads = 2, .kv_heads = 1, .head_dim = HEAD_DIM, .policy = REF_EVICT_NONE};
    cache_session a;
    cache_session_create(&a, port, &cfg, NULL, 120, OUTPUT_TOL_REL, 0);
    cache_session_random_step(&a, 0, 7, 7, "causal", "prefill a");
    char *b = fork_ok(port, a.id, NULL);
    pool_state before = pool_now(port);
    http_response *r = fork_request(port, a.id, NULL);
    kvd_expect_error(r, 503, "resource_exhausted", NULL, NULL, "fork beyond --max-sessions 2");
    http_response_free(r);
    r = fork_request(port, b, "{}");
    kvd_expect_error(r, 503, "resource_exhausted", NULL, NULL, "fork of the fork beyond --max-sessions 2");
    http_response_free(r);
    r = http_request(port, "POST", "/v1/sessions", KVD_JSON, "{\"layers\":1,\"heads\":1,\"head_dim\":8}");
    kvd_expect_error(r, 503, "resource_exhausted", NULL, NULL, "create beyond --max-sessions 2");
    http_response_free(r);
    pool_state after = pool_now(port);
    ck_assert_msg(after.used == before.used, "refused forks changed the pool: %g -> %g", before.used, after.used);
    cJSON *list = kvd_get_json(port, "/v1/sessions", 200);
    ck_assert_msg(kvd_json_num(list, "total") == MAX_SESSIONS, "total %g sessions", kvd_json_num(list, "total"));
    cJSON_Delete(list);

    /* Room again after a delete; the parent still answers exactly. */
    kvd_delete_session(port, b);
    char *c = fork_ok(port, a.id, NULL);
    cache_session child;
    cache_session_adopt(&child, port, c, a.ref, 121, OUTPUT_TOL_REL, 0);
    decode(&a, "parent", 0);
    decode(&child, "child", 0);
    free(b);
    free(c);
    cache_session_free(&a);
    cache_session_free(&child);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *fork_suite(void)
{
    Suite *s = suite_create("integration_fork");
    TCase *tc = tcase_create("fork");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, fork_10k);
    tcase_add_test(tc, cow_page_math);
    tcase_add_test(tc, fork_evicting);
    tcase_add_loop_test(tc, fork_tensor, 0, (int)(sizeof tensor_cases / sizeof tensor_cases[0]));
    tcase_add_test(tc, fork_errors);
    tcase_add_test(tc, fork_max_sessions);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(fork_suite)
