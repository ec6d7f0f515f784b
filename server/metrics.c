/* server/metrics.c — the Prometheus registry (text exposition format 0.0.4).
 * HTTP counters and histograms live here in fixed tables of relaxed atomics
 * (route x status, route); API counters, pool gauges and process_* metrics are read
 * at scrape time from their owners. No session id ever becomes a label. */
#include "server/metrics.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "api/api.h"
#include "cache/pool.h"
#include "cache/types.h"
#include "common/clock.h"
#include "common/histogram.h"

/* Statuses kvd answers with; anything else is counted under "other". */
static const int known_status[] = {200, 201, 204, 400, 401, 404, 405, 409, 413,
                                   415, 429, 431, 500, 501, 503};
#define N_STATUS (sizeof known_status / sizeof known_status[0] + 1)

static atomic_uint_fast64_t http_requests[KVD_ROUTE_COUNT][N_STATUS];
static atomic_uint_fast64_t http_received[KVD_ROUTE_COUNT];
static kvd_histogram http_seconds[KVD_ROUTE_COUNT];
static double process_start_unix;

void kvd_metrics_init(void)
{
    process_start_unix = kvd_clock_unix();
}

static size_t route_index(const char *label)
{
    for (size_t r = 0; r < KVD_ROUTE_COUNT; r++)
        if (label && strcmp(label, kvd_route_label((kvd_route)r)) == 0)
            return r;
    return KVD_ROUTE_UNKNOWN;
}

static size_t status_index(int status)
{
    for (size_t i = 0; i < N_STATUS - 1; i++)
        if (known_status[i] == status)
            return i;
    return N_STATUS - 1;
}

void kvd__metrics_observe_http(const char *route_label, int status, double seconds)
{
    size_t r = route_index(route_label);
    atomic_fetch_add_explicit(&http_requests[r][status_index(status)], 1, memory_order_relaxed);
    kvd_histogram_observe(&http_seconds[r], seconds);
}

void kvd__metrics_observe_received(const char *route_label)
{
    atomic_fetch_add_explicit(&http_received[route_index(route_label)], 1, memory_order_relaxed);
}

/* A growable text buffer; `failed` sticks after the first allocation failure. */
typedef struct text {
    char *buf;
    size_t len, cap;
    int failed;
} text;

