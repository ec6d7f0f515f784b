/* tests/integration/test_tensor_row_pages.c — the f32 copy a quantized
 * four-cache tensor step attends over is pool pages (cache/plan.c
 * plan_tensor_rows), over HTTP against a real kvd (--memory 256KiB in 4 KiB
 * pages, one worker: one kv head's copy at a time): a query step borrows
 * them and gives them back, kvd_tensor_row_pages_total counts them, and a
 * session whose copy can never fit the pool gets a 413 naming the copy, no
 * Retry-After, nothing changed. */
#define _GNU_SOURCE
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

#define HEAD_DIM 32
#define COPY_SPP 16 /* tokens of one view per 4 KiB page: 4096 / (2 x 32 x 4) */
#define CREATE                                                                                               \
    "{\"attention\":\"tensor\",\"tensor_cache\":\"four\",\"layers\":1,\"heads\":2,\"kv_heads\":1,"             \
    "\"head_dim\":32,\"cache\":{\"dtype\":\"int8\"}}"

/* {"layer":0, "k1","v1","k2","v2": [m x 32], "q": [2 x 32] if query}. */
static char *body(size_t m, bool query)
{
    char *s = malloc(64 + 4 * m * HEAD_DIM * 8 + 2 * HEAD_DIM * 8 + 64);
    size_t len = (size_t)sprintf(s, "{\"layer\":0");
    static const char *const names[] = {"k1", "v1", "k2", "v2"};
    for (int t = 0; t < 4 && m; t++) {
        len += (size_t)sprintf(s + len, ",\"%s\":[", names[t]);
        for (size_t i = 0; i < m * HEAD_DIM; i++)
            len += (size_t)sprintf(s + len, "%s%.2f", i ? "," : "", (double)((i * 5 + (size_t)t) % 11) / 11.0 - 0.5);
        len += (size_t)sprintf(s + len, "]");
    }
    if (query) {
        len += (size_t)sprintf(s + len, ",\"q\":[");
        for (size_t i = 0; i < 2 * HEAD_DIM; i++)
            len += (size_t)sprintf(s + len, "%s%.2f", i ? "," : "", (double)(i % 3) / 3.0);
        len += (size_t)sprintf(s + len, "]");
    }
    strcpy(s + len, "}");
    return s;
}

static void append(int port, const char *id, size_t m)
{
    for (size_t done = 0; done < m;) {
        const size_t n = m - done < 48 ? m - done : 48;
        char *b = body(n, false);
        cJSON_Delete(kvd_step_ok(port, id, b));
        free(b);
        done += n;
    }
}

static double tokens(int port, const char *id)
{
    cJSON *j = kvd_session_stats(port, id);
    const double t = kvd_json_num(j, "tokens");
    cJSON_Delete(j);
    return t;
}

START_TEST(copy_is_pool_pages)
{
    const char *args[] = {"--page-bytes", "4096", "--memory", "256KiB", "--threads", "1", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    char *id = kvd_create_session(port, CREATE, NULL);
    append(port, id, 40);
    const double free_before = kvd_metric_now(port, "kvd_pool_pages", "state=\"free\"");
    ck_assert_double_eq(kvd_metric_now(port, "kvd_tensor_row_pages_total", NULL), 0);
    char *q = body(0, true);
    cJSON_Delete(kvd_step_ok(port, id, q));
    /* 40 tokens: 3 pages per view, (k1, v1) and (k2, v2) */
    ck_assert_double_eq(kvd_metric_now(port, "kvd_tensor_row_pages_total", NULL), 2 * 3);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"free\""), free_before);

    /* 560 tokens: the copy is 2 x 35 = 70 pages, more than the 64 of the pool */
    append(port, id, 560 - 40);
    const double held = kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"");
    ck_assert(held < 64);
    http_response *r = kvd_step(port, id, q);
    kvd_expect_error(r, 413, "payload_too_large", NULL, "70 of them are the f32 copy", "the copy alone");
    ck_assert_msg(http_header_get(r, "Retry-After") == NULL, "a 413 with Retry-After");
    http_response_free(r);
    ck_assert_double_eq(tokens(port, id), 560);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""), held);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_tensor_row_pages_total", NULL), 2 * 3);
    free(q);
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/tensor_row_pages");
    TCase *tc = tcase_create("rows");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, copy_is_pool_pages);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
