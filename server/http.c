/* server/http.c — the HTTP/1.1 layer on the loop thread: the listener, each
 * connection (its uv_tcp_t, its embedded llhttp parser, the queue of its
 * exchanges in request order), request parsing into NUL-terminated copies,
 * response writing, back-pressure, graceful drain and the access log.
 * Memory: a connection is freed only when its handle is closed AND no
 * exchange refers to it (refcount); an exchange lives until answered. */
#include "server/http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <llhttp.h>

#include "api/errors.h"
#include "server/metrics.h"

/* Request line plus all header fields and values of one request. 16 KiB is
 * what common servers accept by default; our requests carry a few short
 * headers, so anything larger is a mistake or an attack. */
#define HTTP_MAX_HEADER_BYTES (16u * 1024u)
/* The one read buffer of the loop (reads are parsed before the next read). */
#define HTTP_READ_BUF_BYTES (64u * 1024u)
/* First body allocation when Content-Length is known: the buffer grows with
 * the data that actually arrives, so a client announcing a large body and
 * sending nothing holds at most this much. */
#define HTTP_BODY_INITIAL_MAX (64u * 1024u)
/* Longest path written to the access log (longer ones are cut). */
#define HTTP_LOG_PATH_MAX 512u
/* Response bodies go out in pieces of at most this many bytes, at most
 * HTTP_MAX_BODY_PIECES of them (uv_buf_t lengths are unsigned int). */
#define HTTP_BODY_PIECE ((size_t)1 << 30)
#define HTTP_MAX_BODY_PIECES 16u
/* Header names we look at are short; longer names are ignored. */
#define HTTP_FIELD_MAX 32u

/* A growable byte buffer: p[0..len) data, capacity cap (one byte kept for the NUL). */
typedef struct hbuf {
    char *p;
    size_t len;
    size_t cap;
} hbuf;

typedef struct http_conn http_conn;

struct kvd_http_exchange {
    kvd_http_exchange *next;   /* connection's queue, request order */
    http_conn *conn;
    kvd_http_request req;      /* strings point into the buffers below */
    const char *route;         /* static label for log and metrics */
    uint64_t start_ns;         /* uv_hrtime() at the request's first byte */
    hbuf url;                  /* request target, NUL-terminated, split at '?' */
    hbuf ctype;                /* Content-Type value */
    hbuf auth;                 /* Authorization value */
    hbuf expect;               /* Expect value */
    hbuf body;                 /* de-chunked body, NUL-terminated */
    bool headers_done;         /* later header callbacks are chunked trailers */
    bool has_ctype, has_auth, has_expect;
    bool keep_alive;           /* the client allows another request after this */
    bool is_head;
    bool answered;             /* response built, waiting for its turn */
    bool written;              /* uv_write issued */
    bool close_after;          /* close the connection once this is written */
    char *resp_body;           /* owned unless resp_static */
    size_t resp_body_len;
    bool resp_static;
    char head[512];            /* status line and headers of the response */
    size_t head_len;
    uv_write_t wreq;
};

struct http_conn {
    uv_tcp_t tcp;
    llhttp_t parser;
    kvd_http_server *srv;
    http_conn *prev, *next;        /* server's list of open connections */
    kvd_http_exchange *head, *tail; /* dispatched exchanges not yet written out */
    unsigned queued;               /* length of that queue */
    kvd_http_exchange *cur;        /* request being parsed */
    kvd_http_exchange *ready;      /* parsed, not yet handed to the handler */
    char field[HTTP_FIELD_MAX];    /* current header name (bounded) */
    size_t field_len;
    bool field_long;
    hbuf *value_target;            /* where the current header value goes, or NULL */
    size_t header_bytes;           /* request line + headers of cur so far */
    int fail_status;               /* status for an error raised in a callback */
    char *pending;                 /* unparsed bytes kept while paused */
    size_t pending_len;
    unsigned refs;                 /* 1 for the open handle + 1 per exchange */
    bool closing;                  /* uv_close called */
    bool reading;
    bool stopped;                  /* parse nothing more on this connection */
    bool in_feed;                  /* inside conn_feed (guards re-entry) */
    bool cont_inflight;            /* a 100 Continue write is queued */
    uv_write_t cont_req;
};

