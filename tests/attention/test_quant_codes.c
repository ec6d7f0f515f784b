/* tests/attention/test_quant_codes.c — quantized keys scored straight from
 * their codes (attention/standard_codes.h; f16/bf16 rows too): rows of
 * random codes and scales
 * are written here byte by byte in the documented layouts (formats.h), and
 * every kernel tier is checked against the scalar oracle kvd_attend_ref, and
 * the oracle against a double softmax over the rows kvd_dequant_row gives,
 * over the shapes the code path takes (head_dim of whole spans up to one
 * chunk, groups of whole lanes, up to 16 heads) and the ones it leaves to
 * the tile path, with segments and ragged blocks. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/formats.h"
#include "attention/kernels.h"
#define RANDOM_UNITS_SEED 0x51c0de5eed5ull
#include "tests/attention/random_units.h"
#include "tests/attention/tiers.h"
#include "tests/support/check_main.h"

/* Named tolerances, as in tests/attention/test_standard.c: with maxv =
 * max |v| and S = |scale| * max_j sum_i |q_i k_ji| over the dequantized
 * keys, |o - o_exact| <= maxv * (ATTN_REL_TOL + ATTN_SCORE_TOL * S).
 * ATTN_SCORE_TOL: an f32 dot of d <= 320 terms (the code path adds s and z
 * per group or block, a few more roundings of terms bounded by S) is off by
 * well under 2 d 2^-24 S = 3.8e-5 S. Kernel vs oracle: twice the bound. A
 * wrong lane order, scale or minimum moves scores by O(S). */
#define ATTN_REL_TOL 2e-5
#define ATTN_SCORE_TOL 4e-5
#define KERNEL_VS_REF_FACTOR 2.0

typedef struct cache {
    unsigned char **pages;
    size_t n_pages;
    kvd_kv_pages kv;
    float *k, *v; /* [n][d] dequantized keys, f32 values */
} cache;

static void cache_build(cache *c, kvd_row_format kf, size_t n, size_t d, uint32_t group,
                        size_t spp)
{
    const size_t krb = kvd_row_bytes(kf, d, group);
    const size_t units = kvd_row_is_block(kf) ? spp / group : spp;
    const size_t k_bytes = (units * krb + 63) / 64 * 64, v_bytes = spp * d * 4;
    c->n_pages = (n + spp - 1) / spp;
    c->pages = calloc(c->n_pages ? c->n_pages : 1, sizeof *c->pages);
    c->k = malloc((n ? n : 1) * d * sizeof *c->k);
    c->v = malloc((n ? n : 1) * d * sizeof *c->v);
    ck_assert(c->pages && c->k && c->v);
    for (size_t p = 0; p < c->n_pages; p++) {
        c->pages[p] = aligned_alloc(64, k_bytes + v_bytes);
        ck_assert_ptr_nonnull(c->pages[p]);
        for (size_t u = 0; u < units; u++)
            fill_unit(kf, d, group, c->pages[p] + u * krb);
        float *vr = (float *)(c->pages[p] + k_bytes);
        for (size_t i = 0; i < spp * d; i++)
            vr[i] = (float)(2.0 * rng_unit() - 1.0);
    }
    c->kv = (kvd_kv_pages){.pages = (const unsigned char *const *)c->pages,
                           .slots_per_page = spp, .head_dim = d, .k_offset = 0,
                           .v_offset = k_bytes, .k_format = kf, .v_format = KVD_ROW_F32,
                           .k_row_bytes = (uint32_t)krb, .v_row_bytes = (uint32_t)(4 * d),
                           .group = group};
    for (size_t j = 0; j < n; j++) {
        size_t t;
        const unsigned char *u = kvd__kv_unit(&c->kv, 0, kf, krb, j, &t);
        kvd_dequant_row(kf, u, t, d, group, c->k + j * d);
        memcpy(c->v + j * d, kvd_kv_value(&c->kv, j), d * sizeof *c->v);
    }
}

static void cache_free(cache *c)
{
    for (size_t p = 0; p < c->n_pages; p++)
        free(c->pages[p]);
    free(c->pages);
    free(c->k);
    free(c->v);
}

static double bound(const cache *c, size_t n, const float *q, float scale)
{
    const size_t d = c->kv.head_dim;
    double maxv = 0.0, smax = 0.0;
    for (size_t j = 0; j < n; j++) {
        double sabs = 0.0;
        for (size_t i = 0; i < d; i++) {
            maxv = fmax(maxv, fabs(c->v[j * d + i]));
            sabs += fabs((double)q[i] * c->k[j * d + i]);
        }
        smax = fmax(smax, fabs(scale) * sabs);
    }
    return maxv * (ATTN_REL_TOL + ATTN_SCORE_TOL * smax);
}

/* Double two-pass softmax over the dequantized rows. */
static void exact(const cache *c, size_t n, const float *q, float scale, double *out)
{
    const size_t d = c->kv.head_dim;
    double *s = malloc(n * sizeof *s), mx = -INFINITY, sum = 0.0;
    ck_assert_ptr_nonnull(s);
    for (size_t j = 0; j < n; j++) {
        double dot = 0.0;
        for (size_t i = 0; i < d; i++)
            dot += (double)q[i] * c->k[j * d + i];
        s[j] = scale * dot;
        mx = fmax(mx, s[j]);
    }
    for (size_t i = 0; i < d; i++)
        out[i] = 0.0;
    for (size_t j = 0; j < n; j++)
        sum += (s[j] = exp(s[j] - mx));
    for (size_t j = 0; j < n; j++)
        for (size_t i = 0; i < d; i++)
            out[i] += s[j] / sum * c->v[j * d + i];
    free(s);
}