__attribute__((format(printf, 2, 3))) static void put(text *t, const char *fmt, ...)
{
    if (t->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n + 1;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->failed = 1;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

static void header(text *t, const char *name, const char *type, const char *help)
{
    put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(text *t, const char *name, const char *labels, const kvd_histogram *h,
                      const double *bounds)
{
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (size_t i = 0; i <= KVD_HISTOGRAM_BUCKETS; i++) {
        cum += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        if (i < KVD_HISTOGRAM_BUCKETS)
            put(t, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, bounds[i],
                (unsigned long long)cum);
        else
            put(t, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)cum);
    }
    put(t, "%s_sum%s%s%s %.9f\n", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
        (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) * 1e-9);
    put(t, "%s_count%s%s%s %llu\n", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
        (unsigned long long)cum);
}

static unsigned long long load(const atomic_uint_fast64_t *a)
{
    return (unsigned long long)atomic_load_explicit(a, memory_order_relaxed);
}

static void process_metrics(text *t)
{
    long page = sysconf(_SC_PAGESIZE);
    unsigned long long vsz = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%llu %llu", &vsz, &rss) != 2)
            vsz = rss = 0;
        fclose(f);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
    unsigned long long fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                fds++;
        closedir(d);
        fds--; /* the directory stream's own descriptor */
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    header(t, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
    put(t, "process_cpu_seconds_total %.6f\n", cpu);
    header(t, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    put(t, "process_resident_memory_bytes %llu\n", rss * (unsigned long long)page);
    header(t, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    put(t, "process_virtual_memory_bytes %llu\n", vsz * (unsigned long long)page);
    header(t, "process_open_fds", "gauge", "Number of open file descriptors.");
    put(t, "process_open_fds %llu\n", fds);
    header(t, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
    put(t, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    header(t, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
    put(t, "process_start_time_seconds %.3f\n", process_start_unix);
}

char *kvd__metrics_render(const kvd_api *api, bool ready, size_t *len)
{
    text t = {.cap = 16384};
    t.buf = malloc(t.cap);
    if (!t.buf)
        return NULL;
    t.buf[0] = '\0';

    header(&t, "kvd_http_requests_total", "counter", "HTTP requests answered, by route and status code.");
    for (size_t r = 0; r < KVD_ROUTE_COUNT; r++)
        for (size_t s = 0; s < N_STATUS; s++) {
            unsigned long long n = load(&http_requests[r][s]);
            if (!n)
                continue;
            if (s < N_STATUS - 1)
                put(&t, "kvd_http_requests_total{route=\"%s\",code=\"%d\"} %llu\n",
                    kvd_route_label((kvd_route)r), known_status[s], n);
            else
                put(&t, "kvd_http_requests_total{route=\"%s\",code=\"other\"} %llu\n",
                    kvd_route_label((kvd_route)r), n);
        }
    header(&t, "kvd_http_requests_received_total", "counter",
           "HTTP requests read in full and routed (answered or not yet), by route.");
    for (size_t r = 0; r < KVD_ROUTE_COUNT; r++) {
        unsigned long long n = load(&http_received[r]);
        if (n)
            put(&t, "kvd_http_requests_received_total{route=\"%s\"} %llu\n",
                kvd_route_label((kvd_route)r), n);
    }
    header(&t, "kvd_http_request_duration_seconds", "histogram",
           "Time from a complete request to its response being queued, by route.");
    for (size_t r = 0; r < KVD_ROUTE_COUNT; r++) {
        if (!load(&http_seconds[r].count))
            continue;
        char labels[64];
        snprintf(labels, sizeof labels, "route=\"%s\"", kvd_route_label((kvd_route)r));
        histogram(&t, "kvd_http_request_duration_seconds", labels, &http_seconds[r], kvd_histogram_bounds);
    }

    const kvd_api_stats *st = kvd_api_stats_get(api);
    header(&t, "kvd_step_duration_seconds", "histogram", "Compute time of a step on a worker.");
    histogram(&t, "kvd_step_duration_seconds", "attention=\"standard\"", &st->step_seconds[KVD_ATTN_STANDARD],
              kvd_histogram_bounds);
    histogram(&t, "kvd_step_duration_seconds", "attention=\"tensor\"", &st->step_seconds[KVD_ATTN_TENSOR],
              kvd_histogram_bounds);
    header(&t, "kvd_step_phase_seconds", "histogram",
           "A step's (a batch item's) server time by phase: parse, queue, attend, render.");
    static const char *const phases[] = {"phase=\"parse\"", "phase=\"queue\"", "phase=\"attend\"",
                                         "phase=\"render\""};
    for (size_t i = 0; i < 4; i++)
        histogram(&t, "kvd_step_phase_seconds", phases[i], &st->phase_seconds[i], kvd_histogram_bounds);
    header(&t, "kvd_shadow_relative_error", "histogram",
           "Relative L2 error of a step's outputs against exact attention (shadow sessions).");
    histogram(&t, "kvd_shadow_relative_error", "", &st->shadow_relative_error, kvd_shadow_error_bounds);
    header(&t, "kvd_step_tokens_total", "counter", "New tokens received in steps, one per token per layer.");
    put(&t, "kvd_step_tokens_total %llu\n", load(&st->step_tokens));
    header(&t, "kvd_steps_total", "counter", "Steps applied.");
    put(&t, "kvd_steps_total %llu\n", load(&st->steps));
    header(&t, "kvd_sessions", "gauge", "Live sessions.");
    put(&t, "kvd_sessions %zu\n", kvd_api_session_count(api));
    header(&t, "kvd_session_heap_bytes", "gauge",
           "Ordinary heap live sessions hold outside the pool (stream tables, eviction indexes, ...), "
           "checked against --max-session-heap.");
    put(&t, "kvd_session_heap_bytes %zu\n", kvd_api_session_heap_bytes(api));
    header(&t, "kvd_sessions_created_total", "counter", "Sessions created.");
    put(&t, "kvd_sessions_created_total %llu\n", load(&st->sessions_created));
    header(&t, "kvd_sessions_expired_total", "counter", "Sessions freed after ttl_seconds idle.");
    put(&t, "kvd_sessions_expired_total %llu\n", load(&st->sessions_expired));
    header(&t, "kvd_evictions_total", "counter", "Tokens evicted from streams, by policy.");
    for (int p = KVD_EVICT_RECENCY; p <= KVD_EVICT_SUBGEN; p++)
        put(&t, "kvd_evictions_total{policy=\"%s\"} %llu\n", kvd_eviction_name((kvd_eviction)p),
            load(&st->evictions[p]));
    header(&t, "kvd_reclaimed_tokens_total", "counter",
           "Tokens evicted from idle sessions to make room under --on-full evict.");
    put(&t, "kvd_reclaimed_tokens_total %llu\n", load(&st->reclaimed_tokens));
    header(&t, "kvd_tensor_row_pages_total", "counter",
           "Pool pages lent to quantized four-cache tensor steps for the f32 copy of their rows.");
    put(&t, "kvd_tensor_row_pages_total %llu\n", load(&st->tensor_row_pages));
    double by_tokens[KVD_DTYPE_COUNT], by_bytes[KVD_DTYPE_COUNT], shadow_bytes;
    kvd_api_cache_totals(api, by_tokens, by_bytes, &shadow_bytes);
    header(&t, "kvd_cache_tokens", "gauge", "Cached tokens (slots summed over streams), by cache dtype.");
    for (int d = 0; d < KVD_DTYPE_COUNT; d++)
        put(&t, "kvd_cache_tokens{dtype=\"%s\"} %.0f\n", kvd_dtype_name((kvd_dtype)d), by_tokens[d]);
    header(&t, "kvd_cache_bytes", "gauge", "Pool bytes held by sessions' caches, by cache dtype.");
    for (int d = 0; d < KVD_DTYPE_COUNT; d++)
        put(&t, "kvd_cache_bytes{dtype=\"%s\"} %.0f\n", kvd_dtype_name((kvd_dtype)d), by_bytes[d]);
    header(&t, "kvd_shadow_bytes", "gauge",
           "Pool bytes held by shadow sessions' exact f32 copies (not in kvd_cache_bytes).");
    put(&t, "kvd_shadow_bytes %.0f\n", shadow_bytes);
    header(&t, "kvd_rejected_total", "counter", "Requests refused for want of a resource, by reason.");
    put(&t, "kvd_rejected_total{reason=\"pool_full\"} %llu\n", load(&st->rejected_pool_full));
    put(&t, "kvd_rejected_total{reason=\"queue_full\"} %llu\n", load(&st->rejected_queue_full));
    put(&t, "kvd_rejected_total{reason=\"max_sessions\"} %llu\n", load(&st->rejected_max_sessions));
    put(&t, "kvd_rejected_total{reason=\"session_heap\"} %llu\n", load(&st->rejected_session_heap));

    const kvd_pool *pool = kvd_api_pool(api);
    size_t total = kvd_pool_pages_total(pool), free_pages = kvd_pool_pages_free(pool);
    size_t used = total - free_pages, pb = kvd_pool_page_bytes(pool);
    header(&t, "kvd_pool_pages", "gauge", "Pool pages by state.");
    put(&t, "kvd_pool_pages{state=\"used\"} %zu\nkvd_pool_pages{state=\"free\"} %zu\n", used, free_pages);
    header(&t, "kvd_pool_bytes", "gauge", "Pool bytes by state.");
    put(&t, "kvd_pool_bytes{state=\"used\"} %zu\nkvd_pool_bytes{state=\"free\"} %zu\n", used * pb,
        free_pages * pb);
    header(&t, "kvd_kv_cache_usage_ratio", "gauge", "Fraction of pool pages in use (0..1).");
    put(&t, "kvd_kv_cache_usage_ratio %.6f\n", total ? (double)used / (double)total : 0.0);
    header(&t, "kvd_pool_cow_copies_total", "counter", "Pages copied because a write hit a page shared with a fork.");
    put(&t, "kvd_pool_cow_copies_total %llu\n", kvd_pool_copies(pool));
    header(&t, "kvd_ready", "gauge",
           "1 if /readyz answers 200 now, 0 if 503 (draining, or pool exhausted with nothing to reclaim).");
    put(&t, "kvd_ready %d\n", ready ? 1 : 0);
    header(&t, "kvd_cache_config_info", "gauge", "Pool configuration.");
    put(&t, "kvd_cache_config_info{page_bytes=\"%zu\",pages=\"%zu\"} 1\n", pb, total);

    process_metrics(&t);
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    *len = t.len;
    return t.buf;
}
