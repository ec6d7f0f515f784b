/* server/main.c — kvd's entry point: reads the configuration, wires the pool,
 * API, workers and HTTP server onto one libuv loop, and on SIGTERM/SIGINT
 * stops accepting, lets in-flight requests finish (for at most
 * --drain-seconds, then closes what is left), writes every session to
 * --state-dir if set (restored from it at start), and exits 0. With --probe
 * URL it serves nothing: one GET (server/probe.c), exit 0 on 2xx, else 1.
 * The only place that exits the process. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "api/api.h"
#include "attention/attention.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/probe.h"
#include "server/router.h"
#include "server/state.h"
#include "server/workers.h"

typedef struct kvd_main {
    uv_loop_t *loop;
    uv_signal_t sigterm, sigint;
    uv_timer_t expiry;         /* idle sessions past their ttl, once a second */
    kvd_http_server *http;
    kvd_workers *workers;
    kvd_parallel parallel;     /* the workers lent to a large step */
    kvd_router router;
    int shutting_down;
    unsigned drain_ms;
} kvd_main;

static void on_http_closed(void *arg)
{
    kvd_main *m = arg;
    /* Every exchange is answered, so no job is queued or running. */
    kvd_workers_stop(m->workers);
    uv_close((uv_handle_t *)&m->expiry, NULL);
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
}

/* One pass over the registry a second: O(sessions), bounded by
 * --max-sessions or by memory, and a small fraction of a second of loop time
 * even for many thousands of sessions. */
static void on_expiry_tick(uv_timer_t *t)
{
    kvd_main *m = t->data;
    size_t n = kvd_api_expire(m->router.api);
    if (n)
        fprintf(stderr, "kvd: expired %zu idle session%s\n", n, n == 1 ? "" : "s");
}

static void on_signal(uv_signal_t *h, int signum)
{
    kvd_main *m = h->data;
    if (m->shutting_down++)
        return;
    fprintf(stderr, "kvd: %s: draining (in-flight requests finish, new ones get 503; "
            "what is still open after %u ms is closed)\n",
            signum == SIGTERM ? "SIGTERM" : "SIGINT", m->drain_ms);
    m->router.draining = true;
    kvd_http_server_shutdown(m->http, on_http_closed, m);
}

