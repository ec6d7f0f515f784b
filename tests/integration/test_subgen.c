/* tests/integration/test_subgen.c — eviction "subgen" over HTTP: the config
 * echoed with its parameters, out-of-range parameters and refused
 * combinations as 400s naming their field, stats with clusters per stream
 * and honest bits per coordinate, shadow error, a fork copying the sketch, a step the
 * pool cannot hold answered 503 with nothing changed, SubGen4Cache, and a
 * SubGen4Cache snapshot restored elsewhere answering bit for bit (standard
 * subgen snapshots: tests/integration/test_snapshot.c), shadow mode for
 * tensor sessions (four, two, window, SubGen4Cache), and the cluster cap
 * (cache.max_clusters) held while n grows, through a fork and a restore. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/check_main.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_data.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/tensor_body.h"

#define J "application/json"
#define D 16

static const char *const small_pool[] = {"--memory", "64KiB", "--page-bytes", "4096", "--threads", "2", NULL};

static void bad(int port, const char *body, const char *field, const char *msg)
{
    http_response *r = http_request(port, "POST", "/v1/sessions", J, body);
    kvd_expect_error(r, 400, "invalid_argument", field, msg, body);
    http_response_free(r);
}

START_TEST(test_create_and_bad_input)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    const int port = kvd_proc_port(p);
    bad(port, "{\"cache\":{\"eviction\":\"subgen\",\"delta\":0}}", "cache.delta", "> 0");
    bad(port, "{\"cache\":{\"eviction\":\"subgen\",\"delta\":-0.5}}", "cache.delta", "> 0");
    bad(port, "{\"cache\":{\"eviction\":\"subgen\",\"cluster_samples\":0}}", "cache.cluster_samples", NULL);
    bad(port, "{\"cache\":{\"eviction\":\"subgen\",\"value_samples\":65537}}", "cache.value_samples", "65536");
    bad(port, "{\"cache\":{\"eviction\":\"subgen\",\"budget\":16}}", "cache.budget", "subgen");
    bad(port, "{\"cache\":{\"eviction\":\"subgen\",\"dtype\":\"int4\"}}", "cache.dtype", "not yet supported");
    bad(port, "{\"attention\":\"tensor\",\"tensor_cache\":\"two\",\"cache\":{\"eviction\":\"subgen\"}}",
        "cache.eviction", "not yet supported");
    bad(port, "{\"cache\":{\"eviction\":\"h2o\",\"value_samples\":4}}", "cache.value_samples", "subgen");
    cJSON *list = kvd_get_json(port, "/v1/sessions", 200); /* nothing was created */
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(list, "sessions")), 0);
    cJSON_Delete(list);

    cJSON *resp = NULL;
    char *id = kvd_create_session(port,
                                  "{\"heads\":2,\"kv_heads\":1,\"head_dim\":16,\"shadow\":true,\"seed\":5,"
                                  "\"cache\":{\"eviction\":\"subgen\",\"delta\":0.75,\"cluster_samples\":8,"
                                  "\"value_samples\":256,\"sink\":1,\"recent\":3}}",
                                  &resp);
    ck_assert_str_eq(kvd_json_str(resp, "config.cache.eviction"), "subgen");
    ck_assert(kvd_json_num(resp, "config.cache.delta") == 0.75);
    ck_assert(kvd_json_num(resp, "config.cache.cluster_samples") == 8);
    ck_assert(kvd_json_num(resp, "config.cache.value_samples") == 256);
    ck_assert(kvd_json_num(resp, "config.cache.max_clusters") == 1024); /* the default cap */
    cJSON_Delete(resp);

    /* 8 clusters' worth of keys, 200 tokens, then a query */
    rng r;
    rng_seed(&r, 4);
    float centres[8][D], *k = malloc(200 * D * sizeof *k), *v = malloc(200 * D * sizeof *v), q[2 * D];
    for (int c = 0; c < 8; c++)
        rng_fill(&r, centres[c], D, -3, 3);
    for (int j = 0; j < 200; j++)
        for (int c = 0; c < D; c++) {
            k[j * D + c] = centres[j % 8][c] + (float)rng_uniform(&r, -0.02, 0.02);
            v[j * D + c] = centres[j % 8][c] + (float)rng_uniform(&r, -0.3, 0.3);
        }
    rng_fill(&r, q, 2 * D, -0.3f, 0.3f);
    step_spec s = {.layer = 0, .k = k, .v = v, .m = 200, .mask = "block", .b64 = true};
    char *body = step_body(&s, D, 2 * D, NULL);
    cJSON *o = kvd_step_ok(port, id, body);
    ck_assert(kvd_json_num(o, "tokens") == 4 && kvd_json_num(o, "evicted") == 196);
    cJSON_Delete(o);
    free(body);
    step_spec qs = {.layer = 0, .q = q, .m_q = 1, .mask = "block"};
    body = step_body(&qs, D, 2 * D, NULL);
    o = kvd_step_ok(port, id, body);
    const double rel = kvd_json_num(o, "shadow.relative_error");
    ck_assert_msg(rel > 0 && rel < 0.2, "relative error %g", rel);
    cJSON_Delete(o);
    free(body);

    cJSON *st = kvd_session_stats(port, id);
    ck_assert(kvd_json_num(st, "clusters") == 8);
    const cJSON *cl = kvd_json_at(st, "layers");
    ck_assert(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cl, 0), "clusters"), 0)
                  ->valuedouble == 8);
    /* (4 exact tokens * 2 * 16 * 4 + 8 * (16 * 4 * 9 + 8) + 256 * 2 * 16 * 4) * 8 bits / (2 * 16 * 200) */
    const double bits = 8.0 * (4 * 128 + 8 * (64 * 9 + 8) + 256 * 128) / (2.0 * 16 * 200);
    ck_assert_double_eq_tol(kvd_json_num(st, "bits_per_coordinate"), bits, 1e-9);
    ck_assert(kvd_json_num(st, "bytes") > 0 && kvd_json_num(st, "shadow.steps") == 1);
    cJSON_Delete(st);

    char path[96];
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", id);
    http_response *fr = http_request(port, "POST", path, J, "{}");
    ck_assert_msg(fr->status == 201, "fork of a subgen session: %d %s", fr->status, fr->body);
    cJSON *fj = http_response_json(fr);
    cJSON *pst = kvd_session_stats(port, id), *cst = kvd_session_stats(port, kvd_json_str(fj, "id"));
    /* the sketch is copied whole (its pages private), the window shared */
    ck_assert(kvd_json_num(cst, "clusters") == 8 && kvd_json_num(cst, "pages") == kvd_json_num(pst, "pages"));
    ck_assert(kvd_json_num(cst, "shared_pages") < kvd_json_num(cst, "pages"));
    kvd_delete_session(port, kvd_json_str(fj, "id"));
    cJSON_Delete(pst);
    cJSON_Delete(cst);
    cJSON_Delete(fj);
    http_response_free(fr);
    kvd_delete_session(port, id);
    free(id);
    free(k);
    free(v);
    kvd_proc_stop_ck(p);
}
END_TEST

