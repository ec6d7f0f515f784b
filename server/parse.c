/* server/parse.c — request framing: the llhttp callbacks (llhttp calls them
 * inside llhttp_execute) that copy a request's target, the headers we use
 * and its de-chunked body into NUL-terminated buffers of the exchange,
 * enforce the header and body limits, answer Expect: 100-continue, and
 * pause the parser after each complete request. Also the growable buffer. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>
#include <uv.h>

#include "server/internal.h"

/* First body allocation when Content-Length is known: a client announcing a
 * large body and sending nothing holds at most this much. With the in-flight
 * budget on (--max-inflight-bytes, the default) the whole Content-Length is
 * already counted against it, so the buffer is sized to the body exactly:
 * at once up to BODY_FIRST_MAX, and in one step to Content-Length + 1 once
 * data past the first allocation arrives (no doubling, no memmove of the
 * body). With the budget off it grows with the data that arrives, doubling
 * from BODY_INITIAL_MAX as before. */
#define BODY_INITIAL_MAX (64u * 1024u)
#define BODY_FIRST_MAX (1024u * 1024u)

static const char k_empty[] = "";
static const char k_continue[] = "HTTP/1.1 100 Continue\r\n\r\n";

/* ---- buffers ---- */

int kvd__buf_reserve(kvd__buf *b, size_t extra, size_t limit)
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

