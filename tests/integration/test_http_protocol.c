/* tests/integration/test_http_protocol.c — HTTP/1.1 behaviour of kvd on real
 * sockets: keep-alive, pipelined requests answered in order (a step between
 * GETs included), chunked request bodies, bodies arriving in pieces,
 * Connection: close and HTTP/1.0, and one slow connection not blocking
 * another. Each test case runs its own kvd. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <check.h>

#include "tests/support/checked_session.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

/* See tests/integration/test_decode.c for the derivation (f32 attention,
 * d <= 32 here, < 50 tokens). */
#define OUTPUT_TOL_REL 1e-4
/* How long to wait for the server to close a connection it should close. */
#define CLOSE_WAIT_MS 10000
/* How long a connection that should stay open is watched. */
#define STAY_OPEN_MS 200
#define CASE_TIMEOUT_S 120
/* Past the server's 64 pending requests per connection. */
#define DEEP_PIPELINE 150
/* More sessions than the 2 worker threads, so steps queue for workers. */
#define CONCURRENT_SESSIONS 8

#define HEADS 4
#define KV_HEADS 2
#define HEAD_DIM 32

static const char *const server_args[] = {"--page-bytes", "4096", "--memory", "8MiB", "--threads", "2", NULL};

static bool header_has_token(const http_response *r, const char *name, const char *token)
{
    const char *v = http_header_get(r, name);
    return v && strcasestr(v, token) != NULL;
}

/* Appends a formatted request to a pipeline buffer. */
static void add_request(sbuf *b, const char *method, const char *path, const char *body)
{
    size_t len;
    char *raw = http_format_request(method, path, body ? KVD_JSON : NULL, NULL, body, body ? strlen(body) : 0,
                                    &len);
    sb_putn(b, raw, len);
    free(raw);
}

static http_response *read_ok(http_conn *c, int status, const char *what)
{
    http_response *r = http_conn_read(c, HTTP_TIMEOUT_MS);
    ck_assert_msg(r->status == status, "%s: status %d, expected %d: %s", what, r->status, status,
                  r->status < 0 ? r->error : r->body);
    return r;
}

