/* bench/tensor.c — tensor attention, four caches against two caches.
 * One decode query of a GQA group (4 query heads over 1 kv head, d = 128 by
 * default) over n tokens, with the fastest kernels this CPU runs. In the
 * same run, one thread: an FMA peak loop (the four-cache kernel is
 * compute-bound: its O(n d) caches sit in L1/L2) and a streaming-read loop
 * over the very pages the two-cache kernel reads (it is memory-bound: n^2
 * rows), so the printed fractions compare like with like on a noisy machine.
 * Caches live in 16 KiB pages built here by hand, in a shuffled block table
 * as a pool hands them out after churn.
 * Last, the price of a quantized dtype in each layout: the output error of
 * the four-cache (factors rounded once) and of the two-cache (factors
 * rounded, then each pair row rounded again) against exact attention in
 * double, f16 / bf16 / int8 / int4, as production computes them; and the
 * decode time of a quantized four-cache before and after issue 9 §3: the
 * scalar view kernel over the quantized rows against dequantizing the four
 * caches once (kvd_tensor_view_rows) and running the SIMD kernel.
 * Usage: bench_tensor [head_dim [n ...]]   (default 128; n = 8 .. 1024)
 *        bench_tensor quant [head_dim [n ...]]   (only the last table;
 *        default 128, n = 512 2048) */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention/attention.h"
#include "attention/kernels.h"
#include "attention/tensor.h"
#include "cache/quant.h"

#include "bench/bench.h"

#define HEADS 4 /* query heads of the one kv head (a GQA group) */
#define PAGE_BYTES (16 * 1024)
#define REPEATS 9           /* samples; odd, so the median is one of them */
#define MIN_SAMPLE_S 0.02   /* each sample repeats the call for at least this long */
#define PEAK_ITERS 20000000 /* FMA loop iterations per sample (x16 chains) */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void) /* [-1, 1) */
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static void *xalloc(size_t bytes)
{
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (p == NULL) {
        fprintf(stderr, "bench_tensor: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

/* ---- paged caches ---------------------------------------------------------- */

/* A view over `rows` slots in 16 KiB pages [K spp x d][V spp x d], carved
 * from one arena and listed in a shuffled order. */
typedef struct bench_view {
    unsigned char *arena;
    const unsigned char **table; /* [n_pages] */
    size_t n_pages;
    kvd_kv_pages kv;
} bench_view;

static void view_init(bench_view *v, size_t rows, size_t d)
{
    const size_t spp = PAGE_BYTES / (2 * d * sizeof(float));
    v->n_pages = rows == 0 ? 1 : (rows + spp - 1) / spp;
    v->arena = xalloc(v->n_pages * PAGE_BYTES);
    v->table = xalloc(v->n_pages * sizeof *v->table);
    for (size_t p = 0; p < v->n_pages; p++)
        v->table[p] = v->arena + p * PAGE_BYTES;
    for (size_t p = v->n_pages; p > 1; p--) { /* Fisher-Yates */
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        const size_t r = (size_t)(rng >> 33) % p;
        const unsigned char *t = v->table[p - 1];
        v->table[p - 1] = v->table[r];
        v->table[r] = t;
    }
    memset(v->arena, 0, v->n_pages * PAGE_BYTES);
    v->kv = (kvd_kv_pages){.pages = v->table, .slots_per_page = spp, .head_dim = d,
                           .k_offset = 0, .v_offset = spp * d * sizeof(float)};
}

/* Writable rows of slot j (the table holds const pointers into the arena). */
static float *row_at(bench_view *v, size_t j, size_t offset)
{
    const size_t spp = v->kv.slots_per_page;
    unsigned char *page = v->arena + (v->table[j / spp] - v->arena);
    return (float *)(void *)(page + offset) + (j % spp) * v->kv.head_dim;
}

static float *row_k(bench_view *v, size_t j)
{
    return row_at(v, j, v->kv.k_offset);
}

static float *row_v(bench_view *v, size_t j)
{
    return row_at(v, j, v->kv.v_offset);
}

static void view_free(bench_view *v)
{
    free(v->arena);
    free(v->table);
}

/* ---- the two yardsticks ---------------------------------------------------- */

#if defined(__x86_64__)
#include <immintrin.h>
/* 16 independent FMA chains (4-cycle latency x 2 ports needs >= 8). */
__attribute__((target("avx512f"))) static float fma_loop_avx512(long iters)
{
    __m512 a[16];
    const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 16; i++)
        a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            a[i] = _mm512_fmadd_ps(a[i], m, c);
    }
    for (int i = 1; i < 16; i++)
        a[0] = _mm512_add_ps(a[0], a[i]);
    return _mm512_reduce_add_ps(a[0]);
}

__attribute__((target("avx2,fma"))) static float fma_loop_avx2(long iters)
{
    __m256 a[12];
    const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++)
            a[i] = _mm256_fmadd_ps(a[i], m, c);
    }
    for (int i = 1; i < 12; i++)
        a[0] = _mm256_add_ps(a[0], a[i]);
    float t[8], s = 0.0f;
    _mm256_storeu_ps(t, a[0]);
    for (int i = 0; i < 8; i++)
        s += t[i];
    return s;
}

