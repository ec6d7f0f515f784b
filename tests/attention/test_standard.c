/* tests/attention/test_standard.c — standard attention kernels on f32 caches
 * against an independent double-precision oracle (plain two-pass softmax),
 * every kernel tier (scalar, avx2, avx512) against the oracle kvd_attend_ref,
 * printing which tiers ran, and a cache split into several
 * segments against the same cache as one. Caches are built here by hand over
 * malloc'd 64-byte-aligned pages, so this test depends on attention/ only
 * (quantized formats: tests/cache/test_quant_attention.c). */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/kernels.h"
#include "tests/attention/tiers.h"
#include "tests/support/check_main.h"

#if defined(__x86_64__)
#include <cpuid.h>
/* F16C (CPUID leaf 1, ECX bit 29), as dispatch.c checks it. */
static int cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}
#endif

/* Tolerances. Outputs are convex combinations of value rows, so errors are
 * measured against maxv = max |v| over the visible rows:
 *   |o - o_exact| <= maxv * (ATTN_REL_TOL + ATTN_SCORE_TOL * S),
 *   S = |scale| * max_j sum_i |q_i k_ji|   (the largest score magnitude).
 * ATTN_REL_TOL covers exp (a few ulp per weight) and f32 accumulation over
 * the <= ~250 rows used here (worst case n * 2^-24 = 1.5e-5; typical
 * sqrt(n) * 2^-24 ~ 1e-6). ATTN_SCORE_TOL: an f32 dot of d <= 130 terms is off
 * by at most d * 2^-24 * S (~7.7e-6 * S), and a score error delta scales a
 * weight by e^(+-delta), which moves the output by <= 2 * delta * maxv; random
 * data sits far below that worst case. A real bug (a lost row, a missed
 * rescale) shows up as an error of order 1e-2 * maxv or more. */
#define ATTN_REL_TOL 2e-5
#define ATTN_SCORE_TOL 1e-5
/* Kernel vs _ref: each is within the bound above of the exact answer, so
 * they are within twice of it of each other (triangle inequality). */
#define KERNEL_VS_REF_FACTOR 2.0

#define PAGE_ALIGN 64

/* ---- deterministic random numbers (xorshift64*) ---------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static float rng_uniform(float lo, float hi) /* [lo, hi) */
{
    return lo + (hi - lo) * (float)((rng_next() >> 40) * (1.0 / 16777216.0));
}

/* ---- a hand-built paged cache ---------------------------------------------- */

typedef struct test_cache {
    unsigned char **pages; /* [n_pages] each page_bytes, 64-byte aligned */
    size_t n_pages;
    kvd_kv_pages kv;
    float *k;              /* [n][d] the same keys, flat, for the oracle */
    float *v;              /* [n][d] */
    size_t n;
} test_cache;

static size_t align64(size_t x)
{
    return (x + PAGE_ALIGN - 1) / PAGE_ALIGN * PAGE_ALIGN;
}

/* A cache of n slots (keys/values from fill_kv, or uniform in [-1, 1)). The
 * K block starts 64 bytes into the page (so a kernel that ignores k_offset
 * fails), and every slot of the last page past n is NaN (so a kernel that
 * reads past n_visible fails). */
static void cache_build(test_cache *c, size_t n, size_t d, size_t spp, float lo, float hi)
{
    const size_t block = align64(spp * d * sizeof(float));
    const size_t k_off = PAGE_ALIGN, v_off = k_off + block;
    const size_t page_bytes = v_off + block + PAGE_ALIGN;
    c->n = n;
    c->n_pages = n == 0 ? 1 : (n + spp - 1) / spp;
    c->pages = calloc(c->n_pages, sizeof *c->pages);
    c->k = malloc((n ? n : 1) * d * sizeof(float));
    c->v = malloc((n ? n : 1) * d * sizeof(float));
    ck_assert(c->pages && c->k && c->v);
    for (size_t p = 0; p < c->n_pages; p++) {
        c->pages[p] = aligned_alloc(PAGE_ALIGN, page_bytes);
        ck_assert(c->pages[p] != NULL);
        float *f = (float *)c->pages[p];
        for (size_t i = 0; i < page_bytes / sizeof(float); i++)
            f[i] = NAN;
    }
    c->kv = (kvd_kv_pages){.pages = (const unsigned char *const *)c->pages,
                           .slots_per_page = spp, .head_dim = d,
                           .k_offset = k_off, .v_offset = v_off};
    for (size_t j = 0; j < n; j++) {
        float *kp = (float *)(c->pages[j / spp] + k_off) + (j % spp) * d;
        float *vp = (float *)(c->pages[j / spp] + v_off) + (j % spp) * d;
        for (size_t i = 0; i < d; i++) {
            kp[i] = c->k[j * d + i] = rng_uniform(lo, hi);
            vp[i] = c->v[j * d + i] = rng_uniform(-1.0f, 1.0f);
        }
    }
}