/* A 16-page pool (sink 4, recent 0, t = 16: a cluster's reservoir is 1 KiB).
 * The plan counts the clusters a step opens exactly (a dry run of the
 * assignment), not one per token: a step that fits only so succeeds, a step
 * of keys the sketch already has succeeds whatever its length, and a step
 * whose new clusters the pool cannot hold is a 503 with nothing changed. */
START_TEST(test_pool_full_503)
{
    kvd_proc *p = kvd_proc_start_ck(small_pool);
    const int port = kvd_proc_port(p);
    char *id = kvd_create_session(port,
                                  "{\"heads\":1,\"head_dim\":16,\"seed\":1,\"cache\":{\"eviction\":\"subgen\","
                                  "\"delta\":0.1,\"cluster_samples\":16,\"value_samples\":8}}",
                                  NULL);
    rng r;
    rng_seed(&r, 2);
    float *k = rng_tensor(&r, 400 * D, -3, 3), *v = rng_tensor(&r, 400 * D, -1, 1);
    step_spec s = {.layer = 0, .k = k, .v = v, .m = 8, .mask = "block", .b64 = true};
    char *body = step_body(&s, D, D, NULL);
    cJSON_Delete(kvd_step_ok(port, id, body)); /* 4 clusters: 5 pages held, 11 free */
    free(body);
    /* 40 distinct keys: 40 clusters, 10 more reservoir pages and at most one
     * page of window: 11, all that is free. (Counting every token that
     * leaves plus the held ones as a cluster asked 12: a 503.) */
    s.k = k + 8 * D;
    s.v = v + 8 * D;
    s.m = 40;
    body = step_body(&s, D, D, NULL);
    cJSON *o = kvd_step_ok(port, id, body);
    ck_assert(kvd_json_num(o, "evicted") == 40);
    cJSON_Delete(o);
    free(body);
    cJSON *st = kvd_session_stats(port, id);
    ck_assert(kvd_json_num(st, "clusters") == 44);
    cJSON_Delete(st);
    /* 20 keys the sketch has seen: no cluster opens, no page is needed */
    s.k = k + 8 * D;
    s.m = 20;
    body = step_body(&s, D, D, NULL);
    cJSON_Delete(kvd_step_ok(port, id, body));
    free(body);
    cJSON *before = kvd_session_stats(port, id);
    ck_assert(kvd_json_num(before, "clusters") == 44 && kvd_json_num(before, "evicted") == 64);
    const double used = kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"");
    /* 8 new keys: 8 clusters, 2 more reservoir pages with 1 free: 503 */
    s.k = k + 100 * D;
    s.v = v + 100 * D;
    s.m = 8;
    body = step_body(&s, D, D, NULL);
    http_response *resp = kvd_step(port, id, body);
    kvd_expect_error(resp, 503, "resource_exhausted", NULL, NULL, "a sketch the pool cannot hold");
    http_response_free(resp);
    free(body);
    cJSON *after = kvd_session_stats(port, id);
    const char *fields[] = {"tokens", "appended", "evicted", "pages", "clusters", "steps", "bits_per_coordinate"};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
        ck_assert_msg(kvd_json_num(before, fields[i]) == kvd_json_num(after, fields[i]), "%s changed", fields[i]);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""), used); /* every page back */
    /* a fork copies the sketch (14 pages, 1 free): 503, nothing created */
    char path[96];
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", id);
    resp = http_request(port, "POST", path, KVD_JSON, "{}");
    kvd_expect_error(resp, 503, "resource_exhausted", NULL, "subgen sketch", "a fork the pool cannot copy");
    http_response_free(resp);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""), used);
    cJSON *list = kvd_get_json(port, "/v1/sessions", 200);
    ck_assert(kvd_json_num(list, "total") == 1);
    cJSON_Delete(list);
    cJSON_Delete(before);
    cJSON_Delete(after);
    kvd_delete_session(port, id);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""), 0);
    free(id);
    free(k);
    free(v);
    kvd_proc_stop_ck(p);
}
END_TEST

