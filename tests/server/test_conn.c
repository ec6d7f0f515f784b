/* tests/server/test_conn.c — HTTP framing of server/conn.c and
 * server/parse.c with no socket (server/loopback.h): one byte stream of
 * pipelined requests (Expect: 100-continue, a deferred answer, chunked body
 * with extension and trailer, HEAD, Content-Length body, a bad request and
 * bytes after it) is fed whole, split at every offset, and byte by byte;
 * every run must write exactly the same, correct bytes and close. */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "server/http.h"
#include "server/loopback.h"
#include "tests/support/check_main.h"

#define MAX_BODY 1024u
#define MAX_DEFERRED 16

/* ---- a fake handler: answers at once, or later for /defer ---- */

typedef struct fake {
    kvd_http_exchange *deferred[MAX_DEFERRED]; /* in request order */
    char deferred_path[MAX_DEFERRED][64];
    int ndeferred;
    int handled;
} fake;

static void respond_text(kvd_http_exchange *ex, int status, const char *text, size_t len)
{
    kvd_response resp = {.status = status, .content_type = "text/plain"};
    resp.body = malloc(len + 1);
    ck_assert_ptr_nonnull(resp.body);
    memcpy(resp.body, text, len);
    resp.body[len] = '\0';
    resp.body_len = len;
    kvd_http_respond(ex, &resp);
}

static void fake_handler(void *ctx, kvd_http_exchange *ex, const kvd_http_request *req)
{
    fake *f = ctx;
    f->handled++;
    kvd_http_exchange_set_route(ex, "test");
    ck_assert(req->body[req->body_len] == '\0');
    if (strcmp(req->path, "/defer") == 0) {
        ck_assert_int_lt(f->ndeferred, MAX_DEFERRED);
        snprintf(f->deferred_path[f->ndeferred], sizeof f->deferred_path[0], "%s?%s", req->path,
                 req->query);
        f->deferred[f->ndeferred++] = ex;
        return;
    }
    char text[2048];
    int n = snprintf(text, sizeof text, "%s %s?%s ct=%s auth=%s n=%zu:%.*s", req->method,
                     req->path, req->query, req->content_type ? req->content_type : "-",
                     req->authorization ? req->authorization : "-", req->body_len,
                     (int)req->body_len, req->body);
    ck_assert_int_lt(n, (int)sizeof text);
    respond_text(ex, 200, text, (size_t)n);
}

static bool answer_deferred(fake *f)
{
    int n = f->ndeferred;
    for (int i = 0; i < n; i++) {
        char text[96];
        int len = snprintf(text, sizeof text, "deferred %s", f->deferred_path[i]);
        respond_text(f->deferred[i], 200, text, (size_t)len);
    }
    f->ndeferred = 0;
    return n > 0;
}

/* ---- driving a loopback connection ---- */

typedef struct run_result {
    char *out;     /* every byte written; caller frees */
    size_t len;
    bool closed;
    int handled;
} run_result;

/* Feeds data in pieces cut at cuts[0..ncuts) (increasing offsets); after
 * each piece answers deferred requests until the connection settles. */
static run_result run_stream(const char *data, size_t n, const size_t *cuts, size_t ncuts,
                             unsigned max_pipelined)
{
    fake f = {0};
    kvd_http_options opt = {.max_body = MAX_BODY, .max_pipelined = max_pipelined};
    kvd__loopback *lb = kvd__loopback_open(&opt, fake_handler, &f);
    ck_assert_ptr_nonnull(lb);
    size_t at = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : n;
        kvd__loopback_feed(lb, data + at, end - at);
        at = end;
        while (answer_deferred(&f))
            kvd__loopback_run(lb);
    }
    run_result r = {0};
    size_t len;
    const char *out = kvd__loopback_output(lb, &len);
    r.out = malloc(len + 1);
    ck_assert_ptr_nonnull(r.out);
    memcpy(r.out, out, len);
    r.out[len] = '\0';
    r.len = len;
    r.closed = kvd__loopback_closed(lb);
    r.handled = f.handled;
    ck_assert_msg(kvd__loopback_free(lb), "an exchange outlived the connection");
    return r;
}

/* The access log of thousands of runs goes nowhere. */
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

/* ---- the stream ---- */