static void cache_free(test_cache *c)
{
    for (size_t p = 0; p < c->n_pages; p++)
        free(c->pages[p]);
    free(c->pages);
    free(c->k);
    free(c->v);
}

/* ---- the oracle: two-pass softmax in double -------------------------------- */

/* out: [d] for one query head over rows 0..n-1 of the flat k, v. */
static void oracle(const float *k, const float *v, size_t n, size_t d, const float *q,
                   float scale, double *out)
{
    for (size_t i = 0; i < d; i++)
        out[i] = 0.0;
    if (n == 0)
        return;
    double *s = malloc(n * sizeof *s);
    ck_assert(s != NULL);
    double mx = -INFINITY;
    for (size_t j = 0; j < n; j++) {
        double dot = 0.0;
        for (size_t i = 0; i < d; i++)
            dot += (double)q[i] * k[j * d + i];
        s[j] = (double)scale * dot;
        if (s[j] > mx)
            mx = s[j];
    }
    double sum = 0.0;
    for (size_t j = 0; j < n; j++) {
        s[j] = exp(s[j] - mx);
        sum += s[j];
    }
    for (size_t j = 0; j < n; j++)
        for (size_t i = 0; i < d; i++)
            out[i] += s[j] / sum * v[j * d + i];
    free(s);
}

/* The error bound for query head q over the cache (see the tolerances). */
static double error_bound(const test_cache *c, const float *q, float scale, int exact_scores)
{
    const size_t d = c->kv.head_dim;
    double maxv = 0.0, smax = 0.0;
    for (size_t j = 0; j < c->n; j++) {
        double sabs = 0.0;
        for (size_t i = 0; i < d; i++) {
            maxv = fmax(maxv, fabs(c->v[j * d + i]));
            sabs += fabs((double)q[i] * c->k[j * d + i]);
        }
        smax = fmax(smax, fabs(scale) * sabs);
    }
    return maxv * (ATTN_REL_TOL + (exact_scores ? 0.0 : ATTN_SCORE_TOL * smax));
}

typedef void (*attend_fn)(const kvd_kv_segment *, size_t, const float *, size_t, float, float *);

/* Runs fn over the first n_visible rows of c (c->n == n_visible) for n_q
 * random query heads and checks every output against the oracle. */
static void check_kernel(const char *name, attend_fn fn, const test_cache *c, const float *q,
                         size_t n_q, float scale, int exact_scores)
{
    const size_t d = c->kv.head_dim;
    float *o = malloc(n_q * d * sizeof *o);
    double *want = malloc(d * sizeof *want);
    ck_assert(o && want);
    for (size_t i = 0; i < n_q * d; i++)
        o[i] = 12345.0f; /* must all be overwritten */
    const kvd_kv_segment seg = {.kv = c->kv, .n = c->n};
    fn(&seg, 1, q, n_q, scale, o);
    for (size_t h = 0; h < n_q; h++) {
        oracle(c->k, c->v, c->n, d, q + h * d, scale, want);
        const double tol = error_bound(c, q + h * d, scale, exact_scores);
        for (size_t i = 0; i < d; i++) {
            const float got = o[h * d + i];
            /* Assert only on failure: each ck_assert records a checkpoint, which
             * costs more than the kernel for millions of elements. */
            if (isfinite(got) && fabs(got - want[i]) <= tol)
                continue;
            ck_assert_msg(isfinite(got), "%s: d=%zu n=%zu n_q=%zu scale=%g: o[%zu][%zu] = %g",
                          name, d, c->n, n_q, (double)scale, h, i, (double)got);
            ck_assert_msg(fabs(got - want[i]) <= tol,
                          "%s: d=%zu n=%zu spp=%zu n_q=%zu scale=%g: o[%zu][%zu] = %.9g, "
                          "want %.9g (|err| %.3g > tol %.3g)",
                          name, d, c->n, c->kv.slots_per_page, n_q, (double)scale, h, i,
                          (double)got, want[i], fabs(got - want[i]), tol);
        }
    }
    free(o);
    free(want);
}

