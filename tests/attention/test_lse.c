/* tests/attention/test_lse.c — the log-sum-exp output ("return_lse") of the
 * standard kernels (every tier and the oracle kvd_attend_lse_ref) and of the
 * four-cache tensor kernels (every tier, kvd_tensor_four_lse_ref and the
 * scalar view kernel): lse against a double reference log sum_j exp(s_j),
 * -inf with o = 0 when nothing is visible, and the merge identity: attention
 * over a context cut in two parts, merged by lse, equals attention over all. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/kernels.h"
#include "attention/tensor.h"
#include "tests/support/check_main.h"

/* |lse - log sum exp(s)| allowed, absolute: the kernels add exp(s - m) in f32
 * blocks into an f64 sum (the oracles in f32: a relative error of about
 * n * 2^-24 in l at these sizes) with a polynomial exp (~2 ulp); log turns a
 * relative error of l into an absolute one. test_long_sums.c holds the
 * kernels to 6e-6 at 400k+ rows. */
#define LSE_TOL 2e-5
/* The merged output against attention over the whole context, relative L2
 * error per head (the bound). */
#define MERGE_TOL 1e-5

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static float rng_uniform(float lo, float hi)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (float)((rng_state >> 40) * (1.0 / 16777216.0));
}

/* n f32 slots, spp per page, K then V in each page; flat copies in k, v. */
typedef struct lcache {
    unsigned char **pages;
    size_t n_pages;
    kvd_kv_pages kv;
    float *k, *v;
} lcache;

static void lcache_build(lcache *c, size_t n, size_t d, size_t spp)
{
    const size_t block = (spp * d * sizeof(float) + 63) / 64 * 64;
    c->n_pages = n == 0 ? 1 : (n + spp - 1) / spp;
    c->pages = calloc(c->n_pages, sizeof *c->pages);
    c->k = malloc((n ? n : 1) * d * sizeof(float));
    c->v = malloc((n ? n : 1) * d * sizeof(float));
    ck_assert(c->pages && c->k && c->v);
    for (size_t p = 0; p < c->n_pages; p++) {
        c->pages[p] = aligned_alloc(64, 2 * block);
        ck_assert(c->pages[p] != NULL);
    }
    c->kv = (kvd_kv_pages){.pages = (const unsigned char *const *)c->pages, .slots_per_page = spp,
                           .head_dim = d, .k_offset = 0, .v_offset = block};
    for (size_t j = 0; j < n; j++) {
        float *kp = (float *)(c->pages[j / spp]) + (j % spp) * d;
        float *vp = (float *)(c->pages[j / spp] + block) + (j % spp) * d;
        for (size_t i = 0; i < d; i++) {
            kp[i] = c->k[j * d + i] = rng_uniform(-1.5f, 1.5f);
            vp[i] = c->v[j * d + i] = rng_uniform(-1.0f, 1.0f);
        }
    }
}

static void lcache_free(lcache *c)
{
    for (size_t p = 0; p < c->n_pages; p++)
        free(c->pages[p]);
    free(c->pages);
    free(c->k);
    free(c->v);
}

/* log sum_j exp(scale * <q, k_j>) in double over rows lo..hi-1. */
static double ref_lse(const float *k, size_t lo, size_t hi, size_t d, const float *q, float scale)
{
    double m = -INFINITY, l = 0;
    double s[512];
    ck_assert(hi - lo <= 512);
    for (size_t j = lo; j < hi; j++) {
        double dot = 0;
        for (size_t i = 0; i < d; i++)
            dot += (double)q[i] * k[j * d + i];
        s[j - lo] = scale * dot;
        if (s[j - lo] > m)
            m = s[j - lo];
    }
    for (size_t j = lo; j < hi; j++)
        l += exp(s[j - lo] - m);
    return hi > lo ? m + log(l) : -INFINITY;
}

static const size_t dims[] = {1, 7, 16, 64, 128};

/* Every tier and the oracle: lse within LSE_TOL of the double reference. */
START_TEST(test_lse_matches_reference)
{
    size_t nk;
    const kvd_attention_kernels *kern = kvd_attention_kernels_all(&nk);
    for (int iter = 0; iter < 40; iter++) {
        const size_t d = dims[iter % 5], n = 1 + (size_t)(rng_uniform(0, 300)), n_q = 1 + iter % 6;
        const float scale = rng_uniform(0.2f, 2.0f) / sqrtf((float)d);
        lcache c;
        lcache_build(&c, n, d, 1 + iter % 13);
        float *q = malloc(n_q * d * sizeof *q), *o = malloc(n_q * d * sizeof *o);
        ck_assert(q && o);
        for (size_t i = 0; i < n_q * d; i++)
            q[i] = rng_uniform(-1.5f, 1.5f);
        const kvd_kv_segment seg = {.kv = c.kv, .n = n};
        for (size_t ki = 0; ki <= nk; ki++) {
            float lse[8];
            const char *name = ki < nk ? kern[ki].name : "ref";
            if (ki < nk)
                kern[ki].attend_lse(&seg, 1, q, n_q, scale, o, lse);
            else
                kvd_attend_lse_ref(&seg, 1, q, n_q, scale, o, lse);
            for (size_t h = 0; h < n_q; h++) {
                const double want = ref_lse(c.k, 0, n, d, q + h * d, scale);
                ck_assert_msg(fabs(lse[h] - want) <= LSE_TOL, "%s: d=%zu n=%zu h=%zu: lse %.9g vs %.9g",
                              name, d, n, h, (double)lse[h], want);
            }
        }
        free(q);
        free(o);
        lcache_free(&c);
    }
}
END_TEST

