/* tests/attention/test_weights.c — kvd_attention_weights_ref (the scalar
 * three-pass h2o scoring the kernel replaced, kept as an oracle and the
 * benchmark's baseline; the kernel itself: test_weights_lse.c) against a
 * double-precision two-pass softmax: per-slot weights summed over
 * the query heads, added into an accumulator that already holds values, the
 * weights of one head summing to 1, and huge scores staying finite. Caches are
 * built by hand over malloc'd pages, so this test depends on attention/ only. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/weights.h"
#include "tests/support/check_main.h"

/* Tolerances. A weight is exp(s_j - max) / sum: expf is within a few ulp,
 * the f32 score of a d <= 130 dot is off by at most d * 2^-24 * S
 * (S = |scale| * max_j sum_i |q_i k_ji|), and a score error delta moves a
 * weight by a factor e^(+-2 delta). So |w - w_exact| <= w_exact *
 * (WEIGHT_REL_TOL + WEIGHT_SCORE_TOL * S) + WEIGHT_ABS_TOL, the last for
 * f32 rounding of the accumulator (values of order n_q). A real bug (a
 * weight given to the wrong slot, a missing head, no normalisation) is off by
 * far more. */
#define WEIGHT_REL_TOL 1e-5
#define WEIGHT_SCORE_TOL 2e-5
#define WEIGHT_ABS_TOL 1e-6
/* One head's weights summed in double: n f32 weights, each rounded to
 * 2^-24 relative, plus the normalisation's rounding: n * 2^-24 at worst. */
#define SUM_TOL_PER_SLOT 6e-8

#define PAGE_ALIGN 64

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

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

typedef struct test_cache {
    unsigned char **pages; /* [n_pages] page_bytes each, 64-byte aligned */
    size_t n_pages;
    kvd_kv_pages kv;
    float *k;              /* [n][d] the same keys, flat, for the oracle */
    size_t n, d;
} test_cache;

static size_t align64(size_t x)
{
    return (x + PAGE_ALIGN - 1) / PAGE_ALIGN * PAGE_ALIGN;
}

/* n slots of keys in [lo, hi); the K block starts 64 bytes into the page and
 * slots past n are NaN (a kernel reading past n_visible poisons the result). */
static void cache_build(test_cache *c, size_t n, size_t d, size_t spp, float lo, float hi)
{
    const size_t block = align64(spp * d * sizeof(float));
    const size_t k_off = PAGE_ALIGN, v_off = k_off + block, page_bytes = v_off + block;
    c->n = n;
    c->d = d;
    c->n_pages = n == 0 ? 1 : (n + spp - 1) / spp;
    c->pages = calloc(c->n_pages, sizeof *c->pages);
    c->k = malloc((n ? n : 1) * d * sizeof(float));
    ck_assert(c->pages && c->k);
    for (size_t p = 0; p < c->n_pages; p++) {
        c->pages[p] = aligned_alloc(PAGE_ALIGN, page_bytes);
        ck_assert_ptr_nonnull(c->pages[p]);
        float *f = (float *)c->pages[p];
        for (size_t i = 0; i < page_bytes / sizeof(float); i++)
            f[i] = NAN;
    }
    c->kv = (kvd_kv_pages){.pages = (const unsigned char *const *)c->pages,
                           .slots_per_page = spp, .head_dim = d,
                           .k_offset = k_off, .v_offset = v_off};
    for (size_t j = 0; j < n; j++) {
        float *kp = (float *)(c->pages[j / spp] + k_off) + (j % spp) * d;
        for (size_t i = 0; i < d; i++)
            kp[i] = c->k[j * d + i] = rng_uniform(lo, hi);
    }
}

static void cache_free(test_cache *c)
{
    for (size_t p = 0; p < c->n_pages; p++)
        free(c->pages[p]);
    free(c->pages);
    free(c->k);
}

/* Adds to out[j] the exact softmax weight of slot j for one head (double). */
static void oracle_add(const test_cache *c, size_t n, const float *q, float scale, double *out)
{
    double *s = malloc((n ? n : 1) * sizeof *s);
    ck_assert_ptr_nonnull(s);
    double mx = -INFINITY, sum = 0.0;
    for (size_t j = 0; j < n; j++) {
        double dot = 0.0;
        for (size_t i = 0; i < c->d; i++)
            dot += (double)q[i] * c->k[j * c->d + i];
        s[j] = (double)scale * dot;
        mx = s[j] > mx ? s[j] : mx;
    }
    for (size_t j = 0; j < n; j++)
        sum += (s[j] = exp(s[j] - mx));
    for (size_t j = 0; j < n; j++)
        out[j] += s[j] / sum;
    free(s);
}

