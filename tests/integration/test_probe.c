/* tests/integration/test_probe.c — `kvd --probe URL` as the container's
 * HEALTHCHECK runs it: the real binary against a real kvd on an ephemeral
 * loopback port. /healthz exits 0 and prints nothing; a 404 path and a closed
 * port exit 1 with the reason on one line; a bad URL is a usage error (2);
 * KVD_PROBE in the environment does not turn a server into a probe. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <check.h>

#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

/* A probe gives up after 2 s (KVD_PROBE_TIMEOUT_MS); one that runs far past
 * that is a hung probe, a failure (the bound, not a measurement). */
#define PROBE_RUN_DEADLINE_MS 20000

static const char *const server_args[] = {"--memory", "16MiB", "--threads", "1", NULL};

/* Runs `$KVD_BINARY <args...>` (NULL-terminated) to its end; returns its
 * exit code, its stdout+stderr in *out (caller frees). */
static int run_kvd(const char *const *args, char **out)
{
    const kvd_proc_run_opts opt = {.stdout_too = true, .deadline_ms = PROBE_RUN_DEADLINE_MS};
    return kvd_proc_run(args, &opt, out);
}

static int probe(const char *url, char **out)
{
    const char *const args[] = {"--probe", url, NULL};
    return run_kvd(args, out);
}

static int lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

START_TEST(healthz_is_healthy)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    char url[128], *out;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/healthz", kvd_proc_port(p));
    int rc = probe(url, &out);
    ck_assert_msg(rc == 0 && *out == '\0', "probe %s: exit %d, output:\n%s", url, rc, out);
    free(out);
    /* The server saw it as one ordinary request and keeps serving. */
    rc = probe(url, &out);
    ck_assert_msg(rc == 0, "second probe: exit %d:\n%s", rc, out);
    free(out);
    char *log = kvd_proc_stderr(p);
    ck_assert_msg(strstr(log, "path=/healthz route=healthz status=200"), "access log:\n%s", log);
    free(log);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(not_found_is_unhealthy)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    char url[128], *out;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/no-such-path", kvd_proc_port(p));
    int rc = probe(url, &out);
    ck_assert_msg(rc == 1, "probe %s: exit %d, output:\n%s", url, rc, out);
    ck_assert_msg(strstr(out, "HTTP 404") && lines(out) == 1, "one line with the status:\n%s", out);
    free(out);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(closed_port_is_unhealthy)
{
    /* Bound but not listening: refused, and no one else can take the port. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    char url[128], *out;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/healthz", ntohs(a.sin_port));
    int rc = probe(url, &out);
    close(fd);
    ck_assert_msg(rc == 1, "probe %s: exit %d, output:\n%s", url, rc, out);
    ck_assert_msg(strstr(out, "Connection refused") && lines(out) == 1, "one line with the reason:\n%s",
                  out);
    free(out);
}
END_TEST

START_TEST(bad_url_is_usage_error)
{
    static const char *const bad[] = {"127.0.0.1:8080/healthz", "https://127.0.0.1/healthz",
                                      "http://127.0.0.1:99999/", "http:///healthz"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *out;
        int rc = probe(bad[i], &out);
        ck_assert_msg(rc == 2, "probe %s: exit %d, output:\n%s", bad[i], rc, out);
        ck_assert_msg(strstr(out, "bad --probe URL") && lines(out) == 1, "%s:\n%s", bad[i], out);
        free(out);
    }
    const char *const missing[] = {"--probe", NULL};
    char *out;
    int rc = run_kvd(missing, &out);
    ck_assert_msg(rc == 2 && strstr(out, "--probe needs a value"), "exit %d:\n%s", rc, out);
    free(out);
    const char *const help[] = {"--help", NULL};
    rc = run_kvd(help, &out);
    ck_assert_msg(rc == 0 && strstr(out, "--probe URL"), "--help (exit %d):\n%s", rc, out);
    free(out);
}
END_TEST

/* The image's HEALTHCHECK runs in the server's environment: a KVD_PROBE
 * there must leave the server a server. */
START_TEST(env_does_not_probe)
{
    setenv("KVD_PROBE", "http://127.0.0.1:1/healthz", 1);
    kvd_proc *p = kvd_proc_start_ck(server_args); /* fails unless it listens */
    unsetenv("KVD_PROBE");
    char url[128], *out;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/healthz", kvd_proc_port(p));
    int rc = probe(url, &out);
    ck_assert_msg(rc == 0, "probe %s: exit %d:\n%s", url, rc, out);
    free(out);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *probe_suite(void)
{
    Suite *s = suite_create("probe");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, healthz_is_healthy);
    tcase_add_test(tc, not_found_is_unhealthy);
    tcase_add_test(tc, closed_port_is_unhealthy);
    tcase_add_test(tc, bad_url_is_usage_error);
    tcase_add_test(tc, env_does_not_probe);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(probe_suite)
