/* server/probe.c — the --probe client: parses http://HOST[:PORT][/PATH], then
 * one GET on a non-blocking socket driven by poll() against a single deadline
 * (connect, send and the status line all share it), and judges the status
 * line alone. Each address getaddrinfo gives is tried in turn. */
#include "server/probe.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "common/clock.h"

/* Enough for any status line ("HTTP/1.1 200 OK\r\n" and a long reason); what
 * follows it is never read. */
#define STATUS_LINE_MAX 512

static int fail(char *err, size_t err_len, const char *msg, const char *url)
{
    snprintf(err, err_len, "kvd: bad --probe URL (%s): '%s'", msg, url);
    return -1;
}

int kvd__probe_parse_url(const char *url, kvd_probe_target *t, char *err, size_t err_len)
{
    memset(t, 0, sizeof *t);
    static const char scheme[] = "http://";
    if (strncmp(url, "https://", 8) == 0)
        return fail(err, err_len, "https is not supported (kvd serves plain HTTP)", url);
    if (strncmp(url, scheme, sizeof scheme - 1) != 0)
        return fail(err, err_len, "expected http://HOST[:PORT][/PATH]", url);
    const char *a = url + sizeof scheme - 1;      /* authority: HOST[:PORT] */
    const char *slash = strchr(a, '/');
    size_t auth_len = slash ? (size_t)(slash - a) : strlen(a);
    if (memchr(a, '@', auth_len))
        return fail(err, err_len, "user information is not supported", url);
    if (memchr(a, '?', auth_len) || memchr(a, '#', auth_len))
        return fail(err, err_len, "a query or fragment needs a path before it", url);
    const char *host = a, *host_end, *port = NULL;
    if (*a == '[') {
        const char *close = memchr(a, ']', auth_len);
        if (!close)
            return fail(err, err_len, "unclosed '[' in the host", url);
        host = a + 1;
        host_end = close;
        if (close + 1 < a + auth_len) {
            if (close[1] != ':')
                return fail(err, err_len, "junk after ']'", url);
            port = close + 2;
        }
    } else {
        const char *colon = memchr(a, ':', auth_len);
        host_end = colon ? colon : a + auth_len;
        if (colon)
            port = colon + 1;
    }
    size_t host_len = (size_t)(host_end - host);
    if (host_len == 0)
        return fail(err, err_len, "no host", url);
    if (host_len >= sizeof t->host)
        return fail(err, err_len, "host too long", url);
    for (size_t i = 0; i < host_len; i++)
        if (host[i] <= ' ' || host[i] > '~' || host[i] == '[' || host[i] == ']')
            return fail(err, err_len, "bad character in the host", url);
    memcpy(t->host, host, host_len);
    if (port) {
        size_t port_len = (size_t)(a + auth_len - port);
        unsigned long v = 0;
        if (port_len == 0 || port_len > 5)
            return fail(err, err_len, "port must be 1..65535", url);
        for (size_t i = 0; i < port_len; i++) {
            if (port[i] < '0' || port[i] > '9')
                return fail(err, err_len, "port must be 1..65535", url);
            v = v * 10 + (unsigned long)(port[i] - '0');
        }
        if (v == 0 || v > 65535)
            return fail(err, err_len, "port must be 1..65535", url);
        snprintf(t->port, sizeof t->port, "%lu", v);
    } else {
        strcpy(t->port, "80");
    }
    memcpy(t->host_header, a, auth_len); /* auth_len <= host_len + 2 + 1 + 5 < 264 */
    const char *path = slash ? slash : "/";
    if (strlen(path) >= sizeof t->path)
        return fail(err, err_len, "path too long", url);
    /* The path goes into the request line as it is: nothing that could end it. */
    for (const char *p = path; *p; p++)
        if (*p <= ' ' || *p > '~')
            return fail(err, err_len, "spaces or control characters in the path", url);
    strcpy(t->path, path);
    return 0;
}

/* Milliseconds left before deadline (seconds, monotonic), 0 when past. */
static int left_ms(double deadline)
{
    double left = (deadline - kvd_clock_mono()) * 1000.0;
    return left > 0 ? (int)(left + 0.999) : 0;
}

/* Waits for events on fd until deadline. Returns 1 when ready, 0 on timeout,
 * -1 on a poll error (errno). */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        int ms = left_ms(deadline);
        if (ms == 0)
            return 0;
        struct pollfd pf = {.fd = fd, .events = events};
        int n = poll(&pf, 1, ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n;
        return 1;
    }
}