/* SubGen4Cache over HTTP: a tensor four-cache session with subgen keeps
 * sink + recent tokens, reports k1 + k2 clusters, and answers queries; the
 * sketched tokens all alike make its output exact tensor attention. */
START_TEST(test_tensor_four)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    const int port = kvd_proc_port(p);
    char *id = kvd_create_session(port,
                                  "{\"heads\":1,\"head_dim\":4,\"attention\":\"tensor\",\"seed\":2,"
                                  "\"cache\":{\"eviction\":\"subgen\",\"sink\":1,\"recent\":1,"
                                  "\"cluster_samples\":64,\"value_samples\":8}}",
                                  NULL);
    enum { N = 20, DT = 4 };
    float k1[N * DT], k2[N * DT], v1[N * DT], v2[N * DT], q[DT] = {0.5f, -1, 0.25f, 1};
    for (int j = 0; j < N; j++) /* token 0 and N-1 differ; 1 .. N-2 alike */
        for (int c = 0; c < DT; c++) {
            const int t = j == 0 ? 0 : j == N - 1 ? 2 : 1;
            k1[j * DT + c] = 0.3f * (float)(t + c) - 0.5f;
            k2[j * DT + c] = 0.2f * (float)(t * c) - 0.3f;
            v1[j * DT + c] = 1.0f + 0.5f * (float)(t - c);
            v2[j * DT + c] = -0.5f + 0.25f * (float)(t + 2 * c);
        }
    tensor_step_spec s = {.layer = 0, .k1 = k1, .k2 = k2, .v1 = v1, .v2 = v2, .m = N, .mask = "block"};
    char *body = tensor_step_body(&s, DT, DT, NULL);
    cJSON *o = kvd_step_ok(port, id, body);
    ck_assert(kvd_json_num(o, "tokens") == 2 && kvd_json_num(o, "evicted") == N - 2);
    cJSON_Delete(o);
    free(body);
    tensor_step_spec qs = {.layer = 0, .q = q, .m_q = 1, .mask = "block"};
    body = tensor_step_body(&qs, DT, DT, NULL);
    o = kvd_step_ok(port, id, body);
    /* exact tensor attention over all N tokens, in double */
    double want[DT] = {0}, den = 0;
    for (int j = 0; j < N; j++)
        for (int k = 0; k < N; k++) {
            double x = 0;
            for (int c = 0; c < DT; c++)
                x += (double)q[c] * k1[j * DT + c] * k2[k * DT + c];
            const double e = exp(0.5 * x); /* scale 1/sqrt(4) */
            den += e;
            for (int c = 0; c < DT; c++)
                want[c] += e * v1[j * DT + c] * v2[k * DT + c];
        }
    for (int c = 0; c < DT; c++)
        want[c] /= den;
    kvd_check_tensor(cJSON_GetObjectItemCaseSensitive(o, "o"), want, DT, 1e-5, "SubGen4Cache output");
    cJSON_Delete(o);
    free(body);
    cJSON *st = kvd_session_stats(port, id);
    ck_assert(kvd_json_num(st, "clusters") == 2); /* one k1 cluster, one k2 cluster */
    cJSON_Delete(st);
    kvd_delete_session(port, id);
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