static float *random_queries(size_t n_q, size_t d, float lo, float hi)
{
    float *q = malloc(n_q * d * sizeof *q);
    ck_assert(q != NULL);
    for (size_t i = 0; i < n_q * d; i++)
        q[i] = rng_uniform(lo, hi);
    return q;
}

static const size_t head_dims[] = {1, 3, 8, 17, 64, 128, 130};
static const size_t group_sizes[] = {1, 2, 4, 8};
static const size_t pages_spp[] = {1, 5, 16};

/* The scalar oracle kvd_attend_ref and every kernel tier this CPU offers
 * (the portable scalar tier first) against the double-precision oracle over
 * shapes, GQA groups, page geometries, visible counts and scales. */
START_TEST(test_kernels_match_oracle)
{
    size_t n_kernels;
    const kvd_attention_kernels *kernels = kvd_attention_kernels_all(&n_kernels);
    ck_assert_uint_ge(n_kernels, 1);
    ck_assert_str_eq(kernels[0].name, "scalar");
    for (size_t di = 0; di < sizeof head_dims / sizeof *head_dims; di++) {
        const size_t d = head_dims[di];
        const float scales[] = {1.0f / sqrtf((float)d), 0.0f, 0.37f, -1.0f, 3.0f};
        for (size_t si = 0; si < sizeof pages_spp / sizeof *pages_spp; si++) {
            const size_t spp = pages_spp[si];
            /* 0, 1, exactly one page, one page + 1, multi-page with a ragged
             * last page, and more than one SIMD block (16) of keys. */
            const size_t visible[] = {0, 1, spp, spp + 1, 3 * spp + 2, 37};
            for (size_t vi = 0; vi < sizeof visible / sizeof *visible; vi++) {
                test_cache c;
                cache_build(&c, visible[vi], d, spp, -1.0f, 1.0f);
                for (size_t gi = 0; gi < sizeof group_sizes / sizeof *group_sizes; gi++) {
                    const size_t n_q = group_sizes[gi];
                    float *q = random_queries(n_q, d, -1.0f, 1.0f);
                    for (size_t sc = 0; sc < sizeof scales / sizeof *scales; sc++) {
                        check_kernel("ref", kvd_attend_ref, &c, q, n_q, scales[sc], 0);
                        for (size_t ki = 0; ki < n_kernels; ki++)
                            check_kernel(kernels[ki].name, kernels[ki].attend, &c, q,
                                         n_q, scales[sc], 0);
                    }
                    free(q);
                }
                cache_free(&c);
            }
        }
    }
}
END_TEST

/* Longer caches (a few hundred tokens) with random page sizes and shapes. */
START_TEST(test_random_long_caches)
{
    size_t n_kernels;
    const kvd_attention_kernels *kernels = kvd_attention_kernels_all(&n_kernels);
    for (int iter = 0; iter < 40; iter++) {
        const size_t d = head_dims[rng_next() % (sizeof head_dims / sizeof *head_dims)];
        const size_t n_q = group_sizes[rng_next() % (sizeof group_sizes / sizeof *group_sizes)];
        const size_t spp = 1 + rng_next() % 40;
        const size_t n = 1 + rng_next() % 250;
        const float scale = rng_uniform(-2.0f, 2.0f) / sqrtf((float)d);
        test_cache c;
        cache_build(&c, n, d, spp, -2.0f, 2.0f);
        float *q = random_queries(n_q, d, -2.0f, 2.0f);
        for (size_t ki = 0; ki < n_kernels; ki++)
            check_kernel(kernels[ki].name, kernels[ki].attend, &c, q, n_q, scale, 0);
        free(q);
        cache_free(&c);
    }
}
END_TEST

