/* tests/integration/test_pool_exhaustion.c — a tiny pool (64 KiB in 4 KiB
 * pages) filled to the last slot: the step that does not fit gets 503 with
 * Retry-After and code "resource_exhausted" and changes nothing (DESIGN.md
 * §4: the step fails whole, including a "steps" request whose first layer
 * would fit); /readyz turns 503 while fewer than 1% of pages are free; a
 * pure query still works on a full pool; DELETE gives every page back, after
 * which steps succeed again, exactly. Each test case runs its own kvd. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/checked_session.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

/* See tests/integration/test_decode.c for the derivation (here d = 128 and
 * fewer than 50 tokens per stream: the same bound holds). */
#define OUTPUT_TOL_REL 1e-4
#define CASE_TIMEOUT_S 120

#define PAGE_BYTES 4096
#define POOL_PAGES 16   /* --memory 64KiB / --page-bytes 4096 */
/* One f32 slot of head_dim 128 holds 1 KiB of k and v plus metadata: a few
 * slots per page, so the pool fills in tens of tokens. */
#define HEAD_DIM 128
#define HEADS 2
#define KV_HEADS 1
/* Far more steps than a 16-page pool can take; reaching it is a failure. */
#define MAX_FILL_STEPS 400
/* kvd_kv_cache_usage_ratio is printed with 6 decimals. */
#define RATIO_TOL 1e-6

static const char *const server_args[] = {"--memory", "64KiB", "--page-bytes", "4096", "--threads", "2", NULL};

typedef struct snapshot {
    double tokens, appended, steps, pages;
} snapshot;

static snapshot take_snapshot(int port, const char *id)
{
    cJSON *st = kvd_session_stats(port, id);
    snapshot s = {kvd_json_num(st, "tokens"), kvd_json_num(st, "appended"), kvd_json_num(st, "steps"),
                  kvd_json_num(st, "pages")};
    cJSON_Delete(st);
    return s;
}

static void assert_unchanged(int port, const char *id, const snapshot *b, const char *what)
{
    snapshot n = take_snapshot(port, id);
    ck_assert_msg(n.tokens == b->tokens && n.appended == b->appended && n.steps == b->steps && n.pages == b->pages,
                  "%s changed the session: tokens %g->%g appended %g->%g steps %g->%g pages %g->%g", what,
                  b->tokens, n.tokens, b->appended, n.appended, b->steps, n.steps, b->pages, n.pages);
}

/* Checks a 503 pool-exhausted answer. */
static void expect_exhausted(const http_response *r, const char *what)
{
    kvd_expect_error(r, 503, "resource_exhausted", NULL, NULL, what);
    const char *ra = http_header_get(r, "Retry-After");
    ck_assert_msg(ra != NULL, "%s: 503 without Retry-After", what);
    char *end;
    long secs = strtol(ra, &end, 10);
    ck_assert_msg(end != ra && *end == '\0' && secs > 0, "%s: Retry-After '%s' is not a positive integer", what, ra);
}

/* Sends specs without touching the reference; on 200 applies them to the
 * reference and verifies the answer. Returns the status (200, 503, or 413
 * for more pages than the whole pool has, else the test fails); *resp (if
 * non-NULL) keeps the response. */
static int try_steps(checked_session *cs, const step_spec *specs, size_t n, bool multi, const char *what,
                     http_response **resp)
{
    char *body = multi ? steps_body(specs, n, cs->kv_row, cs->q_row, NULL)
                       : step_body(specs, cs->kv_row, cs->q_row, NULL);
    http_response *r = kvd_step(cs->port, cs->id, body);
    free(body);
    ck_assert_msg(r->status == 200 || r->status == 503 || r->status == 413, "%s: status %d: %s", what, r->status,
                  r->status < 0 ? r->error : r->body);
    int status = r->status;
    if (status == 200) {
        double **want;
        body = cs_prepare(cs, specs, n, multi, NULL, &want);
        cJSON *j = http_response_json(r);
        cs_verify(cs, specs, n, multi, NULL, want, j, what);
        cJSON_Delete(j);
        cs_want_free(want, n);
        free(body);
    }
    if (resp)
        *resp = r;
    else
        http_response_free(r);
    return status;
}

/* Random single step; see try_steps. */
static int try_step(checked_session *cs, long layer, size_t m, size_t m_q, const char *what, http_response **resp)
{
    step_spec s = cs_spec(cs, layer, m, m_q, NULL, true);
    int st = try_steps(cs, &s, 1, false, what, resp);
    cs_spec_free(&s);
    return st;
}

/* Steps of m tokens on `layer` until one is refused; checks the refusal
 * (503, Retry-After, session unchanged). Returns the successful steps. */
