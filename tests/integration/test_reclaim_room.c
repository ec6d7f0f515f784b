/* tests/integration/test_reclaim_room.c — --on-full evict takes tokens only
 * when the reclaim makes room, over HTTP against a real kvd (--memory 128KiB
 * in 4 KiB pages): a step, or a batch item, that needs more pages than all
 * idle sessions could give answers 503 and every idle session keeps all its
 * tokens; one that fits still reclaims the least recently used first. */
#define _GNU_SOURCE
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/cache_session.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"
#include "tests/integration/tiny_steps.h"

#define SPP kvd_slots_per_page(4096, HEAD_DIM) /* tokens per 4 KiB page */
#define IDLE_PAGES 3 /* each idle session: 3 full pages; reclaim keeps 1 (its sinks) */
#define GAIN 2       /* pages a reclaim of one idle session frees */
#define FREE_LEFT 2  /* free pages once the plain session is filled */

/* A session's stats: tokens and evicted (GET touches it). */
static void stats(int port, const char *id, double *tok, double *evicted)
{
    cJSON *j = kvd_session_stats(port, id);
    *tok = kvd_json_num(j, "tokens");
    *evicted = kvd_json_num(j, "evicted");
    cJSON_Delete(j);
}

static void expect_stats(int port, const char *id, double tok, double evicted, const char *what)
{
    double t, e;
    stats(port, id, &t, &e);
    ck_assert_msg(t == tok && e == evicted, "%s: tokens %g evicted %g, expected %g and %g", what, t, e, tok,
                  evicted);
}

static double free_pages(int port)
{
    return kvd_metric_now(port, "kvd_pool_pages", "state=\"free\"");
}

typedef struct setup {
    kvd_proc *proc;
    int port;
    char *l1, *l2, *p; /* idle recency sessions (l1 least recently used), the stepper */
} setup;

/* l1 then l2 hold IDLE_PAGES full pages each; p fills the pool up to
 * FREE_LEFT free pages. Reclaim could free GAIN pages from each idle one. */
static void start(setup *s)
{
    const char *args[] = {"--page-bytes", "4096", "--memory", "128KiB", "--threads", "2",
                          "--on-full", "evict", NULL};
    s->proc = kvd_proc_start_ck(args);
    s->port = kvd_proc_port(s->proc);
    s->l1 = kvd_create_session(s->port, EVICTABLE, NULL);
    s->l2 = kvd_create_session(s->port, EVICTABLE, NULL);
    s->p = kvd_create_session(s->port, EVICTABLE, NULL); /* same SPP; never a candidate for its own steps */
    fill(s->port, s->l1, IDLE_PAGES * SPP);
    fill(s->port, s->l2, IDLE_PAGES * SPP);
    const double f = free_pages(s->port);
    ck_assert(f > FREE_LEFT);
    ck_assert_double_eq(f, 32 - 2 * IDLE_PAGES); /* SPP is kvd's */
    fill(s->port, s->p, ((size_t)f - FREE_LEFT) * SPP);
    ck_assert_double_eq(free_pages(s->port), FREE_LEFT);
    /* read in LRU order, so l1 stays the least recently used */
    expect_stats(s->port, s->l1, IDLE_PAGES * SPP, 0, "l1 filled");
    expect_stats(s->port, s->l2, IDLE_PAGES * SPP, 0, "l2 filled");
}

static void stop(setup *s)
{
    free(s->l1);
    free(s->l2);
    free(s->p);
    kvd_proc_stop_ck(s->proc);
}

/* A step on p of `pages` whole pages; its status. */
static int step_pages(const setup *s, size_t pages)
{
    char *body = entry(NULL, pages * SPP, false);
    http_response *r = kvd_step(s->port, s->p, body);
    free(body);
    const int st = r->status;
    if (st == 503)
        kvd_expect_error(r, 503, "resource_exhausted", NULL, NULL, "step past what reclaim could free");
    http_response_free(r);
    return st;
}

static double reclaimed(int port)
{
    return kvd_metric_now(port, "kvd_reclaimed_tokens_total", NULL);
}