/* Steps a SubGen4Cache session (head_dim 4, one head) with m tokens from
 * seed and one query; returns the "o" b64 string (caller frees). */
static char *tensor_step_o(int port, const char *id, unsigned seed, size_t m)
{
    enum { DT = 4 };
    rng r;
    rng_seed(&r, seed);
    float *k1 = rng_tensor(&r, m * DT, -1, 1), *k2 = rng_tensor(&r, m * DT, -1, 1);
    float *v1 = rng_tensor(&r, m * DT, -1, 1), *v2 = rng_tensor(&r, m * DT, -1, 1), q[DT];
    rng_fill(&r, q, DT, -1, 1);
    tensor_step_spec s = {.layer = 0, .k1 = k1, .k2 = k2, .v1 = v1, .v2 = v2, .m = m, .q = q, .m_q = 1,
                          .mask = "block", .b64 = true};
    char *body = tensor_step_body(&s, DT, DT, "b64");
    cJSON *o = kvd_step_ok(port, id, body);
    char *out = strdup(kvd_json_str(o, "o"));
    cJSON_Delete(o);
    free(body);
    free(k1);
    free(k2);
    free(v1);
    free(v2);
    return out;
}

/* Snapshots of subgen sessions: a standard one (with its shadow copy) and
 * a SubGen4Cache one, restored on another kvd with another page size, keep
 * their clusters and answer the next steps bit for bit as the original. */