/* S = |scale| * max_j sum_i |q_i k_ji| over every head of q. */
static double score_bound(const test_cache *c, size_t n, const float *q, size_t n_q, float scale)
{
    double smax = 0.0;
    for (size_t h = 0; h < n_q; h++)
        for (size_t j = 0; j < n; j++) {
            double a = 0.0;
            for (size_t i = 0; i < c->d; i++)
                a += fabs((double)q[h * c->d + i] * c->k[j * c->d + i]);
            smax = a > smax ? a : smax;
        }
    return fabs((double)scale) * smax;
}

/* Runs the kernel over the first n_visible slots with acc pre-filled by
 * `base` and checks against base + the oracle, slot by slot. */
static void check_weights(const test_cache *c, size_t n_visible, size_t n_q, float scale,
                          float qlo, float qhi, float base)
{
    const size_t d = c->d;
    float *q = malloc(n_q * d * sizeof *q);
    float *scratch = malloc((c->n + 1) * sizeof *scratch);
    float *acc = malloc((c->n + 1) * sizeof *acc);
    double *want = calloc(c->n + 1, sizeof *want);
    ck_assert(q && scratch && acc && want);
    for (size_t i = 0; i < n_q * d; i++)
        q[i] = rng_uniform(qlo, qhi);
    for (size_t j = 0; j <= c->n; j++)
        acc[j] = base; /* slot n (and past n_visible): must stay untouched */
    for (size_t h = 0; h < n_q; h++)
        oracle_add(c, n_visible, q + h * d, scale, want);
    const kvd_kv_segment seg = {.kv = c->kv, .n = n_visible};
    kvd_attention_weights_ref(&seg, 1, q, n_q, scale, scratch, acc);
    const double S = score_bound(c, n_visible, q, n_q, scale);
    double total = 0.0;
    for (size_t j = 0; j < n_visible; j++) {
        ck_assert(isfinite(acc[j]));
        const double got = (double)acc[j] - base;
        const double tol = want[j] * (WEIGHT_REL_TOL + WEIGHT_SCORE_TOL * S) +
                           WEIGHT_ABS_TOL * (n_q + fabs((double)base));
        ck_assert_msg(fabs(got - want[j]) <= tol, "n=%zu slot %zu: %.9g vs %.9g (tol %.3g)",
                      n_visible, j, got, want[j], tol);
        total += got;
    }
    for (size_t j = n_visible; j <= c->n; j++)
        ck_assert_float_eq(acc[j], base);
    if (n_visible > 0) /* each head's weights sum to 1 */
        ck_assert_msg(fabs(total - (double)n_q) <=
                          n_q * (n_visible * SUM_TOL_PER_SLOT + WEIGHT_ABS_TOL) +
                              n_visible * WEIGHT_ABS_TOL * fabs((double)base),
                      "weights sum to %.9g over %zu heads", total, n_q);
    free(q);
    free(scratch);
    free(acc);
    free(want);
}

START_TEST(test_matches_oracle)
{
    static const size_t dims[] = {1, 7, 64, 128, 130};
    static const size_t ns[] = {1, 2, 15, 16, 17, 100, 257};
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
            test_cache c;
            cache_build(&c, ns[ni], dims[di], 7, -1.0f, 1.0f);
            const float scale = 1.0f / sqrtf((float)dims[di]);
            check_weights(&c, ns[ni], 1, scale, -1.0f, 1.0f, 0.0f);
            check_weights(&c, ns[ni], 4, scale, -2.0f, 2.0f, 0.0f);
            check_weights(&c, ns[ni] - 1, 3, scale, -1.0f, 1.0f, 0.5f); /* prefix, acc held values */
            cache_free(&c);
        }
}
END_TEST