/* Scores in the thousands, both signs: exp(score) alone overflows (> 88) or
 * underflows to 0 for every key, so only a running max keeps the result
 * finite. Keys are one-hot (k_j = e_(j mod d)) and queries integers, so every
 * score is exact in f32 and the tight bound (no score term) applies. */
START_TEST(test_large_scores_stay_finite)
{
    size_t n_kernels;
    const kvd_attention_kernels *kernels = kvd_attention_kernels_all(&n_kernels);
    const float offsets[] = {5000.0f, -5000.0f, 200.0f, -200.0f};
    for (size_t oi = 0; oi < sizeof offsets / sizeof *offsets; oi++) {
        for (size_t di = 0; di < sizeof head_dims / sizeof *head_dims; di++) {
            const size_t d = head_dims[di], n = 3 * d + 7, spp = 7, n_q = 4;
            test_cache c;
            cache_build(&c, n, d, spp, 0.0f, 0.0f);
            for (size_t j = 0; j < n; j++) {
                float *kp = (float *)(c.pages[j / spp] + c.kv.k_offset) + (j % spp) * d;
                kp[j % d] = c.k[j * d + j % d] = 1.0f;
            }
            float *q = random_queries(n_q, d, 0.0f, 0.0f);
            for (size_t i = 0; i < n_q * d; i++)
                q[i] = offsets[oi] + (float)(rng_next() % 8); /* ties and gaps of 1 */
            for (size_t ki = 0; ki < n_kernels; ki++)
                check_kernel(kernels[ki].name, kernels[ki].attend, &c, q, n_q, 1.0f, 1);
            free(q);
            cache_free(&c);
        }
    }
    /* Random data with large entries: scores ~ +-1e4, f32 score rounding
     * dominates, so the bound includes the score term; mainly: finite. */
    for (size_t di = 0; di < sizeof head_dims / sizeof *head_dims; di++) {
        const size_t d = head_dims[di];
        test_cache c;
        cache_build(&c, 50, d, 16, -30.0f, 30.0f);
        float *q = random_queries(8, d, -30.0f, 30.0f);
        for (size_t ki = 0; ki < n_kernels; ki++)
            check_kernel(kernels[ki].name, kernels[ki].attend, &c, q, 8, 1.0f, 0);
        free(q);
        cache_free(&c);
    }
}
END_TEST

/* A group larger than KVD_ATTN_MAX_GROUP is processed in chunks of heads. */
START_TEST(test_group_larger_than_chunk)
{
    size_t n_kernels;
    const kvd_attention_kernels *kernels = kvd_attention_kernels_all(&n_kernels);
    const size_t n_q = KVD_ATTN_MAX_GROUP + 6, d = 17;
    test_cache c;
    cache_build(&c, 41, d, 6, -1.0f, 1.0f);
    float *q = random_queries(n_q, d, -1.0f, 1.0f);
    for (size_t ki = 0; ki < n_kernels; ki++)
        check_kernel(kernels[ki].name, kernels[ki].attend, &c, q, n_q, 0.5f, 0);
    free(q);
    cache_free(&c);
}
END_TEST

/* No visible slot writes zeros (and reads no page: the tables may be empty). */
START_TEST(test_zero_visible_writes_zeros)
{
    size_t n_kernels;
    const kvd_attention_kernels *kernels = kvd_attention_kernels_all(&n_kernels);
    const kvd_kv_segment seg[2] = {
        {.kv = {.pages = NULL, .slots_per_page = 4, .head_dim = 9, .k_offset = 0,
                .v_offset = 256}, .n = 0},
        {.kv = {.pages = NULL, .slots_per_page = 4, .head_dim = 9, .k_offset = 0,
                .v_offset = 256, .k_format = KVD_ROW_U4G, .v_format = KVD_ROW_I8,
                .group = 4}, .n = 0}};
    float q[3 * 9], o[3 * 9];
    for (size_t i = 0; i < 3 * 9; i++)
        q[i] = 1.0f;
    for (size_t ki = 0; ki < n_kernels; ki++) {
        for (size_t i = 0; i < 3 * 9; i++)
            o[i] = NAN;
        kernels[ki].attend(seg, 2, q, 3, 1.0f, o); /* two empty segments */
        for (size_t i = 0; i < 3 * 9; i++)
            ck_assert_msg(o[i] == 0.0f, "%s: o[%zu] = %g", kernels[ki].name, i, (double)o[i]);
        for (size_t i = 0; i < 3 * 9; i++)
            o[i] = NAN;
        kernels[ki].attend(seg, 1, q, 3, 1.0f, o); /* one */
        for (size_t i = 0; i < 3 * 9; i++)
            ck_assert_msg(o[i] == 0.0f, "%s: o[%zu] = %g", kernels[ki].name, i, (double)o[i]);
    }
}
END_TEST