/* Connects to one address. Returns the socket, or -1 with why filled. */
static int connect_one(const struct addrinfo *ai, double deadline, int timeout_ms, char *why,
                       size_t why_len)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        snprintf(why, why_len, "socket: %s", strerror(errno));
        return -1;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS) {
            snprintf(why, why_len, "cannot connect: %s", strerror(errno));
            close(fd);
            return -1;
        }
        int r = wait_fd(fd, POLLOUT, deadline);
        if (r <= 0) {
            if (r == 0)
                snprintf(why, why_len, "timed out after %d ms while connecting", timeout_ms);
            else
                snprintf(why, why_len, "poll: %s", strerror(errno));
            close(fd);
            return -1;
        }
        int soerr = 0;
        socklen_t len = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
            soerr = errno;
        if (soerr != 0) {
            snprintf(why, why_len, "cannot connect: %s", strerror(soerr));
            close(fd);
            return -1;
        }
    }
    return fd;
}

/* Sends all of buf before the deadline. Returns 0, or -1 with why filled. */
static int send_all(int fd, const char *buf, size_t len, double deadline, int timeout_ms, char *why,
                    size_t why_len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r > 0)
                continue;
            if (r == 0)
                snprintf(why, why_len, "timed out after %d ms while sending", timeout_ms);
            else
                snprintf(why, why_len, "poll: %s", strerror(errno));
            return -1;
        }
        snprintf(why, why_len, "send: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* Reads until the status line is complete. Returns its status code (100..999)
 * or -1 with why filled. */
static int read_status(int fd, double deadline, int timeout_ms, char *why, size_t why_len)
{
    char line[STATUS_LINE_MAX + 1];
    size_t len = 0;
    while (len < STATUS_LINE_MAX && !memchr(line, '\n', len)) {
        ssize_t n = recv(fd, line + len, STATUS_LINE_MAX - len, 0);
        if (n > 0) {
            len += (size_t)n;
            continue;
        }
        if (n == 0) {
            if (len == 0) {
                snprintf(why, why_len, "connection closed before any answer");
                return -1;
            }
            break; /* judge what came */
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int r = wait_fd(fd, POLLIN, deadline);
            if (r > 0)
                continue;
            if (r == 0)
                snprintf(why, why_len, "timed out after %d ms waiting for the answer", timeout_ms);
            else
                snprintf(why, why_len, "poll: %s", strerror(errno));
            return -1;
        }
        snprintf(why, why_len, "recv: %s", strerror(errno));
        return -1;
    }
    line[len] = '\0';
    /* "HTTP/1.x NNN" then a space or the end of the line. */
    if (len < 12 || strncmp(line, "HTTP/1.", 7) != 0 || line[7] < '0' || line[7] > '9' ||
        line[8] != ' ' || line[9] < '1' || line[9] > '9' || line[10] < '0' || line[10] > '9' ||
        line[11] < '0' || line[11] > '9' || (line[12] != ' ' && line[12] != '\r' && line[12] != '\n')) {
        size_t show = strcspn(line, "\r\n");
        if (show > 40)
            show = 40;
        for (size_t i = 0; i < show; i++)
            if (line[i] < ' ' || line[i] > '~')
                line[i] = '?';
        snprintf(why, why_len, "not an HTTP/1.x answer: '%.*s'", (int)show, line);
        return -1;
    }
    return (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
}

int kvd__probe_run(const kvd_probe_target *t, int timeout_ms, char *why, size_t why_len)
{
    double deadline = kvd_clock_mono() + timeout_ms / 1000.0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(t->host, t->port, &hints, &res);
    if (gai != 0) {
        snprintf(why, why_len, "cannot resolve '%s': %s", t->host, gai_strerror(gai));
        return 1;
    }
    int fd = -1;
    snprintf(why, why_len, "no address for '%s'", t->host);
    for (const struct addrinfo *ai = res; ai && fd < 0 && left_ms(deadline) > 0; ai = ai->ai_next)
        fd = connect_one(ai, deadline, timeout_ms, why, why_len);
    freeaddrinfo(res);
    if (fd < 0)
        return 1;
    char req[sizeof t->path + sizeof t->host_header + 128];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: kvd-probe/" KVD_VERSION
                     "\r\nConnection: close\r\n\r\n",
                     t->path, t->host_header);
    int status = -1;
    if (n > 0 && (size_t)n < sizeof req && send_all(fd, req, (size_t)n, deadline, timeout_ms, why, why_len) == 0)
        status = read_status(fd, deadline, timeout_ms, why, why_len);
    close(fd);
    if (status < 0)
        return 1;
    if (status < 200 || status > 299) {
        snprintf(why, why_len, "HTTP %d", status);
        return 1;
    }
    snprintf(why, why_len, "HTTP %d", status);
    return 0;
}
