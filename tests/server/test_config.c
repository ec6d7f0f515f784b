/* tests/server/test_config.c — flags, KVD_* environment and size parsing. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "server/config.h"
#include "tests/support/check_main.h"

static int parse(kvd_config *cfg, char **argv, int argc)
{
    char err[256];
    return kvd_config_parse(cfg, argc, argv, err, sizeof err);
}

START_TEST(sizes)
{
    size_t v;
    ck_assert_int_eq(kvd__parse_size("4096", &v), 0);
    ck_assert_uint_eq(v, 4096);
    ck_assert_int_eq(kvd__parse_size("16KiB", &v), 0);
    ck_assert_uint_eq(v, 16384);
    ck_assert_int_eq(kvd__parse_size("1GiB", &v), 0);
    ck_assert_uint_eq(v, (size_t)1 << 30);
    ck_assert_int_eq(kvd__parse_size("64M", &v), 0);
    ck_assert_uint_eq(v, (size_t)64 << 20);
    ck_assert_int_eq(kvd__parse_size("2GB", &v), 0);
    ck_assert_uint_eq(v, 2000000000u);
    ck_assert_int_eq(kvd__parse_size("", &v), -1);
    ck_assert_int_eq(kvd__parse_size("-1", &v), -1);
    ck_assert_int_eq(kvd__parse_size("12XB", &v), -1);
    ck_assert_int_eq(kvd__parse_size("kib", &v), -1);
    ck_assert_int_eq(kvd__parse_size("99999999999999999999", &v), -1);
    ck_assert_int_eq(kvd__parse_size("17179869184TiB", &v), -1); /* overflows size_t */
}
END_TEST

START_TEST(defaults)
{
    kvd_config c;
    char *argv[] = {"kvd"};
    ck_assert_int_eq(parse(&c, argv, 1), 0);
    ck_assert_str_eq(c.host, "127.0.0.1");
    ck_assert_int_eq(c.port, 8080);
    ck_assert_uint_eq(c.memory, (size_t)1 << 30);
    ck_assert_uint_eq(c.page_bytes, 16384);
    ck_assert_uint_eq(c.max_body, (size_t)64 << 20);
    ck_assert_uint_ge(c.threads, 1);
    ck_assert(!c.log_json);
}
END_TEST

START_TEST(flags_and_env)
{
    kvd_config c;
    setenv("KVD_PORT", "9000", 1);
    setenv("KVD_MEMORY", "64MiB", 1);
    char *argv[] = {"kvd", "--port", "9100", "--page-bytes=4KiB", "--threads", "3", "--log-format", "json"};
    ck_assert_int_eq(parse(&c, argv, 8), 0);
    ck_assert_int_eq(c.port, 9100);                 /* flag beats environment */
    ck_assert_uint_eq(c.memory, (size_t)64 << 20);  /* environment beats default */
    ck_assert_uint_eq(c.page_bytes, 4096);
    ck_assert_uint_eq(c.threads, 3);
    ck_assert(c.log_json);
    unsetenv("KVD_PORT");
    unsetenv("KVD_MEMORY");
}
END_TEST

START_TEST(rejects_bad_values)
{
    kvd_config c;
    char *bad[][3] = {
        {"kvd", "--port", "70000"},        {"kvd", "--port", "x"},
        {"kvd", "--page-bytes", "1000"},   {"kvd", "--page-bytes", "100"},
        {"kvd", "--threads", "0"},         {"kvd", "--memory", "0"},
        {"kvd", "--log-format", "xml"},    {"kvd", "--bogus", "1"},
        {"kvd", "--max-body", "12"},       {"kvd", "--memory", "1KiB"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(parse(&c, bad[i], 3) == -1, "accepted %s %s", bad[i][1], bad[i][2]);
    char *missing[] = {"kvd", "--port"};
    ck_assert_int_eq(parse(&c, missing, 2), -1);
    setenv("KVD_THREADS", "many", 1);
    char *argv[] = {"kvd"};
    ck_assert_int_eq(parse(&c, argv, 1), -1);
    unsetenv("KVD_THREADS");
}
END_TEST

/* Issue 10: connection limits and deadlines, flag and environment. */
START_TEST(limits_and_timeouts)
{
    kvd_config c;
    char *argv0[] = {"kvd"};
    ck_assert_int_eq(parse(&c, argv0, 1), 0);
    ck_assert(c.header_timeout == 10 && c.body_timeout == 30 && c.idle_timeout == 60);
    ck_assert(c.write_timeout == 30 && c.drain_seconds == 30);
    ck_assert_uint_eq(c.max_connections, 1024);
    ck_assert_uint_eq(c.max_inflight_bytes, (size_t)256 << 20);

    setenv("KVD_IDLE_TIMEOUT", "5", 1);
    setenv("KVD_MAX_CONNECTIONS", "7", 1);
    char *argv[] = {"kvd", "--header-timeout", "1.5", "--body-timeout=2", "--write-timeout", "3",
                    "--drain-seconds", "0.25", "--max-inflight-bytes", "128MiB",
                    "--max-connections", "9"};
    ck_assert_int_eq(parse(&c, argv, 12), 0);
    unsetenv("KVD_IDLE_TIMEOUT");
    unsetenv("KVD_MAX_CONNECTIONS");
    ck_assert(c.header_timeout == 1.5 && c.body_timeout == 2 && c.write_timeout == 3);
    ck_assert(c.drain_seconds == 0.25 && c.idle_timeout == 5);
    ck_assert_uint_eq(c.max_connections, 9);
    ck_assert_uint_eq(c.max_inflight_bytes, (size_t)128 << 20);

    static const char *const bad[][2] = {
        {"--header-timeout", "0"},  {"--idle-timeout", "-1"},   {"--body-timeout", "x"},
        {"--write-timeout", "1e9"}, {"--drain-seconds", "nan"}, {"--max-connections", "0"},
        {"--max-inflight-bytes", "1"},
        {"--max-inflight-bytes", "32MiB"}, /* below the default --max-body */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *a[] = {"kvd", (char *)bad[i][0], (char *)bad[i][1]};
        ck_assert_msg(parse(&c, a, 3) == -1, "%s %s accepted", bad[i][0], bad[i][1]);
    }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("server/config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, sizes);
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, flags_and_env);
    tcase_add_test(tc, rejects_bad_values);
    tcase_add_test(tc, limits_and_timeouts);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
