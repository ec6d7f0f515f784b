/* tests/attention/test_long_sums.c — softmax sums at long lengths: the
 * two-cache at n = 680 tokens (462,400 pair rows, the standard kernels over
 * them) and the four-cache on the same N(0,1) factors, and standard
 * attention over 409,600 tokens, every kernel tier this CPU runs, output and
 * lse against a double-precision reference. An f32 running sum over that many
 * blocks drifts by ~1e-4 (issue 14: a two-cache query came back scaled by
 * 1.00036); the kernels' f64 running sums must keep f32-rounding level.
 * Also the scalar four-cache over views (quantized dtypes run it). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/kernels.h"
#include "attention/tensor.h"
#include "tests/attention/tiers.h"
#include "tests/support/check_main.h"

/* Relative output error allowed, max_i |o_i - ref_i| / max_i |ref_i| per
 * head: what the four-cache gets on the two-cache's data (issue 14: 3.4e-6
 * there; the f32 score of each pair, ~d * 2^-24 relative, and exp's few ulp
 * set this floor, not the length). The old f32 running sums measured
 * 1.3e-5 (two-cache), 2.3e-5 .. 2.5e-5 (standard) and 8.2e-4 (scalar view
 * four-cache, one f32 sum over all n^2 pairs) here; now 7e-7 .. 1.2e-6. */
#define LONG_REL_TOL 6e-6
/* |lse - log sum exp(s)|, absolute: lse ~ 13 .. 15 here, so one f32
 * rounding of it is ~1e-6, plus the relative error of the denominator. */
#define LONG_LSE_TOL 6e-6

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double rng_unit(void) /* (0, 1) */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return ((double)((rng_state * 0x2545f4914f6cdd1dull) >> 11) + 0.5) / 9007199254740992.0;
}