#endif

/* FLOPs per iteration of the peak loop for the widest level (0: scalar). */
static double fma_loop(long iters)
{
    volatile float sink;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) {
        sink = fma_loop_avx512(iters);
        return (void)sink, 16.0 * 16 * 2;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        sink = fma_loop_avx2(iters);
        return (void)sink, 12.0 * 8 * 2;
    }
#endif
    float a[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 8; i++)
            a[i] = a[i] * 0.9999999f + 1e-7f;
    sink = a[0] + a[7];
    (void)sink;
    return 8.0 * 2;
}


/* Reads the used part of every page of a view, in block-table order. */
static float read_view(const bench_view *v, size_t rows)
{
    const size_t spp = v->kv.slots_per_page, d = v->kv.head_dim;
    float s = 0.0f;
    for (size_t p = 0; p * spp < rows; p++) {
        const size_t used = rows - p * spp < spp ? rows - p * spp : spp;
        s += bench_read_floats((const float *)(const void *)(v->table[p] + v->kv.k_offset), used * d);
        s += bench_read_floats((const float *)(const void *)(v->table[p] + v->kv.v_offset), used * d);
    }
    return s;
}

static double peak_gflops(void)
{
    double t[REPEATS];
    double flops_per_iter = fma_loop(1000);
    for (int r = 0; r < REPEATS; r++) {
        const double t0 = bench_now();
        flops_per_iter = fma_loop(PEAK_ITERS);
        t[r] = bench_now() - t0;
    }
    return flops_per_iter * PEAK_ITERS / bench_median(t, REPEATS) * 1e-9;
}

/* ---- timing the kernels ---------------------------------------------------- */

typedef struct bench_case {
    const kvd_tensor_kernels *k;
    const kvd_attention_kernels *std; /* the two-cache: standard attention over pair rows */
    bench_view a, b, pairs; /* (k1, v1), (k2, v2), the n^2 pair rows */
    size_t n;
    float *q;               /* [HEADS][d] */
    float *o, *o2;          /* [HEADS][d] */
    float scale;
} bench_case;

/* Random four caches of n tokens and the two-cache built from them,
 * appended token by token as cache/ would. */
static void case_init(bench_case *c, const kvd_tensor_kernels *k, size_t n, size_t d)
{
    *c = (bench_case){.k = k, .std = kvd_attention_kernels_get(), .n = n,
                      .scale = 1.0f / sqrtf((float)d)};
    view_init(&c->a, n, d);
    view_init(&c->b, n, d);
    for (size_t j = 0; j < n; j++)
        for (size_t l = 0; l < d; l++) {
            row_k(&c->a, j)[l] = frand();
            row_v(&c->a, j)[l] = frand();
            row_k(&c->b, j)[l] = frand();
            row_v(&c->b, j)[l] = frand();
        }
    view_init(&c->pairs, n * n, d);
    float *kr = xalloc((2 * n + 1) * d * sizeof *kr);
    float *vr = xalloc((2 * n + 1) * d * sizeof *vr);
    for (size_t t = 0, row = 0; t < n; t++) {
        kvd_tensor_pair_rows(&c->a.kv, &c->b.kv, t, kr, vr);
        for (size_t i = 0; i < kvd_tensor_pair_rows_added(t); i++, row++) {
            memcpy(row_k(&c->pairs, row), kr + i * d, d * sizeof(float));
            memcpy(row_v(&c->pairs, row), vr + i * d, d * sizeof(float));
        }
    }
    free(kr);
    free(vr);
    c->q = xalloc(HEADS * d * sizeof *c->q);
    c->o = xalloc(HEADS * d * sizeof *c->o);
    c->o2 = xalloc(HEADS * d * sizeof *c->o2);
    for (size_t i = 0; i < HEADS * d; i++)
        c->q[i] = frand();
}

