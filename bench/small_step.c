/* bench/small_step.c — the small-step hot path over loopback (issue 9 part 5):
 * a C client on one keep-alive connection, concurrency 1, sends N decode
 * steps (8 heads, d = 64, n ~ 1k, b64 in; b64 and then JSON out) and reports
 * the p50/p99 round trip next to the server's own step time (from
 * kvd_step_duration_seconds: parse + attention on the worker), then /healthz
 * round trips, and /healthz against nginx serving a static 200 if nginx runs.
 * Usage: bench_small_step [--port P | --kvd PATH] [--n N] [--no-nginx]. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"

#define HEADS 8
#define HEAD_DIM 64
#define CONTEXT 1024
#define ROW (HEADS * HEAD_DIM)

static char *rbuf;
static size_t rcap = 1 << 22;

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* One exchange; returns the status, the body in rbuf (NUL-terminated). */
static int exchange(int fd, const char *method, const char *path, const char *body,
                    const char **out_body)
{
    static char head[512];
    size_t blen = body ? strlen(body) : 0;
    int hl = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      method, path, blen);
    if (send_all(fd, head, (size_t)hl) != 0 || (blen && send_all(fd, body, blen) != 0))
        return -1;
    size_t have = 0;
    char *end = NULL;
    for (;;) {
        ssize_t k = read(fd, rbuf + have, rcap - 1 - have);
        if (k <= 0)
            return -1;
        have += (size_t)k;
        rbuf[have] = '\0';
        if ((end = strstr(rbuf, "\r\n\r\n")))
            break;
    }
    int status = atoi(rbuf + 9);
    const char *cl = strcasestr(rbuf, "content-length:");
    size_t len = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
    size_t hdr = (size_t)(end + 4 - rbuf);
    while (have < hdr + len) {
        ssize_t k = read(fd, rbuf + have, rcap - 1 - have);
        if (k <= 0)
            return -1;
        have += (size_t)k;
    }
    rbuf[hdr + len] = '\0';
    if (out_body)
        *out_body = rbuf + hdr;
    return status;
}

static void b64(const float *x, size_t n, char *out)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *b = (const unsigned char *)x;
    size_t nb = n * 4, i = 0;
    char *p = out;
    for (; i + 3 <= nb; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)b[i + 1] << 8 | b[i + 2];
        *p++ = al[v >> 18], *p++ = al[(v >> 12) & 63], *p++ = al[(v >> 6) & 63], *p++ = al[v & 63];
    }
    if (nb - i == 1) {
        uint32_t v = (uint32_t)b[i] << 16;
        *p++ = al[v >> 18], *p++ = al[(v >> 12) & 63], *p++ = '=', *p++ = '=';
    } else if (nb - i == 2) {
        uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)b[i + 1] << 8;
        *p++ = al[v >> 18], *p++ = al[(v >> 12) & 63], *p++ = al[(v >> 6) & 63], *p++ = '=';
    }
    *p = '\0';
}

/* kvd_step_duration_seconds{attention="standard"} sum and count. */
static void step_metric(int fd, double *sum, double *count)
{
    const char *b = NULL;
    *sum = *count = 0;
    if (exchange(fd, "GET", "/metrics", NULL, &b) != 200)
        return;
    const char *s = strstr(b, "kvd_step_duration_seconds_sum{attention=\"standard\"}");
    const char *c = strstr(b, "kvd_step_duration_seconds_count{attention=\"standard\"}");
    if (s)
        *sum = strtod(strchr(s, '}') + 1, NULL);
    if (c)
        *count = strtod(strchr(c, '}') + 1, NULL);
}

static void report(const char *what, double *t, int n, double server_us)
{
    qsort(t, (size_t)n, sizeof *t, bench_cmp_double);
    double total = 0;
    for (int i = 0; i < n; i++)
        total += t[i];
    printf("%-28s p50 %8.1f us  p99 %8.1f us  %9.0f req/s", what, t[n / 2] * 1e6,
           t[(int)(n * 0.99)] * 1e6, n / total);
    if (server_us > 0)
        printf("  server step %6.1f us  (p50 - step %+.1f us)", server_us, t[n / 2] * 1e6 - server_us);
    printf("\n");
}

#define PER_SESSION 128 /* steps per session: the context stays 1024..1152 */

/* Creates a session and prefills CONTEXT tokens (8 steps of k, v, no q);
 * its step path into path. */