static float rng_normal(void) /* N(0, 1), Box-Muller */
{
    const double u = rng_unit(), v = rng_unit();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static float *normals(size_t count)
{
    float *x = malloc((count ? count : 1) * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < count; i++)
        x[i] = rng_normal();
    return x;
}

/* ---- paged f32 views built by hand ------------------------------------------ */

typedef struct lview {
    unsigned char **pages;
    size_t n_pages;
    kvd_kv_pages kv;
} lview;

/* n slots of d floats, spp per page, [K block][V block] per page; rows
 * written by the caller through lview_k / lview_v. */
static void lview_init(lview *t, size_t n, size_t d, size_t spp)
{
    const size_t block = (spp * d * sizeof(float) + 63) / 64 * 64;
    t->n_pages = n == 0 ? 1 : (n + spp - 1) / spp;
    t->pages = calloc(t->n_pages, sizeof *t->pages);
    ck_assert_ptr_nonnull(t->pages);
    for (size_t p = 0; p < t->n_pages; p++) {
        t->pages[p] = aligned_alloc(64, 2 * block);
        ck_assert_ptr_nonnull(t->pages[p]);
    }
    t->kv = (kvd_kv_pages){.pages = (const unsigned char *const *)t->pages, .slots_per_page = spp,
                           .head_dim = d, .k_offset = 0, .v_offset = block};
}

static float *lview_k(lview *t, size_t j)
{
    return (float *)(t->pages[j / t->kv.slots_per_page] + t->kv.k_offset)
           + (j % t->kv.slots_per_page) * t->kv.head_dim;
}

static float *lview_v(lview *t, size_t j)
{
    return (float *)(t->pages[j / t->kv.slots_per_page] + t->kv.v_offset)
           + (j % t->kv.slots_per_page) * t->kv.head_dim;
}

/* A view of n rows: K row j = k + j*d, V row j = v + j*d. */
static void lview_build(lview *t, const float *k, const float *v, size_t n, size_t d, size_t spp)
{
    lview_init(t, n, d, spp);
    for (size_t j = 0; j < n; j++) {
        memcpy(lview_k(t, j), k + j * d, d * sizeof(float));
        memcpy(lview_v(t, j), v + j * d, d * sizeof(float));
    }
}

static void lview_free(lview *t)
{
    for (size_t p = 0; p < t->n_pages; p++)
        free(t->pages[p]);
    free(t->pages);
}

/* ---- error measures ----------------------------------------------------------- */

/* max_i |got_i - want_i| / max_i |want_i| over one head's d outputs. */
static double rel_err(const float *got, const double *want, size_t d)
{
    double err = 0.0, mag = 0.0;
    for (size_t i = 0; i < d; i++) {
        err = fmax(err, fabs((double)got[i] - want[i]));
        mag = fmax(mag, fabs(want[i]));
        if (!isfinite(got[i]))
            return INFINITY;
    }
    return err / mag;
}

/* Asserts the output and lse of n_q heads against the reference, after
 * printing the errors (the report the issue asks for, and what to look at
 * when the bound fails). */
static void check_long(const char *what, const float *o, const float *lse, const double *want,
                       const double *want_lse, size_t n_q, size_t d)
{
    double worst = 0.0, worst_lse = 0.0;
    for (size_t h = 0; h < n_q; h++) {
        worst = fmax(worst, rel_err(o + h * d, want + h * d, d));
        const double e = fabs((double)lse[h] - want_lse[h]);
        worst_lse = fmax(worst_lse, isfinite(e) ? e : INFINITY);
    }
    printf("%-32s relative output error %.2e (tol %.0e), |lse error| %.2e (tol %.0e)\n", what,
           worst, LONG_REL_TOL, worst_lse, LONG_LSE_TOL);
    fflush(stdout);
    ck_assert_msg(worst <= LONG_REL_TOL, "%s: relative output error %.3g > %.3g", what, worst,
                  LONG_REL_TOL);
    ck_assert_msg(worst_lse <= LONG_LSE_TOL, "%s: |lse error| %.3g > %.3g", what, worst_lse,
                  LONG_LSE_TOL);
}

/* ---- the two-cache at n = 680 ---------------------------------------------------- */

#define TWO_N 680 /* the VAR schedule's tokens (README): 462,400 pair rows */
#define TWO_D 16
#define TWO_HEADS 2

/* The double reference over all pairs of the factors, two passes (max,
 * then sums), for one head: out [d] and its lse. */
static void two_reference(const float *k1, const float *k2, const float *v1, const float *v2,
                          size_t n, size_t d, const float *q, float scale, double *out,
                          double *lse)
{
    double mx = -INFINITY;
    double *s = malloc(n * n * sizeof *s);
    ck_assert_ptr_nonnull(s);
    for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < n; k++) {
            double x = 0.0;
            for (size_t i = 0; i < d; i++)
                x += (double)q[i] * k1[j * d + i] * k2[k * d + i];
            s[j * n + k] = (double)scale * x;
            mx = fmax(mx, s[j * n + k]);
        }
    double sum = 0.0;
    for (size_t i = 0; i < d; i++)
        out[i] = 0.0;
    for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < n; k++) {
            const double w = exp(s[j * n + k] - mx);
            sum += w;
            for (size_t i = 0; i < d; i++)
                out[i] += w * ((double)v1[j * d + i] * v2[k * d + i]);
        }
    for (size_t i = 0; i < d; i++)
        out[i] /= sum;
    *lse = mx + log(sum);
    free(s);
}

