/* tests/api/test_errors.c — api/errors.c: filling a kvd_api_error and
 * rendering the one error body {"error": {"code", "message", "field"}},
 * including allocation failure inside cJSON (fault-injecting hooks). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/errors.h"
#include "tests/support/check_main.h"
#include "tests/support/failing_alloc.h"

START_TEST(set_fills_everything)
{
    kvd_api_error err;
    memset(&err, 0x55, sizeof err);
    int rc = kvd_api_error_set(&err, 400, KVD_ERR_INVALID, "k", "k: expected %d numbers, got %s",
                               128, "100");
    ck_assert_int_eq(rc, -1);
    ck_assert_int_eq(err.status, 400);
    ck_assert_str_eq(err.code, "invalid_argument");
    ck_assert_str_eq(err.field, "k");
    ck_assert_str_eq(err.message, "k: expected 128 numbers, got 100");
}
END_TEST

START_TEST(set_null_field_is_empty)
{
    kvd_api_error err;
    memset(&err, 0x55, sizeof err);
    kvd_api_error_set(&err, 404, KVD_ERR_NOT_FOUND, NULL, "no such session");
    ck_assert_str_eq(err.field, "");
    ck_assert_str_eq(err.code, KVD_ERR_NOT_FOUND);
    /* A NULL code still renders as a valid code. */
    kvd_api_error_set(&err, 500, NULL, NULL, "x");
    ck_assert_str_eq(err.code, KVD_ERR_INTERNAL);
    /* NULL err is tolerated and still returns -1. */
    ck_assert_int_eq(kvd_api_error_set(NULL, 400, KVD_ERR_INVALID, NULL, "x"), -1);
}
END_TEST

START_TEST(set_truncates_long_text)
{
    kvd_api_error err;
    char longfield[300], longmsg[1000];
    memset(longfield, 'f', sizeof longfield - 1);
    longfield[sizeof longfield - 1] = '\0';
    memset(longmsg, 'm', sizeof longmsg - 1);
    longmsg[sizeof longmsg - 1] = '\0';
    kvd_api_error_set(&err, 400, KVD_ERR_INVALID, longfield, "%s", longmsg);
    ck_assert_uint_eq(strlen(err.field), sizeof err.field - 1);
    ck_assert_uint_eq(strlen(err.message), sizeof err.message - 1);
}
END_TEST

static cJSON *render(const kvd_api_error *err)
{
    size_t len = 0;
    char *s = kvd_api_error_json(err, &len);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(len, strlen(s));
    cJSON *j = cJSON_Parse(s);
    free(s);
    ck_assert_ptr_nonnull(j);
    return j;
}

START_TEST(json_with_field)
{
    kvd_api_error err;
    kvd_api_error_set(&err, 400, KVD_ERR_INVALID, "steps[1].q", "a \"quoted\" \\ message\n");
    cJSON *j = render(&err);
    ck_assert_int_eq(cJSON_GetArraySize(j), 1);
    cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    ck_assert(cJSON_IsObject(e));
    ck_assert_int_eq(cJSON_GetArraySize(e), 3);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "code")->valuestring, "invalid_argument");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "message")->valuestring,
                     "a \"quoted\" \\ message\n");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "field")->valuestring, "steps[1].q");
    cJSON_Delete(j);
}
END_TEST

START_TEST(json_without_field_omits_it)
{
    kvd_api_error err;
    kvd_api_error_set(&err, 503, KVD_ERR_EXHAUSTED, "", "pool exhausted");
    cJSON *j = render(&err);
    cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    ck_assert_int_eq(cJSON_GetArraySize(e), 2);
    ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(e, "field"));
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "code")->valuestring,
                     "resource_exhausted");
    cJSON_Delete(j);
    ck_assert_ptr_null(kvd_api_error_json(NULL, NULL));
}
END_TEST

START_TEST(json_len_may_be_null)
{
    kvd_api_error err;
    kvd_api_error_set(&err, 401, KVD_ERR_UNAUTHORIZED, NULL, "missing API key");
    char *s = kvd_api_error_json(&err, NULL);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(s, "{\"error\":{\"code\":\"unauthenticated\",\"message\":\"missing API key\"}}");
    free(s);
}
END_TEST

START_TEST(json_allocation_failure_is_null)
{
    kvd_api_error err;
    kvd_api_error_set(&err, 400, KVD_ERR_INVALID, "k", "bad k");
    failing_alloc_install();
    int failures = 0;
    char *s = NULL;
    for (int budget = 0; budget < 100 && !s; budget++) {
        failing_alloc_budget(budget);
        s = kvd_api_error_json(&err, NULL);
        failures += s == NULL;
    }
    failing_alloc_uninstall();
    ck_assert_ptr_nonnull(s);
    ck_assert_int_gt(failures, 3); /* several distinct failure points were hit */
    free(s);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("api/errors");
    TCase *tc = tcase_create("errors");
    tcase_add_test(tc, set_fills_everything);
    tcase_add_test(tc, set_null_field_is_empty);
    tcase_add_test(tc, set_truncates_long_text);
    tcase_add_test(tc, json_with_field);
    tcase_add_test(tc, json_without_field_omits_it);
    tcase_add_test(tc, json_len_may_be_null);
    tcase_add_test(tc, json_allocation_failure_is_null);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
