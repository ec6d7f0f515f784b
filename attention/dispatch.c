/* attention/dispatch.c — runtime CPU dispatch: picks the attention kernels
 * for the running CPU once (AVX-512F, else AVX2+FMA, else scalar; the SIMD
 * levels also need F16C for half-precision rows and scales) and names the
 * CPU features in use for /v1/info. One binary runs on any x86-64 or arm64
 * machine; only the chosen kernel uses wider instructions. Every kernel
 * takes every row format and any number of segments. */
#include <stdatomic.h>
#include <stddef.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "attention/attention.h"
#include "attention/kernels.h"

/* Scalar first, best last; the prefix this CPU supports is usable. */
static const kvd_attention_kernels kernel_tables[] = {
    {.name = "scalar", .attend = kvd__attend_scalar, .attend_lse = kvd__attend_lse_scalar,
     .attend_lse_scores = kvd__attend_lse_scores_scalar},
#if defined(__x86_64__)
    {.name = "avx2", .attend = kvd__attend_avx2, .attend_lse = kvd__attend_lse_avx2,
     .attend_lse_scores = kvd__attend_lse_scores_avx2},
    {.name = "avx512", .attend = kvd__attend_avx512, .attend_lse = kvd__attend_lse_avx512,
     .attend_lse_scores = kvd__attend_lse_scores_avx512},
#endif
};

#if defined(__x86_64__)
/* F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports has
 * no "f16c" name, so ask the CPU directly (works with either compiler). */
static int cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}
#endif

/* How many kernel levels this CPU can run: 1 scalar, 2 + AVX2/FMA/F16C,
 * 3 + AVX-512F. Idempotent, so a race between first callers only computes
 * the same value twice. Every kernel table (standard, tensor) is indexed by it. */
size_t kvd__simd_levels(void)
{
    static atomic_size_t cached; /* 0 = not computed yet; else count */
    size_t n = atomic_load_explicit(&cached, memory_order_relaxed);
    if (n != 0)
        return n;
    n = 1;
#if defined(__x86_64__)
    __builtin_cpu_init(); /* needed if we run before constructors (harmless otherwise) */
    /* F16C came with Ivy Bridge / Piledriver, before AVX2; checked anyway. */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && cpu_has_f16c()) {
        n = 2;
        if (__builtin_cpu_supports("avx512f"))
            n = 3;
    }
#endif
    atomic_store_explicit(&cached, n, memory_order_relaxed);
    return n;
}

const kvd_attention_kernels *kvd_attention_kernels_get(void)
{
    return &kernel_tables[kvd__simd_levels() - 1];
}

const kvd_attention_kernels *kvd_attention_kernels_all(size_t *n)
{
    *n = kvd__simd_levels();
    return kernel_tables;
}

const char *kvd_cpu_features(void)
{
    /* Features the chosen kernel relies on (static strings: nothing to build). */
    switch (kvd__simd_levels()) {
    case 3:
        return "avx2 fma f16c avx512f";
    case 2:
        return "avx2 fma f16c";
    default:
        return "";
    }
}
