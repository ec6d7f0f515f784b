/* tests/fault/fault_api.c — the harness the allocation-fault sweeps share
 * (issue 11): the API on a synchronous fake executor, request bodies, the
 * normalized JSON two runs are compared by, and the checks that need no
 * faults armed (accounting, listing, deleting). See fault_api.h. */
#include "tests/fault/fault_api.h"

#include <check.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "cache/pool.h"

/* ---- the fake executor: jobs run when the test says (run_all) ---- */

#define MAX_JOBS 16
static kvd_api_job *pending[MAX_JOBS];
static int n_pending;
static kvd_response reply;
static int n_replies;
/* Set instead of asserting while faults are armed: Check's assertions
 * allocate (they record their location), so none may run in there. */
const char *harness_error;

static void fake_submit(void *executor, kvd_api_job *job)
{
    (void)executor;
    if (n_pending == MAX_JOBS) {
        harness_error = "too many jobs";
        return;
    }
    pending[n_pending++] = job;
}

static void fake_respond(void *r, kvd_response *resp)
{
    (void)r;
    if (n_replies++)
        harness_error = "two answers to one request";
    reply = *resp;
}

static double fake_now = 1.7e9;

static double fake_clock(void *ctx)
{
    return *(const double *)ctx;
}

/* One request, run to its answer. Takes ownership of body (malloc'd,
 * NUL-terminated at len). */
kvd_response call_bytes(kvd_api *api, kvd_route route, const char *id, char *body, size_t len,
                               const char *content_type)
{
    kvd_api_request req = {.route = route, .session_id = id, .query = "",
                           .content_type = content_type, .body = body, .body_len = len};
    kvd_response resp;
    n_replies = 0;
    if (kvd_api_handle(api, &req, NULL, &resp))
        return resp;
    while (n_pending) {
        kvd_api_job *job = pending[0];
        memmove(pending, pending + 1, (size_t)--n_pending * sizeof *pending);
        kvd_api_job_run(job);
        kvd_api_job_done(api, job);
    }
    if (n_replies != 1) {
        harness_error = "a deferred request was never answered";
        reply = (kvd_response){.status = -1};
    }
    return reply;
}

kvd_response call(kvd_api *api, kvd_route route, const char *id, char *body)
{
    return call_bytes(api, route, id, body, body ? strlen(body) : 0, "application/json");
}

