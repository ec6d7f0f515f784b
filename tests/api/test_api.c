/* tests/api/test_api.c — the API handlers without HTTP: a fake executor keeps
 * submitted jobs in a list so the test decides when "workers" run them, which
 * makes per-session ordering, queue limits, delete-while-queued and
 * all-or-nothing steps (pool exhaustion) deterministic to check. Outputs are
 * compared with exact double-precision attention; a fake clock drives TTLs.
 * Over 600 lines on purpose: every case runs through the one fake executor
 * and request helpers above them, which a split would have to copy. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/api.h"
#include "cache/pool.h"
#include "tests/support/check_main.h"

/* f32 accumulation over <= 64 tokens of unit-scale data: 1e-5 absolute is
 * ~100 ulps of the outputs' magnitude, far below any real mistake. */
#define OUT_ABS_TOL 1e-5

#define MAX_JOBS 64
static kvd_api_job *pending[MAX_JOBS];
static int n_pending;

#define MAX_REPLIES 64
static kvd_response replies[MAX_REPLIES];
static int reply_tag[MAX_REPLIES];
static int n_replies;

static void fake_submit(void *executor, kvd_api_job *job)
{
    (void)executor;
    ck_assert_int_lt(n_pending, MAX_JOBS);
    pending[n_pending++] = job;
}

static void fake_respond(void *reply, kvd_response *resp)
{
    ck_assert_int_lt(n_replies, MAX_REPLIES);
    reply_tag[n_replies] = (int)(intptr_t)reply;
    replies[n_replies++] = *resp;
}

/* Runs the oldest submitted job as a worker would, then completes it. */
static int run_one(kvd_api *api)
{
    if (!n_pending)
        return 0;
    kvd_api_job *job = pending[0];
    memmove(pending, pending + 1, (size_t)--n_pending * sizeof *pending);
    kvd_api_job_run(job);
    kvd_api_job_done(api, job);
    return 1;
}

static void run_all(kvd_api *api)
{
    while (run_one(api))
        ;
}

static void clear_replies(void)
{
    for (int i = 0; i < n_replies; i++)
        free(replies[i].body);
    n_replies = 0;
}

/* The API's wall clock: a test moves it by hand, so TTLs need no sleeping. */
static double fake_now;

static double fake_clock(void *ctx)
{
    return *(const double *)ctx;
}

static kvd_api *make_api_heap(size_t memory, size_t page_bytes, unsigned queue, bool on_full_evict,
                               size_t max_session_heap)
{
    kvd_api_options opt = {.memory_bytes = memory, .page_bytes = page_bytes, .threads = 1,
                           .max_body = 1 << 20, .session_queue = queue,
                           .max_session_heap = max_session_heap,
                           .on_full_evict = on_full_evict, .now = fake_clock, .now_ctx = &fake_now};
    fake_now = 1.7e9;
    kvd_api *api;
    ck_assert_int_eq(kvd_api_create(&opt, fake_submit, NULL, fake_respond, &api), 0);
    n_pending = 0;
    n_replies = 0;
    return api;
}

static kvd_api *make_api_opt(size_t memory, size_t page_bytes, unsigned queue, bool on_full_evict)
{
    return make_api_heap(memory, page_bytes, queue, on_full_evict, 0);
}

static kvd_api *make_api(size_t memory, size_t page_bytes, unsigned queue)
{
    return make_api_opt(memory, page_bytes, queue, false);
}

/* Sends a request; returns the response whether answered now or after the
 * fake workers ran (tag identifies it among replies). */
static kvd_response call(kvd_api *api, kvd_route route, const char *id, const char *body, int tag,
                         int run)
{
    /* kvd_api_handle takes ownership of a malloc'd body. */
    kvd_api_request req = {.route = route, .session_id = id, .query = "",
                           .content_type = "application/json", .body = body ? strdup(body) : NULL,
                           .body_len = body ? strlen(body) : 0};
    kvd_response resp;
    if (kvd_api_handle(api, &req, (void *)(intptr_t)tag, &resp))
        return resp;
    if (run)
        run_all(api);
    for (int i = 0; i < n_replies; i++)
        if (reply_tag[i] == tag) {
            kvd_response r = replies[i];
            replies[i] = replies[--n_replies];
            reply_tag[i] = reply_tag[n_replies];
            return r;
        }
    kvd_response none = {.status = -1};
    return none;
}

static cJSON *body_json(const kvd_response *r)
{
    ck_assert_ptr_nonnull(r->body);
    cJSON *j = cJSON_ParseWithLength(r->body, r->body_len);
    ck_assert_ptr_nonnull(j);
    return j;
}

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(cJSON_IsNumber(v), "no number %s", key);
    return v->valuedouble;
}

