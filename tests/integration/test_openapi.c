/* tests/integration/test_openapi.c — real answers of kvd against the schemas
 * of api/openapi.yaml (tests/support/json_schema.c): health, info, create
 * (standard with a policy and shadow, tensor two-cache), steps in every form
 * and encoding, stats, list, fork, delete, and one error of each status the
 * spec lists that a test can provoke without timing (400, 401, 404, 405, 409,
 * 413, 415, 501, 503), and the binary snapshot; the request bodies sent are checked against the spec too.
 * Also the shape rules over HTTP: a k of q's head count is a 400 naming k and
 * both shapes and leaves the session unchanged; "m" must match. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/check_main.h"
#include "tests/support/http_client.h"
#include "tests/support/json_schema.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/yaml_mini.h"

#define KEY "openapi-test-key-7c1d9e"
#define AUTH "Authorization: Bearer " KEY "\r\n"
#define SID "{id}"

static cJSON *spec;
static kvd_proc *proc;
static int port;

static void setup(void)
{
    char root[512], path[600], why[256];
    snprintf(path, sizeof path, "%s/api/openapi.yaml",
             kvd_test_source_root(__FILE__, root, sizeof root));
    spec = yaml_mini_load(path, why, sizeof why);
    ck_assert_msg(spec != NULL, "%s: %s", path, why);
    /* --max-sessions 4 makes a 503 reachable by creating a fifth. */
    static const char *const args[] = {"--memory", "8MiB", "--page-bytes", "4096", "--threads",
                                       "1", "--max-sessions", "4", NULL};
    setenv("KVD_API_KEY", KEY, 1);
    proc = kvd_proc_start_ck(args);
    unsetenv("KVD_API_KEY");
    port = kvd_proc_port(proc);
}

static void teardown(void)
{
    kvd_proc_stop_ck(proc);
    cJSON_Delete(spec);
}

/* The operation object of spec path tmpl, method m (lower case). */
static const cJSON *operation(const char *tmpl, const char *m)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(spec, "paths"), tmpl);
    ck_assert_msg(p != NULL, "spec has no path %s", tmpl);
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(p, m);
    ck_assert_msg(op != NULL, "spec has no %s %s", m, tmpl);
    return op;
}

static const cJSON *deref(const cJSON *node)
{
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(node, "$ref");
    if (!ref)
        return node;
    const cJSON *t = json_schema_resolve(spec, ref->valuestring);
    ck_assert_msg(t != NULL, "unresolved %s", ref->valuestring);
    return t;
}

static const cJSON *json_schema_of(const cJSON *holder, const char *what)
{
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(deref(holder), "content");
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(content, "application/json"), "schema");
    ck_assert_msg(schema != NULL, "%s: no application/json schema", what);
    return schema;
}

static void validate(const cJSON *schema, const cJSON *v, const char *what, const char *text)
{
    char why[512];
    ck_assert_msg(json_schema_validate(spec, schema, v, why, sizeof why), "%s: %s\n%.600s", what,
                  why, text);
}

/* One request (with the key unless noauth) whose answer must have `status`
 * and validate against the spec's response for it; the body sent, if any,
 * against the spec's request body when the request is meant to succeed.
 * Returns the parsed answer (caller cJSON_Deletes; NULL for text). */
