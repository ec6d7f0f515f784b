/* tests/server/test_strict.c — strict HTTP/1.1 framing (server/parse.c) with
 * no socket (server/loopback.h): every request-smuggling and leniency case
 * (chunk data without CRLF, spaces in header names, HTTP/0.9 and unknown
 * versions, Content-Length with Transfer-Encoding, duplicate lengths,
 * obs-fold, bare LF and CR, ...) gets 400 and close, and never reaches the
 * handler; a well-formed request on the same code path still succeeds.
 * Also the JSON access log's escaping of bytes that are not UTF-8. */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "server/http.h"
#include "server/internal.h"
#include "server/loopback.h"
#include "tests/support/check_main.h"

static int g_handled;

static void handler(void *ctx, kvd_http_exchange *ex, const kvd_http_request *req)
{
    (void)ctx;
    g_handled++;
    kvd_http_exchange_set_route(ex, "test");
    kvd_response resp = {.status = 200, .content_type = "text/plain"};
    resp.body = malloc(req->body_len + 1);
    ck_assert_ptr_nonnull(resp.body);
    memcpy(resp.body, req->body, req->body_len + 1);
    resp.body_len = req->body_len;
    kvd_http_respond(ex, &resp);
}

typedef struct bad_case {
    const char *what;
    const char *bytes;
} bad_case;