/* One head: the weights it adds sum to 1, for long caches too. */
START_TEST(test_one_head_sums_to_one)
{
    static const size_t ns[] = {1, 1000, 20000};
    for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
        test_cache c;
        cache_build(&c, ns[ni], 32, 31, -1.0f, 1.0f);
        float q[32], *scratch = malloc(ns[ni] * sizeof *scratch);
        float *acc = calloc(ns[ni], sizeof *acc);
        ck_assert(scratch && acc);
        for (size_t i = 0; i < 32; i++)
            q[i] = rng_uniform(-3.0f, 3.0f);
        const kvd_kv_segment seg = {.kv = c.kv, .n = ns[ni]};
        kvd_attention_weights_ref(&seg, 1, q, 1, 0.5f, scratch, acc);
        double total = 0.0;
        for (size_t j = 0; j < ns[ni]; j++) {
            ck_assert(acc[j] >= 0.0f && acc[j] <= 1.0f);
            total += acc[j];
        }
        ck_assert_msg(fabs(total - 1.0) <= ns[ni] * SUM_TOL_PER_SLOT + WEIGHT_ABS_TOL,
                      "n=%zu: sum %.12g", ns[ni], total);
        free(scratch);
        free(acc);
        cache_free(&c);
    }
}
END_TEST

/* Scores in the thousands: exp of a raw score would overflow; with the max
 * subtracted every weight is finite and one slot takes almost everything. */
START_TEST(test_large_scores_finite)
{
    test_cache c;
    cache_build(&c, 50, 16, 8, -100.0f, 100.0f);
    float q[2 * 16], scratch[50], acc[50] = {0};
    for (size_t i = 0; i < 2 * 16; i++)
        q[i] = rng_uniform(-100.0f, 100.0f);
    const kvd_kv_segment sc = {.kv = c.kv, .n = 50};
    kvd_attention_weights_ref(&sc, 1, q, 2, 1.0f, scratch, acc);
    double total = 0.0;
    for (size_t j = 0; j < 50; j++) {
        ck_assert(isfinite(acc[j]) && acc[j] >= 0.0f);
        total += acc[j];
    }
    ck_assert_double_eq_tol(total, 2.0, 50 * 2 * SUM_TOL_PER_SLOT + WEIGHT_ABS_TOL);
    /* equal keys share equally: 4 identical slots get 1/4 each */
    test_cache e;
    cache_build(&e, 4, 8, 2, 0.0f, 0.0f);
    float qe[8] = {1, 2, 3, 4, 5, 6, 7, 8}, se[4], ae[4] = {0};
    kvd_kv_segment se4 = {.kv = e.kv, .n = 4};
    kvd_attention_weights_ref(&se4, 1, qe, 1, 1.0f, se, ae);
    for (size_t j = 0; j < 4; j++)
        ck_assert_float_eq(ae[j], 0.25f);
    /* no visible slot: nothing added */
    ae[0] = 7.0f;
    se4.n = 0;
    kvd_attention_weights_ref(&se4, 1, qe, 1, 1.0f, se, ae);
    ck_assert_float_eq(ae[0], 7.0f);
    cache_free(&e);
    cache_free(&c);
}
END_TEST

/* Two segments (the cache cut at a page boundary) number their slots one
 * after the other and share one softmax: the weights equal the whole's. */
START_TEST(test_segments_number_slots_in_order)
{
    const size_t spp = 7, n = 5 * spp, d = 24, n_q = 3;
    test_cache c;
    cache_build(&c, n, d, spp, -1.0f, 1.0f);
    float q[3 * 24], scratch[5 * 7], whole[5 * 7] = {0}, split[5 * 7] = {0};
    for (size_t i = 0; i < n_q * d; i++)
        q[i] = rng_uniform(-2.0f, 2.0f);
    const kvd_kv_segment one = {.kv = c.kv, .n = n};
    kvd_attention_weights_ref(&one, 1, q, n_q, 0.3f, scratch, whole);
    kvd_kv_segment two[3] = {{.kv = c.kv, .n = 2 * spp}, {.kv = c.kv, .n = 0},
                             {.kv = c.kv, .n = 3 * spp}};
    two[2].kv.pages = (const unsigned char *const *)c.pages + 2;
    kvd_attention_weights_ref(two, 3, q, n_q, 0.3f, scratch, split);
    for (size_t j = 0; j < n; j++)
        ck_assert_float_eq(split[j], whole[j]); /* same scores, same order: exact */
    cache_free(&c);
}
END_TEST

static Suite *weights_suite(void)
{
    Suite *s = suite_create("attention/weights");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_matches_oracle);
    tcase_add_test(tc, test_one_head_sums_to_one);
    tcase_add_test(tc, test_large_scores_finite);
    tcase_add_test(tc, test_segments_number_slots_in_order);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(weights_suite)