static cJSON *call(const char *m, const char *tmpl, const char *id, const char *query,
                   const char *body, const char *ctype, bool noauth, int status)
{
    char path[256], what[320], lower[16];
    size_t i = 0;
    for (; m[i]; i++)
        lower[i] = (char)(m[i] >= 'A' && m[i] <= 'Z' ? m[i] + 32 : m[i]);
    lower[i] = '\0';
    const char *at = strstr(tmpl, SID);
    if (at)
        snprintf(path, sizeof path, "%.*s%s%s%s%s", (int)(at - tmpl), tmpl, id, at + 4,
                 query ? "?" : "", query ? query : "");
    else
        snprintf(path, sizeof path, "%s%s%s", tmpl, query ? "?" : "", query ? query : "");
    snprintf(what, sizeof what, "%s %s -> %d", m, path, status);
    /* A 405's method is not in the spec: its answer is described under the
     * path's methods; take the first that has a 405. */
    const cJSON *op = NULL;
    if (status == 405) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(spec, "paths"), tmpl);
        const cJSON *o;
        cJSON_ArrayForEach(o, p) {
            const cJSON *rs = cJSON_GetObjectItemCaseSensitive(o, "responses");
            if (rs && cJSON_GetObjectItemCaseSensitive(rs, "405"))
                op = o;
        }
        ck_assert_msg(op != NULL, "%s: no 405 in the spec", what);
    } else {
        op = operation(tmpl, lower);
    }
    if (body && status < 300) {
        const cJSON *rb = cJSON_GetObjectItemCaseSensitive(op, "requestBody");
        ck_assert_msg(rb != NULL, "%s: the spec takes no body", what);
        cJSON *b = cJSON_Parse(body);
        ck_assert_msg(b != NULL, "%s: test body is not JSON", what);
        validate(json_schema_of(rb, what), b, what, body);
        cJSON_Delete(b);
    }
    http_response *r = http_request_n(port, m, path, ctype, body, body ? strlen(body) : 0,
                                      noauth ? NULL : AUTH);
    ck_assert_msg(r->status == status, "%s: got %d %.400s", what, r->status, r->body);
    char code[8];
    snprintf(code, sizeof code, "%d", status);
    const cJSON *resp = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(op, "responses"), code);
    ck_assert_msg(resp != NULL, "%s: the spec lists no %s for it", what, code);
    cJSON *j = NULL;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(deref(resp), "content");
    if (cJSON_GetObjectItemCaseSensitive(content, "application/json")) {
        const char *ct = http_header_get(r, "Content-Type");
        ck_assert_msg(ct && strncmp(ct, "application/json", 16) == 0, "%s: Content-Type %s", what,
                      ct ? ct : "(none)");
        j = http_response_json(r);
        ck_assert_msg(j != NULL, "%s: body is not JSON: %.200s", what, r->body);
        validate(json_schema_of(resp, what), j, what, r->body);
    } else {
        ck_assert_msg(cJSON_GetObjectItemCaseSensitive(content, "text/plain") != NULL, "%s", what);
        const char *ct = http_header_get(r, "Content-Type");
        ck_assert_msg(ct && strncmp(ct, "text/plain", 10) == 0, "%s", what);
    }
    /* The headers the spec names for this answer are there. */
    const cJSON *hs = cJSON_GetObjectItemCaseSensitive(deref(resp), "headers"), *h;
    cJSON_ArrayForEach(h, hs) {
        if (strcmp(h->string, "Retry-After") == 0)
            continue; /* not on every 503 (draining has none) */
        ck_assert_msg(http_header_get(r, h->string) != NULL, "%s: no %s header", what, h->string);
    }
    http_response_free(r);
    return j;
}

static char *created_id(cJSON *j)
{
    char *id = strdup(kvd_json_str(j, "id"));
    cJSON_Delete(j);
    return id;
}

#define ROW8 "0.5,1,0,0,0,0,0,0"
#define KV1 "[[" ROW8 "],[" ROW8 "]]"  /* one token: [2, 8] of [m, 2, 8] */
#define Q1 "[[" ROW8 "],[" ROW8 "],[" ROW8 "],[" ROW8 "]]"

/* GET .../snapshot is binary (200 application/octet-stream, as the spec
 * says); restoring it while its id is live is the spec's 409, a foreign body
 * its 400, and a JSON Content-Type its 415. */
static void snapshot_and_restore(const char *id)
{
    char path[128], what[160];
    snprintf(path, sizeof path, "/v1/sessions/%s/snapshot", id);
    const cJSON *snap = operation("/v1/sessions/{id}/snapshot", "get");
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(snap, "responses"), "200");
    ck_assert_ptr_nonnull(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ok, "content"),
                                                           "application/octet-stream"));
    http_response *s = http_request_n(port, "GET", path, NULL, NULL, 0, AUTH);
    ck_assert_int_eq(s->status, 200);
    ck_assert_str_eq(http_header_get(s, "Content-Type"), "application/octet-stream");
    const cJSON *op = operation("/v1/sessions/restore", "post");
    static const struct { int status; size_t cut; } cases[] = {{409, 0}, {400, 7}};
    for (size_t i = 0; i < 2; i++) {
        http_response *r = http_request_n(port, "POST", "/v1/sessions/restore", "application/octet-stream",
                                          s->body, s->body_len - cases[i].cut, AUTH);
        snprintf(what, sizeof what, "POST /v1/sessions/restore -> %d", cases[i].status);
        ck_assert_msg(r->status == cases[i].status, "%s: got %d %s", what, r->status, r->body);
        char code[8];
        snprintf(code, sizeof code, "%d", cases[i].status);
        const cJSON *resp = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(op, "responses"), code);
        ck_assert_msg(resp != NULL, "%s: the spec lists no %s", what, code);
        cJSON *j = http_response_json(r);
        validate(json_schema_of(resp, what), j, what, r->body);
        cJSON_Delete(j);
        http_response_free(r);
    }
    http_response_free(s);
    cJSON_Delete(call("POST", "/v1/sessions/restore", NULL, NULL, "{}", KVD_JSON, false, 415));
}

