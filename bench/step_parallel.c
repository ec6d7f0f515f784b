/* bench/step_parallel.c — one long step on every core: the step engine's
 * split (kvd_step_run_parallel over the server's worker pool, caller + 1
 * helper = --threads 2) against the same step on one thread (kvd_step_run),
 * alternated in one run, median of REPEATS each. Shapes: a decode query of
 * 32 query / 8 kv heads, d = 128 over an f32 cache of n tokens (default
 * 32768; the query is pure, so the cache does not grow), and a causal
 * prefill of P tokens (default 1024) into a fresh session. Prints the CPU and
 * kernel tier, and for the 2-thread runs the process CPU time over wall time
 * (2.0: both threads had a core all along; less: the machine was shared).
 * Usage: bench_step_parallel [n_tokens [prefill_tokens]] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "attention/attention.h"
#include "cache/pool.h"
#include "cache/session.h"
#include "cache/step.h"
#include "server/workers.h"

#include "bench/bench.h"

#define HEADS 32
#define KV_HEADS 8
#define HEAD_DIM 128
#define PAGE_BYTES (64 * 1024)
#define REPEATS 7 /* odd: the median is one run */
#define FILL_CHUNK 2048

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static float *tensor(uint64_t *s, size_t n)
{
    float *x = malloc(n * sizeof *x);
    if (!x) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        x[i] = frand(s);
    return x;
}

static kvd_session_config config(void)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = 1;
    c.heads = HEADS;
    c.kv_heads = KV_HEADS;
    c.head_dim = HEAD_DIM;
    c.scale = 0.08838834764831845f; /* 1/sqrt(128) */
    c.cache.dtype = KVD_DTYPE_F32;
    c.cache.group = 32;
    c.cache.residual = 32;
    c.ttl_seconds = 600;
    return c;
}

static kvd_session *new_session(void)
{
    const kvd_session_config c = config();
    kvd_session *s;
    if (kvd_session_create(&c, PAGE_BYTES, &s) != 0) {
        fprintf(stderr, "cannot create a session\n");
        exit(1);
    }
    return s;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_2t, wall_2t; /* CPU and wall seconds of the 2-thread runs */

static double run_once(kvd_session *s, kvd_pool *pool, const kvd_step_entry *e, const kvd_parallel *par)
{
    kvd_step_output out;
    const double c0 = cpu_now();
    const double t0 = bench_now();
    const int rc = par ? kvd_step_run_parallel(s, NULL, pool, e, 1, par, &out) : kvd_step_run(s, NULL, pool, e, 1, &out);
    const double t = bench_now() - t0;
    if (par) {
        cpu_2t += cpu_now() - c0;
        wall_2t += t;
    }
    if (rc != KVD_STEP_OK) {
        fprintf(stderr, "step failed: %d\n", rc);
        exit(1);
    }
    kvd_step_output_free(&out);
    return t;
}

static void report(const char *what, double *t1, double *t2)
{
    const double a = bench_median(t1, REPEATS), b = bench_median(t2, REPEATS);
    printf("%-30s 1 thread %8.2f ms   2 threads %8.2f ms   speed-up %.2fx   (2 threads: CPU/wall %.2f)\n",
           what, a * 1e3, b * 1e3, a / b, wall_2t > 0 ? cpu_2t / wall_2t : 0.0);
    cpu_2t = wall_2t = 0;
}

int main(int argc, char **argv)
{
    const size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 32768;
    const size_t prefill = argc > 2 ? strtoull(argv[2], NULL, 10) : 1024;
    char cpu[160];
    bench_cpu_model(cpu, sizeof cpu);
    printf("CPU: %s; kernels: %s; median of %d, 1 and 2 threads alternated\n", cpu,
           kvd_attention_kernels_get()->name, REPEATS);

    const size_t kv_row = (size_t)KV_HEADS * HEAD_DIM, q_row = (size_t)HEADS * HEAD_DIM;
    const size_t cache_bytes = 2 * (n + prefill + FILL_CHUNK) * kv_row * sizeof(float);
    kvd_pool *pool;
    if (kvd_pool_create(cache_bytes * 2 + ((size_t)64 << 20), PAGE_BYTES, &pool) != 0) {
        fprintf(stderr, "cannot create a pool for %zu tokens\n", n);
        return 1;
    }
    uv_loop_t loop;
    kvd_workers *w;
    if (uv_loop_init(&loop) != 0 || kvd_workers_start(&loop, 1, &w) != 0) {
        fprintf(stderr, "cannot start a worker\n");
        return 1;
    }
    const kvd_parallel par = kvd_workers_parallel(w);
    uint64_t seed = 42;

    /* Decode: fill n tokens without queries, then time a pure query. */
    kvd_session *s = new_session();
    float *k = tensor(&seed, FILL_CHUNK * kv_row), *v = tensor(&seed, FILL_CHUNK * kv_row);
    for (size_t done = 0; done < n;) {
        const size_t m = n - done < FILL_CHUNK ? n - done : FILL_CHUNK;
        kvd_step_entry e = {.layer = 0, .m = m, .k = k, .v = v, .mask = KVD_MASK_BLOCK};
        run_once(s, pool, &e, NULL);
        done += m;
    }
    float *q = tensor(&seed, q_row);
    kvd_step_entry dec = {.layer = 0, .m = 0, .m_q = 1, .q = q, .mask = KVD_MASK_BLOCK};
    double t1[REPEATS], t2[REPEATS];
    run_once(s, pool, &dec, &par); /* warm */
    cpu_2t = wall_2t = 0;
    for (int r = 0; r < REPEATS; r++) {
        t1[r] = run_once(s, pool, &dec, NULL);
        t2[r] = run_once(s, pool, &dec, &par);
    }
    char what[96];
    snprintf(what, sizeof what, "decode, n = %zu:", n);
    report(what, t1, t2);
    kvd_session_destroy(s, pool);

    /* Prefill: `prefill` causal tokens, all queries, into a fresh session. */
    float *pk = tensor(&seed, prefill * kv_row), *pv = tensor(&seed, prefill * kv_row);
    float *pq = tensor(&seed, prefill * q_row);
    kvd_step_entry pre = {.layer = 0, .m = prefill, .m_q = prefill, .k = pk, .v = pv, .q = pq,
                          .mask = KVD_MASK_CAUSAL};
    for (int r = 0; r < REPEATS; r++) {
        for (int side = 0; side < 2; side++) {
            kvd_session *f = new_session();
            const double t = run_once(f, pool, &pre, side ? &par : NULL);
            (side ? t2 : t1)[r] = t;
            kvd_session_destroy(f, pool);
        }
    }
    snprintf(what, sizeof what, "causal prefill, %zu tokens:", prefill);
    report(what, t1, t2);

    kvd_workers_stop(w);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    kvd_pool_destroy(pool);
    free(k);
    free(v);
    free(q);
    free(pk);
    free(pv);
    free(pq);
    return 0;
}
