/* api/handlers.c — kvd_api_handle: routes a request on the loop thread and
 * answers what needs no queue at once (create, list, info, restore, errors),
 * queueing the rest on their session (get, delete, fork, snapshot, step). */
#include "api/internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cJSON.h>

#include "api/auth.h"
#include "api/create_body.h"
#include "api/json.h"
#include "attention/attention.h"
#include "cache/pool.h"
#include "cache/session.h"

/* GET /v1/sessions page size: default and cap. */
#define KVD_LIST_DEFAULT_LIMIT 100
#define KVD_LIST_MAX_LIMIT 1000

static const char *const route_labels[KVD_ROUTE_COUNT] = {
    [KVD_ROUTE_SESSION_CREATE] = "session_create",
    [KVD_ROUTE_SESSION_LIST] = "session_list",
    [KVD_ROUTE_SESSION_GET] = "session_get",
    [KVD_ROUTE_SESSION_DELETE] = "session_delete",
    [KVD_ROUTE_SESSION_STEP] = "session_step",
    [KVD_ROUTE_SESSION_FORK] = "session_fork",
    [KVD_ROUTE_SESSION_SNAPSHOT] = "session_snapshot",
    [KVD_ROUTE_SESSION_RESTORE] = "session_restore",
    [KVD_ROUTE_BATCH] = "batch",
    [KVD_ROUTE_INFO] = "info",
    [KVD_ROUTE_HEALTHZ] = "healthz",
    [KVD_ROUTE_READYZ] = "readyz",
    [KVD_ROUTE_METRICS] = "metrics",
    [KVD_ROUTE_UNKNOWN] = "unknown",
};

const char *kvd_route_label(kvd_route r)
{
    return (unsigned)r < KVD_ROUTE_COUNT ? route_labels[r] : "unknown";
}

static bool content_type_is(const char *ct, const char *want)
{
    if (!ct)
        return false;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strlen(want);
    if (strncasecmp(ct, want, n) != 0)
        return false;
    char c = ct[n];
    return c == '\0' || c == ';' || c == ' ' || c == '\t'; /* parameters allowed */
}

static void handle_create(kvd_api *api, const kvd_api_request *req, uint32_t owner, kvd_response *resp)
{
    if (kvd__api_session_limit_reached(api, resp))
        return;
    kvd_api_error err;
    cJSON *body = kvd_json_parse_object(req->body, req->body_len, &err);
    if (!body) {
        kvd_response_error(resp, &err);
        return;
    }
    kvd_session_config cfg;
    int rc = kvd_session_config_parse(body, &api->limits, &cfg, &err);
    cJSON_Delete(body);
    if (rc != 0) {
        kvd_response_error(resp, &err);
        return;
    }
    /* The heap the new session would hold, known before anything is
     * allocated: refused here, it costs nothing. */
    size_t need = sizeof(api_session) + kvd_session_heap_bytes_new(&cfg);
    if (cfg.shadow) {
        const kvd_session_config exact = kvd_session_shadow_config(&cfg);
        need += kvd_session_heap_bytes_new(&exact);
    }
    if (kvd__api_session_heap_refused(api, need, resp))
        return;
    kvd_session *cache, *shadow = NULL;
    if (kvd_session_create(&cfg, api->opt.page_bytes, &cache) != 0) {
        kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory creating the session");
        return;
    }
    if (cfg.shadow) {
        const kvd_session_config exact = kvd_session_shadow_config(&cfg);
        if (kvd_session_create(&exact, api->opt.page_bytes, &shadow) != 0) {
            kvd_session_destroy(cache, api->pool);
            kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory creating the session");
            return;
        }
    }
    api_session *s = kvd__api_session_register(api, cache, shadow, resp);
    if (s) {
        s->owner = owner;
        kvd__api_respond_created(s, NULL, resp);
        if (resp->status != 201) /* nobody would learn its id: it must not live */
            kvd__api_session_drop(api, s);
    }
}