int kvd__buf_append(kvd__buf *b, const char *s, size_t n, size_t limit)
{
    if (n == 0)
        return 0;
    if (kvd__buf_reserve(b, n, limit) != 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

const char *kvd__buf_cstr(kvd__buf *b)
{
    if (kvd__buf_reserve(b, 0, SIZE_MAX) != 0)
        return NULL;
    b->p[b->len] = '\0';
    return b->p;
}

/* Capacity exactly cap bytes (data plus NUL) unless b already holds more. */
static int buf_reserve_exact(kvd__buf *b, size_t cap)
{
    if (cap <= b->cap)
        return 0;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

void kvd__buf_free(kvd__buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- parser callbacks ---- */

/* Fails the parse from a callback with the status the error response gets. */
static int cb_fail(llhttp_t *p, int status)
{
    kvd__conn *conn = p->data;
    conn->fail_status = status;
    return -1;
}

static int cb_reject(llhttp_t *p, const char *reason)
{
    kvd__conn *conn = p->data;
    conn->fail_reason = reason;
    return cb_fail(p, 400);
}

static int count_header_bytes(llhttp_t *p, size_t n)
{
    kvd__conn *conn = p->data;
    if (n > KVD__HTTP_MAX_HEADER_BYTES - conn->header_bytes) {
        conn->header_bytes = KVD__HTTP_MAX_HEADER_BYTES;
        return -1;
    }
    conn->header_bytes += n;
    return 0;
}

int kvd__parse_scan_head(kvd__conn *conn, const char *data, size_t len)
{
    for (size_t i = 0; i < len && conn->head_scan; i++) {
        char c = data[i], prev = conn->head_prev;
        conn->head_prev = c;
        const char *bad = NULL;
        if (c == '\n' && prev != '\r')
            bad = "bad HTTP request: LF without CR";
        else if (prev == '\r' && c != '\n')
            bad = "bad HTTP request: CR without LF";
        else if (prev == '\n' && conn->head_text && (c == ' ' || c == '\t'))
            bad = "bad HTTP request: folded header line (obs-fold)";
        else if (conn->head_line1 && conn->head_text &&
                 (c == '\t' || (c == ' ' && prev == ' ')))
            bad = "bad HTTP request: extra whitespace in the request line";
        if (bad) {
            conn->fail_status = 400;
            conn->fail_reason = bad;
            conn->head_scan = false;
            return -1;
        }
        if (c == '\r' || c == '\n') {
            if (conn->head_text) {
                conn->head_line1 = false;
                if (++conn->head_crlf == 4)
                    conn->head_scan = false; /* the blank line: the head ends */
            }
        } else {
            conn->head_text = true;
            conn->head_crlf = 0;
        }
    }
    return 0;
}

/* The next bytes start a request head. */
static void head_scan_reset(kvd__conn *conn)
{
    conn->head_scan = true;
    conn->head_text = false;
    conn->head_line1 = true;
    conn->head_crlf = 0;
    conn->head_prev = '\0';
}

static int on_message_begin(llhttp_t *p)
{
    kvd__conn *conn = p->data;
    conn->header_bytes = 0;
    conn->field_len = 0;
    conn->field_long = false;
    conn->value_target = NULL;
    conn->fail_status = 0;
    conn->fail_reason = NULL;
    conn->cur = kvd__exchange_new(conn);
    if (!conn->cur)
        return cb_fail(p, 500);
    conn->req_seq++;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    kvd__conn *conn = p->data;
    if (count_header_bytes(p, n) != 0)
        return cb_fail(p, 431);
    /* The method is known once the target starts (for the log of errors). */
    conn->cur->req.method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    if (kvd__buf_append(&conn->cur->url, at, n, KVD__HTTP_MAX_HEADER_BYTES) != 0)
        return cb_fail(p, 500);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    kvd__conn *conn = p->data;
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

static bool field_is(const kvd__conn *conn, const char *name)
{
    size_t n = strlen(name);
    return !conn->field_long && conn->field_len == n && strncasecmp(conn->field, name, n) == 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    kvd__conn *conn = p->data;
    kvd_http_exchange *ex = conn->cur;
    conn->value_target = NULL;
    if (conn->field_len == 0 && !conn->field_long)
        return cb_reject(p, "bad HTTP request: empty header name");
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
    kvd__conn *conn = p->data;
    if (count_header_bytes(p, n) != 0)
        return cb_fail(p, 431);
    /* The strict parser still joins obs-fold lines (RFC 9112 §5.2: reject). */
    if (memchr(at, '\r', n) || memchr(at, '\n', n))
        return cb_reject(p, "bad HTTP request: folded header line (obs-fold)");
    if (conn->value_target &&
        kvd__buf_append(conn->value_target, at, n, KVD__HTTP_MAX_HEADER_BYTES) != 0)
        return cb_fail(p, 500);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    kvd__conn *conn = p->data;
    conn->field_len = 0;
    conn->field_long = false;
    conn->value_target = NULL;
    return 0;
}

static void on_continue_written(uv_write_t *req, int status)
{
    (void)status;
    kvd__conn *conn = req->data;
    conn->cont_inflight = false;
}

/* The request bodies read and not yet answered, with n more bytes, would
 * pass --max-inflight-bytes. A Content-Length body is counted whole before
 * its first byte is read, so concurrent uploads cannot overshoot together. */
static bool over_budget(kvd_http_server *srv, uint64_t n)
{
    size_t max = srv->opt.max_inflight_bytes;
    return max != 0 && (n > max || srv->inflight_bytes > max - n);
}

static int on_headers_complete(llhttp_t *p)
{
    kvd__conn *conn = p->data;
    kvd_http_server *srv = conn->srv;
    kvd_http_exchange *ex = conn->cur;
    ex->headers_done = true;
    if (p->http_major != 1 || p->http_minor > 1)
        return cb_reject(p, "bad HTTP request: only HTTP/1.0 and HTTP/1.1 are spoken");
    ex->req.method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    ex->is_head = llhttp_get_method(p) == HTTP_HEAD;

    char *url = (char *)kvd__buf_cstr(&ex->url);
    if (!url)
        return cb_fail(p, 500);
    char *q = strchr(url, '?');
    if (q)
        *q++ = '\0';
    ex->req.path = url;
    ex->req.query = q ? q : k_empty;
    if (ex->has_ctype && !(ex->req.content_type = kvd__buf_cstr(&ex->ctype)))
        return cb_fail(p, 500);
    if (ex->has_auth && !(ex->req.authorization = kvd__buf_cstr(&ex->auth)))
        return cb_fail(p, 500);

    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0) {
        /* Known size: refuse before reading a byte of it. */
        if (p->content_length > srv->opt.max_body)
            return cb_fail(p, 413);
        /* The in-flight budget: refuse before reading a byte of it. */
        if (over_budget(srv, p->content_length))
            return cb_fail(p, 503);
        srv->inflight_bytes += (size_t)p->content_length;
        ex->counted = (size_t)p->content_length;
        size_t first = (size_t)p->content_length;
        if (srv->opt.max_inflight_bytes != 0) {
            if (first > BODY_FIRST_MAX)
                first = BODY_FIRST_MAX;
            if (buf_reserve_exact(&ex->body, ex->body.len + first + 1) != 0)
                return cb_fail(p, 500);
        } else {
            if (first > BODY_INITIAL_MAX)
                first = BODY_INITIAL_MAX;
            if (kvd__buf_reserve(&ex->body, first, SIZE_MAX) != 0)
                return cb_fail(p, 500);
        }
    }

    /* Clients such as curl wait for this before sending a large body. Only
     * when nothing is queued, so it cannot overtake an earlier response. */
    if (ex->has_expect && p->http_major == 1 && p->http_minor >= 1 && conn->queue.len == 0 &&
        !conn->cont_inflight && !srv->draining) {
        const char *e = kvd__buf_cstr(&ex->expect);
        if (e && strcasecmp(e, "100-continue") == 0) {
            uv_buf_t b = uv_buf_init((char *)k_continue, sizeof k_continue - 1);
            conn->cont_req.data = conn;
            if (kvd__conn_write(conn, &conn->cont_req, &b, 1, on_continue_written) == 0)
                conn->cont_inflight = true;
        }
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    kvd__conn *conn = p->data;
    kvd_http_exchange *ex = conn->cur;
    size_t max = conn->srv->opt.max_body;
    /* Chunked bodies reveal their size only as they come: never hold more
     * than max_body. */
    if (n > max || ex->body.len > max - n)
        return cb_fail(p, 413);
    conn->body_seen += n;
    if (!(p->flags & F_CONTENT_LENGTH)) { /* chunked: counted as it comes */
        if (over_budget(conn->srv, n))
            return cb_fail(p, 503);
        conn->srv->inflight_bytes += n;
        ex->counted += n;
    } else if (conn->srv->opt.max_inflight_bytes != 0 && ex->body.len + n + 1 > ex->body.cap &&
               ex->counted >= ex->body.len + n) {
        /* Counted whole already (on_headers_complete): one step to the
         * announced size, which llhttp never lets the data pass. */
        if (buf_reserve_exact(&ex->body, ex->counted + 1) != 0)
            return cb_fail(p, 500);
    }
    if (kvd__buf_append(&ex->body, at, n, max) != 0)
        return cb_fail(p, 500);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    kvd__conn *conn = p->data;
    kvd_http_exchange *ex = conn->cur;
    if (ex->body.len > 0) {
        if (!kvd__buf_cstr(&ex->body))
            return cb_fail(p, 500);
        ex->req.body = ex->body.p;
        ex->req.body_len = ex->body.len;
    }
    ex->keep_alive = llhttp_should_keep_alive(p) && !llhttp_get_upgrade(p);
    conn->ready = ex;
    conn->cur = NULL;
    head_scan_reset(conn);
    /* One request per llhttp_execute: the caller dispatches it, then
     * decides whether to parse on (back-pressure, close, drain). */
    return HPE_PAUSED;
}

void kvd__parse_settings_init(llhttp_settings_t *s)
{
    llhttp_settings_init(s);
    s->on_message_begin = on_message_begin;
    s->on_url = on_url;
    s->on_header_field = on_header_field;
    s->on_header_field_complete = on_header_field_complete;
    s->on_header_value = on_header_value;
    s->on_header_value_complete = on_header_value_complete;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
}