START_TEST(keep_alive)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    http_conn *c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    const char *create = "{\"layers\":1,\"heads\":4,\"kv_heads\":2,\"head_dim\":32}";
    char id[64] = "";
    for (int i = 0; i < 5; i++) {
        size_t len;
        char *raw;
        switch (i) {
        case 0:
            raw = http_format_request("GET", "/healthz", NULL, NULL, NULL, 0, &len);
            break;
        case 1:
            raw = http_format_request("GET", "/v1/info", NULL, NULL, NULL, 0, &len);
            break;
        case 2:
            raw = http_format_request("POST", "/v1/sessions", KVD_JSON, NULL, create, strlen(create), &len);
            break;
        case 3: {
            char path[128];
            snprintf(path, sizeof path, "/v1/sessions/%s", id);
            raw = http_format_request("GET", path, NULL, NULL, NULL, 0, &len);
            break;
        }
        default:
            raw = http_format_request("GET", "/v1/nope", NULL, NULL, NULL, 0, &len);
            break;
        }
        ck_assert_int_eq(http_conn_send(c, raw, len), 0);
        free(raw);
        static const int want[] = {200, 200, 201, 200, 404};
        http_response *r = read_ok(c, want[i], "keep-alive request");
        ck_assert_msg(!header_has_token(r, "Connection", "close"), "request %d: server asks to close", i);
        if (i == 1) {
            cJSON *j = http_response_json(r);
            ck_assert_msg(kvd_json_str(j, "version") != NULL, "/v1/info has a version");
            ck_assert_msg(kvd_json_num(j, "pool.page_bytes") == 4096, "/v1/info pool.page_bytes");
            cJSON_Delete(j);
        }
        if (i == 2) {
            cJSON *j = http_response_json(r);
            const char *s = kvd_json_str(j, "id");
            ck_assert_msg(kvd_is_session_id(s), "create id");
            snprintf(id, sizeof id, "%s", s);
            cJSON_Delete(j);
        }
        if (i == 4) /* an error answer keeps the connection too */
            kvd_expect_error(r, 404, "not_found", NULL, NULL, "unknown path on keep-alive");
        http_response_free(r);
    }
    ck_assert_msg(http_conn_wait_closed(c, STAY_OPEN_MS) == 0, "the server closed a keep-alive connection");
    http_conn_close(c);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(pipelining)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session cs;
    cs_create(&cs, port, 2, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 4242, OUTPUT_TOL_REL);
    char stats_path[128], step_path[128];
    snprintf(stats_path, sizeof stats_path, "/v1/sessions/%s", cs.id);
    snprintf(step_path, sizeof step_path, "/v1/sessions/%s/step", cs.id);

    /* healthz, step 1 (prefill), stats, unknown path, step 2 (decode, the
     * "steps" form), stats, info: all written in one send. */
    step_spec s1 = cs_spec(&cs, 0, 6, 6, NULL, false);
    step_spec s2[2] = {cs_spec(&cs, 0, 1, 1, NULL, true), cs_spec(&cs, 1, 3, 3, NULL, false)};
    double **w1, **w2;
    char *b1 = cs_prepare(&cs, &s1, 1, false, NULL, &w1);
    char *b2 = cs_prepare(&cs, s2, 2, true, "b64", &w2);
    sbuf pipe;
    sb_init(&pipe);
    add_request(&pipe, "GET", "/healthz", NULL);
    add_request(&pipe, "POST", step_path, b1);
    add_request(&pipe, "GET", stats_path, NULL);
    add_request(&pipe, "GET", "/v1/nope", NULL);
    add_request(&pipe, "POST", step_path, b2);
    add_request(&pipe, "GET", stats_path, NULL);
    add_request(&pipe, "GET", "/v1/info", NULL);
    http_conn *c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(http_conn_send(c, pipe.s, pipe.len), 0);

    http_response *r = read_ok(c, 200, "pipelined healthz");
    http_response_free(r);
    r = read_ok(c, 200, "pipelined step 1");
    cJSON *j = http_response_json(r);
    cs_verify(&cs, &s1, 1, false, NULL, w1, j, "pipelined step 1");
    cJSON_Delete(j);
    http_response_free(r);
    /* A session's requests run in arrival order, so the stats follow step 1. */
    r = read_ok(c, 200, "pipelined stats 1");
    j = http_response_json(r);
    ck_assert_msg(kvd_json_num(j, "tokens") == 6 * KV_HEADS, "stats after pipelined step 1: tokens %g",
                  kvd_json_num(j, "tokens"));
    cJSON_Delete(j);
    http_response_free(r);
    r = http_conn_read(c, HTTP_TIMEOUT_MS);
    kvd_expect_error(r, 404, "not_found", NULL, NULL, "pipelined unknown path");
    http_response_free(r);
    r = read_ok(c, 200, "pipelined step 2");
    j = http_response_json(r);
    cs_verify(&cs, s2, 2, true, "b64", w2, j, "pipelined step 2");
    cJSON_Delete(j);
    http_response_free(r);
    r = read_ok(c, 200, "pipelined stats 2");
    j = http_response_json(r);
    ck_assert_msg(kvd_json_num(j, "tokens") == (double)ref_total_tokens(cs.ref),
                  "stats after pipelined step 2: tokens %g, expected %zu", kvd_json_num(j, "tokens"),
                  ref_total_tokens(cs.ref));
    cJSON_Delete(j);
    http_response_free(r);
    r = read_ok(c, 200, "pipelined info");
    j = http_response_json(r);
    ck_assert_msg(kvd_json_str(j, "version") != NULL, "pipelined info has a version");
    cJSON_Delete(j);
    http_response_free(r);
    ck_assert_msg(http_conn_wait_closed(c, STAY_OPEN_MS) == 0, "unexpected bytes or close after the pipeline");
    http_conn_close(c);

    /* Many steps of one session pipelined: each answer belongs to its step. */
    enum { N = 12 };
    step_spec many[N];
    double **want[N];
    sb_free(&pipe);
    for (int i = 0; i < N; i++) {
        many[i] = cs_spec(&cs, i % 2, 1, 1, NULL, i % 3 == 0);
        char *b = cs_prepare(&cs, &many[i], 1, false, NULL, &want[i]);
        add_request(&pipe, "POST", step_path, b);
        free(b);
    }
    c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(http_conn_send(c, pipe.s, pipe.len), 0);
    for (int i = 0; i < N; i++) {
        char what[64];
        snprintf(what, sizeof what, "pipelined decode %d", i);
        r = read_ok(c, 200, what);
        j = http_response_json(r);
        cs_verify(&cs, &many[i], 1, false, NULL, want[i], j, what);
        cJSON_Delete(j);
        http_response_free(r);
        cs_want_free(want[i], 1);
        cs_spec_free(&many[i]);
    }
    http_conn_close(c);
    cJSON_Delete(cs_check_stats(&cs, "after pipelines"));

    sb_free(&pipe);
    free(b1);
    free(b2);
    cs_want_free(w1, 1);
    cs_want_free(w2, 2);
    cs_spec_free(&s1);
    cs_spec_free(&s2[0]);
    cs_spec_free(&s2[1]);
    cs_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(chunked_and_split_bodies)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session cs;
    cs_create(&cs, port, 1, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 99, OUTPUT_TOL_REL);
    char step_path[128];
    snprintf(step_path, sizeof step_path, "/v1/sessions/%s/step", cs.id);

    /* A chunked body in uneven chunks (1 byte, primes, the rest), with a
     * chunk extension and upper-case hex sizes. */
    step_spec s = cs_spec(&cs, 0, 5, 5, NULL, false);
    double **want;
    char *body = cs_prepare(&cs, &s, 1, false, NULL, &want);
    size_t body_len = strlen(body);
    sbuf raw;
    sb_init(&raw);
    sb_printf(&raw,
              "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              "Transfer-Encoding: chunked\r\n\r\n",
              step_path);
    static const size_t sizes[] = {1, 7, 13, 251, 4099};
    size_t off = 0;
    for (size_t i = 0; off < body_len; i++) {
        size_t n = i < sizeof sizes / sizeof sizes[0] ? sizes[i] : body_len - off;
        if (n > body_len - off)
            n = body_len - off;
        sb_printf(&raw, i == 1 ? "%zX;ext=1\r\n" : "%zX\r\n", n);
        sb_putn(&raw, body + off, n);
        sb_puts(&raw, "\r\n");
        off += n;
    }
    sb_puts(&raw, "0\r\n\r\n");
    http_conn *c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(http_conn_send(c, raw.s, raw.len), 0);
    http_response *r = read_ok(c, 200, "chunked step");
    cJSON *j = http_response_json(r);
    cs_verify(&cs, &s, 1, false, NULL, want, j, "chunked step");
    cJSON_Delete(j);
    http_response_free(r);
    /* The connection stays usable after a chunked request. */
    const char get_health[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    ck_assert_int_eq(http_conn_send(c, get_health, sizeof get_health - 1), 0);
    http_response_free(read_ok(c, 200, "healthz after chunked"));
    http_conn_close(c);
    sb_free(&raw);
    free(body);
    cs_want_free(want, 1);
    cs_spec_free(&s);

    /* A Content-Length request written in small pieces. Whether they arrive
     * as separate reads is up to TCP; assembly across every possible split
     * is tested without a socket in tests/server/test_conn.c. */
    s = cs_spec(&cs, 0, 1, 1, NULL, true);
    body = cs_prepare(&cs, &s, 1, false, NULL, &want);
    size_t len;
    char *req = http_format_request("POST", step_path, KVD_JSON, NULL, body, strlen(body), &len);
    c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    size_t piece = len / 5 + 1;
    for (off = 0; off < len; off += piece) {
        ck_assert_int_eq(http_conn_send(c, req + off, off + piece < len ? piece : len - off), 0);
    }
    r = read_ok(c, 200, "step sent in pieces");
    j = http_response_json(r);
    cs_verify(&cs, &s, 1, false, NULL, want, j, "step sent in pieces");
    cJSON_Delete(j);
    http_response_free(r);
    http_conn_close(c);
    free(req);
    free(body);
    cs_want_free(want, 1);
    cs_spec_free(&s);

    /* Half a request on one connection does not stall another connection. */
    http_conn *slow = http_conn_open(port);
    ck_assert_ptr_nonnull(slow);
    const char half[] = "GET /heal";
    ck_assert_int_eq(http_conn_send(slow, half, sizeof half - 1), 0);
    cs_random_step(&cs, 0, 1, 1, NULL, false, NULL, "step while another connection is half-sent");
    const char rest[] = "thz HTTP/1.1\r\nHost: x\r\n\r\n";
    ck_assert_int_eq(http_conn_send(slow, rest, sizeof rest - 1), 0);
    http_response_free(read_ok(slow, 200, "the half-sent request, completed"));
    http_conn_close(slow);

    cJSON_Delete(cs_check_stats(&cs, "after chunked/split"));
    cs_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(connection_close)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);

    /* HTTP/1.1 with Connection: close: answered, marked, then closed. */
    http_conn *c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    ck_assert_int_eq(http_conn_send(c, req, sizeof req - 1), 0);
    http_response *r = read_ok(c, 200, "Connection: close");
    ck_assert_msg(header_has_token(r, "Connection", "close"), "the response to Connection: close says close");
    http_response_free(r);
    ck_assert_msg(http_conn_wait_closed(c, CLOSE_WAIT_MS) == 1, "server kept the connection after close");
    http_conn_close(c);

    /* Connection: close on a POST with a body, after a keep-alive request. */
    c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    const char first[] = "GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n";
    ck_assert_int_eq(http_conn_send(c, first, sizeof first - 1), 0);
    http_response_free(read_ok(c, 200, "info before close"));
    const char *create = "{\"layers\":1,\"heads\":2,\"head_dim\":8}";
    size_t len;
    char *raw = http_format_request("POST", "/v1/sessions", KVD_JSON, "Connection: close\r\n", create,
                                    strlen(create), &len);
    ck_assert_int_eq(http_conn_send(c, raw, len), 0);
    free(raw);
    r = read_ok(c, 201, "create with Connection: close");
    ck_assert_msg(header_has_token(r, "Connection", "close"), "create response says close");
    http_response_free(r);
    ck_assert_msg(http_conn_wait_closed(c, CLOSE_WAIT_MS) == 1, "server kept the connection after close");
    http_conn_close(c);

    /* HTTP/1.0 without keep-alive closes after the response. */
    c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    const char old[] = "GET /healthz HTTP/1.0\r\n\r\n";
    ck_assert_int_eq(http_conn_send(c, old, sizeof old - 1), 0);
    http_response_free(read_ok(c, 200, "HTTP/1.0"));
    ck_assert_msg(http_conn_wait_closed(c, CLOSE_WAIT_MS) == 1, "server kept an HTTP/1.0 connection");
    http_conn_close(c);

    /* A client that goes away mid-request does not hurt the server. */
    c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    const char partial[] = "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "Content-Length: 100\r\n\r\n{\"layers\":";
    ck_assert_int_eq(http_conn_send(c, partial, sizeof partial - 1), 0);
    http_conn_close(c);
    kvd_assert_healthy(port);
    cJSON *list = kvd_get_json(port, "/v1/sessions", 200);
    ck_assert_msg(kvd_json_num(list, "total") == 1, "only the one complete create made a session (total %g)",
                  kvd_json_num(list, "total"));
    cJSON_Delete(list);
    kvd_proc_stop_ck(p);
}
END_TEST

