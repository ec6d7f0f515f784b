/* bench/attention_decode.c — decode attention against memory bandwidth.
 * One decode token of a 32-query / 8-kv-head, d = 128 session over an f32 cache
 * of n tokens kept in kvd's own pool pages (as the server keeps it), for every
 * kernel this CPU can run, an OpenBLAS formulation over contiguous K/V, and a
 * streaming-read loop over the same bytes — all in one run, one thread, so the
 * printed ratios (effective KV bytes per second / read loop) compare like with
 * like on a shared, noisy machine. Every timed pass starts from DRAM
 * (bench_cold): a 32k-token cache fits some machines' last-level cache.
 * Usage: bench_attention_decode [n_tokens ...]   (default 32768) */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention/attention.h"
#include "attention/kernels.h"
#include "cache/pool.h"
#include "cache/stream.h"

#include "bench/bench.h"

#define HEADS 32
#define KV_HEADS 8
#define HEAD_DIM 128
#define PAGE_BYTES (16 * 1024)
#define REPEATS 9 /* odd: the median is one run */

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

/* OpenBLAS baseline: per kv head, scores = K q (sgemm over the group's heads),
 * softmax in place, o = V^T p. K and V contiguous [n][d]. */
static void blas_decode(const float *k, const float *v, size_t n, const float *q, float *scores,
                        float *o, float scale)
{
    const int group = HEADS / KV_HEADS;
    for (int g = 0; g < KV_HEADS; g++) {
        const float *kg = k + (size_t)g * n * HEAD_DIM, *vg = v + (size_t)g * n * HEAD_DIM;
        /* scores[group][n] = q[group][d] * K^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, group, (int)n, HEAD_DIM, scale,
                    q + (size_t)g * group * HEAD_DIM, HEAD_DIM, kg, HEAD_DIM, 0.0f, scores, (int)n);
        for (int h = 0; h < group; h++) {
            float *s = scores + (size_t)h * n, mx = -INFINITY, sum = 0;
            for (size_t j = 0; j < n; j++)
                mx = s[j] > mx ? s[j] : mx;
            for (size_t j = 0; j < n; j++)
                sum += (s[j] = expf(s[j] - mx));
            for (size_t j = 0; j < n; j++)
                s[j] /= sum;
        }
        /* o[group][d] = P[group][n] * V[n][d] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, group, HEAD_DIM, (int)n, 1.0f, scores,
                    (int)n, vg, HEAD_DIM, 0.0f, o + (size_t)g * group * HEAD_DIM, HEAD_DIM);
    }
}

static volatile uint64_t pages_sink;

static void run(size_t n)
{
    const size_t kv_bytes = n * KV_HEADS * HEAD_DIM * sizeof(float) * 2; /* K and V */
    const size_t pages_per_stream = (n + kvd_stream_slots_per_page(PAGE_BYTES, HEAD_DIM) - 1) /
                                    kvd_stream_slots_per_page(PAGE_BYTES, HEAD_DIM);
    kvd_pool *pool;
    if (kvd_pool_create((pages_per_stream * KV_HEADS + 8) * PAGE_BYTES, PAGE_BYTES, &pool)) {
        fprintf(stderr, "bench: no memory for the pool\n");
        exit(1);
    }
    kvd_stream streams[KV_HEADS];
    float *k = bench_alloc_huge(n * HEAD_DIM * sizeof(float) * KV_HEADS);
    float *v = bench_alloc_huge(n * HEAD_DIM * sizeof(float) * KV_HEADS);
    float *q = malloc(HEADS * HEAD_DIM * sizeof(float));
    float *o = malloc(HEADS * HEAD_DIM * sizeof(float));
    float *scores = malloc((size_t)(HEADS / KV_HEADS) * n * sizeof(float));
    void **pages = malloc(pages_per_stream * sizeof *pages);
    if (!k || !v || !q || !o || !scores || !pages) {
        fprintf(stderr, "bench: out of memory\n");
        exit(1);
    }
    uint64_t seed = 42;
    for (size_t i = 0; i < n * HEAD_DIM * KV_HEADS; i++) {
        k[i] = frand(&seed);
        v[i] = frand(&seed);
    }
    for (size_t i = 0; i < HEADS * HEAD_DIM; i++)
        q[i] = frand(&seed);
    for (int g = 0; g < KV_HEADS; g++) {
        kvd_stream_init(&streams[g], PAGE_BYTES, HEAD_DIM);
        size_t need = kvd_stream_pages_needed(&streams[g], n);
        if (kvd_stream_reserve_table(&streams[g], need) || kvd_pool_alloc(pool, need, pages)) {
            fprintf(stderr, "bench: pool too small\n");
            exit(1);
        }
        kvd_stream_append(&streams[g], pool, n, k + (size_t)g * n * HEAD_DIM, v + (size_t)g * n * HEAD_DIM,
                          HEAD_DIM, pages);
    }
    const float scale = 1.0f / sqrtf(HEAD_DIM);
    double t[REPEATS];
    printf("n=%zu tokens, %d q heads / %d kv heads, d=%d, KV %.0f MiB\n", n, HEADS, KV_HEADS, HEAD_DIM,
           (double)kv_bytes / (1 << 20));
    /* Memory bandwidth: read the same number of bytes (K and V of every kv
     * head), with two independently written loops that must agree. */
    const double read_gbs = bench_read_reference(k, kv_bytes / 2, v, kv_bytes / 2, REPEATS, "  ");
    printf("  %-22s %8.2f GB/s   1.00 (reference)\n", "read loop", read_gbs);

    /* The same bytes where the kernel finds them: each stream's K and V
     * regions page by page (16 KiB pages, so runs of at most 8 KB). The
     * gap to the read loop is what the paged layout costs any reader. */
    for (int r = 0; r < REPEATS; r++) {
        bench_cold();
        const double t0 = bench_now();
        uint64_t x = 0;
        for (int g = 0; g < KV_HEADS; g++) {
            const kvd_kv_pages kv = kvd_stream_view(&streams[g]);
            for (size_t j = 0; j < n; j += kv.slots_per_page) {
                const size_t used = n - j < kv.slots_per_page ? n - j : kv.slots_per_page;
                const unsigned char *page = kv.pages[j / kv.slots_per_page];
                x ^= bench_read_xor(page + kv.k_offset, used * HEAD_DIM * sizeof(float));
                x ^= bench_read_xor(page + kv.v_offset, used * HEAD_DIM * sizeof(float));
            }
        }
        t[r] = bench_now() - t0;
        pages_sink ^= x;
    }
    const double pages_gbs = (double)kv_bytes / bench_median(t, REPEATS) / 1e9;
    printf("  %-22s %8.2f GB/s   %.2f (the pool's pages, same order as the kernel)\n",
           "read loop over pages", pages_gbs, pages_gbs / read_gbs);

    size_t n_kernels;
    const kvd_attention_kernels *all = kvd_attention_kernels_all(&n_kernels);
    for (size_t kk = 0; kk < n_kernels; kk++) {
        int reps = strcmp(all[kk].name, "scalar") == 0 ? 3 : REPEATS;
        for (int r = 0; r < reps; r++) {
            bench_cold(); /* from DRAM, as the read loops */
            double t0 = bench_now();
            for (int g = 0; g < KV_HEADS; g++) {
                kvd_kv_segment seg = {kvd_stream_view(&streams[g]), n};
                all[kk].attend(&seg, 1, q + (size_t)g * (HEADS / KV_HEADS) * HEAD_DIM, HEADS / KV_HEADS,
                               scale, o + (size_t)g * (HEADS / KV_HEADS) * HEAD_DIM);
            }
            t[r] = bench_now() - t0;
        }
        double sec = bench_median(t, reps), gbs = (double)kv_bytes / sec / 1e9;
        printf("  kvd %-18s %8.2f GB/s   %.2f of read loop   (%.3f ms per decode token)\n", all[kk].name,
               gbs, gbs / read_gbs, sec * 1e3);
    }
    for (int r = 0; r < REPEATS; r++) {
        bench_cold();
        double t0 = bench_now();
        blas_decode(k, v, n, q, scores, o, scale);
        t[r] = bench_now() - t0;
    }
    double sec = bench_median(t, REPEATS), gbs = (double)kv_bytes / sec / 1e9;
    printf("  %-22s %8.2f GB/s   %.2f of read loop   (%.3f ms per decode token)\n", "openblas sgemm",
           gbs, gbs / read_gbs, sec * 1e3);

    for (int g = 0; g < KV_HEADS; g++)
        kvd_stream_release(&streams[g], pool);
    kvd_pool_destroy(pool);
    free(k);
    free(v);
    free(q);
    free(o);
    free(scores);
    free(pages);
}

int main(int argc, char **argv)
{
    openblas_set_num_threads(1); /* one thread, like one kvd worker */
    if (argc < 2) {
        run(32768);
        return 0;
    }
    for (int i = 1; i < argc; i++)
        run((size_t)strtoull(argv[i], NULL, 10));
    return 0;
}