START_TEST(test_snapshot_restore)
{
    static const char *const b_args[] = {"--page-bytes", "8192", "--threads", "2", NULL};
    kvd_proc *A = kvd_proc_start_ck(NULL), *B = kvd_proc_start_ck(b_args);
    const int pa = kvd_proc_port(A), pb = kvd_proc_port(B);
    char *id = kvd_create_session(pa,
                                  "{\"heads\":1,\"head_dim\":4,\"attention\":\"tensor\",\"seed\":3,"
                                  "\"cache\":{\"eviction\":\"subgen\",\"sink\":1,\"recent\":2,\"delta\":0.6,"
                                  "\"cluster_samples\":3,\"value_samples\":8}}",
                                  NULL);
    for (unsigned i = 0; i < 4; i++)
        free(tensor_step_o(pa, id, 10 + i, 9));
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/snapshot", id);
    http_response *snap = http_request_n(pa, "GET", path, NULL, NULL, 0, NULL);
    ck_assert_msg(snap->status == 200, "%d %.*s", snap->status, (int)snap->body_len, snap->body);
    http_response *r = http_request_n(pb, "POST", "/v1/sessions/restore", "application/octet-stream", snap->body,
                                      snap->body_len, NULL);
    ck_assert_msg(r->status == 201, "%d %s", r->status, r->body);
    http_response_free(r);
    http_response_free(snap);
    cJSON *sa = kvd_session_stats(pa, id), *sb = kvd_session_stats(pb, id);
    static const char *const same[] = {"tokens", "appended", "evicted", "clusters", "steps"};
    for (size_t k = 0; k < sizeof same / sizeof *same; k++)
        ck_assert_msg(kvd_json_num(sa, same[k]) == kvd_json_num(sb, same[k]), "%s differs", same[k]);
    ck_assert(kvd_json_num(sa, "clusters") > 2 && kvd_json_num(sa, "evicted") > 0);
    cJSON_Delete(sa);
    cJSON_Delete(sb);
    for (unsigned i = 0; i < 3; i++) {
        char *oa = tensor_step_o(pa, id, 50 + i, 5), *ob = tensor_step_o(pb, id, 50 + i, 5);
        ck_assert_str_eq(oa, ob); /* b64 of the f32 bytes: bit for bit */
        free(oa);
        free(ob);
    }
    kvd_delete_session(pa, id);
    kvd_delete_session(pb, id);
    free(id);
    kvd_proc_stop_ck(A);
    kvd_proc_stop_ck(B);
}
END_TEST

/* One query step on a tensor session (head_dim 4, one head): its shadow
 * relative error. */
static double tensor_shadow_error(int port, const char *id, unsigned seed, size_t m)
{
    enum { DT = 4 };
    rng r;
    rng_seed(&r, seed);
    float *k1 = rng_tensor(&r, m * DT, -1, 1), *k2 = rng_tensor(&r, m * DT, -1, 1);
    float *v1 = rng_tensor(&r, m * DT, -1, 1), *v2 = rng_tensor(&r, m * DT, -1, 1), q[DT];
    rng_fill(&r, q, DT, -1, 1);
    tensor_step_spec s = {.layer = 0, .k1 = k1, .k2 = k2, .v1 = v1, .v2 = v2, .m = m, .q = q, .m_q = 1,
                          .mask = "block"};
    char *body = tensor_step_body(&s, DT, DT, NULL);
    cJSON *o = kvd_step_ok(port, id, body);
    const double rel = kvd_json_num(o, "shadow.relative_error");
    ck_assert_msg(rel == rel && rel >= 0, "no shadow error: %g", rel);
    cJSON_Delete(o);
    free(body);
    free(k1);
    free(k2);
    free(v1);
    free(v2);
    return rel;
}

/* Shadow mode for tensor sessions over HTTP: created (no longer a 400) and
 * echoed, each step reports the live output's error against an exact f32
 * four-cache copy: exact four-cache 0, two-cache rounding only, a window 0
 * until it slides and > 0 after, SubGen4Cache > 0; stats count the shadow
 * steps and the copy's pages go back with the session. */