static const bad_case k_bad[] = {
    {"chunk data without CRLF",
     "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"},
    {"space in a header name", "GET /x HTTP/1.1\r\nHost : t\r\n\r\n"},
    {"tab in a header name", "GET /x HTTP/1.1\r\nHo\tst: t\r\n\r\n"},
    {"HTTP/0.9 request line", "GET /x\r\n\r\n"},
    {"HTTP/0.9 request line, bare", "GET /x\r\n"},
    {"unknown version 1.2", "GET /x HTTP/1.2\r\nHost: t\r\n\r\n"},
    {"version 2.0", "GET /x HTTP/2.0\r\nHost: t\r\n\r\n"},
    {"lower-case protocol", "GET /x http/1.1\r\nHost: t\r\n\r\n"},
    {"Content-Length and Transfer-Encoding",
     "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     "0\r\n\r\n"},
    {"Transfer-Encoding and Content-Length",
     "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
     "0\r\n\r\n"},
    {"two Content-Lengths that differ",
     "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"},
    {"two equal Content-Lengths",
     "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"},
    {"Content-Length list", "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc"},
    {"signed Content-Length", "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc"},
    {"Content-Length with a space inside",
     "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1 3\r\n\r\nabc"},
    {"chunked not last", "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
                         "0\r\n\r\n"},
    {"Transfer-Encoding without chunked",
     "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc"},
    {"Transfer-Encoding chunked twice",
     "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
     "\r\n0\r\n\r\n"},
    {"obs-fold", "GET /x HTTP/1.1\r\nHost: t\r\nX-A: a\r\n  folded\r\n\r\n"},
    {"obs-fold of Transfer-Encoding",
     "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 3\r\n\r\n"
     "abc"},
    {"whitespace before the first header", "GET /x HTTP/1.1\r\n Host: t\r\n\r\n"},
    {"bare LF line ends", "GET /x HTTP/1.1\nHost: t\n\n"},
    {"bare LF after the headers", "GET /x HTTP/1.1\r\nHost: t\r\n\n"},
    {"bare LF in the request line", "GET /x HTTP/1.1\nHost: t\r\n\r\n"},
    {"bare CR in a header value", "GET /x HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n"},
    {"NUL in a header value", "GET /x HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n"},
    {"control character in a header value", "GET /x HTTP/1.1\r\nHost: t\r\nX-A: a\x01" "b\r\n\r\n"},
    {"bare LF after a chunk size",
     "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"},
    {"bare LF after chunk data",
     "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n"},
    {"chunk size with a space", "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                "3 \r\nabc\r\n0\r\n\r\n"},
    {"chunk size not hex", "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "z\r\nabc\r\n0\r\n\r\n"},
    {"chunk size overflow", "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "100000000000000003\r\nabc\r\n0\r\n\r\n"},
    {"two spaces in the request line", "GET  /x HTTP/1.1\r\nHost: t\r\n\r\n"},
    {"space in the target", "GET /x y HTTP/1.1\r\nHost: t\r\n\r\n"},
    {"unknown method", "FOO /x HTTP/1.1\r\nHost: t\r\n\r\n"},
    {"lower-case method", "get /x HTTP/1.1\r\nHost: t\r\n\r\n"},
    {"empty header name", "GET /x HTTP/1.1\r\nHost: t\r\n: v\r\n\r\n"},
    {"byte over 0x7f in the target", "GET /a\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n"},
    {"header line without a colon", "GET /x HTTP/1.1\r\nHost: t\r\nnocolon\r\n\r\n"},
};

static int quiet_begin(void)
{
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    int null = open("/dev/null", O_WRONLY);
    ck_assert_int_ge(saved, 0);
    ck_assert_int_ge(null, 0);
    dup2(null, STDERR_FILENO);
    close(null);
    return saved;
}

static void quiet_end(int saved)
{
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
}

/* Feeds bytes (of length len), then a well-formed request after them that
 * must never be answered; returns what was written (caller frees). */
static char *run(const char *bytes, size_t len, bool *closed)
{
    g_handled = 0;
    kvd_http_options opt = {.max_body = 4096, .max_pipelined = 8};
    kvd__loopback *lb = kvd__loopback_open(&opt, handler, NULL);
    ck_assert_ptr_nonnull(lb);
    kvd__loopback_feed(lb, bytes, len);
    static const char after[] = "GET /after HTTP/1.1\r\nHost: t\r\n\r\n";
    kvd__loopback_feed(lb, after, sizeof after - 1);
    size_t n;
    const char *out = kvd__loopback_output(lb, &n);
    char *copy = malloc(n + 1);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, out, n);
    copy[n] = '\0';
    *closed = kvd__loopback_closed(lb);
    ck_assert(kvd__loopback_free(lb));
    return copy;
}

static size_t case_len(const bad_case *c)
{
    /* The NUL case holds a NUL: its length is up to the final "\r\n\r\n". */
    const char *end = c->bytes + strlen(c->bytes);
    if (strstr(c->what, "NUL"))
        end = strstr(end + 1, "\r\n\r\n") + 4;
    return (size_t)(end - c->bytes);
}

START_TEST(each_lenient_case_is_400_and_close)
{
    const bad_case *c = &k_bad[_i];
    int saved = quiet_begin();
    bool closed;
    char *out = run(c->bytes, case_len(c), &closed);
    quiet_end(saved);
    ck_assert_msg(strncmp(out, "HTTP/1.1 400 ", 13) == 0, "%s: expected 400, got:\n%s", c->what,
                  out);
    ck_assert_msg(strstr(out, "Connection: close\r\n") != NULL, "%s: no Connection: close",
                  c->what);
    ck_assert_msg(strstr(out, "HTTP/1.1 200") == NULL && g_handled == 0,
                  "%s: a request reached the handler:\n%s", c->what, out);
    ck_assert_msg(closed, "%s: connection left open", c->what);
    free(out);
}
END_TEST

/* The same path with well-formed bytes works: the cases above fail for
 * their one defect, not for something the test got wrong. */
START_TEST(well_formed_requests_still_work)
{
    static const char *const ok[] = {
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        "GET /x HTTP/1.1\r\nHost: t\r\nX-A: a\tb  \r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\n"
        "T: v\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int saved = quiet_begin();
        bool closed;
        char *out = run(ok[i], strlen(ok[i]), &closed);
        quiet_end(saved);
        ck_assert_msg(strncmp(out, "HTTP/1.1 200 ", 13) == 0, "case %zu: %s", i, out);
        ck_assert_int_eq(g_handled, 2); /* and the request after it */
        ck_assert(!closed);
        free(out);
    }
}
END_TEST

/* HTTP/1.0 and a request after Connection: close are not parsed on. */
START_TEST(nothing_after_close)
{
    static const char bytes[] = "POST /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                "Content-Length: 1\r\n\r\nz";
    int saved = quiet_begin();
    bool closed;
    char *out = run(bytes, sizeof bytes - 1, &closed);
    quiet_end(saved);
    ck_assert_int_eq(g_handled, 1);
    ck_assert(closed);
    ck_assert_ptr_null(strstr(out + 1, "HTTP/1.1"));
    free(out);
}
END_TEST

/* Issue 10 bug 8: bytes that are not UTF-8 never reach a JSON log line raw. */
START_TEST(json_log_escapes_invalid_utf8)
{
    static const struct { const char *in, *want; } cases[] = {
        {"/plain", "/plain"},
        {"/caf\xc3\xa9", "/caf\xc3\xa9"},                 /* well-formed: kept */
        {"/\xe2\x82\xac\xf0\x9f\x98\x80", "/\xe2\x82\xac\xf0\x9f\x98\x80"},
        {"/a\xff" "b", "/a\\u00ffb"},                        /* not UTF-8 */
        {"/\xc3", "/\\u00c3"},                            /* truncated */
        {"/\xc0\xaf", "/\\u00c0\\u00af"},                /* overlong */
        {"/\xed\xa0\x80", "/\\u00ed\\u00a0\\u0080"},    /* a surrogate */
        {"/\xf4\x90\x80\x80", "/\\u00f4\\u0090\\u0080\\u0080"}, /* past U+10FFFF */
        {"/q\"\\\x01\x7f", "/q\\\"\\\\\\u0001\\u007f"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[256];
        size_t n = kvd__log_json_escape(out, sizeof out, cases[i].in, strlen(cases[i].in));
        out[n] = '\0';
        ck_assert_msg(strcmp(out, cases[i].want) == 0, "case %zu: got %s want %s", i, out,
                      cases[i].want);
    }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("server_strict");
    TCase *tc = tcase_create("strict");
    tcase_add_loop_test(tc, each_lenient_case_is_400_and_close, 0,
                        (int)(sizeof k_bad / sizeof k_bad[0]));
    tcase_add_test(tc, well_formed_requests_still_work);
    tcase_add_test(tc, nothing_after_close);
    tcase_add_test(tc, json_log_escapes_invalid_utf8);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