int main(int argc, char **argv)
{
    kvd_config cfg;
    char err[512];
    if (kvd_config_parse(&cfg, argc, argv, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    if (cfg.help) {
        fputs(kvd_usage, stdout);
        return 0;
    }
    if (cfg.version) {
        printf("kvd %s\n", KVD_VERSION);
        return 0;
    }
    if (cfg.probe_url) { /* a health check, not a server: one GET, then exit */
        kvd_probe_target t;
        char why[256];
        if (kvd__probe_parse_url(cfg.probe_url, &t, err, sizeof err) != 0) {
            fprintf(stderr, "%s\n", err);
            return 2;
        }
        if (kvd__probe_run(&t, KVD_PROBE_TIMEOUT_MS, why, sizeof why) != 0) {
            fprintf(stderr, "kvd: probe %s: %s\n", cfg.probe_url, why);
            return 1;
        }
        return 0;
    }
    static kvd_auth_keys keys; /* outlives the API, which borrows it */
    if (kvd__auth_load(&cfg, &keys, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    const char *warning = kvd__auth_warning(&cfg, &keys);
    if (warning)
        fprintf(stderr, "%s\n", warning);
    const char *state_dir = cfg.state_dir && cfg.state_dir[0] ? cfg.state_dir : NULL;
    if (state_dir && kvd_state_prepare(state_dir, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* a peer that hangs up is a write error, not death */
    kvd_metrics_init();

    static kvd_main m;
    m.loop = uv_default_loop();
    int rc = kvd_workers_start(m.loop, cfg.threads, &m.workers);
    if (rc != 0) {
        fprintf(stderr, "kvd: cannot start %u workers: %s\n", cfg.threads, strerror(-rc));
        return 1;
    }
    m.parallel = kvd_workers_parallel(m.workers);
    kvd_api_options aopt = {
        .memory_bytes = cfg.memory,
        .page_bytes = cfg.page_bytes,
        .threads = cfg.threads,
        .max_body = cfg.max_body,
        .max_sessions = cfg.max_sessions,
        .max_session_heap = cfg.max_session_heap,
        .session_ttl = cfg.session_ttl,
        .on_full_evict = cfg.on_full_evict,
        .keys = &keys,
        .id_prefix = cfg.id_prefix,
        .parallel = &m.parallel,
    };
    kvd_api *api;
    rc = kvd_api_create(&aopt, kvd_workers_submit, m.workers, kvd_router_respond, &api);
    if (rc != 0) {
        fprintf(stderr, "kvd: cannot create a pool of %zu bytes in %zu-byte pages: %s\n", cfg.memory,
                cfg.page_bytes, strerror(-rc));
        return 1;
    }
    if (state_dir) /* before listening: no create can take a saved id first */
        kvd_state_restore(api, state_dir);
    m.router.api = api;
    m.router.metrics_auth = cfg.metrics_auth;
    kvd_http_options hopt = {
        .host = cfg.host,
        .port = cfg.port,
        .max_body = cfg.max_body,
        .max_pipelined = 64,
        .log_json = cfg.log_json,
        .header_timeout_ms = (unsigned)(cfg.header_timeout * 1000 + 0.5),
        .body_timeout_ms = (unsigned)(cfg.body_timeout * 1000 + 0.5),
        .idle_timeout_ms = (unsigned)(cfg.idle_timeout * 1000 + 0.5),
        .write_timeout_ms = (unsigned)(cfg.write_timeout * 1000 + 0.5),
        .drain_ms = (unsigned)(cfg.drain_seconds * 1000 + 0.5),
        .max_connections = cfg.max_connections,
        .max_inflight_bytes = cfg.max_inflight_bytes,
    };
    m.drain_ms = hopt.drain_ms;
    rc = kvd_http_server_start(m.loop, &hopt, kvd_router_handle, &m.router, &m.http);
    if (rc != 0) {
        fprintf(stderr, "kvd: cannot listen on %s:%d: %s\n", cfg.host, cfg.port, uv_strerror(rc));
        return 1;
    }
    uv_timer_init(m.loop, &m.expiry);
    m.expiry.data = &m;
    uv_timer_start(&m.expiry, on_expiry_tick, 1000, 1000);
    uv_signal_init(m.loop, &m.sigterm);
    uv_signal_init(m.loop, &m.sigint);
    m.sigterm.data = m.sigint.data = &m;
    uv_signal_start(&m.sigterm, on_signal, SIGTERM);
    uv_signal_start(&m.sigint, on_signal, SIGINT);

    int port = kvd_http_server_port(m.http);
    const kvd_attention_kernels *k = kvd_attention_kernels_get();
    fprintf(stderr, "kvd %s: pool %zu pages x %zu bytes, %u workers, kernel %s (cpu: %s)\n", KVD_VERSION,
            cfg.memory / cfg.page_bytes, cfg.page_bytes, cfg.threads, k->name, kvd_cpu_features());
    if (strchr(cfg.host, ':'))
        fprintf(stderr, "kvd: listening on http://[%s]:%d\n", cfg.host, port);
    else
        fprintf(stderr, "kvd: listening on http://%s:%d\n", cfg.host, port);
    fflush(stderr);

    uv_run(m.loop, UV_RUN_DEFAULT);
    /* The drain is over and the workers have stopped: every session is
     * whole steps, and nothing else runs. */
    size_t unsaved = state_dir ? kvd_state_save(api, state_dir) : 0;
    kvd_api_destroy(api);
    kvd_auth_keys_free(&keys);
    uv_loop_close(m.loop);
    fprintf(stderr, "kvd: stopped\n");
    return unsaved ? 1 : 0;
}