static void case_free(bench_case *c)
{
    view_free(&c->a);
    view_free(&c->b);
    view_free(&c->pairs);
    free(c->q);
    free(c->o);
    free(c->o2);
}

static volatile float sink_f;

/* 0 = four-cache, 1 = two-cache, 2 = read loop over the two-cache pages. */
static void run_once(const bench_case *c, int what)
{
    if (what == 0)
        c->k->four(&c->a.kv, &c->b.kv, c->n, 0, c->q, HEADS, c->scale, c->o);
    else if (what == 1) {
        const kvd_kv_segment seg = {.kv = c->pairs.kv, .n = c->n * c->n};
        c->std->attend(&seg, 1, c->q, HEADS, c->scale, c->o2);
    }
    else
        sink_f = read_view(&c->pairs, c->n * c->n);
}

/* Median seconds per call. */
static double time_call(const bench_case *c, int what)
{
    run_once(c, what); /* warm up (and page in) */
    long reps = 1;
    for (;;) {
        const double t0 = bench_now();
        for (long r = 0; r < reps; r++)
            run_once(c, what);
        if (bench_now() - t0 >= MIN_SAMPLE_S || reps >= (1L << 24))
            break;
        reps *= 2;
    }
    double t[REPEATS];
    for (int s = 0; s < REPEATS; s++) {
        const double t0 = bench_now();
        for (long r = 0; r < reps; r++)
            run_once(c, what);
        t[s] = (bench_now() - t0) / (double)reps;
    }
    return bench_median(t, REPEATS);
}

static double max_abs_diff(const float *x, const float *y, size_t count)
{
    double m = 0.0;
    for (size_t i = 0; i < count; i++)
        m = fmax(m, fabs((double)x[i] - y[i]));
    return m;
}

/* ---- quantized dtypes: output error of each layout ---------------------------- */

/* A view of `rows` slots of per-token formats kf / vf in 16 KiB pages
 * [K rows][V rows] (rows quantized by the caller, kvd_quant_row). */
static void qview_init(bench_view *v, size_t rows, size_t d, kvd_row_format kf,
                       kvd_row_format vf, uint32_t group)
{
    const size_t kb = kvd_row_bytes(kf, d, group), vb = kvd_row_bytes(vf, d, group);
    size_t spp = PAGE_BYTES / (kb + vb);
    while (spp > 1 && (spp * kb + 63) / 64 * 64 + spp * vb > PAGE_BYTES)
        spp--;
    v->n_pages = rows == 0 ? 1 : (rows + spp - 1) / spp;
    v->arena = xalloc(v->n_pages * PAGE_BYTES);
    v->table = xalloc(v->n_pages * sizeof *v->table);
    for (size_t p = 0; p < v->n_pages; p++)
        v->table[p] = v->arena + p * PAGE_BYTES;
    memset(v->arena, 0, v->n_pages * PAGE_BYTES);
    v->kv = (kvd_kv_pages){.pages = v->table, .slots_per_page = spp, .head_dim = d,
                           .k_offset = 0, .v_offset = (spp * kb + 63) / 64 * 64,
                           .k_format = kf, .v_format = vf, .k_row_bytes = (uint32_t)kb,
                           .v_row_bytes = (uint32_t)vb, .group = group};
}

static unsigned char *qrow(bench_view *v, size_t j, int value)
{
    const size_t spp = v->kv.slots_per_page;
    unsigned char *page = v->arena + (v->table[j / spp] - v->arena);
    return page + (value ? v->kv.v_offset + (j % spp) * v->kv.v_row_bytes
                         : v->kv.k_offset + (j % spp) * v->kv.k_row_bytes);
}

