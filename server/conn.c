/* server/conn.c — one HTTP connection on the loop thread: reading (and
 * stopping reads under back-pressure), the parse loop that turns bytes into
 * exchanges and dispatches them, the queue of pipelined exchanges written
 * back in request order, and closing. Its transport is a uv_tcp_t or, for
 * tests, a sink (server/loopback.h). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>
#include <uv.h>

#include "api/api.h"
#include "api/errors.h"
#include "common/fifo.h"
#include "server/http.h"
#include "server/internal.h"

static const char k_empty[] = "";

static kvd_http_exchange *ex_of(kvd_fifo_link *l)
{
    return l ? kvd_container_of(l, kvd_http_exchange, link) : NULL;
}

/* ---- exchanges ---- */

kvd_http_exchange *kvd__exchange_new(kvd__conn *conn)
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

char *kvd_http_exchange_take_body(kvd_http_exchange *ex, size_t *len)
{
    char *p = ex->body.len ? ex->body.p : NULL;
    *len = p ? ex->body.len : 0;
    if (!p)
        kvd__buf_free(&ex->body);
    memset(&ex->body, 0, sizeof ex->body);
    ex->req.body = k_empty;
    ex->req.body_len = 0;
    return p;
}

void kvd__exchange_free(kvd_http_exchange *ex)
{
    kvd__exchange_uncount(ex);
    kvd__buf_free(&ex->url);
    kvd__buf_free(&ex->ctype);
    kvd__buf_free(&ex->auth);
    kvd__buf_free(&ex->expect);
    kvd__buf_free(&ex->body);
    if (!ex->resp_static)
        free(ex->resp_body);
    free(ex);
}

/* ---- the connection's life ---- */

kvd__conn *kvd__conn_new(kvd_http_server *srv)
{
    kvd__conn *conn = calloc(1, sizeof *conn);
    if (!conn)
        return NULL;
    conn->srv = srv;
    conn->refs = 1;
    srv->nconns++;
    conn->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = conn;
    srv->conns = conn;
    llhttp_init(&conn->parser, HTTP_REQUEST, &srv->settings);
    conn->parser.data = conn;
    conn->head_scan = true;
    conn->head_line1 = true;
    return conn;
}

static void conn_unlink(kvd__conn *conn)
{
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        conn->srv->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    conn->prev = conn->next = NULL;
}

void kvd__conn_discard(kvd__conn *conn)
{
    conn_unlink(conn);
    conn->srv->nconns--;
    free(conn);
}

static void conn_unref(kvd__conn *conn)
{
    if (--conn->refs != 0)
        return;
    kvd_http_server *srv = conn->srv;
    free(conn->pending);
    free(conn);
    srv->nconns--;
    kvd__server_maybe_finish(srv);
}

static void on_conn_closed(uv_handle_t *h)
{
    conn_unref(h->data);
}

static void on_timer_closed(uv_handle_t *h)
{
    conn_unref(h->data);
}

/* Drops what nobody will read (unparsed bytes, the partial request, answers
 * not yet written). Exchanges the handler still holds stay until answered;
 * writes in flight finish (or fail with UV_ECANCELED) before the close
 * callback. */
void kvd__conn_close(kvd__conn *conn)
{
    if (conn->closing)
        return;
    conn->closing = true;
    conn_unlink(conn);
    if (!conn->in_feed) { /* conn_feed may be reading from pending; it frees it */
        free(conn->pending);
        conn->pending = NULL;
        conn->pending_len = 0;
    }
    kvd_http_exchange *drop[2] = {conn->cur, conn->ready};
    conn->cur = conn->ready = NULL;
    for (int i = 0; i < 2; i++) {
        if (drop[i]) {
            kvd__exchange_free(drop[i]);
            conn->refs--; /* the handle's ref keeps conn alive */
        }
    }
    kvd_fifo_link *l = conn->queue.head;
    while (l) {
        kvd_fifo_link *next = l->next;
        kvd_http_exchange *ex = ex_of(l);
        if (ex->answered && !ex->written) {
            kvd_fifo_remove(&conn->queue, l);
            kvd__exchange_free(ex);
            conn->refs--;
        }
        l = next;
    }
    conn->tcp.data = conn;
    kvd__conn_deadline_close(conn, on_timer_closed);
    if (conn->sink)
        kvd__sink_close(conn->sink, on_conn_closed);
    else
        uv_close((uv_handle_t *)&conn->tcp, on_conn_closed);
}

/* Closes a connection that has nothing left to do: no exchange queued and
 * either parsing stopped or the server drains. While draining, a request
 * still being received is dropped: it was never accepted, and waiting for a
 * stalled client would keep the process from exiting. */
void kvd__conn_check_idle(kvd__conn *conn)
{
    if (conn->closing || conn->queue.len != 0 || conn->ready)
        return;
    if (conn->stopped || (conn->srv->draining && conn->pending_len == 0))
        kvd__conn_close(conn);
}

