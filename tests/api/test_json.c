/* tests/api/test_json.c — api/json.c: the whole-body JSON parser (objects
 * only, trailing bytes, truncation, embedded NULs, byte offsets in errors). */
#include <check.h>
#include <string.h>

#include <cJSON.h>

#include "api/json.h"
#include "tests/support/api_asserts.h"
#include "tests/support/check_main.h"

START_TEST(json_body)
{
    kvd_api_error err;
    const char ok[] = "  {\"a\": [1, 2]}\n";
    cJSON *j = kvd_json_parse_object(ok, sizeof ok - 1, &err);
    ck_assert_ptr_nonnull(j);
    ck_assert(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(j, "a")));
    cJSON_Delete(j);

    const char arr[] = "[1,2]";
    ck_assert_ptr_null(kvd_json_parse_object(arr, sizeof arr - 1, &err));
    ASSERT_ERR(err, 400, "", "body must be a JSON object");
    const char num[] = "5";
    ck_assert_ptr_null(kvd_json_parse_object(num, 1, &err));
    ASSERT_ERR(err, 400, "", "body must be a JSON object");

    const char trailing[] = "{\"a\":1} x";
    ck_assert_ptr_null(kvd_json_parse_object(trailing, sizeof trailing - 1, &err));
    ASSERT_ERR(err, 400, "", "byte offset 8");
    const char two[] = "{}{}";
    ck_assert_ptr_null(kvd_json_parse_object(two, sizeof two - 1, &err));
    ASSERT_ERR(err, 400, "", "byte offset 2");
    const char bad[] = "{\"a\":tru}";
    ck_assert_ptr_null(kvd_json_parse_object(bad, sizeof bad - 1, &err));
    ASSERT_ERR(err, 400, "", "invalid JSON at byte offset");
    const char open[] = "{\"a\":";
    ck_assert_ptr_null(kvd_json_parse_object(open, sizeof open - 1, &err));
    ASSERT_ERR(err, 400, "", "unexpected end of body");

    /* An embedded NUL is an error even if what precedes it is valid. */
    const char nul[] = "{}\0{\"x\":1}";
    ck_assert_ptr_null(kvd_json_parse_object(nul, sizeof nul - 1, &err));
    ASSERT_ERR(err, 400, "", "NUL byte at byte offset 2");

    ck_assert_ptr_null(kvd_json_parse_object("", 0, &err));
    ASSERT_ERR(err, 400, "", "empty");
    ck_assert_ptr_null(kvd_json_parse_object(NULL, 0, &err));
    ASSERT_ERR(err, 400, "", "empty");

    /* Only len bytes are the body: a longer NUL-terminated buffer's tail is
     * not part of it (here the body is "{}" and then the terminator). */
    char buf[] = "{}";
    j = kvd_json_parse_object(buf, 2, &err);
    ck_assert_ptr_nonnull(j);
    cJSON_Delete(j);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("api/json");
    TCase *tc = tcase_create("json");
    tcase_add_test(tc, json_body);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
