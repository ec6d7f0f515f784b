/* tests/attention/tiers.h — the kernel tests' report of which kernel tiers
 * ran on this CPU and which were skipped, and why (a CPU feature missing,
 * or a build without the x86-64 tiers), so a machine without AVX-512 says
 * so instead of passing silently on fewer tiers. Test-only, header-only. */
#ifndef KVD_TESTS_ATTENTION_TIERS_H
#define KVD_TESTS_ATTENTION_TIERS_H

#include <stdio.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/kernels.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

/* Every tier the kernel tables can hold, in level order (dispatch.c). */
static const char *const tiers_all[] = {"scalar", "avx2", "avx512"};

/* Why tier `level` (0-based) did not run: the features it needs (every
 * feature of the tiers below it too) that this CPU lacks. */
static const char *tiers_why_skipped(size_t level, char *buf, size_t cap)
{
#if defined(__x86_64__)
    unsigned a, b, c, d;
    const int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
    __builtin_cpu_init();
    const struct {
        const char *name;
        int has;
        size_t level; /* first tier that needs it */
    } need[] = {
        {"avx2", __builtin_cpu_supports("avx2"), 1},
        {"fma", __builtin_cpu_supports("fma"), 1},
        {"f16c", f16c, 1},
        {"avx512f", __builtin_cpu_supports("avx512f"), 2},
    };
    snprintf(buf, cap, "CPU lacks");
    for (size_t i = 0; i < sizeof need / sizeof *need; i++)
        if (need[i].level <= level && !need[i].has)
            snprintf(buf + strlen(buf), cap - strlen(buf), " %s", need[i].name);
    return buf;
#else
    (void)level;
    snprintf(buf, cap, "not an x86-64 build");
    return buf;
#endif
}

/* Prints e.g. "attention/standard tiers: scalar avx2 ran" and
 * "attention/standard tier avx512: skipped, CPU lacks avx512f". The tiers
 * that ran are the prefix kvd_attention_kernels_all gives (the tensor
 * tables have the same levels). */
static void tiers_print(const char *suite)
{
    size_t n;
    const kvd_attention_kernels *all = kvd_attention_kernels_all(&n);
    printf("%s tiers:", suite);
    for (size_t i = 0; i < n; i++)
        printf(" %s", all[i].name);
    printf(" ran\n");
    for (size_t i = n; i < sizeof tiers_all / sizeof *tiers_all; i++) {
        char why[96];
        printf("%s tier %s: skipped, %s\n", suite, tiers_all[i],
               tiers_why_skipped(i, why, sizeof why));
    }
    fflush(stdout);
}

#endif
