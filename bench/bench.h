/* bench/bench.h — what every benchmark program shares: a monotonic clock,
 * the median of repeated timings, and the streaming-read loop that stands for
 * memory bandwidth (same bytes read once, widest vectors the CPU has, eight
 * independent accumulators). Header-only: each bench is one program. */
#ifndef KVD_BENCH_H
#define KVD_BENCH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

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

/* bytes of memory on 2 MiB boundaries, advised MADV_HUGEPAGE as kvd's pool
 * arena is (cache/pool.c): a read loop over 4 KiB pages would pay TLB walks
 * the kernel it stands beside does not. Exits on failure (a bench has no
 * other way on). Free with free(). */
static inline void *bench_alloc_huge(size_t bytes)
{
    const size_t huge = (size_t)2 << 20;
    void *p = aligned_alloc(huge, (bytes + huge - 1) / huge * huge);
    if (p == NULL) {
        fprintf(stderr, "bench: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
#ifdef MADV_HUGEPAGE
    madvise(p, (bytes + huge - 1) / huge * huge, MADV_HUGEPAGE); /* advice only */
#endif
    return p;
}

/* Starts the next timed pass from DRAM: reads a scratch buffer of twice the
 * last-level cache (sysconf; 64 MiB where it says nothing, at most 1 GiB)
 * so nothing read before stays in any cache level. A model's decode reads
 * every layer's cache once per token, far more than any LLC holds, so cold
 * is how kvd meets its bytes. Some machines' LLC holds a whole 32k-token
 * cache (this project's development VM reports 480 MiB): without this,
 * kernels and read loops are timed from it, and a loop that runs right
 * after another over the same bytes finds them there, which skews the
 * alternating medians (the second loop always looked 16-55% faster).
 * KVD_BENCH_COLD=0 turns it off (warm timings, quicker runs). */
static inline void bench_cold(void)
{
    static unsigned char *scratch;
    static size_t bytes;
    static int off = -1;
    static volatile uint64_t sink;
    if (off < 0) {
        const char *e = getenv("KVD_BENCH_COLD");
        off = e != NULL && strcmp(e, "0") == 0;
        long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
        bytes = llc > 0 ? 2 * (size_t)llc : (size_t)64 << 20;
        if (bytes > (size_t)1 << 30)
            bytes = (size_t)1 << 30;
        if (!off) {
            scratch = malloc(bytes);
            if (scratch == NULL)
                off = 1; /* warm timings rather than none */
            else
                memset(scratch, 1, bytes); /* real pages, not the zero page */
        }
    }
    if (off)
        return;
    uint64_t x = 0;
    for (size_t i = 0; i < bytes; i += 64) /* one word per line brings the line */
        x ^= *(const volatile uint64_t *)(const void *)(scratch + i);
    sink ^= x;
}

/* The CPU's model name from /proc/cpuinfo ("unknown CPU" where there is
 * none, e.g. on arm64 kernels that print no model name): every bench names
 * the machine its ratios came from. */
static inline void bench_cpu_model(char *out, size_t len)
{
    snprintf(out, len, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[256];
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            const char *c = strchr(line, ':');
            if (c && c[1]) {
                snprintf(out, len, "%s", c + 2);
                out[strcspn(out, "\n")] = 0;
            }
            break;
        }
    fclose(f);
}

/* A TCP connection to 127.0.0.1:port with Nagle off (the HTTP benches send
 * one small request and wait for its answer), or -1. */
static inline int bench_dial_loopback(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
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

/* A second read loop, written independently of the first to check it: a
 * different instruction stream (integer XOR of 64-byte lines instead of f32
 * adds, four accumulators instead of eight, pointer walk instead of index)
 * over the same bytes. `make bench` builds Release (-O3), and both loops are
 * printed: if they disagree by more than 5% the reference is not a read
 * loop's limit but an artefact of its code, and the bench says so. */
#if defined(__x86_64__)
__attribute__((target("avx512f"))) static inline uint64_t bench_xor_avx512(const void *p, size_t bytes)
{
    const char *c = p, *end = c + bytes / 256 * 256;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (; c < end; c += 256) {
        a0 = _mm512_xor_si512(a0, _mm512_loadu_si512((const void *)c));
        a1 = _mm512_xor_si512(a1, _mm512_loadu_si512((const void *)(c + 64)));
        a2 = _mm512_xor_si512(a2, _mm512_loadu_si512((const void *)(c + 128)));
        a3 = _mm512_xor_si512(a3, _mm512_loadu_si512((const void *)(c + 192)));
    }
    a0 = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    uint64_t t[8], r = 0;
    _mm512_storeu_si512((void *)t, a0);
    for (int i = 0; i < 8; i++)
        r ^= t[i];
    return r;
}

__attribute__((target("avx2"))) static inline uint64_t bench_xor_avx2(const void *p, size_t bytes)
{
    const char *c = p, *end = c + bytes / 128 * 128;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (; c < end; c += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)c));
        a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(c + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(c + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(c + 96)));
    }
    a0 = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    uint64_t t[4], r = 0;
    _mm256_storeu_si256((__m256i *)t, a0);
    for (int i = 0; i < 4; i++)
        r ^= t[i];
    return r;
}
#endif