/* ---- writing ---- */

int kvd__conn_write(kvd__conn *conn, uv_write_t *req, const uv_buf_t *bufs, unsigned nbufs,
                    uv_write_cb cb)
{
    if (conn->sink)
        return kvd__sink_write(conn->sink, req, bufs, nbufs, cb);
    return uv_write(req, (uv_stream_t *)&conn->tcp, bufs, nbufs, cb);
}

static void on_written(uv_write_t *req, int status);

/* Response bodies go out in pieces of at most this many bytes, at most
 * BODY_PIECES of them (uv_buf_t lengths are unsigned int). */
#define BODY_PIECE ((size_t)1 << 30)
#define BODY_PIECES 16u

void kvd__conn_flush(kvd__conn *conn)
{
    for (kvd_fifo_link *l = conn->queue.head; l && !conn->closing; l = l->next) {
        kvd_http_exchange *ex = ex_of(l);
        if (ex->written)
            continue;
        if (!ex->answered)
            return;
        /* Header + body; a uv_buf_t holds at most 4 GiB, so a body (a large
         * snapshot) is cut into 1 GiB pieces, still one write. */
        uv_buf_t bufs[1 + BODY_PIECES];
        unsigned nbufs = 0;
        bufs[nbufs++] = uv_buf_init(ex->head, (unsigned)ex->head_len);
        size_t left = ex->is_head ? 0 : ex->resp_body_len;
        char *at = ex->resp_body;
        while (left > 0 && nbufs < 1 + BODY_PIECES) {
            size_t piece = left < BODY_PIECE ? left : BODY_PIECE;
            bufs[nbufs++] = uv_buf_init(at, (unsigned)piece);
            at += piece;
            left -= piece;
        }
        if (left > 0) { /* over 16 GiB: cannot be sent */
            kvd__conn_close(conn);
            return;
        }
        if (kvd__conn_write(conn, &ex->wreq, bufs, nbufs, on_written) != 0) {
            kvd__conn_close(conn);
            return;
        }
        ex->written = true;
        if (ex->close_after)
            break;
    }
    kvd__conn_deadline_update(conn);
}

/* ---- the public face of an exchange ---- */

void kvd_http_respond(kvd_http_exchange *ex, kvd_response *resp)
{
    kvd__conn *conn = ex->conn;
    char *body = resp->body;
    size_t len = body ? resp->body_len : 0;
    resp->body = NULL; /* ours now */
    kvd__access_log(ex, resp->status, len);
    if (conn->closing) { /* the client left: drop the answer */
        free(body);
        kvd_fifo_remove(&conn->queue, &ex->link);
        kvd__exchange_free(ex);
        conn_unref(conn);
        return;
    }
    kvd__exchange_answer(ex, resp->status, resp->content_type, body, len, false,
                         resp->retry_after_s, resp->allow);
}

void kvd_http_exchange_set_route(kvd_http_exchange *ex, const char *route_label)
{
    ex->route = route_label ? route_label : "unknown";
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    kvd__conn *conn = h->data;
    *buf = uv_buf_init(conn->srv->readbuf, sizeof conn->srv->readbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    kvd__conn *conn = s->data;
    if (nread == UV_EOF) {
        kvd__conn_on_eof(conn);
        return;
    }
    if (nread < 0) { /* a reset or error: the client is gone */
        kvd__conn_close(conn);
        return;
    }
    kvd__conn_on_bytes(conn, buf->base, (size_t)nread);
}

void kvd__conn_read_start(kvd__conn *conn)
{
    if (conn->reading || conn->closing || conn->stopped)
        return;
    if (!conn->sink && uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) != 0) {
        kvd__conn_close(conn);
        return;
    }
    conn->reading = true;
}

static void conn_read_stop(kvd__conn *conn)
{
    if (!conn->reading)
        return;
    if (!conn->sink)
        uv_read_stop((uv_stream_t *)&conn->tcp);
    conn->reading = false;
}

/* The exchange the parser just completed goes to the queue and the handler
 * (or, while draining, gets 503). ex may be freed once the handler returns. */
static void conn_dispatch(kvd__conn *conn, kvd_http_exchange *ex)
{
    kvd_http_server *srv = conn->srv;
    kvd_fifo_push(&conn->queue, &ex->link);
    if (srv->draining) {
        ex->close_after = true;
        conn->stopped = true;
        kvd__exchange_answer_error(ex, 503, KVD_ERR_UNAVAILABLE, "server is shutting down");
        return;
    }
    if (!ex->keep_alive)
        conn->stopped = true;
    srv->handler(srv->ctx, ex, &ex->req);
}

