/* server/router.h — maps a request line to an API route and dispatches it:
 * /healthz, /readyz and /metrics are answered here (they describe the server),
 * everything under /v1 goes to the API, which may answer later. */
#ifndef KVD_SERVER_ROUTER_H
#define KVD_SERVER_ROUTER_H

#include <stdbool.h>

#include "api/api.h"
#include "server/http.h"

/* Longest {id} path segment we keep (ids are 32 hex chars; longer is a 404). */
#define KVD_ROUTER_ID_MAX 64

/* Matches method and path. Sets *route, copies the {id} segment into id (or
 * ""), and returns 0; or 405 if the path exists but not with this method
 * (the route is still set, *allow names the methods the path takes, for the
 * Allow header). Unknown paths give KVD_ROUTE_UNKNOWN. */
int kvd__route_match(const char *method, const char *path, kvd_route *route,
                     char id[KVD_ROUTER_ID_MAX + 1], const char **allow);

typedef struct kvd_router {
    kvd_api *api;
    bool draining;   /* /readyz 503 and new work refused while shutting down */
    bool metrics_auth; /* --metrics-auth: /metrics needs an API key too */
} kvd_router;

/* kvd_http_handler: ctx is a kvd_router. */
void kvd_router_handle(void *ctx, kvd_http_exchange *ex, const kvd_http_request *req);

/* kvd_api_respond_fn: reply is the kvd_http_exchange. */
void kvd_router_respond(void *reply, kvd_response *resp);

#endif
