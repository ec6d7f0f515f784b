/* bench/bench.h — what every benchmark program shares: a monotonic clock,
 * the median of repeated timings, and the streaming-read loop that stands for
 * memory bandwidth (same bytes read once, widest vectors the CPU has, eight
 * independent accumulators). Header-only: each bench is one program. */
#ifndef KVD_BENCH_H
#define KVD_BENCH_H

#include <stddef.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of n timings (sorts t); n odd keeps it one real run. */
static inline double bench_median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, bench_cmp_double);
    return t[n / 2];
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static inline float bench_read_avx512(const float *restrict x, size_t n)
{
    __m512 a[8];
    for (int l = 0; l < 8; l++)
        a[l] = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 128 <= n; i += 128)
        for (int l = 0; l < 8; l++)
            a[l] = _mm512_add_ps(a[l], _mm512_loadu_ps(x + i + 16 * l));
    for (int l = 1; l < 8; l++)
        a[0] = _mm512_add_ps(a[0], a[l]);
    float s = _mm512_reduce_add_ps(a[0]);
    for (; i < n; i++)
        s += x[i];
    return s;
}

__attribute__((target("avx2"))) static inline float bench_read_avx2(const float *restrict x, size_t n)
{
    __m256 a[8];
    for (int l = 0; l < 8; l++)
        a[l] = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int l = 0; l < 8; l++)
            a[l] = _mm256_add_ps(a[l], _mm256_loadu_ps(x + i + 8 * l));
    for (int l = 1; l < 8; l++)
        a[0] = _mm256_add_ps(a[0], a[l]);
    float t[8], s = 0.0f;
    _mm256_storeu_ps(t, a[0]);
    for (int l = 0; l < 8; l++)
        s += t[l];
    for (; i < n; i++)
        s += x[i];
    return s;
}
#endif

/* The read loop: sums every float of x[0..n). */
static inline float bench_read_floats(const float *restrict x, size_t n)
{
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f"))
        return bench_read_avx512(x, n);
    if (__builtin_cpu_supports("avx2"))
        return bench_read_avx2(x, n);
#endif
    float acc[16] = {0}, s = 0.0f;
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++)
            acc[l] += x[i + l];
    for (int l = 0; l < 16; l++)
        s += acc[l];
    for (; i < n; i++)
        s += x[i];
    return s;
}

#endif
