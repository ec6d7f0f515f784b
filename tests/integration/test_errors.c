/* tests/integration/test_errors.c — bad input over HTTP: malformed JSON,
 * wrong shapes and values in create and step bodies, non-finite numbers,
 * bad base64, routing (404/405), content types (415), body limits (413) and
 * malformed HTTP (400). Each answer must carry the exact status and a JSON
 * error body with error.code (and error.field where one field is at fault);
 * a bad step must leave its session exactly as it was (DESIGN.md §3: a step
 * is validated whole before anything is appended), and the server must keep
 * serving: a correct step checked against the reference closes each case.
 * Over 600 lines: one case per kind of bad input, each with its own body and
 * expected answer; they share the snapshot-and-compare helpers defined here. */
#define _GNU_SOURCE
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/checked_session.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

/* See tests/integration/test_decode.c for the derivation. */
#define OUTPUT_TOL_REL 1e-4
#define CASE_TIMEOUT_S 120

/* The step session's shape: small enough to write tensors by hand. */
#define LAYERS 2
#define HEADS 4
#define KV_HEADS 2
#define HEAD_DIM 4
#define KV_ROW (KV_HEADS * HEAD_DIM) /* 8 numbers per token of k or v */
#define Q_ROW (HEADS * HEAD_DIM)     /* 16 numbers per query */
#define PREFILL 3

#define MAX_BODY_ARG "64KiB"
#define MAX_BODY (64 * 1024)

#define INVALID "invalid_argument"

static const char *const server_args[] = {"--page-bytes", "4096", "--memory", "4MiB", "--threads", "2", NULL};

/* "[0.25,0.25,...]" with n numbers, the one at `at` replaced by `odd` (a raw
 * JSON value) when odd is non-NULL. Caller frees. */
static char *nums(size_t n, size_t at, const char *odd)
{
    sbuf b;
    sb_init(&b);
    sb_puts(&b, "[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            sb_puts(&b, ",");
        sb_puts(&b, odd && i == at ? odd : "0.25");
    }
    sb_puts(&b, "]");
    return sb_take(&b);
}

/* "b64:..." (with quotes) of n f32 values 0.5, the one at `at` replaced by
 * the bit pattern `bits`. Caller frees. */
static char *b64_bits(size_t n, size_t at, uint32_t bits)
{
    float *x = malloc(n * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < n; i++)
        x[i] = 0.5f;
    memcpy(&x[at], &bits, sizeof bits);
    sbuf b;
    sb_init(&b);
    sb_floats_b64(&b, x, n);
    free(x);
    return sb_take(&b);
}

/* A body from printf-style pieces. Caller frees. */
static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    ck_assert_int_ge(vasprintf(&s, f, ap), 0);
    va_end(ap);
    return s;
}

typedef struct snapshot {
    double tokens, appended, steps, pages;
} snapshot;

static snapshot take_snapshot(int port, const char *id)
{
    cJSON *st = kvd_session_stats(port, id);
    snapshot s = {kvd_json_num(st, "tokens"), kvd_json_num(st, "appended"), kvd_json_num(st, "steps"),
                  kvd_json_num(st, "pages")};
    cJSON_Delete(st);
    return s;
}

static void assert_unchanged(int port, const char *id, const snapshot *before, const char *what)
{
    snapshot now = take_snapshot(port, id);
    ck_assert_msg(now.tokens == before->tokens && now.appended == before->appended && now.steps == before->steps &&
                      now.pages == before->pages,
                  "%s changed the session: tokens %g->%g appended %g->%g steps %g->%g pages %g->%g", what,
                  before->tokens, now.tokens, before->appended, now.appended, before->steps, now.steps,
                  before->pages, now.pages);
}

/* Sends a bad step (body is freed), checks the error, that the session is
 * unchanged and that the server still answers. */
static void bad_step(checked_session *cs, const char *content_type, char *body, int status, const char *code,
                     const char *field, const char *what)
{
    snapshot before = take_snapshot(cs->port, cs->id);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", cs->id);
    http_response *r = http_request(cs->port, "POST", path, content_type, body);
    kvd_expect_error(r, status, code, field, NULL, what);
    http_response_free(r);
    free(body);
    assert_unchanged(cs->port, cs->id, &before, what);
    kvd_assert_healthy(cs->port);
}