static char *create(kvd_api *api, const char *body)
{
    kvd_response r = call(api, KVD_ROUTE_SESSION_CREATE, NULL, body, 1, 1);
    ck_assert_int_eq(r.status, 201);
    cJSON *j = body_json(&r);
    char *id = strdup(cJSON_GetObjectItemCaseSensitive(j, "id")->valuestring);
    ck_assert_uint_eq(strlen(id), 32);
    cJSON_Delete(j);
    free(r.body);
    return id;
}

/* Builds {"k": [...], "v": [...], "q": [...]} from arrays. */
static char *step_body(const float *k, const float *v, size_t nkv, const float *q, size_t nq,
                       const char *mask)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *a;
    if (nkv) {
        a = cJSON_AddArrayToObject(o, "k");
        for (size_t i = 0; i < nkv; i++)
            cJSON_AddItemToArray(a, cJSON_CreateNumber(k[i]));
        a = cJSON_AddArrayToObject(o, "v");
        for (size_t i = 0; i < nkv; i++)
            cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    }
    if (nq) {
        a = cJSON_AddArrayToObject(o, "q");
        for (size_t i = 0; i < nq; i++)
            cJSON_AddItemToArray(a, cJSON_CreateNumber(q[i]));
    }
    if (mask)
        cJSON_AddStringToObject(o, "mask", mask);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static float rnd(unsigned *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* Exact attention of one query head over tokens 0..n-1 of one kv head. */
static void ref_attend(const float *k, const float *v, size_t n, size_t stride, const float *q, size_t d,
                       double scale, double *o)
{
    double mx = -INFINITY;
    double *s = malloc(n * sizeof *s);
    for (size_t j = 0; j < n; j++) {
        double dot = 0;
        for (size_t c = 0; c < d; c++)
            dot += (double)q[c] * k[j * stride + c];
        s[j] = dot * scale;
        if (s[j] > mx)
            mx = s[j];
    }
    double den = 0;
    for (size_t j = 0; j < n; j++)
        den += exp(s[j] - mx);
    for (size_t c = 0; c < d; c++) {
        double acc = 0;
        for (size_t j = 0; j < n; j++)
            acc += exp(s[j] - mx) / den * v[j * stride + c];
        o[c] = acc;
    }
    free(s);
}

/* heads 4, kv_heads 2, head_dim 8, 1 KiB pages (a slot is 2*8*4+16 = 80 B,
 * so a few slots per page and a 20-token cache spans pages). */
#define H 4
#define G 2
#define D 8
START_TEST(decode_matches_reference_and_state_is_exact)
{
    kvd_api *api = make_api(64 * 1024, 1024, 8);
    char *id = create(api, "{\"heads\":4,\"kv_heads\":2,\"head_dim\":8}");
    enum { N = 20 };
    float k[N][G][D], v[N][G][D], q[N][H][D];
    unsigned st = 7;
    for (size_t i = 0; i < N * G * D; i++) {
        ((float *)k)[i] = rnd(&st);
        ((float *)v)[i] = rnd(&st);
    }
    for (size_t i = 0; i < N * H * D; i++)
        ((float *)q)[i] = rnd(&st);
    /* prefill 12 causal, then 8 decode steps */
    size_t done = 0;
    for (int stepi = 0; done < N; stepi++) {
        size_t m = stepi == 0 ? 12 : 1;
        char *b = step_body(&k[done][0][0], &v[done][0][0], m * G * D, &q[done][0][0], m * H * D, NULL);
        kvd_response r = call(api, KVD_ROUTE_SESSION_STEP, id, b, 2, 1);
        free(b);
        ck_assert_int_eq(r.status, 200);
        cJSON *j = body_json(&r);
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, "o");
        ck_assert_int_eq(cJSON_GetArraySize(o), (int)(m * H * D));
        ck_assert_int_eq((int)num(j, "tokens"), (int)(done + m));
        for (size_t i = 0; i < m; i++)
            for (int h = 0; h < H; h++) {
                double ref[D];
                int g = h / (H / G);
                ref_attend(&k[0][g][0], &v[0][g][0], done + i + 1, G * D, q[done + i][h], D,
                           1.0 / sqrt(D), ref);
                for (int c = 0; c < D; c++) {
                    double got = cJSON_GetArrayItem(o, (int)((i * H + (size_t)h) * D + (size_t)c))->valuedouble;
                    ck_assert_double_eq_tol(got, ref[c], OUT_ABS_TOL);
                }
            }
        cJSON_Delete(j);
        free(r.body);
        done += m;
    }
    /* block-mask pure query (m = 0) sees the whole cache */
    char *b = step_body(NULL, NULL, 0, &q[0][0][0], H * D, NULL);
    kvd_response r = call(api, KVD_ROUTE_SESSION_STEP, id, b, 3, 1);
    free(b);
    ck_assert_int_eq(r.status, 200);
    cJSON *j = body_json(&r);
    for (int h = 0; h < H; h++) {
        double ref[D];
        ref_attend(&k[0][h / 2][0], &v[0][h / 2][0], N, G * D, q[0][h], D, 1.0 / sqrt(D), ref);
        for (int c = 0; c < D; c++)
            ck_assert_double_eq_tol(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "o"), h * D + c)->valuedouble,
                                    ref[c], OUT_ABS_TOL);
    }
    cJSON_Delete(j);
    free(r.body);

    r = call(api, KVD_ROUTE_SESSION_GET, id, NULL, 4, 1);
    ck_assert_int_eq(r.status, 200);
    j = body_json(&r);
    ck_assert_int_eq((int)num(j, "tokens"), N * G);
    ck_assert_int_eq((int)num(j, "appended"), N * G);
    ck_assert_int_eq((int)num(j, "steps"), 10);
    ck_assert_double_eq(num(j, "bits_per_coordinate"), 32.0);
    size_t pages = (size_t)num(j, "pages");
    ck_assert_uint_eq(pages, kvd_pool_pages_used(kvd_api_pool(api)));
    ck_assert_double_eq(num(j, "bytes"), (double)pages * 1024);
    cJSON_Delete(j);
    free(r.body);

    r = call(api, KVD_ROUTE_SESSION_DELETE, id, NULL, 5, 1);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    ck_assert_uint_eq(kvd_pool_pages_used(kvd_api_pool(api)), 0);
    r = call(api, KVD_ROUTE_SESSION_GET, id, NULL, 6, 1);
    ck_assert_int_eq(r.status, 404);
    free(r.body);
    free(id);
    clear_replies();
    kvd_api_destroy(api);
}
END_TEST

