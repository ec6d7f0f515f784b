/* api/api.c — the API's front door on the loop thread: the session registry,
 * each session's request queue (one job at a time, arrival order), and the
 * handlers that answer at once (create, list, info, health). Steps are parsed
 * and computed on workers (api/step.c); stats and delete run here when the
 * session's queue reaches them, so they always see a whole step. */
#include "api/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cJSON.h>

#include "cache/reclaim.h"

#include "attention/attention.h"
#include "cache/evict.h"

/* Requests one session may have waiting before the next gets a 429. */
#define KVD_DEFAULT_SESSION_QUEUE 64
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

/* ---- responses ---------------------------------------------------------- */

void kvd_response_json(kvd_response *resp, int status, char *json)
{
    resp->status = status;
    resp->content_type = "application/json";
    resp->body = json;
    resp->body_len = json ? strlen(json) : 0;
    resp->retry_after_s = 0;
}

void kvd_response_error(kvd_response *resp, const kvd_api_error *err)
{
    size_t len = 0;
    char *json = kvd_api_error_json(err, &len);
    if (!json) {
        /* Out of memory even for the error: a fixed body still says why. */
        static const char fallback[] =
            "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        json = malloc(sizeof fallback);
        if (json)
            memcpy(json, fallback, sizeof fallback);
    }
    kvd_response_json(resp, json ? err->status : 500, json);
    if (err->status == 503)
        resp->retry_after_s = 1;
}

static void respond_error(kvd_response *resp, int status, const char *code,
                          const char *field, const char *message)
{
    kvd_api_error err;
    kvd_api_error_set(&err, status, code, field, "%s", message);
    kvd_response_error(resp, &err);
}

/* Renders and deletes `obj`; a failure to render becomes a 500. */
static void respond_cjson(kvd_response *resp, int status, cJSON *obj)
{
    char *json = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!json) {
        respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    kvd_response_json(resp, status, json);
}

/* ---- registry ------------------------------------------------------------ */

static size_t id_hash(const char *id)
{
    /* Ids are uniformly random hex: the first 16 digits are a fine hash. */
    uint64_t h = 0;
    for (int i = 0; i < 16 && id[i]; i++)
        h = (h << 4) | (uint64_t)(id[i] <= '9' ? id[i] - '0' : id[i] - 'a' + 10);
    return (size_t)h;
}

static api_session *registry_find(const kvd_api *api, const char *id)
{
    if (!id || strlen(id) != KVD_SESSION_ID_HEX)
        return NULL;
    for (api_session *s = api->buckets[id_hash(id) & (api->n_buckets - 1)]; s; s = s->hash_next)
        if (memcmp(s->id, id, KVD_SESSION_ID_HEX) == 0)
            return s;
    return NULL;
}

/* Doubles the table when it averages more than one session per bucket. */
static int registry_grow(kvd_api *api)
{
    size_t n = api->n_buckets * 2;
    api_session **b = calloc(n, sizeof *b);
    if (!b)
        return -ENOMEM;
    for (size_t i = 0; i < api->n_buckets; i++) {
        api_session *s = api->buckets[i];
        while (s) {
            api_session *next = s->hash_next;
            size_t j = id_hash(s->id) & (n - 1);
            s->hash_next = b[j];
            b[j] = s;
            s = next;
        }
    }
    free(api->buckets);
    api->buckets = b;
    api->n_buckets = n;
    return 0;
}

static int registry_insert(kvd_api *api, api_session *s)
{
    if (api->n_sessions >= api->n_buckets && registry_grow(api) != 0)
        return -ENOMEM;
    size_t i = id_hash(s->id) & (api->n_buckets - 1);
    s->hash_next = api->buckets[i];
    api->buckets[i] = s;
    api->n_sessions++;
    return 0;
}