/* A well-formed single step body whose k, v, q texts are given. */
static char *step3(const char *k, const char *v, const char *q, const char *more)
{
    return fmt("{\"layer\":0,\"k\":%s,\"v\":%s,\"q\":%s%s}", k, v, q, more ? more : "");
}

START_TEST(step_errors)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session cs;
    cs_create(&cs, port, LAYERS, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 31337, OUTPUT_TOL_REL);
    for (long l = 0; l < LAYERS; l++)
        cs_random_step(&cs, l, PREFILL, PREFILL, NULL, false, NULL, "prefill");

    char *k1 = nums(KV_ROW, 0, NULL), *q1 = nums(Q_ROW, 0, NULL), *k2 = nums(2 * KV_ROW, 0, NULL),
         *q2 = nums(2 * Q_ROW, 0, NULL);
    const char *J = KVD_JSON;

    /* Not one JSON object. */
    bad_step(&cs, J, fmt("{\"layer\":0,\"k\":[1,2"), 400, INVALID, NULL, "truncated JSON");
    bad_step(&cs, J, fmt("[1,2,3]"), 400, INVALID, NULL, "JSON array, not an object");
    bad_step(&cs, J, fmt("\"hello\""), 400, INVALID, NULL, "JSON string, not an object");
    char *ok = step3(k1, k1, q1, NULL);
    bad_step(&cs, J, fmt("%s x", ok), 400, INVALID, NULL, "trailing garbage");
    bad_step(&cs, J, fmt("%s}", ok), 400, INVALID, NULL, "extra closing brace");
    free(ok);
    bad_step(&cs, J, fmt("{} {}"), 400, INVALID, NULL, "two objects");
    bad_step(&cs, J, fmt("%s", ""), 400, INVALID, NULL, "empty body");
    bad_step(&cs, J, fmt("{\"layer\":0,\"k\":[1,2,],\"v\":[],\"q\":[]}"), 400, INVALID, NULL,
             "trailing comma");

    /* Shapes. */
    char *k7 = nums(KV_ROW - 1, 0, NULL), *q15 = nums(Q_ROW - 1, 0, NULL);
    bad_step(&cs, J, step3(k7, k7, q1, NULL), 400, INVALID, "k", "k of 7 numbers (row is 8)");
    bad_step(&cs, J, step3(k2, k1, q2, NULL), 400, INVALID, "v", "v of 1 token, k of 2");
    bad_step(&cs, J, step3(k1, k1, q15, NULL), 400, INVALID, "q", "q of 15 numbers (row is 16)");
    bad_step(&cs, J, fmt("{\"layer\":0,\"k\":%s,\"q\":%s}", k1, q1), 400, INVALID, "v", "k without v");
    bad_step(&cs, J, fmt("{\"layer\":0,\"v\":%s,\"q\":%s}", k1, q1), 400, INVALID, "k", "v without k");
    bad_step(&cs, J, step3("{}", k1, q1, NULL), 400, INVALID, "k", "k is an object");
    bad_step(&cs, J, step3("7", k1, q1, NULL), 400, INVALID, "k", "k is a number");
    bad_step(&cs, J, step3("[[0.25,0.25,0.25,0.25],[0.25,0.25,0.25]]", k1, q1, NULL), 400, INVALID, "k",
             "k nested and ragged");
    free(k7);
    free(q15);

    /* Numbers that are not finite f32s, and non-numbers. */
    char *t;
    t = nums(KV_ROW, 3, "1e39");
    bad_step(&cs, J, step3(t, k1, q1, NULL), 400, INVALID, "k", "1e39 in k (overflows f32)");
    free(t);
    t = nums(Q_ROW, 5, "-1e39");
    bad_step(&cs, J, step3(k1, k1, t, NULL), 400, INVALID, "q", "-1e39 in q");
    free(t);
    t = nums(KV_ROW, 0, "1e400");
    bad_step(&cs, J, step3(k1, t, q1, NULL), 400, INVALID, "v", "1e400 in v (overflows double)");
    free(t);
    t = b64_bits(KV_ROW, 2, 0x7fc00000u); /* quiet NaN */
    bad_step(&cs, J, step3(k1, t, q1, NULL), 400, INVALID, "v", "NaN bits in b64 v");
    free(t);
    t = b64_bits(KV_ROW, 7, 0x7f800000u); /* +inf */
    bad_step(&cs, J, step3(t, k1, q1, NULL), 400, INVALID, "k", "+inf bits in b64 k");
    free(t);
    t = b64_bits(Q_ROW, 0, 0xff800001u); /* signalling NaN, sign set */
    bad_step(&cs, J, step3(k1, k1, t, NULL), 400, INVALID, "q", "sNaN bits in b64 q");
    free(t);
    t = nums(Q_ROW, 4, "\"a\"");
    bad_step(&cs, J, step3(k1, k1, t, NULL), 400, INVALID, "q", "string element in q");
    free(t);
    t = nums(KV_ROW, 1, "null");
    bad_step(&cs, J, step3(t, k1, q1, NULL), 400, INVALID, "k", "null element in k");
    free(t);
    t = nums(KV_ROW, 6, "true");
    bad_step(&cs, J, step3(k1, t, q1, NULL), 400, INVALID, "v", "true element in v");
    free(t);

    /* Base64. */
    bad_step(&cs, J, step3("\"b64:@@@@\"", k1, q1, NULL), 400, INVALID, "k", "b64 with bad characters");
    bad_step(&cs, J, step3("\"b64:AAAAAAAA\"", k1, q1, NULL), 400, INVALID, "k", "b64 of 6 bytes (not whole f32s)");
    bad_step(&cs, J, step3("\"b64:AAAAA\"", k1, q1, NULL), 400, INVALID, "k", "b64 of bad length");
    bad_step(&cs, J, step3(k1, "\"AAAAAAAAAAA=\"", q1, NULL), 400, INVALID, "v", "tensor string without b64:");

    /* Layer, mask, encoding. */
    bad_step(&cs, J, fmt("{\"layer\":2,\"k\":%s,\"v\":%s,\"q\":%s}", k1, k1, q1), 400, INVALID, "layer",
             "layer 2 of 2");
    bad_step(&cs, J, fmt("{\"layer\":-1,\"k\":%s,\"v\":%s,\"q\":%s}", k1, k1, q1), 400, INVALID, "layer",
             "layer -1");
    bad_step(&cs, J, fmt("{\"layer\":0.5,\"k\":%s,\"v\":%s,\"q\":%s}", k1, k1, q1), 400, INVALID, "layer",
             "layer 0.5");
    bad_step(&cs, J, fmt("{\"layer\":\"0\",\"k\":%s,\"v\":%s,\"q\":%s}", k1, k1, q1), 400, INVALID, "layer",
             "layer as a string");
    bad_step(&cs, J, fmt("{\"layer\":1e20,\"k\":%s,\"v\":%s,\"q\":%s}", k1, k1, q1), 400, INVALID, "layer",
             "layer 1e20");
    bad_step(&cs, J, step3(k1, k1, q1, ",\"mask\":\"diagonal\""), 400, INVALID, "mask", "unknown mask");
    bad_step(&cs, J, step3(k1, k1, q2, ",\"mask\":\"causal\""), 400, INVALID, "mask|q", "causal with m_q 2 > m 1");
    bad_step(&cs, J, step3("[]", "[]", q1, ",\"mask\":\"causal\""), 400, INVALID, "mask|q",
             "causal with m_q 1 > m 0");
    bad_step(&cs, J, step3(k1, k1, q1, ",\"encoding\":\"hex\""), 400, INVALID, "encoding", "unknown encoding");
    bad_step(&cs, J, step3(k1, k1, q1, ",\"foo\":1"), 400, INVALID, "foo", "unknown field in a step");

    /* The "steps" form. */
    char *good0 = fmt("{\"layer\":0,\"k\":%s,\"v\":%s,\"q\":%s}", k1, k1, q1);
    bad_step(&cs, J, fmt("{\"steps\":[]}"), 400, INVALID, "steps", "empty steps");
    bad_step(&cs, J, fmt("{\"steps\":{}}"), 400, INVALID, "steps", "steps is an object");
    bad_step(&cs, J, fmt("{\"steps\":[1]}"), 400, INVALID, "steps[0]", "steps entry is a number");
    t = nums(Q_ROW - 1, 0, NULL);
    /* The first entry is fine: nothing of it may be applied. */
    bad_step(&cs, J, fmt("{\"steps\":[%s,{\"layer\":1,\"k\":%s,\"v\":%s,\"q\":%s}]}", good0, k1, k1, t), 400,
             INVALID, "steps[1].q", "bad second step");
    free(t);
    bad_step(&cs, J, fmt("{\"steps\":[%s,{\"layer\":5,\"k\":%s,\"v\":%s,\"q\":%s}]}", good0, k1, k1, q1), 400,
             INVALID, "steps[1].layer", "second step's layer out of range");
    bad_step(&cs, J, fmt("{\"steps\":[{\"layer\":0,\"k\":%s,\"v\":%s,\"q\":%s,\"foo\":1}]}", k1, k1, q1), 400,
             INVALID, "steps[0].foo", "unknown field in a steps entry");
    bad_step(&cs, J, fmt("{\"steps\":[%s],\"bar\":1}", good0), 400, INVALID, "bar", "unknown field beside steps");
    bad_step(&cs, J, fmt("{\"steps\":[%s],\"layer\":0,\"k\":%s,\"v\":%s,\"q\":%s}", good0, k1, k1, q1), 400,
             INVALID, NULL, "steps and a single step together");
    bad_step(&cs, J, fmt("{\"steps\":[%s],\"encoding\":\"base64\"}", good0), 400, INVALID, "encoding",
             "unknown encoding beside steps");

    /* Content types. */
    bad_step(&cs, "text/plain", fmt("%s", good0), 415, "unsupported_media_type", NULL, "text/plain step");
    bad_step(&cs, NULL, fmt("%s", good0), 415, "unsupported_media_type", NULL, "step without Content-Type");
    bad_step(&cs, "application/jsonl", fmt("%s", good0), 415, "unsupported_media_type", NULL,
             "application/jsonl step");

    /* Unknown session. */
    http_response *r = http_request(port, "POST", "/v1/sessions/0123456789abcdef0123456789abcdef/step", J, good0);
    kvd_expect_error(r, 404, "not_found", NULL, NULL, "step on an unknown session");
    http_response_free(r);

    /* The session still works, exactly: a correct step (with a charset
     * parameter on the content type) against the reference. */
    step_spec s = cs_spec(&cs, 1, 2, 2, NULL, false);
    double **want;
    char *body = cs_prepare(&cs, &s, 1, false, NULL, &want);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", cs.id);
    r = http_request(port, "POST", path, "application/json; charset=utf-8", body);
    ck_assert_msg(r->status == 200, "step with charset: %d %s", r->status, r->body ? r->body : r->error);
    cJSON *j = http_response_json(r);
    cs_verify(&cs, &s, 1, false, NULL, want, j, "correct step after the bad ones");
    cJSON_Delete(j);
    http_response_free(r);
    free(body);
    cs_want_free(want, 1);
    cs_spec_free(&s);
    cs_random_step(&cs, 0, 1, 1, NULL, true, "b64", "decode after the bad ones");
    cJSON_Delete(cs_check_stats(&cs, "after the bad steps"));

    free(good0);
    free(k1);
    free(q1);
    free(k2);
    free(q2);
    cs_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