START_TEST(test_two_cache_680)
{
    const size_t n = TWO_N, d = TWO_D, nq = TWO_HEADS;
    const float scale = 1.0f / sqrtf((float)d);
    float *k1 = normals(n * d), *k2 = normals(n * d), *v1 = normals(n * d), *v2 = normals(n * d);
    float *q = normals(nq * d);
    for (size_t i = d; i < 2 * d; i++)
        q[i] *= 3.0f; /* head 1: a sharper softmax, more rescales */
    lview a, b, pairs;
    lview_build(&a, k1, v1, n, d, 64);
    lview_build(&b, k2, v2, n, d, 64);
    /* The pair rows as a two-cache appends them, token by token. */
    lview_init(&pairs, n * n, d, 256);
    float *kr = malloc((2 * n) * d * sizeof *kr), *vr = malloc((2 * n) * d * sizeof *vr);
    ck_assert(kr && vr);
    for (size_t t = 0; t < n; t++) {
        kvd_tensor_pair_rows(&a.kv, &b.kv, t, kr, vr);
        for (size_t i = 0; i < kvd_tensor_pair_rows_added(t); i++) {
            memcpy(lview_k(&pairs, t * t + i), kr + i * d, d * sizeof(float));
            memcpy(lview_v(&pairs, t * t + i), vr + i * d, d * sizeof(float));
        }
    }
    free(kr);
    free(vr);

    double want[TWO_HEADS * TWO_D], want_lse[TWO_HEADS];
    for (size_t h = 0; h < nq; h++)
        two_reference(k1, k2, v1, v2, n, d, q + h * d, scale, want + h * d, &want_lse[h]);

    float o[TWO_HEADS * TWO_D], lse[TWO_HEADS];
    size_t n_std, n_ten;
    const kvd_attention_kernels *std = kvd_attention_kernels_all(&n_std);
    const kvd_tensor_kernels *ten = kvd_tensor_kernels_all(&n_ten);
    ck_assert_uint_eq(n_std, n_ten);
    const kvd_kv_segment seg = {.kv = pairs.kv, .n = n * n};
    for (size_t t = 0; t < n_std; t++) {
        char what[64];
        ten[t].four_lse(&a.kv, &b.kv, n, 0, q, nq, scale, o, lse);
        snprintf(what, sizeof what, "%s four-cache n=680", ten[t].name);
        check_long(what, o, lse, want, want_lse, nq, d);
        std[t].attend_lse(&seg, 1, q, nq, scale, o, lse);
        snprintf(what, sizeof what, "%s two-cache n=680", std[t].name);
        check_long(what, o, lse, want, want_lse, nq, d);
    }
    /* The scalar view kernel (quantized four-caches, d above the SIMD
     * bound) on the same f32 caches. */
    const kvd_tensor_view va = {.seg = {{.kv = a.kv, .n = n}}, .n_seg = 1};
    const kvd_tensor_view vb = {.seg = {{.kv = b.kv, .n = n}}, .n_seg = 1};
    kvd_tensor_four_view_lse(&va, &vb, n, 0, q, nq, scale, o, lse);
    check_long("view four-cache n=680", o, lse, want, want_lse, nq, d);
    tiers_print("attention/long_sums");

    lview_free(&pairs);
    lview_free(&a);
    lview_free(&b);
    free(k1);
    free(k2);
    free(v1);
    free(v2);
    free(q);
}
END_TEST

/* ---- standard attention over 409,600 tokens -------------------------------------- */

/* Standard attention in double, two passes: want [nq][d], want_lse [nq]. */
static void std_reference(const float *k, const float *v, size_t n, size_t d, const float *q,
                          size_t nq, float scale, double *want, double *want_lse)
{
    double *s = malloc(n * sizeof *s);
    ck_assert_ptr_nonnull(s);
    for (size_t h = 0; h < nq; h++) {
        const float *qh = q + h * d;
        double mx = -INFINITY, sum = 0.0;
        for (size_t j = 0; j < n; j++) {
            double x = 0.0;
            for (size_t i = 0; i < d; i++)
                x += (double)qh[i] * k[j * d + i];
            s[j] = (double)scale * x;
            mx = fmax(mx, s[j]);
        }
        double *w = want + h * d;
        for (size_t i = 0; i < d; i++)
            w[i] = 0.0;
        for (size_t j = 0; j < n; j++) {
            const double p = exp(s[j] - mx);
            sum += p;
            for (size_t i = 0; i < d; i++)
                w[i] += p * v[j * d + i];
        }
        for (size_t i = 0; i < d; i++)
            w[i] /= sum;
        want_lse[h] = mx + log(sum);
    }
    free(s);
}

#define STD_N 409600
#define STD_D 16
#define STD_HEADS 4