static void registry_remove(kvd_api *api, api_session *s)
{
    api_session **p = &api->buckets[id_hash(s->id) & (api->n_buckets - 1)];
    while (*p && *p != s)
        p = &(*p)->hash_next;
    if (*p) {
        *p = s->hash_next;
        api->n_sessions--;
    }
    s->hash_next = NULL;
}

static int new_session_id(char out[KVD_SESSION_ID_HEX + 1])
{
    unsigned char raw[KVD_SESSION_ID_HEX / 2];
    int rc = kvd_api_random_bytes(raw, sizeof raw);
    if (rc != 0)
        return rc;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[KVD_SESSION_ID_HEX] = '\0';
    return 0;
}

static void session_free(kvd_api *api, api_session *s)
{
    kvd_session_destroy(s->cache, api->pool);
    kvd_session_destroy(s->shadow, api->pool);
    free(s);
}

static bool session_idle(const api_session *s)
{
    return !s->running && !s->queue.head && !s->deleted;
}

/* Refreshes the summary that GET /v1/sessions reads without the queue. */
void kvd_api_session_summarize(api_session *s)
{
    atomic_store(&s->tokens_summary, kvd_session_tokens(s->cache));
    atomic_store(&s->pages_summary, kvd_session_pages(s->cache));
    atomic_store(&s->shadow_pages_summary, s->shadow ? kvd_session_pages(s->shadow) : 0);
}

static bool session_limit_reached(kvd_api *api, kvd_response *resp)
{
    if (!api->opt.max_sessions || api->n_sessions < api->opt.max_sessions)
        return false;
    atomic_fetch_add_explicit(&api->stats.rejected_max_sessions, 1, memory_order_relaxed);
    kvd_api_error err;
    kvd_api_error_set(&err, 503, KVD_ERR_EXHAUSTED, NULL,
                      "session limit reached (--max-sessions %" PRIu32 ")", api->opt.max_sessions);
    kvd_response_error(resp, &err);
    return true;
}

/* Registers a new session around `cache` (and its shadow copy, if any) with
 * a fresh id. Returns it, or NULL with resp set (both are then destroyed). */
static api_session *session_register(kvd_api *api, kvd_session *cache, kvd_session *shadow,
                                     kvd_response *resp)
{
    api_session *s = calloc(1, sizeof *s);
    if (!s) {
        kvd_session_destroy(cache, api->pool);
        kvd_session_destroy(shadow, api->pool);
        respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory creating the session");
        return NULL;
    }
    s->cache = cache;
    s->shadow = shadow;
    do {
        if (new_session_id(s->id) != 0) {
            session_free(api, s);
            respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "no randomness for a session id");
            return NULL;
        }
    } while (registry_find(api, s->id)); /* 2^-128 per try, but free to check */
    if (registry_insert(api, s) != 0) {
        session_free(api, s);
        respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory creating the session");
        return NULL;
    }
    s->created_at = kvd_clock_unix();
    atomic_store(&s->last_used_at, s->created_at);
    kvd_api_session_summarize(s);
    atomic_fetch_add_explicit(&api->stats.sessions_created, 1, memory_order_relaxed);
    return s;
}