static int new_session(int fd, char *path, size_t plen, char *body, size_t blen, const char *kb)
{
    const char *b = NULL;
    char create[128];
    snprintf(create, sizeof create, "{\"layers\":1,\"heads\":%d,\"kv_heads\":%d,\"head_dim\":%d}", HEADS,
             HEADS, HEAD_DIM);
    if (exchange(fd, "POST", "/v1/sessions", create, &b) != 201) {
        fprintf(stderr, "create: %s\n", b ? b : "?");
        return -1;
    }
    const char *id = strstr(b, "\"id\":\"");
    snprintf(path, plen, "/v1/sessions/%.*s/step", (int)strcspn(id + 6, "\""), id + 6);
    for (int i = 0; i < 8; i++) {
        snprintf(body, blen, "{\"k\":\"b64:%s\",\"v\":\"b64:%s\"}", kb, kb);
        if (exchange(fd, "POST", path, body, &b) != 200) {
            fprintf(stderr, "prefill: %s\n", b ? b : "?");
            return -1;
        }
    }
    return 0;
}

static void delete_session(int fd, const char *path)
{
    char p[256];
    snprintf(p, sizeof p, "%.*s", (int)(strlen(path) - 5), path); /* without "/step" */
    exchange(fd, "DELETE", p, NULL, NULL);
}

static int run_steps(int fd, const char *enc, int n, double *t, char *body, size_t blen, const float *x,
                     const char *prefill)
{
    static char kb[ROW * 6], qb[ROW * 6];
    static char paths[64][256];
    const int ns = (n + PER_SESSION - 1) / PER_SESSION;
    if (ns > 64)
        return -1;
    for (int s = 0; s < ns; s++)
        if (new_session(fd, paths[s], sizeof paths[s], body, blen, prefill) != 0)
            return -1;
    double s0, c0, s1, c1;
    step_metric(fd, &s0, &c0);
    for (int i = 0; i < n; i++) {
        b64(x + (i % 64) * ROW, ROW, kb);
        b64(x + ((i + 7) % 64) * ROW, ROW, qb);
        snprintf(body, blen, "{\"k\":\"b64:%s\",\"v\":\"b64:%s\",\"q\":\"b64:%s\",\"encoding\":\"%s\"}", kb, kb,
                 qb, enc);
        double a = bench_now();
        const char *rb = NULL;
        int st = exchange(fd, "POST", paths[i / PER_SESSION], body, &rb);
        t[i] = bench_now() - a;
        if (st != 200) {
            fprintf(stderr, "step: HTTP %d %s\n", st, rb ? rb : "");
            return -1;
        }
    }
    step_metric(fd, &s1, &c1);
    for (int s = 0; s < ns; s++)
        delete_session(fd, paths[s]);
    char what[64];
    snprintf(what, sizeof what, "decode step, b64 -> %s", enc);
    report(what, t, n, c1 > c0 ? (s1 - s0) / (c1 - c0) * 1e6 : 0);
    return 0;
}

static void healthz(int port, const char *what, int n, double *t)
{
    int fd = bench_dial_loopback(port);
    if (fd < 0) {
        printf("%s: cannot connect\n", what);
        return;
    }
    for (int i = 0; i < n; i++) {
        double a = bench_now();
        int st = exchange(fd, "GET", "/healthz", NULL, NULL);
        if (st != 200) {
            printf("%s: HTTP %d\n", what, st);
            close(fd);
            return;
        }
        t[i] = bench_now() - a;
    }
    close(fd);
    report(what, t, n, 0);
}

/* kvd's stderr (its access log too) goes to a file, never a pipe nobody
 * drains; the port is read from its "listening on" line. */
static pid_t start_kvd(const char *exe, int *port)
{
    char log[128];
    snprintf(log, sizeof log, "/tmp/kvd_bench_small_step_%d.log", (int)getpid());
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "w", stderr))
            _exit(127);
        execl(exe, exe, "--port", "0", "--memory", "512MiB", (char *)NULL);
        _exit(127);
    }
    *port = 0;
    for (int i = 0; i < 200 && !*port; i++) {
        usleep(20000);
        FILE *f = fopen(log, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f)) {
            const char *u = strstr(line, "listening on http://");
            if (u && (u = strrchr(u, ':')))
                *port = atoi(u + 1);
        }
        if (f)
            fclose(f);
    }
    return pid;
}