static int fill_until_refused(checked_session *cs, long layer, size_t m, const char *what)
{
    char label[128];
    for (int i = 0; i < MAX_FILL_STEPS; i++) {
        snapshot before = take_snapshot(cs->port, cs->id);
        snprintf(label, sizeof label, "%s: step %d (m=%zu)", what, i, m);
        http_response *r;
        if (try_step(cs, layer, m, 1, label, &r) == 503) {
            expect_exhausted(r, label);
            http_response_free(r);
            assert_unchanged(cs->port, cs->id, &before, label);
            return i;
        }
        http_response_free(r);
    }
    ck_abort_msg("%s: %d steps of %zu tokens never filled a %d-page pool", what, MAX_FILL_STEPS, m, POOL_PAGES);
    return -1;
}

static void expect_status(int port, const char *path, int status)
{
    http_response *r = http_request(port, "GET", path, NULL, NULL);
    ck_assert_msg(r->status == status, "GET %s: %d, expected %d: %s", path, r->status, status,
                  r->status < 0 ? r->error : r->body);
    http_response_free(r);
}

/* Asserts the pool's used/free pages from /metrics. */
static void expect_pool(int port, double used, const char *what)
{
    char *text = kvd_metrics_text(port);
    double u = kvd_metric(text, "kvd_pool_pages", "state=\"used\"");
    double f = kvd_metric(text, "kvd_pool_pages", "state=\"free\"");
    ck_assert_msg(u == used && f == POOL_PAGES - used, "%s: pool pages used %g free %g, expected %g and %g", what,
                  u, f, used, POOL_PAGES - used);
    double ratio = kvd_metric(text, "kvd_kv_cache_usage_ratio", NULL);
    ck_assert_msg(fabs(ratio - used / POOL_PAGES) <= RATIO_TOL, "%s: kvd_kv_cache_usage_ratio %g, expected %g", what,
                  ratio, used / POOL_PAGES);
    free(text);
}

