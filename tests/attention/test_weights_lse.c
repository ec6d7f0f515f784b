/* tests/attention/test_weights_lse.c — the h2o weights kernel (weights.h),
 * every tier, against weights computed in double from the dequantized rows:
 * every dtype, decode and prefill shapes, causal and block masks, up to three
 * segments; rows summing to 1 with the attention's own lse; rows seeing
 * nothing; tiers equal to scalar; dispatch equal to its tier. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/formats.h"
#include "attention/kernels.h"
#include "attention/prefill.h"
#include "attention/weights.h"
#include "tests/attention/tiers.h"
#include "tests/attention/weights_scene.h"
#include "tests/support/check_main.h"

/* Named tolerances. A row's weight is exp(s - L): the kernel's f32 score s
 * is off the exact one by at most WEIGHT_SCORE_TOL * S (S = |scale| *
 * max_j sum_c |q_c k_jc| of that row: an f32 dot of d <= 320 terms, the
 * attend kernels' ATTN_SCORE_TOL), the lse it is given by |L| 2^-24 (an f32
 * rounding: LSE_ROUND_TOL, doubled for margin), and a score error delta
 * scales the weight by e^delta. The polynomial exp and its f32 rounding add
 * WEIGHT_EXP_TOL relative; each f32 add into a slot's sum (the heads, the
 * rows of a tile, the tiles) ACC_ROUND_TOL of the sum. So slot j may be off
 * by sum_rows w * (WEIGHT_EXP_TOL + WEIGHT_SCORE_TOL S + LSE_ROUND_TOL |L|)
 * + |acc_j| * rows_j * ACC_ROUND_TOL + WEIGHT_ABS_TOL. A weight given to a
 * slot a query does not see, a lost head or a wrong row is off by O(w). */
#define WEIGHT_EXP_TOL 5e-6
#define WEIGHT_SCORE_TOL 4e-5
#define LSE_ROUND_TOL 0x1p-23
#define ACC_ROUND_TOL 0x1p-23
#define WEIGHT_ABS_TOL 1e-12
/* A tier against the scalar tier: both within the bound of exact. */
#define TIER_VS_SCALAR_FACTOR 2.0
/* One row's weights, given the lse the same tier's attention computed from
 * the same f32 scores, sum to 1 within the exp's error, the lse's rounding
 * and n f32 roundings of the lse's own sum. */
#define SUM_TOL 2e-5
#define SUM_TOL_PER_SLOT 0x1p-24

/* The exact softmax of row q over the first n slots: adds its weights to
 * want[] and its tolerance terms to tol[] and rows[]; *lse its exact lse. */
static void exact_row(const scene *s, size_t n, const float *q, float scale, double *want,
                      double *tol, double *rows, double *lse)
{
    const size_t d = s->d;
    double *w = malloc((n + 1) * sizeof *w), mx = -INFINITY, sum = 0.0, smax = 0.0;
    ck_assert_ptr_nonnull(w);
    for (size_t j = 0; j < n; j++) {
        double dot = 0.0, sabs = 0.0;
        for (size_t c = 0; c < d; c++) {
            dot += (double)q[c] * s->k[j * d + c];
            sabs += fabs((double)q[c] * s->k[j * d + c]);
        }
        w[j] = scale * dot;
        smax = fmax(smax, fabs(scale) * sabs);
        mx = fmax(mx, w[j]);
    }
    for (size_t j = 0; j < n; j++)
        sum += exp(w[j] - mx);
    *lse = n ? mx + log(sum) : -INFINITY;
    const double rel = WEIGHT_EXP_TOL + WEIGHT_SCORE_TOL * smax + LSE_ROUND_TOL * fabs(*lse);
    for (size_t j = 0; j < n; j++) {
        const double wj = exp(w[j] - *lse);
        want[j] += wj;
        tol[j] += wj * rel;
        rows[j] += 1.0;
    }
    free(w);
}

#define BASE 0.5f     /* what acc holds before the call */
#define SENTINEL 7.0f /* acc past every visible slot: must stay */

/* m_q queries of a group of n_q heads, group `g_at` of `groups` in the
 * step's [m_q][groups * n_q][d] layout, lse given (exact, rounded to f32)
 * in an [m_q][groups * n_q] array: every tier against exact and against
 * the scalar tier. */