/* The cache's first n slots as n_seg segments (a split view of the same
 * pages: the second starts at a page boundary) against every kernel. */
static void check(cache *c, size_t n, size_t n_q, const char *what)
{
    const size_t d = c->kv.head_dim, spp = c->kv.slots_per_page;
    const float scale = 1.0f / sqrtf((float)d);
    float *q = malloc(n_q * d * sizeof *q), *ref = malloc(n_q * d * sizeof *ref),
          *o = malloc(n_q * d * sizeof *o);
    double *want = malloc(d * sizeof *want);
    ck_assert(q && ref && o && want);
    for (size_t i = 0; i < n_q * d; i++)
        q[i] = (float)(4.0 * rng_unit() - 2.0);
    kvd_kv_segment seg[2] = {{.kv = c->kv, .n = n}};
    size_t n_seg = 1;
    if (n > spp) { /* pages [0, 1) then the rest */
        seg[0].n = spp;
        seg[1].kv = c->kv;
        seg[1].kv.pages = c->kv.pages + 1;
        seg[1].n = n - spp;
        n_seg = 2;
    }
    kvd_attend_ref(seg, n_seg, q, n_q, scale, ref);
    for (size_t h = 0; h < n_q; h++) {
        exact(c, n, q + h * d, scale, want);
        const double tol = bound(c, n, q + h * d, scale);
        for (size_t i = 0; i < d; i++)
            ck_assert_msg(fabs(ref[h * d + i] - want[i]) <= tol,
                          "ref %s n=%zu n_q=%zu: o[%zu][%zu] %.9g want %.9g (tol %.3g)", what, n,
                          n_q, h, i, (double)ref[h * d + i], want[i], tol);
    }
    size_t n_k;
    const kvd_attention_kernels *ks = kvd_attention_kernels_all(&n_k);
    for (size_t ki = 0; ki < n_k; ki++) {
        for (size_t i = 0; i < n_q * d; i++)
            o[i] = 12345.0f;
        ks[ki].attend(seg, n_seg, q, n_q, scale, o);
        for (size_t h = 0; h < n_q; h++) {
            const double tol = KERNEL_VS_REF_FACTOR * bound(c, n, q + h * d, scale);
            for (size_t i = 0; i < d; i++)
                if (!(fabs(o[h * d + i] - ref[h * d + i]) <= tol))
                    ck_abort_msg("%s %s n=%zu n_q=%zu: o[%zu][%zu] %.9g vs ref %.9g (tol %.3g)",
                                 ks[ki].name, what, n, n_q, h, i, (double)o[h * d + i],
                                 (double)ref[h * d + i], tol);
        }
    }
    free(q);
    free(ref);
    free(o);
    free(want);
}

static const size_t dims[] = {64, 128, 192, 256, 96, 320};      /* last two: tile path */
static const size_t counts[] = {1, 15, 16, 17, 40, 100};
static const size_t heads[] = {1, 4, 7, 16, 17};                /* 17: tile path */

START_TEST(test_per_token_codes)
{
    static const kvd_row_format fmts[] = {KVD_ROW_I8, KVD_ROW_F16, KVD_ROW_BF16, KVD_ROW_U4G,
                                          KVD_ROW_U2G};
    static const uint32_t groups[] = {32, 16, 24, 48, 64, 128, 8, 12}; /* 8: AVX-512 tile; 12 */
    char what[96];
    for (size_t fi = 0; fi < sizeof fmts / sizeof *fmts; fi++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
            for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++) {
                if (fmts[fi] != KVD_ROW_U4G && fmts[fi] != KVD_ROW_U2G && gi > 0)
                    break; /* no groups */
                const size_t n = counts[rng_next() % (sizeof counts / sizeof *counts)];
                const size_t n_q = heads[rng_next() % (sizeof heads / sizeof *heads)];
                const size_t spp = 8 + rng_next() % 40;
                cache c;
                cache_build(&c, fmts[fi], n, dims[di], groups[gi], spp);
                snprintf(what, sizeof what, "format %d d=%zu group=%u spp=%zu", (int)fmts[fi],
                         dims[di], groups[gi], spp);
                check(&c, n, n_q, what);
                cache_free(&c);
            }
}
END_TEST

START_TEST(test_kivi_codes)
{
    static const kvd_row_format fmts[] = {KVD_ROW_KIVI4_KEYS, KVD_ROW_KIVI2_KEYS};
    static const uint32_t groups[] = {32, 8, 16, 64};
    char what[96];
    for (size_t fi = 0; fi < sizeof fmts / sizeof *fmts; fi++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
            for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++) {
                const size_t n = counts[rng_next() % (sizeof counts / sizeof *counts)];
                const size_t n_q = heads[rng_next() % (sizeof heads / sizeof *heads)];
                const size_t spp = groups[gi] * (1 + rng_next() % 3);
                cache c;
                cache_build(&c, fmts[fi], n, dims[di], groups[gi], spp);
                snprintf(what, sizeof what, "format %d d=%zu group=%u spp=%zu", (int)fmts[fi],
                         dims[di], groups[gi], spp);
                check(&c, n, n_q, what);
                cache_free(&c);
            }
}
END_TEST

static Suite *make_suite(void)
{
    tiers_print("quant_codes");
    Suite *s = suite_create("quant_codes");
    TCase *tc = tcase_create("codes");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_per_token_codes);
    tcase_add_test(tc, test_kivi_codes);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