/* A parse error ends the connection after an error answer in its turn. */
static void conn_parse_error(kvd__conn *conn, llhttp_errno_t err)
{
    kvd_http_server *srv = conn->srv;
    int status = conn->fail_status ? conn->fail_status : 400;
    kvd_http_exchange *ex = conn->cur;
    conn->cur = NULL;
    conn->stopped = true;
    conn_read_stop(conn);
    if (!ex)
        ex = kvd__exchange_new(conn);
    if (!ex) {
        kvd__conn_close(conn);
        return;
    }
    ex->keep_alive = false;
    ex->close_after = true;
    kvd_fifo_push(&conn->queue, &ex->link);
    char msg[256];
    switch (status) {
    case 413:
        snprintf(msg, sizeof msg, "request body exceeds the limit of %zu bytes",
                 srv->opt.max_body);
        kvd__exchange_answer_error(ex, 413, KVD_ERR_TOO_LARGE, msg);
        break;
    case 431:
        snprintf(msg, sizeof msg, "request line and headers exceed %u bytes",
                 KVD__HTTP_MAX_HEADER_BYTES);
        kvd__exchange_answer_error(ex, 431, KVD_ERR_INVALID, msg);
        break;
    case 500:
        kvd__exchange_answer_error(ex, 500, KVD_ERR_INTERNAL, "out of memory");
        break;
    case 503:
        snprintf(msg, sizeof msg,
                 "request bodies in flight would exceed --max-inflight-bytes (%zu bytes); "
                 "retry later", srv->opt.max_inflight_bytes);
        kvd__exchange_answer_error_retry(ex, 503, KVD_ERR_UNAVAILABLE, msg, 1);
        break;
    default: {
        if (conn->fail_reason) {
            kvd__exchange_answer_error(ex, 400, KVD_ERR_INVALID, conn->fail_reason);
            break;
        }
        const char *reason = llhttp_get_error_reason(&conn->parser);
        snprintf(msg, sizeof msg, "bad HTTP request: %s",
                 reason ? reason : llhttp_errno_name(err));
        kvd__exchange_answer_error(ex, 400, KVD_ERR_INVALID, msg);
        break;
    }
    }
}

/* Parses data[0..len): one request per llhttp_execute, dispatching each.
 * Stops when the queue holds max_pipelined exchanges, keeping the rest in
 * conn->pending with reading stopped; reading resumes when it drains. */
static void conn_feed(kvd__conn *conn, const char *data, size_t len)
{
    kvd_http_server *srv = conn->srv;
    unsigned max_queue = srv->opt.max_pipelined ? srv->opt.max_pipelined : 1;
    bool from_pending = conn->pending && data == conn->pending;
    conn->in_feed = true;
    while (len > 0 && !conn->stopped && !conn->closing) {
        if (conn->queue.len >= max_queue)
            break;
        if (kvd__parse_scan_head(conn, data, len) != 0) {
            conn_parse_error(conn, HPE_STRICT);
            len = 0;
            break;
        }
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
                kvd__conn_close(conn);
                return;
            }
            memcpy(copy, data, len);
            free(conn->pending);
            conn->pending = copy;
        }
        conn->pending_len = len;
        conn_read_stop(conn);
        kvd__conn_deadline_update(conn);
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
        kvd__conn_read_start(conn);
    kvd__conn_check_idle(conn);
    kvd__conn_deadline_update(conn);
}

/* The client half-closed (shutdown(SHUT_WR)) or closed: every request read
 * in full before it is still answered, the last answer says
 * Connection: close, then the connection closes. A request cut short by
 * the EOF is dropped (it can never complete). */
void kvd__conn_on_eof(kvd__conn *conn)
{
    if (conn->closing)
        return;
    conn_read_stop(conn);
    conn->eof = true;
    conn->stopped = true;
    if (conn->cur) {
        kvd__exchange_free(conn->cur);
        conn->cur = NULL;
        conn->refs--; /* the handle's ref keeps conn alive */
    }
    kvd__conn_check_idle(conn);
    kvd__conn_deadline_update(conn);
}

void kvd__conn_on_bytes(kvd__conn *conn, const char *data, size_t len)
{
    if (len == 0 || conn->closing || conn->stopped)
        return;
    conn_feed(conn, data, len);
}

static void on_written(uv_write_t *req, int status)
{
    kvd_http_exchange *ex = req->data;
    kvd__conn *conn = ex->conn;
    bool close = ex->close_after || status < 0;
    kvd_fifo_remove(&conn->queue, &ex->link);
    kvd__exchange_free(ex);
    if (!conn->closing) {
        if (close) {
            kvd__conn_close(conn);
        } else if (!conn->in_feed) {
            if (conn->pending_len > 0)
                conn_feed(conn, conn->pending, conn->pending_len);
            else if (!conn->stopped)
                kvd__conn_read_start(conn);
            kvd__conn_check_idle(conn);
            kvd__conn_deadline_update(conn);
        }
    }
    conn_unref(conn);
}
