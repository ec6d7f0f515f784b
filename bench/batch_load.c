/* bench/batch_load.c — a decode iteration of S sessions x L layers against a
 * kvd on loopback, sent as L POST /v1/batch requests (one per layer, S items
 * each) and as S*L single steps (per layer, S requests over C keep-alive
 * connections, layers in sequence as a model runs them), the two forms
 * alternating iteration by iteration (so a shared machine's load drifts over
 * both alike): tokens/s and p50/p99 per iteration for both, and the server's
 * split from /metrics deltas around each form's iterations.
 * Usage: bench_batch_load [--port P] [--sessions 64] [--layers 32]
 *   [--prefill 256] [--iters 9] [--conns 4]. Without --port it starts the kvd
 * next to this program (build/kvd) on a free loopback port and stops it. */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"

#define HEADS 8
#define KV_HEADS 2
#define HEAD_DIM 64

static int port = 0, n_sessions = 64, n_layers = 32, prefill = 256, iters = 9, n_conns = 4;
static char (*ids)[80];

static void die(const char *msg)
{
    fprintf(stderr, "batch_load: %s (%s)\n", msg, strerror(errno));
    exit(1);
}

/* One request on a keep-alive connection; returns the status, body in *out
 * (malloc'd, NUL-terminated) if out. */
static int request(int fd, const char *method, const char *path, const char *body, char **out)
{
    size_t blen = body ? strlen(body) : 0;
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      method, path, blen);
    if (write(fd, head, (size_t)hn) != hn)
        die("write");
    for (size_t off = 0; off < blen;) {
        ssize_t w = write(fd, body + off, blen - off);
        if (w <= 0)
            die("write body");
        off += (size_t)w;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    char *end = NULL;
    while (!end) {
        if (len + 1 >= cap)
            buf = realloc(buf, cap *= 2);
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r <= 0)
            die("read");
        len += (size_t)r;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    int status = atoi(buf + 9);
    const char *cl = strcasestr(buf, "Content-Length:");
    size_t clen = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
    size_t hlen = (size_t)(end + 4 - buf);
    if (hlen + clen + 1 > cap)
        buf = realloc(buf, cap = hlen + clen + 1);
    while (len < hlen + clen) {
        ssize_t r = read(fd, buf + len, hlen + clen - len);
        if (r <= 0)
            die("read body");
        len += (size_t)r;
    }
    buf[len] = '\0';
    if (out) {
        *out = strdup(buf + hlen);
    }
    free(buf);
    return status;
}

static const char b64c[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* "b64:..." of n pseudo-random f32 in [-1, 1) (caller frees). */
static char *b64_tensor(size_t n, unsigned seed)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
    const unsigned char *b = (const unsigned char *)x;
    size_t nb = n * 4;
    char *s = malloc(4 + (nb + 2) / 3 * 4 + 1), *p = s;
    memcpy(p, "b64:", 4);
    p += 4;
    for (size_t i = 0; i < nb; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16 | (i + 1 < nb ? (uint32_t)b[i + 1] << 8 : 0) |
                     (i + 2 < nb ? b[i + 2] : 0);
        *p++ = b64c[v >> 18 & 63];
        *p++ = b64c[v >> 12 & 63];
        *p++ = i + 1 < nb ? b64c[v >> 6 & 63] : '=';
        *p++ = i + 2 < nb ? b64c[v & 63] : '=';
    }
    *p = '\0';
    free(x);
    return s;
}

/* An entry's members: m tokens of k, v and (if q) one query. */
static char *entry(int layer, size_t m, bool q, unsigned seed)
{
    char *k = b64_tensor(m * KV_HEADS * HEAD_DIM, seed), *v = b64_tensor(m * KV_HEADS * HEAD_DIM, seed + 1);
    char *qq = q ? b64_tensor(HEADS * HEAD_DIM, seed + 2) : NULL;
    size_t n = strlen(k) + strlen(v) + (qq ? strlen(qq) : 0) + 64;
    char *s = malloc(n);
    snprintf(s, n, "\"layer\":%d,\"k\":\"%s\",\"v\":\"%s\"%s%s%s", layer, k, v, qq ? ",\"q\":\"" : "",
             qq ? qq : "", qq ? "\"" : "");
    free(k), free(v), free(qq);
    return s;
}