/* Every kernel tier (the portable scalar one included) agrees with the
 * oracle kvd_attend_ref, and the one-segment wrapper kvd_attend_group_ref
 * is kvd_attend_ref exactly. */
START_TEST(test_kernels_agree_with_ref)
{
    size_t n_kernels;
    const kvd_attention_kernels *kernels = kvd_attention_kernels_all(&n_kernels);
    for (int iter = 0; iter < 60; iter++) {
        const size_t d = head_dims[rng_next() % (sizeof head_dims / sizeof *head_dims)];
        const size_t n_q = group_sizes[rng_next() % (sizeof group_sizes / sizeof *group_sizes)];
        const size_t spp = 1 + rng_next() % 20, n = rng_next() % 120;
        const float scale = rng_uniform(-3.0f, 3.0f) / sqrtf((float)d);
        test_cache c;
        cache_build(&c, n, d, spp, -1.5f, 1.5f);
        float *q = random_queries(n_q, d, -1.5f, 1.5f);
        float *ref = malloc(n_q * d * sizeof *ref), *o = malloc(n_q * d * sizeof *o);
        ck_assert(ref && o);
        const kvd_kv_segment seg = {.kv = c.kv, .n = n};
        kvd_attend_ref(&seg, 1, q, n_q, scale, ref);
        kvd_attend_group_ref(&c.kv, n, q, n_q, scale, o);
        ck_assert_mem_eq(o, ref, n_q * d * sizeof *o);
        for (size_t ki = 0; ki < n_kernels; ki++) {
            kernels[ki].attend(&seg, 1, q, n_q, scale, o);
            for (size_t h = 0; h < n_q; h++) {
                const double tol = KERNEL_VS_REF_FACTOR * error_bound(&c, q + h * d, scale, 0);
                for (size_t i = 0; i < d; i++)
                    if (!(fabs(o[h * d + i] - ref[h * d + i]) <= tol))
                        ck_abort_msg("%s vs ref: d=%zu n=%zu: %.9g vs %.9g (tol %.3g)",
                                     kernels[ki].name, d, n, (double)o[h * d + i],
                                     (double)ref[h * d + i], tol);
            }
        }
        free(ref);
        free(o);
        free(q);
        cache_free(&c);
    }
}
END_TEST

/* A cache cut into segments (at page boundaries and inside pages, with
 * empty segments between) gives the answer of the whole cache: the online
 * softmax state carries across segments. Each segment is its own view (its
 * block table starts at the segment's first page). */
