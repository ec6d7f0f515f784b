/* server/deadline.c — per-connection timeouts on one uv timer each: the
 * header timeout (from accept, or from a request's first byte, to the end
 * of its head: slowloris), the body timeout (longest gap between body
 * bytes), the idle keep-alive timeout, and the write timeout (a client that
 * stops taking response bytes). Each closes only its own connection. While
 * the handler holds a request (a step computing) no deadline runs. Also the
 * in-flight body budget's bookkeeping. All on the loop thread. */
#include <stdbool.h>
#include <stdint.h>
#include <sys/ioctl.h>

#include <uv.h>

#include "server/internal.h"

enum { PHASE_NONE, PHASE_HEADER, PHASE_BODY, PHASE_IDLE, PHASE_WRITE };

void kvd__exchange_uncount(kvd_http_exchange *ex)
{
    kvd_http_server *srv = ex->conn->srv;
    srv->inflight_bytes -= ex->counted <= srv->inflight_bytes ? ex->counted : srv->inflight_bytes;
    ex->counted = 0;
}

static size_t write_queue(const kvd__conn *conn)
{
    return conn->sink ? 0 : uv_stream_get_write_queue_size((const uv_stream_t *)&conn->tcp);
}

/* Bytes the kernel holds for this connection that kvd has not read yet. */
static bool bytes_waiting(const kvd__conn *conn)
{
    uv_os_fd_t fd;
    int n = 0;
    if (uv_fileno((const uv_handle_t *)&conn->tcp, &fd) != 0 || ioctl(fd, FIONREAD, &n) != 0)
        return false;
    return n > 0;
}

static void on_deadline(uv_timer_t *t)
{
    kvd__conn *conn = t->data;
    if (conn->closing)
        return;
    if (conn->phase != PHASE_WRITE && !conn->deadline_deferred && bytes_waiting(conn)) {
        /* libuv runs timers before it reads sockets: after a long loop
         * iteration a deadline can fire while the bytes that meet it wait
         * unread. Read them first (one short grace, once per deadline); the
         * reads re-arm the deadline if they made progress. */
        conn->deadline_deferred = true;
        uv_timer_start(&conn->timer, on_deadline, 1, 0);
        return;
    }
    if (conn->phase == PHASE_WRITE) {
        size_t left = write_queue(conn);
        if (left > 0 && left < conn->write_left) { /* slow, but taking bytes */
            conn->write_left = left;
            uv_timer_start(&conn->timer, on_deadline, conn->srv->opt.write_timeout_ms, 0);
            return;
        }
        if (left == 0) { /* done meanwhile; its callback re-arms */
            conn->phase = PHASE_NONE;
            return;
        }
    }
    kvd__conn_close(conn);
}

void kvd__conn_deadline_update(kvd__conn *conn)
{
    kvd_http_server *srv = conn->srv;
    if (conn->sink || !srv->loop || conn->closing)
        return;
    int phase = PHASE_NONE;
    uint64_t key = 0;
    unsigned ms = 0;
    size_t wq = write_queue(conn);
    if (wq > 0) {
        phase = PHASE_WRITE, ms = srv->opt.write_timeout_ms;
    } else if (conn->reading && conn->cur && !conn->cur->headers_done) {
        phase = PHASE_HEADER, ms = srv->opt.header_timeout_ms, key = conn->req_seq;
    } else if (conn->reading && conn->cur) {
        phase = PHASE_BODY, ms = srv->opt.body_timeout_ms, key = conn->body_seen;
    } else if (conn->reading && conn->queue.len == 0 && !conn->ready) {
        if (conn->req_seq == 0) /* the first request's head: same deadline as its first byte */
            phase = PHASE_HEADER, ms = srv->opt.header_timeout_ms, key = 1;
        else
            phase = PHASE_IDLE, ms = srv->opt.idle_timeout_ms, key = conn->req_seq;
    }
    if (phase == conn->phase && key == conn->phase_key)
        return; /* the armed deadline still stands (slowloris gains nothing) */
    if (phase == PHASE_WRITE && conn->phase == PHASE_WRITE)
        return; /* progress is judged when it fires */
    conn->phase = phase;
    conn->phase_key = key;
    conn->deadline_deferred = false;
    if (!conn->timer_init) {
        if (uv_timer_init(srv->loop, &conn->timer) != 0)
            return;
        conn->timer.data = conn;
        conn->timer_init = true;
        conn->refs++; /* dropped in the timer's close callback */
    }
    if (phase == PHASE_NONE || ms == 0) {
        uv_timer_stop(&conn->timer);
        return;
    }
    conn->write_left = wq;
    /* The loop's cached time is from the start of this iteration, which may
     * have been long: a deadline counted from it would fire early. */
    uv_update_time(srv->loop);
    uv_timer_start(&conn->timer, on_deadline, ms, 0);
}

void kvd__conn_deadline_close(kvd__conn *conn, uv_close_cb cb)
{
    if (!conn->timer_init)
        return;
    conn->timer_init = false;
    uv_timer_stop(&conn->timer);
    uv_close((uv_handle_t *)&conn->timer, cb);
}