START_TEST(test_tensor_shadow)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    const int port = kvd_proc_port(p);
    static const char *const bodies[] = {
        "{\"heads\":1,\"head_dim\":4,\"attention\":\"tensor\",\"shadow\":true}",
        "{\"heads\":1,\"head_dim\":4,\"attention\":\"tensor\",\"tensor_cache\":\"two\",\"shadow\":true}",
        "{\"heads\":1,\"head_dim\":4,\"attention\":\"tensor\",\"window\":6,\"shadow\":true}",
        "{\"heads\":1,\"head_dim\":4,\"attention\":\"tensor\",\"shadow\":true,\"seed\":4,"
        "\"cache\":{\"eviction\":\"subgen\",\"sink\":1,\"recent\":1,\"cluster_samples\":4,\"value_samples\":8}}"};
    for (int c = 0; c < 4; c++) {
        cJSON *resp = NULL;
        char *id = kvd_create_session(port, bodies[c], &resp);
        ck_assert(cJSON_IsTrue(kvd_json_at(resp, "config.shadow")));
        cJSON_Delete(resp);
        /* a window slides after an entry's attention: the third step is the
         * first whose query misses tokens */
        double first = tensor_shadow_error(port, id, 7, 5), second = tensor_shadow_error(port, id, 8, 5);
        second = fmax(second, tensor_shadow_error(port, id, 9, 1));
        if (c == 0)
            ck_assert_msg(first == 0 && second == 0, "exact four-cache: %g %g", first, second);
        else if (c == 1)
            ck_assert_msg(first < 1e-5 && second < 1e-5, "two-cache: %g %g", first, second);
        else if (c == 2)
            ck_assert_msg(first == 0 && second > 0, "window: %g before sliding, %g after", first, second);
        else
            ck_assert_msg(first > 0 && second > 0, "SubGen4Cache: %g %g", first, second);
        cJSON *st = kvd_session_stats(port, id);
        ck_assert(kvd_json_num(st, "shadow.steps") == 3);
        cJSON_Delete(st);
        kvd_delete_session(port, id);
        free(id);
        ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""), 0);
    }
    kvd_proc_stop_ck(p);
}
END_TEST

/* One step of m keys uniform in [-3, 3]^16 (far apart at delta 0.1: each
 * one its own cluster, uncapped) on a one-head standard session; returns the
 * "o" b64 string of its query (caller frees). */
static char *uniform_step_o(int port, const char *id, unsigned seed, size_t m)
{
    rng r;
    rng_seed(&r, seed);
    float *k = rng_tensor(&r, m * D, -3, 3), *v = rng_tensor(&r, m * D, -1, 1), q[D];
    rng_fill(&r, q, D, -0.3f, 0.3f);
    step_spec s = {.layer = 0, .k = k, .v = v, .m = m, .q = q, .m_q = 1, .mask = "block", .b64 = true};
    char *body = step_body(&s, D, D, "b64");
    cJSON *o = kvd_step_ok(port, id, body);
    char *out = strdup(kvd_json_str(o, "o"));
    cJSON_Delete(o);
    free(body);
    free(k);
    free(v);
    return out;
}

/* cache.max_clusters over HTTP: out of range or without subgen a 400
 * naming it with nothing created; echoed; on unclustered keys the clusters
 * stat stays at the cap while n grows (and the bytes stop growing once it
 * is reached); a fork and a snapshot restored on another kvd keep the field,
 * the cap and the sketch (the next steps bit for bit). */