static void check_case(const scene *s, size_t m_q, size_t n_q, size_t groups, size_t g_at,
                       kvd_prefill_mask mask, const char *what)
{
    const size_t d = s->d, heads = groups * n_q, stride = heads * d, n = s->total;
    const float scale = 1.0f / sqrtf((float)d);
    float *q = malloc(m_q * stride * sizeof *q), *lse = malloc(m_q * heads * sizeof *lse);
    float *acc = malloc((n + 1) * sizeof *acc), *scalar = malloc((n + 1) * sizeof *scalar);
    double *want = calloc(n + 1, sizeof *want), *tol = calloc(n + 1, sizeof *tol);
    double *rows = calloc(n + 1, sizeof *rows);
    ck_assert(q && lse && acc && scalar && want && tol && rows);
    for (size_t i = 0; i < m_q * stride; i++)
        q[i] = (float)(4.0 * rng_unit() - 2.0);
    for (size_t i = 0; i < m_q * heads; i++)
        lse[i] = NAN; /* other groups' lse: never read */
    const float *qg = q + g_at * n_q * d;
    size_t seen = 0; /* slots some query sees */
    for (size_t i = 0; i < m_q; i++) {
        size_t vis = mask.n0 + i * mask.step;
        vis = vis < n ? vis : n;
        seen = vis > seen ? vis : seen;
        for (size_t h = 0; h < n_q; h++) {
            double l;
            exact_row(s, vis, qg + i * stride + h * d, scale, want, tol, rows, &l);
            lse[i * heads + g_at * n_q + h] = (float)l;
        }
    }
    for (size_t level = 0; level < 3; level++) {
        const kvd__weights_fn fn = kvd__attention_weights_tier(level);
        if (!fn)
            continue;
        for (size_t j = 0; j <= n; j++)
            acc[j] = j < seen ? BASE : SENTINEL;
        fn(s->seg, s->n_seg, qg, m_q, n_q, stride, mask, scale, lse + g_at * n_q, heads, acc);
        for (size_t j = 0; j < seen; j++) {
            const double got = (double)acc[j] - BASE;
            const double t = tol[j] + (want[j] + BASE) * rows[j] * ACC_ROUND_TOL + WEIGHT_ABS_TOL;
            if (!(fabs(got - want[j]) <= t))
                ck_abort_msg("tier %zu %s: slot %zu of %zu got %.9g exact %.9g (tol %.3g)", level,
                             what, j, n, got, want[j], t);
            if (level == 0)
                scalar[j] = acc[j];
            else if (!(fabs((double)acc[j] - scalar[j]) <= TIER_VS_SCALAR_FACTOR * t))
                ck_abort_msg("tier %zu %s: slot %zu %.9g, scalar tier %.9g (tol %.3g)", level,
                             what, j, (double)acc[j], (double)scalar[j], t);
        }
        for (size_t j = seen; j <= n; j++)
            ck_assert_msg(acc[j] == SENTINEL, "tier %zu %s: slot %zu no query sees was written",
                          level, what, j);
    }
    free(q);
    free(lse);
    free(acc);
    free(scalar);
    free(want);
    free(tol);
    free(rows);
}

/* A decode step (one query over everything), a few queries (still the
 * per-query path), and a prefill / VAR scale of m_q (tiles), causal and
 * block, the last m_q slots being the new tokens. */
static void check_shapes(const scene *s, size_t m_q, size_t n_q, const char *what)
{
    const size_t n = s->total;
    char buf[160];
    snprintf(buf, sizeof buf, "%s decode n_q=%zu", what, n_q);
    check_case(s, 1, n_q, 2, 1, (kvd_prefill_mask){.n0 = n, .step = 0}, buf);
    snprintf(buf, sizeof buf, "%s 3 queries causal n_q=%zu", what, n_q);
    check_case(s, 3, n_q, 2, 0, (kvd_prefill_mask){.n0 = n - 2, .step = 1}, buf);
    snprintf(buf, sizeof buf, "%s causal m_q=%zu n_q=%zu", what, m_q, n_q);
    check_case(s, m_q, n_q, 3, 1, (kvd_prefill_mask){.n0 = n - m_q + 1, .step = 1}, buf);
    snprintf(buf, sizeof buf, "%s block m_q=%zu n_q=%zu", what, m_q, n_q);
    check_case(s, m_q, n_q, 1, 0, (kvd_prefill_mask){.n0 = n, .step = 0}, buf);
}

