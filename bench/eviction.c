/* bench/eviction.c — what evicting one token costs, per policy, as the cache
 * grows. One d = 128 stream in 16 KiB pool pages, held at budget n (1k, 16k,
 * 128k tokens by default) in steady state: each step appends one token and
 * evicts one. Only kvd_stream_evict is timed (and, for h2o, adding the step's
 * weights, reported on its own row); the ratio cost(128k) / cost(1k) shows
 * whether a policy's victim search grows with n (recency and l2norm use an
 * indexed heap: O(log n); h2o re-heapifies after every weight update: O(n)).
 * Usage: bench_eviction [n_tokens ...]   (default 1024 16384 131072) */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/evict.h"
#include "cache/pool.h"
#include "cache/stream.h"

#define HEAD_DIM 128
#define PAGE_BYTES (16 * 1024)
#define SINK 4
#define RECENT 32
#define RUNS 5           /* odd: the median is one run */
#define MAX_SIZES 8
/* Timed steps per run. h2o's eviction after new weights is O(n) (a heap
 * rebuild), about a millisecond at 128k, so it gets fewer steps. */
#define STEPS_LOG 4000
#define STEPS_LINEAR 300

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return t[n / 2];
}

static float frand(uint64_t *s) /* [-1, 1) */
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_eviction: %s\n", what);
    exit(1);
}

/* Appends m random tokens, as a step does (plan, take pages, append). */
static void append_random(kvd_stream *s, kvd_pool *pool, size_t m, float *k, float *v,
                          uint64_t *seed)
{
    for (size_t i = 0; i < m * HEAD_DIM; i++) {
        k[i] = frand(seed);
        v[i] = frand(seed);
    }
    const size_t need = kvd_stream_pages_needed(s, m);
    void **pages = malloc((need ? need : 1) * sizeof *pages);
    if (pages == NULL || kvd_stream_reserve_table(s, need) != 0 ||
        kvd_stream_evict_reserve(s, m) != 0 || kvd_pool_alloc(pool, need, pages) != 0)
        die("cannot append (pool too small?)");
    kvd_stream_append(s, pool, m, k, v, HEAD_DIM, pages);
    free(pages);
}

typedef enum { ROW_RECENCY, ROW_L2NORM, ROW_H2O_EVICT, ROW_H2O_WEIGHTS, ROW_H2O_STILL, N_ROWS } bench_row;

static const char *const row_names[N_ROWS] = {
    "recency evict", "l2norm evict", "h2o evict (new weights)", "h2o add_weights",
    "h2o evict (no new weights)",
};

/* One run at budget n: ns per evicted token (and per add_weights call).
 * out[row] is filled for the rows of this policy. */
static void run_once(kvd_eviction policy, size_t n, uint64_t seed, double *out)
{
    /* The stream holds n + 1 tokens at most, plus one page of slack for the
     * page a step may take before eviction gives one back. */
    const size_t spp = kvd_stream_slots_per_page(PAGE_BYTES, HEAD_DIM);
    const size_t pages = (n + 1 + spp - 1) / spp + 2;
    kvd_pool *pool;
    if (kvd_pool_create(pages * PAGE_BYTES, PAGE_BYTES, &pool) != 0)
        die("cannot create the pool");
    kvd_stream s;
    kvd_stream_init(&s, PAGE_BYTES, HEAD_DIM);
    const kvd_evict_config cfg = {.policy = policy, .sink = SINK, .recent = RECENT};
    if (kvd_stream_evict_init(&s, &cfg) != 0)
        die("cannot attach the eviction index");

    const size_t chunk = 4096;
    float *k = malloc(chunk * HEAD_DIM * sizeof *k), *v = malloc(chunk * HEAD_DIM * sizeof *v);
    float *w = malloc((n + 1) * sizeof *w); /* [n + 1] this step's weights per slot */
    if (k == NULL || v == NULL || w == NULL)
        die("out of memory");
    for (size_t j = 0; j <= n; j++)
        w[j] = (frand(&seed) + 1.0f) / (float)n; /* ~ a softmax's mass per slot */

    /* Fill to the budget, with weights on the way for h2o so that scores are
     * spread as after a real prefill. */
    while (s.n_tokens < n) {
        const size_t m = n - s.n_tokens < chunk ? n - s.n_tokens : chunk;
        append_random(&s, pool, m, k, v, &seed);
        kvd_stream_add_weights(&s, w, s.n_tokens);
    }

    const bool h2o = policy == KVD_EVICT_H2O;
    const size_t steps = h2o ? STEPS_LINEAR : STEPS_LOG;
    double t_evict = 0.0, t_weights = 0.0, t_still = 0.0;
    size_t evicted = 0, evicted_still = 0;
    for (size_t step = 0; step < 2 * steps; step++) {
        append_random(&s, pool, 1, k, v, &seed);
        /* h2o: the first half of the steps adds weights (as every real step
         * does), the second half does not, isolating the heap's pop. */
        const bool with_weights = h2o && step < steps;
        if (with_weights) {
            const double t0 = now_ns();
            kvd_stream_add_weights(&s, w, s.n_tokens);
            t_weights += now_ns() - t0;
        }
        size_t used = 0;
        const double t0 = now_ns();
        const size_t e = kvd_stream_evict(&s, pool, n, NULL, 0, &used);
        const double dt = now_ns() - t0;
        if (e != 1)
            die("steady state broken: expected one eviction per step");
        if (!h2o && step < steps)
            continue; /* warm-up half: the index settles into its steady shape */
        if (with_weights || !h2o) {
            t_evict += dt;
            evicted += e;
        } else {
            t_still += dt;
            evicted_still += e;
        }
    }
    switch (policy) {
    case KVD_EVICT_RECENCY: out[ROW_RECENCY] = t_evict / (double)evicted; break;
    case KVD_EVICT_L2NORM: out[ROW_L2NORM] = t_evict / (double)evicted; break;
    case KVD_EVICT_H2O:
        out[ROW_H2O_EVICT] = t_evict / (double)evicted;
        out[ROW_H2O_WEIGHTS] = t_weights / (double)steps;
        out[ROW_H2O_STILL] = t_still / (double)evicted_still;
        break;
    default: break;
    }
    if (kvd_pool_pages_used(pool) != s.n_pages)
        die("pool accounting differs from the stream's pages");
    kvd_stream_release(&s, pool);
    kvd_pool_destroy(pool);
    free(k);
    free(v);
    free(w);
}