/* ||o - x|| / ||x|| over one head's d outputs. */
static double rel_l2(const float *o, const double *x, size_t d)
{
    double e = 0.0, m = 0.0;
    for (size_t i = 0; i < d; i++) {
        e += ((double)o[i] - x[i]) * ((double)o[i] - x[i]);
        m += x[i] * x[i];
    }
    return sqrt(e / m);
}

/* n tokens of head_dim d (uniform [-1, 1) factors, HEADS queries): for each
 * dtype the mean over the heads of the relative L2 output error of the
 * four-cache (kvd_tensor_four_view_lse over the quantized factors, as
 * production runs a quantized four-cache) and of the two-cache (pair rows
 * of the dequantized factors, as kvd_tensor_pair_rows_view gives them to
 * cache/, rounded again into the dtype; the standard kernel over them),
 * both against attention over the f32 factors in double. */
static void quant_errors(size_t n, size_t d, uint32_t group)
{
    static const struct {
        const char *name;
        kvd_row_format f;
    } dtypes[] = {{"f32", KVD_ROW_F32},  {"f16", KVD_ROW_F16}, {"bf16", KVD_ROW_BF16},
                  {"int8", KVD_ROW_I8}, {"int4", KVD_ROW_U4G}};
    float *k1 = xalloc(n * d * sizeof *k1), *k2 = xalloc(n * d * sizeof *k2);
    float *v1 = xalloc(n * d * sizeof *v1), *v2 = xalloc(n * d * sizeof *v2);
    float *q = xalloc(HEADS * d * sizeof *q), *o = xalloc(HEADS * d * sizeof *o);
    double *exact = xalloc(HEADS * d * sizeof *exact), *s = xalloc(n * n * sizeof *s);
    for (size_t i = 0; i < n * d; i++) {
        k1[i] = frand();
        k2[i] = frand();
        v1[i] = frand();
        v2[i] = frand();
    }
    for (size_t i = 0; i < HEADS * d; i++)
        q[i] = frand();
    const float scale = 1.0f / sqrtf((float)d);
    for (size_t h = 0; h < HEADS; h++) { /* exact: two passes in double */
        double mx = -INFINITY, sum = 0.0, *x = exact + h * d;
        for (size_t j = 0; j < n; j++)
            for (size_t k = 0; k < n; k++) {
                double t = 0.0;
                for (size_t i = 0; i < d; i++)
                    t += (double)q[h * d + i] * k1[j * d + i] * k2[k * d + i];
                s[j * n + k] = scale * t;
                mx = fmax(mx, s[j * n + k]);
            }
        for (size_t i = 0; i < d; i++)
            x[i] = 0.0;
        for (size_t j = 0; j < n; j++)
            for (size_t k = 0; k < n; k++) {
                const double w = exp(s[j * n + k] - mx);
                sum += w;
                for (size_t i = 0; i < d; i++)
                    x[i] += w * ((double)v1[j * d + i] * v2[k * d + i]);
            }
        for (size_t i = 0; i < d; i++)
            x[i] /= sum;
    }
    printf("\nquantized dtypes, n = %zu, d = %zu (int4 groups of %u), %d heads: relative L2 output "
           "error against exact attention in double, mean over the heads\n",
           n, d, group, HEADS);
    printf("%6s | %12s %12s | %9s\n", "dtype", "four-cache", "two-cache", "two/four");
    float *kr = xalloc((2 * n + 1) * d * sizeof *kr), *vr = xalloc((2 * n + 1) * d * sizeof *vr);
    for (size_t t = 0; t < sizeof dtypes / sizeof *dtypes; t++) {
        const kvd_row_format f = dtypes[t].f;
        bench_view a, b, pairs;
        qview_init(&a, n, d, f, f, group);
        qview_init(&b, n, d, f, f, group);
        for (size_t j = 0; j < n; j++) {
            kvd_quant_row(f, k1 + j * d, d, group, qrow(&a, j, 0));
            kvd_quant_row(f, v1 + j * d, d, group, qrow(&a, j, 1));
            kvd_quant_row(f, k2 + j * d, d, group, qrow(&b, j, 0));
            kvd_quant_row(f, v2 + j * d, d, group, qrow(&b, j, 1));
        }
        const kvd_tensor_view va = {.seg = {{.kv = a.kv, .n = n}}, .n_seg = 1};
        const kvd_tensor_view vb = {.seg = {{.kv = b.kv, .n = n}}, .n_seg = 1};
        qview_init(&pairs, n * n, d, f, f, group);
        for (size_t tk = 0, row = 0; tk < n; tk++) {
            kvd_tensor_pair_rows_view(&va, &vb, tk, kr, vr);
            for (size_t i = 0; i < kvd_tensor_pair_rows_added(tk); i++, row++) {
                kvd_quant_row(f, kr + i * d, d, group, qrow(&pairs, row, 0));
                kvd_quant_row(f, vr + i * d, d, group, qrow(&pairs, row, 1));
            }
        }
        double e4 = 0.0, e2 = 0.0;
        kvd_tensor_four_view_lse(&va, &vb, n, 0, q, HEADS, scale, o, NULL);
        for (size_t h = 0; h < HEADS; h++)
            e4 += rel_l2(o + h * d, exact + h * d, d) / HEADS;
        const kvd_kv_segment seg = {.kv = pairs.kv, .n = n * n};
        kvd_attention_kernels_get()->attend(&seg, 1, q, HEADS, scale, o);
        for (size_t h = 0; h < HEADS; h++)
            e2 += rel_l2(o + h * d, exact + h * d, d) / HEADS;
        printf("%6s | %12.2e %12.2e | %9.2f\n", dtypes[t].name, e4, e2, e2 / e4);
        fflush(stdout);
        view_free(&a);
        view_free(&b);
        view_free(&pairs);
    }
    free(kr);
    free(vr);
    free(k1);
    free(k2);
    free(v1);
    free(v2);
    free(q);
    free(o);
    free(exact);
    free(s);
}

