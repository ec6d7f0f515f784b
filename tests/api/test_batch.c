/* tests/api/test_batch.c — POST /v1/batch without HTTP, on a fake executor
 * that keeps submitted jobs until the test runs them: one job per session,
 * a session's items after its earlier requests and in order, and per-item
 * answers (400, 404, 503) that leave the other items and sessions exactly
 * as the same entries sent as single steps leave them (b64 outputs compared
 * byte for byte). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/api.h"
#include "tests/support/check_main.h"

#define MAX_JOBS 64
static kvd_api_job *pending[MAX_JOBS];
static int n_pending;
static kvd_response reply;
static int n_replies;

static void fake_submit(void *executor, kvd_api_job *job)
{
    (void)executor;
    ck_assert_int_lt(n_pending, MAX_JOBS);
    pending[n_pending++] = job;
}

static void fake_respond(void *r, kvd_response *resp)
{
    (void)r;
    ck_assert_int_eq(n_replies, 0); /* one deferred request at a time here */
    reply = *resp;
    n_replies++;
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

static kvd_api *make_api(size_t memory)
{
    kvd_api_options opt = {.memory_bytes = memory, .page_bytes = 4096, .threads = 2,
                           .max_body = 1 << 22, .session_queue = 8};
    kvd_api *api;
    ck_assert_int_eq(kvd_api_create(&opt, fake_submit, NULL, fake_respond, &api), 0);
    n_pending = 0;
    n_replies = 0;
    return api;
}

/* Sends a request; `run` runs every queued job. Returns the answer, now or
 * deferred (status -1: not answered yet). */
static kvd_response call(kvd_api *api, kvd_route route, const char *id, const char *body, bool run)
{
    kvd_api_request req = {.route = route, .session_id = id, .query = "",
                           .content_type = "application/json", .body = body ? strdup(body) : NULL,
                           .body_len = body ? strlen(body) : 0};
    kvd_response resp;
    if (kvd_api_handle(api, &req, NULL, &resp))
        return resp;
    if (run)
        while (run_one(api))
            ;
    if (!n_replies) {
        kvd_response none = {.status = -1};
        return none;
    }
    n_replies = 0;
    return reply;
}

static cJSON *answer(kvd_response r, int status)
{
    ck_assert_int_eq(r.status, status);
    cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
    free(r.body);
    ck_assert_ptr_nonnull(j);
    return j;
}

static char *create(kvd_api *api)
{
    cJSON *j = answer(call(api, KVD_ROUTE_SESSION_CREATE, NULL,
                           "{\"layers\":2,\"heads\":4,\"kv_heads\":2,\"head_dim\":8}", true),
                      201);
    char *id = strdup(cJSON_GetObjectItemCaseSensitive(j, "id")->valuestring);
    cJSON_Delete(j);
    return id;
}

/* An entry's members: m new tokens (k, v [m, 2, 8]) and m_q queries ([m_q,
 * 4, 8]) on `layer`, from a seed; numbers printed exactly (%.9g). */
