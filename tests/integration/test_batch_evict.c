/* tests/integration/test_batch_evict.c — POST /v1/batch items on a full pool
 * over HTTP against a real kvd (--memory 128KiB in 4 KiB pages): under --on-full evict an
 * item that needs pages an idle least-recently-used session holds reclaims
 * them and is retried (200, that session keeps only its sinks, the
 * session's next item sees the append); under --on-full reject the item is
 * an item 503 and nothing changes; and a session with an item in the batch
 * is never reclaimed for it (items that would reclaim from each other's
 * sessions both get 503, nothing changed). */
#define _GNU_SOURCE
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"
#include "tests/integration/tiny_steps.h"

#define SPP 28 /* tokens per 4 KiB page at head_dim 16 (tests/support/cache_session.c) */
#define PLAIN "{\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":16}"

static char *create(int port, const char *body)
{
    return kvd_create_session(port, body, NULL);
}

static double tokens(int port, const char *id)
{
    cJSON *j = kvd_session_stats(port, id);
    const double t = kvd_json_num(j, "tokens");
    cJSON_Delete(j);
    return t;
}

static const cJSON *item(const cJSON *j, int i)
{
    return cJSON_GetArrayItem(kvd_json_at(j, "steps"), i);
}

static void expect_item_503(const cJSON *j, int i)
{
    ck_assert_double_eq(kvd_json_num(item(j, i), "status"), 503);
    ck_assert_str_eq(kvd_json_str(item(j, i), "error.code"), "resource_exhausted");
}

/* 28 pages held by an idle recency session L, a few free; a batch of two
 * items on a fresh session A: two pages more tokens than are free, then a
 * query. */
static void pool_full_batch(bool evict)
{
    const char *args[] = {"--page-bytes", "4096", "--memory", "128KiB", "--threads", "2",
                          "--on-full", evict ? "evict" : "reject", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    char *l = create(port, EVICTABLE), *a = create(port, PLAIN);
    fill(port, l, 28 * SPP);
    /* two pages more than are free */
    const double free_pages = kvd_metric_now(port, "kvd_pool_pages", "state=\"free\"");
    ck_assert(free_pages >= 1 && free_pages <= 8);
    const size_t m = ((size_t)free_pages + 2) * SPP;
    char *items[2] = {entry(a, m, false), entry(a, 0, true)};
    cJSON *j = kvd_batch_ok(port, items, 2);
    if (evict) {
        ck_assert_msg(kvd_json_num(item(j, 0), "status") == 200, "item 0: %s",
                      cJSON_PrintUnformatted(item(j, 0)));
        ck_assert_double_eq(kvd_json_num(item(j, 0), "tokens"), m);
        /* the session's next item ran after the retried one */
        ck_assert_double_eq(kvd_json_num(item(j, 1), "status"), 200);
        ck_assert_double_eq(kvd_json_num(item(j, 1), "tokens"), m);
        ck_assert_double_eq(tokens(port, l), SINK);
        ck_assert_double_eq(tokens(port, a), m);
        ck_assert_double_eq(kvd_metric_now(port, "kvd_reclaimed_tokens_total", NULL), 28 * SPP - SINK);
        ck_assert_double_eq(kvd_metric_now(port, "kvd_rejected_total", "reason=\"pool_full\""), 0);
    } else {
        expect_item_503(j, 0);
        ck_assert_double_eq(kvd_json_num(item(j, 1), "status"), 200);
        ck_assert_double_eq(kvd_json_num(item(j, 1), "tokens"), 0);
        ck_assert_double_eq(tokens(port, l), 28 * SPP);
        ck_assert_double_eq(tokens(port, a), 0);
        ck_assert_double_eq(kvd_metric_now(port, "kvd_reclaimed_tokens_total", NULL), 0);
        ck_assert_double_eq(kvd_metric_now(port, "kvd_rejected_total", "reason=\"pool_full\""), 1);
        ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"free\""), free_pages);
    }
    cJSON_Delete(j);
    free(items[0]);
    free(items[1]);
    free(l);
    free(a);
    kvd_proc_stop_ck(p);
}

START_TEST(evict_reclaims_for_a_batch_item)
{
    pool_full_batch(true);
}
END_TEST

START_TEST(reject_answers_an_item_503)
{
    pool_full_batch(false);
}
END_TEST

/* P and Q, idle recency sessions of 14 pages each, a few free. One
 * worker, so in a batch [Q query, P append] Q's job is done (Q idle, the
 * least recently used) when P's item asks for a reclaim: only the batch
 * keeps Q's tokens. */
START_TEST(never_reclaims_from_the_batch)
{
    const char *args[] = {"--page-bytes", "4096", "--memory", "128KiB", "--threads", "1",
                          "--on-full", "evict", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    char *pid = create(port, EVICTABLE), *qid = create(port, EVICTABLE);
    fill(port, qid, 14 * SPP);
    fill(port, pid, 14 * SPP);
    const double free_pages = kvd_metric_now(port, "kvd_pool_pages", "state=\"free\"");
    ck_assert(free_pages >= 1 && free_pages <= 8);
    const size_t m = ((size_t)free_pages + 2) * SPP; /* two pages more than are free */

    /* each would reclaim from the other's session */
    char *both[2] = {entry(pid, m, false), entry(qid, m, false)};
    cJSON *j = kvd_batch_ok(port, both, 2);
    expect_item_503(j, 0);
    expect_item_503(j, 1);
    cJSON_Delete(j);
    char *idle_q[2] = {entry(qid, 0, true), entry(pid, m, false)};
    j = kvd_batch_ok(port, idle_q, 2);
    ck_assert_double_eq(kvd_json_num(item(j, 0), "status"), 200);
    expect_item_503(j, 1);
    cJSON_Delete(j);
    ck_assert_double_eq(tokens(port, pid), 14 * SPP);
    ck_assert_double_eq(tokens(port, qid), 14 * SPP);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_reclaimed_tokens_total", NULL), 0);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_rejected_total", "reason=\"pool_full\""), 3);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"free\""), free_pages);

    /* Q outside the batch: reclaimed for P's item */
    j = kvd_batch_ok(port, &idle_q[1], 1);
    ck_assert_double_eq(kvd_json_num(item(j, 0), "status"), 200);
    cJSON_Delete(j);
    ck_assert_double_eq(tokens(port, qid), SINK);
    ck_assert_double_eq(tokens(port, pid), 14 * SPP + m);
    for (int i = 0; i < 2; i++) {
        free(both[i]);
        free(idle_q[i]);
    }
    free(pid);
    free(qid);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/batch_evict");
    TCase *tc = tcase_create("batch_evict");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, evict_reclaims_for_a_batch_item);
    tcase_add_test(tc, reject_answers_an_item_503);
    tcase_add_test(tc, never_reclaims_from_the_batch);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