/* Reads `name=` from a query string into out (at most cap-1 chars). */
static bool query_param(const char *query, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);
    for (const char *p = query; p && *p;) {
        const char *end = strchr(p, '&');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > n && strncmp(p, name, n) == 0 && p[n] == '=') {
            size_t v = len - n - 1;
            if (v >= cap)
                v = cap - 1;
            memcpy(out, p + n + 1, v);
            out[v] = '\0';
            return true;
        }
        p = end ? end + 1 : NULL;
    }
    return false;
}

/* GET /v1/sessions?limit=&after= — ids in ascending order, so `after` (the
 * last id of the previous page) is a stable cursor. */
static void handle_list(kvd_api *api, const kvd_api_request *req, uint32_t owner, kvd_response *resp)
{
    char buf[64];
    long limit = KVD_LIST_DEFAULT_LIMIT;
    if (query_param(req->query, "limit", buf, sizeof buf)) {
        char *end;
        limit = strtol(buf, &end, 10);
        if (*end || limit < 1 || limit > KVD_LIST_MAX_LIMIT) {
            kvd__api_respond_error(resp, 400, KVD_ERR_INVALID, "limit",
                                   "limit must be an integer in 1..1000");
            return;
        }
    }
    char after[KVD_SESSION_ID_MAX + 2] = "";
    query_param(req->query, "after", after, sizeof after);

    cJSON *out = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(out, "sessions");
    if (!out || !arr) {
        cJSON_Delete(out);
        kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    /* The registry keeps ids sorted: a page starts with a binary search. With
     * API keys another key's sessions are not there for the caller: they are
     * skipped and "total" counts only the caller's (O(n) pointer reads, no
     * sort). */
    const size_t n = api->n_sessions;
    size_t i = kvd__api_registry_first_after(api, after);
    long emitted = 0;
    const char *last = NULL;
    for (; i < n && emitted < limit; i++) {
        const api_session *s = api->sorted[i];
        if (s->owner != owner)
            continue;
        cJSON *e = cJSON_CreateObject();
        if (!e)
            break;
        cJSON_AddStringToObject(e, "id", s->id);
        cJSON_AddNumberToObject(e, "tokens", (double)atomic_load(&s->tokens_summary));
        cJSON_AddNumberToObject(e, "bytes", (double)atomic_load(&s->pages_summary) * (double)api->opt.page_bytes);
        cJSON_AddItemToArray(arr, e);
        last = s->id;
        emitted++;
    }
    while (i < n && api->sorted[i]->owner != owner)
        i++; /* is there one more of the caller's? */
    if (i < n && last)
        cJSON_AddStringToObject(out, "next_after", last);
    else
        cJSON_AddNullToObject(out, "next_after");
    size_t total = n;
    if (kvd_api_auth_enabled(api)) {
        total = 0;
        for (size_t j = 0; j < n; j++)
            total += api->sorted[j]->owner == owner;
    }
    cJSON_AddNumberToObject(out, "total", (double)total);
    kvd__api_respond_cjson(resp, 200, out);
}

static void handle_info(kvd_api *api, kvd_response *resp)
{
    const kvd_attention_kernels *k = kvd_attention_kernels_get();
    cJSON *o = cJSON_CreateObject();
    cJSON *build = cJSON_AddObjectToObject(o, "build");
    cJSON *pool = cJSON_AddObjectToObject(o, "pool");
    cJSON *lim = cJSON_AddObjectToObject(o, "limits");
    if (!o || !build || !pool || !lim) {
        cJSON_Delete(o);
        kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    cJSON_AddStringToObject(o, "name", "kvd");
    cJSON_AddStringToObject(o, "version", KVD_VERSION);
    cJSON_AddStringToObject(build, "compiler", __VERSION__);
#ifdef KVD_SANITIZED
    cJSON_AddStringToObject(build, "sanitize", "address,undefined");
#elif defined(KVD_SANITIZED_THREAD)
    cJSON_AddStringToObject(build, "sanitize", "thread");
#else
    cJSON_AddStringToObject(build, "sanitize", "none");
#endif
    cJSON_AddStringToObject(o, "cpu_features", kvd_cpu_features());
    cJSON_AddStringToObject(o, "attention_kernel", k->name);
    cJSON_AddNumberToObject(o, "threads", api->opt.threads);
    cJSON_AddNumberToObject(pool, "bytes", (double)kvd_pool_pages_total(api->pool) * (double)api->opt.page_bytes);
    cJSON_AddNumberToObject(pool, "memory", (double)api->opt.memory_bytes);
    cJSON_AddNumberToObject(pool, "page_bytes", (double)api->opt.page_bytes);
    cJSON_AddNumberToObject(pool, "pages", (double)kvd_pool_pages_total(api->pool));
    cJSON_AddNumberToObject(pool, "pages_free", (double)kvd_pool_pages_free(api->pool));
    cJSON_AddNumberToObject(lim, "max_body", (double)api->opt.max_body);
    cJSON_AddNumberToObject(lim, "max_sessions", api->opt.max_sessions);
    cJSON_AddNumberToObject(lim, "max_session_heap", (double)api->opt.max_session_heap);
    cJSON_AddNumberToObject(lim, "max_layers", api->limits.max_layers);
    cJSON_AddNumberToObject(lim, "max_heads", api->limits.max_heads);
    cJSON_AddNumberToObject(lim, "max_head_dim", api->limits.max_head_dim);
    cJSON_AddNumberToObject(lim, "max_streams", (double)api->limits.max_streams);
    cJSON_AddNumberToObject(lim, "max_step_tokens", (double)api->limits.max_step_tokens);
    cJSON_AddNumberToObject(lim, "max_steps_per_request", api->limits.max_steps_per_request);
    cJSON_AddNumberToObject(lim, "session_queue", api->opt.session_queue);
    kvd__api_respond_cjson(resp, 200, o);
}

/* POST /fork takes no options yet: an empty body or an empty JSON object. */
static bool fork_body_ok(const kvd_api_request *req, kvd_response *resp)
{
    if (req->body_len == 0)
        return true;
    kvd_api_error err;
    cJSON *body = kvd_json_parse_object(req->body, req->body_len, &err);
    if (!body) {
        kvd_response_error(resp, &err);
        return false;
    }
    const cJSON *first = body->child;
    if (first) {
        kvd_api_error_set(&err, 400, KVD_ERR_INVALID, first->string, "%s: unknown field (fork takes no options)",
                          first->string);
        kvd_response_error(resp, &err);
    }
    cJSON_Delete(body);
    return first == NULL;
}

/* POST /v1/sessions/restore: the body is a snapshot (api/snapshot.c),
 * bounded by --max-body rather than the small-body cap. Checked and copied
 * on the loop thread: O(body), at most --max-body bytes once. */
static void handle_restore_route(kvd_api *api, const kvd_api_request *req, uint32_t owner, kvd_response *resp)
{
    kvd__api_handle_restore(api, req, owner, resp);
}

static bool handle(kvd_api *api, kvd_api_request *req, void *reply, kvd_response *resp)
{
    const uint32_t owner = kvd_api_owner(api, req->authorization);
    if (owner == KVD_OWNER_DENIED) { /* before anything else: a stranger learns nothing */
        kvd_api_respond_unauthenticated(resp, req->authorization);
        return true;
    }
    if (req->body_len > KVD_SMALL_BODY_MAX && req->route != KVD_ROUTE_SESSION_STEP &&
        req->route != KVD_ROUTE_BATCH && req->route != KVD_ROUTE_SESSION_RESTORE) {
        /* Refused before any parse (or any lookup): what --max-body allows
         * a step is not a create's or a fork's to spend. */
        kvd_api_error err;
        kvd_api_error_set(&err, 413, KVD_ERR_TOO_LARGE, NULL, "%s body over 64 KiB (%zu bytes)",
                          kvd_route_label(req->route), req->body_len);
        kvd_response_error(resp, &err);
        return true;
    }
    /* A fork needs no body; if it has one, it is JSON like every POST. */
    bool needs_json = req->route == KVD_ROUTE_SESSION_CREATE || req->route == KVD_ROUTE_SESSION_STEP ||
                      req->route == KVD_ROUTE_BATCH ||
                      (req->route == KVD_ROUTE_SESSION_FORK && req->body_len > 0);
    if (needs_json && !content_type_is(req->content_type, "application/json")) {
        kvd__api_respond_error(resp, 415, KVD_ERR_MEDIA_TYPE, NULL, "Content-Type must be application/json");
        return true;
    }
    if (req->route == KVD_ROUTE_SESSION_RESTORE &&
        !content_type_is(req->content_type, "application/octet-stream")) {
        kvd__api_respond_error(resp, 415, KVD_ERR_MEDIA_TYPE, NULL,
                               "Content-Type must be application/octet-stream (a snapshot's bytes)");
        return true;
    }
    switch (req->route) {
    case KVD_ROUTE_SESSION_RESTORE:
        handle_restore_route(api, req, owner, resp);
        return true;
    case KVD_ROUTE_SESSION_CREATE:
        handle_create(api, req, owner, resp);
        return true;
    case KVD_ROUTE_SESSION_LIST:
        handle_list(api, req, owner, resp);
        return true;
    case KVD_ROUTE_INFO:
        handle_info(api, resp);
        return true;
    case KVD_ROUTE_SESSION_GET:
    case KVD_ROUTE_SESSION_DELETE:
    case KVD_ROUTE_SESSION_FORK:
    case KVD_ROUTE_SESSION_SNAPSHOT:
    case KVD_ROUTE_SESSION_STEP: {
        api_session *s = kvd__api_registry_find(api, req->session_id);
        if (!s || s->owner != owner) { /* another key's session: as if none */
            kvd__api_respond_error(resp, 404, KVD_ERR_NOT_FOUND, "id", "no such session");
            return true;
        }
        api_job_kind kind = req->route == KVD_ROUTE_SESSION_STEP   ? JOB_STEP
                            : req->route == KVD_ROUTE_SESSION_GET  ? JOB_STATS
                            : req->route == KVD_ROUTE_SESSION_FORK ? JOB_FORK
                            : req->route == KVD_ROUTE_SESSION_SNAPSHOT ? JOB_SNAPSHOT
                                                                   : JOB_DELETE;
        if (kind == JOB_FORK && !fork_body_ok(req, resp))
            return true;
        if (kind == JOB_DELETE) {
            /* Gone for every later request now; its pages are freed when the
             * queue reaches the delete, after any step already queued. */
            if (!kvd__api_enqueue(api, s, kind, req, reply, resp))
                return true;
            kvd__api_registry_remove(api, s);
            s->deleted = true;
            kvd__api_session_pump(api, s); /* frees it if the delete already ran */
            return false;
        }
        return !kvd__api_enqueue(api, s, kind, req, reply, resp);
    }
    case KVD_ROUTE_BATCH:
        return kvd__api_handle_batch(api, req, owner, reply, resp);
    case KVD_ROUTE_HEALTHZ:
    case KVD_ROUTE_READYZ:
    case KVD_ROUTE_METRICS:
    case KVD_ROUTE_UNKNOWN:
    case KVD_ROUTE_COUNT:
        break;
    }
    kvd__api_respond_error(resp, 404, KVD_ERR_NOT_FOUND, NULL, "no such path");
    return true;
}

bool kvd_api_handle(kvd_api *api, const kvd_api_request *req, void *reply, kvd_response *resp)
{
    memset(resp, 0, sizeof *resp);
    kvd__api_json_oom_reset(); /* kvd__api_respond_cjson checks it */
    kvd_api_request r = *req;
    const bool answered = handle(api, &r, reply, resp);
    free(r.body); /* NULL when a queued step took it */
    return answered;
}
