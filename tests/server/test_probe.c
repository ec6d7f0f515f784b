/* tests/server/test_probe.c — the --probe client (server/probe.c): which URLs
 * it takes and refuses, how --probe reaches kvd_config, the request it sends,
 * and its verdict on canned answers from a one-shot loopback listener (2xx,
 * other statuses, not HTTP, a hang-up, silence, a closed port). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <check.h>

#include "server/config.h"
#include "server/probe.h"
#include "tests/support/check_main.h"

/* Short, since these listeners answer at once or (silent) never: it bounds
 * the silent case only and is not a measurement. */
#define SILENT_TIMEOUT_MS 200

static void parse_ok(const char *url, const char *host, const char *port, const char *path,
                     const char *host_header)
{
    kvd_probe_target t;
    char err[256] = "";
    ck_assert_msg(kvd__probe_parse_url(url, &t, err, sizeof err) == 0, "%s: %s", url, err);
    ck_assert_str_eq(t.host, host);
    ck_assert_str_eq(t.port, port);
    ck_assert_str_eq(t.path, path);
    ck_assert_str_eq(t.host_header, host_header);
}

static void parse_bad(const char *url, const char *why)
{
    kvd_probe_target t;
    char err[256] = "";
    ck_assert_msg(kvd__probe_parse_url(url, &t, err, sizeof err) == -1, "%s was accepted", url);
    ck_assert_msg(strstr(err, why) != NULL, "%s: '%s' lacks '%s'", url, err, why);
}

START_TEST(urls_accepted)
{
    parse_ok("http://127.0.0.1:8080/healthz", "127.0.0.1", "8080", "/healthz", "127.0.0.1:8080");
    parse_ok("http://localhost", "localhost", "80", "/", "localhost");
    parse_ok("http://localhost/", "localhost", "80", "/", "localhost");
    parse_ok("http://[::1]:9/readyz?x=1", "::1", "9", "/readyz?x=1", "[::1]:9");
    parse_ok("http://[::1]", "::1", "80", "/", "[::1]");
    parse_ok("http://h:00080/a", "h", "80", "/a", "h:00080");
}
END_TEST

START_TEST(urls_refused)
{
    parse_bad("127.0.0.1:8080/healthz", "expected http://");
    parse_bad("https://127.0.0.1/healthz", "https is not supported");
    parse_bad("http://", "no host");
    parse_bad("http:///healthz", "no host");
    parse_bad("http://:8080/", "no host");
    parse_bad("http://h:/", "port must be");
    parse_bad("http://h:0/", "port must be");
    parse_bad("http://h:65536/", "port must be");
    parse_bad("http://h:123456/", "port must be");
    parse_bad("http://h:8o/", "port must be");
    parse_bad("http://[::1/", "unclosed");
    parse_bad("http://[::1]x/", "junk after");
    parse_bad("http://[]:80/", "no host");
    parse_bad("http://u@h/", "user information");
    parse_bad("http://h?x", "query or fragment");
    parse_bad("http://h/a b", "spaces or control");
    parse_bad("http://h/a\r\nX-Evil: 1", "spaces or control");
    char long_host[300];
    memset(long_host, 'a', sizeof long_host);
    memcpy(long_host, "http://", 7);
    long_host[sizeof long_host - 1] = '\0';
    parse_bad(long_host, "host too long");
}
END_TEST

START_TEST(config_flag)
{
    kvd_config c;
    char err[256] = "";
    char *argv[] = {"kvd", "--probe", "http://127.0.0.1:8080/healthz"};
    ck_assert_int_eq(kvd_config_parse(&c, 3, argv, err, sizeof err), 0);
    ck_assert_str_eq(c.probe_url, "http://127.0.0.1:8080/healthz");
    char *eq[] = {"kvd", "--probe=http://[::1]:1/"};
    ck_assert_int_eq(kvd_config_parse(&c, 2, eq, err, sizeof err), 0);
    ck_assert_str_eq(c.probe_url, "http://[::1]:1/");
    char *none[] = {"kvd"};
    ck_assert_int_eq(kvd_config_parse(&c, 1, none, err, sizeof err), 0);
    ck_assert_ptr_null(c.probe_url);
    char *bad[] = {"kvd", "--probe", "localhost:8080"};
    ck_assert_int_eq(kvd_config_parse(&c, 3, bad, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "bad --probe URL (expected http://HOST[:PORT][/PATH]): 'localhost:8080'"), "%s", err);
    char *missing[] = {"kvd", "--probe"};
    ck_assert_int_eq(kvd_config_parse(&c, 2, missing, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "--probe needs a value"), "%s", err);
    ck_assert_msg(strstr(kvd_usage, "--probe URL"), "--help lacks --probe");
}
END_TEST

/* The environment never selects a probe: the container's HEALTHCHECK and its
 * server share one environment. */
START_TEST(config_env_ignored)
{
    kvd_config c;
    char err[256] = "";
    setenv("KVD_PROBE", "http://127.0.0.1:1/healthz", 1);
    char *argv[] = {"kvd"};
    ck_assert_int_eq(kvd_config_parse(&c, 1, argv, err, sizeof err), 0);
    ck_assert_ptr_null(c.probe_url);
    unsetenv("KVD_PROBE");
}
END_TEST

/* A loopback listener on an ephemeral port that answers one connection with
 * `answer` (NULL: close without a word) after reading the request head. */
