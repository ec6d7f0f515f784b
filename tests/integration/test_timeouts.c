/* tests/integration/test_timeouts.c — kvd's connection deadlines and caps
 * on real loopback sockets (issue 10): a 200-connection slowloris closed by
 * --header-timeout while a normal client is answered; --body-timeout,
 * --idle-timeout and --write-timeout each close only their connection;
 * --max-connections answers 503; SIGTERM with a client that never reads
 * exits after --drain-seconds; a half-closed client is answered. Waits are
 * polls with generous hang guards, never timing assertions. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <check.h>

#include "tests/support/check_main.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_proc.h"

/* Hang guard for "the server closes it": many times the short timeouts. */
#define CLOSE_GUARD_MS 20000
#define SLOW_CONNS 200
#define CASE_TIMEOUT_S 120
/* Bytes of kvd's stderr a failure message quotes (its end). */
#define STDERR_QUOTE 500

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A raw client socket; rcvbuf > 0 shrinks its receive buffer first. */
static int raw_connect(int port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* Open sockets of the server process (its /proc/PID/fd entries that are
 * sockets): the listener, plus one per connection. */
static int server_sockets(pid_t pid)
{
    char path[64], link[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char fp[400];
        snprintf(fp, sizeof fp, "%s/%s", path, e->d_name);
        ssize_t l = readlink(fp, link, sizeof link - 1);
        if (l > 0) {
            link[l] = '\0';
            n += strncmp(link, "socket:", 7) == 0;
        }
    }
    closedir(d);
    return n;
}

/* Polls until the server holds at most `want` sockets; returns the count. */
static int wait_sockets_at_most(pid_t pid, int want, int guard_ms)
{
    long long end = now_ms() + guard_ms;
    int n;
    while ((n = server_sockets(pid)) > want && now_ms() < end)
        sleep_ms(50);
    return n;
}

/* Stuffs a connection with pipelined GETs until the server stops taking
 * them (its answers fill our tiny receive buffer): a client that never reads. */
static int stuff_never_reading(int port)
{
    int fd = raw_connect(port, 4096);
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    int stalled = 0;
    size_t off = 0; /* into req: a send may take part of it */
    for (int i = 0; i < 200000 && stalled < 20; i++) {
        ssize_t w = send(fd, req + off, sizeof req - 1 - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            stalled++;
            sleep_ms(50);
            continue;
        }
        if (w < 0) /* closed by the server meanwhile (a short write timeout) */
            return fd;
        off = (off + (size_t)w) % (sizeof req - 1);
        stalled = 0;
    }
    ck_assert_msg(stalled >= 20, "the server kept reading a client that never reads");
    return fd;
}

/* Issue 10 bug 3: SIGTERM with a client that never reads its answers. */
START_TEST(drain_deadline_closes_a_client_that_never_reads)
{
    static const char *const args[] = {"--drain-seconds", "1", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int fd = stuff_never_reading(kvd_proc_port(p));
    kvd_proc_signal(p, SIGTERM);
    int status = 0;
    bool exited = kvd_proc_wait(p, CLOSE_GUARD_MS, &status);
    close(fd);
    ck_assert_msg(exited, "kvd still running %d ms after SIGTERM (--drain-seconds 1)",
                  CLOSE_GUARD_MS);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    char *err = kvd_proc_stderr(p);
    /* The access log of every stuffed request is in there too: quote only
     * its end (Check refuses a message over 4 KiB, and aborts). */
    const size_t len = strlen(err);
    ck_assert_msg(strstr(err, "drain deadline: closed 1 connection"), "stderr (last %d of %zu bytes): %s",
                  STDERR_QUOTE, len, err + (len > STDERR_QUOTE ? len - STDERR_QUOTE : 0));
    free(err);
    kvd_proc_free(p);
}
END_TEST

START_TEST(write_timeout_closes_a_client_that_never_reads)
{
    static const char *const args[] = {"--write-timeout", "1", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    pid_t pid = kvd_proc_pid(p);
    int base = server_sockets(pid);
    int fd = stuff_never_reading(kvd_proc_port(p));
    int n = wait_sockets_at_most(pid, base, CLOSE_GUARD_MS);
    ck_assert_msg(n <= base, "the stalled connection is still open (%d sockets, %d before)", n,
                  base);
    close(fd);
    kvd_proc_stop_ck(p);
}
END_TEST

/* The header timeout against 200 slowloris connections: a normal client
 * is answered meanwhile, and every slow connection is closed. */
START_TEST(slowloris_is_cut_off_and_others_are_served)
{
    static const char *const args[] = {"--header-timeout", "1", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    pid_t pid = kvd_proc_pid(p);
    int base = server_sockets(pid);
    int fds[SLOW_CONNS];
    bool open_[SLOW_CONNS];
    static const char head[] = "GET /healthz HTTP/1.1\r\nX-Slow: ";
    for (int i = 0; i < SLOW_CONNS; i++) {
        fds[i] = raw_connect(port, 0);
        open_[i] = true;
        ck_assert_int_eq((int)send(fds[i], head, 5, MSG_NOSIGNAL), 5);
    }
    /* Trickle a byte every ~0.5 s on each; serve a normal client between. */
    int left = SLOW_CONNS, answered = 0;
    long long end = now_ms() + CLOSE_GUARD_MS;
    for (int round = 0; left > 0 && now_ms() < end; round++) {
        for (int i = 0; i < SLOW_CONNS; i++) {
            if (!open_[i])
                continue;
            char b = head[5 + round % (int)(sizeof head - 6)];
            char junk;
            if (send(fds[i], &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 ||
                recv(fds[i], &junk, 1, MSG_DONTWAIT) == 0) {
                open_[i] = false;
                left--;
                close(fds[i]);
            }
        }
        http_response *r = http_request(port, "GET", "/healthz", NULL, NULL);
        ck_assert_msg(r->status == 200, "normal client not served during the slowloris: %d %s",
                      r->status, r->error);
        http_response_free(r);
        answered++;
        sleep_ms(500);
    }
    ck_assert_msg(left == 0, "%d of %d slow connections still open", left, SLOW_CONNS);
    ck_assert_int_gt(answered, 0);
    ck_assert_int_le(wait_sockets_at_most(pid, base, CLOSE_GUARD_MS), base);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(body_and_idle_timeouts_close_their_connection)
{
    static const char *const args[] = {"--body-timeout", "1", "--idle-timeout", "1", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    /* a body that stops arriving */
    http_conn *c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    static const char part[] = "POST /v1/sessions HTTP/1.1\r\nHost: t\r\n"
                               "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"la";
    ck_assert_int_eq(http_conn_send(c, part, sizeof part - 1), 0);
    ck_assert_msg(http_conn_wait_closed(c, CLOSE_GUARD_MS) == 1, "stalled body not closed");
    http_conn_close(c);
    /* an idle keep-alive connection, after an answered request */
    c = http_conn_open(port);
    static const char get[] = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    ck_assert_int_eq(http_conn_send(c, get, sizeof get - 1), 0);
    http_response *r = http_conn_read(c, HTTP_TIMEOUT_MS);
    ck_assert_int_eq(r->status, 200);
    http_response_free(r);
    ck_assert_msg(http_conn_wait_closed(c, CLOSE_GUARD_MS) == 1, "idle connection not closed");
    http_conn_close(c);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(max_connections_answers_503)
{
    static const char *const args[] = {"--max-connections", "4", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    http_conn *held[4];
    static const char get[] = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    for (int i = 0; i < 4; i++) { /* answered, so the server has accepted each */
        held[i] = http_conn_open(port);
        ck_assert_ptr_nonnull(held[i]);
        ck_assert_int_eq(http_conn_send(held[i], get, sizeof get - 1), 0);
        http_response *r = http_conn_read(held[i], HTTP_TIMEOUT_MS);
        ck_assert_int_eq(r->status, 200);
        http_response_free(r);
    }
    http_response *r = http_request(port, "GET", "/healthz", NULL, NULL);
    ck_assert_msg(r->status == 503, "5th connection: %d", r->status);
    ck_assert_ptr_nonnull(http_header_get(r, "Retry-After"));
    ck_assert_ptr_nonnull(strstr(r->body, "max-connections"));
    http_response_free(r);
    http_conn_close(held[0]);
    /* once one is gone a new connection is served (the close takes a moment) */
    int status = 0;
    for (long long end = now_ms() + CLOSE_GUARD_MS; status != 200 && now_ms() < end;) {
        r = http_request(port, "GET", "/healthz", NULL, NULL);
        status = r->status;
        http_response_free(r);
        if (status != 200)
            sleep_ms(50);
    }
    ck_assert_int_eq(status, 200);
    for (int i = 1; i < 4; i++)
        http_conn_close(held[i]);
    kvd_proc_stop_ck(p);
}
END_TEST

/* Issue 10 bug 6 on a real socket: requests, then shutdown(SHUT_WR). */
START_TEST(half_closed_client_is_answered)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    int fd = raw_connect(kvd_proc_port(p), 0);
    static const char reqs[] = "POST /v1/sessions HTTP/1.1\r\nHost: t\r\n"
                               "Content-Type: application/json\r\nContent-Length: 51\r\n\r\n"
                               "{\"layers\":1,\"heads\":4,\"kv_heads\":2,\"head_dim\":32}  "
                               "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    ck_assert_int_eq((int)send(fd, reqs, sizeof reqs - 1, MSG_NOSIGNAL), (int)sizeof reqs - 1);
    ck_assert_int_eq(shutdown(fd, SHUT_WR), 0);
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[8192];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof buf - 1 && (n = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    close(fd);
    ck_assert_msg(strncmp(buf, "HTTP/1.1 201 ", 13) == 0, "no answer to the create: %s", buf);
    const char *second = strstr(buf + 1, "HTTP/1.1 200 ");
    ck_assert_msg(second != NULL, "no answer to the GET: %s", buf);
    ck_assert_msg(n == 0, "the server did not close after answering");
    kvd_proc_stop_ck(p);
}
END_TEST

/* HEAD on GET routes: GET's headers, its Content-Length, no body. */
START_TEST(head_is_get_without_body)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    int fd = raw_connect(kvd_proc_port(p), 0);
    static const char reqs[] = "HEAD /v1/info HTTP/1.1\r\nHost: t\r\n\r\n"
                               "GET /v1/info HTTP/1.1\r\nHost: t\r\n\r\n";
    ck_assert_int_eq((int)send(fd, reqs, sizeof reqs - 1, MSG_NOSIGNAL), (int)sizeof reqs - 1);
    shutdown(fd, SHUT_WR); /* answered, then closed (see above) */
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[16384];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof buf - 1 && (n = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    close(fd);
    ck_assert_msg(strncmp(buf, "HTTP/1.1 200 ", 13) == 0, "HEAD: %s", buf);
    const char *end1 = strstr(buf, "\r\n\r\n");
    ck_assert_ptr_nonnull(end1);
    ck_assert_msg(strncmp(end1 + 4, "HTTP/1.1 200 ", 13) == 0, "HEAD answer has a body: %s",
                  end1 + 4);
    const char *cl1 = strcasestr(buf, "Content-Length: ");
    const char *cl2 = strcasestr(end1 + 4, "Content-Length: ");
    ck_assert(cl1 && cl2 && cl1 < end1);
    ck_assert_int_gt(atoi(cl1 + 16), 0);
    ck_assert_int_eq(atoi(cl1 + 16), atoi(cl2 + 16));
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/timeouts");
    TCase *tc = tcase_create("timeouts");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, drain_deadline_closes_a_client_that_never_reads);
    tcase_add_test(tc, write_timeout_closes_a_client_that_never_reads);
    tcase_add_test(tc, slowloris_is_cut_off_and_others_are_served);
    tcase_add_test(tc, body_and_idle_timeouts_close_their_connection);
    tcase_add_test(tc, max_connections_answers_503);
    tcase_add_test(tc, half_closed_client_is_answered);
    tcase_add_test(tc, head_is_get_without_body);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