/* {"steps": [{"session", entry} x sessions]} of one layer. */
static char *batch_body(char **entries)
{
    size_t n = 64;
    for (int s = 0; s < n_sessions; s++)
        n += strlen(entries[s]) + 64;
    char *b = malloc(n), *p = b;
    p += sprintf(p, "{\"encoding\":\"b64\",\"steps\":[");
    for (int s = 0; s < n_sessions; s++)
        p += sprintf(p, "%s{\"session\":\"%s\",%s}", s ? "," : "", ids[s], entries[s]);
    strcpy(p, "]}");
    return b;
}

static void check_items(const char *out, int layer)
{
    int ok = 0;
    for (const char *p = out; (p = strstr(p, "\"status\":200")); p++)
        ok++;
    if (ok != n_sessions) {
        fprintf(stderr, "batch_load: layer %d: %d of %d items ok: %.300s\n", layer, ok, n_sessions, out);
        exit(1);
    }
}

/* The single-step side: connection c owns sessions c, c + C, ...; a barrier
 * per layer keeps layers in sequence. */
typedef struct {
    int c, fd;
    char **single; /* [session] body of this layer */
} worker;
static pthread_barrier_t bar_start, bar_done;
static char **single_bodies; /* [layer * sessions + s] */
static volatile int stop_workers;

static void *single_worker(void *arg)
{
    worker *w = arg;
    for (;;) {
        pthread_barrier_wait(&bar_start);
        if (stop_workers)
            return NULL;
        for (int l = 0; l < n_layers; l++) {
            for (int s = w->c; s < n_sessions; s += n_conns) {
                char path[128], *out;
                snprintf(path, sizeof path, "/v1/sessions/%s/step", ids[s]);
                int st = request(w->fd, "POST", path, single_bodies[l * n_sessions + s], &out);
                if (st != 200) {
                    fprintf(stderr, "batch_load: single step %d: %.300s\n", st, out);
                    exit(1);
                }
                free(out);
            }
            pthread_barrier_wait(&bar_done); /* layer l done by everyone */
            pthread_barrier_wait(&bar_done);
        }
    }
}

static double metric(const char *text, const char *name, const char *labels)
{
    double sum = 0;
    size_t nl = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, nl) != 0 || (p[nl] != ' ' && p[nl] != '{'))
            continue;
        const char *eol = strchr(p, '\n');
        const char *sp = eol ? memrchr(p, ' ', (size_t)(eol - p)) : strrchr(p, ' ');
        if (labels) {
            const char *l = strstr(p, labels);
            if (!l || (eol && l > eol))
                continue;
        }
        sum += strtod(sp + 1, NULL);
    }
    return sum;
}

static char *metrics(int fd)
{
    char *out;
    request(fd, "GET", "/metrics", NULL, &out);
    return out;
}

static double delta(const char *before, const char *after, const char *name, const char *labels)
{
    return metric(after, name, labels) - metric(before, name, labels);
}

/* kvd's time from /metrics deltas: per request (arrival to answer) and by
 * phase (kvd_step_phase_seconds: totals over every entry, summed over the
 * worker threads, so they can exceed the wall time). sum[0] is the request
 * time, sum[1..4] the phases, each added up over one form's iterations. */
static const char *const phases[] = {"parse", "queue", "attend", "render"};

static void split_add(const char *before, const char *after, const char *route, double sum[5])
{
    char lab[64];
    snprintf(lab, sizeof lab, "route=\"%s\"", route);
    sum[0] += delta(before, after, "kvd_http_request_duration_seconds_sum", lab);
    for (int i = 0; i < 4; i++) {
        snprintf(lab, sizeof lab, "phase=\"%s\"", phases[i]);
        sum[1 + i] += delta(before, after, "kvd_step_phase_seconds_sum", lab);
    }
}