/* Nothing visible: lse = -inf and o = 0 (and a NULL lse costs nothing). */
START_TEST(test_lse_empty)
{
    size_t nk;
    const kvd_attention_kernels *kern = kvd_attention_kernels_all(&nk);
    lcache c;
    lcache_build(&c, 4, 8, 4);
    const kvd_kv_segment seg = {.kv = c.kv, .n = 0};
    float q[3 * 8], o[3 * 8], lse[3];
    for (size_t i = 0; i < 3 * 8; i++)
        q[i] = 1.0f;
    for (size_t ki = 0; ki <= nk; ki++) {
        for (size_t i = 0; i < 3 * 8; i++)
            o[i] = NAN;
        lse[0] = lse[1] = lse[2] = 0.0f;
        if (ki < nk)
            kern[ki].attend_lse(&seg, 1, q, 3, 1.0f, o, lse);
        else
            kvd_attend_lse_ref(&seg, 1, q, 3, 1.0f, o, lse);
        for (size_t h = 0; h < 3; h++)
            ck_assert(isinf(lse[h]) && lse[h] < 0);
        for (size_t i = 0; i < 3 * 8; i++)
            ck_assert(o[i] == 0.0f);
    }
    lcache_free(&c);
}
END_TEST

/* o = sum_r exp(lse_r - L) o_r, L = log sum_r exp(lse_r), in double. */
static void merge(const float *o1, const float *lse1, const float *o2, const float *lse2,
                  size_t n_q, size_t d, double *out)
{
    for (size_t h = 0; h < n_q; h++) {
        const double a = lse1[h], b = lse2[h];
        const double mx = a > b ? a : b;
        const double big_l = mx + log(exp(a - mx) + exp(b - mx));
        const double w1 = exp(a - big_l), w2 = exp(b - big_l);
        for (size_t i = 0; i < d; i++)
            out[h * d + i] = w1 * o1[h * d + i] + w2 * o2[h * d + i];
    }
}

static void assert_close(const char *name, const double *merged, const float *whole, size_t n_q, size_t d)
{
    for (size_t h = 0; h < n_q; h++) {
        double err = 0, ref = 0;
        for (size_t i = 0; i < d; i++) {
            err += (merged[h * d + i] - whole[h * d + i]) * (merged[h * d + i] - whole[h * d + i]);
            ref += (double)whole[h * d + i] * whole[h * d + i];
        }
        ck_assert_msg(sqrt(err) <= MERGE_TOL * sqrt(ref), "%s: head %zu: merged vs whole %.3g relative",
                      name, h, ref > 0 ? sqrt(err / ref) : sqrt(err));
    }
}

/* A context cut in two (each part its own view, as two processes would hold
 * it), merged by lse, is attention over the whole: every tier and the oracle. */