START_TEST(pool_exhaustion_changes_nothing)
{
    /* 8 pages of 1 KiB; head_dim 8 -> 14 slots per page (see stream.h). */
    kvd_api *api = make_api(8 * 1024, 1024, 8);
    char *id = create(api, "{\"heads\":1,\"kv_heads\":1,\"head_dim\":8}");
    float buf[4096];
    unsigned st = 3;
    for (size_t i = 0; i < 4096; i++)
        buf[i] = rnd(&st);
    char *b = step_body(buf, buf + 2048, 10 * D, NULL, 0, NULL);
    kvd_response r = call(api, KVD_ROUTE_SESSION_STEP, id, b, 1, 1);
    free(b);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    size_t used = kvd_pool_pages_used(kvd_api_pool(api));
    /* 200 more tokens need 15 pages, more than the whole pool: 413, no
     * Retry-After (issue 10, bug 5). */
    b = step_body(buf, buf + 2048, 200 * D, buf, D, "block");
    r = call(api, KVD_ROUTE_SESSION_STEP, id, b, 2, 1);
    free(b);
    ck_assert_int_eq(r.status, 413);
    ck_assert_uint_eq(r.retry_after_s, 0);
    ck_assert_ptr_nonnull(strstr(r.body, "payload_too_large"));
    free(r.body);
    ck_assert_uint_eq(kvd_pool_pages_used(kvd_api_pool(api)), used);
    /* 110 more need 8 new pages: the pool has 8, 7 are free: refused whole. */
    b = step_body(buf, buf + 2048, 110 * D, buf, D, "block");
    r = call(api, KVD_ROUTE_SESSION_STEP, id, b, 2, 1);
    free(b);
    ck_assert_int_eq(r.status, 503);
    ck_assert_uint_eq(r.retry_after_s, 1);
    ck_assert_ptr_nonnull(strstr(r.body, "resource_exhausted"));
    free(r.body);
    ck_assert_uint_eq(kvd_pool_pages_used(kvd_api_pool(api)), used);
    r = call(api, KVD_ROUTE_SESSION_GET, id, NULL, 3, 1);
    cJSON *j = body_json(&r);
    ck_assert_int_eq((int)num(j, "tokens"), 10);
    ck_assert_int_eq((int)num(j, "appended"), 10);
    ck_assert_int_eq((int)num(j, "steps"), 1);
    cJSON_Delete(j);
    free(r.body);
    ck_assert_uint_eq(kvd_api_stats_get(api)->rejected_pool_full, 1);
    free(id);
    clear_replies();
    kvd_api_destroy(api);
}
END_TEST