struct kvd_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    kvd_http_options opt;
    kvd_http_handler handler;
    void *ctx;
    llhttp_settings_t settings;    /* must outlive every parser */
    http_conn *conns;              /* open connections */
    size_t nconns;                 /* allocated connections (open or closing) */
    int port;
    bool draining;
    bool listener_closed;
    bool finished;
    bool spare_busy;
    uv_tcp_t spare;                /* accepts and drops a client when calloc fails */
    void (*on_closed)(void *arg);
    void *closed_arg;
    char readbuf[HTTP_READ_BUF_BYTES];
};

static const char k_empty[] = "";
static const char k_continue[] = "HTTP/1.1 100 Continue\r\n\r\n";

/* ---- buffers ---- */

/* Makes room for `extra` more bytes plus a NUL, never past `limit` bytes of
 * data. Returns 0, or -1 on overflow/allocation failure. */
static int hbuf_reserve(hbuf *b, size_t extra, size_t limit)
{
    if (extra > SIZE_MAX - 1 - b->len)
        return -1;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (limit < SIZE_MAX && cap > limit + 1)
        cap = limit + 1 >= need ? limit + 1 : need;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int hbuf_append(hbuf *b, const char *s, size_t n, size_t limit)
{
    if (n == 0)
        return 0;
    if (hbuf_reserve(b, n, limit) != 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* NUL-terminates; returns the string, or NULL on allocation failure. */
static const char *hbuf_cstr(hbuf *b)
{
    if (hbuf_reserve(b, 0, SIZE_MAX) != 0)
        return NULL;
    b->p[b->len] = '\0';
    return b->p;
}

static void hbuf_free(hbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- exchanges and connections ---- */

static kvd_http_exchange *ex_new(http_conn *conn)
{
    kvd_http_exchange *ex = calloc(1, sizeof *ex);
    if (!ex)
        return NULL;
    ex->conn = conn;
    ex->route = "unknown";
    ex->start_ns = uv_hrtime();
    ex->req.method = k_empty;
    ex->req.path = k_empty;
    ex->req.query = k_empty;
    ex->req.body = k_empty;
    ex->wreq.data = ex;
    conn->refs++;
    return ex;
}

/* Frees the exchange; the caller then calls conn_unref (which may free the connection). */
static void ex_free(kvd_http_exchange *ex)
{
    hbuf_free(&ex->url);
    hbuf_free(&ex->ctype);
    hbuf_free(&ex->auth);
    hbuf_free(&ex->expect);
    hbuf_free(&ex->body);
    if (!ex->resp_static)
        free(ex->resp_body);
    free(ex);
}

static void srv_maybe_finish(kvd_http_server *srv)
{
    if (!srv->draining || !srv->listener_closed || srv->nconns != 0 || srv->spare_busy ||
        srv->finished)
        return;
    srv->finished = true;
    if (srv->on_closed)
        srv->on_closed(srv->closed_arg);
    free(srv);
}

static void conn_unref(http_conn *conn)
{
    if (--conn->refs != 0)
        return;
    kvd_http_server *srv = conn->srv;
    free(conn->pending);
    free(conn);
    srv->nconns--;
    srv_maybe_finish(srv);
}

static void queue_push(http_conn *conn, kvd_http_exchange *ex)
{
    ex->next = NULL;
    if (conn->tail)
        conn->tail->next = ex;
    else
        conn->head = ex;
    conn->tail = ex;
    conn->queued++;
}

/* The queue is at most max_pipelined long, so a scan is cheap. */
static void queue_remove(http_conn *conn, kvd_http_exchange *ex)
{
    kvd_http_exchange *prev = NULL;
    for (kvd_http_exchange *it = conn->head; it; prev = it, it = it->next) {
        if (it != ex)
            continue;
        if (prev)
            prev->next = it->next;
        else
            conn->head = it->next;
        if (conn->tail == it)
            conn->tail = prev;
        conn->queued--;
        return;
    }
}

static void on_conn_closed(uv_handle_t *h)
{
    conn_unref(h->data);
}

/* Starts closing: drops what nobody will read (unparsed bytes, the partial
 * request, answers not yet written). Exchanges the handler still holds stay
 * until answered; writes in flight finish with UV_ECANCELED before close_cb. */
static void conn_close(http_conn *conn)
{
    if (conn->closing)
        return;
    conn->closing = true;
    kvd_http_server *srv = conn->srv;
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        srv->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    conn->prev = conn->next = NULL;
    if (!conn->in_feed) { /* conn_feed may be reading from pending; it frees it */
        free(conn->pending);
        conn->pending = NULL;
        conn->pending_len = 0;
    }
    kvd_http_exchange *drop[2] = {conn->cur, conn->ready};
    conn->cur = conn->ready = NULL;
    for (int i = 0; i < 2; i++) {
        if (drop[i]) {
            ex_free(drop[i]);
            conn->refs--; /* the handle's ref keeps conn alive */
        }
    }
    kvd_http_exchange *ex = conn->head;
    while (ex) {
        kvd_http_exchange *next = ex->next;
        if (ex->answered && !ex->written) {
            queue_remove(conn, ex);
            ex_free(ex);
            conn->refs--;
        }
        ex = next;
    }
    uv_close((uv_handle_t *)&conn->tcp, on_conn_closed);
}

/* Closes a connection that has nothing left to do: no exchange queued and
 * either parsing stopped or the server drains. While draining, a request
 * still being received is dropped: it was never accepted, and waiting for a
 * stalled client would keep the process from exiting. */
static void conn_check_idle(http_conn *conn)
{
    if (conn->closing || conn->queued != 0 || conn->ready)
        return;
    if (conn->stopped || (conn->srv->draining && conn->pending_len == 0))
        conn_close(conn);
}

/* ---- responses ---- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

/* Writes `s` into out[0..cap) as JSON string content; returns bytes used. */
static size_t json_escape(char *out, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < n && o + 7 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            out[o++] = '\\';
            out[o++] = 'u';
            out[o++] = '0';
            out[o++] = '0';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    return o;
}

static void access_log(const kvd_http_exchange *ex, int status, size_t bytes)
{
    uint64_t ns = uv_hrtime() - ex->start_ns;
    const char *method = ex->req.method[0] ? ex->req.method : "-";
    const char *path = ex->req.path[0] ? ex->req.path : "-";
    size_t plen = strlen(path);
    if (plen > HTTP_LOG_PATH_MAX)
        plen = HTTP_LOG_PATH_MAX;
    /* One write per line so lines from other threads never interleave. */
    char line[HTTP_LOG_PATH_MAX * 6 + 256];
    int n;
    if (ex->conn->srv->opt.log_json) {
        char esc[HTTP_LOG_PATH_MAX * 6 + 8];
        size_t elen = json_escape(esc, sizeof esc, path, plen);
        n = snprintf(line, sizeof line,
                     "{\"method\":\"%s\",\"path\":\"%.*s\",\"route\":\"%s\",\"status\":%d,"
                     "\"bytes\":%zu,\"us\":%llu}\n",
                     method, (int)elen, esc, ex->route, status, bytes,
                     (unsigned long long)(ns / 1000));
    } else {
        n = snprintf(line, sizeof line,
                     "kvd: access method=%s path=%.*s route=%s status=%d bytes=%zu us=%llu\n",
                     method, (int)plen, path, ex->route, status, bytes,
                     (unsigned long long)(ns / 1000));
    }
    if (n > 0)
        fwrite(line, 1, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1, stderr);
    kvd_metrics_observe_http(ex->route, status, (double)ns / 1e9);
}

static void on_written(uv_write_t *req, int status);

/* Writes every answered exchange whose predecessors are written, in order. */
static void conn_flush(http_conn *conn)
{
    for (kvd_http_exchange *ex = conn->head; ex && !conn->closing; ex = ex->next) {
        if (ex->written)
            continue;
        if (!ex->answered)
            return;
        /* Header + body; a uv_buf_t holds at most 4 GiB, so a body (a large
         * snapshot) is cut into 1 GiB pieces, still one uv_write. */
        uv_buf_t bufs[1 + HTTP_MAX_BODY_PIECES];
        unsigned nbufs = 0;
        bufs[nbufs++] = uv_buf_init(ex->head, (unsigned)ex->head_len);
        size_t left = ex->is_head ? 0 : ex->resp_body_len;
        char *at = ex->resp_body;
        while (left > 0 && nbufs < 1 + HTTP_MAX_BODY_PIECES) {
            size_t piece = left < HTTP_BODY_PIECE ? left : HTTP_BODY_PIECE;
            bufs[nbufs++] = uv_buf_init(at, (unsigned)piece);
            at += piece;
            left -= piece;
        }
        if (left > 0) { /* over 16 GiB: cannot be sent */
            conn_close(conn);
            return;
        }
        int r = uv_write(&ex->wreq, (uv_stream_t *)&conn->tcp, bufs, nbufs, on_written);
        if (r != 0) {
            conn_close(conn);
            return;
        }
        ex->written = true;
        if (ex->close_after)
            return;
    }
}

/* Stores the response in ex (taking body) and writes what is in order.
 * Must not be used on a closing connection. */
static void ex_answer(kvd_http_exchange *ex, int status, const char *ctype, char *body,
                      size_t body_len, bool body_static, unsigned retry_after_s,
                      const char *allow)
{
    http_conn *conn = ex->conn;
    kvd_http_server *srv = conn->srv;
    if (!body)
        body_len = 0;
    if (status == 204) { /* RFC 9110 §8.6: no Content-Length, no body */
        if (!body_static)
            free(body);
        body = NULL;
        body_len = 0;
        body_static = true;
    }
    if (!ctype || strlen(ctype) > 128)
        ctype = "application/json";
    /* When draining, the last queued answer of a connection with nothing
     * else under way tells the client to go away. */
    if (!ex->keep_alive ||
        (srv->draining && ex == conn->tail && !conn->cur && conn->pending_len == 0))
        ex->close_after = true;
    if (ex->close_after)
        conn->stopped = true;

    int n = snprintf(ex->head, sizeof ex->head, "HTTP/1.1 %d %s\r\n", status,
                     reason_phrase(status));
    if (status != 204)
        n += snprintf(ex->head + n, sizeof ex->head - (size_t)n,
                      "Content-Type: %s\r\nContent-Length: %zu\r\n", ctype, body_len);
    n += snprintf(ex->head + n, sizeof ex->head - (size_t)n, "Connection: %s\r\n",
                  ex->close_after ? "close" : "keep-alive");
    if (retry_after_s > 0)
        n += snprintf(ex->head + n, sizeof ex->head - (size_t)n, "Retry-After: %u\r\n",
                      retry_after_s);
    if (status == 401)
        n += snprintf(ex->head + n, sizeof ex->head - (size_t)n,
                      "WWW-Authenticate: Bearer\r\n");
    if (allow)
        n += snprintf(ex->head + n, sizeof ex->head - (size_t)n, "Allow: %s\r\n", allow);
    n += snprintf(ex->head + n, sizeof ex->head - (size_t)n, "\r\n");
    ex->head_len = (size_t)n; /* at most ~350 bytes: ctype is bounded above */

    ex->resp_body = body;
    ex->resp_body_len = body_len;
    ex->resp_static = body_static;
    ex->answered = true;
    conn_flush(conn);
}

/* Answers ex with a JSON error (static fallback body if rendering fails). */
static void ex_answer_error(kvd_http_exchange *ex, int status, const char *code,
                            const char *message)
{
    static char fallback[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
    kvd_api_error err;
    kvd_api_error_set(&err, status, code, NULL, "%s", message);
    size_t len = 0;
    char *json = kvd_api_error_json(&err, &len);
    access_log(ex, status, json ? len : sizeof fallback - 1);
    if (json)
        ex_answer(ex, status, "application/json", json, len, false, 0, NULL);
    else
        ex_answer(ex, status, "application/json", fallback, sizeof fallback - 1, true, 0, NULL);
}

void kvd_http_respond(kvd_http_exchange *ex, kvd_response *resp)
{
    http_conn *conn = ex->conn;
    char *body = resp->body;
    size_t len = body ? resp->body_len : 0;
    resp->body = NULL; /* ours now */
    access_log(ex, resp->status, len);
    if (conn->closing) { /* the client left: drop the answer */
        free(body);
        queue_remove(conn, ex);
        ex_free(ex);
        conn_unref(conn);
        return;
    }
    ex_answer(ex, resp->status, resp->content_type, body, len, false, resp->retry_after_s,
              resp->allow);
}

void kvd_http_exchange_set_route(kvd_http_exchange *ex, const char *route_label)
{
    ex->route = route_label ? route_label : "unknown";
}

static void on_continue_written(uv_write_t *req, int status)
{
    (void)status;
    http_conn *conn = req->data;
    conn->cont_inflight = false;
}

/* ---- parser callbacks (llhttp calls these inside llhttp_execute) ---- */

/* Fails the parse from a callback with the status the error response gets. */
static int cb_fail(llhttp_t *p, int status)
{
    http_conn *conn = p->data;
    conn->fail_status = status;
    return -1;
}

static int count_header_bytes(llhttp_t *p, size_t n)
{
    http_conn *conn = p->data;
    if (n > HTTP_MAX_HEADER_BYTES - conn->header_bytes) {
        conn->header_bytes = HTTP_MAX_HEADER_BYTES;
        return -1;
    }
    conn->header_bytes += n;
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    http_conn *conn = p->data;
    conn->header_bytes = 0;
    conn->field_len = 0;
    conn->field_long = false;
    conn->value_target = NULL;
    conn->fail_status = 0;
    conn->cur = ex_new(conn);
    if (!conn->cur)
        return cb_fail(p, 500);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    http_conn *conn = p->data;
    if (count_header_bytes(p, n) != 0)
        return cb_fail(p, 431);
    /* The method is known once the target starts (for the log of errors). */
    conn->cur->req.method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    if (hbuf_append(&conn->cur->url, at, n, HTTP_MAX_HEADER_BYTES) != 0)
        return cb_fail(p, 500);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    http_conn *conn = p->data;
    if (count_header_bytes(p, n) != 0)
        return cb_fail(p, 431);
    if (n > sizeof conn->field - conn->field_len) {
        conn->field_long = true;
        return 0;
    }
    memcpy(conn->field + conn->field_len, at, n);
    conn->field_len += n;
    return 0;
}

static bool field_is(const http_conn *conn, const char *name)
{
    size_t n = strlen(name);
    return !conn->field_long && conn->field_len == n && strncasecmp(conn->field, name, n) == 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    http_conn *conn = p->data;
    kvd_http_exchange *ex = conn->cur;
    conn->value_target = NULL;
    if (ex->headers_done) /* a chunked trailer: not ours to use */
        return 0;
    /* A repeated header: the last one wins. */
    if (field_is(conn, "content-type")) {
        conn->value_target = &ex->ctype;
        ex->has_ctype = true;
    } else if (field_is(conn, "authorization")) {
        conn->value_target = &ex->auth;
        ex->has_auth = true;
    } else if (field_is(conn, "expect")) {
        conn->value_target = &ex->expect;
        ex->has_expect = true;
    }
    if (conn->value_target)
        conn->value_target->len = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    http_conn *conn = p->data;
    if (count_header_bytes(p, n) != 0)
        return cb_fail(p, 431);
    if (conn->value_target &&
        hbuf_append(conn->value_target, at, n, HTTP_MAX_HEADER_BYTES) != 0)
        return cb_fail(p, 500);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    http_conn *conn = p->data;
    conn->field_len = 0;
    conn->field_long = false;
    conn->value_target = NULL;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    http_conn *conn = p->data;
    kvd_http_server *srv = conn->srv;
    kvd_http_exchange *ex = conn->cur;
    ex->headers_done = true;
    ex->req.method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    ex->is_head = llhttp_get_method(p) == HTTP_HEAD;

    char *url = (char *)hbuf_cstr(&ex->url);
    if (!url)
        return cb_fail(p, 500);
    char *q = strchr(url, '?');
    if (q)
        *q++ = '\0';
    ex->req.path = url;
    ex->req.query = q ? q : k_empty;
    if (ex->has_ctype && !(ex->req.content_type = hbuf_cstr(&ex->ctype)))
        return cb_fail(p, 500);
    if (ex->has_auth && !(ex->req.authorization = hbuf_cstr(&ex->auth)))
        return cb_fail(p, 500);

    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0) {
        /* Known size: refuse before reading a byte of it. */
        if (p->content_length > srv->opt.max_body)
            return cb_fail(p, 413);
        size_t first = (size_t)p->content_length;
        if (first > HTTP_BODY_INITIAL_MAX)
            first = HTTP_BODY_INITIAL_MAX;
        if (hbuf_reserve(&ex->body, first, SIZE_MAX) != 0)
            return cb_fail(p, 500);
    }

    /* Clients such as curl wait for this before sending a large body. Only
     * when nothing is queued, so it cannot overtake an earlier response. */
    if (ex->has_expect && p->http_major == 1 && p->http_minor >= 1 && conn->queued == 0 &&
        !conn->cont_inflight && !srv->draining) {
        const char *e = hbuf_cstr(&ex->expect);
        if (e && strcasecmp(e, "100-continue") == 0) {
            uv_buf_t b = uv_buf_init((char *)k_continue, sizeof k_continue - 1);
            conn->cont_req.data = conn;
            if (uv_write(&conn->cont_req, (uv_stream_t *)&conn->tcp, &b, 1,
                         on_continue_written) == 0)
                conn->cont_inflight = true;
        }
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    http_conn *conn = p->data;
    kvd_http_exchange *ex = conn->cur;
    size_t max = conn->srv->opt.max_body;
    /* Chunked bodies reveal their size only as they come: never hold more
     * than max_body. */
    if (n > max || ex->body.len > max - n)
        return cb_fail(p, 413);
    if (hbuf_append(&ex->body, at, n, max) != 0)
        return cb_fail(p, 500);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    http_conn *conn = p->data;
    kvd_http_exchange *ex = conn->cur;
    if (ex->body.len > 0) {
        if (!hbuf_cstr(&ex->body))
            return cb_fail(p, 500);
        ex->req.body = ex->body.p;
        ex->req.body_len = ex->body.len;
    }
    ex->keep_alive = llhttp_should_keep_alive(p) && !llhttp_get_upgrade(p);
    conn->ready = ex;
    conn->cur = NULL;
    /* One request per llhttp_execute: the caller dispatches it, then
     * decides whether to parse on (back-pressure, close, drain). */
    return HPE_PAUSED;
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    http_conn *conn = h->data;
    *buf = uv_buf_init(conn->srv->readbuf, sizeof conn->srv->readbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_read_start(http_conn *conn)
{
    if (conn->reading || conn->closing || conn->stopped)
        return;
    if (uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) != 0) {
        conn_close(conn);
        return;
    }
    conn->reading = true;
}

static void conn_read_stop(http_conn *conn)
{
    if (!conn->reading)
        return;
    uv_read_stop((uv_stream_t *)&conn->tcp);
    conn->reading = false;
}

/* The exchange the parser just completed goes to the queue and the handler
 * (or, while draining, gets 503). ex may be freed once the handler returns. */
static void conn_dispatch(http_conn *conn, kvd_http_exchange *ex)
{
    kvd_http_server *srv = conn->srv;
    queue_push(conn, ex);
    if (srv->draining) {
        ex->close_after = true;
        conn->stopped = true;
        ex_answer_error(ex, 503, KVD_ERR_UNAVAILABLE, "server is shutting down");
        return;
    }
    if (!ex->keep_alive)
        conn->stopped = true;
    srv->handler(srv->ctx, ex, &ex->req);
}

/* A parse error ends the connection after an error answer in its turn. */
static void conn_parse_error(http_conn *conn, llhttp_errno_t err)
{
    kvd_http_server *srv = conn->srv;
    int status = conn->fail_status ? conn->fail_status : 400;
    kvd_http_exchange *ex = conn->cur;
    conn->cur = NULL;
    conn->stopped = true;
    conn_read_stop(conn);
    if (!ex)
        ex = ex_new(conn);
    if (!ex) {
        conn_close(conn);
        return;
    }
    ex->keep_alive = false;
    ex->close_after = true;
    queue_push(conn, ex);
    char msg[256];
    switch (status) {
    case 413:
        snprintf(msg, sizeof msg, "request body exceeds the limit of %zu bytes",
                 srv->opt.max_body);
        ex_answer_error(ex, 413, KVD_ERR_TOO_LARGE, msg);
        break;
    case 431:
        snprintf(msg, sizeof msg, "request line and headers exceed %u bytes",
                 HTTP_MAX_HEADER_BYTES);
        ex_answer_error(ex, 431, KVD_ERR_INVALID, msg);
        break;
    case 500:
        ex_answer_error(ex, 500, KVD_ERR_INTERNAL, "out of memory");
        break;
    default: {
        const char *reason = llhttp_get_error_reason(&conn->parser);
        snprintf(msg, sizeof msg, "bad HTTP request: %s",
                 reason ? reason : llhttp_errno_name(err));
        ex_answer_error(ex, 400, KVD_ERR_INVALID, msg);
        break;
    }
    }
}

/* Parses data[0..len): one request per llhttp_execute, dispatching each.
 * Stops when the queue holds max_pipelined exchanges, keeping the rest in
 * conn->pending with reading stopped; reading resumes when it drains. */
static void conn_feed(http_conn *conn, const char *data, size_t len)
{
    kvd_http_server *srv = conn->srv;
    unsigned max_queue = srv->opt.max_pipelined ? srv->opt.max_pipelined : 1;
    bool from_pending = conn->pending && data == conn->pending;
    conn->in_feed = true;
    while (len > 0 && !conn->stopped && !conn->closing) {
        if (conn->queued >= max_queue)
            break;
        llhttp_errno_t err = llhttp_execute(&conn->parser, data, len);
        if (err == HPE_OK) {
            len = 0;
            break;
        }
        if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
            const char *pos = llhttp_get_error_pos(&conn->parser);
            size_t used = pos && pos >= data && pos <= data + len ? (size_t)(pos - data) : len;
            data += used;
            len -= used;
            if (err == HPE_PAUSED)
                llhttp_resume(&conn->parser);
            else
                conn->stopped = true; /* an upgrade: we speak nothing else */
            kvd_http_exchange *ex = conn->ready;
            conn->ready = NULL;
            if (ex)
                conn_dispatch(conn, ex);
            continue;
        }
        conn_parse_error(conn, err);
        len = 0;
    }
    conn->in_feed = false;

    if (len > 0 && !conn->stopped && !conn->closing) {
        /* Paused by back-pressure: keep the unparsed tail. */
        if (from_pending) {
            memmove(conn->pending, data, len);
        } else {
            char *copy = malloc(len);
            if (!copy) {
                conn_close(conn);
                return;
            }
            memcpy(copy, data, len);
            free(conn->pending);
            conn->pending = copy;
        }
        conn->pending_len = len;
        conn_read_stop(conn);
        return;
    }
    free(conn->pending);
    conn->pending = NULL;
    conn->pending_len = 0;
    if (conn->closing)
        return;
    if (conn->stopped)
        conn_read_stop(conn);
    else
        conn_read_start(conn);
    conn_check_idle(conn);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    http_conn *conn = s->data;
    if (nread < 0) {
        /* EOF or error: the client is gone (or half-closed; answers to a
         * half-closed client are dropped too). */
        conn_close(conn);
        return;
    }
    if (nread == 0 || conn->closing || conn->stopped)
        return;
    conn_feed(conn, buf->base, (size_t)nread);
}

static void on_written(uv_write_t *req, int status)
{
    kvd_http_exchange *ex = req->data;
    http_conn *conn = ex->conn;
    bool close = ex->close_after || status < 0;
    queue_remove(conn, ex);
    ex_free(ex);
    if (!conn->closing) {
        if (close) {
            conn_close(conn);
        } else if (!conn->in_feed) {
            if (conn->pending_len > 0)
                conn_feed(conn, conn->pending, conn->pending_len);
            else if (!conn->stopped)
                conn_read_start(conn);
            conn_check_idle(conn);
        }
    }
    conn_unref(conn);
}

/* ---- listening ---- */

static void on_spare_closed(uv_handle_t *h)
{
    kvd_http_server *srv = h->data;
    srv->spare_busy = false;
    srv_maybe_finish(srv);
}

/* Out of memory for a connection: accept it into the spare handle and close
 * it, so libuv keeps accepting (it stops watching until accept is called). */
static void reject_connection(kvd_http_server *srv)
{
    if (srv->spare_busy || uv_tcp_init(srv->loop, &srv->spare) != 0)
        return;
    srv->spare_busy = true;
    srv->spare.data = srv;
    uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&srv->spare);
    uv_close((uv_handle_t *)&srv->spare, on_spare_closed);
}

static void on_connection(uv_stream_t *listener, int status)
{
    kvd_http_server *srv = listener->data;
    if (status < 0 || srv->draining)
        return;
    http_conn *conn = calloc(1, sizeof *conn);
    if (!conn) {
        reject_connection(srv);
        return;
    }
    conn->srv = srv;
    conn->refs = 1;
    srv->nconns++;
    if (uv_tcp_init(srv->loop, &conn->tcp) != 0) {
        free(conn);
        srv->nconns--;
        reject_connection(srv);
        return;
    }
    conn->tcp.data = conn;
    conn->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = conn;
    srv->conns = conn;
    if (uv_accept(listener, (uv_stream_t *)&conn->tcp) != 0) {
        conn_close(conn);
        return;
    }
    uv_tcp_nodelay(&conn->tcp, 1);
    llhttp_init(&conn->parser, HTTP_REQUEST, &srv->settings);
    conn->parser.data = conn;
    conn_read_start(conn);
}

static void on_listener_closed(uv_handle_t *h)
{
    kvd_http_server *srv = h->data;
    srv->listener_closed = true;
    srv_maybe_finish(srv);
}

static void free_server_cb(uv_handle_t *h)
{
    free(h->data);
}

int kvd_http_server_start(uv_loop_t *loop, const kvd_http_options *opt,
                          kvd_http_handler handler, void *ctx, kvd_http_server **out)
{
    *out = NULL;
    if (!loop || !opt || !handler || opt->port < 0 || opt->port > 65535)
        return UV_EINVAL;
    const char *host = opt->host ? opt->host : "127.0.0.1";
    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    if (uv_ip4_addr(host, opt->port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, opt->port, (struct sockaddr_in6 *)&addr) != 0)
        return UV_EINVAL;

    kvd_http_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return UV_ENOMEM;
    srv->loop = loop;
    srv->opt = *opt;
    srv->opt.host = NULL; /* not kept: the caller's string may go away */
    srv->handler = handler;
    srv->ctx = ctx;
    llhttp_settings_init(&srv->settings);
    srv->settings.on_message_begin = on_message_begin;
    srv->settings.on_url = on_url;
    srv->settings.on_header_field = on_header_field;
    srv->settings.on_header_field_complete = on_header_field_complete;
    srv->settings.on_header_value = on_header_value;
    srv->settings.on_header_value_complete = on_header_value_complete;
    srv->settings.on_headers_complete = on_headers_complete;
    srv->settings.on_body = on_body;
    srv->settings.on_message_complete = on_message_complete;

    int r = uv_tcp_init(loop, &srv->listener);
    if (r != 0) {
        free(srv);
        return r;
    }
    srv->listener.data = srv;
    r = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&srv->listener, 511, on_connection);
    struct sockaddr_storage bound;
    int blen = (int)sizeof bound;
    if (r == 0)
        r = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &blen);
    if (r != 0) {
        /* A handle is freed only in its close callback: the loop frees srv. */
        uv_close((uv_handle_t *)&srv->listener, free_server_cb);
        return r;
    }
    if (bound.ss_family == AF_INET6)
        srv->port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    else
        srv->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    *out = srv;
    return 0;
}

int kvd_http_server_port(const kvd_http_server *srv)
{
    return srv->port;
}

void kvd_http_server_shutdown(kvd_http_server *srv, void (*on_closed)(void *arg), void *arg)
{
    if (srv->draining)
        return;
    srv->draining = true;
    srv->on_closed = on_closed;
    srv->closed_arg = arg;
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
    http_conn *conn = srv->conns;
    while (conn) {
        http_conn *next = conn->next; /* conn_close unlinks conn */
        conn_check_idle(conn);
        conn = next;
    }
}
