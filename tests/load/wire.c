/* tests/load/wire.c — the soak generator's side of one keep-alive connection:
 * a non-blocking connect to 127.0.0.1, writing a request as the socket takes
 * it, and reading one response (status line, Content-Length, Connection) into
 * the client's buffer. kvd answers with Content-Length and never pipelines
 * for us (one request at a time per connection), so that is all it needs. */
#include "tests/load/load.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

void wire_watch(client *c, bool want_out)
{
    if (c->watch_out == want_out)
        return;
    c->watch_out = want_out;
    struct epoll_event ev = {.events = want_out ? EPOLLOUT : EPOLLIN, .data.ptr = c};
    if (epoll_ctl(S.epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
        perror("soak: epoll_ctl");
        abort();
    }
}

int wire_connect(client *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fprintf(stderr, "soak: socket: %s\n", strerror(errno));
        S.conn_errors++;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)S.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->in_len = 0;
    S.conns_opened++;
    int rc = connect(c->fd, (struct sockaddr *)&a, sizeof a);
    if (rc != 0 && errno != EINPROGRESS) {
        fprintf(stderr, "soak: connect: %s\n", strerror(errno));
        S.conn_errors++;
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(S.epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        perror("soak: epoll_ctl add");
        abort();
    }
    c->watch_out = true;
    c->st = ST_CONNECTING;
    return 0;
}

void wire_close(client *c)
{
    if (c->fd >= 0) {
        epoll_ctl(S.epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->st = ST_OFF;
    c->in_len = 0;
}

int wire_send(client *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        fprintf(stderr, "soak: client %d: send: %s\n", c->idx, n < 0 ? strerror(errno) : "closed");
        return -1;
    }
    return 1;
}

/* Bytes of the head (up to and including the blank line), or 0 if incomplete. */
static size_t head_len(const char *s, size_t n)
{
    for (size_t i = 3; i < n; i++)
        if (s[i] == '\n' && s[i - 1] == '\r' && s[i - 2] == '\n' && s[i - 3] == '\r')
            return i + 1;
    return 0;
}

static size_t resp_total; /* head + body of the response just returned */

int wire_read(client *c, int *status, const char **body, size_t *body_len, bool *close_after)
{
    for (;;) {
        if (c->in_cap - c->in_len < 65536) {
            c->in_cap = c->in_cap ? c->in_cap * 2 : 131072;
            c->in = realloc(c->in, c->in_cap);
            if (!c->in)
                abort();
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len - 1, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            if ((size_t)n < c->in_cap - c->in_len - 1)
                break; /* drained for now */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        fprintf(stderr, "soak: client %d: %s while awaiting a %s answer (%zu bytes in, %.1f s into the run, "
                "%.2f s after sending)\n", c->idx, n == 0 ? "EOF" : strerror(errno), soak_kind_name[c->kind],
                c->in_len, soak_now() - S.t0, soak_now() - c->t_start);
        return -1;
    }
    c->in[c->in_len] = '\0';
    size_t hl = head_len(c->in, c->in_len);
    if (hl == 0)
        return 0;
    int st = 0;
    if (sscanf(c->in, "HTTP/1.1 %d", &st) != 1) {
        fprintf(stderr, "soak: client %d: malformed status line\n", c->idx);
        return -1;
    }
    size_t clen = 0;
    bool have_len = false, closing = false;
    for (const char *line = strstr(c->in, "\r\n") + 2; line < c->in + hl - 2;) {
        const char *eol = strstr(line, "\r\n");
        if (strncasecmp(line, "content-length:", 15) == 0) {
            clen = strtoul(line + 15, NULL, 10);
            have_len = true;
        } else if (strncasecmp(line, "connection:", 11) == 0) {
            const char *v = line + 11;
            while (*v == ' ')
                v++;
            closing = strncasecmp(v, "close", 5) == 0;
        }
        line = eol + 2;
    }
    if (!have_len) {
        fprintf(stderr, "soak: client %d: a response without Content-Length\n", c->idx);
        return -1;
    }
    if (c->in_len < hl + clen)
        return 0;
    /* NUL-terminate the body in place; the byte after it is either free
     * buffer space or the next response's first byte, restored on consume. */
    resp_total = hl + clen;
    *status = st;
    *body = c->in + hl;
    *body_len = clen;
    *close_after = closing;
    if (c->in_len == resp_total)
        c->in[resp_total] = '\0';
    return 1;
}

void wire_consume(client *c)
{
    if (resp_total > c->in_len)
        resp_total = c->in_len;
    memmove(c->in, c->in + resp_total, c->in_len - resp_total);
    c->in_len -= resp_total;
    resp_total = 0;
}