START_TEST(test_segments_equal_whole)
{
    size_t n_kernels;
    const kvd_attention_kernels *kernels = kvd_attention_kernels_all(&n_kernels);
    for (int iter = 0; iter < 30; iter++) {
        const size_t d = head_dims[rng_next() % (sizeof head_dims / sizeof *head_dims)];
        const size_t spp = 1 + rng_next() % 12, n_pages = 1 + rng_next() % 8;
        const size_t n_q = group_sizes[rng_next() % (sizeof group_sizes / sizeof *group_sizes)];
        const size_t n = spp * n_pages;
        test_cache c;
        cache_build(&c, n, d, spp, -1.5f, 1.5f);
        /* segment boundaries at page starts: page p starts slot p * spp */
        kvd_kv_segment seg[2 * 8 + 1];
        size_t n_seg = 0;
        for (size_t p = 0; p < n_pages; p++) {
            seg[n_seg].kv = c.kv;
            seg[n_seg].kv.pages = (const unsigned char *const *)c.pages + p;
            seg[n_seg].n = spp;
            n_seg++;
            if (rng_next() % 3 == 0) { /* an empty segment in between */
                seg[n_seg] = seg[n_seg - 1];
                seg[n_seg].n = 0;
                n_seg++;
            }
        }
        float *q = random_queries(n_q, d, -1.5f, 1.5f);
        float *whole = malloc(n_q * d * sizeof *whole), *o = malloc(n_q * d * sizeof *o);
        ck_assert(whole && o);
        for (size_t ki = 0; ki < n_kernels; ki++) {
            const kvd_kv_segment one = {.kv = c.kv, .n = n};
            kernels[ki].attend(&one, 1, q, n_q, 0.4f, whole);
            kernels[ki].attend(seg, n_seg, q, n_q, 0.4f, o);
            for (size_t h = 0; h < n_q; h++) {
                /* Same rows, same order; only where a block of 16 ends (and
                 * so the f32 rounding of the running sums) may differ. */
                const double tol = KERNEL_VS_REF_FACTOR * error_bound(&c, q + h * d, 0.4f, 0);
                for (size_t i = 0; i < d; i++)
                    if (!(fabs(o[h * d + i] - whole[h * d + i]) <= tol))
                        ck_abort_msg("%s: %zu segments vs whole: d=%zu n=%zu: %.9g vs %.9g",
                                     kernels[ki].name, n_seg, d, n, (double)o[h * d + i],
                                     (double)whole[h * d + i]);
            }
        }
        free(whole);
        free(o);
        free(q);
        cache_free(&c);
    }
}
END_TEST

/* The dispatcher picks the best kernel the CPU has and says so. */
START_TEST(test_dispatch)
{
    const kvd_attention_kernels *k = kvd_attention_kernels_get();
    ck_assert_ptr_nonnull(k);
    ck_assert_ptr_nonnull(k->attend);
    ck_assert_ptr_eq(k, kvd_attention_kernels_get()); /* chosen once */
    size_t n;
    const kvd_attention_kernels *all = kvd_attention_kernels_all(&n);
    ck_assert_ptr_eq(k, &all[n - 1]);
    const char *features = kvd_cpu_features();
    ck_assert_ptr_nonnull(features);
#if defined(__x86_64__)
    __builtin_cpu_init();
    const int has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                         && cpu_has_f16c();
    const int has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f");
    ck_assert_str_eq(k->name, has_avx512 ? "avx512" : has_avx2 ? "avx2" : "scalar");
    ck_assert_int_eq(strstr(features, "avx2") != NULL, has_avx2);
    ck_assert_int_eq(strstr(features, "avx512f") != NULL, has_avx512);
#else
    ck_assert_str_eq(k->name, "scalar");
#endif
    ck_assert_ptr_eq(all[0].attend, kvd__attend_scalar); /* never the oracle */
    tiers_print("attention/standard");
}
END_TEST

#if defined(__x86_64__)
/* The AVX2 kernel called directly (the dispatcher prefers AVX-512 where it
 * exists, so the table alone would not pin which one a machine tests). */
START_TEST(test_avx2_direct)
{
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
          && cpu_has_f16c())) {
        printf("attention/standard avx2 direct: skipped, CPU lacks avx2, fma or f16c\n");
        return; /* nothing to test on this CPU */
    }
    for (size_t di = 0; di < sizeof head_dims / sizeof *head_dims; di++) {
        test_cache c;
        cache_build(&c, 53, head_dims[di], 9, -1.0f, 1.0f);
        float *q = random_queries(4, head_dims[di], -1.0f, 1.0f);
        check_kernel("avx2", kvd__attend_avx2, &c, q, 4, 0.7f, 0);
        free(q);
        cache_free(&c);
    }
}
END_TEST
#endif

static Suite *standard_suite(void)
{
    Suite *s = suite_create("attention/standard");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_kernels_match_oracle);
    tcase_add_test(tc, test_random_long_caches);
    tcase_add_test(tc, test_large_scores_stay_finite);
    tcase_add_test(tc, test_group_larger_than_chunk);
    tcase_add_test(tc, test_zero_visible_writes_zeros);
    tcase_add_test(tc, test_kernels_agree_with_ref);
    tcase_add_test(tc, test_segments_equal_whole);
    tcase_add_test(tc, test_dispatch);
#if defined(__x86_64__)
    tcase_add_test(tc, test_avx2_direct);
#endif
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(standard_suite)