char *xstrdup(const char *s)
{
    char *p = strdup(s);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* ---- request bodies (exact binary fractions, so text -> f32 is exact) ---- */


void sb_printf(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        ck_assert_int_ge(n, 0);
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        b->cap = (b->cap + (size_t)n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        ck_assert_ptr_nonnull(b->s);
    }
}

void sb_array(sbuf *b, const char *name, size_t n, unsigned seed)
{
    sb_printf(b, "\"%s\":[", name);
    for (size_t i = 0; i < n; i++)
        sb_printf(b, "%s%g", i ? "," : "", (double)((int)((i * 37 + seed * 11) % 17) - 8) / 8.0);
    sb_printf(b, "]");
}


/* {"layer":L,"k":..,"v":..,"q":..} (tensor: k1, k2, v1, v2) */
void sb_entry(sbuf *b, int layer, size_t m, size_t m_q, bool tensor, unsigned seed)
{
    sb_printf(b, "{\"layer\":%d,", layer);
    static const char *const std_fields[] = {"k", "v"}, *const tensor_fields[] = {"k1", "k2", "v1", "v2"};
    const char *const *f = tensor ? tensor_fields : std_fields;
    for (int i = 0; i < (tensor ? 4 : 2); i++) {
        sb_array(b, f[i], m * KV_ROW, seed * 5u + (unsigned)i);
        sb_printf(b, ",");
    }
    sb_array(b, "q", m_q * Q_ROW, seed * 5u + 4u);
    sb_printf(b, "}");
}

char *step_body(int layer, size_t m, size_t m_q, bool tensor, unsigned seed)
{
    sbuf b = {0};
    sb_entry(&b, layer, m, m_q, tensor, seed);
    return b.s;
}

/* ---- normalized JSON: what must be identical between two runs ---- */

/* Drops what differs between runs by design (random ids, measured time) and
 * sorts listings (id order is random). Returns malloc'd text. */
static void strip(cJSON *j)
{
    static const char *const drop[] = {"id", "parent", "next_after", "last_step_seconds"};
    for (size_t i = 0; i < sizeof drop / sizeof *drop; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(j, drop[i]);
    for (cJSON *c = j->child; c; c = c->next)
        strip(c);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char *normalize(const char *body)
{
    ck_assert_ptr_nonnull(body);
    cJSON *j = cJSON_Parse(body);
    ck_assert_msg(j != NULL, "not JSON: %s", body);
    strip(j);
    cJSON *sessions = cJSON_GetObjectItemCaseSensitive(j, "sessions");
    if (cJSON_IsArray(sessions)) {
        int n = cJSON_GetArraySize(sessions);
        char **parts = calloc((size_t)n + 1, sizeof *parts);
        for (int i = 0; i < n; i++)
            parts[i] = cJSON_PrintUnformatted(cJSON_GetArrayItem(sessions, i));
        qsort(parts, (size_t)n, sizeof *parts, cmp_str);
        sbuf b = {0};
        sb_printf(&b, "[");
        for (int i = 0; i < n; i++) {
            sb_printf(&b, "%s%s", i ? "," : "", parts[i]);
            free(parts[i]);
        }
        sb_printf(&b, "]");
        free(parts);
        cJSON_ReplaceItemInObjectCaseSensitive(j, "sessions", cJSON_CreateRaw(b.s));
        free(b.s);
    }
    char *out = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return out;
}

char *create(kvd_api *api, const char *body)
{
    kvd_response r = call(api, KVD_ROUTE_SESSION_CREATE, NULL, xstrdup(body));
    ck_assert_msg(r.status == 201, "create %s: %d %s", body, r.status, r.body ? r.body : "");
    cJSON *j = cJSON_Parse(r.body);
    char *id = xstrdup(cJSON_GetObjectItemCaseSensitive(j, "id")->valuestring);
    cJSON_Delete(j);
    free(r.body);
    return id;
}

void step_ok(kvd_api *api, const char *id, char *body)
{
    kvd_response r = call(api, KVD_ROUTE_SESSION_STEP, id, body);
    ck_assert_msg(r.status == 200, "step: %d %s", r.status, r.body ? r.body : "");
    free(r.body);
}

char *fork_ok(kvd_api *api, const char *id)
{
    kvd_response r = call(api, KVD_ROUTE_SESSION_FORK, id, NULL);
    ck_assert_msg(r.status == 201, "fork: %d %s", r.status, r.body ? r.body : "");
    cJSON *j = cJSON_Parse(r.body);
    char *child = xstrdup(cJSON_GetObjectItemCaseSensitive(j, "id")->valuestring);
    cJSON_Delete(j);
    free(r.body);
    return child;
}

/* The session's snapshot bytes (malloc'd, NUL-terminated at *len). */
char *snapshot_ok(kvd_api *api, const char *id, size_t *len)
{
    kvd_response r = call(api, KVD_ROUTE_SESSION_SNAPSHOT, id, NULL);
    ck_assert_msg(r.status == 200, "snapshot: %d %.*s", r.status, (int)r.body_len, r.body ? r.body : "");
    ck_assert_str_eq(r.content_type, "application/octet-stream");
    ck_assert_uint_gt(r.body_len, 0);
    char *bytes = malloc(r.body_len + 1);
    ck_assert_ptr_nonnull(bytes);
    memcpy(bytes, r.body, r.body_len);
    bytes[r.body_len] = '\0';
    *len = r.body_len;
    free(r.body);
    return bytes;
}

/* The session's stats, normalized; NULL if it does not exist. */
char *stats(kvd_api *api, const char *id)
{
    kvd_response r = call(api, KVD_ROUTE_SESSION_GET, id, NULL);
    if (r.status == 404) {
        free(r.body);
        return NULL;
    }
    ck_assert_msg(r.status == 200, "stats: %d", r.status);
    char *n = normalize(r.body);
    free(r.body);
    return n;
}

double num_field(const char *json, const char *key)
{
    cJSON *j = cJSON_Parse(json);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    ck_assert_msg(cJSON_IsNumber(v), "no %s in %s", key, json);
    double d = v->valuedouble;
    cJSON_Delete(j);
    return d;
}

/* The live sessions' ids (from GET /v1/sessions); caller frees each and *ids. */
size_t list_ids(kvd_api *api, char ***ids)
{
    kvd_response r = call(api, KVD_ROUTE_SESSION_LIST, NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    cJSON *j = cJSON_Parse(r.body);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "sessions");
    size_t n = (size_t)cJSON_GetArraySize(arr);
    ck_assert_uint_eq(n, kvd_api_session_count(api));
    *ids = calloc(n + 1, sizeof **ids);
    size_t i = 0;
    for (const cJSON *e = arr->child; e; e = e->next)
        (*ids)[i++] = xstrdup(cJSON_GetObjectItemCaseSensitive(e, "id")->valuestring);
    cJSON_Delete(j);
    free(r.body);
    return n;
}

/* Pool pages in use == the pages the live sessions report (cache and shadow
 * copy). Only exact while no pages are shared by a fork. */
void check_accounting(kvd_api *api)
{
    char **ids;
    size_t n = list_ids(api, &ids);
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        kvd_response r = call(api, KVD_ROUTE_SESSION_GET, ids[i], NULL);
        ck_assert_int_eq(r.status, 200);
        sum += num_field(r.body, "pages") + num_field(r.body, "shadow_bytes") / PAGE_BYTES;
        free(r.body);
        free(ids[i]);
    }
    free(ids);
    ck_assert_uint_eq(kvd_pool_pages_used(kvd_api_pool(api)), (size_t)sum);
}

void delete_all(kvd_api *api)
{
    char **ids;
    size_t n = list_ids(api, &ids);
    for (size_t i = 0; i < n; i++) {
        kvd_response r = call(api, KVD_ROUTE_SESSION_DELETE, ids[i], NULL);
        ck_assert_int_eq(r.status, 200);
        free(r.body);
        free(ids[i]);
    }
    free(ids);
    ck_assert_uint_eq(kvd_api_session_count(api), 0);
    ck_assert_uint_eq(kvd_pool_pages_used(kvd_api_pool(api)), 0);
}

bool str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

/* Equal but for heap_bytes: a step refused for want of memory may keep the
 * tables it already grew (capacity, not content). */
bool same_but_heap(const char *a, const char *b)
{
    if (!a || !b)
        return !a && !b;
    cJSON *x = cJSON_Parse(a), *y = cJSON_Parse(b);
    cJSON_DeleteItemFromObjectCaseSensitive(x, "heap_bytes");
    cJSON_DeleteItemFromObjectCaseSensitive(y, "heap_bytes");
    const bool eq = cJSON_Compare(x, y, true);
    cJSON_Delete(x);
    cJSON_Delete(y);
    return eq;
}

/* An error answer: 500 or 503 with {"error":{"code","message"}}; in sticky
 * mode even the fallback body may fail, leaving a bare 500. */
void check_error(const kvd_response *r, bool sticky, const char *what)
{
    ck_assert_msg(r->status == 500 || r->status == 503, "%s: status %d (%s)", what, r->status,
                  r->body ? r->body : "no body");
    if (!r->body) {
        ck_assert_msg(sticky && r->status == 500, "%s: %d without a body", what, r->status);
        return;
    }
    cJSON *j = cJSON_Parse(r->body);
    ck_assert_msg(j != NULL, "%s: error body not JSON: %s", what, r->body);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    ck_assert_msg(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "code")) &&
                      cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")),
                  "%s: bad error body %s", what, r->body);
    cJSON_Delete(j);
}
kvd_api *fault_api_create(void)
{
    kvd_api_options opt = {.memory_bytes = POOL_BYTES, .page_bytes = PAGE_BYTES, .threads = 1,
                           .max_body = 1 << 20, .session_queue = 8, .now = fake_clock,
                           .now_ctx = &fake_now};
    kvd_api *api;
    n_pending = 0;
    ck_assert_int_eq(kvd_api_create(&opt, fake_submit, NULL, fake_respond, &api), 0);
    return api;
}

int fault_api_create_bare(kvd_api **api)
{
    kvd_api_options opt = {.memory_bytes = POOL_BYTES, .page_bytes = PAGE_BYTES, .threads = 1,
                           .max_body = 1 << 20, .session_queue = 8};
    return kvd_api_create(&opt, fake_submit, NULL, fake_respond, api);
}