START_TEST(test_standard_long)
{
    const size_t n = STD_N, d = STD_D, nq = STD_HEADS;
    const float scale = 1.0f / sqrtf((float)d);
    float *k = normals(n * d), *v = normals(n * d), *q = normals(nq * d);
    /* Two segments (as a KIVI stream or a split step hands them over), so
     * the running sums also carry across a segment boundary. */
    const size_t n0 = n / 3;
    lview s0, s1;
    lview_build(&s0, k, v, n0, d, 512);
    lview_build(&s1, k + n0 * d, v + n0 * d, n - n0, d, 512);
    const kvd_kv_segment seg[2] = {{.kv = s0.kv, .n = n0}, {.kv = s1.kv, .n = n - n0}};

    double want[STD_HEADS * STD_D], want_lse[STD_HEADS];
    std_reference(k, v, n, d, q, nq, scale, want, want_lse);

    float o[STD_HEADS * STD_D], lse[STD_HEADS];
    size_t n_std;
    const kvd_attention_kernels *std = kvd_attention_kernels_all(&n_std);
    for (size_t t = 0; t < n_std; t++) {
        char what[64];
        std[t].attend_lse(seg, 2, q, nq, scale, o, lse);
        snprintf(what, sizeof what, "%s standard n=409600", std[t].name);
        check_long(what, o, lse, want, want_lse, nq, d);
        /* attend without lse: the same output */
        float o2[STD_HEADS * STD_D];
        std[t].attend(seg, 2, q, nq, scale, o2);
        ck_assert_msg(memcmp(o, o2, sizeof o) == 0, "%s: attend and attend_lse differ",
                      std[t].name);
    }

    lview_free(&s0);
    lview_free(&s1);
    free(k);
    free(v);
    free(q);
}
END_TEST

/* Wide heads: the f64 output sums hold KVD_ATTN_ACC_DOUBLES numbers, so
 * d = 4096 takes 2 heads per pass (5 heads: three passes) and a d beyond
 * them keeps f32 output sums (one pass of every head). Both still match
 * the double reference; short, so f32 suffices for the latter. */
START_TEST(test_wide_heads)
{
    static const struct {
        size_t n, d, nq;
    } cases[] = {{300, 4096, 5}, {70, KVD_ATTN_ACC_DOUBLES + 8, 3}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const size_t n = cases[c].n, d = cases[c].d, nq = cases[c].nq;
        const float scale = 1.0f / sqrtf((float)d);
        float *k = normals(n * d), *v = normals(n * d), *q = normals(nq * d);
        const size_t n0 = n / 2;
        lview s0, s1;
        lview_build(&s0, k, v, n0, d, 3);
        lview_build(&s1, k + n0 * d, v + n0 * d, n - n0, d, 4);
        const kvd_kv_segment seg[2] = {{.kv = s0.kv, .n = n0}, {.kv = s1.kv, .n = n - n0}};
        double *want = malloc(nq * d * sizeof *want), *want_lse = malloc(nq * sizeof *want_lse);
        float *o = malloc(nq * d * sizeof *o), *lse = malloc(nq * sizeof *lse);
        ck_assert(want && want_lse && o && lse);
        std_reference(k, v, n, d, q, nq, scale, want, want_lse);
        size_t n_std;
        const kvd_attention_kernels *std = kvd_attention_kernels_all(&n_std);
        for (size_t t = 0; t < n_std; t++) {
            char what[64];
            std[t].attend_lse(seg, 2, q, nq, scale, o, lse);
            snprintf(what, sizeof what, "%s standard d=%zu heads=%zu", std[t].name, d, nq);
            check_long(what, o, lse, want, want_lse, nq, d);
        }
        free(want);
        free(want_lse);
        free(o);
        free(lse);
        lview_free(&s0);
        lview_free(&s1);
        free(k);
        free(v);
        free(q);
    }
}
END_TEST

static Suite *long_sums_suite(void)
{
    Suite *s = suite_create("attention/long_sums");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_two_cache_680);
    tcase_add_test(tc, test_standard_long);
    tcase_add_test(tc, test_wide_heads);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(long_sums_suite)