/* Answers 201 {"id", "config"[, "parent"]} for a registered session. */
static void respond_created(api_session *s, const char *parent, kvd_response *resp)
{
    cJSON *out = cJSON_CreateObject();
    cJSON *conf = kvd_session_config_to_json(&s->cache->config);
    if (!out || !conf) {
        cJSON_Delete(out);
        cJSON_Delete(conf);
        respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    cJSON_AddStringToObject(out, "id", s->id);
    if (parent)
        cJSON_AddStringToObject(out, "parent", parent);
    cJSON_AddItemToObject(out, "config", conf);
    respond_cjson(resp, 201, out);
}

/* ---- session queue ---------------------------------------------------------- */

static void job_free(api_job *job)
{
    if (job->parsed)
        kvd_step_request_free(&job->req);
    free(job->body);
    free(job->resp.body);
    free(job);
}

static void queue_push(api_session *s, api_job *job)
{
    kvd_fifo_push(&s->queue, &job->queue_link);
}

static api_job *queue_pop(api_session *s)
{
    kvd_fifo_link *l = kvd_fifo_pop(&s->queue);
    return l ? kvd_container_of(l, api_job, queue_link) : NULL;
}

static void answer_job(kvd_api *api, api_job *job)
{
    kvd_response resp = job->resp;
    job->resp.body = NULL; /* ownership moves to the server */
    api->respond(job->reply, &resp);
    job_free(job);
}

/* Runs what the session's queue allows: cheap jobs inline, one step on a
 * worker. Frees a deleted session once its queue is empty. Loop thread. */
static void session_pump(kvd_api *api, api_session *s)
{
    while (!s->running) {
        api_job *job = queue_pop(s);
        if (!job)
            break;
        switch (job->kind) {
        case JOB_STEP:
            s->running = true;
            api->submit(api->executor, &job->base);
            return;
        case JOB_STATS: {
            char *json = kvd_api_session_stats_json(api, s);
            if (json)
                kvd_response_json(&job->resp, 200, json);
            else
                respond_error(&job->resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
            answer_job(api, job);
            break;
        }
        case JOB_DELETE: {
            size_t pages = kvd_session_pages(s->cache);
            cJSON *o = cJSON_CreateObject();
            if (o) {
                cJSON_AddStringToObject(o, "id", s->id);
                cJSON_AddBoolToObject(o, "deleted", 1);
                cJSON_AddNumberToObject(o, "pages_freed", (double)pages);
            }
            respond_cjson(&job->resp, 200, o);
            kvd_session_destroy(s->cache, api->pool);
            kvd_session_destroy(s->shadow, api->pool);
            s->cache = NULL;
            s->shadow = NULL;
            answer_job(api, job);
            break;
        }
        case JOB_FORK: {
            /* Runs when the parent is idle, so its pages are whole steps;
             * the fork copies block tables, not pages (O(pages) on the loop). */
            kvd_session *child, *child_shadow = NULL;
            if (session_limit_reached(api, &job->resp)) {
                answer_job(api, job);
                break;
            }
            int rc = kvd_session_fork(s->cache, api->pool, &child);
            if (rc == 0 && s->shadow && (rc = kvd_session_fork(s->shadow, api->pool, &child_shadow)) != 0)
                kvd_session_destroy(child, api->pool);
            if (rc == -ENOTSUP) {
                respond_error(&job->resp, 400, KVD_ERR_INVALID, NULL,
                              "forking a KIVI or tensor-attention session is not yet supported");
                answer_job(api, job);
                break;
            }
            if (rc != 0) {
                respond_error(&job->resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory forking the session");
                answer_job(api, job);
                break;
            }
            api_session *c = session_register(api, child, child_shadow, &job->resp);
            if (c) {
                c->shadow_stats = s->shadow_stats;
                respond_created(c, s->id, &job->resp);
            }
            answer_job(api, job);
            break;
        }
        }
    }
    if (s->deleted && !s->running && !s->queue.head)
        free(s);
}

/* Queues a job for the session (or 429s). Returns false if answered now. */
static bool enqueue(kvd_api *api, api_session *s, api_job_kind kind, const kvd_api_request *req,
                    void *reply, kvd_response *resp)
{
    if (s->queue.len >= api->opt.session_queue) {
        atomic_fetch_add_explicit(&api->stats.rejected_queue_full, 1, memory_order_relaxed);
        respond_error(resp, 429, KVD_ERR_BUSY, NULL,
                      "too many requests queued for this session; retry after the pending ones finish");
        return false;
    }
    api_job *job = calloc(1, sizeof *job);
    if (!job) {
        respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return false;
    }
    job->base.api = api;
    job->kind = kind;
    job->session = s;
    job->reply = reply;
    atomic_store(&s->last_used_at, kvd_clock_unix()); /* any request keeps it alive */
    if (kind == JOB_STEP) {
        /* The body is copied: the server frees its buffer once we return. */
        job->body = malloc(req->body_len + 1);
        if (!job->body) {
            free(job);
            respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
            return false;
        }
        memcpy(job->body, req->body, req->body_len);
        job->body[req->body_len] = '\0';
        job->body_len = req->body_len;
    }
    queue_push(s, job);
    session_pump(api, s);
    return true;
}

void kvd_api_job_run(kvd_api_job *base)
{
    api_job *job = (api_job *)base;
    /* Only steps are ever submitted to workers. */
    kvd_api_step_run(job->base.api, job);
}

static size_t reclaim_pages(kvd_api *api, size_t need);

void kvd_api_job_done(kvd_api *api, kvd_api_job *base)
{
    api_job *job = (api_job *)base;
    api_session *s = job->session;
    if (job->pool_full && api->opt.on_full_evict && !job->retried &&
        reclaim_pages(api, job->need_pages) >= job->need_pages) {
        /* --on-full evict freed enough: run the same (parsed) step again.
         * The session stays busy, so nothing else of it runs in between. */
        job->retried = true;
        free(job->resp.body);
        memset(&job->resp, 0, sizeof job->resp);
        api->submit(api->executor, &job->base);
        return;
    }
    s->running = false;
    if (job->pool_full)
        atomic_fetch_add_explicit(&api->stats.rejected_pool_full, 1, memory_order_relaxed);
    answer_job(api, job);
    session_pump(api, s);
}

/* ---- handlers --------------------------------------------------------------- */

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

static void handle_create(kvd_api *api, const kvd_api_request *req, kvd_response *resp)
{
    if (req->body_len > KVD_CREATE_BODY_MAX) {
        respond_error(resp, 413, KVD_ERR_TOO_LARGE, NULL, "create body over 64 KiB");
        return;
    }
    if (session_limit_reached(api, resp))
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
    kvd_session *cache, *shadow = NULL;
    if (kvd_session_create(&cfg, api->opt.page_bytes, &cache) != 0) {
        respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory creating the session");
        return;
    }
    if (cfg.shadow) {
        /* The exact reference: same shape, f32, keeps every token. */
        kvd_session_config exact = cfg;
        exact.cache.dtype = KVD_DTYPE_F32;
        exact.cache.eviction = KVD_EVICT_NONE;
        exact.cache.budget = 0;
        exact.shadow = false;
        if (kvd_session_create(&exact, api->opt.page_bytes, &shadow) != 0) {
            kvd_session_destroy(cache, api->pool);
            respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory creating the session");
            return;
        }
    }
    api_session *s = session_register(api, cache, shadow, resp);
    if (s)
        respond_created(s, NULL, resp);
}

static int cmp_session_id(const void *a, const void *b)
{
    const api_session *const *x = a, *const *y = b;
    return memcmp((*x)->id, (*y)->id, KVD_SESSION_ID_HEX);
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
static void handle_list(kvd_api *api, const kvd_api_request *req, kvd_response *resp)
{
    char buf[64];
    long limit = KVD_LIST_DEFAULT_LIMIT;
    if (query_param(req->query, "limit", buf, sizeof buf)) {
        char *end;
        limit = strtol(buf, &end, 10);
        if (*end || limit < 1 || limit > KVD_LIST_MAX_LIMIT) {
            respond_error(resp, 400, KVD_ERR_INVALID, "limit", "limit must be an integer in 1..1000");
            return;
        }
    }
    char after[KVD_SESSION_ID_HEX + 2] = "";
    query_param(req->query, "after", after, sizeof after);

    api_session **all = malloc((api->n_sessions ? api->n_sessions : 1) * sizeof *all);
    cJSON *out = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(out, "sessions");
    if (!all || !out || !arr) {
        free(all);
        cJSON_Delete(out);
        respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < api->n_buckets; i++)
        for (api_session *s = api->buckets[i]; s; s = s->hash_next)
            all[n++] = s;
    qsort(all, n, sizeof *all, cmp_session_id);
    long emitted = 0;
    const char *last = NULL;
    bool more = false;
    for (size_t i = 0; i < n; i++) {
        if (after[0] && strcmp(all[i]->id, after) <= 0)
            continue;
        if (emitted == limit) {
            more = true;
            break;
        }
        cJSON *e = cJSON_CreateObject();
        if (!e)
            break;
        cJSON_AddStringToObject(e, "id", all[i]->id);
        cJSON_AddNumberToObject(e, "tokens", (double)atomic_load(&all[i]->tokens_summary));
        cJSON_AddNumberToObject(e, "bytes",
                                (double)atomic_load(&all[i]->pages_summary) * (double)api->opt.page_bytes);
        cJSON_AddItemToArray(arr, e);
        last = all[i]->id;
        emitted++;
    }
    if (more && last)
        cJSON_AddStringToObject(out, "next_after", last);
    else
        cJSON_AddNullToObject(out, "next_after");
    cJSON_AddNumberToObject(out, "total", (double)n);
    free(all);
    respond_cjson(resp, 200, out);
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
        respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    cJSON_AddStringToObject(o, "name", "kvd");
    cJSON_AddStringToObject(o, "version", KVD_VERSION);
    cJSON_AddStringToObject(build, "compiler", __VERSION__);
#ifdef KVD_SANITIZED
    cJSON_AddStringToObject(build, "sanitize", "address,undefined");
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
    cJSON_AddNumberToObject(lim, "max_layers", api->limits.max_layers);
    cJSON_AddNumberToObject(lim, "max_heads", api->limits.max_heads);
    cJSON_AddNumberToObject(lim, "max_head_dim", api->limits.max_head_dim);
    cJSON_AddNumberToObject(lim, "max_streams", (double)api->limits.max_streams);
    cJSON_AddNumberToObject(lim, "max_step_tokens", (double)api->limits.max_step_tokens);
    cJSON_AddNumberToObject(lim, "max_steps_per_request", api->limits.max_steps_per_request);
    cJSON_AddNumberToObject(lim, "session_queue", api->opt.session_queue);
    respond_cjson(resp, 200, o);
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

bool kvd_api_handle(kvd_api *api, const kvd_api_request *req, void *reply, kvd_response *resp)
{
    memset(resp, 0, sizeof *resp);
    /* A fork needs no body; if it has one, it is JSON like every POST. */
    bool needs_json = req->route == KVD_ROUTE_SESSION_CREATE || req->route == KVD_ROUTE_SESSION_STEP ||
                      req->route == KVD_ROUTE_BATCH ||
                      (req->route == KVD_ROUTE_SESSION_FORK && req->body_len > 0);
    if (needs_json && !content_type_is(req->content_type, "application/json")) {
        respond_error(resp, 415, KVD_ERR_MEDIA_TYPE, NULL, "Content-Type must be application/json");
        return true;
    }
    switch (req->route) {
    case KVD_ROUTE_SESSION_CREATE:
        handle_create(api, req, resp);
        return true;
    case KVD_ROUTE_SESSION_LIST:
        handle_list(api, req, resp);
        return true;
    case KVD_ROUTE_INFO:
        handle_info(api, resp);
        return true;
    case KVD_ROUTE_SESSION_GET:
    case KVD_ROUTE_SESSION_DELETE:
    case KVD_ROUTE_SESSION_FORK:
    case KVD_ROUTE_SESSION_STEP: {
        api_session *s = registry_find(api, req->session_id);
        if (!s) {
            respond_error(resp, 404, KVD_ERR_NOT_FOUND, "id", "no such session");
            return true;
        }
        api_job_kind kind = req->route == KVD_ROUTE_SESSION_STEP   ? JOB_STEP
                            : req->route == KVD_ROUTE_SESSION_GET  ? JOB_STATS
                            : req->route == KVD_ROUTE_SESSION_FORK ? JOB_FORK
                                                                   : JOB_DELETE;
        if (kind == JOB_FORK && !fork_body_ok(req, resp))
            return true;
        if (kind == JOB_DELETE) {
            /* Gone for every later request now; its pages are freed when the
             * queue reaches the delete, after any step already queued. */
            if (!enqueue(api, s, kind, req, reply, resp))
                return true;
            registry_remove(api, s);
            s->deleted = true;
            session_pump(api, s); /* frees it if the delete already ran */
            return false;
        }
        return !enqueue(api, s, kind, req, reply, resp);
    }
    case KVD_ROUTE_SESSION_SNAPSHOT:
    case KVD_ROUTE_SESSION_RESTORE:
    case KVD_ROUTE_BATCH:
        respond_error(resp, 501, "unimplemented", NULL, "this endpoint is not yet supported by this build");
        return true;
    case KVD_ROUTE_HEALTHZ:
    case KVD_ROUTE_READYZ:
    case KVD_ROUTE_METRICS:
    case KVD_ROUTE_UNKNOWN:
    case KVD_ROUTE_COUNT:
        break;
    }
    respond_error(resp, 404, KVD_ERR_NOT_FOUND, NULL, "no such path");
    return true;
}

/* ---- lifetime ------------------------------------------------------------------ */

int kvd_api_create(const kvd_api_options *opt, kvd_api_submit_fn submit, void *executor,
                   kvd_api_respond_fn respond, kvd_api **out)
{
    kvd_api *api = calloc(1, sizeof *api);
    if (!api)
        return -ENOMEM;
    api->opt = *opt;
    if (!api->opt.session_queue)
        api->opt.session_queue = KVD_DEFAULT_SESSION_QUEUE;
    kvd_api_limits_default(&api->limits, opt->page_bytes);
    if (opt->session_ttl > 0)
        api->limits.default_ttl_seconds = opt->session_ttl;
    api->submit = submit;
    api->executor = executor;
    api->respond = respond;
    api->n_buckets = 64;
    api->buckets = calloc(api->n_buckets, sizeof *api->buckets);
    if (!api->buckets) {
        free(api);
        return -ENOMEM;
    }
    int rc = kvd_pool_create(opt->memory_bytes, opt->page_bytes, &api->pool);
    if (rc != 0) {
        free(api->buckets);
        free(api);
        return rc;
    }
    *out = api;
    return 0;
}

void kvd_api_destroy(kvd_api *api)
{
    if (!api)
        return;
    for (size_t i = 0; i < api->n_buckets; i++) {
        api_session *s = api->buckets[i];
        while (s) {
            api_session *next = s->hash_next;
            api_job *job;
            while ((job = queue_pop(s)))
                job_free(job); /* never reached a worker: nothing to answer */
            session_free(api, s);
            s = next;
        }
    }
    free(api->buckets);
    kvd_pool_destroy(api->pool);
    free(api);
}

/* ---- lifetime and memory pressure ------------------------------------------ */

static bool session_expired(const api_session *s, double now)
{
    return session_idle(s) && atomic_load(&s->last_used_at) + s->cache->config.ttl_seconds <= now;
}

size_t kvd_api_expire(kvd_api *api, double now)
{
    size_t n = 0;
    for (size_t i = 0; i < api->n_buckets; i++) {
        api_session **p = &api->buckets[i];
        while (*p) {
            api_session *s = *p;
            if (!session_expired(s, now)) {
                p = &s->hash_next;
                continue;
            }
            *p = s->hash_next; /* unlink here: registry_remove would rescan */
            api->n_sessions--;
            session_free(api, s);
            n++;
        }
    }
    if (n)
        atomic_fetch_add_explicit(&api->stats.sessions_expired, n, memory_order_relaxed);
    return n;
}

/* Could --on-full evict take tokens from this session? Idle, and the cache
 * says a page would come free (cache/reclaim.h). */
static bool session_reclaimable(const api_session *s)
{
    return session_idle(s) && kvd_session_reclaimable(s->cache);
}

static int cmp_lru(const void *a, const void *b)
{
    double x = atomic_load(&(*(api_session *const *)a)->last_used_at);
    double y = atomic_load(&(*(api_session *const *)b)->last_used_at);
    return (x > y) - (x < y);
}

/* Frees pool pages for a step that needs `need` (loop thread): expired
 * sessions first, then, with --on-full evict, tokens of the least recently
 * used idle sessions that have a policy, each stream down to its protected
 * sink + recent tokens, until enough pages are free. Returns free pages. */
static size_t reclaim_pages(kvd_api *api, size_t need)
{
    kvd_api_expire(api, kvd_clock_unix());
    size_t free_pages = kvd_pool_pages_free(api->pool);
    if (free_pages >= need || !api->opt.on_full_evict)
        return free_pages;
    api_session **lru = malloc((api->n_sessions ? api->n_sessions : 1) * sizeof *lru);
    if (!lru)
        return free_pages; /* the step gets its 503 */
    size_t n = 0;
    for (size_t i = 0; i < api->n_buckets; i++)
        for (api_session *s = api->buckets[i]; s; s = s->hash_next)
            if (session_reclaimable(s))
                lru[n++] = s;
    qsort(lru, n, sizeof *lru, cmp_lru);
    for (size_t i = 0; i < n && free_pages < need; i++) {
        kvd_session *c = lru[i]->cache;
        uint64_t k = kvd_session_reclaim(c, api->pool, need);
        atomic_fetch_add_explicit(&api->stats.evictions[c->config.cache.eviction], k, memory_order_relaxed);
        atomic_fetch_add_explicit(&api->stats.reclaimed_tokens, k, memory_order_relaxed);
        free_pages = kvd_pool_pages_free(api->pool);
        kvd_api_session_summarize(lru[i]);
    }
    free(lru);
    return free_pages;
}

bool kvd_api_ready(const kvd_api *api)
{
    /* Exhausted = fewer than 1% of pages free (DESIGN.md §3, /readyz) and
     * nothing that a step could reclaim. */
    size_t total = kvd_pool_pages_total(api->pool);
    if (kvd_pool_pages_free(api->pool) * 100 >= total)
        return true;
    double now = kvd_clock_unix();
    for (size_t i = 0; i < api->n_buckets; i++)
        for (const api_session *s = api->buckets[i]; s; s = s->hash_next)
            if (session_expired(s, now) || (api->opt.on_full_evict && session_reclaimable(s)))
                return true;
    return false;
}

const kvd_pool *kvd_api_pool(const kvd_api *api)
{
    return api->pool;
}

const kvd_api_stats *kvd_api_stats_get(const kvd_api *api)
{
    return &api->stats;
}

size_t kvd_api_session_count(const kvd_api *api)
{
    return api->n_sessions;
}

void kvd_api_cache_totals(const kvd_api *api, double tokens[KVD_DTYPE_COUNT],
                          double bytes[KVD_DTYPE_COUNT], double *shadow_bytes)
{
    for (int d = 0; d < KVD_DTYPE_COUNT; d++)
        tokens[d] = bytes[d] = 0;
    *shadow_bytes = 0;
    const double pb = (double)api->opt.page_bytes;
    for (size_t i = 0; i < api->n_buckets; i++)
        for (const api_session *s = api->buckets[i]; s; s = s->hash_next) {
            int d = (int)s->cache->config.cache.dtype;
            tokens[d] += (double)atomic_load(&s->tokens_summary);
            bytes[d] += (double)atomic_load(&s->pages_summary) * pb;
            *shadow_bytes += (double)atomic_load(&s->shadow_pages_summary) * pb;
        }
}