START_TEST(responses_match_the_spec)
{
    cJSON_Delete(call("GET", "/healthz", NULL, NULL, NULL, NULL, true, 200));
    cJSON_Delete(call("GET", "/readyz", NULL, NULL, NULL, NULL, true, 200));
    cJSON_Delete(call("GET", "/metrics", NULL, NULL, NULL, NULL, true, 200));
    cJSON_Delete(call("GET", "/v1/info", NULL, NULL, NULL, NULL, false, 200));

    char *a = created_id(call("POST", "/v1/sessions", NULL, NULL,
                              "{\"layers\":2,\"heads\":4,\"kv_heads\":2,\"head_dim\":8,"
                              "\"cache\":{\"dtype\":\"int8\",\"eviction\":\"recency\","
                              "\"budget\":6,\"sink\":1},\"shadow\":true,\"seed\":7}",
                              KVD_JSON, false, 201));
    char *t = created_id(call("POST", "/v1/sessions", NULL, NULL,
                              "{\"attention\":\"tensor\",\"tensor_cache\":\"two\",\"heads\":2,"
                              "\"kv_heads\":1,\"head_dim\":4}", KVD_JSON, false, 201));
    /* Steps: nested [m, kv_heads, head_dim], m given, single and "steps", both encodings. */
    cJSON_Delete(call("POST", "/v1/sessions/" SID "/step", a, NULL,
                      "{\"layer\":0,\"m\":2,\"k\":[" KV1 "," KV1 "],\"v\":[" KV1 "," KV1 "],"
                      "\"q\":[" Q1 "," Q1 "]}", KVD_JSON, false, 200));
    cJSON *r = call("POST", "/v1/sessions/" SID "/step", a, NULL,
                    "{\"steps\":[{\"layer\":0,\"k\":[" KV1 "],\"v\":[" KV1 "],\"q\":[" Q1 "]},"
                    "{\"layer\":1,\"m\":1,\"k\":[[" ROW8 "," ROW8 "]],\"v\":[" ROW8 "," ROW8 "],"
                    "\"q\":[" Q1 "],\"mask\":\"causal\"}],\"encoding\":\"b64\"}",
                    KVD_JSON, false, 200);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "steps")), 2);
    ck_assert_ptr_nonnull(kvd_json_at(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "steps"), 0), "shadow"));
    cJSON_Delete(r);
    cJSON_Delete(call("POST", "/v1/sessions/" SID "/step", t, NULL,
                      "{\"k1\":[1,0,0,0],\"k2\":[0,1,0,0],\"v1\":[1,2,3,4],\"v2\":[1,1,1,1],"
                      "\"q\":[[[1,1,0,0],[0,1,1,0]]],\"m\":1}", KVD_JSON, false, 200));
    r = call("GET", "/v1/sessions/" SID, a, NULL, NULL, NULL, false, 200);
    ck_assert_ptr_nonnull(kvd_json_at(r, "shadow"));
    cJSON_Delete(r);
    r = call("GET", "/v1/sessions/" SID, t, NULL, NULL, NULL, false, 200);
    ck_assert_ptr_nonnull(kvd_json_at(r, "pair_rows"));
    cJSON_Delete(r);
    char *f = created_id(call("POST", "/v1/sessions/" SID "/fork", a, NULL, "{}", KVD_JSON, false, 201));
    r = call("GET", "/v1/sessions", NULL, "limit=1", NULL, NULL, false, 200);
    ck_assert(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(r, "next_after")));
    cJSON_Delete(r);
    r = call("GET", "/v1/sessions", NULL, NULL, NULL, NULL, false, 200);
    ck_assert_double_eq(kvd_json_num(r, "total"), 3);
    cJSON_Delete(r);

    /* One error of each status. */
    cJSON_Delete(call("POST", "/v1/sessions", NULL, NULL, "{\"heads\":0}", KVD_JSON, false, 400));
    cJSON_Delete(call("GET", "/v1/info", NULL, NULL, NULL, NULL, true, 401));
    cJSON_Delete(call("GET", "/v1/sessions/" SID, "00000000000000000000000000000000", NULL, NULL,
                      NULL, false, 404));
    cJSON_Delete(call("PUT", "/v1/sessions", NULL, NULL, NULL, NULL, false, 405));
    cJSON_Delete(call("POST", "/v1/sessions/" SID "/step", a, NULL, "{}", "text/plain", false, 415));
    static char big[70 * 1024];
    memset(big, ' ', sizeof big - 3);
    big[0] = '{';
    big[sizeof big - 2] = '}';
    cJSON_Delete(call("POST", "/v1/sessions", NULL, NULL, big, KVD_JSON, false, 413));
    cJSON_Delete(call("POST", "/v1/batch", NULL, NULL, "{}", KVD_JSON, false, 400));
    {
        char body[256];
        snprintf(body, sizeof body, "{\"steps\":[{\"session\":\"%s\",\"layer\":0},"
                                    "{\"session\":\"00000000000000000000000000000000\"}]}", a);
        cJSON *b = call("POST", "/v1/batch", NULL, NULL, body, KVD_JSON, false, 200);
        const cJSON *items = kvd_json_at(b, "steps");
        ck_assert_int_eq(cJSON_GetArraySize(items), 2);
        ck_assert_double_eq(kvd_json_num(cJSON_GetArrayItem(items, 0), "status"), 200);
        ck_assert_double_eq(kvd_json_num(cJSON_GetArrayItem(items, 1), "status"), 404);
        cJSON_Delete(b);
    }
    snapshot_and_restore(a);
    char *d = created_id(call("POST", "/v1/sessions", NULL, NULL, "{}", KVD_JSON, false, 201));
    cJSON_Delete(call("POST", "/v1/sessions", NULL, NULL, "{}", KVD_JSON, false, 503));

    cJSON_Delete(call("DELETE", "/v1/sessions/" SID, f, NULL, NULL, NULL, false, 200));
    cJSON_Delete(call("DELETE", "/v1/sessions/" SID, d, NULL, NULL, NULL, false, 200));
    cJSON_Delete(call("DELETE", "/v1/sessions/" SID, t, NULL, NULL, NULL, false, 200));
    cJSON_Delete(call("DELETE", "/v1/sessions/" SID, a, NULL, NULL, NULL, false, 200));
    free(a);
    free(t);
    free(f);
    free(d);
}
END_TEST