START_TEST(test_max_clusters)
{
    static const char *const b_args[] = {"--page-bytes", "8192", "--threads", "2", NULL};
    kvd_proc *A = kvd_proc_start_ck(NULL), *B = kvd_proc_start_ck(b_args);
    const int port = kvd_proc_port(A), pb = kvd_proc_port(B);
    bad(port, "{\"cache\":{\"eviction\":\"subgen\",\"max_clusters\":-1}}", "cache.max_clusters", NULL);
    bad(port, "{\"cache\":{\"eviction\":\"subgen\",\"max_clusters\":1048577}}", "cache.max_clusters", "1048576");
    bad(port, "{\"cache\":{\"eviction\":\"subgen\",\"max_clusters\":2.5}}", "cache.max_clusters", NULL);
    bad(port, "{\"cache\":{\"eviction\":\"subgen\",\"max_clusters\":\"8\"}}", "cache.max_clusters", NULL);
    bad(port, "{\"cache\":{\"eviction\":\"recency\",\"max_clusters\":8}}", "cache.max_clusters",
        "only used with cache.eviction \"subgen\"");
    bad(port, "{\"cache\":{\"max_clusters\":8}}", "cache.max_clusters", "subgen");
    cJSON *list = kvd_get_json(port, "/v1/sessions", 200);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(list, "sessions")), 0);
    cJSON_Delete(list);

    cJSON *resp = NULL;
    char *id = kvd_create_session(port,
                                  "{\"heads\":1,\"head_dim\":16,\"seed\":9,\"cache\":{\"eviction\":\"subgen\","
                                  "\"delta\":0.1,\"cluster_samples\":4,\"value_samples\":8,\"sink\":1,"
                                  "\"recent\":2,\"max_clusters\":6}}",
                                  &resp);
    ck_assert(kvd_json_num(resp, "config.cache.max_clusters") == 6);
    cJSON_Delete(resp);
    double bytes = 0;
    for (unsigned i = 0; i < 4; i++) {
        free(uniform_step_o(port, id, 30 + i, i == 0 ? 5 : 40));
        cJSON *st = kvd_session_stats(port, id);
        const double want = i == 0 ? 2 : 6; /* 5 tokens, 3 protected: 2 sketched */
        ck_assert_msg(kvd_json_num(st, "clusters") == want, "step %u: %g clusters", i, kvd_json_num(st, "clusters"));
        ck_assert(kvd_json_num(st, "evicted") == (i == 0 ? 2 : 2 + 40.0 * i));
        if (i >= 2)
            ck_assert_msg(kvd_json_num(st, "bytes") == bytes, "bytes grew at the cap: %g -> %g", bytes,
                          kvd_json_num(st, "bytes"));
        bytes = kvd_json_num(st, "bytes");
        cJSON_Delete(st);
    }

    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", id);
    http_response *fr = http_request(port, "POST", path, J, "{}");
    ck_assert_msg(fr->status == 201, "fork: %d %s", fr->status, fr->body);
    cJSON *fj = http_response_json(fr);
    ck_assert(kvd_json_num(fj, "config.cache.max_clusters") == 6);
    char *child = strdup(kvd_json_str(fj, "id"));
    cJSON_Delete(fj);
    http_response_free(fr);
    free(uniform_step_o(port, child, 40, 50));
    cJSON *cst = kvd_session_stats(port, child);
    ck_assert(kvd_json_num(cst, "clusters") == 6 && kvd_json_num(cst, "config.cache.max_clusters") == 6);
    cJSON_Delete(cst);
    kvd_delete_session(port, child);
    free(child);

    snprintf(path, sizeof path, "/v1/sessions/%s/snapshot", id);
    http_response *snap = http_request_n(port, "GET", path, NULL, NULL, 0, NULL);
    ck_assert_msg(snap->status == 200, "%d", snap->status);
    http_response *r = http_request_n(pb, "POST", "/v1/sessions/restore", "application/octet-stream", snap->body,
                                      snap->body_len, NULL);
    ck_assert_msg(r->status == 201, "%d %s", r->status, r->body);
    http_response_free(r);
    http_response_free(snap);
    for (unsigned i = 0; i < 3; i++) {
        char *oa = uniform_step_o(port, id, 60 + i, 30), *ob = uniform_step_o(pb, id, 60 + i, 30);
        ck_assert_str_eq(oa, ob);
        free(oa);
        free(ob);
    }
    cJSON *sa = kvd_session_stats(port, id), *sb = kvd_session_stats(pb, id);
    ck_assert(kvd_json_num(sb, "config.cache.max_clusters") == 6);
    ck_assert(kvd_json_num(sa, "clusters") == 6 && kvd_json_num(sb, "clusters") == 6);
    ck_assert(kvd_json_num(sa, "evicted") == kvd_json_num(sb, "evicted"));
    cJSON_Delete(sa);
    cJSON_Delete(sb);
    kvd_delete_session(port, id);
    kvd_delete_session(pb, id);
    free(id);
    kvd_proc_stop_ck(A);
    kvd_proc_stop_ck(B);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration_subgen");
    TCase *tc = tcase_create("http");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_create_and_bad_input);
    tcase_add_test(tc, test_pool_full_503);
    tcase_add_test(tc, test_tensor_four);
    tcase_add_test(tc, test_snapshot_restore);
    tcase_add_test(tc, test_tensor_shadow);
    tcase_add_test(tc, test_max_clusters);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