static const char k_stream[] =
    /* 1: Expect: 100-continue (first, so nothing is queued before it) */
    "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nbody"
    /* 2: answered later by the test; its successors wait for it */
    "GET /defer?x=1 HTTP/1.1\r\nHost: t\r\n\r\n"
    /* 3: chunked, with a chunk extension and a trailer that is not a header */
    "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-TYPE: text/x\r\n\r\n"
    "5\r\nhello\r\n3;ext=1\r\n!!!\r\n0\r\nContent-Type: trailer\r\n\r\n"
    /* 4: HEAD: headers with the Content-Length the body would have, no body */
    "HEAD /head HTTP/1.1\r\nAUTHORIZATION: Bearer s3cret\r\n\r\n"
    /* 5: Content-Length body, query */
    "POST /echo?a=b&c HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz"
    /* 6: a bad request: 400, then close */
    "GET / HTTP/9.9\r\n\r\n"
    /* 7: never read */
    "GET /never HTTP/1.1\r\n\r\n";

#define R200(body)                                                                                 \
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"                       \
    "Connection: keep-alive\r\n\r\n" body

/* The response bytes the stream must produce, whatever the split. */
static char *expected_output(const char *bad_body)
{
    const char *b1 = "POST /echo? ct=- auth=- n=4:body";
    const char *b2 = "deferred /defer?x=1";
    const char *b3 = "POST /echo? ct=text/x auth=- n=8:hello!!!";
    const char *b4 = "HEAD /head? ct=- auth=Bearer s3cret n=0:";
    const char *b5 = "POST /echo?a=b&c ct=- auth=- n=3:xyz";
    char *s = malloc(8192);
    ck_assert_ptr_nonnull(s);
    int n = snprintf(s, 8192,
                     "HTTP/1.1 100 Continue\r\n\r\n"
                     R200("%s") R200("%s") R200("%s")
                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: keep-alive\r\n\r\n"
                     R200("%s")
                     "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     strlen(b1), b1, strlen(b2), b2, strlen(b3), b3, strlen(b4), strlen(b5), b5,
                     strlen(bad_body), bad_body);
    ck_assert_int_lt(n, 8192);
    return s;
}

static void check_against_whole(const char *what, const run_result *whole, const run_result *r,
                                size_t at)
{
    ck_assert_msg(r->len == whole->len && memcmp(r->out, whole->out, r->len) == 0,
                  "%s (cut at %zu): output differs from the single feed:\n%s", what, at, r->out);
    ck_assert_msg(r->closed, "%s (cut at %zu): connection not closed after the bad request",
                  what, at);
    ck_assert_int_eq(r->handled, 5);
}

static const unsigned k_pipelines[] = {1, 2, 8};

START_TEST(whole_stream_is_answered_correctly)
{
    size_t n = sizeof k_stream - 1;
    for (size_t p = 0; p < sizeof k_pipelines / sizeof k_pipelines[0]; p++) {
        int saved = quiet_begin();
        run_result r = run_stream(k_stream, n, NULL, 0, k_pipelines[p]);
        quiet_end(saved);
        const char *bad = strstr(r.out, "HTTP/1.1 400 Bad Request\r\n");
        ck_assert_ptr_nonnull(bad);
        bad = strstr(bad, "\r\n\r\n");
        ck_assert_ptr_nonnull(bad);
        bad += 4;
        ck_assert_msg(strncmp(bad, "{\"error\":{\"code\":\"invalid_argument\",\"message\":"
                                   "\"bad HTTP request: ", 60) == 0, "400 body: %s", bad);
        char *want = expected_output(bad);
        ck_assert_msg(strcmp(r.out, want) == 0, "max_pipelined %u: got\n%s\nwant\n%s",
                      k_pipelines[p], r.out, want);
        ck_assert(r.closed);
        ck_assert_int_eq(r.handled, 5);
        free(want);
        free(r.out);
    }
}
END_TEST

START_TEST(split_at_every_offset)
{
    size_t n = sizeof k_stream - 1;
    for (size_t p = 0; p < sizeof k_pipelines / sizeof k_pipelines[0]; p++) {
        int saved = quiet_begin();
        run_result whole = run_stream(k_stream, n, NULL, 0, k_pipelines[p]);
        for (size_t i = 1; i < n; i++) {
            run_result r = run_stream(k_stream, n, &i, 1, k_pipelines[p]);
            if (r.len != whole.len || memcmp(r.out, whole.out, r.len) != 0 || !r.closed)
                quiet_end(saved);
            check_against_whole("two feeds", &whole, &r, i);
            free(r.out);
        }
        quiet_end(saved);
        free(whole.out);
    }
}
END_TEST

START_TEST(byte_at_a_time)
{
    size_t n = sizeof k_stream - 1;
    size_t *cuts = malloc(n * sizeof *cuts);
    ck_assert_ptr_nonnull(cuts);
    for (size_t i = 0; i + 1 < n; i++)
        cuts[i] = i + 1;
    for (size_t p = 0; p < sizeof k_pipelines / sizeof k_pipelines[0]; p++) {
        int saved = quiet_begin();
        run_result whole = run_stream(k_stream, n, NULL, 0, k_pipelines[p]);
        run_result r = run_stream(k_stream, n, cuts, n - 1, k_pipelines[p]);
        quiet_end(saved);
        check_against_whole("byte at a time", &whole, &r, 1);
        free(r.out);
        free(whole.out);
    }
    free(cuts);
}
END_TEST

