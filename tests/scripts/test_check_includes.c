/* tests/scripts/test_check_includes.c — the layer check (scripts/check_includes.c) run on
 * planted trees in tests/scripts/fixtures/: a clean tree passes; an upward include, a
 * cycle of two units, a cycle of three, forbidden third-party headers and an include
 * outside the layers each fail, naming the offending file:line. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <check.h>

#include "tests/support/check_main.h"

#ifndef KVD_CHECK_INCLUDES
#error "CMake passes KVD_CHECK_INCLUDES (the checker) and KVD_FIXTURES"
#endif

/* Runs the checker on fixtures/<tree> ("" for the fixtures dir itself); returns its
 * exit status and its stdout + stderr in *out (caller frees). */
static int check_tree(const char *tree, char **out)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' '%s/%s' 2>&1", KVD_CHECK_INCLUDES, KVD_FIXTURES, tree);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    for (size_t n; (n = fread(buf + len, 1, cap - len - 1, p)) > 0;) {
        len += n;
        if (cap - len < 2) {
            buf = realloc(buf, cap *= 2);
            ck_assert_ptr_nonnull(buf);
        }
    }
    buf[len] = '\0';
    int status = pclose(p);
    ck_assert_msg(WIFEXITED(status), "checker did not exit normally on %s:\n%s", tree, buf);
    *out = buf;
    return WEXITSTATUS(status);
}

#define ASSERT_SAYS(out, text)                                                                     \
    ck_assert_msg(strstr(out, text) != NULL, "expected \"%s\" in the checker's output:\n%s", text,  \
                  out)

START_TEST(clean_tree_passes)
{
    char *out;
    int rc = check_tree("clean", &out);
    ck_assert_msg(rc == 0, "clean tree failed (rc %d):\n%s", rc, out);
    /* every file was read (a checker that reads nothing must not pass silently) */
    ASSERT_SAYS(out, "9 files");
    ASSERT_SAYS(out, ": 0 violations");
    free(out);
}
END_TEST

START_TEST(upward_include_fails)
{
    char *out;
    ck_assert_int_eq(check_tree("upward", &out), 1);
    ASSERT_SAYS(out, "cache/low.c:4: includes \"api/api.h\": cache/ may not include api/");
    ASSERT_SAYS(out, ": 1 violation\n");
    free(out);
}
END_TEST

START_TEST(two_unit_cycle_fails)
{
    char *out;
    ck_assert_int_eq(check_tree("cycle2", &out), 1);
    ASSERT_SAYS(out, "include cycle: cache/evict -> cache/stream -> cache/evict\n");
    ASSERT_SAYS(out, "cache/evict.c:2: includes \"cache/stream.h\"");
    ASSERT_SAYS(out, "cache/stream.c:3: includes \"cache/evict.h\"");
    ASSERT_SAYS(out, ": 1 violation\n");
    free(out);
}
END_TEST

START_TEST(three_unit_cycle_fails)
{
    char *out;
    ck_assert_int_eq(check_tree("cycle3", &out), 1);
    ASSERT_SAYS(out,
                "include cycle: attention/a -> attention/b -> attention/c -> attention/a\n");
    ASSERT_SAYS(out, "attention/a.h:2: includes \"attention/b.h\"");
    ASSERT_SAYS(out, "attention/b.c:2: includes \"attention/c.h\"");
    ASSERT_SAYS(out, "attention/c.h:3: includes \"attention/a.h\"");
    ASSERT_SAYS(out, ": 1 violation\n");
    free(out);
}
END_TEST

START_TEST(forbidden_system_headers_fail)
{
    char *out;
    ck_assert_int_eq(check_tree("syshdr", &out), 1);
    ASSERT_SAYS(out, "cache/pool.c:3: cache/ must not include <uv.h>");
    ASSERT_SAYS(out, "attention/k.h:1: attention/ must not include <cjson/cJSON.h>");
    ASSERT_SAYS(out, "api/api.c:2: api/ must not include <llhttp.h>");
    ck_assert_msg(strstr(out, "api/api.c:1") == NULL, "cJSON is allowed in api/:\n%s", out);
    ASSERT_SAYS(out, ": 3 violations\n");
    free(out);
}
END_TEST

START_TEST(include_outside_layers_fails)
{
    char *out;
    ck_assert_int_eq(check_tree("outside", &out), 1);
    ASSERT_SAYS(out, "cache/x.c:2: includes \"tests/support/fake.h\", which is outside the layers");
    free(out);
}
END_TEST

START_TEST(root_without_modules_is_an_error)
{
    char *out;
    ck_assert_int_eq(check_tree("", &out), 2);
    ASSERT_SAYS(out, "no module directory");
    free(out);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("check_includes");
    TCase *tc = tcase_create("fixtures");
    tcase_add_test(tc, clean_tree_passes);
    tcase_add_test(tc, upward_include_fails);
    tcase_add_test(tc, two_unit_cycle_fails);
    tcase_add_test(tc, three_unit_cycle_fails);
    tcase_add_test(tc, forbidden_system_headers_fail);
    tcase_add_test(tc, include_outside_layers_fails);
    tcase_add_test(tc, root_without_modules_is_an_error);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
