/* tests/api/test_limits.c — api/limits.c: the default request limits. */
#include <check.h>

#include "api/limits.h"
#include "tests/support/check_main.h"

START_TEST(limits_default)
{
    kvd_api_limits l;
    kvd_api_limits_default(&l, 4096);
    ck_assert_uint_eq(l.max_layers, 1024);
    ck_assert_uint_eq(l.max_heads, 1024);
    ck_assert_uint_eq(l.max_head_dim, 4096);
    ck_assert_uint_eq(l.max_streams, 65536);
    ck_assert_uint_eq(l.max_step_tokens, 1u << 20);
    ck_assert_uint_eq(l.max_steps_per_request, 4096);
    ck_assert_uint_eq(l.page_bytes, 4096);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("api/limits");
    TCase *tc = tcase_create("limits");
    tcase_add_test(tc, limits_default);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