START_TEST(session_queue_order_limit_and_delete)
{
    kvd_api *api = make_api(64 * 1024, 1024, 2);
    char *id = create(api, "{\"heads\":1,\"kv_heads\":1,\"head_dim\":8}");
    float kv[D] = {1, 2, 3, 4, 5, 6, 7, 8};
    char *b = step_body(kv, kv, D, NULL, 0, NULL);
    kvd_api_request req = {.route = KVD_ROUTE_SESSION_STEP, .session_id = id, .query = "",
                           .content_type = "application/json", .body = NULL, .body_len = strlen(b)};
    kvd_response resp;
    /* First step goes to a worker; two more wait in the queue (limit 2).
     * Each call hands over its own malloc'd copy of the body. */
    req.body = strdup(b);
    ck_assert(!kvd_api_handle(api, &req, (void *)10, &resp));
    req.body = strdup(b);
    ck_assert(!kvd_api_handle(api, &req, (void *)11, &resp));
    req.body = strdup(b);
    ck_assert(!kvd_api_handle(api, &req, (void *)12, &resp));
    ck_assert_int_eq(n_pending, 1); /* one at a time per session */
    req.body = strdup(b);
    ck_assert(kvd_api_handle(api, &req, (void *)13, &resp));
    ck_assert_int_eq(resp.status, 429);
    free(resp.body);
    /* Delete while steps are queued: later requests see 404 at once. */
    kvd_api_request del = {.route = KVD_ROUTE_SESSION_DELETE, .session_id = id, .query = ""};
    req.route = KVD_ROUTE_SESSION_GET;
    req.body = NULL;
    req.body_len = 0;
    ck_assert(kvd_api_handle(api, &req, (void *)15, &resp)); /* queue full: 429 */
    free(resp.body);
    run_one(api); /* step 10 done, step 11 starts: room for the delete */
    ck_assert(!kvd_api_handle(api, &del, (void *)14, &resp));
    ck_assert(kvd_api_handle(api, &req, (void *)16, &resp));
    ck_assert_int_eq(resp.status, 404);
    free(resp.body);
    run_all(api);
    /* Replies came in arrival order: 10, 11, 12, then the delete. */
    ck_assert_int_eq(n_replies, 4);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(reply_tag[i], 10 + i);
        ck_assert_int_eq(replies[i].status, 200);
        cJSON *j = body_json(&replies[i]);
        ck_assert_int_eq((int)num(j, "tokens"), i + 1);
        cJSON_Delete(j);
    }
    ck_assert_int_eq(reply_tag[3], 14);
    ck_assert_int_eq(replies[3].status, 200);
    ck_assert_uint_eq(kvd_pool_pages_used(kvd_api_pool(api)), 0);
    ck_assert_uint_eq(kvd_api_session_count(api), 0);
    free(b);
    free(id);
    clear_replies();
    kvd_api_destroy(api);
}
END_TEST

START_TEST(bad_requests_leave_state_alone)
{
    kvd_api *api = make_api(64 * 1024, 1024, 8);
    char *id = create(api, "{\"heads\":2,\"kv_heads\":1,\"head_dim\":8}");
    static const struct { const char *body; int status; } bad[] = {
        {"{", 400},
        {"[]", 400},
        {"{\"k\":[1,2,3],\"v\":[1,2,3]}", 400},
        {"{\"k\":[1,2,3,4,5,6,7,8]}", 400},
        {"{\"layer\":1,\"q\":[1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8]}", 400},
        {"{\"bogus\":1}", 400},
        {"{\"k\":[1,2,3,4,5,6,7,8],\"v\":[1,2,3,4,5,6,7,1e39]}", 400},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kvd_response r = call(api, KVD_ROUTE_SESSION_STEP, id, bad[i].body, 1, 1);
        ck_assert_msg(r.status == bad[i].status, "%s -> %d", bad[i].body, r.status);
        ck_assert_ptr_nonnull(strstr(r.body, "\"error\""));
        free(r.body);
    }
    kvd_api_request req = {.route = KVD_ROUTE_SESSION_STEP, .session_id = id, .query = "",
                           .content_type = "text/plain", .body = strdup("{}"), .body_len = 2};
    kvd_response r;
    ck_assert(kvd_api_handle(api, &req, NULL, &r));
    ck_assert_int_eq(r.status, 415);
    free(r.body);
    r = call(api, KVD_ROUTE_SESSION_STEP, "0123456789abcdef0123456789abcdef", "{}", 2, 1);
    ck_assert_int_eq(r.status, 404);
    free(r.body);
    r = call(api, KVD_ROUTE_SESSION_GET, id, NULL, 3, 1);
    cJSON *j = body_json(&r);
    ck_assert_int_eq((int)num(j, "tokens"), 0);
    ck_assert_int_eq((int)num(j, "steps"), 0);
    cJSON_Delete(j);
    free(r.body);
    ck_assert_uint_eq(kvd_pool_pages_used(kvd_api_pool(api)), 0);
    free(id);
    clear_replies();
    kvd_api_destroy(api);
}
END_TEST

