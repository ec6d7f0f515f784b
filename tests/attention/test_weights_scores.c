/* tests/attention/test_weights_scores.c — the h2o decode path: the scores
 * the attend kernels store (attend_lse_scores) are the ones their softmax
 * used, and kvd_attention_weights_from_scores turns them and the lse into
 * the softmax weights. Every tier, every key format (keys from codes and
 * through the tile), causal visibility over up to three segments, wide
 * groups; the weights tiers against a double reference and the scalar tier. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/formats.h"
#include "attention/kernels.h"
#include "attention/weights.h"
#include "tests/attention/tiers.h"
#include "tests/attention/weights_scene.h"
#include "tests/support/check_main.h"

/* Named tolerances (test_weights_lse.c's bounds). A stored score is an f32
 * dot of d <= 320 terms, off the exact one by at most SCORE_TOL * S, S =
 * |scale| * sum_c |q_c k_jc| (the attend kernels' ATTN_SCORE_TOL). A weight
 * exp(s - L) from it is off the exact softmax weight by w * (EXP_TOL +
 * SCORE_TOL * S_max + LSE_ROUND_TOL |L|), plus ACC_ROUND_TOL of the slot's
 * sum per f32 add (one per head) and ABS_TOL. */
#define SCORE_TOL 4e-5
#define EXP_TOL 5e-6
#define LSE_ROUND_TOL 0x1p-23
#define ACC_ROUND_TOL 0x1p-23
#define ABS_TOL 1e-12
/* One head's weights from its stored scores and its own lse sum to 1
 * within the exp's error, the lse's rounding and n f32 roundings of the
 * kernel's own sum: only if the scores are the ones its lse came from. A
 * score stored off by delta moves the sum by about w_j * delta. */
#define SUM_TOL 2e-5
#define SUM_TOL_PER_SLOT 0x1p-24
/* A weights tier against the scalar tier: both within the bound of exact. */
#define TIER_VS_SCALAR_FACTOR 2.0

#define BASE 0.5f      /* what acc holds before a call */
#define SENTINEL 7.0f  /* acc and scores past every visible slot: must stay */
#define PAD 3          /* score row stride = visible + PAD */

/* Finite random values (the scene poisons them with NaN: the attend kernels
 * read them, and o is compared here). */
static void scene_values(scene *s)
{
    for (size_t p = 0; p < 3; p++) {
        if (!s->part[p].page)
            continue;
        const kvd_kv_pages *kv = &s->part[p].kv;
        for (size_t i = 0; i < s->part[p].n_pages; i++)
            for (size_t b = 0; b < kv->slots_per_page * kv->v_row_bytes; b += 4) {
                const float x = (float)(2.0 * rng_unit() - 1.0);
                memcpy(s->part[p].page[i] + kv->v_offset + b, &x, sizeof x);
            }
    }
}

/* The first vis slots of the scene as segments, cut as kvd_stream_segments
 * does (each segment keeps what is left of vis). */
static size_t scene_cut(const scene *s, size_t vis, kvd_kv_segment *out)
{
    for (size_t k = 0; k < s->n_seg; k++) {
        out[k] = s->seg[k];
        out[k].n = vis < s->seg[k].n ? vis : s->seg[k].n;
        vis -= out[k].n;
    }
    return s->n_seg;
}

/* Exact scores of q over slots [0, n) into sc[] and S (the score bound's
 * scale) into *smax; returns the exact lse. */
static double exact_scores(const scene *s, size_t n, const float *q, float scale, double *sc,
                           double *smax)
{
    const size_t d = s->d;
    double mx = -INFINITY, sum = 0.0;
    *smax = 0.0;
    for (size_t j = 0; j < n; j++) {
        double dot = 0.0, sabs = 0.0;
        for (size_t c = 0; c < d; c++) {
            dot += (double)q[c] * s->k[j * d + c];
            sabs += fabs((double)q[c] * s->k[j * d + c]);
        }
        sc[j] = scale * dot;
        *smax = fmax(*smax, fabs(scale) * sabs);
        mx = fmax(mx, sc[j]);
    }
    for (size_t j = 0; j < n; j++)
        sum += exp(sc[j] - mx);
    return n ? mx + log(sum) : -INFINITY;
}

/* n_q heads over the first vis slots, every attend tier: the stored scores
 * (within the f32 dot bound of exact, nothing past vis written), o and lse
 * bit for bit attend_lse's, each head's weights from its stored scores
 * summing to 1, the weights within the bound of the exact softmax, and
 * equal bit for bit to the recomputing pass (kvd_attention_weights: the
 * same scores, exp and order) of the same tier. */