static void split(const double sum[5], int requests, double entries)
{
    printf("  kvd: %d requests, %.2f ms per request (arrival to answer); per entry:", requests,
           1e3 * sum[0] / requests);
    for (int i = 0; i < 4; i++)
        printf(" %s %.1f us%s", phases[i], 1e6 * sum[1 + i] / entries, i < 3 ? "," : "\n");
}

static double sum_of(const double *t, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += t[i];
    return s;
}

static void report(const char *what, double *t, int n)
{
    double tok = 0;
    for (int i = 0; i < n; i++)
        tok += t[i];
    tok = (double)n_sessions * n / tok;
    qsort(t, (size_t)n, sizeof *t, bench_cmp_double);
    const int p99 = (int)((n - 1) * 0.99 + 0.5);
    printf("%-26s %8.1f tokens/s   p50 %8.2f ms   p99 %8.2f ms per iteration\n", what, tok, 1e3 * t[n / 2],
           1e3 * t[p99]);
}

static pid_t start_kvd(const char *self)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || getsockname(fd, (struct sockaddr *)&a, &al))
        die("free port");
    port = ntohs(a.sin_port);
    close(fd);
    char bin[4096], ps[16];
    snprintf(bin, sizeof bin, "%s", self);
    char *slash = strrchr(bin, '/');
    snprintf(slash ? slash + 1 : bin, sizeof bin - (size_t)(slash ? slash + 1 - bin : 0), "kvd");
    snprintf(ps, sizeof ps, "%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY); /* its access log would drown the report */
        if (null >= 0)
            dup2(null, 2);
        execl(bin, bin, "--host", "127.0.0.1", "--port", ps, "--memory", "1GiB",
              (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        int c = bench_dial_loopback(port);
        if (c >= 0) {
            close(c);
            return pid;
        }
        usleep(20000);
    }
    die("kvd did not start");
    return -1;
}

int main(int argc, char **argv)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--port"))
            port = v;
        else if (!strcmp(argv[i], "--sessions"))
            n_sessions = v;
        else if (!strcmp(argv[i], "--layers"))
            n_layers = v;
        else if (!strcmp(argv[i], "--prefill"))
            prefill = v;
        else if (!strcmp(argv[i], "--iters"))
            iters = v;
        else if (!strcmp(argv[i], "--conns"))
            n_conns = v;
    }
    if (n_sessions < 1 || n_layers < 1 || prefill < 0 || iters < 1 || n_conns < 1 || n_conns > n_sessions) {
        fprintf(stderr, "batch_load: bad arguments\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    pid_t kvd = port ? 0 : start_kvd(argv[0]);

    char cpu[256];
    bench_cpu_model(cpu, sizeof cpu);
    printf("batch_load: %d sessions x %d layers, %d heads / %d kv heads, d %d, prefill %d, b64; "
           "%ld CPUs: %s; kvd on 127.0.0.1:%d\n",
           n_sessions, n_layers, HEADS, KV_HEADS, HEAD_DIM, prefill, sysconf(_SC_NPROCESSORS_ONLN), cpu, port);

    int fd = bench_dial_loopback(port);
    if (fd < 0)
        die("connect");
    ids = calloc((size_t)n_sessions, sizeof *ids);
    char create[128];
    snprintf(create, sizeof create, "{\"layers\":%d,\"heads\":%d,\"kv_heads\":%d,\"head_dim\":%d}", n_layers,
             HEADS, KV_HEADS, HEAD_DIM);
    for (int s = 0; s < n_sessions; s++) {
        char *out;
        if (request(fd, "POST", "/v1/sessions", create, &out) != 201)
            die(out);
        char *p = strstr(out, "\"id\":\"");
        snprintf(ids[s], sizeof ids[s], "%.*s", (int)strcspn(p + 6, "\""), p + 6);
        free(out);
    }
    /* Prefill, one batch per layer. */
    char **entries = calloc((size_t)n_sessions, sizeof *entries);
    for (int l = 0; prefill > 0 && l < n_layers; l++) {
        for (int s = 0; s < n_sessions; s++)
            entries[s] = entry(l, (size_t)prefill, false, (unsigned)(l * 1000 + s));
        char *b = batch_body(entries), *out;
        int st = request(fd, "POST", "/v1/batch", b, &out);
        if (st != 200)
            die(out);
        check_items(out, l);
        free(out), free(b);
        for (int s = 0; s < n_sessions; s++)
            free(entries[s]);
    }
    /* One decode token's bodies, reused by every iteration (each appends). */
    char **batches = calloc((size_t)n_layers, sizeof *batches);
    single_bodies = calloc((size_t)(n_layers * n_sessions), sizeof *single_bodies);
    for (int l = 0; l < n_layers; l++) {
        for (int s = 0; s < n_sessions; s++) {
            entries[s] = entry(l, 1, true, (unsigned)(7 + l * 1000 + s));
            size_t n = strlen(entries[s]) + 32;
            single_bodies[l * n_sessions + s] = malloc(n);
            snprintf(single_bodies[l * n_sessions + s], n, "{%s,\"encoding\":\"b64\"}", entries[s]);
        }
        batches[l] = batch_body(entries);
        for (int s = 0; s < n_sessions; s++)
            free(entries[s]);
    }

    /* The single steps' connections, parked at the start barrier. */
    double *tb = calloc((size_t)iters, sizeof *tb), *ts = calloc((size_t)iters, sizeof *ts);
    pthread_barrier_init(&bar_start, NULL, (unsigned)n_conns + 1);
    pthread_barrier_init(&bar_done, NULL, (unsigned)n_conns + 1);
    worker *w = calloc((size_t)n_conns, sizeof *w);
    pthread_t *th = calloc((size_t)n_conns, sizeof *th);
    for (int c = 0; c < n_conns; c++) {
        w[c].c = c;
        if ((w[c].fd = bench_dial_loopback(port)) < 0)
            die("connect");
        pthread_create(&th[c], NULL, single_worker, &w[c]);
    }
    /* Iterations alternate: one as batches, one as single steps. */
    double sb[5] = {0}, ss[5] = {0};
    for (int it = 0; it < iters; it++) {
        char *m0 = metrics(fd);
        double t0 = bench_now();
        for (int l = 0; l < n_layers; l++) {
            char *out;
            if (request(fd, "POST", "/v1/batch", batches[l], &out) != 200)
                die(out);
            check_items(out, l);
            free(out);
        }
        tb[it] = bench_now() - t0;
        char *m1 = metrics(fd);
        t0 = bench_now();
        pthread_barrier_wait(&bar_start);
        for (int l = 0; l < n_layers; l++) {
            pthread_barrier_wait(&bar_done);
            pthread_barrier_wait(&bar_done);
        }
        ts[it] = bench_now() - t0;
        char *m2 = metrics(fd);
        split_add(m0, m1, "batch", sb);
        split_add(m1, m2, "session_step", ss);
        free(m0), free(m1), free(m2);
    }
    stop_workers = 1;
    pthread_barrier_wait(&bar_start);
    for (int c = 0; c < n_conns; c++) {
        pthread_join(th[c], NULL);
        close(w[c].fd);
    }

    char what[64];
    snprintf(what, sizeof what, "batch (%d x %d items)", n_layers, n_sessions);
    const double ratio = sum_of(tb, iters) > 0 ? sum_of(ts, iters) / sum_of(tb, iters) : 0;
    report(what, tb, iters);
    split(sb, iters * n_layers, (double)iters * n_layers * n_sessions);
    snprintf(what, sizeof what, "single (%d requests, %d conns)", n_layers * n_sessions, n_conns);
    report(what, ts, iters);
    split(ss, iters * n_layers * n_sessions, (double)iters * n_layers * n_sessions);
    printf("batch / single tokens/s: %.2fx (this run)\n", ratio);
    printf("(tokens/s = sessions x iterations / time: one token per session per iteration; %d iterations, "
           "the two forms alternating)\n",
           iters);

    close(fd);
    if (kvd > 0) {
        kill(kvd, SIGTERM);
        waitpid(kvd, NULL, 0);
    }
    free(tb), free(ts), free(w), free(th);
    return 0;
}