START_TEST(test_f32_shapes)
{
    /* head_dim: whole spans and tiles, odd, above the 256-channel chunks */
    static const size_t dims[] = {128, 64, 33, 300};
    static const size_t nqs[] = {4, 1, 7, 16};
    for (size_t a = 0; a < sizeof dims / sizeof *dims; a++) {
        scene s;
        scene_build(&s, KVD_ROW_F32, 70 + 11 * a, 0, a % 2, dims[a], 0, 15);
        char what[64];
        snprintf(what, sizeof what, "f32 d=%zu", dims[a]);
        check_shapes(&s, 37, nqs[a], what);
        scene_free(&s);
    }
}
END_TEST

START_TEST(test_quantized)
{
    for (size_t f = 0; f < SCENE_N_FORMATS; f++)
        for (size_t a = 0; a < SCENE_N_DIMS; a++) {
            scene s;
            char what[64];
            scene_build_sweep(&s, f, a, what);
            check_shapes(&s, 33, 4, what);
            scene_free(&s);
        }
}
END_TEST

/* Three segments, the middle one empty: slots numbered across them in order. */
START_TEST(test_segments)
{
    scene s;
    scene_build(&s, KVD_ROW_U4G, 50, 30, 1, 128, 32, 16);
    check_shapes(&s, 40, 4, "int4 + empty + f32");
    scene_free(&s);
    scene_build(&s, KVD_ROW_F32, 45, 19, 1, 64, 0, 7);
    check_shapes(&s, 20, 8, "f32 + empty + f32");
    scene_free(&s);
    /* a group wider than the code path's 16 heads (decode: through the
     * tile), and wider than a tile (one query's rows in two tiles) */
    scene_build(&s, KVD_ROW_KIVI4_KEYS, 64, 17, 0, 128, 32, 64);
    check_shapes(&s, 18, 20, "kivi4 + f32 n_q=20");
    check_shapes(&s, 5, 70, "kivi4 + f32 n_q=70");
    scene_free(&s);
}
END_TEST

/* Causal queries from n0 = 0: the first sees nothing (lse -inf) and gives
 * nothing; a row whose lse is NaN gives nothing either. */
START_TEST(test_nothing_visible)
{
    scene s;
    scene_build(&s, KVD_ROW_F32, 40, 0, 0, 32, 0, 8);
    for (size_t m_q = 1; m_q <= 40; m_q += 39) {
        check_case(&s, m_q, 4, 1, 0, (kvd_prefill_mask){.n0 = 0, .step = 1}, "from n0 = 0");
        const size_t n_q = 4, d = 32;
        float *q = calloc(m_q * n_q * d, sizeof *q), *lse = malloc(m_q * n_q * sizeof *lse);
        float acc[41];
        ck_assert(q && lse);
        for (size_t i = 0; i < m_q * n_q; i++)
            lse[i] = i % 2 ? -INFINITY : NAN;
        for (size_t level = 0; level < 3; level++) {
            const kvd__weights_fn fn = kvd__attention_weights_tier(level);
            if (!fn)
                continue;
            for (size_t j = 0; j < 41; j++)
                acc[j] = BASE;
            fn(s.seg, s.n_seg, q, m_q, n_q, n_q * d, (kvd_prefill_mask){.n0 = 40, .step = 0},
               0.5f, lse, n_q, acc);
            for (size_t j = 0; j < 41; j++)
                ck_assert_msg(acc[j] == BASE, "tier %zu m_q=%zu: slot %zu got %g", level, m_q, j,
                              (double)acc[j]);
        }
        free(q);
        free(lse);
    }
    scene_free(&s);
}
END_TEST

/* With the lse the attention kernels of the same tier compute (as the step
 * engine passes it), each row's weights sum to 1: decode (attend_lse) and
 * prefill (the tiled kernel), long caches, f32 and int4. */
