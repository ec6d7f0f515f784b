/* server/http.h — HTTP/1.1 over libuv with llhttp (listen.c, conn.c, parse.c,
 * response.c, access_log.c): keep-alive, pipelining in request order,
 * Content-Length and chunked bodies, the body limit, the access log. It knows
 * no routes: each complete request goes to the handler, which answers it with
 * kvd_http_respond — at once or later, always on the loop thread. */
#ifndef KVD_SERVER_HTTP_H
#define KVD_SERVER_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

/* The answer the API fills (api/api.h); the HTTP layer only reads it. */
typedef struct kvd_response kvd_response;

typedef struct kvd_http_server kvd_http_server;
typedef struct kvd_http_exchange kvd_http_exchange; /* one request awaiting its response */

/* A parsed request. All strings are NUL-terminated copies owned by the
 * exchange; valid until kvd_http_respond is called for it. */
typedef struct kvd_http_request {
    const char *method;        /* "GET", "POST", ... */
    const char *path;          /* target before '?', e.g. "/v1/sessions/abc/step" */
    const char *query;         /* after '?', "" if none */
    const char *content_type;  /* NULL if absent */
    const char *authorization; /* NULL if absent */
    const char *body;          /* de-chunked body, NUL-terminated; body_len excludes the NUL */
    size_t body_len;
} kvd_http_request;

typedef void (*kvd_http_handler)(void *ctx, kvd_http_exchange *ex, const kvd_http_request *req);

typedef struct kvd_http_options {
    const char *host;          /* "127.0.0.1", "0.0.0.0", "::" */
    int port;                  /* 0 = ephemeral */
    size_t max_body;           /* larger bodies get 413 */
    unsigned max_pipelined;    /* pending requests per connection before reading pauses */
    bool log_json;             /* access log as JSON lines instead of text */
    /* Deadlines in milliseconds, 0 = none (a loopback server has no loop:
     * its connections have no timers). Each closes only its connection. */
    unsigned header_timeout_ms; /* accept or a request's first byte -> end of its head */
    unsigned body_timeout_ms;  /* longest wait for the next byte of a request body */
    unsigned idle_timeout_ms;  /* keep-alive: nothing asked, nothing owed */
    unsigned write_timeout_ms; /* longest wait for the client to take response bytes */
    unsigned drain_ms;         /* after shutdown starts, close every connection */
    size_t max_connections;    /* past it a new connection gets 503 and close; 0 = no cap */
    size_t max_inflight_bytes; /* body bytes read but not answered, all connections;
                                * past it 503 + Retry-After and close; 0 = no cap */
} kvd_http_options;

/* Binds and listens. Returns 0 or a libuv error code. */
int kvd_http_server_start(uv_loop_t *loop, const kvd_http_options *opt,
                          kvd_http_handler handler, void *ctx, kvd_http_server **out);

/* The bound port (useful with port 0). */
int kvd_http_server_port(const kvd_http_server *srv);

/* Hands the request's body buffer (malloc'd, NUL-terminated at *len; NULL
 * when empty) to the caller, who frees it: the exchange no longer holds it
 * and req->body becomes "". Lets the API keep a queued body without a copy. */
char *kvd_http_exchange_take_body(kvd_http_exchange *ex, size_t *len);

/* Sets the route label used by the access log and request metrics. */
void kvd_http_exchange_set_route(kvd_http_exchange *ex, const char *route_label);

/* Answers an exchange, exactly once, on the loop thread; takes ownership of
 * resp->body. If the connection closed meanwhile the response is dropped
 * (the exchange is still freed). */
void kvd_http_respond(kvd_http_exchange *ex, kvd_response *resp);

/* Stops accepting, closes idle connections, lets in-flight exchanges finish
 * and their responses flush (for at most opt.drain_ms, then every
 * connection is closed and late answers dropped), then calls on_closed.
 * The server is freed after on_closed returns. */
void kvd_http_server_shutdown(kvd_http_server *srv, void (*on_closed)(void *arg), void *arg);

#endif