START_TEST(list_pages_through_sessions)
{
    kvd_api *api = make_api(64 * 1024, 1024, 8);
    char *ids[5];
    for (int i = 0; i < 5; i++)
        ids[i] = create(api, "{\"heads\":1,\"head_dim\":8}");
    char after[40] = "";
    int seen = 0;
    char last[40] = "";
    for (int page = 0; page < 5; page++) {
        char query[80];
        snprintf(query, sizeof query, "limit=2%s%s", after[0] ? "&after=" : "", after);
        kvd_api_request req = {.route = KVD_ROUTE_SESSION_LIST, .query = query};
        kvd_response r;
        ck_assert(kvd_api_handle(api, &req, NULL, &r));
        ck_assert_int_eq(r.status, 200);
        cJSON *j = body_json(&r);
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "sessions"), *e;
        cJSON_ArrayForEach(e, arr) {
            const char *id = cJSON_GetObjectItemCaseSensitive(e, "id")->valuestring;
            ck_assert_int_gt(strcmp(id, last), 0); /* ascending, no repeats */
            strcpy(last, id);
            seen++;
        }
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(j, "next_after");
        int more = cJSON_IsString(next);
        if (more)
            strcpy(after, next->valuestring);
        cJSON_Delete(j);
        free(r.body);
        if (!more)
            break;
    }
    ck_assert_int_eq(seen, 5);
    kvd_api_request bad = {.route = KVD_ROUTE_SESSION_LIST, .query = "limit=0"};
    kvd_response r;
    ck_assert(kvd_api_handle(api, &bad, NULL, &r));
    ck_assert_int_eq(r.status, 400);
    free(r.body);
    for (int i = 0; i < 5; i++)
        free(ids[i]);
    kvd_api_destroy(api);
}
END_TEST

/* Appends m tokens (head_dim 8, one kv head) to a session; returns status. */
static int append_tokens(kvd_api *api, const char *id, size_t m, int tag)
{
    static float buf[8 * 512];
    unsigned st = (unsigned)tag;
    for (size_t i = 0; i < m * D; i++)
        buf[i] = rnd(&st);
    char *b = step_body(buf, buf, m * D, NULL, 0, NULL);
    kvd_response r = call(api, KVD_ROUTE_SESSION_STEP, id, b, tag, 1);
    free(b);
    free(r.body);
    return r.status;
}

static double stat(kvd_api *api, const char *id, const char *key)
{
    kvd_response r = call(api, KVD_ROUTE_SESSION_GET, id, NULL, 900, 1);
    ck_assert_int_eq(r.status, 200);
    cJSON *j = body_json(&r);
    double v = num(j, key);
    cJSON_Delete(j);
    free(r.body);
    return v;
}

START_TEST(fork_shares_pages_until_written)
{
    /* 1 KiB pages, head_dim 8: 14 slots a page (see stream.h's layout). */
    kvd_api *api = make_api(64 * 1024, 1024, 8);
    char *id = create(api, "{\"heads\":1,\"kv_heads\":1,\"head_dim\":8}");
    ck_assert_int_eq(append_tokens(api, id, 30, 1), 200); /* 3 pages, tail 2/14 used */
    size_t used = kvd_pool_pages_used(kvd_api_pool(api));
    kvd_response r = call(api, KVD_ROUTE_SESSION_FORK, id, NULL, 2, 1);
    ck_assert_int_eq(r.status, 201);
    cJSON *j = body_json(&r);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "parent")->valuestring, id);
    char *child = strdup(cJSON_GetObjectItemCaseSensitive(j, "id")->valuestring);
    cJSON_Delete(j);
    free(r.body);
    ck_assert_uint_eq(kvd_pool_pages_used(kvd_api_pool(api)), used); /* no page copied */
    ck_assert_uint_eq(kvd_pool_copies(kvd_api_pool(api)), 0);
    ck_assert_double_eq(stat(api, child, "tokens"), 30);
    ck_assert_double_eq(stat(api, child, "shared_pages"), 3);
    /* One token into the child: only its shared, partly filled tail page is copied. */
    ck_assert_int_eq(append_tokens(api, child, 1, 3), 200);
    ck_assert_uint_eq(kvd_pool_copies(kvd_api_pool(api)), 1);
    ck_assert_uint_eq(kvd_pool_pages_used(kvd_api_pool(api)), used + 1);
    ck_assert_double_eq(stat(api, child, "tokens"), 31);
    ck_assert_double_eq(stat(api, id, "tokens"), 30);
    /* A fork body may be {} but nothing else yet. */
    r = call(api, KVD_ROUTE_SESSION_FORK, id, "{\"ttl_seconds\":5}", 4, 1);
    ck_assert_int_eq(r.status, 400);
    free(r.body);
    r = call(api, KVD_ROUTE_SESSION_FORK, "0123456789abcdef0123456789abcdef", NULL, 5, 1);
    ck_assert_int_eq(r.status, 404);
    free(r.body);
    free(id);
    free(child);
    clear_replies();
    kvd_api_destroy(api);
}
END_TEST

