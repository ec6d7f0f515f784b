/* tests/support/http_client.c — loopback sockets with poll() deadlines and a
 * small HTTP/1.1 response parser (Content-Length, chunked, or read-to-close
 * bodies). Bytes that follow one response stay in the connection's buffer,
 * which is what makes reading pipelined responses in order possible. */
#define _GNU_SOURCE
#include "tests/support/http_client.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

struct http_conn {
    int fd;
    char *buf;      /* received, not yet consumed bytes: buf[off .. len) */
    size_t off, len, cap;
    bool eof;
    bool reset;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        abort();
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *d = xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

const char *http_header_get(const http_response *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

cJSON *http_response_json(const http_response *r)
{
    if (r->status <= 0 || !r->body)
        return NULL;
    return cJSON_ParseWithLength(r->body, r->body_len);
}

void http_response_free(http_response *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_headers; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->body);
    free(r);
}

static http_response *response_failed(http_response *r, const char *fmt, ...)
{
    for (size_t i = 0; i < r->n_headers; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    r->n_headers = 0;
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
    r->status = -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
    return r;
}

char *http_format_request(const char *method, const char *path, const char *content_type,
                          const char *extra_headers, const void *body, size_t body_len, size_t *len)
{
    size_t cap = strlen(method) + strlen(path) + (content_type ? strlen(content_type) : 0) +
                 (extra_headers ? strlen(extra_headers) : 0) + body_len + 256;
    char *out = xmalloc(cap);
    int n = snprintf(out, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n", method, path);
    if (content_type)
        n += snprintf(out + n, cap - (size_t)n, "Content-Type: %s\r\n", content_type);
    if (body)
        n += snprintf(out + n, cap - (size_t)n, "Content-Length: %zu\r\n", body_len);
    if (extra_headers)
        n += snprintf(out + n, cap - (size_t)n, "%s", extra_headers);
    n += snprintf(out + n, cap - (size_t)n, "\r\n");
    if (body && body_len)
        memcpy(out + n, body, body_len);
    *len = (size_t)n + (body ? body_len : 0);
    return out;
}

http_conn *http_conn_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc;
    do {
        rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
        close(fd);
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* A server that stops reading (after a 413, say) must not hang a send. */
    struct timeval tv = {HTTP_TIMEOUT_MS / 1000, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    http_conn *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->fd = fd;
    return c;
}

int http_conn_send(http_conn *c, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads more bytes into the buffer before the deadline. Returns the byte
 * count, 0 on EOF/reset, -1 on timeout. */
static ssize_t fill(http_conn *c, long long deadline)
{
    if (c->eof)
        return 0;
    if (c->off > 0 && c->off == c->len)
        c->off = c->len = 0;
    if (c->cap - c->len < 16384) {
        if (c->off > 0) {
            memmove(c->buf, c->buf + c->off, c->len - c->off);
            c->len -= c->off;
            c->off = 0;
        }
        if (c->cap - c->len < 16384) {
            size_t cap = c->cap ? c->cap * 2 : 65536;
            char *nb = realloc(c->buf, cap);
            if (!nb)
                abort();
            c->buf = nb;
            c->cap = cap;
        }
    }
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return -1;
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            return -1;
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            c->eof = true;
            c->reset = n < 0;
            return 0;
        }
        c->len += (size_t)n;
        return n;
    }
}

static const char *find_crlf(const char *s, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++)
        if (s[i] == '\r' && s[i + 1] == '\n')
            return s + i;
    return NULL;
}

/* Ensures at least `need` unconsumed bytes. Returns 0 or -1. */
static int need_bytes(http_conn *c, size_t need, long long deadline)
{
    while (c->len - c->off < need)
        if (fill(c, deadline) <= 0)
            return -1;
    return 0;
}

/* Reads one CRLF-terminated line (without CRLF) into a malloc'd string. */
static char *read_line(http_conn *c, long long deadline)
{
    for (;;) {
        const char *e = find_crlf(c->buf + c->off, c->len - c->off);
        if (e) {
            size_t n = (size_t)(e - (c->buf + c->off));
            char *line = xstrndup(c->buf + c->off, n);
            c->off += n + 2;
            return line;
        }
        if (fill(c, deadline) <= 0)
            return NULL;
    }
}

static void body_append(http_response *r, size_t *cap, const char *data, size_t n)
{
    if (r->body_len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 1024;
        while (r->body_len + n + 1 > nc)
            nc *= 2;
        char *nb = realloc(r->body, nc);
        if (!nb)
            abort();
        r->body = nb;
        *cap = nc;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
}

http_response *http_conn_read(http_conn *c, int timeout_ms)
{
    http_response *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    long long deadline = now_ms() + timeout_ms;

    char *line = read_line(c, deadline);
    if (!line)
        return response_failed(r, c->eof ? "connection closed before a response" : "timeout waiting for a response");
    int status = 0;
    if (strncmp(line, "HTTP/1.", 7) != 0 || sscanf(line + 8, " %3d", &status) != 1 || status < 100) {
        response_failed(r, "bad status line '%.60s'", line);
        free(line);
        return r;
    }
    free(line);
    for (;;) {
        line = read_line(c, deadline);
        if (!line)
            return response_failed(r, "headers incomplete");
        if (!*line) {
            free(line);
            break;
        }
        char *colon = strchr(line, ':');
        if (!colon || r->n_headers == HTTP_MAX_HEADERS) {
            free(line);
            return response_failed(r, "bad header line or too many headers");
        }
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t vl = strlen(v);
        while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            vl--;
        r->headers[r->n_headers].name = xstrndup(line, (size_t)(colon - line));
        r->headers[r->n_headers].value = xstrndup(v, vl);
        r->n_headers++;
        free(line);
    }
    r->status = status;
    size_t cap = 0;
    body_append(r, &cap, "", 0);

    const char *te = http_header_get(r, "Transfer-Encoding");
    const char *cl = http_header_get(r, "Content-Length");
    if (status < 200 || status == 204 || status == 304)
        return r;
    if (te && strcasecmp(te, "chunked") == 0) {
        for (;;) {
            line = read_line(c, deadline);
            if (!line)
                return response_failed(r, "chunk size line incomplete");
            char *end;
            unsigned long long size = strtoull(line, &end, 16);
            bool ok = end != line;
            free(line);
            if (!ok)
                return response_failed(r, "bad chunk size");
            if (size == 0) {
                for (;;) { /* trailers until the empty line */
                    line = read_line(c, deadline);
                    if (!line)
                        return response_failed(r, "chunked trailer incomplete");
                    bool empty = !*line;
                    free(line);
                    if (empty)
                        return r;
                }
            }
            if (need_bytes(c, (size_t)size + 2, deadline) != 0)
                return response_failed(r, "chunk incomplete");
            body_append(r, &cap, c->buf + c->off, (size_t)size);
            c->off += (size_t)size + 2;
        }
    }
    if (cl) {
        char *end;
        unsigned long long n = strtoull(cl, &end, 10);
        if (end == cl || *end)
            return response_failed(r, "bad Content-Length '%s'", cl);
        if (need_bytes(c, (size_t)n, deadline) != 0)
            return response_failed(r, "body incomplete (%zu of %llu bytes)", c->len - c->off, n);
        body_append(r, &cap, c->buf + c->off, (size_t)n);
        c->off += (size_t)n;
        return r;
    }
    /* No length: the body runs to the close. */
    for (;;) {
        body_append(r, &cap, c->buf + c->off, c->len - c->off);
        c->off = c->len;
        ssize_t n = fill(c, deadline);
        if (n == 0)
            return r;
        if (n < 0)
            return response_failed(r, "timeout reading a close-delimited body");
    }
}

int http_conn_wait_closed(http_conn *c, int timeout_ms)
{
    if (c->len > c->off)
        return -1;
    long long deadline = now_ms() + timeout_ms;
    ssize_t n = fill(c, deadline);
    if (n == 0)
        return 1;
    if (n < 0)
        return 0;
    return -1;
}

void http_conn_close(http_conn *c)
{
    if (!c)
        return;
    close(c->fd);
    free(c->buf);
    free(c);
}

http_response *http_raw(int port, const void *data, size_t len)
{
    http_conn *c = http_conn_open(port);
    if (!c) {
        http_response *r = calloc(1, sizeof *r);
        if (!r)
            abort();
        return response_failed(r, "connect to port %d failed", port);
    }
    http_response *r;
    if (http_conn_send(c, data, len) != 0) {
        /* The server may answer (413, 400) and close before reading all of
         * a large or bad request: the response is still readable. */
    }
    r = http_conn_read(c, HTTP_TIMEOUT_MS);
    http_conn_close(c);
    return r;
}

http_response *http_request_n(int port, const char *method, const char *path, const char *content_type,
                              const void *body, size_t body_len, const char *extra_headers)
{
    size_t len;
    char *raw = http_format_request(method, path, content_type, extra_headers, body, body_len, &len);
    http_response *r = http_raw(port, raw, len);
    free(raw);
    return r;
}

http_response *http_request(int port, const char *method, const char *path, const char *content_type,
                            const char *body)
{
    return http_request_n(port, method, path, content_type, body, body ? strlen(body) : 0, NULL);
}