/* ---- quantized four-cache decode: scalar view kernel vs rows + SIMD -------- */

typedef struct qdecode {
    kvd_tensor_view va, vb;
    size_t n, d;
    float scale;
    const float *q;
    float *o_view, *o_simd;
    float *rows;                    /* [k1, v1, k2, v2][n][d] */
    const unsigned char *page[2];
    const kvd_tensor_kernels *k;
} qdecode;

/* Before: what production ran for a quantized four-cache. */
static void qdecode_view(void *ctx)
{
    const qdecode *c = ctx;
    kvd_tensor_four_view_lse(&c->va, &c->vb, c->n, 0, c->q, HEADS, c->scale, c->o_view, NULL);
}

/* After (cache/step.c): the four caches dequantized once, then the kernel. */
static void qdecode_simd(void *ctx)
{
    qdecode *c = ctx;
    const size_t plane = c->n * c->d;
    kvd_tensor_view_rows(&c->va, c->n, c->rows, c->rows + plane);
    kvd_tensor_view_rows(&c->vb, c->n, c->rows + 2 * plane, c->rows + 3 * plane);
    const kvd_kv_pages a = kvd_tensor_rows_pages(&c->page[0], c->n, c->d);
    const kvd_kv_pages b = kvd_tensor_rows_pages(&c->page[1], c->n, c->d);
    c->k->four_lse(&a, &b, c->n, 0, c->q, HEADS, c->scale, c->o_simd, NULL);
}

/* Median seconds per call of fn over `samples` samples (each >= MIN_SAMPLE_S
 * or one call). */
static double time_fn(void (*fn)(void *), void *ctx, int samples)
{
    fn(ctx);
    long reps = 1;
    for (;;) {
        const double t0 = bench_now();
        for (long r = 0; r < reps; r++)
            fn(ctx);
        if (bench_now() - t0 >= MIN_SAMPLE_S || reps >= (1L << 24))
            break;
        reps *= 2;
    }
    double t[REPEATS];
    for (int s = 0; s < samples; s++) {
        const double t0 = bench_now();
        for (long r = 0; r < reps; r++)
            fn(ctx);
        t[s] = (bench_now() - t0) / (double)reps;
    }
    return bench_median(t, samples);
}

/* One decode query (HEADS heads over one kv head) of a four-cache of n
 * tokens in f16 and int8: before / after time, and the largest output
 * difference between the two (same dequantized floats, other sum order). */