START_TEST(idle_sessions_expire)
{
    kvd_api *api = make_api(64 * 1024, 1024, 8);
    char *id = create(api, "{\"heads\":1,\"head_dim\":8,\"ttl_seconds\":5}");
    char *keep = create(api, "{\"heads\":1,\"head_dim\":8,\"ttl_seconds\":100}");
    ck_assert_int_eq(append_tokens(api, id, 20, 1), 200);
    double now = fake_now;
    fake_now = now + 1;
    ck_assert_uint_eq(kvd_api_expire(api), 0);
    fake_now = now + 10;
    ck_assert_uint_eq(kvd_api_expire(api), 1);
    ck_assert_uint_eq(kvd_api_session_count(api), 1);
    ck_assert_uint_eq(kvd_pool_pages_used(kvd_api_pool(api)), 0);
    ck_assert_uint_eq(kvd_api_stats_get(api)->sessions_expired, 1);
    kvd_response r = call(api, KVD_ROUTE_SESSION_GET, id, NULL, 2, 1);
    ck_assert_int_eq(r.status, 404);
    free(r.body);
    free(id);
    free(keep);
    clear_replies();
    kvd_api_destroy(api);
}
END_TEST

/* Any request to a session restarts its idle time, by the API's clock. */
START_TEST(requests_keep_sessions_alive)
{
    kvd_api *api = make_api(64 * 1024, 1024, 8);
    char *id = create(api, "{\"heads\":1,\"head_dim\":8,\"ttl_seconds\":5}");
    fake_now += 4;
    kvd_response r = call(api, KVD_ROUTE_SESSION_GET, id, NULL, 2, 1);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    fake_now += 4; /* 8 s after the create, 4 s after the last request */
    ck_assert_uint_eq(kvd_api_expire(api), 0);
    fake_now += 1;
    ck_assert_uint_eq(kvd_api_expire(api), 1);
    ck_assert_uint_eq(kvd_api_session_count(api), 0);
    free(id);
    clear_replies();
    kvd_api_destroy(api);
}
END_TEST

/* Pool of 8 pages (14 slots each). A holds 60 tokens (5 pages) under recency
 * with 4 sinks; B, with no policy, asks for 4 pages while 3 are free. */
static void pressure(bool on_full_evict)
{
    kvd_api *api = make_api_opt(8 * 1024, 1024, 8, on_full_evict);
    char *a = create(api, "{\"heads\":1,\"head_dim\":8,\"cache\":{\"eviction\":\"recency\"}}");
    char *b = create(api, "{\"heads\":1,\"head_dim\":8}");
    ck_assert_int_eq(append_tokens(api, a, 60, 1), 200);
    ck_assert_uint_eq(kvd_pool_pages_free(kvd_api_pool(api)), 3);
    ck_assert(kvd_api_ready(api)); /* 3 of 8 free */
    int status = append_tokens(api, b, 48, 2);
    if (on_full_evict) {
        ck_assert_int_eq(status, 200);
        ck_assert_double_eq(stat(api, a, "tokens"), 4); /* down to its sinks */
        ck_assert_double_eq(stat(api, a, "evicted"), 56);
        ck_assert_double_eq(stat(api, b, "tokens"), 48);
        ck_assert_uint_eq(kvd_api_stats_get(api)->reclaimed_tokens, 56);
    } else {
        ck_assert_int_eq(status, 503);
        ck_assert_double_eq(stat(api, a, "tokens"), 60);
        ck_assert_double_eq(stat(api, b, "tokens"), 0);
        ck_assert_double_eq(stat(api, b, "steps"), 0);
    }
    ck_assert_uint_eq(kvd_pool_pages_used(kvd_api_pool(api)),
                      (size_t)stat(api, a, "pages") + (size_t)stat(api, b, "pages"));
    free(a);
    free(b);
    clear_replies();
    kvd_api_destroy(api);
}

START_TEST(full_pool_rejects)
{
    pressure(false);
}
END_TEST

START_TEST(full_pool_evicts_idle_lru_sessions)
{
    pressure(true);
}
END_TEST

START_TEST(stats_report_kept_positions)
{
    /* recency, budget 6, 2 sinks: after 20 tokens the kept positions are
     * 0, 1 (sinks) and 16..19, so the range is 0..19; with no sink 14..19. */
    static const struct { const char *body; double oldest, newest; } cases[] = {
        {"{\"heads\":1,\"head_dim\":8,\"cache\":{\"eviction\":\"recency\",\"budget\":6,\"sink\":2}}", 0, 19},
        {"{\"heads\":1,\"head_dim\":8,\"cache\":{\"eviction\":\"recency\",\"budget\":6,\"sink\":0}}", 14, 19},
    };
    for (int c = 0; c < 2; c++) {
        kvd_api *api = make_api(64 * 1024, 1024, 8);
        char *id = create(api, cases[c].body);
        for (int t = 0; t < 20; t++)
            ck_assert_int_eq(append_tokens(api, id, 1, t + 1), 200);
        kvd_response r = call(api, KVD_ROUTE_SESSION_GET, id, NULL, 901, 1);
        cJSON *j = body_json(&r);
        const cJSON *layer = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "layers"), 0);
        ck_assert_double_eq(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(layer, "oldest_position"), 0)->valuedouble,
                            cases[c].oldest);
        ck_assert_double_eq(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(layer, "newest_position"), 0)->valuedouble,
                            cases[c].newest);
        ck_assert_double_eq(num(j, "tokens"), 6);
        cJSON_Delete(j);
        free(r.body);
        free(id);
        clear_replies();
        kvd_api_destroy(api);
    }
}
END_TEST