START_TEST(step_that_reclaim_cannot_fit_takes_nothing)
{
    setup s;
    start(&s);
    /* One page more than free + both idle sessions' reclaim: 503, nothing taken. */
    ck_assert_int_eq(step_pages(&s, FREE_LEFT + 2 * GAIN + 1), 503);
    expect_stats(s.port, s.l1, IDLE_PAGES * SPP, 0, "l1 after the refused step");
    expect_stats(s.port, s.l2, IDLE_PAGES * SPP, 0, "l2 after the refused step");
    ck_assert_double_eq(free_pages(s.port), FREE_LEFT);
    ck_assert_double_eq(reclaimed(s.port), 0);
    ck_assert_double_eq(kvd_metric_now(s.port, "kvd_rejected_total", "reason=\"pool_full\""), 1);

    /* Fits with the least recently used one's pages: only l1 is reclaimed. */
    ck_assert_int_eq(step_pages(&s, FREE_LEFT + GAIN), 200);
    expect_stats(s.port, s.l1, SINK, IDLE_PAGES * SPP - SINK, "l1 reclaimed");
    expect_stats(s.port, s.l2, IDLE_PAGES * SPP, 0, "l2 not needed");
    ck_assert_double_eq(free_pages(s.port), 0);

    /* No free page, l2 could give GAIN: one more than that is refused, l2 whole. */
    ck_assert_int_eq(step_pages(&s, GAIN + 1), 503);
    expect_stats(s.port, s.l2, IDLE_PAGES * SPP, 0, "l2 after the second refusal");
    ck_assert_double_eq(reclaimed(s.port), IDLE_PAGES * SPP - SINK);
    /* Exactly what l2 gives: reclaimed, 200. */
    ck_assert_int_eq(step_pages(&s, GAIN), 200);
    expect_stats(s.port, s.l2, SINK, IDLE_PAGES * SPP - SINK, "l2 reclaimed");
    ck_assert_double_eq(reclaimed(s.port), 2 * (IDLE_PAGES * SPP - SINK));
    ck_assert_double_eq(kvd_metric_now(s.port, "kvd_rejected_total", "reason=\"pool_full\""), 2);
    stop(&s);
}
END_TEST

static double item_status(const cJSON *j, int i)
{
    return kvd_json_num(cJSON_GetArrayItem(kvd_json_at(j, "steps"), i), "status");
}

START_TEST(batch_item_that_reclaim_cannot_fit_takes_nothing)
{
    setup s;
    start(&s);
    /* item 0 needs more than free + both reclaims; item 1 fits with l1's */
    char *items[2] = {entry(s.p, (FREE_LEFT + 2 * GAIN + 1) * SPP, false),
                      entry(s.p, (FREE_LEFT + GAIN) * SPP, false)};
    cJSON *j = kvd_batch_ok(s.port, items, 1);
    ck_assert_double_eq(item_status(j, 0), 503);
    cJSON_Delete(j);
    expect_stats(s.port, s.l1, IDLE_PAGES * SPP, 0, "l1 after the refused item");
    expect_stats(s.port, s.l2, IDLE_PAGES * SPP, 0, "l2 after the refused item");
    ck_assert_double_eq(free_pages(s.port), FREE_LEFT);
    ck_assert_double_eq(reclaimed(s.port), 0);

    j = kvd_batch_ok(s.port, items, 2);
    ck_assert_double_eq(item_status(j, 0), 503);
    ck_assert_double_eq(item_status(j, 1), 200);
    cJSON_Delete(j);
    expect_stats(s.port, s.l1, SINK, IDLE_PAGES * SPP - SINK, "l1 reclaimed for item 1");
    expect_stats(s.port, s.l2, IDLE_PAGES * SPP, 0, "l2 not needed");
    ck_assert_double_eq(free_pages(s.port), 0);
    ck_assert_double_eq(kvd_metric_now(s.port, "kvd_rejected_total", "reason=\"pool_full\""), 2);
    free(items[0]);
    free(items[1]);
    stop(&s);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/reclaim_room");
    TCase *tc = tcase_create("reclaim_room");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, step_that_reclaim_cannot_fit_takes_nothing);
    tcase_add_test(tc, batch_item_that_reclaim_cannot_fit_takes_nothing);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
