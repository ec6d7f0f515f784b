/* tests/load/soak.c — the soak load generator (`make test-soak`): N keep-alive
 * connections on one epoll loop drive mixed traffic at a running kvd for T
 * seconds (loopback only), pause once half-way for a quiescent page-accounting
 * check, then delete every session and check: no unexpected status, no
 * connection error, checked outputs on the reference, page accounting balanced,
 * kvd's fds back to the baseline, VmRSS flat over the second half, /healthz.
 * Prints requests/s, p50/p99 per request kind and RSS; exits 0 only on a pass.
 * usage: soak --port P --pid PID [--seconds 60] [--connections 512] [--seed S] */
#include "tests/load/load.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

soak S;

/* RSS over the second half: the least-squares line through its samples may
 * move by at most this fraction of its starting value. */
#define RSS_FLAT_TOL 0.10
/* After the clients close, kvd has this long to close its side. */
#define FD_SETTLE_S 10.0
/* Beyond --seconds: the pause, the clean-up and the final checks. */
#define HARD_EXTRA_S 120.0

double soak_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void lat_add(lat_rec *l, double ms, double at)
{
    if (ms > l->max_ms)
        l->max_ms = ms, l->max_at = at;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 4096;
        l->ms = realloc(l->ms, l->cap * sizeof *l->ms);
        if (!l->ms)
            abort();
    }
    l->ms[l->n++] = (float)ms;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

double lat_quantile(lat_rec *l, double p)
{
    if (l->n == 0)
        return NAN;
    qsort(l->ms, l->n, sizeof *l->ms, cmp_float);
    size_t i = (size_t)(p * (double)(l->n - 1) + 0.5);
    return l->ms[i];
}

static void reconnect(client *c)
{
    wire_close(c);
    c->left_on_conn = 50 + (unsigned)(rng_next(&c->r) % 950);
    if (wire_connect(c) != 0)
        c->st = ST_OFF; /* counted; this client stops */
}

/* Starts the client's next request, or leaves it idle. */
static void issue(client *c)
{
    if (!traffic_next(c)) {
        c->st = ST_IDLE;
        wire_watch(c, false);
        return;
    }
    c->t_start = soak_now();
    int rc = wire_send(c);
    if (rc < 0) {
        S.conn_errors++;
        traffic_lost(c);
        reconnect(c);
    } else if (rc == 0) {
        c->st = ST_SENDING;
        wire_watch(c, true);
    } else if (c->abandon != AB_NONE) {
        traffic_abandoned(c);
        reconnect(c);
    } else {
        c->st = ST_READING;
        wire_watch(c, false);
    }
}

static void on_event(client *c)
{
    switch (c->st) {
    case ST_CONNECTING: {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            fprintf(stderr, "soak: client %d: connect: %s\n", c->idx, strerror(err));
            S.conn_errors++;
            wire_close(c);
            return;
        }
        issue(c);
        return;
    }
    case ST_SENDING: {
        int rc = wire_send(c);
        if (rc < 0) {
            S.conn_errors++;
            traffic_lost(c);
            reconnect(c);
        } else if (rc == 1 && c->abandon != AB_NONE) {
            traffic_abandoned(c);
            reconnect(c);
        } else if (rc == 1) {
            c->st = ST_READING;
            wire_watch(c, false);
        }
        return;
    }
    case ST_READING: {
        int status;
        const char *body;
        size_t body_len;
        bool close_after;
        int rc = wire_read(c, &status, &body, &body_len, &close_after);
        if (rc < 0) {
            S.conn_errors++;
            traffic_lost(c);
            reconnect(c);
            return;
        }
        if (rc == 0)
            return;
        if (S.phase == PH_RUN || S.phase == PH_PAUSE) {
            double now = soak_now();
            lat_add(&S.lat[c->kind], (now - c->t_start) * 1e3, now - S.t0);
            S.run_requests++;
        }
        traffic_answer(c, status, body, body_len);
        wire_consume(c);
        if (close_after) {
            S.server_closes++;
            reconnect(c);
        } else if (--c->left_on_conn == 0) {
            S.recycled++; /* provoked: a fresh connection now and then */
            reconnect(c);
        } else {
            issue(c);
        }
        return;
    }
    case ST_IDLE: { /* kvd closing an idle keep-alive connection is allowed */
        char b[64];
        ssize_t n = recv(c->fd, b, sizeof b, MSG_DONTWAIT);
        if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR))) {
            S.server_closes++;
            wire_close(c);
        }
        return;
    }
    default:
        return;
    }
}