START_TEST(test_merge_identity)
{
    size_t nk;
    const kvd_attention_kernels *kern = kvd_attention_kernels_all(&nk);
    for (int iter = 0; iter < 30; iter++) {
        const size_t d = dims[iter % 5], spp = 1 + iter % 9;
        const size_t n_pages = 2 + (size_t)rng_uniform(0, 20), n = n_pages * spp;
        const size_t cut_page = 1 + (size_t)rng_uniform(0, (float)(n_pages - 1)), n_q = 1 + iter % 4;
        lcache c;
        lcache_build(&c, n, d, spp);
        float *q = malloc(n_q * d * sizeof *q), *o1 = malloc(n_q * d * sizeof *o1);
        float *o2 = malloc(n_q * d * sizeof *o2), *whole = malloc(n_q * d * sizeof *whole);
        double *merged = malloc(n_q * d * sizeof *merged);
        ck_assert(q && o1 && o2 && whole && merged);
        for (size_t i = 0; i < n_q * d; i++)
            q[i] = rng_uniform(-1.5f, 1.5f);
        const kvd_kv_segment all = {.kv = c.kv, .n = n};
        kvd_kv_segment part1 = all, part2 = all;
        part1.n = cut_page * spp;
        part2.kv.pages = (const unsigned char *const *)c.pages + cut_page;
        part2.n = n - part1.n;
        float lse1[4], lse2[4], lse_all[4];
        const float scale = 1.0f / sqrtf((float)d);
        for (size_t ki = 0; ki <= nk; ki++) {
            const char *name = ki < nk ? kern[ki].name : "ref";
            if (ki < nk) {
                kern[ki].attend_lse(&all, 1, q, n_q, scale, whole, lse_all);
                kern[ki].attend_lse(&part1, 1, q, n_q, scale, o1, lse1);
                kern[ki].attend_lse(&part2, 1, q, n_q, scale, o2, lse2);
            } else {
                kvd_attend_lse_ref(&all, 1, q, n_q, scale, whole, lse_all);
                kvd_attend_lse_ref(&part1, 1, q, n_q, scale, o1, lse1);
                kvd_attend_lse_ref(&part2, 1, q, n_q, scale, o2, lse2);
            }
            merge(o1, lse1, o2, lse2, n_q, d, merged);
            assert_close(name, merged, whole, n_q, d);
            /* the merged denominator is the whole one */
            for (size_t h = 0; h < n_q; h++) {
                const double mx = fmax(lse1[h], lse2[h]);
                const double big_l = mx + log(exp(lse1[h] - mx) + exp(lse2[h] - mx));
                ck_assert_msg(fabs(big_l - lse_all[h]) <= LSE_TOL, "%s: L %.9g vs %.9g", name, big_l,
                              (double)lse_all[h]);
            }
            /* a part that sees nothing merges as weight 0 */
            kvd_kv_segment none = part2;
            none.n = 0;
            if (ki < nk)
                kern[ki].attend_lse(&none, 1, q, n_q, scale, o2, lse2);
            else
                kvd_attend_lse_ref(&none, 1, q, n_q, scale, o2, lse2);
            merge(o1, lse1, o2, lse2, n_q, d, merged);
            if (ki < nk)
                kern[ki].attend_lse(&part1, 1, q, n_q, scale, whole, lse_all);
            else
                kvd_attend_lse_ref(&part1, 1, q, n_q, scale, whole, lse_all);
            assert_close(name, merged, whole, n_q, d);
        }
        free(q);
        free(o1);
        free(o2);
        free(whole);
        free(merged);
        lcache_free(&c);
    }
}
END_TEST

/* Four-cache tensor attention: lse = log sum over the visible pairs of
 * exp(scale * sum_l q_l k1_jl k2_kl), every tier, the oracle and the
 * scalar view kernel; -inf for no token. */
START_TEST(test_tensor_lse)
{
    size_t nk;
    const kvd_tensor_kernels *kern = kvd_tensor_kernels_all(&nk);
    for (int iter = 0; iter < 12; iter++) {
        const size_t d = dims[iter % 5], n = (size_t)(iter * 3) % 19, n_q = 1 + iter % 3;
        const size_t window = iter % 4 == 3 ? 5 : 0;
        lcache a, b;
        lcache_build(&a, n, d, 4);
        lcache_build(&b, n, d, 4);
        float *q = malloc(n_q * d * sizeof *q), *o = malloc(n_q * d * sizeof *o);
        ck_assert(q && o);
        for (size_t i = 0; i < n_q * d; i++)
            q[i] = rng_uniform(-1.0f, 1.0f);
        const float scale = 1.0f / sqrtf((float)d);
        const size_t lo = window && window < n ? n - window : 0;
        for (size_t ki = 0; ki <= nk + 1; ki++) {
            float lse[4];
            const kvd_tensor_view va = {.seg = {{.kv = a.kv, .n = n}}, .n_seg = 1};
            const kvd_tensor_view vb = {.seg = {{.kv = b.kv, .n = n}}, .n_seg = 1};
            if (ki < nk)
                kern[ki].four_lse(&a.kv, &b.kv, n, window, q, n_q, scale, o, lse);
            else if (ki == nk)
                kvd_tensor_four_lse_ref(&a.kv, &b.kv, n, window, q, n_q, scale, o, lse);
            else
                kvd_tensor_four_view_lse(&va, &vb, n, window, q, n_q, scale, o, lse);
            for (size_t h = 0; h < n_q; h++) {
                double m = -INFINITY, l = 0;
                for (int pass = 0; pass < 2; pass++)
                    for (size_t j = lo; j < n; j++)
                        for (size_t k = lo; k < n; k++) {
                            double s = 0;
                            for (size_t i = 0; i < d; i++)
                                s += (double)q[h * d + i] * a.k[j * d + i] * b.k[k * d + i];
                            s *= scale;
                            if (pass == 0 && s > m)
                                m = s;
                            if (pass == 1)
                                l += exp(s - m);
                        }
                if (n == 0) {
                    ck_assert(isinf(lse[h]) && lse[h] < 0);
                    for (size_t i = 0; i < d; i++)
                        ck_assert(o[h * d + i] == 0.0f);
                } else {
                    ck_assert_msg(fabs(lse[h] - (m + log(l))) <= LSE_TOL,
                                  "tensor %zu: n=%zu d=%zu %.9g vs %.9g",
                                  ki, n, d, (double)lse[h], m + log(l));
                }
            }
        }
        free(q);
        free(o);
        lcache_free(&a);
        lcache_free(&b);
    }
}
END_TEST

static Suite *lse_suite(void)
{
    Suite *s = suite_create("attention_lse");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_lse_matches_reference);
    tcase_add_test(tc, test_lse_empty);
    tcase_add_test(tc, test_merge_identity);
    tcase_add_test(tc, test_tensor_lse);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(lse_suite)