START_TEST(fill_and_recover)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    cJSON *info = kvd_get_json(port, "/v1/info", 200);
    ck_assert_msg(kvd_json_num(info, "pool.pages") == POOL_PAGES, "pool of %g pages, expected %d",
                  kvd_json_num(info, "pool.pages"), POOL_PAGES);
    ck_assert_msg(kvd_json_num(info, "pool.page_bytes") == PAGE_BYTES, "page_bytes %g",
                  kvd_json_num(info, "pool.page_bytes"));
    cJSON_Delete(info);
    expect_status(port, "/readyz", 200);

    checked_session a;
    cs_create(&a, port, 1, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 2024, OUTPUT_TOL_REL);
    /* Big steps until one is refused, then single tokens until even one is:
     * after that the pool has no free page at all. */
    int big = fill_until_refused(&a, 0, 4, "fill with m=4");
    ck_assert_msg(big >= 1, "not even one 4-token step fit an empty pool");
    fill_until_refused(&a, 0, 1, "fill with m=1");
    cJSON *st = cs_check_stats(&a, "full session");
    ck_assert_msg(kvd_json_num(st, "pages") == POOL_PAGES, "full session holds %g pages of %d",
                  kvd_json_num(st, "pages"), POOL_PAGES);
    cJSON_Delete(st);
    expect_pool(port, POOL_PAGES, "full pool");
    expect_status(port, "/readyz", 503);
    kvd_assert_healthy(port); /* liveness is not readiness */
    char *text = kvd_metrics_text(port);
    ck_assert_msg(kvd_metric(text, "kvd_http_requests_total", "route=\"session_step\",code=\"503\"") >= 2,
                  "the refused steps are counted with code 503");
    free(text);

    /* A full pool still answers queries against what it holds, exactly,
     * and the failed steps left nothing half-appended. */
    ck_assert_int_eq(try_step(&a, 0, 0, 3, "pure query on a full pool", NULL), 200);

    /* Another session: creating it needs no page; its first token does. */
    http_response *r = http_request(port, "POST", "/v1/sessions", KVD_JSON,
                                    "{\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":128}");
    ck_assert_msg(r->status == 201 || r->status == 503, "create on a full pool: %d %s", r->status,
                  r->status < 0 ? r->error : r->body);
    bool b_exists = r->status == 201;
    if (!b_exists) {
        expect_exhausted(r, "create on a full pool");
    } else { /* only a probe: the checked session below replaces it */
        cJSON *j = http_response_json(r);
        ck_assert_msg(kvd_is_session_id(kvd_json_str(j, "id")), "create on a full pool: no id");
        kvd_delete_session(port, kvd_json_str(j, "id"));
        cJSON_Delete(j);
    }
    http_response_free(r);
    checked_session b;
    if (b_exists) {
        cs_create(&b, port, 1, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 2025, OUTPUT_TOL_REL);
        snapshot before = take_snapshot(port, b.id);
        ck_assert_int_eq(try_step(&b, 0, 1, 1, "second session on a full pool", &r), 503);
        expect_exhausted(r, "second session on a full pool");
        http_response_free(r);
        assert_unchanged(port, b.id, &before, "second session's refused step");
        ck_assert_msg(before.tokens == 0 && before.pages == 0, "the second session holds nothing");
    }

    /* DELETE returns every page; the pool is ready again and steps fit. */
    kvd_delete_session(port, a.id);
    expect_pool(port, 0, "after DELETE");
    expect_status(port, "/readyz", 200);
    if (!b_exists)
        cs_create(&b, port, 1, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 2025, OUTPUT_TOL_REL);
    ck_assert_int_eq(try_step(&b, 0, 5, 5, "second session after the DELETE", NULL), 200);
    ck_assert_int_eq(try_step(&b, 0, 1, 1, "second session decode", NULL), 200);
    cJSON_Delete(cs_check_stats(&b, "second session"));

    cs_free(&a);
    cs_free(&b);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(steps_fail_whole)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session a, b;
    cs_create(&a, port, 2, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 11, OUTPUT_TOL_REL);
    cs_create(&b, port, 1, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 12, OUTPUT_TOL_REL);

    /* Learn the slots per page: b alone fills the pool one token at a time,
     * so every page it holds is full. */
    fill_until_refused(&b, 0, 1, "fill b");
    cJSON *st = kvd_session_stats(port, b.id);
    double tokens = kvd_json_num(st, "tokens"), pages = kvd_json_num(st, "pages");
    cJSON_Delete(st);
    ck_assert_msg(pages == POOL_PAGES, "b holds %g of %d pages", pages, POOL_PAGES);
    size_t spp = (size_t)tokens / POOL_PAGES;
    ck_assert_msg(spp >= 1 && (double)(spp * POOL_PAGES) == tokens,
                  "%g tokens in %d full pages is not a whole number of slots per page", tokens, POOL_PAGES);
    ck_assert_msg(spp * (2 * HEAD_DIM * sizeof(float)) <= PAGE_BYTES, "%zu slots of %zu bytes in a %d-byte page",
                  spp, 2 * HEAD_DIM * sizeof(float), PAGE_BYTES);
    kvd_delete_session(port, b.id);
    expect_pool(port, 0, "after deleting b");

    /* Layer 0 alone would fit (POOL_PAGES - 1 pages), layer 1 needs 2 more:
     * the request fails whole and allocates nothing. */
    step_spec s[2] = {cs_spec(&a, 0, spp * (POOL_PAGES - 1), 1, NULL, true), cs_spec(&a, 1, 2 * spp, 1, NULL, true)};
    snapshot before = take_snapshot(port, a.id);
    http_response *r;
    /* More than the whole pool: 413, no Retry-After (issue 10, bug 5). */
    ck_assert_int_eq(try_steps(&a, s, 2, true, "steps over the pool by one page", &r), 413);
    kvd_expect_error(r, 413, "payload_too_large", NULL, "needs 17 pages", "steps over the pool by one page");
    ck_assert_msg(http_header_get(r, "Retry-After") == NULL, "a 413 with Retry-After");
    http_response_free(r);
    assert_unchanged(port, a.id, &before, "the refused steps request");
    expect_pool(port, 0, "after the refused steps request");
    expect_status(port, "/readyz", 200);

    /* The same layer-0 step alone fits; then layer 1 takes the last page. */
    ck_assert_int_eq(try_steps(&a, &s[0], 1, false, "layer 0 alone", NULL), 200);
    expect_pool(port, POOL_PAGES - 1, "after layer 0");
    ck_assert_int_eq(try_step(&a, 1, spp, 1, "layer 1 fills the last page", NULL), 200);
    expect_pool(port, POOL_PAGES, "full again");
    expect_status(port, "/readyz", 503);
    before = take_snapshot(port, a.id);
    ck_assert_int_eq(try_step(&a, 1, 1, 1, "one token more", &r), 503);
    expect_exhausted(r, "one token more");
    http_response_free(r);
    assert_unchanged(port, a.id, &before, "one token more");
    /* Queries over both layers still answer exactly. */
    step_spec qs[2] = {cs_spec(&a, 0, 0, 2, NULL, false), cs_spec(&a, 1, 0, 2, NULL, true)};
    ck_assert_int_eq(try_steps(&a, qs, 2, true, "pure queries on a full pool", NULL), 200);
    cJSON_Delete(cs_check_stats(&a, "a at the end"));

    for (int i = 0; i < 2; i++) {
        cs_spec_free(&s[i]);
        cs_spec_free(&qs[i]);
    }
    kvd_delete_session(port, a.id);
    expect_pool(port, 0, "after deleting a");
    cs_free(&a);
    cs_free(&b);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *pool_suite(void)
{
    Suite *s = suite_create("integration_pool_exhaustion");
    TCase *tc = tcase_create("pool");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, fill_and_recover);
    tcase_add_test(tc, steps_fail_whole);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(pool_suite)
