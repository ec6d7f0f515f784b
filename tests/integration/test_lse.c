/* tests/integration/test_lse.c — "return_lse" over HTTP: each query head's
 * log-sum-exp against a hand-computed value (JSON and b64), null (JSON) and
 * -inf (b64) with o = 0 when the query sees no token, per entry in the
 * "steps" form, absent unless asked, and the 400s (not a bool; subgen). */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/kvd_client.h"
#include "tests/support/kvd_data.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

/* f32 scores of O(1) over two tokens: lse is O(1), f32-rounded. */
#define LSE_TOL 1e-5

static const char *const server_args[] = {"--memory", "16MiB", NULL};

/* Session: heads 2, kv_heads 1, head_dim 4 (scale 1/2). Two tokens:
 * k0 = (1,0,0,0), k1 = (0,1,0,0); q0 = (2,0,0,0), q1 = (0,0,0,0). Scores:
 * head 0: (1, 0); head 1: (0, 0). */
#define TWO_TOKENS "\"k\":[[[1,0,0,0]],[[0,1,0,0]]],\"v\":[[[1,2,3,4]],[[5,6,7,8]]],"
#define QUERY "\"q\":[[[2,0,0,0],[0,0,0,0]]]"

START_TEST(lse_values)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    const int port = kvd_proc_port(p);
    char *id = kvd_create_session(port, "{\"heads\":2,\"kv_heads\":1,\"head_dim\":4}", NULL);
    const double want[2] = {log(exp(1.0) + 1.0), log(2.0)};

    /* not asked: no "lse" */
    cJSON *r = kvd_step_ok(port, id, "{" QUERY ",\"m\":0}");
    ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(r, "lse"));
    cJSON_Delete(r);
    /* nothing visible yet: null (JSON has no -inf), o = 0 */
    r = kvd_step_ok(port, id, "{" QUERY ",\"return_lse\":true}");
    const cJSON *lse = cJSON_GetObjectItemCaseSensitive(r, "lse");
    ck_assert_msg(cJSON_IsArray(lse) && cJSON_GetArraySize(lse) == 2, "lse: two heads");
    ck_assert(cJSON_IsNull(cJSON_GetArrayItem(lse, 0)) && cJSON_IsNull(cJSON_GetArrayItem(lse, 1)));
    const double zeros[8] = {0};
    kvd_check_tensor(cJSON_GetObjectItemCaseSensitive(r, "o"), zeros, 8, 0.0, "o with nothing visible");
    cJSON_Delete(r);
    /* b64 carries -inf as f32 */
    r = kvd_step_ok(port, id, "{" QUERY ",\"return_lse\":true,\"encoding\":\"b64\"}");
    lse = cJSON_GetObjectItemCaseSensitive(r, "lse");
    ck_assert(cJSON_IsString(lse) && strncmp(lse->valuestring, "b64:", 4) == 0);
    size_t len = 0;
    float *f = (float *)b64_decode(lse->valuestring + 4, strlen(lse->valuestring) - 4, &len);
    ck_assert(f && len == 2 * sizeof(float));
    ck_assert(isinf(f[0]) && f[0] < 0 && isinf(f[1]) && f[1] < 0);
    free(f);
    cJSON_Delete(r);

    /* two tokens, block mask: both queries see both */
    r = kvd_step_ok(port, id, "{" TWO_TOKENS QUERY ",\"mask\":\"block\",\"return_lse\":true}");
    kvd_check_tensor(cJSON_GetObjectItemCaseSensitive(r, "lse"), want, 2, LSE_TOL, "lse");
    cJSON_Delete(r);
    r = kvd_step_ok(port, id, "{" QUERY ",\"return_lse\":true,\"encoding\":\"b64\"}");
    kvd_check_tensor(cJSON_GetObjectItemCaseSensitive(r, "lse"), want, 2, LSE_TOL, "lse b64");
    cJSON_Delete(r);

    /* "steps": per entry */
    r = kvd_step_ok(port, id, "{\"steps\":[{" QUERY ",\"return_lse\":true},{" QUERY "},{" QUERY
                              ",\"return_lse\":false}]}");
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(r, "steps");
    ck_assert_int_eq(cJSON_GetArraySize(steps), 3);
    kvd_check_tensor(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(steps, 0), "lse"), want, 2, LSE_TOL,
                     "steps[0].lse");
    ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(steps, 1), "lse"));
    ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(steps, 2), "lse"));
    cJSON_Delete(r);

    /* bad values: 400, nothing changes */
    http_response *e = kvd_step(port, id, "{" TWO_TOKENS QUERY ",\"mask\":\"block\",\"return_lse\":1}");
    kvd_expect_error(e, 400, "invalid_argument", "return_lse", "true or false", "return_lse: 1");
    http_response_free(e);
    e = kvd_step(port, id, "{\"steps\":[{" QUERY ",\"return_lse\":\"yes\"}]}");
    kvd_expect_error(e, 400, "invalid_argument", "steps[0].return_lse", "true or false", "steps[0]");
    http_response_free(e);
    cJSON *st = kvd_session_stats(port, id);
    ck_assert_msg(kvd_json_num(st, "tokens") == 2, "a rejected step changed the session");
    cJSON_Delete(st);
    free(id);

    /* subgen estimates attention: no exact denominator to give */
    id = kvd_create_session(port,
                            "{\"heads\":2,\"kv_heads\":1,\"head_dim\":4,"
                            "\"cache\":{\"eviction\":\"subgen\"}}",
                            NULL);
    e = kvd_step(port, id, "{" QUERY ",\"return_lse\":true}");
    kvd_expect_error(e, 400, "invalid_argument", "return_lse", "subgen", "subgen");
    http_response_free(e);
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

/* Tensor sessions (four-cache and two-cache): lse = log sum over the pairs. */
START_TEST(lse_tensor)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    const int port = kvd_proc_port(p);
    /* one token k1 = k2 = (1,1,0,0): s = scale * sum q k1 k2 = 0.5 * 2 for q = (1,1,0,0) */
    const double want[2] = {1.0, 1.0};
    const char *cfgs[2] = {"{\"heads\":2,\"kv_heads\":1,\"head_dim\":4,\"attention\":\"tensor\"}",
                           "{\"heads\":2,\"kv_heads\":1,\"head_dim\":4,\"attention\":\"tensor\","
                           "\"tensor_cache\":\"two\"}"};
    for (int c = 0; c < 2; c++) {
        char *id = kvd_create_session(port, cfgs[c], NULL);
        cJSON *r = kvd_step_ok(port, id,
                               "{\"k1\":[[[1,1,0,0]]],\"k2\":[[[1,1,0,0]]],\"v1\":[[[1,1,1,1]]],"
                               "\"v2\":[[[1,1,1,1]]],\"q\":[[[1,1,0,0],[1,1,0,0]]],\"return_lse\":true}");
        kvd_check_tensor(cJSON_GetObjectItemCaseSensitive(r, "lse"), want, 2, LSE_TOL, cfgs[c]);
        cJSON_Delete(r);
        free(id);
    }
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *lse_suite(void)
{
    Suite *s = suite_create("integration_lse");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, lse_values);
    tcase_add_test(tc, lse_tensor);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(lse_suite)