static pid_t start_nginx(int *port)
{
    *port = 20000 + (int)(getpid() % 10000); /* below the ephemeral range */
    char conf[256];
    snprintf(conf, sizeof conf, "/tmp/kvd_bench_nginx_%d.conf", (int)getpid());
    FILE *f = fopen(conf, "w");
    if (!f)
        return -1;
    fprintf(f,
            "daemon off; master_process off; worker_processes 1; error_log /dev/null; "
            "pid /tmp/kvd_bench_nginx_%d.pid;\n"
            "events { worker_connections 64; }\n"
            "http { access_log off; keepalive_requests 1000000; client_body_temp_path /tmp; proxy_temp_path /tmp; fastcgi_temp_path /tmp; "
            "uwsgi_temp_path /tmp; scgi_temp_path /tmp;\n"
            "  server { listen 127.0.0.1:%d; location / { return 200 \"ok\\n\"; } } }\n",
            (int)getpid(), *port);
    fclose(f);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr))
            _exit(127);
        execlp("nginx", "nginx", "-c", conf, "-p", "/tmp", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 150; i++) {
        int fd = bench_dial_loopback(*port);
        if (fd >= 0) {
            close(fd);
            return pid;
        }
        usleep(20000);
    }
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    return -1;
}

int main(int argc, char **argv)
{
    int port = 0, n = 2000, nginx = 1;
    char exe[1024];
    snprintf(exe, sizeof exe, "%s", argv[0]);
    char *slash = strrchr(exe, '/');
    snprintf(slash ? slash + 1 : exe, sizeof exe - (size_t)(slash ? slash + 1 - exe : 0), "kvd");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--kvd") && i + 1 < argc)
            snprintf(exe, sizeof exe, "%s", argv[++i]);
        else if (!strcmp(argv[i], "--n") && i + 1 < argc)
            n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-nginx"))
            nginx = 0;
        else {
            fprintf(stderr, "usage: %s [--port P | --kvd PATH] [--n N] [--no-nginx]\n", argv[0]);
            return 2;
        }
    }
    if (n < 100)
        n = 100;
    if (n > 64 * PER_SESSION)
        n = 64 * PER_SESSION;
    signal(SIGPIPE, SIG_IGN);
    rbuf = malloc(rcap);
    pid_t kvd = -1;
    if (!port) {
        kvd = start_kvd(exe, &port);
        if (!port) {
            fprintf(stderr, "cannot start %s\n", exe);
            return 1;
        }
    }
    int fd = bench_dial_loopback(port);
    if (fd < 0) {
        fprintf(stderr, "cannot connect to port %d\n", port);
        return 1;
    }
    const size_t chunk = CONTEXT / 8;
    float *x = malloc(chunk * ROW * sizeof(float));
    uint32_t r = 12345;
    for (size_t i = 0; i < chunk * ROW; i++) {
        r = r * 1664525u + 1013904223u;
        x[i] = (float)(r >> 8) / 16777216.0f - 0.5f;
    }
    const size_t blen = chunk * ROW * 14;
    char *kb = malloc(chunk * ROW * 6), *body = malloc(blen);
    b64(x, chunk * ROW, kb);
    double *t = malloc((size_t)n * 5 * sizeof *t);
    printf("small step: %d heads, head_dim %d, context %d..%d tokens (a fresh session every %d steps), %d steps, "
           "concurrency 1, one keep-alive connection\n",
           HEADS, HEAD_DIM, CONTEXT, CONTEXT + PER_SESSION, PER_SESSION, n);
    int rc = 0;
    /* Warm up, then measure. */
    if (run_steps(fd, "b64", 100, t, body, blen, x, kb) != 0 || run_steps(fd, "b64", n, t, body, blen, x, kb) != 0
        || run_steps(fd, "json", n, t, body, blen, x, kb) != 0)
        rc = 1;
    close(fd);
    if (!rc)
        healthz(port, "/healthz kvd", n * 5, t);
    if (!rc && nginx) {
        int np = 0;
        pid_t ng = start_nginx(&np);
        if (ng > 0) {
            healthz(np, "/healthz nginx (static 200)", n * 5, t);
            kill(ng, SIGTERM);
            waitpid(ng, NULL, 0);
        } else {
            printf("nginx: not started (not installed or port busy)\n");
        }
    }
    if (kvd > 0) {
        kill(kvd, SIGTERM);
        waitpid(kvd, NULL, 0);
    }
    free(x), free(kb), free(body), free(t), free(rbuf);
    return rc;
}