/* The second loop: XORs every 8-byte word of p[0..bytes) (whole words). */
static inline uint64_t bench_read_xor(const void *p, size_t bytes)
{
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f"))
        return bench_xor_avx512(p, bytes);
    if (__builtin_cpu_supports("avx2"))
        return bench_xor_avx2(p, bytes);
#endif
    const uint64_t *w = p;
    uint64_t r0 = 0, r1 = 0;
    for (size_t i = 0; i + 2 <= bytes / 8; i += 2) {
        r0 ^= w[i];
        r1 ^= w[i + 1];
    }
    return r0 ^ r1;
}

/* One timing of each read loop over a[0..bytes_a) then b[0..bytes_b) (b
 * may be NULL) into *t1 (f32 add) and *t2 (int xor), each from DRAM
 * (bench_cold); which loop goes first still alternates with rep. */
static inline void bench_read_pair(const void *a, size_t bytes_a, const void *b, size_t bytes_b, int rep,
                                   double *t1, double *t2)
{
    static volatile float sink;
    static volatile uint64_t xsink;
    for (int k = 0; k < 2; k++) {
        bench_cold(); /* each loop from DRAM, not from the other's LLC lines */
        const double t0 = bench_now();
        if ((k ^ rep) & 1)
            xsink ^= bench_read_xor(a, bytes_a) ^ (b ? bench_read_xor(b, bytes_b) : 0);
        else
            sink += bench_read_floats(a, bytes_a / 4) + (b ? bench_read_floats(b, bytes_b / 4) : 0.0f);
        *(((k ^ rep) & 1) ? t2 : t1) = bench_now() - t0;
    }
}

/* Medians of n timings of each loop over `bytes`: prints both and whether
 * they agree within 5%; returns the first loop's GB/s (the reference). */
static inline double bench_read_report(double bytes, double *t1, double *t2, int n, const char *indent)
{
    const double g1 = bytes / bench_median(t1, n) / 1e9, g2 = bytes / bench_median(t2, n) / 1e9;
    const double dev = fabs(g1 / g2 - 1.0);
    printf("%sread loop (f32 add, 8 acc) %8.2f GB/s; second loop (int xor, 4 acc) %8.2f GB/s: %s (%.1f%%)\n",
           indent, g1, g2, dev <= 0.05 ? "agree within 5%" : "DISAGREE by more than 5%", dev * 100.0);
    return g1;
}

/* Both loops, `repeats` times (at most 64) in a row. */
static inline double bench_read_reference(const void *a, size_t bytes_a, const void *b, size_t bytes_b,
                                          int repeats, const char *indent)
{
    double t1[64], t2[64];
    if (repeats > 64)
        repeats = 64;
    for (int r = 0; r < repeats; r++)
        bench_read_pair(a, bytes_a, b, bytes_b, r, &t1[r], &t2[r]);
    return bench_read_report((double)bytes_a + (b ? (double)bytes_b : 0.0), t1, t2, repeats, indent);
}

#endif