/* More pipelined requests than the server keeps pending per connection
 * (it pauses reading, then resumes): every one is answered, in order. */
START_TEST(deep_pipeline)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session cs;
    cs_create(&cs, port, 1, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 8080, OUTPUT_TOL_REL);
    char stats_path[128], step_path[128];
    snprintf(stats_path, sizeof stats_path, "/v1/sessions/%s", cs.id);
    snprintf(step_path, sizeof step_path, "/v1/sessions/%s/step", cs.id);
    enum { N = DEEP_PIPELINE };
    step_spec specs[N];
    double **want[N];
    sbuf pipe;
    sb_init(&pipe);
    for (int i = 0; i < N; i++) {
        if (i % 4 == 3) { /* every fourth request a step, the rest GETs */
            specs[i] = cs_spec(&cs, 0, 1, 1, NULL, false);
            char *b = cs_prepare(&cs, &specs[i], 1, false, NULL, &want[i]);
            add_request(&pipe, "POST", step_path, b);
            free(b);
        } else {
            add_request(&pipe, "GET", i % 2 ? "/healthz" : stats_path, NULL);
        }
    }
    http_conn *c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(http_conn_send(c, pipe.s, pipe.len), 0);
    double tokens = 0;
    for (int i = 0; i < N; i++) {
        char what[64];
        snprintf(what, sizeof what, "deep pipeline request %d", i);
        http_response *r = read_ok(c, 200, what);
        cJSON *j = http_response_json(r);
        if (i % 4 == 3) {
            cs_verify(&cs, &specs[i], 1, false, NULL, want[i], j, what);
            tokens += KV_HEADS;
            cs_want_free(want[i], 1);
            cs_spec_free(&specs[i]);
        } else if (i % 2 == 0) {
            ck_assert_msg(kvd_json_num(j, "tokens") == tokens, "%s: stats tokens %g, expected %g (request order)",
                          what, kvd_json_num(j, "tokens"), tokens);
        }
        cJSON_Delete(j);
        http_response_free(r);
    }
    http_conn_close(c);
    sb_free(&pipe);
    cs_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