/* --max-session-heap: the heap sessions hold outside the pool is an
 * account (the sum of their heap_bytes) that creates and forks may not push
 * past the budget; a refusal is a 503 naming the budget and changes nothing;
 * a session that alone is over the budget is a 413; deletes and expiry take
 * their share out, back to zero. */
#define HEAP_BUDGET (1u << 20)
#define HEAP_SHAPE "{\"layers\":64,\"heads\":16,\"kv_heads\":16,\"head_dim\":8}" /* 1024 streams */

static double list_total(kvd_api *api)
{
    kvd_response r = call(api, KVD_ROUTE_SESSION_LIST, NULL, NULL, 901, 1);
    ck_assert_int_eq(r.status, 200);
    cJSON *j = body_json(&r);
    double total = num(j, "total");
    cJSON_Delete(j);
    free(r.body);
    return total;
}

START_TEST(session_heap_budget)
{
    kvd_api *api = make_api_heap(64 * 1024, 1024, 8, false, HEAP_BUDGET);
    const kvd_api_stats *st = kvd_api_stats_get(api);
    ck_assert_uint_eq(kvd_api_session_heap_budget(api), HEAP_BUDGET);
    ck_assert_uint_eq(kvd_api_session_heap_bytes(api), 0);
    kvd_response r = call(api, KVD_ROUTE_INFO, NULL, NULL, 1, 1);
    cJSON *j = body_json(&r);
    ck_assert_double_eq(num(cJSON_GetObjectItemCaseSensitive(j, "limits"), "max_session_heap"), HEAP_BUDGET);
    cJSON_Delete(j);
    free(r.body);

    /* Fill the budget with sessions of 1024 streams (~140 KB each). */
    char *ids[16];
    size_t n = 0;
    double sum = 0, one = 0;
    for (;;) {
        r = call(api, KVD_ROUTE_SESSION_CREATE, NULL, HEAP_SHAPE, 2, 1);
        if (r.status != 201)
            break;
        j = body_json(&r);
        ck_assert_uint_lt(n, 16);
        ids[n] = strdup(cJSON_GetObjectItemCaseSensitive(j, "id")->valuestring);
        cJSON_Delete(j);
        free(r.body);
        one = stat(api, ids[n], "heap_bytes");
        sum += one;
        n++;
        ck_assert_double_eq(sum, (double)kvd_api_session_heap_bytes(api));
    }
    /* Refused exactly when the next one would pass the budget. */
    ck_assert_uint_ge(n, 2);
    ck_assert_double_gt(one, 1024 * 100.0); /* at least the stream structs */
    ck_assert_double_le(sum, HEAP_BUDGET);
    ck_assert_double_gt(sum + one, HEAP_BUDGET);
    ck_assert_int_eq(r.status, 503);
    ck_assert_uint_eq(r.retry_after_s, 1);
    ck_assert_ptr_nonnull(strstr(r.body, "resource_exhausted"));
    ck_assert_ptr_nonnull(strstr(r.body, "--max-session-heap"));
    free(r.body);
    ck_assert_uint_eq(st->rejected_session_heap, 1);
    /* Nothing changed: no session, no heap, no page. */
    ck_assert_uint_eq(kvd_api_session_count(api), n);
    ck_assert_double_eq(list_total(api), (double)n);
    ck_assert_double_eq((double)kvd_api_session_heap_bytes(api), sum);
    ck_assert_uint_eq(st->sessions_created, n);
    ck_assert_uint_eq(kvd_pool_pages_used(kvd_api_pool(api)), 0);

    /* A fork of one of them is refused the same way, the parent untouched. */
    r = call(api, KVD_ROUTE_SESSION_FORK, ids[0], NULL, 3, 1);
    ck_assert_int_eq(r.status, 503);
    ck_assert_uint_eq(r.retry_after_s, 1);
    ck_assert_ptr_nonnull(strstr(r.body, "--max-session-heap"));
    free(r.body);
    ck_assert_uint_eq(st->rejected_session_heap, 2);
    ck_assert_uint_eq(kvd_api_session_count(api), n);
    ck_assert_double_eq((double)kvd_api_session_heap_bytes(api), sum);
    ck_assert_double_eq(stat(api, ids[0], "shared_pages"), 0);

    /* A session that alone is over the budget can never fit: 413, no retry. */
    r = call(api, KVD_ROUTE_SESSION_CREATE, NULL, "{\"layers\":1024,\"heads\":64,\"head_dim\":8}", 4, 1);
    ck_assert_int_eq(r.status, 413);
    ck_assert_uint_eq(r.retry_after_s, 0);
    ck_assert_ptr_nonnull(strstr(r.body, "--max-session-heap"));
    free(r.body);
    ck_assert_uint_eq(st->rejected_session_heap, 2);
    ck_assert_uint_eq(kvd_api_session_count(api), n);

    /* A delete makes room: the create and a fork fit again. */
    r = call(api, KVD_ROUTE_SESSION_DELETE, ids[n - 1], NULL, 5, 1);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    free(ids[--n]);
    ck_assert_double_eq((double)kvd_api_session_heap_bytes(api), sum - one);
    r = call(api, KVD_ROUTE_SESSION_FORK, ids[0], NULL, 6, 1);
    ck_assert_int_eq(r.status, 201); /* an empty parent's child: the same heap */
    j = body_json(&r);
    ids[n++] = strdup(cJSON_GetObjectItemCaseSensitive(j, "id")->valuestring);
    cJSON_Delete(j);
    free(r.body);
    ck_assert_double_eq(stat(api, ids[n - 1], "heap_bytes"), one);
    ck_assert_double_eq((double)kvd_api_session_heap_bytes(api), sum);

    /* Everything deleted: the account is back to zero. */
    while (n > 0) {
        r = call(api, KVD_ROUTE_SESSION_DELETE, ids[n - 1], NULL, 7, 1);
        ck_assert_int_eq(r.status, 200);
        free(r.body);
        free(ids[--n]);
    }
    ck_assert_uint_eq(kvd_api_session_heap_bytes(api), 0);
    clear_replies();
    kvd_api_destroy(api);
}
END_TEST

