/* tests/server/test_auth.c — server/auth.c and the key flags of
 * server/config.c: --api-key-file and KVD_API_KEY together (their union),
 * start-up errors that never quote a key, --metrics-auth as a bare switch
 * and from KVD_METRICS_AUTH, loopback detection and when the exposure
 * warning is due. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/auth.h"
#include "server/config.h"
#include "tests/support/check_main.h"

static char err[512];

static char *write_temp(const char *text)
{
    char *path = strdup("/tmp/kvd_test_keys_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static int parse(kvd_config *cfg, char **argv, int argc)
{
    return kvd_config_parse(cfg, argc, argv, err, sizeof err);
}

START_TEST(flags_and_environment)
{
    kvd_config c;
    unsetenv("KVD_API_KEY");
    char *plain[] = {"kvd"};
    ck_assert_int_eq(parse(&c, plain, 1), 0);
    ck_assert_ptr_null(c.api_key_file);
    ck_assert_ptr_null(c.api_key);
    ck_assert(!c.metrics_auth);

    char *argv[] = {"kvd", "--api-key-file", "/etc/kvd/keys", "--metrics-auth", "--port", "9000"};
    ck_assert_int_eq(parse(&c, argv, 6), 0);
    ck_assert_str_eq(c.api_key_file, "/etc/kvd/keys");
    ck_assert(c.metrics_auth);  /* a bare switch: it did not eat "--port" */
    ck_assert_int_eq(c.port, 9000);

    setenv("KVD_METRICS_AUTH", "true", 1);
    setenv("KVD_API_KEY_FILE", "/env/keys", 1);
    setenv("KVD_API_KEY", "env-key", 1);
    char *off[] = {"kvd", "--metrics-auth=false"};
    ck_assert_int_eq(parse(&c, off, 2), 0);
    ck_assert(!c.metrics_auth); /* the flag beats the environment */
    ck_assert_str_eq(c.api_key_file, "/env/keys");
    ck_assert_str_eq(c.api_key, "env-key");
    setenv("KVD_METRICS_AUTH", "maybe", 1);
    ck_assert_int_eq(parse(&c, plain, 1), -1);
    unsetenv("KVD_METRICS_AUTH");
    unsetenv("KVD_API_KEY_FILE");
    unsetenv("KVD_API_KEY");
    char *empty[] = {"kvd", "--api-key-file="};
    ck_assert_int_eq(parse(&c, empty, 2), -1);
}
END_TEST

START_TEST(load_is_the_union)
{
    char *path = write_temp("# two keys\nfile-key-1\nfile-key-2\n");
    kvd_config c = {.api_key_file = path, .api_key = "  env-key\n"};
    kvd_auth_keys k = {0};
    ck_assert_int_eq(kvd__auth_load(&c, &k, err, sizeof err), 0);
    ck_assert_uint_eq(k.n, 3);
    ck_assert_uint_eq(kvd_auth_owner(&k, "Bearer file-key-1"), 1);
    ck_assert_uint_eq(kvd_auth_owner(&k, "Bearer file-key-2"), 2);
    ck_assert_uint_eq(kvd_auth_owner(&k, "Bearer env-key"), 3);
    kvd_auth_keys_free(&k);
    /* The same key in both is one key, one owner. */
    c.api_key = "file-key-2";
    ck_assert_int_eq(kvd__auth_load(&c, &k, err, sizeof err), 0);
    ck_assert_uint_eq(k.n, 2);
    kvd_auth_keys_free(&k);
    /* Either alone. */
    kvd_config env_only = {.api_key = "only"};
    ck_assert_int_eq(kvd__auth_load(&env_only, &k, err, sizeof err), 0);
    ck_assert_uint_eq(kvd_auth_owner(&k, "Bearer only"), 1);
    kvd_auth_keys_free(&k);
    kvd_config none = {.metrics_auth = false};
    ck_assert_int_eq(kvd__auth_load(&none, &k, err, sizeof err), 0);
    ck_assert_uint_eq(k.n, 0);
    unlink(path);
    free(path);
}
END_TEST

START_TEST(load_errors)
{
    kvd_auth_keys k = {0};
    kvd_config blank = {.api_key = " \t\n"};
    ck_assert_int_eq(kvd__auth_load(&blank, &k, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "KVD_API_KEY"));
    kvd_config spaced = {.api_key = "my secret"};
    ck_assert_int_eq(kvd__auth_load(&spaced, &k, err, sizeof err), -1);
    ck_assert_ptr_null(strstr(err, "secret"));
    kvd_config missing = {.api_key_file = "/nonexistent/kvd-keys", .api_key = "fine"};
    ck_assert_int_eq(kvd__auth_load(&missing, &k, err, sizeof err), -1);
    char *path = write_temp("\n# none\n");
    kvd_config no_key = {.api_key_file = path};
    ck_assert_int_eq(kvd__auth_load(&no_key, &k, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "no key"));
    kvd_config metrics = {.metrics_auth = true};
    ck_assert_int_eq(kvd__auth_load(&metrics, &k, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "--metrics-auth"));
    kvd_auth_keys_free(&k);
    unlink(path);
    free(path);
}
END_TEST

START_TEST(loopback_addresses)
{
    static const char *const loop[] = {"127.0.0.1", "127.1.2.3", "127.255.255.254", "::1",
                                       "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"};
    static const char *const other[] = {"0.0.0.0", "10.0.0.1", "192.0.2.1", "128.0.0.1", "::",
                                        "::2", "fe80::1", "::ffff:10.0.0.1", "localhost", "", "1.2.3"};
    for (size_t i = 0; i < sizeof loop / sizeof loop[0]; i++)
        ck_assert_msg(kvd__host_is_loopback(loop[i]), "%s", loop[i]);
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
        ck_assert_msg(!kvd__host_is_loopback(other[i]), "%s", other[i]);
}
END_TEST

START_TEST(warning_only_when_exposed_without_keys)
{
    kvd_auth_keys none = {0}, some = {0};
    ck_assert_int_eq(kvd_auth_keys_add(&some, "k", 1, err, sizeof err), 0);
    kvd_config c = {.host = "127.0.0.1"};
    ck_assert_ptr_null(kvd__auth_warning(&c, &none));
    strcpy(c.host, "0.0.0.0");
    const char *w = kvd__auth_warning(&c, &none);
    ck_assert_ptr_nonnull(w);
    ck_assert_ptr_nonnull(strstr(w, "warning"));
    ck_assert_ptr_null(kvd__auth_warning(&c, &some));
    strcpy(c.host, "::");
    ck_assert_ptr_nonnull(kvd__auth_warning(&c, &none));
    kvd_auth_keys_free(&some);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("server_auth");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, flags_and_environment);
    tcase_add_test(tc, load_is_the_union);
    tcase_add_test(tc, load_errors);
    tcase_add_test(tc, loopback_addresses);
    tcase_add_test(tc, warning_only_when_exposed_without_keys);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