int main(int argc, char **argv)
{
    size_t sizes[MAX_SIZES] = {1024, 16384, 131072};
    int n_sizes = 3;
    if (argc > 1) {
        n_sizes = 0;
        for (int i = 1; i < argc && n_sizes < MAX_SIZES; i++) {
            const long long x = atoll(argv[i]);
            if (x <= SINK + RECENT)
                die("each n must exceed sink + recent");
            sizes[n_sizes++] = (size_t)x;
        }
    }

    /* Clock cost: one now_ns() pair, subtracted from every timed call. */
    double pairs[RUNS];
    for (int r = 0; r < RUNS; r++) {
        const double t0 = now_ns();
        double acc = 0.0;
        for (int i = 0; i < 100000; i++) {
            const double a = now_ns();
            acc += now_ns() - a;
        }
        (void)acc;
        pairs[r] = (now_ns() - t0) / 100000.0 / 2.0; /* per call; a pair costs two */
    }
    const double clock_ns = median(pairs, RUNS);

    static const kvd_eviction policies[] = {KVD_EVICT_RECENCY, KVD_EVICT_L2NORM, KVD_EVICT_H2O};
    double cost[N_ROWS][MAX_SIZES];
    for (int si = 0; si < n_sizes; si++) {
        double runs[N_ROWS][RUNS];
        for (int r = 0; r < RUNS; r++)
            for (size_t pi = 0; pi < sizeof policies / sizeof *policies; pi++) {
                double out[N_ROWS] = {0};
                run_once(policies[pi], sizes[si], 42 + (uint64_t)r, out);
                for (int row = 0; row < N_ROWS; row++)
                    if (out[row] != 0.0)
                        runs[row][r] = out[row];
            }
        for (int row = 0; row < N_ROWS; row++) {
            const double c = median(runs[row], RUNS) - clock_ns;
            cost[row][si] = c > 0.0 ? c : 0.0;
        }
    }

    printf("eviction cost per evicted token: one stream at budget n, steady state "
           "(append 1, evict 1),\nd=%d, %d KiB pages, sink %d, recent %d, median of %d runs, "
           "ns (clock overhead %.1f ns subtracted)\n",
           HEAD_DIM, PAGE_BYTES / 1024, SINK, RECENT, RUNS, clock_ns);
    printf("%-28s", "policy");
    for (int si = 0; si < n_sizes; si++) {
        char label[32];
        if (sizes[si] % 1024 == 0)
            snprintf(label, sizeof label, "n=%zuk", sizes[si] / 1024);
        else
            snprintf(label, sizeof label, "n=%zu", sizes[si]);
        printf(" %10s", label);
    }
    printf(" %12s\n", "last/first");
    for (int row = 0; row < N_ROWS; row++) {
        printf("%-28s", row_names[row]);
        for (int si = 0; si < n_sizes; si++)
            printf(" %10.1f", cost[row][si]);
        if (n_sizes > 1 && cost[row][0] > 0.0)
            printf(" %11.2fx", cost[row][n_sizes - 1] / cost[row][0]);
        printf("\n");
    }
    if (n_sizes > 1)
        printf("(n grew %.0fx; a cost linear in n would grow as much, O(log n) by %.1fx)\n",
               (double)sizes[n_sizes - 1] / (double)sizes[0],
               log2((double)sizes[n_sizes - 1]) / log2((double)sizes[0]));
    return 0;
}