/* Steps grow a session's heap (block table, eviction index) and the
 * account follows them; expiry takes the share out. */
START_TEST(session_heap_follows_steps_and_expiry)
{
    kvd_api *api = make_api(256 * 1024, 1024, 8);
    ck_assert_uint_eq(kvd_api_session_heap_budget(api), KVD_MIN_SESSION_HEAP); /* max(64 MiB, memory / 4) */
    char *id = create(api, "{\"heads\":1,\"head_dim\":8,\"ttl_seconds\":5,"
                           "\"cache\":{\"eviction\":\"h2o\",\"sink\":1}}");
    const double empty = stat(api, id, "heap_bytes");
    ck_assert_double_eq(empty, (double)kvd_api_session_heap_bytes(api));
    ck_assert_int_eq(append_tokens(api, id, 100, 1), 200); /* 8 pages, 100 index slots */
    const double grown = stat(api, id, "heap_bytes");
    /* At least a table of 8 pages (9 bytes each) and an index grown from
     * 16 to 128 slots of 40 bytes. */
    ck_assert_double_ge(grown - empty, 8 * 9 + (128 - 16) * 40);
    ck_assert_double_eq(grown, (double)kvd_api_session_heap_bytes(api));
    fake_now += 10;
    ck_assert_uint_eq(kvd_api_expire(api), 1);
    ck_assert_uint_eq(kvd_api_session_heap_bytes(api), 0);
    free(id);
    clear_replies();
    kvd_api_destroy(api);
}
END_TEST

START_TEST(readiness_follows_reclaimable_room)
{
    for (int mode = 0; mode < 2; mode++) {
        kvd_api *api = make_api_opt(8 * 1024, 1024, 8, mode == 1);
        char *a = create(api, "{\"heads\":1,\"head_dim\":8,\"cache\":{\"eviction\":\"recency\"}}");
        ck_assert_int_eq(append_tokens(api, a, 112, 1), 200); /* all 8 pages */
        ck_assert_uint_eq(kvd_pool_pages_free(kvd_api_pool(api)), 0);
        /* reject: nothing can be reclaimed; evict: A could give pages back */
        ck_assert(kvd_api_ready(api) == (mode == 1));
        free(a);
        clear_replies();
        kvd_api_destroy(api);
    }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("api/api");
    TCase *tc = tcase_create("api");
    tcase_add_test(tc, decode_matches_reference_and_state_is_exact);
    tcase_add_test(tc, pool_exhaustion_changes_nothing);
    tcase_add_test(tc, session_queue_order_limit_and_delete);
    tcase_add_test(tc, bad_requests_leave_state_alone);
    tcase_add_test(tc, list_pages_through_sessions);
    tcase_add_test(tc, fork_shares_pages_until_written);
    tcase_add_test(tc, idle_sessions_expire);
    tcase_add_test(tc, requests_keep_sessions_alive);
    tcase_add_test(tc, full_pool_rejects);
    tcase_add_test(tc, full_pool_evicts_idle_lru_sessions);
    tcase_add_test(tc, readiness_follows_reclaimable_room);
    tcase_add_test(tc, stats_report_kept_positions);
    tcase_add_test(tc, session_heap_budget);
    tcase_add_test(tc, session_heap_follows_steps_and_expiry);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN_NOFORK(make_suite)