static void bad_create(int port, const char *content_type, const char *body, int status, const char *code,
                       const char *field, const char *msg_part, const char *what)
{
    http_response *r = http_request(port, "POST", "/v1/sessions", content_type, body);
    kvd_expect_error(r, status, code, field, msg_part, what);
    http_response_free(r);
    kvd_assert_healthy(port);
}

#define NYS "not yet supported"

START_TEST(create_errors)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    const char *J = KVD_JSON;
    bad_create(port, J, "{\"layers\": 1,", 400, INVALID, NULL, NULL, "truncated JSON");
    bad_create(port, J, "[1,2]", 400, INVALID, NULL, NULL, "JSON array");
    bad_create(port, J, "{\"layers\":1} xyz", 400, INVALID, NULL, NULL, "trailing garbage");
    bad_create(port, J, "", 400, INVALID, NULL, NULL, "empty body");
    bad_create(port, J, "{\"heads\":100000}", 400, INVALID, "heads", NULL, "heads 100000");
    bad_create(port, J, "{\"layers\":100000}", 400, INVALID, "layers", NULL, "layers 100000");
    bad_create(port, J, "{\"layers\":1e12}", 400, INVALID, "layers", NULL, "layers 1e12");
    bad_create(port, J, "{\"layers\":0}", 400, INVALID, "layers", NULL, "layers 0");
    bad_create(port, J, "{\"layers\":-1}", 400, INVALID, "layers", NULL, "layers -1");
    bad_create(port, J, "{\"layers\":\"two\"}", 400, INVALID, "layers", NULL, "layers as a string");
    bad_create(port, J, "{\"heads\":8,\"kv_heads\":3}", 400, INVALID, "kv_heads", NULL, "kv_heads 3 of heads 8");
    bad_create(port, J, "{\"heads\":8,\"kv_heads\":16}", 400, INVALID, "kv_heads", NULL, "kv_heads 16 > heads 8");
    bad_create(port, J, "{\"heads\":8,\"kv_heads\":0}", 400, INVALID, "kv_heads", NULL, "kv_heads 0");
    bad_create(port, J, "{\"head_dim\":0}", 400, INVALID, "head_dim", NULL, "head_dim 0");
    bad_create(port, J, "{\"head_dim\":1.5}", 400, INVALID, "head_dim", NULL, "head_dim 1.5");
    bad_create(port, J, "{\"head_dim\":4096}", 400, INVALID, "head_dim", NULL,
               "head_dim 4096: one f32 slot does not fit a 4096-byte page");
    bad_create(port, J, "{\"scale\":\"big\"}", 400, INVALID, "scale", NULL, "scale as a string");
    bad_create(port, J, "{\"bogus\":1}", 400, INVALID, "bogus", NULL, "unknown top-level field");
    bad_create(port, J, "{\"cache\":{\"foo\":1}}", 400, INVALID, "cache.foo", NULL, "unknown cache field");
    bad_create(port, J, "{\"cache\":\"f32\"}", 400, INVALID, "cache", NULL, "cache is not an object");
    bad_create(port, J, "{\"cache\":{\"dtype\":\"kivi4\",\"residual\":40}}", 400, INVALID,
               "cache.residual", "multiple of cache.group", "kivi residual not a multiple of group");
    bad_create(port, J, "{\"cache\":{\"dtype\":\"int3\"}}", 400, INVALID, "cache.dtype", NULL, "dtype int3");
    bad_create(port, J, "{\"cache\":{\"dtype\":4}}", 400, INVALID, "cache.dtype", NULL, "dtype as a number");
    bad_create(port, J, "{\"cache\":{\"eviction\":\"subgen\",\"dtype\":\"f16\"}}", 400, INVALID,
               "cache.dtype", NYS, "eviction subgen with a quantized dtype");
    bad_create(port, J, "{\"cache\":{\"budget\":64}}", 400, INVALID, "cache.budget",
               "needs an eviction policy", "budget without a policy");
    bad_create(port, J, "{\"cache\":{\"eviction\":\"h2o\",\"budget\":8,\"recent\":8}}", 400, INVALID,
               "cache.budget", "less than sink + recent", "budget below the protected tokens");
    bad_create(port, J, "{\"cache\":{\"eviction\":\"lru\"}}", 400, INVALID, "cache.eviction", NULL,
               "eviction lru");
    bad_create(port, J, "{\"attention\":\"tensor\",\"tensor_cache\":\"two\",\"window\":8}", 400, INVALID,
               "window", NYS, "two-cache with a window");
    bad_create(port, J, "{\"window\":8}", 400, INVALID, "window", "only used with attention",
               "window on standard attention");
    bad_create(port, J, "{\"attention\":\"linear\"}", 400, INVALID, "attention", NULL, "attention linear");
    bad_create(port, J, "{\"shadow\":\"yes\"}", 400, INVALID, "shadow", NULL, "shadow as a string");
    bad_create(port, "text/plain", "{\"layers\":1}", 415, "unsupported_media_type", NULL, NULL,
               "create as text/plain");
    bad_create(port, NULL, "{\"layers\":1}", 415, "unsupported_media_type", NULL, NULL,
               "create without Content-Type");

    /* Nothing above made a session; these two do (media types are
     * case-insensitive and may carry parameters). */
    cJSON *list = kvd_get_json(port, "/v1/sessions", 200);
    ck_assert_msg(kvd_json_num(list, "total") == 0, "bad creates made %g sessions", kvd_json_num(list, "total"));
    cJSON_Delete(list);
    http_response *r = http_request(port, "POST", "/v1/sessions", "application/json; charset=utf-8", "{}");
    ck_assert_msg(r->status == 201, "create with charset: %d %s", r->status, r->body ? r->body : r->error);
    http_response_free(r);
    r = http_request(port, "POST", "/v1/sessions", "Application/JSON", "{\"heads\":2,\"head_dim\":8}");
    ck_assert_msg(r->status == 201, "create with Application/JSON: %d %s", r->status, r->body ? r->body : r->error);
    http_response_free(r);
    list = kvd_get_json(port, "/v1/sessions", 200);
    ck_assert_msg(kvd_json_num(list, "total") == 2, "sessions: %g", kvd_json_num(list, "total"));
    cJSON_Delete(list);
    kvd_proc_stop_ck(p);
}
END_TEST