/* Steps of different sessions on different connections, all sent before
 * any answer is read: the workers run them in parallel, each answer exact. */
START_TEST(concurrent_sessions)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    enum { S = CONCURRENT_SESSIONS, ROUNDS = 4 };
    checked_session cs[S];
    http_conn *c[S];
    for (int i = 0; i < S; i++) {
        cs_create(&cs[i], port, 2, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, (uint64_t)(7000 + i), OUTPUT_TOL_REL);
        c[i] = http_conn_open(port);
        ck_assert_ptr_nonnull(c[i]);
    }
    for (int round = 0; round < ROUNDS; round++) {
        step_spec specs[S][2];
        double **want[S];
        for (int i = 0; i < S; i++) {
            size_t m = round == 0 ? 16 : 1;
            specs[i][0] = cs_spec(&cs[i], 0, m, m, NULL, i % 2 == 0);
            specs[i][1] = cs_spec(&cs[i], 1, m, m, NULL, i % 2 == 1);
            char *b = cs_prepare(&cs[i], specs[i], 2, true, NULL, &want[i]);
            char path[128];
            snprintf(path, sizeof path, "/v1/sessions/%s/step", cs[i].id);
            size_t len;
            char *raw = http_format_request("POST", path, KVD_JSON, NULL, b, strlen(b), &len);
            ck_assert_int_eq(http_conn_send(c[i], raw, len), 0);
            free(raw);
            free(b);
        }
        for (int i = S - 1; i >= 0; i--) { /* read in reverse: order across connections is free */
            http_response *r = read_ok(c[i], 200, "concurrent step");
            cJSON *j = http_response_json(r);
            cs_verify(&cs[i], specs[i], 2, true, NULL, want[i], j, "concurrent step");
            cJSON_Delete(j);
            http_response_free(r);
            cs_want_free(want[i], 2);
            cs_spec_free(&specs[i][0]);
            cs_spec_free(&specs[i][1]);
        }
    }
    for (int i = 0; i < S; i++) {
        cJSON_Delete(cs_check_stats(&cs[i], "concurrent session"));
        http_conn_close(c[i]);
        cs_free(&cs[i]);
    }
    kvd_proc_stop_ck(p);
}
END_TEST