static void quant_decode(size_t d, const size_t *ns, size_t n_ns)
{
    static const struct {
        const char *name;
        kvd_row_format f;
    } dtypes[] = {{"f16", KVD_ROW_F16}, {"int8", KVD_ROW_I8}};
    const kvd_tensor_kernels *k = kvd_tensor_kernels_get();
    printf("\nquantized four-cache decode, d = %zu, %d heads / 1 kv head, one thread (kernels %s): "
           "before = scalar view kernel over the quantized rows (median of 3), after = the four "
           "caches dequantized once + the SIMD kernel (median of %d)\n",
           d, HEADS, k->name, REPEATS);
    printf("%6s %6s | %12s %12s | %8s | %8s\n", "dtype", "n", "before us", "after us", "speedup", "diff");
    for (size_t in = 0; in < n_ns; in++) {
        const size_t n = ns[in];
        for (size_t t = 0; t < sizeof dtypes / sizeof *dtypes; t++) {
            const kvd_row_format f = dtypes[t].f;
            bench_view a, b;
            qview_init(&a, n, d, f, f, 32);
            qview_init(&b, n, d, f, f, 32);
            float *row = xalloc(d * sizeof *row);
            for (size_t j = 0; j < n; j++)
                for (int w = 0; w < 4; w++) {
                    for (size_t i = 0; i < d; i++)
                        row[i] = frand();
                    kvd_quant_row(f, row, d, 32, qrow(w < 2 ? &a : &b, j, w & 1));
                }
            free(row);
            float *q = xalloc(HEADS * d * sizeof *q);
            for (size_t i = 0; i < HEADS * d; i++)
                q[i] = frand();
            qdecode c = {.va = {.seg = {{.kv = a.kv, .n = n}}, .n_seg = 1},
                         .vb = {.seg = {{.kv = b.kv, .n = n}}, .n_seg = 1},
                         .n = n, .d = d, .scale = 1.0f / sqrtf((float)d), .q = q,
                         .o_view = xalloc(HEADS * d * sizeof(float)),
                         .o_simd = xalloc(HEADS * d * sizeof(float)),
                         .rows = xalloc(4 * n * d * sizeof(float)), .k = k};
            c.page[0] = (const unsigned char *)c.rows;
            c.page[1] = (const unsigned char *)(c.rows + 2 * n * d);
            const double tb = time_fn(qdecode_view, &c, 3);
            const double ta = time_fn(qdecode_simd, &c, REPEATS);
            printf("%6s %6zu | %12.1f %12.1f | %7.1fx | %8.1e\n", dtypes[t].name, n, tb * 1e6, ta * 1e6,
                   tb / ta, max_abs_diff(c.o_view, c.o_simd, HEADS * d));
            fflush(stdout);
            free(c.o_view);
            free(c.o_simd);
            free(c.rows);
            free(q);
            view_free(&a);
            view_free(&b);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "quant")) {
        size_t qd = argc > 2 ? (size_t)strtoul(argv[2], NULL, 10) : 128;
        size_t qn[32] = {512, 2048}, n_qn = 2;
        if (argc > 3)
            for (n_qn = 0; (int)n_qn + 3 < argc && n_qn < 32; n_qn++)
                qn[n_qn] = (size_t)strtoul(argv[n_qn + 3], NULL, 10);
        if (qd == 0 || qd > KVD_TENSOR_MAX_FAST_DIM) {
            fprintf(stderr, "bench_tensor quant: head_dim must be 1..%d\n", KVD_TENSOR_MAX_FAST_DIM);
            return 2;
        }
        char cpu[128];
        bench_cpu_model(cpu, sizeof cpu);
        printf("cpu: %s\n", cpu);
        quant_decode(qd, qn, n_qn);
        return 0;
    }
    size_t d = 128;
    size_t ns[32] = {8, 16, 32, 64, 128, 256, 512, 1024};
    size_t n_ns = 8;
    if (argc > 1)
        d = (size_t)strtoul(argv[1], NULL, 10);
    if (argc > 2) {
        n_ns = 0;
        for (int i = 2; i < argc && n_ns < 32; i++)
            ns[n_ns++] = (size_t)strtoul(argv[i], NULL, 10);
    }
    if (d == 0 || d > 4096 || PAGE_BYTES / (2 * d * sizeof(float)) == 0) {
        fprintf(stderr, "bench_tensor: head_dim must be 1..%d\n", PAGE_BYTES / 8);
        return 2;
    }
    const kvd_tensor_kernels *k = kvd_tensor_kernels_get();
    const double peak = peak_gflops();
    printf("tensor attention: kernels %s, %d query heads / 1 kv head, d = %zu, f32, %d KiB pages,"
           " one thread, medians of %d\n",
           k->name, HEADS, d, PAGE_BYTES / 1024, REPEATS);
    printf("FMA peak loop (same run): %.1f GFLOP/s\n", peak);
    printf("four-cache FLOPs per query head: 4 n^2 d (2d for <q (.) k1_j, k2_k>, 2d for the v2 "
           "accumulation) + 3 n d (q (.) k1_j, v1_j (.) u_j, the merge); exp not counted\n");
    printf("two-cache bytes per query: the n^2 pair rows, K and V, 2 n^2 d 4 (read once for the "
           "group); read loop over the same pages\n\n");
    printf("%6s | %10s %10s %8s %7s | %10s %10s %8s %8s %7s | %8s %6s\n", "n", "four us",
           "four bytes", "GFLOP/s", "%peak", "two us", "two bytes", "GB/s", "read GB/s", "%read",
           "two/four", "diff");

    size_t crossover = 0;
    int two_ever_faster = 0;
    for (size_t in = 0; in < n_ns; in++) {
        const size_t n = ns[in];
        bench_case c;
        case_init(&c, k, n, d);
        const double t4 = time_call(&c, 0);
        const double t2 = time_call(&c, 1);
        const double tr = time_call(&c, 2);
        const double diff = max_abs_diff(c.o, c.o2, HEADS * d);

        const double nn = (double)n;
        const double flops = HEADS * (4.0 * nn * nn * (double)d + 3.0 * nn * (double)d);
        const double bytes4 = 4.0 * nn * (double)d * sizeof(float);
        const double bytes2 = 2.0 * nn * nn * (double)d * sizeof(float);
        const double gflops = flops / t4 * 1e-9;
        const double gbs = bytes2 / t2 * 1e-9, rgbs = bytes2 / tr * 1e-9;
        printf("%6zu | %10.1f %9.2fM %8.1f %6.1f%% | %10.1f %9.2fM %8.1f %8.1f %6.1f%%"
               " | %8.2f %6.0e\n",
               n, t4 * 1e6, bytes4 / 1048576.0, gflops, 100.0 * gflops / peak, t2 * 1e6,
               bytes2 / 1048576.0, gbs, rgbs, 100.0 * gbs / rgbs, t2 / t4, diff);
        fflush(stdout);
        if (t2 < t4) {
            two_ever_faster = 1;
            crossover = n; /* largest n at which the two-cache still wins */
        }
        case_free(&c);
    }
    if (two_ever_faster)
        printf("\ncrossover: the two-cache is faster per query up to n = %zu (of those run), at "
               "n/2 times the four-cache's bytes there (%.0fx)\n",
               crossover, (double)crossover / 2.0);
    else
        printf("\ncrossover: none in the n run: the four-cache is faster at every n (same FLOPs, "
               "n/2 times fewer bytes)\n");

    /* Every kernel level this CPU runs, at one n (the SIMD gain over the
     * scalar tier); the standard tables have the same levels. */
    const size_t n_levels_at = 128;
    size_t n_levels;
    const kvd_tensor_kernels *levels = kvd_tensor_kernels_all(&n_levels);
    const kvd_attention_kernels *std_levels = kvd_attention_kernels_all(&n_levels);
    bench_case c;
    case_init(&c, k, n_levels_at, d);
    printf("\nkernel levels at n = %zu: per query (%d heads)\n", n_levels_at, HEADS);
    for (size_t i = 0; i < n_levels; i++) {
        c.k = &levels[i];
        c.std = &std_levels[i];
        const double t4 = time_call(&c, 0), t2 = time_call(&c, 1);
        printf("  %-7s four %10.1f us   two %10.1f us\n", levels[i].name, t4 * 1e6, t2 * 1e6);
    }
    case_free(&c);

    quant_errors(128, d, 32);
    quant_errors(680, 32, 32); /* the VAR schedule's tokens: 462,400 pair rows */
    if (d <= KVD_TENSOR_MAX_FAST_DIM)
        quant_decode(d, (const size_t[]){512, 2048}, 2);
    return 0;
}