typedef struct canned {
    int fd;
    int port;
    const char *answer;
    char request[2048]; /* what the probe sent, NUL-terminated */
    pthread_t thread;
} canned;

static int loopback_socket(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void *canned_main(void *arg)
{
    canned *c = arg;
    int conn = accept(c->fd, NULL, NULL);
    if (conn < 0)
        return NULL;
    size_t len = 0;
    while (len < sizeof c->request - 1 && !strstr(c->request, "\r\n\r\n")) {
        ssize_t n = read(conn, c->request + len, sizeof c->request - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        c->request[len] = '\0';
    }
    if (c->answer) {
        ssize_t w = write(conn, c->answer, strlen(c->answer));
        (void)w;
    }
    close(conn);
    return NULL;
}

static void canned_start(canned *c, const char *answer)
{
    memset(c, 0, sizeof *c);
    c->answer = answer;
    c->fd = loopback_socket(&c->port);
    ck_assert_int_eq(listen(c->fd, 4), 0);
    ck_assert_int_eq(pthread_create(&c->thread, NULL, canned_main, c), 0);
}

static void canned_join(canned *c)
{
    pthread_join(c->thread, NULL);
    close(c->fd);
}

/* Probes http://127.0.0.1:<port><path>; returns the verdict, why in why. */
static int probe(int port, const char *path, int timeout_ms, char *why, size_t why_len)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    kvd_probe_target t;
    char err[256];
    ck_assert_int_eq(kvd__probe_parse_url(url, &t, err, sizeof err), 0);
    return kvd__probe_run(&t, timeout_ms, why, why_len);
}

static void expect(const char *answer, int verdict, const char *why_has)
{
    canned c;
    canned_start(&c, answer);
    char why[256] = "";
    int got = probe(c.port, "/healthz", KVD_PROBE_TIMEOUT_MS, why, sizeof why);
    canned_join(&c);
    ck_assert_msg(got == verdict, "answer %s: verdict %d (%s), wanted %d", answer ? answer : "(none)",
                  got, why, verdict);
    ck_assert_msg(strstr(why, why_has), "answer %s: '%s' lacks '%s'", answer ? answer : "(none)", why,
                  why_has);
}

START_TEST(request_sent)
{
    canned c;
    canned_start(&c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    char why[256] = "";
    ck_assert_int_eq(probe(c.port, "/readyz?x=1", KVD_PROBE_TIMEOUT_MS, why, sizeof why), 0);
    canned_join(&c);
    char host[64];
    snprintf(host, sizeof host, "\r\nHost: 127.0.0.1:%d\r\n", c.port);
    ck_assert_msg(strncmp(c.request, "GET /readyz?x=1 HTTP/1.1\r\n", 26) == 0, "%s", c.request);
    ck_assert_msg(strstr(c.request, host), "%s", c.request);
    ck_assert_msg(strstr(c.request, "\r\nConnection: close\r\n"), "%s", c.request);
}
END_TEST

START_TEST(verdicts)
{
    expect("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0, "HTTP 200");
    expect("HTTP/1.0 204 No Content\r\n\r\n", 0, "HTTP 204");
    expect("HTTP/1.1 299\r\n\r\n", 0, "HTTP 299");
    expect("HTTP/1.1 199 Odd\r\n\r\n", 1, "HTTP 199");
    expect("HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n", 1, "HTTP 301");
    expect("HTTP/1.1 404 Not Found\r\n\r\n", 1, "HTTP 404");
    expect("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n", 1, "HTTP 503");
    expect("HTTP/1.1 200", 1, "not an HTTP/1.x answer"); /* cut short: no end of line */
    expect("HTTP/1.1 2000 OK\r\n\r\n", 1, "not an HTTP/1.x answer");
    expect("HTTP/2 200\r\n\r\n", 1, "not an HTTP/1.x answer");
    expect("SSH-2.0-OpenSSH_9.2\r\n", 1, "not an HTTP/1.x answer");
    expect(NULL, 1, "connection closed before any answer");
}
END_TEST

/* A listener that never accepts: the kernel completes the handshake, the
 * request is sent, and no answer ever comes. */
START_TEST(silence_times_out)
{
    int port, fd = loopback_socket(&port);
    ck_assert_int_eq(listen(fd, 4), 0);
    char why[256] = "";
    ck_assert_int_eq(probe(port, "/healthz", SILENT_TIMEOUT_MS, why, sizeof why), 1);
    ck_assert_msg(strstr(why, "timed out after 200 ms waiting for the answer"), "%s", why);
    close(fd);
}
END_TEST

/* A port bound but not listening refuses, and nobody else can take it meanwhile. */
START_TEST(closed_port_refused)
{
    int port, fd = loopback_socket(&port);
    char why[256] = "";
    ck_assert_int_eq(probe(port, "/healthz", KVD_PROBE_TIMEOUT_MS, why, sizeof why), 1);
    ck_assert_msg(strstr(why, "cannot connect: Connection refused"), "%s", why);
    close(fd);
}
END_TEST

static Suite *probe_suite(void)
{
    Suite *s = suite_create("probe");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, urls_accepted);
    tcase_add_test(tc, urls_refused);
    tcase_add_test(tc, config_flag);
    tcase_add_test(tc, config_env_ignored);
    tcase_add_test(tc, request_sent);
    tcase_add_test(tc, verdicts);
    tcase_add_test(tc, silence_times_out);
    tcase_add_test(tc, closed_port_refused);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(probe_suite)