START_TEST(test_rows_sum_to_one)
{
    static const kvd_row_format fmts[] = {KVD_ROW_F32, KVD_ROW_U4G};
    for (size_t f = 0; f < 2; f++) {
        scene s;
        const size_t n = 3000, d = 128, n_q = 4, m_q = 20;
        scene_build(&s, fmts[f], n, 0, 0, d, 32, 64);
        const float scale = 1.0f / sqrtf((float)d);
        float *q = malloc(m_q * n_q * d * sizeof *q), *lse = malloc(m_q * n_q * sizeof *lse);
        float *o = malloc(m_q * n_q * d * sizeof *o), *acc = malloc(n * sizeof *acc);
        ck_assert(q && lse && o && acc);
        for (size_t i = 0; i < m_q * n_q * d; i++)
            q[i] = (float)(6.0 * rng_unit() - 3.0);
        size_t n_k;
        const kvd_attention_kernels *kern = kvd_attention_kernels_all(&n_k);
        for (size_t level = 0; level < n_k; level++) {
            const kvd__weights_fn fn = kvd__attention_weights_tier(level);
            const kvd__prefill_fn pf = kvd__attend_prefill_tier(level);
            ck_assert(fn && pf);
            /* decode: one row at a time, lse from attend_lse */
            for (size_t h = 0; h < n_q; h++) {
                kern[level].attend_lse(s.seg, s.n_seg, q + h * d, 1, scale, o, lse);
                memset(acc, 0, n * sizeof *acc);
                fn(s.seg, s.n_seg, q + h * d, 1, 1, d, (kvd_prefill_mask){.n0 = n, .step = 0},
                   scale, lse, 1, acc);
                double total = 0.0;
                for (size_t j = 0; j < n; j++)
                    total += acc[j];
                ck_assert_msg(fabs(total - 1.0) <= SUM_TOL + n * SUM_TOL_PER_SLOT,
                              "tier %zu format %d decode head %zu: sum %.9g", level, (int)fmts[f],
                              h, total);
            }
            /* prefill: m_q causal queries, one call; weights sum to m_q * n_q */
            const kvd_prefill_mask mask = {.n0 = n - m_q + 1, .step = 1};
            pf(s.seg, s.n_seg, q, m_q, n_q, n_q * d, mask, scale, o, lse, n_q);
            memset(acc, 0, n * sizeof *acc);
            fn(s.seg, s.n_seg, q, m_q, n_q, n_q * d, mask, scale, lse, n_q, acc);
            double total = 0.0;
            for (size_t j = 0; j < n; j++)
                total += acc[j];
            ck_assert_msg(fabs(total - (double)(m_q * n_q)) <=
                              m_q * n_q * (SUM_TOL + n * SUM_TOL_PER_SLOT),
                          "tier %zu format %d prefill: sum %.9g of %zu rows", level, (int)fmts[f],
                          total, m_q * n_q);
        }
        free(q);
        free(lse);
        free(o);
        free(acc);
        scene_free(&s);
    }
}
END_TEST

/* kvd_attention_weights runs the best tier: the same bits as that tier. */
START_TEST(test_dispatch_matches_tier)
{
    scene s;
    scene_build(&s, KVD_ROW_I8, 100, 0, 0, 128, 0, 32);
    const size_t m_q = 24, n_q = 4, d = 128;
    float *q = malloc(m_q * n_q * d * sizeof *q), *lse = malloc(m_q * n_q * sizeof *lse);
    float *o = malloc(m_q * n_q * d * sizeof *o), a[100] = {0}, b[100] = {0};
    ck_assert(q && lse && o);
    for (size_t i = 0; i < m_q * n_q * d; i++)
        q[i] = (float)(2.0 * rng_unit() - 1.0);
    const kvd_prefill_mask mask = {.n0 = 100 - m_q + 1, .step = 1};
    kvd_attend_prefill(s.seg, s.n_seg, q, m_q, n_q, n_q * d, mask, 0.1f, o, lse, n_q);
    for (size_t m = 1; m <= m_q; m += m_q - 1) {
        kvd_attention_weights(s.seg, s.n_seg, q, m, n_q, n_q * d, mask, 0.1f, lse, n_q, a);
        kvd__attention_weights_tier(kvd__simd_levels() - 1)(s.seg, s.n_seg, q, m, n_q, n_q * d,
                                                            mask, 0.1f, lse, n_q, b);
        ck_assert(memcmp(a, b, sizeof a) == 0);
    }
    free(q);
    free(lse);
    free(o);
    scene_free(&s);
}
END_TEST

static Suite *weights_lse_suite(void)
{
    tiers_print("attention/weights");
    Suite *s = suite_create("attention/weights_lse");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_f32_shapes);
    tcase_add_test(tc, test_quantized);
    tcase_add_test(tc, test_segments);
    tcase_add_test(tc, test_nothing_visible);
    tcase_add_test(tc, test_rows_sum_to_one);
    tcase_add_test(tc, test_dispatch_matches_tier);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(weights_lse_suite)
