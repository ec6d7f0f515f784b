/* server/listen.c — the HTTP server's life: binding and listening, accepting
 * a connection (or dropping it when out of memory), and the graceful drain
 * that stops accepting, lets in-flight exchanges finish, closes everything
 * and then frees the server. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <uv.h>

#include "server/http.h"
#include "server/internal.h"

void kvd__server_maybe_finish(kvd_http_server *srv)
{
    if (!srv->draining || !srv->listener_closed || srv->nconns != 0 || srv->spare_busy ||
        srv->finished)
        return;
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

static void on_connection(uv_stream_t *listener, int status)
{
    kvd_http_server *srv = listener->data;
    if (status < 0 || srv->draining)
        return;
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
    kvd__conn_read_start(conn);
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
    kvd__conn *conn = srv->conns;
    while (conn) {
        kvd__conn *next = conn->next; /* closing unlinks conn */
        kvd__conn_check_idle(conn);
        conn = next;
    }
}
