/* server/listen.c — the HTTP server's life: binding and listening, accepting
 * a connection (503 past --max-connections, dropped when out of memory), and
 * the graceful drain that stops accepting, lets in-flight exchanges finish
 * (until the drain deadline), closes everything and then frees the server. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <uv.h>

#include "api/errors.h"
#include "common/fifo.h"
#include "server/http.h"
#include "server/internal.h"

static void on_drain_closed(uv_handle_t *h)
{
    kvd_http_server *srv = h->data;
    srv->drain_busy = false;
    kvd__server_maybe_finish(srv);
}

void kvd__server_maybe_finish(kvd_http_server *srv)
{
    if (!srv->draining || !srv->listener_closed || srv->nconns != 0 || srv->spare_busy ||
        srv->finished)
        return;
    if (srv->drain_busy) { /* everything closed before the deadline */
        if (!srv->drain_closing) {
            srv->drain_closing = true;
            uv_close((uv_handle_t *)&srv->drain, on_drain_closed);
        }
        return;
    }
    srv->finished = true;
    if (srv->on_closed)
        srv->on_closed(srv->closed_arg);
    free(srv);
}

static void on_spare_closed(uv_handle_t *h)
{
    kvd_http_server *srv = h->data;
    srv->spare_busy = false;
    kvd__server_maybe_finish(srv);
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

/* Connections past --max-connections still get a 503 (cheap: a small
 * answer, then close); past this many more they are dropped unanswered. */
#define OVER_CAP_ANSWERED 64u

/* A connection over the cap: 503 + Retry-After, nothing read, then close. */
static void refuse_over_cap(kvd__conn *conn)
{
    conn->stopped = true;
    kvd_http_exchange *ex = kvd__exchange_new(conn);
    if (!ex) {
        kvd__conn_close(conn);
        return;
    }
    ex->close_after = true;
    kvd_fifo_push(&conn->queue, &ex->link);
    char msg[128];
    snprintf(msg, sizeof msg, "too many connections (--max-connections %zu); retry later",
             conn->srv->opt.max_connections);
    kvd__exchange_answer_error_retry(ex, 503, KVD_ERR_UNAVAILABLE, msg, 1);
}

static void on_connection(uv_stream_t *listener, int status)
{
    kvd_http_server *srv = listener->data;
    if (status < 0 || srv->draining)
        return;
    size_t cap = srv->opt.max_connections;
    bool over = cap != 0 && srv->nconns >= cap;
    if (over && srv->nconns >= cap + OVER_CAP_ANSWERED) {
        reject_connection(srv);
        return;
    }
    kvd__conn *conn = kvd__conn_new(srv);
    if (!conn) {
        reject_connection(srv);
        return;
    }
    if (uv_tcp_init(srv->loop, &conn->tcp) != 0) {
        kvd__conn_discard(conn);
        reject_connection(srv);
        return;
    }
    conn->tcp.data = conn;
    if (uv_accept(listener, (uv_stream_t *)&conn->tcp) != 0) {
        kvd__conn_close(conn);
        return;
    }
    uv_tcp_nodelay(&conn->tcp, 1);
    if (over) {
        refuse_over_cap(conn);
        return;
    }
    kvd__conn_read_start(conn);
    kvd__conn_deadline_update(conn);
}

/* The accept queue must hold a burst of every connection kvd allows, plus the
 * ones it answers over the cap: with the old fixed 511, 512 clients connecting
 * at once while the loop was busy overflowed it (the soak saw it), and the
 * surplus got EOF or a reset with nothing answered
 * (tests/integration/test_listen_backlog.c). The kernel clamps it to
 * net.core.somaxconn. */
#define BACKLOG_MIN 511
#define BACKLOG_UNCAPPED 4096

static int listen_backlog(size_t max_connections)
{
    if (max_connections == 0)
        return BACKLOG_UNCAPPED;
    size_t want = max_connections + OVER_CAP_ANSWERED;
    return want < BACKLOG_MIN ? BACKLOG_MIN : want > 65535 ? 65535 : (int)want;
}

static void on_listener_closed(uv_handle_t *h)
{
    kvd_http_server *srv = h->data;
    srv->listener_closed = true;
    kvd__server_maybe_finish(srv);
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
    kvd__parse_settings_init(&srv->settings);

    int r = uv_tcp_init(loop, &srv->listener);
    if (r != 0) {
        free(srv);
        return r;
    }
    srv->listener.data = srv;
    r = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&srv->listener, listen_backlog(opt->max_connections), on_connection);
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

/* The drain deadline: connections still open (a response the client does
 * not read, a request never finished) are closed; answers still owed are
 * dropped when they come. */
static void on_drain_deadline(uv_timer_t *t)
{
    kvd_http_server *srv = t->data;
    size_t n = 0;
    for (kvd__conn *conn = srv->conns; conn; n++) {
        kvd__conn *next = conn->next; /* closing unlinks conn */
        kvd__conn_close(conn);
        conn = next;
    }
    if (n)
        fprintf(stderr, "kvd: drain deadline: closed %zu connection%s\n", n, n == 1 ? "" : "s");
}

void kvd_http_server_shutdown(kvd_http_server *srv, void (*on_closed)(void *arg), void *arg)
{
    if (srv->draining)
        return;
    srv->draining = true;
    srv->on_closed = on_closed;
    srv->closed_arg = arg;
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
    if (srv->opt.drain_ms > 0 && uv_timer_init(srv->loop, &srv->drain) == 0) {
        srv->drain.data = srv;
        srv->drain_busy = true;
        uv_timer_start(&srv->drain, on_drain_deadline, srv->opt.drain_ms, 0);
    }
    kvd__conn *conn = srv->conns;
    while (conn) {
        kvd__conn *next = conn->next; /* closing unlinks conn */
        kvd__conn_check_idle(conn);
        conn = next;
    }
}
