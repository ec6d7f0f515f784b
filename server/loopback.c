/* server/loopback.c — the transport behind server/loopback.h: a sink that
 * records what a connection writes and defers its write and close callbacks
 * (libuv never calls them inside uv_write or uv_close either), and the
 * loopback server and connection that use it. */
#include "server/loopback.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "server/internal.h"

typedef struct pending_write {
    uv_write_t *req;
    uv_write_cb cb;
} pending_write;

struct kvd__sink {
    kvd__conn *conn;           /* NULL once its close callback ran */
    kvd__buf out;              /* every byte written, in order */
    kvd__buf inbox;            /* fed, not yet read (a socket's receive buffer) */
    pending_write *writes;     /* callbacks not yet run, oldest first */
    size_t nwrites, cap;
    uv_close_cb close_cb;      /* set by kvd__sink_close */
    bool close_pending;
    bool closed;
    bool eof;                  /* the peer sent EOF after the inbox */
    bool eof_delivered;
};

struct kvd__loopback {
    kvd_http_server *srv;
    kvd__sink sink;
};

int kvd__sink_write(kvd__sink *sink, uv_write_t *req, const uv_buf_t *bufs, unsigned nbufs,
                    uv_write_cb cb)
{
    if (sink->closed || sink->close_pending)
        return UV_EPIPE;
    if (sink->nwrites == sink->cap) {
        size_t cap = sink->cap ? sink->cap * 2 : 8;
        pending_write *w = realloc(sink->writes, cap * sizeof *w);
        if (!w)
            return UV_ENOMEM;
        sink->writes = w;
        sink->cap = cap;
    }
    for (unsigned i = 0; i < nbufs; i++)
        if (kvd__buf_append(&sink->out, bufs[i].base, bufs[i].len, SIZE_MAX) != 0)
            return UV_ENOMEM;
    sink->writes[sink->nwrites++] = (pending_write){req, cb};
    return 0;
}

void kvd__sink_close(kvd__sink *sink, uv_close_cb cb)
{
    sink->close_cb = cb;
    sink->close_pending = true;
}

kvd__loopback *kvd__loopback_open(const kvd_http_options *opt, kvd_http_handler handler,
                                  void *ctx)
{
    kvd__loopback *lb = calloc(1, sizeof *lb);
    kvd_http_server *srv = calloc(1, sizeof *srv);
    if (!lb || !srv) {
        free(lb);
        free(srv);
        return NULL;
    }
    srv->opt = *opt;
    srv->opt.host = NULL;
    srv->handler = handler;
    srv->ctx = ctx;
    kvd__parse_settings_init(&srv->settings);
    kvd__conn *conn = kvd__conn_new(srv);
    if (!conn) {
        free(lb);
        free(srv);
        return NULL;
    }
    conn->sink = &lb->sink;
    conn->tcp.data = conn;
    lb->srv = srv;
    lb->sink.conn = conn;
    kvd__conn_read_start(conn);
    return lb;
}

void kvd__loopback_run(kvd__loopback *lb)
{
    kvd__sink *s = &lb->sink;
    for (;;) {
        if (s->nwrites > 0) {
            pending_write w = s->writes[0];
            memmove(s->writes, s->writes + 1, (s->nwrites - 1) * sizeof *s->writes);
            s->nwrites--;
            w.cb(w.req, 0); /* may feed on and queue more writes */
            continue;
        }
        if (s->close_pending) {
            s->close_pending = false;
            s->closed = true;
            kvd__conn *conn = s->conn;
            s->conn = NULL;
            s->close_cb((uv_handle_t *)&conn->tcp); /* may free conn */
            continue;
        }
        if (s->inbox.len > 0 && s->conn && !s->conn->closing && s->conn->reading) {
            kvd__buf read = s->inbox; /* one read takes all that is there */
            memset(&s->inbox, 0, sizeof s->inbox);
            kvd__conn_on_bytes(s->conn, read.p, read.len);
            kvd__buf_free(&read);
            continue;
        }
        if (s->eof && !s->eof_delivered && s->inbox.len == 0 && s->conn && !s->conn->closing &&
            s->conn->reading) {
            s->eof_delivered = true;
            kvd__conn_on_eof(s->conn);
            continue;
        }
        return;
    }
}

void kvd__loopback_feed(kvd__loopback *lb, const char *data, size_t len)
{
    if (kvd__buf_append(&lb->sink.inbox, data, len, SIZE_MAX) != 0)
        abort(); /* a test seam: out of memory here is the test's failure */
    kvd__loopback_run(lb);
}

void kvd__loopback_eof(kvd__loopback *lb)
{
    lb->sink.eof = true;
    kvd__loopback_run(lb);
}

const char *kvd__loopback_output(const kvd__loopback *lb, size_t *len)
{
    *len = lb->sink.out.len;
    return lb->sink.out.p ? lb->sink.out.p : "";
}

bool kvd__loopback_closed(const kvd__loopback *lb)
{
    return lb->sink.closed;
}

bool kvd__loopback_reading(const kvd__loopback *lb)
{
    return lb->sink.conn && !lb->sink.conn->closing && lb->sink.conn->reading;
}

bool kvd__loopback_free(kvd__loopback *lb)
{
    if (lb->sink.conn)
        kvd__conn_close(lb->sink.conn);
    kvd__loopback_run(lb);
    bool ok = lb->srv->nconns == 0;
    if (ok)
        free(lb->srv);
    kvd__buf_free(&lb->sink.out);
    kvd__buf_free(&lb->sink.inbox);
    free(lb->sink.writes);
    free(lb);
    return ok;
}
