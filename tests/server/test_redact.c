/* tests/server/test_redact.c — server/redact.c: what the access log shows of
 * a path. API words stay, session ids and every other client-chosen segment
 * become '~' and 8 hex digits of their SHA-256 (checked against digests
 * made by sha256sum), and a path too long for the buffer is cut at a
 * segment boundary, never mid-hash, and always NUL-terminated. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "server/redact.h"
#include "tests/support/check_main.h"

/* printf %s 0123456789abcdef0123456789abcdef | sha256sum | cut -c1-8 */
#define ID "0123456789abcdef0123456789abcdef"
#define ID_HASH "~3eb1bd43"

static void expect(const char *path, const char *want)
{
    char out[256];
    size_t n = kvd__log_path(out, sizeof out, path);
    ck_assert_msg(strcmp(out, want) == 0, "%s -> %s, want %s", path, out, want);
    ck_assert_uint_eq(n, strlen(want));
}

START_TEST(api_words_stay_ids_are_hashed)
{
    expect("/v1/sessions", "/v1/sessions");
    expect("/healthz", "/healthz");
    expect("/metrics", "/metrics");
    expect("/v1/sessions/restore", "/v1/sessions/restore");
    expect("/v1/sessions/" ID, "/v1/sessions/" ID_HASH);
    expect("/v1/sessions/" ID "/step", "/v1/sessions/" ID_HASH "/step");
    expect("/v1/sessions/" ID "/fork", "/v1/sessions/" ID_HASH "/fork");
    expect("/v1/sessions/" ID "/snapshot", "/v1/sessions/" ID_HASH "/snapshot");
    /* Anything else a client put there is hashed too: a typo'd route, a
     * key pasted into the URL, bytes that are not UTF-8. */
    expect("/v1/sesions/" ID, "/v1/~" "25d09a28" "/" ID_HASH);
    expect("/" ID, "/" ID_HASH);
    expect("//v1/", "//v1/");
    expect("", "");
}
END_TEST

START_TEST(nothing_of_the_segment_survives)
{
    char out[256];
    const char *secret = "/v1/sessions/sk-live-abcdefSECRET\xff/step";
    kvd__log_path(out, sizeof out, secret);
    ck_assert_ptr_null(strstr(out, "sk-live"));
    ck_assert_ptr_null(strstr(out, "SECRET"));
    ck_assert_ptr_null(strchr(out, '\xff'));
}
END_TEST

START_TEST(cut_at_a_segment_boundary)
{
    char out[24];
    /* "/v1/sessions/~3eb1bd43" is 22 bytes: fits; "/step" would not. */
    size_t n = kvd__log_path(out, sizeof out, "/v1/sessions/" ID "/step");
    ck_assert_str_eq(out, "/v1/sessions/...");
    ck_assert_uint_eq(n, strlen(out));
    char big[4096];
    for (size_t i = 0; i < sizeof big - 1; i++)
        big[i] = i % 3 ? 'a' : '/';
    big[sizeof big - 1] = '\0';
    char small[64];
    n = kvd__log_path(small, sizeof small, big);
    ck_assert_uint_lt(n, sizeof small);
    ck_assert_uint_eq(strlen(small), n);
    ck_assert_str_eq(small + n - 4, "/...");
    char one[1];
    ck_assert_uint_eq(kvd__log_path(one, sizeof one, "/v1"), 0);
    ck_assert_int_eq(one[0], '\0');
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("redact");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, api_words_stay_ids_are_hashed);
    tcase_add_test(tc, nothing_of_the_segment_survives);
    tcase_add_test(tc, cut_at_a_segment_boundary);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
