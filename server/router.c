/* server/router.c — the route table of DESIGN.md §3 and the server-level
 * endpoints (/healthz, /readyz, /metrics). Paths are matched segment by
 * segment; a session id is whatever single segment follows /v1/sessions/. */
#include "server/router.h"

#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/auth.h"
#include "api/errors.h"
#include "server/http.h"
#include "server/metrics.h"

static bool is(const char *a, const char *b)
{
    return strcmp(a, b) == 0;
}

int kvd__route_match(const char *method, const char *path, kvd_route *route,
                     char id[KVD_ROUTER_ID_MAX + 1], const char **allow)
{
    id[0] = '\0';
    *allow = NULL;
    *route = KVD_ROUTE_UNKNOWN;
    const char *want = NULL; /* the one method this path accepts */
    if (is(path, "/healthz")) {
        *route = KVD_ROUTE_HEALTHZ, want = "GET";
    } else if (is(path, "/readyz")) {
        *route = KVD_ROUTE_READYZ, want = "GET";
    } else if (is(path, "/metrics")) {
        *route = KVD_ROUTE_METRICS, want = "GET";
    } else if (is(path, "/v1/info")) {
        *route = KVD_ROUTE_INFO, want = "GET";
    } else if (is(path, "/v1/batch")) {
        *route = KVD_ROUTE_BATCH, want = "POST";
    } else if (is(path, "/v1/sessions")) {
        *allow = "GET, HEAD, POST";
        if (is(method, "POST"))
            *route = KVD_ROUTE_SESSION_CREATE;
        else
            *route = KVD_ROUTE_SESSION_LIST, want = "GET";
    } else if (is(path, "/v1/sessions/restore")) {
        *route = KVD_ROUTE_SESSION_RESTORE, want = "POST";
    } else if (strncmp(path, "/v1/sessions/", 13) == 0) {
        const char *seg = path + 13;
        const char *slash = strchr(seg, '/');
        size_t len = slash ? (size_t)(slash - seg) : strlen(seg);
        if (len == 0 || len > KVD_ROUTER_ID_MAX)
            return 0;
        const char *rest = slash ? slash : "";
        if (is(rest, "")) {
            *allow = "GET, HEAD, DELETE";
            if (is(method, "DELETE"))
                *route = KVD_ROUTE_SESSION_DELETE;
            else
                *route = KVD_ROUTE_SESSION_GET, want = "GET";
        } else if (is(rest, "/step")) {
            *route = KVD_ROUTE_SESSION_STEP, want = "POST";
        } else if (is(rest, "/fork")) {
            *route = KVD_ROUTE_SESSION_FORK, want = "POST";
        } else if (is(rest, "/snapshot")) {
            *route = KVD_ROUTE_SESSION_SNAPSHOT, want = "GET";
        } else {
            return 0;
        }
        memcpy(id, seg, len);
        id[len] = '\0';
    }
    /* HEAD is GET without the body (the HTTP layer drops it and keeps its
     * Content-Length), so every GET route takes it. */
    bool get = want && is(want, "GET");
    if (want && !is(method, want) && !(get && is(method, "HEAD"))) {
        if (!*allow)
            *allow = get ? "GET, HEAD" : want;
        return 405;
    }
    return 0;
}

static void answer(kvd_http_exchange *ex, int status, const char *code, const char *msg)
{
    kvd_api_error err;
    kvd_response resp = {0};
    kvd_api_error_set(&err, status, code, NULL, "%s", msg);
    kvd_response_error(&resp, &err);
    kvd_http_respond(ex, &resp);
}

static void answer_text(kvd_http_exchange *ex, int status, const char *type, char *body, size_t len)
{
    kvd_response resp = {.status = status, .content_type = type, .body = body, .body_len = len};
    if (!body) {
        answer(ex, 500, KVD_ERR_INTERNAL, "out of memory");
        return;
    }
    kvd_http_respond(ex, &resp);
}

static char *dup_str(const char *s, size_t *len)
{
    *len = strlen(s);
    char *p = malloc(*len + 1);
    if (p)
        memcpy(p, s, *len + 1);
    return p;
}

/* With API keys, everything under /v1 — known routes, 405s and unknown
 * paths alike, so nothing about the API shows without a key — and, with
 * --metrics-auth, /metrics. /healthz and /readyz stay public for probes. */
static bool needs_key(const kvd_router *r, kvd_route route, const char *path)
{
    if (!kvd_api_auth_enabled(r->api))
        return false;
    if (route == KVD_ROUTE_METRICS)
        return r->metrics_auth;
    return strcmp(path, "/v1") == 0 || strncmp(path, "/v1/", 4) == 0;
}

void kvd_router_handle(void *ctx, kvd_http_exchange *ex, const kvd_http_request *req)
{
    kvd_router *r = ctx;
    kvd_route route;
    char id[KVD_ROUTER_ID_MAX + 1];
    const char *allow;
    int rc = kvd__route_match(req->method, req->path, &route, id, &allow);
    kvd_http_exchange_set_route(ex, kvd_route_label(route));
    kvd__metrics_observe_received(kvd_route_label(route));
    if (needs_key(r, route, req->path) && kvd_api_owner(r->api, req->authorization) == KVD_OWNER_DENIED) {
        kvd_response resp = {0};
        kvd_api_respond_unauthenticated(&resp, req->authorization);
        kvd_http_respond(ex, &resp);
        return;
    }
    if (rc == 405) {
        kvd_api_error err;
        kvd_response resp = {0};
        kvd_api_error_set(&err, 405, KVD_ERR_METHOD, NULL, "%s is not allowed on %s (allowed: %s)",
                          req->method, req->path, allow);
        kvd_response_error(&resp, &err);
        resp.allow = allow;
        kvd_http_respond(ex, &resp);
        return;
    }
    size_t len;
    switch (route) {
    case KVD_ROUTE_HEALTHZ: {
        char *b = dup_str("{\"status\":\"ok\"}", &len);
        answer_text(ex, 200, "application/json", b, len);
        return;
    }
    case KVD_ROUTE_READYZ:
        if (r->draining) {
            answer(ex, 503, KVD_ERR_UNAVAILABLE, "draining: shutting down");
        } else if (!kvd_api_ready(r->api)) {
            answer(ex, 503, KVD_ERR_EXHAUSTED, "KV pool exhausted: fewer than 1% of pages free");
        } else {
            char *b = dup_str("{\"status\":\"ready\"}", &len);
            answer_text(ex, 200, "application/json", b, len);
        }
        return;
    case KVD_ROUTE_METRICS: {
        char *b = kvd__metrics_render(r->api, !r->draining && kvd_api_ready(r->api), &len);
        answer_text(ex, 200, "text/plain; version=0.0.4; charset=utf-8", b, len);
        return;
    }
    case KVD_ROUTE_UNKNOWN:
        answer(ex, 404, KVD_ERR_NOT_FOUND, "no such path");
        return;
    default:
        break;
    }
    if (r->draining) {
        answer(ex, 503, KVD_ERR_UNAVAILABLE, "draining: shutting down");
        return;
    }
    kvd_api_request areq = {
        .route = route,
        .session_id = id[0] ? id : NULL,
        .query = req->query,
        .content_type = req->content_type,
        .authorization = req->authorization,
    };
    areq.body = kvd_http_exchange_take_body(ex, &areq.body_len); /* the API frees it */
    kvd_response resp;
    if (kvd_api_handle(r->api, &areq, ex, &resp))
        kvd_http_respond(ex, &resp);
}

void kvd_router_respond(void *reply, kvd_response *resp)
{
    kvd_http_respond(reply, resp);
}