static void entry_text(char *out, size_t cap, unsigned seed, unsigned layer, size_t m, size_t m_q)
{
    size_t n = (size_t)snprintf(out, cap, "\"layer\":%u", layer);
    const char *names[] = {"k", "v", "q"};
    const size_t counts[] = {m * 16, m * 16, m_q * 32};
    for (int t = 0; t < 3; t++) {
        if (!counts[t])
            continue;
        n += (size_t)snprintf(out + n, cap - n, ",\"%s\":[", names[t]);
        for (size_t i = 0; i < counts[t]; i++) {
            seed = seed * 1664525u + 1013904223u;
            const float x = (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
            n += (size_t)snprintf(out + n, cap - n, "%s%.9g", i ? "," : "", (double)x);
        }
        n += (size_t)snprintf(out + n, cap - n, "]");
    }
    ck_assert_uint_lt(n, cap);
}

/* The batch used below: items of sessions a and b interleaved, one of each
 * kind of per-item error. which[i]: 0 = a, 1 = b, 2 = unknown session. */
#define N_ITEMS 7
static const int which[N_ITEMS] = {0, 1, 2, 0, 1, 0, 1};
static const unsigned layer_of[N_ITEMS] = {0, 0, 0, 0, 1, 1, 0};
static const size_t m_of[N_ITEMS] = {3, 2, 1, 1, 2, 2, 1};
static const size_t mq_of[N_ITEMS] = {3, 2, 1, 1, 1, 2, 1};

static char *item_text(int i)
{
    char *e = malloc(16384);
    entry_text(e, 16384, 100u + (unsigned)i, layer_of[i], m_of[i], mq_of[i]);
    if (i == 4) { /* b's layer-1 item: k one number short: a 400 naming steps[4].k */
        char *v = strstr(e, ",\"v\":"), *c = v - 1;
        while (*c != ',')
            c--;
        memmove(c, v - 1, strlen(v - 1) + 1);
    }
    return e;
}

static char *batch_body(const char *a, const char *b)
{
    size_t cap = 1 << 17, n = 0;
    char *body = malloc(cap);
    n += (size_t)snprintf(body, cap, "{\"encoding\":\"b64\",\"steps\":[");
    for (int i = 0; i < N_ITEMS; i++) {
        char *e = item_text(i);
        const char *sid = which[i] == 0 ? a : which[i] == 1 ? b : "00000000000000000000000000000000";
        n += (size_t)snprintf(body + n, cap - n, "%s{\"session\":\"%s\",%s}", i ? "," : "", sid, e);
        free(e);
    }
    snprintf(body + n, cap - n, "]}");
    return body;
}

/* Every item answered in order; bad ones exactly as the same entry sent as a
 * single step (but named steps[i].field); good ones bit-identical to it. */
START_TEST(batch_matches_single_steps)
{
    kvd_api *x = make_api(1 << 20), *y = make_api(1 << 20);
    char *xa = create(x), *xb = create(x), *ya = create(y), *yb = create(y);

    char *body = batch_body(xa, xb);
    kvd_response r = call(x, KVD_ROUTE_BATCH, NULL, body, false);
    free(body);
    ck_assert_int_eq(r.status, -1);      /* deferred ... */
    ck_assert_int_eq(n_pending, 2);      /* ... as one job per session, side by side */
    while (run_one(x))
        ;
    ck_assert_int_eq(n_replies, 1);
    n_replies = 0;
    cJSON *got = answer(reply, 200);
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(got, "steps");
    ck_assert_int_eq(cJSON_GetArraySize(items), N_ITEMS);

    for (int i = 0; i < N_ITEMS; i++) {
        const cJSON *it = cJSON_GetArrayItem(items, i);
        const int status = cJSON_GetObjectItemCaseSensitive(it, "status")->valueint;
        if (which[i] == 2) {
            ck_assert_int_eq(status, 404);
            continue;
        }
        char *e = item_text(i), single[20000];
        snprintf(single, sizeof single, "{%s,\"encoding\":\"b64\"}", e);
        free(e);
        cJSON *want = answer(call(y, KVD_ROUTE_SESSION_STEP, which[i] ? yb : ya, single, true),
                             status);
        if (status == 200) {
            ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(it, "o")->valuestring,
                             cJSON_GetObjectItemCaseSensitive(want, "o")->valuestring);
            ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(it, "tokens")->valueint,
                             cJSON_GetObjectItemCaseSensitive(want, "tokens")->valueint);
        } else {
            ck_assert_int_eq(status, 400);
            ck_assert_int_eq(i, 4);
            const cJSON *err = cJSON_GetObjectItemCaseSensitive(it, "error");
            ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(err, "field")->valuestring, "steps[4].k");
        }
        cJSON_Delete(want);
    }
    /* Layer entries applied count as steps: 5 good items on each API. */
    ck_assert_uint_eq(kvd_api_stats_get(x)->steps, 5);
    ck_assert_uint_eq(kvd_api_stats_get(y)->steps, 5);
    /* Both sessions' next outputs agree too: nothing else changed. */
    char e[16384], single[20000];
    entry_text(e, sizeof e, 7, 1, 1, 1);
    snprintf(single, sizeof single, "{%s,\"encoding\":\"b64\"}", e);
    const char *ids[4] = {xa, ya, xb, yb};
    kvd_api *apis[4] = {x, y, x, y};
    char *o[4];
    for (int s = 0; s < 4; s++) {
        cJSON *j = answer(call(apis[s], KVD_ROUTE_SESSION_STEP, ids[s], single, true), 200);
        o[s] = strdup(cJSON_GetObjectItemCaseSensitive(j, "o")->valuestring);
        cJSON_Delete(j);
    }
    ck_assert_str_eq(o[0], o[1]);
    ck_assert_str_eq(o[2], o[3]);
    for (int s = 0; s < 4; s++)
        free(o[s]);
    cJSON_Delete(got);
    free(xa), free(xb), free(ya), free(yb);
    kvd_api_destroy(x);
    kvd_api_destroy(y);
}
END_TEST

/* A session's items run after its earlier requests: a queued single step
 * (3 tokens) runs first, so the batch's decode item sees 4 tokens. */