static size_t busy(void)
{
    size_t n = 0;
    for (size_t i = 0; i < S.n_clients; i++)
        n += S.clients[i].st == ST_SENDING || S.clients[i].st == ST_READING || S.clients[i].st == ST_CONNECTING;
    return n;
}

static void kick_idle(void)
{
    for (size_t i = 0; i < S.n_clients; i++) {
        client *c = &S.clients[i];
        if (c->st == ST_IDLE)
            issue(c);
        else if (c->st == ST_OFF && c->fd < 0 && traffic_sessions(c) > 0)
            reconnect(c); /* closed while idle, still has sessions to delete */
    }
}

static size_t sessions_left(void)
{
    size_t n = 0;
    for (size_t i = 0; i < S.n_clients; i++)
        n += traffic_sessions(&S.clients[i]);
    return n;
}

static void raise_nofile(size_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < need)
        fprintf(stderr, "soak: RLIMIT_NOFILE is %llu, %zu wanted\n", (unsigned long long)rl.rlim_cur, need);
}

typedef struct sample {
    double t;
    long kib;
} sample;

static void usage(void)
{
    fprintf(stderr, "usage: soak --port P --pid PID [--seconds 60] [--connections 512] [--seed S]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    S.seconds = 60;
    S.n_clients = 512;
    S.seed = 1;
    S.pid = -1;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (strcmp(argv[i - 1], "--port") == 0)
            S.port = atoi(v);
        else if (strcmp(argv[i - 1], "--pid") == 0)
            S.pid = atoi(v);
        else if (strcmp(argv[i - 1], "--seconds") == 0)
            S.seconds = atof(v);
        else if (strcmp(argv[i - 1], "--connections") == 0)
            S.n_clients = (size_t)atol(v);
        else if (strcmp(argv[i - 1], "--seed") == 0)
            S.seed = strtoull(v, NULL, 10);
        else
            usage();
    }
    if (S.port <= 0 || S.pid <= 0 || !(S.seconds >= 2) || S.n_clients < 1 || S.n_clients > 100000)
        usage();
    raise_nofile(S.n_clients + 64);

    const long fd_base = probe_fds(S.pid);
    long fd_peak = fd_base;
    const double kvd_cpu0 = probe_cpu_s(S.pid);
    const long overflows0 = probe_listen_overflows();
    if (fd_base < 0 || !probe_healthy(S.port)) {
        fprintf(stderr, "soak: kvd (pid %d, port %d) is not there\n", S.pid, S.port);
        return 1;
    }
    size_t n_samples = 0, cap_samples = (size_t)S.seconds * 2 + 600;
    sample *rss = calloc(cap_samples, sizeof *rss);
    S.epfd = epoll_create1(EPOLL_CLOEXEC);
    S.clients = calloc(S.n_clients, sizeof *S.clients);
    if (!rss || S.epfd < 0 || !S.clients)
        abort();

    const double t0 = S.t0 = soak_now(), t_mid = t0 + S.seconds / 2, t_end = t0 + S.seconds;
    const double hard = t_end + HARD_EXTRA_S;
    rss[n_samples++] = (sample){0, probe_rss_kib(S.pid)};
    double next_sample = t0 + 1, pause_s = 0, run_end = 0;
    bool paused = false, mid_ok = false, timed_out = false;
    for (size_t i = 0; i < S.n_clients; i++) {
        traffic_init(&S.clients[i], (int)i, S.seed);
        if (wire_connect(&S.clients[i]) != 0)
            S.clients[i].st = ST_OFF;
    }
    struct epoll_event evs[256];
    for (;;) {
        double now = soak_now();
        if (now >= next_sample && S.phase != PH_CLEANUP) {
            if (n_samples < cap_samples)
                rss[n_samples++] = (sample){now - t0, probe_rss_kib(S.pid)};
            long fds = probe_fds(S.pid);
            fd_peak = fds > fd_peak ? fds : fd_peak;
            next_sample += 1;
        }
        if (now > hard) {
            fprintf(stderr, "soak: hard time limit passed (phase %d, %zu busy)\n", (int)S.phase, busy());
            timed_out = true;
            break;
        }
        if (S.phase == PH_RUN && !paused && now >= t_mid) {
            S.phase = PH_PAUSE; /* clients finish what they sent, then go idle */
            pause_s = now;
        }
        if (S.phase == PH_PAUSE && busy() == 0) {
            mid_ok = probe_accounting(S.port, S.live, false);
            paused = true;
            S.phase = PH_RUN;
            pause_s = soak_now() - pause_s;
            kick_idle();
        }
        if (S.phase == PH_RUN && now >= t_end) {
            S.phase = PH_CLEANUP;
            run_end = now;
            kick_idle();
        }
        if (S.phase == PH_CLEANUP && busy() == 0) {
            if (sessions_left() == 0)
                break;
            kick_idle();
        }
        int n = epoll_wait(S.epfd, evs, 256, 50);
        if (n < 0 && errno != EINTR) {
            perror("soak: epoll_wait");
            abort();
        }
        for (int i = 0; i < n; i++)
            on_event(evs[i].data.ptr);
    }
    const double run_s = (run_end > 0 ? run_end - t0 : S.seconds) - pause_s;
    const long rss_after_run = rss[n_samples - 1].kib;
    const double kvd_cpu = probe_cpu_s(S.pid) - kvd_cpu0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const double own_cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
                           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) * 1e-6;
    for (size_t i = 0; i < S.n_clients; i++)
        wire_close(&S.clients[i]);
    bool end_ok = !timed_out && probe_accounting(S.port, 0, true);
    long fd_after = probe_fds(S.pid);
    for (double until = soak_now() + FD_SETTLE_S; fd_after > fd_base && soak_now() < until;) {
        usleep(100 * 1000);
        fd_after = probe_fds(S.pid);
    }
    bool healthy = probe_healthy(S.port);
    long rss_final = probe_rss_kib(S.pid);

    /* The report. */
    printf("soak: %zu connections, %.0f s of traffic (%.1f s paused for accounting), kvd pid %d\n", S.n_clients,
           run_s + pause_s, pause_s, S.pid);
    printf("soak: %lu requests answered, %.0f requests/s; CPU seconds: kvd %.1f, this generator %.1f\n",
           S.run_requests, (double)S.run_requests / run_s, kvd_cpu, own_cpu);
    printf("soak: %-8s %9s %9s %9s %9s %7s   %s\n", "kind", "count", "p50 ms", "p99 ms", "max ms", "max at",
           "2xx 4xx 5xx (clean-up too)");
    for (int k = 0; k < K_COUNT; k++) {
        lat_rec *l = &S.lat[k];
        printf("soak: %-8s %9zu %9.2f %9.2f %9.2f %6.1fs   %lu %lu %lu\n", soak_kind_name[k], l->n,
               lat_quantile(l, 0.5), lat_quantile(l, 0.99), l->max_ms, l->max_at, S.status[k][2], S.status[k][4],
               S.status[k][5]);
    }
    printf("soak: 503 resource_exhausted (allowed, counted): create %lu, step %lu, steps %lu, fork %lu; "
           "raced 404 (another client's session deleted meanwhile): %lu; deleted ids asked for again: %lu, each a 404\n",
           S.exhausted[K_CREATE], S.exhausted[K_STEP], S.exhausted[K_STEPS], S.exhausted[K_FORK], S.raced_404,
           S.gone_404);
    printf("soak: connections opened %lu; provoked closes: recycled %lu, half a request %lu, step then close %lu; "
           "closed by kvd %lu; connection errors %lu\n",
           S.conns_opened, S.recycled, S.half_sent, S.fire_and_close, S.server_closes, S.conn_errors);
    printf("soak: checked against the double reference: %lu entries of %zu sessions, max error %.3g x max|v| "
           "(tol %.0e); checks dropped after a 503: %lu; bad outputs %lu\n",
           S.checked_entries, S.checked_sessions, S.max_err_rel, SOAK_TOL_REL, S.checks_lost, S.bad_outputs);

    /* RSS: least squares through the second half's samples. */
    double sx = 0, sy = 0, sxx = 0, sxy = 0, k = 0, t_first = -1, t_last = 0;
    long first_h = -1, last_h = -1;
    size_t mid_i = 0;
    for (size_t i = 0; i < n_samples; i++) {
        if (fabs(rss[i].t - S.seconds / 2) < fabs(rss[mid_i].t - S.seconds / 2))
            mid_i = i;
        if (rss[i].t < S.seconds / 2)
            continue;
        double x = rss[i].t, y = (double)rss[i].kib;
        sx += x, sy += y, sxx += x * x, sxy += x * y, k++;
        if (t_first < 0)
            t_first = x, first_h = rss[i].kib;
        t_last = x, last_h = rss[i].kib;
    }
    const long mid_kib = rss[mid_i].kib;
    double slope = k >= 2 ? (k * sxy - sx * sy) / (k * sxx - sx * sx) : 0;
    double icpt = k >= 1 ? (sy - slope * sx) / k : 0;
    double fit_start = icpt + slope * t_first, change = slope * (t_last - t_first);
    double rel = fit_start > 0 ? change / fit_start : INFINITY;
    bool rss_ok = k >= 2 && fabs(rel) <= RSS_FLAT_TOL;
    printf("soak: RSS start %.1f MiB, middle %.1f MiB, end of run %.1f MiB, after clean-up %.1f MiB\n",
           rss[0].kib / 1024.0, mid_kib / 1024.0, rss_after_run / 1024.0, rss_final / 1024.0);
    printf("soak: RSS second half (%.0f samples, %.0f..%.0f s): fitted slope %+.1f KiB/s, fitted change %+.2f%% "
           "(limit +-%.0f%%); first/last sample %.1f/%.1f MiB (%+.2f%%)\n",
           k, t_first, t_last, slope, 100 * rel, 100 * RSS_FLAT_TOL, first_h / 1024.0, last_h / 1024.0,
           first_h > 0 ? 100.0 * (double)(last_h - first_h) / (double)first_h : 0);
    printf("soak: listen queue overflows during the run (TcpExt ListenOverflows, this network namespace): %ld\n",
           probe_listen_overflows() - overflows0);
    printf("soak: kvd fds: baseline %ld, peak %ld, after the clients closed %ld\n", fd_base, fd_peak, fd_after);

    struct { bool ok; const char *what; } checks[] = {
        {!timed_out, "finished within the hard time limit"},
        {S.unexpected == 0, "no unexpected status"},
        {S.conn_errors == 0, "no connection error"},
        {S.bad_outputs == 0, "every output well formed and checked outputs on the reference"},
        {S.checked_entries > 0, "some outputs were checked"},
        {mid_ok, "page accounting balanced at the quiescent point"},
        {end_ok, "no session and no used page after deleting all"},
        {fd_after >= 0 && fd_after <= fd_base, "kvd's fds back to the baseline"},
        {rss_ok, "RSS flat over the second half"},
        {healthy, "kvd answers /healthz"},
    };
    bool pass = true;
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        printf("soak: %s: %s\n", checks[i].ok ? "ok  " : "FAIL", checks[i].what);
        pass = pass && checks[i].ok;
    }
    printf("soak: %s\n", pass ? "PASS" : "FAIL");
    for (size_t i = 0; i < S.n_clients; i++)
        traffic_free(&S.clients[i]);
    for (int i = 0; i < K_COUNT; i++)
        free(S.lat[i].ms);
    free(S.clients);
    free(S.reg);
    free(S.reg_owner);
    free(rss);
    close(S.epfd);
    return pass ? 0 : 1;
}