/* Expect: 100-continue gets an interim 100 before the body is sent. */
START_TEST(expect_continue)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session cs;
    cs_create(&cs, port, 1, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 100, OUTPUT_TOL_REL);
    step_spec s = cs_spec(&cs, 0, 3, 3, NULL, true);
    double **want;
    char *body = cs_prepare(&cs, &s, 1, false, "b64", &want);
    char head[512];
    int n = snprintf(head, sizeof head,
                     "POST /v1/sessions/%s/step HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nExpect: 100-continue\r\n\r\n",
                     cs.id, strlen(body));
    http_conn *c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(http_conn_send(c, head, (size_t)n), 0);
    http_response *r = read_ok(c, 100, "interim response to Expect: 100-continue");
    http_response_free(r);
    ck_assert_int_eq(http_conn_send(c, body, strlen(body)), 0);
    r = read_ok(c, 200, "step after 100 Continue");
    cJSON *j = http_response_json(r);
    cs_verify(&cs, &s, 1, false, "b64", want, j, "step after 100 Continue");
    cJSON_Delete(j);
    http_response_free(r);
    http_conn_close(c);
    free(body);
    cs_want_free(want, 1);
    cs_spec_free(&s);
    cs_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *protocol_suite(void)
{
    Suite *s = suite_create("integration_http_protocol");
    TCase *tc = tcase_create("protocol");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, keep_alive);
    tcase_add_test(tc, pipelining);
    tcase_add_test(tc, chunked_and_split_bodies);
    tcase_add_test(tc, connection_close);
    tcase_add_test(tc, deep_pipeline);
    tcase_add_test(tc, concurrent_sessions);
    tcase_add_test(tc, expect_continue);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(protocol_suite)