static void check_visible(const scene *s, size_t vis, size_t n_q, const char *what)
{
    const size_t d = s->d, n = s->total, stride = vis + PAD;
    const float scale = 1.0f / sqrtf((float)d);
    float *q = malloc(n_q * d * sizeof *q), *o = malloc(n_q * d * sizeof *o);
    float *o_ref = malloc(n_q * d * sizeof *o_ref), *lse = malloc(n_q * sizeof *lse);
    float *lse_ref = malloc(n_q * sizeof *lse_ref), *sc = malloc(n_q * stride * sizeof *sc);
    float *acc = malloc((n + 1) * sizeof *acc), *acc_re = malloc((n + 1) * sizeof *acc_re);
    double *ex = malloc((vis + 1) * n_q * sizeof *ex), *want = calloc(vis + 1, sizeof *want);
    double *tol = calloc(vis + 1, sizeof *tol), *smax = malloc(n_q * sizeof *smax);
    ck_assert(q && o && o_ref && lse && lse_ref && sc && acc && acc_re && ex && want && tol && smax);
    for (size_t i = 0; i < n_q * d; i++)
        q[i] = (float)(5.0 * rng_unit() - 2.5);
    for (size_t h = 0; h < n_q; h++) {
        const double l = exact_scores(s, vis, q + h * d, scale, ex + h * (vis + 1), &smax[h]);
        const double rel = EXP_TOL + SCORE_TOL * smax[h] + LSE_ROUND_TOL * fabs(l);
        for (size_t j = 0; j < vis; j++) {
            const double w = exp(ex[h * (vis + 1) + j] - l);
            want[j] += w;
            tol[j] += w * rel;
        }
    }
    kvd_kv_segment seg[3];
    const size_t n_seg = scene_cut(s, vis, seg);
    size_t n_k;
    const kvd_attention_kernels *kern = kvd_attention_kernels_all(&n_k);
    for (size_t level = 0; level < n_k; level++) {
        const kvd__weights_scores_fn wf = kvd__attention_weights_scores_tier(level);
        const kvd__weights_fn re = kvd__attention_weights_tier(level);
        ck_assert(wf && re);
        for (size_t i = 0; i < n_q * stride; i++)
            sc[i] = SENTINEL;
        kern[level].attend_lse_scores(seg, n_seg, q, n_q, scale, o, lse, sc, stride);
        kern[level].attend_lse(seg, n_seg, q, n_q, scale, o_ref, lse_ref);
        ck_assert_msg(memcmp(o, o_ref, n_q * d * sizeof *o) == 0 &&
                          memcmp(lse, lse_ref, n_q * sizeof *lse) == 0,
                      "%s %s: storing scores changed o or lse", kern[level].name, what);
        for (size_t h = 0; h < n_q; h++) {
            for (size_t j = 0; j < vis; j++) {
                const double got = sc[h * stride + j], x = ex[h * (vis + 1) + j];
                if (!(fabs(got - x) <= SCORE_TOL * smax[h]))
                    ck_abort_msg("%s %s head %zu: score %zu of %zu stored %.9g exact %.9g",
                                 kern[level].name, what, h, j, vis, got, x);
            }
            for (size_t j = vis; j < stride; j++)
                ck_assert_msg(sc[h * stride + j] == SENTINEL,
                              "%s %s head %zu: score %zu past the %zu visible written",
                              kern[level].name, what, h, j, vis);
            /* one head alone: its weights are its softmax */
            for (size_t j = 0; j < vis; j++)
                acc[j] = 0.0f;
            wf(sc + h * stride, stride, vis, 1, lse + h, acc);
            double total = 0.0;
            for (size_t j = 0; j < vis; j++)
                total += acc[j];
            ck_assert_msg(fabs(total - 1.0) <= SUM_TOL + vis * SUM_TOL_PER_SLOT,
                          "%s %s head %zu: weights from stored scores sum to %.9g",
                          kern[level].name, what, h, total);
        }
        /* the group at once, against exact and the recomputing pass */
        for (size_t j = 0; j <= n; j++)
            acc[j] = acc_re[j] = j < vis ? BASE : SENTINEL;
        wf(sc, stride, vis, n_q, lse, acc);
        re(seg, n_seg, q, 1, n_q, n_q * d, (kvd_prefill_mask){.n0 = vis, .step = 0}, scale, lse,
           n_q, acc_re);
        for (size_t j = 0; j < vis; j++) {
            const double got = (double)acc[j] - BASE;
            const double t = tol[j] + (want[j] + BASE) * n_q * ACC_ROUND_TOL + ABS_TOL;
            if (!(fabs(got - want[j]) <= t))
                ck_abort_msg("%s %s: slot %zu of %zu weight %.9g exact %.9g (tol %.3g)",
                             kern[level].name, what, j, vis, got, want[j], t);
        }
        for (size_t j = vis; j <= n; j++)
            ck_assert_msg(acc[j] == SENTINEL, "%s %s: slot %zu past the %zu visible written",
                          kern[level].name, what, j, vis);
        /* The recomputing pass's per-query path (fewer rows than a tile)
         * scores as the attend kernel does when both take the heads in
         * one pass (the kernel's passes are KVD_ATTN_ACC_DOUBLES / d heads;
         * the code path takes at most 16): then the bits agree. */
        if (n_q < KVD_WEIGHTS_TILE_ROWS && n_q <= KVD_ATTN_ACC_DOUBLES / d)
            ck_assert_msg(memcmp(acc, acc_re, (n + 1) * sizeof *acc) == 0,
                          "%s %s: weights from stored scores differ from the recomputed ones",
                          kern[level].name, what);
    }
    free(q);
    free(o);
    free(o_ref);
    free(lse);
    free(lse_ref);
    free(sc);
    free(acc);
    free(acc_re);
    free(ex);
    free(want);
    free(tol);
    free(smax);
}