/* The shape rules over HTTP (both the text decode path of the handler). */
START_TEST(nested_shapes_over_http)
{
    char *id = created_id(call("POST", "/v1/sessions", NULL, NULL,
                               "{\"heads\":4,\"kv_heads\":2,\"head_dim\":8}", KVD_JSON, false, 201));
    /* k and v with q's head count, [1, 4, 8]: flat they would be 2 tokens. */
    cJSON *e = call("POST", "/v1/sessions/" SID "/step", id, NULL,
                    "{\"k\":[" Q1 "],\"v\":[" Q1 "],\"q\":[" Q1 "]}", KVD_JSON, false, 400);
    ck_assert_str_eq(kvd_json_str(e, "error.field"), "k");
    ck_assert_msg(strncmp(kvd_json_str(e, "error.message"), "k: expected [m, 2, 8], got [1, 4, 8]",
                          36) == 0, "%s", kvd_json_str(e, "error.message"));
    cJSON_Delete(e);
    e = call("POST", "/v1/sessions/" SID "/step", id, NULL,
             "{\"m\":2,\"k\":[" ROW8 "," ROW8 "],\"v\":[" ROW8 "," ROW8 "]}", KVD_JSON, false, 400);
    ck_assert_str_eq(kvd_json_str(e, "error.field"), "m");
    ck_assert_str_eq(kvd_json_str(e, "error.message"),
                     "m: 2 new tokens given, but k holds 1 (rows of kv_heads*head_dim = 2*8 numbers)");
    cJSON_Delete(e);
    e = call("POST", "/v1/sessions/" SID "/step", id, NULL,
             "{\"steps\":[{\"q\":[[" ROW8 "," ROW8 "," ROW8 "]]}]}", KVD_JSON, false, 400);
    ck_assert_str_eq(kvd_json_str(e, "error.field"), "steps[0].q");
    ck_assert_msg(strstr(kvd_json_str(e, "error.message"), "got [1, 24]") != NULL, "%s",
                  kvd_json_str(e, "error.message"));
    cJSON_Delete(e);
    /* Nothing changed: no token, no step. */
    cJSON *s = call("GET", "/v1/sessions/" SID, id, NULL, NULL, NULL, false, 200);
    ck_assert_double_eq(kvd_json_num(s, "tokens"), 0);
    ck_assert_double_eq(kvd_json_num(s, "steps"), 0);
    cJSON_Delete(s);
    /* The same token as [1, 2, 8] and as [1, 16] gives one token. */
    s = call("POST", "/v1/sessions/" SID "/step", id, NULL,
             "{\"m\":1,\"k\":[" KV1 "],\"v\":[[" ROW8 "," ROW8 "]],\"q\":[" Q1 "]}", KVD_JSON, false, 200);
    ck_assert_double_eq(kvd_json_num(s, "tokens"), 1);
    cJSON_Delete(s);
    cJSON_Delete(call("DELETE", "/v1/sessions/" SID, id, NULL, NULL, NULL, false, 200));
    free(id);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/openapi");
    TCase *tc = tcase_create("openapi");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, responses_match_the_spec);
    tcase_add_test(tc, nested_shapes_over_http);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