START_TEST(items_wait_for_earlier_requests)
{
    kvd_api *x = make_api(1 << 20);
    char *a = create(x);
    char e[16384], body[40000];
    entry_text(e, sizeof e, 1, 0, 3, 0);
    snprintf(body, sizeof body, "{%s}", e);
    ck_assert_int_eq(call(x, KVD_ROUTE_SESSION_STEP, a, body, false).status, -1);
    entry_text(e, sizeof e, 2, 0, 1, 1);
    snprintf(body, sizeof body, "{\"steps\":[{\"session\":\"%s\",%s},{\"session\":\"%s\",%s}]}", a, e, a, e);
    ck_assert_int_eq(n_pending, 1); /* the single step only: the batch waits behind it */
    kvd_api_request req = {.route = KVD_ROUTE_BATCH, .query = "", .content_type = "application/json",
                           .body = strdup(body), .body_len = strlen(body)};
    kvd_response resp;
    ck_assert(!kvd_api_handle(x, &req, NULL, &resp));
    ck_assert_int_eq(n_pending, 1);
    ck_assert(run_one(x));               /* the single step answers first */
    ck_assert_int_eq(n_replies, 1);
    n_replies = 0;
    free(reply.body);
    ck_assert_int_eq(n_pending, 1);      /* now the batch's job */
    ck_assert(run_one(x));
    cJSON *j = answer(reply, 200);
    n_replies = 0;
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(j, "steps");
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(items, 0), "tokens")->valueint, 4);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(items, 1), "tokens")->valueint, 5);
    cJSON_Delete(j);
    free(a);
    kvd_api_destroy(x);
}
END_TEST

/* A full pool is a 503 item; the other session's item runs and the refused
 * one's session is unchanged. */
START_TEST(pool_full_is_an_item_503)
{
    kvd_api *x = make_api(16 * 4096); /* 16 pages */
    char *a = create(x), *b = create(x);
    static char e[1 << 20], body[1 << 21];
    entry_text(e, sizeof e, 3, 0, 2000, 0); /* far more tokens than 16 pages hold */
    char small[16384];
    entry_text(small, sizeof small, 4, 0, 1, 1);
    snprintf(body, sizeof body, "{\"steps\":[{\"session\":\"%s\",%s},{\"session\":\"%s\",%s}]}", a, e, b,
             small);
    cJSON *j = answer(call(x, KVD_ROUTE_BATCH, NULL, body, true), 200);
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(j, "steps");
    const int s0 = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(items, 0), "status")->valueint;
    ck_assert_msg(s0 == 503 || s0 == 413, "status %d", s0);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(items, 1), "status")->valueint, 200);
    cJSON_Delete(j);
    j = answer(call(x, KVD_ROUTE_SESSION_GET, a, NULL, true), 200);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(j, "tokens")->valueint, 0);
    cJSON_Delete(j);
    free(a), free(b);
    kvd_api_destroy(x);
}
END_TEST

/* Whole-body errors are one 400; item-level ones are items. */
START_TEST(body_and_item_errors)
{
    kvd_api *x = make_api(1 << 20);
    char *a = create(x);
    const char *bad[] = {"{}", "{\"steps\":[]}", "{\"steps\":{}}", "{\"steps\":[{}],\"x\":1}",
                         "{\"steps\":[{}],\"encoding\":\"hex\"}", "[1]", "{\"steps\":[1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cJSON_Delete(answer(call(x, KVD_ROUTE_BATCH, NULL, bad[i], true), 400));
    char body[512];
    snprintf(body, sizeof body,
             "{\"steps\":[1,{\"layer\":0},{\"session\":\"%s\",\"steps\":[]},"
             "{\"session\":\"%s\",\"encoding\":\"b64\"},{\"session\":\"%s\",\"layer\":9}]}",
             a, a, a);
    cJSON *j = answer(call(x, KVD_ROUTE_BATCH, NULL, body, true), 200);
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(j, "steps");
    const char *fields[] = {"steps[0]", "steps[1].session", "steps[2].steps", "steps[3].encoding",
                            "steps[4].layer"};
    for (int i = 0; i < 5; i++) {
        const cJSON *it = cJSON_GetArrayItem(items, i);
        ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(it, "status")->valueint, 400);
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(it, "error");
        ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(err, "field")->valuestring, fields[i]);
    }
    cJSON_Delete(j);
    ck_assert_uint_eq(kvd_api_stats_get(x)->steps, 0);
    free(a);
    kvd_api_destroy(x);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("api/batch");
    TCase *tc = tcase_create("batch");
    tcase_add_test(tc, batch_matches_single_steps);
    tcase_add_test(tc, items_wait_for_earlier_requests);
    tcase_add_test(tc, pool_full_is_an_item_503);
    tcase_add_test(tc, body_and_item_errors);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
