/* tests/integration/test_step_accounting.c — what a step counts, over real
 * HTTP (DESIGN.md §1: a step is one layer entry): a request of n entries adds
 * n to the session's "steps" and to kvd_steps_total; shadow statistics count
 * and average per entry with queries, each entry's own reported error; and
 * step durations are labelled by the session's attention kind. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/check_main.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"

/* Mean of two reported errors against the server's mean: both are the same
 * doubles summed in the same order, printed with cJSON's round trip. */
#define MEAN_TOL 1e-12

START_TEST(steps_count_entries)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    const int port = kvd_proc_port(p);
    char *id = kvd_create_session(port, "{\"layers\":2,\"heads\":1,\"head_dim\":2}", NULL);
    const double before = kvd_metric_now(port, "kvd_steps_total", NULL);
    /* One request, three entries (layer 0, 1, then 0 again). */
    cJSON *r = kvd_step_ok(port, id,
                           "{\"steps\":[{\"layer\":0,\"k\":[1,0],\"v\":[1,2],\"q\":[1,0]},"
                           "{\"layer\":1,\"k\":[0,1],\"v\":[3,4],\"q\":[0,1]},"
                           "{\"layer\":0,\"k\":[1,1],\"v\":[5,6]}]}");
    cJSON_Delete(r);
    r = kvd_step_ok(port, id, "{\"layer\":1,\"q\":[1,1]}");
    cJSON_Delete(r);
    cJSON *st = kvd_session_stats(port, id);
    ck_assert_double_eq(kvd_json_num(st, "steps"), 4);
    cJSON_Delete(st);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_steps_total", NULL) - before, 4);
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(shadow_statistics_per_entry)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    const int port = kvd_proc_port(p);
    char *id = kvd_create_session(port,
                                  "{\"layers\":2,\"heads\":2,\"kv_heads\":1,\"head_dim\":4,"
                                  "\"cache\":{\"dtype\":\"int4\",\"group\":4},\"shadow\":true}",
                                  NULL);
    const double count0 = kvd_metric_now(port, "kvd_shadow_relative_error_count", NULL);
    /* Three entries, two with queries, with different data: each entry gets
     * its own error, and the statistics count two observations. */
    cJSON *r = kvd_step_ok(port, id,
                           "{\"steps\":[{\"layer\":0,\"k\":[1,-2,3,0.3, 0.1,2,-1,4],\"v\":[1,2,3,4, -4,3,2,1.5],"
                           "\"q\":[1,0.5,0,2, 0,1,2,0, 1,1,-1,0, 2,0,0,1]},"
                           "{\"layer\":1,\"k\":[0.7,1.9,-3.1,0.2],\"v\":[0.3,-2,7,1]},"
                           "{\"layer\":1,\"k\":[2,-0.5,1,3.3],\"v\":[1,2.5,-3,0.25],\"q\":[3,-1,0.5,2, -1,2,1,0.5]}]}");
    const cJSON *steps = kvd_json_at(r, "steps");
    ck_assert_int_eq(cJSON_GetArraySize(steps), 3);
    const double e0 = kvd_json_num(cJSON_GetArrayItem(steps, 0), "shadow.relative_error");
    const double e2 = kvd_json_num(cJSON_GetArrayItem(steps, 2), "shadow.relative_error");
    ck_assert(!isnan(e0) && !isnan(e2));
    ck_assert_msg(e0 > 0 && e2 > 0 && e0 != e2, "entries report their own errors: %g, %g", e0, e2);
    ck_assert_ptr_null(kvd_json_at(cJSON_GetArrayItem(steps, 1), "shadow")); /* no queries, no measure */
    cJSON_Delete(r);
    cJSON *st = kvd_session_stats(port, id);
    ck_assert_double_eq(kvd_json_num(st, "shadow.steps"), 2);
    ck_assert_double_eq(kvd_json_num(st, "shadow.last_relative_error"), e2);
    ck_assert_double_eq_tol(kvd_json_num(st, "shadow.mean_relative_error"), (e0 + e2) / 2, MEAN_TOL);
    cJSON_Delete(st);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_shadow_relative_error_count", NULL) - count0, 2);
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(step_duration_by_attention_kind)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    const int port = kvd_proc_port(p);
    const char *std = "attention=\"standard\"", *ten = "attention=\"tensor\"";
    const double s0 = kvd_metric_now(port, "kvd_step_duration_seconds_count", std);
    const double t0 = kvd_metric_now(port, "kvd_step_duration_seconds_count", ten);
    char *a = kvd_create_session(port, "{\"heads\":1,\"head_dim\":2}", NULL);
    char *b = kvd_create_session(port, "{\"heads\":1,\"head_dim\":2,\"attention\":\"tensor\"}", NULL);
    cJSON_Delete(kvd_step_ok(port, a, "{\"k\":[1,0],\"v\":[1,2],\"q\":[1,0]}"));
    cJSON_Delete(kvd_step_ok(port, b, "{\"k1\":[1,0],\"k2\":[0,1],\"v1\":[1,2],\"v2\":[2,1],\"q\":[1,0]}"));
    cJSON_Delete(kvd_step_ok(port, b, "{\"k1\":[1,1],\"k2\":[1,1],\"v1\":[1,1],\"v2\":[3,1],\"q\":[1,1]}"));
    ck_assert_double_eq(kvd_metric_now(port, "kvd_step_duration_seconds_count", std) - s0, 1);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_step_duration_seconds_count", ten) - t0, 2);
    free(a);
    free(b);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/step_accounting");
    TCase *tc = tcase_create("accounting");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, steps_count_entries);
    tcase_add_test(tc, shadow_statistics_per_entry);
    tcase_add_test(tc, step_duration_by_attention_kind);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