static void bad_raw(int port, const char *raw, int status, const char *code, const char *what)
{
    http_response *r = http_raw(port, raw, strlen(raw));
    kvd_expect_error(r, status, code, NULL, NULL, what);
    http_response_free(r);
    kvd_assert_healthy(port);
}

static void bad_path(int port, const char *method, const char *path, int status, const char *code,
                     const char *field, const char *what)
{
    http_response *r = http_request(port, method, path, NULL, NULL);
    kvd_expect_error(r, status, code, field, NULL, what);
    http_response_free(r);
    kvd_assert_healthy(port);
}

START_TEST(routing_and_http_errors)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session cs;
    cs_create(&cs, port, 1, 2, 1, 8, 0, NULL, 5, OUTPUT_TOL_REL);
    cs_random_step(&cs, 0, 4, 4, NULL, false, NULL, "prefill");
    snapshot before = take_snapshot(port, cs.id);
    char path[160];
    const char *M = "method_not_allowed";

    bad_path(port, "PUT", "/v1/sessions", 405, M, NULL, "PUT /v1/sessions");
    bad_path(port, "PATCH", "/v1/sessions", 405, M, NULL, "PATCH /v1/sessions");
    bad_path(port, "DELETE", "/healthz", 405, M, NULL, "DELETE /healthz");
    bad_path(port, "POST", "/metrics", 405, M, NULL, "POST /metrics");
    bad_path(port, "POST", "/v1/info", 405, M, NULL, "POST /v1/info");
    snprintf(path, sizeof path, "/v1/sessions/%s/step", cs.id);
    bad_path(port, "GET", path, 405, M, NULL, "GET .../step");
    snprintf(path, sizeof path, "/v1/sessions/%s", cs.id);
    bad_path(port, "POST", path, 405, M, NULL, "POST /v1/sessions/{id}");
    bad_path(port, "GET", "/v1/nope", 404, "not_found", NULL, "unknown path");
    bad_path(port, "GET", "/", 404, "not_found", NULL, "GET /");
    bad_path(port, "GET", "/v1/sessions/0123456789abcdef0123456789abcdef", 404, "not_found", NULL,
             "unknown session");
    bad_path(port, "DELETE", "/v1/sessions/0123456789abcdef0123456789abcdef", 404, "not_found", NULL,
             "DELETE unknown session");
    bad_path(port, "GET", "/v1/sessions/not-an-id", 404, "not_found", NULL, "malformed session id");
    snprintf(path, sizeof path, "/v1/sessions/%s/bogus", cs.id);
    bad_path(port, "GET", path, 404, "not_found", NULL, "unknown session sub-resource");
    bad_path(port, "GET", "/v1/sessions?limit=0", 400, INVALID, "limit", "list limit 0");
    bad_path(port, "GET", "/v1/sessions?limit=abc", 400, INVALID, "limit", "list limit abc");

    /* Malformed HTTP: 400 with a JSON body, and the server carries on. */
    bad_raw(port, "GARBAGE\r\n\r\n", 400, INVALID, "not HTTP");
    bad_raw(port, "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, INVALID,
            "non-numeric Content-Length");
    bad_raw(port, "GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", 400, INVALID, "header without colon");
    bad_raw(port,
            "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n",
            400, INVALID, "bad chunk size");
    bad_raw(port,
            "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            400, INVALID, "both Content-Length and chunked");

    assert_unchanged(port, cs.id, &before, "routing errors");
    cs_random_step(&cs, 0, 1, 1, NULL, false, NULL, "decode after routing errors");
    cs_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

/* A valid step body padded with whitespace to exactly `size` bytes. */
static char *padded_step(checked_session *cs, size_t size, double ***want, step_spec *s)
{
    *s = cs_spec(cs, 0, 1, 1, NULL, false);
    char *body = cs_prepare(cs, s, 1, false, NULL, want);
    size_t len = strlen(body);
    ck_assert_msg(len < size, "test bug: step body %zu >= %zu", len, size);
    char *out = malloc(size + 1);
    ck_assert_ptr_nonnull(out);
    memcpy(out, body, len - 1);            /* all but the closing brace */
    memset(out + len - 1, ' ', size - len);
    out[size - 1] = '}';
    out[size] = '\0';
    free(body);
    return out;
}

START_TEST(body_limits)
{
    static const char *const args[] = {"--page-bytes", "4096", "--memory", "4MiB", "--max-body", MAX_BODY_ARG,
                                       "--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    checked_session cs;
    cs_create(&cs, port, 1, 2, 1, 8, 0, NULL, 6, OUTPUT_TOL_REL);
    cs_random_step(&cs, 0, 4, 4, NULL, false, NULL, "prefill");
    snapshot before = take_snapshot(port, cs.id);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", cs.id);

    /* Over the limit with Content-Length: 413, nothing applied. */
    size_t big = MAX_BODY + MAX_BODY / 2;
    char *body = malloc(big + 1);
    ck_assert_ptr_nonnull(body);
    memset(body, ' ', big);
    memcpy(body, "{\"layer\":0", 10);
    body[big - 1] = '}';
    body[big] = '\0';
    http_response *r = http_request(port, "POST", path, KVD_JSON, body);
    kvd_expect_error(r, 413, "payload_too_large", NULL, NULL, "step body over --max-body");
    http_response_free(r);
    kvd_assert_healthy(port);
    r = http_request(port, "POST", "/v1/sessions", KVD_JSON, body);
    kvd_expect_error(r, 413, "payload_too_large", NULL, NULL, "create body over --max-body");
    http_response_free(r);
    kvd_assert_healthy(port);

    /* Over the limit in chunks (no Content-Length to check up front). */
    sbuf raw;
    sb_init(&raw);
    sb_printf(&raw,
              "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
              path);
    for (size_t off = 0; off < big; off += 8192) {
        size_t n = big - off < 8192 ? big - off : 8192;
        sb_printf(&raw, "%zx\r\n", n);
        sb_putn(&raw, body + off, n);
        sb_puts(&raw, "\r\n");
    }
    sb_puts(&raw, "0\r\n\r\n");
    r = http_raw(port, raw.s, raw.len);
    kvd_expect_error(r, 413, "payload_too_large", NULL, NULL, "chunked step body over --max-body");
    http_response_free(r);
    sb_free(&raw);
    free(body);
    kvd_assert_healthy(port);
    assert_unchanged(port, cs.id, &before, "413s");

    /* Just under the limit: a valid step, answered exactly. */
    double **want;
    step_spec s;
    body = padded_step(&cs, MAX_BODY - 1024, &want, &s);
    r = http_request(port, "POST", path, KVD_JSON, body);
    ck_assert_msg(r->status == 200, "step just under --max-body: %d %s", r->status, r->body ? r->body : r->error);
    cJSON *j = http_response_json(r);
    cs_verify(&cs, &s, 1, false, NULL, want, j, "step just under --max-body");
    cJSON_Delete(j);
    http_response_free(r);
    free(body);
    cs_want_free(want, 1);
    cs_spec_free(&s);
    cJSON_Delete(cs_check_stats(&cs, "after the body limits"));
    cs_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

/* Sends a step whose k text is given verbatim (k_text holds the first of two
 * numbers; the second is 0) while the reference gets k0; v is random and
 * q = [0, 1], so every score is 0 whatever k0 is. Expects 200, exactly. */
static void accepted_k(checked_session *cs, const char *k_text, float k0, const char *what)
{
    step_spec s = cs_spec(cs, 0, 1, 1, NULL, false);
    float *k = (float *)s.k, *q = (float *)s.q;
    k[0] = k0;
    k[1] = 0;
    q[0] = 0;
    q[1] = 1;
    double **want;
    char *ignored = cs_prepare(cs, &s, 1, false, NULL, &want);
    free(ignored);
    sbuf b;
    sb_init(&b);
    sb_printf(&b, "{\"layer\":0,\"k\":[%s,0],\"v\":", k_text);
    sb_floats_json(&b, s.v, 2);
    sb_puts(&b, ",\"q\":[0,1]}");
    http_response *r = kvd_step(cs->port, cs->id, b.s);
    ck_assert_msg(r->status == 200, "%s: status %d: %s", what, r->status, r->status < 0 ? r->error : r->body);
    cJSON *j = http_response_json(r);
    cs_verify(cs, &s, 1, false, NULL, want, j, what);
    cJSON_Delete(j);
    http_response_free(r);
    sb_free(&b);
    cs_want_free(want, 1);
    cs_spec_free(&s);
}

/* The edges of "finite as an f32": a decimal that rounds to FLT_MAX is
 * finite (3.4028235e38 is FLT_MAX's shortest round-trip form, what %.9g,
 * Python's repr of a float32 and JavaScript print), one that rounds to
 * infinity is not; subnormals and -0 are fine. */
START_TEST(finite_f32_boundaries)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session cs;
    cs_create(&cs, port, 1, 1, 1, 2, 0, NULL, 1, OUTPUT_TOL_REL);
    accepted_k(&cs, "3.4028234663852886e38", FLT_MAX, "FLT_MAX, exact decimal");
    accepted_k(&cs, "-3.4028234663852886e38", -FLT_MAX, "-FLT_MAX, exact decimal");
    accepted_k(&cs, "1e-45", 1e-45f, "smallest subnormal");
    accepted_k(&cs, "-0.0", -0.0f, "negative zero");
    accepted_k(&cs, "1e-50", 0.0f, "underflow to zero");
    step_spec s = cs_spec(&cs, 0, 1, 1, NULL, true);
    ((float *)s.k)[0] = FLT_MAX;
    ((float *)s.k)[1] = -FLT_MAX;
    ((float *)s.q)[0] = 0;
    ((float *)s.q)[1] = 0;
    cs_steps(&cs, &s, 1, false, NULL, "FLT_MAX and -FLT_MAX as b64");
    cs_spec_free(&s);
    bad_step(&cs, KVD_JSON, fmt("{\"layer\":0,\"k\":[3.4028236e38,0],\"v\":[1,2],\"q\":[0,1]}"), 400, INVALID, "k",
             "3.4028236e38 (rounds to +inf as an f32)");
    bad_step(&cs, KVD_JSON, fmt("{\"layer\":0,\"k\":[0,0],\"v\":[1,-3.41e38],\"q\":[0,1]}"), 400, INVALID, "v",
             "-3.41e38 (rounds to -inf as an f32)");
    /* The shortest round-trip form of FLT_MAX last: the case kvd gets wrong
     * as of writing (it compares the double with FLT_MAX instead of
     * rounding to f32 first). */
    accepted_k(&cs, "3.4028235e38", FLT_MAX, "FLT_MAX as 3.4028235e38");
    accepted_k(&cs, "3.40282347e+38", FLT_MAX, "FLT_MAX as %.9g prints it");
    cJSON_Delete(cs_check_stats(&cs, "after the boundaries"));
    cs_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *errors_suite(void)
{
    Suite *s = suite_create("integration_errors");
    TCase *tc = tcase_create("errors");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, step_errors);
    tcase_add_test(tc, create_errors);
    tcase_add_test(tc, routing_and_http_errors);
    tcase_add_test(tc, body_limits);
    tcase_add_test(tc, finite_f32_boundaries);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(errors_suite)