/* Causal visibility of a decode step and the queries before it: everything,
 * one and two fewer (cut inside the last segment), and a prefix of the
 * first segment alone. */
static void check_scene(const scene *s, size_t n_q, const char *what)
{
    const size_t n = s->total;
    const size_t vis[] = {n, n - 1, n - 2, s->seg[0].n / 2 + 1};
    for (size_t i = 0; i < sizeof vis / sizeof *vis; i++) {
        char buf[160];
        snprintf(buf, sizeof buf, "%s vis=%zu n_q=%zu", what, vis[i], n_q);
        check_visible(s, vis[i], n_q, buf);
    }
}

START_TEST(test_f32)
{
    /* head_dim: whole spans, odd, above the 256-channel chunks */
    static const size_t dims[] = {128, 64, 33, 300};
    static const size_t nqs[] = {4, 1, 7, 16};
    for (size_t a = 0; a < sizeof dims / sizeof *dims; a++) {
        scene s;
        scene_build(&s, KVD_ROW_F32, 70 + 11 * a, 0, a % 2, dims[a], 0, 15);
        scene_values(&s);
        char what[64];
        snprintf(what, sizeof what, "f32 d=%zu", dims[a]);
        check_scene(&s, nqs[a], what);
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
            scene_values(&s);
            check_scene(&s, 4, what);
            scene_free(&s);
        }
}
END_TEST

/* Three segments, the middle one empty (scores numbered across them in
 * order); groups wider than the code path's 16 heads and than one pass of
 * KVD_ATTN_MAX_GROUP heads. */
START_TEST(test_segments_and_groups)
{
    scene s;
    scene_build(&s, KVD_ROW_U4G, 50, 30, 1, 128, 32, 16);
    scene_values(&s);
    check_scene(&s, 4, "int4 + empty + f32");
    scene_free(&s);
    scene_build(&s, KVD_ROW_F32, 45, 19, 1, 64, 0, 7);
    scene_values(&s);
    check_scene(&s, 8, "f32 + empty + f32");
    scene_free(&s);
    scene_build(&s, KVD_ROW_KIVI4_KEYS, 64, 17, 0, 128, 32, 64);
    scene_values(&s);
    check_scene(&s, 20, "kivi4 + f32");
    check_scene(&s, 70, "kivi4 + f32");
    scene_free(&s);
    scene_build(&s, KVD_ROW_I8, 40, 0, 0, 256, 0, 16); /* d = 256: 32 heads per pass */
    scene_values(&s);
    check_scene(&s, 40, "int8 d=256");
    scene_free(&s);
}
END_TEST

/* kvd_attention_weights_from_scores alone, every tier, on synthetic scores:
 * lengths around the vector widths (tails), heads in and beyond one chunk
 * of KVD_ATTN_MAX_GROUP, heads whose lse is -inf, +inf or NaN giving
 * nothing; against exp in double, the scalar tier, and the dispatch. */