/* Back-pressure: with max_pipelined 2 and the first two requests unanswered,
 * the connection stops reading; the third waits (unread) until an answer
 * is written, and answers still come back in request order. */
START_TEST(back_pressure_pauses_reading)
{
    fake f = {0};
    kvd_http_options opt = {.max_body = MAX_BODY, .max_pipelined = 2};
    kvd__loopback *lb = kvd__loopback_open(&opt, fake_handler, &f);
    ck_assert_ptr_nonnull(lb);
    int saved = quiet_begin();
    ck_assert(kvd__loopback_reading(lb));
    const char *three = "GET /defer?1 HTTP/1.1\r\n\r\nGET /defer?2 HTTP/1.1\r\n\r\n"
                        "GET /now HTTP/1.1\r\n\r\n";
    kvd__loopback_feed(lb, three, strlen(three));
    ck_assert_int_eq(f.handled, 2);
    ck_assert(!kvd__loopback_reading(lb));
    size_t len;
    kvd__loopback_output(lb, &len);
    ck_assert_uint_eq(len, 0);
    const char *more = "GET /more HTTP/1.1\r\n\r\n";
    kvd__loopback_feed(lb, more, strlen(more)); /* waits, unread */
    ck_assert_int_eq(f.handled, 2);
    while (answer_deferred(&f))
        kvd__loopback_run(lb);
    quiet_end(saved);
    ck_assert_int_eq(f.handled, 4);
    ck_assert(kvd__loopback_reading(lb));
    const char *out = kvd__loopback_output(lb, &len);
    const char *a = strstr(out, "deferred /defer?1");
    const char *b = strstr(out, "deferred /defer?2");
    const char *c = strstr(out, "GET /now?");
    const char *d = strstr(out, "GET /more?");
    ck_assert_msg(a && b && c && d && a < b && b < c && c < d, "out of order:\n%s", out);
    ck_assert(!kvd__loopback_closed(lb));
    ck_assert(kvd__loopback_free(lb));
}
END_TEST

/* Issue 10 bug 6: a client that sends complete requests and then
 * half-closes gets every answer (the last with Connection: close), then the
 * connection closes; a request cut short by the EOF is dropped. */
START_TEST(eof_after_complete_requests_is_answered)
{
    static const char reqs[] = "POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
                               "GET /defer HTTP/1.1\r\n\r\n"
                               "POST /echo HTTP/1.1\r\nContent-Length: 9\r\n\r\ncut";
    fake f = {0};
    kvd_http_options opt = {.max_body = MAX_BODY, .max_pipelined = 8};
    int saved = quiet_begin();
    kvd__loopback *lb = kvd__loopback_open(&opt, fake_handler, &f);
    ck_assert_ptr_nonnull(lb);
    kvd__loopback_feed(lb, reqs, sizeof reqs - 1);
    kvd__loopback_eof(lb);
    ck_assert(!kvd__loopback_closed(lb)); /* the deferred answer is still owed */
    ck_assert(answer_deferred(&f));
    kvd__loopback_run(lb);
    size_t len;
    const char *out = kvd__loopback_output(lb, &len);
    char *copy = strndup(out, len);
    quiet_end(saved);
    ck_assert_ptr_nonnull(copy);
    ck_assert_msg(strstr(copy, "n=2:hi") != NULL, "first answer missing:\n%s", copy);
    const char *d = strstr(copy, "deferred /defer");
    ck_assert_msg(d != NULL, "deferred answer missing:\n%s", copy);
    const char *second = strstr(copy + 1, "HTTP/1.1 200");
    ck_assert_ptr_nonnull(second);
    ck_assert_msg(strstr(second, "Connection: close\r\n") != NULL, "last answer keeps alive");
    ck_assert_int_eq(f.handled, 2); /* the cut request never reached the handler */
    ck_assert(kvd__loopback_closed(lb));
    free(copy);
    ck_assert(kvd__loopback_free(lb));
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("server/conn");
    TCase *tc = tcase_create("framing");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, whole_stream_is_answered_correctly);
    tcase_add_test(tc, split_at_every_offset);
    tcase_add_test(tc, byte_at_a_time);
    tcase_add_test(tc, back_pressure_pauses_reading);
    tcase_add_test(tc, eof_after_complete_requests_is_answered);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