START_TEST(test_from_scores)
{
    static const size_t lens[] = {0, 1, 7, 8, 15, 16, 17, 33, 100};
    static const size_t nqs[] = {1, 3, 64, 70};
    for (size_t a = 0; a < sizeof lens / sizeof *lens; a++)
        for (size_t b = 0; b < sizeof nqs / sizeof *nqs; b++) {
            const size_t n = lens[a], n_q = nqs[b], stride = n + 5;
            float *sc = malloc((n_q * stride + 1) * sizeof *sc), *lse = malloc(n_q * sizeof *lse);
            float *acc = malloc((n + 1) * sizeof *acc), *scalar = malloc((n + 1) * sizeof *scalar);
            double *want = calloc(n + 1, sizeof *want);
            ck_assert(sc && lse && acc && scalar && want);
            for (size_t i = 0; i < n_q * stride; i++)
                sc[i] = (float)(8.0 * rng_unit() - 4.0);
            for (size_t h = 0; h < n_q; h++) {
                /* above every score of its head, as a real lse is (the
                 * polynomial exp weighs an argument above 0 as 1) */
                lse[h] = (float)(3.0 * rng_unit() + 4.0);
                if (h % 11 == 5)
                    lse[h] = h % 3 == 0 ? -INFINITY : h % 3 == 1 ? INFINITY : NAN;
                if (!isfinite(lse[h]))
                    continue;
                for (size_t j = 0; j < n; j++)
                    want[j] += exp((double)sc[h * stride + j] - lse[h]);
            }
            for (size_t level = 0; level < 3; level++) {
                const kvd__weights_scores_fn fn = kvd__attention_weights_scores_tier(level);
                if (!fn)
                    continue;
                for (size_t j = 0; j <= n; j++)
                    acc[j] = j < n ? BASE : SENTINEL;
                fn(sc, stride, n, n_q, lse, acc);
                for (size_t j = 0; j < n; j++) {
                    const double got = (double)acc[j] - BASE;
                    const double t = want[j] * EXP_TOL + (want[j] + BASE) * n_q * ACC_ROUND_TOL;
                    if (!(fabs(got - want[j]) <= t))
                        ck_abort_msg("tier %zu n=%zu n_q=%zu: slot %zu got %.9g exact %.9g", level,
                                     n, n_q, j, got, want[j]);
                    if (level == 0)
                        scalar[j] = acc[j];
                    else if (!(fabs((double)acc[j] - scalar[j]) <= TIER_VS_SCALAR_FACTOR * t))
                        ck_abort_msg("tier %zu n=%zu n_q=%zu: slot %zu %.9g, scalar %.9g", level, n,
                                     n_q, j, (double)acc[j], (double)scalar[j]);
                }
                ck_assert_msg(acc[n] == SENTINEL, "tier %zu n=%zu: slot past n written", level, n);
                if (level + 1 == kvd__simd_levels()) { /* the dispatch runs this tier */
                    for (size_t j = 0; j <= n; j++)
                        scalar[j] = j < n ? BASE : SENTINEL;
                    kvd_attention_weights_from_scores(sc, stride, n, n_q, lse, scalar);
                    ck_assert(memcmp(acc, scalar, (n + 1) * sizeof *acc) == 0);
                }
            }
            free(sc);
            free(lse);
            free(acc);
            free(scalar);
            free(want);
        }
}
END_TEST

/* No visible slot: nothing stored, lse -inf, the weights call adds nothing. */
START_TEST(test_nothing_visible)
{
    scene s;
    scene_build(&s, KVD_ROW_F32, 20, 0, 0, 32, 0, 8);
    scene_values(&s);
    float q[4 * 32], o[4 * 32], lse[4], sc[4 * 8], acc[8];
    for (size_t i = 0; i < 4 * 32; i++)
        q[i] = (float)rng_unit();
    kvd_kv_segment seg[3];
    const size_t n_seg = scene_cut(&s, 0, seg);
    size_t n_k;
    const kvd_attention_kernels *kern = kvd_attention_kernels_all(&n_k);
    for (size_t level = 0; level < n_k; level++) {
        for (size_t i = 0; i < 4 * 8; i++)
            sc[i] = SENTINEL;
        for (size_t j = 0; j < 8; j++)
            acc[j] = BASE;
        kern[level].attend_lse_scores(seg, n_seg, q, 4, 0.5f, o, lse, sc, 8);
        for (size_t h = 0; h < 4; h++)
            ck_assert(lse[h] == -INFINITY);
        for (size_t i = 0; i < 4 * 8; i++)
            ck_assert(sc[i] == SENTINEL);
        kvd__attention_weights_scores_tier(level)(sc, 8, 0, 4, lse, acc);
        for (size_t j = 0; j < 8; j++)
            ck_assert(acc[j] == BASE);
    }
    scene_free(&s);
}
END_TEST

static Suite *weights_scores_suite(void)
{
    tiers_print("attention/weights_scores");
    Suite *s = suite_create("attention/weights_scores");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_f32);
    tcase_add_test(tc, test_quantized);
    tcase_add_test(tc, test_segments_and_groups);
    tcase_add_test(tc, test_from_scores);
    tcase_add_test(tc, test_nothing_visible);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(weights_scores_suite)
