/* tests/cache/test_quant_attention.c — attention over quantized caches. For
 * every row format, pages are built by hand with cache/quant.c (so this test
 * lives in tests/cache, which links kvd_cache and through it kvd_attention)
 * and checked: kvd_attend_ref against a double-precision softmax over the
 * DEQUANTIZED rows, every SIMD kernel against kvd_attend_ref, a KIVI segment
 * followed by an f32 segment against one concatenated oracle, h2o weights
 * over formats and segments, and (reported, loosely bounded) the error of
 * each format against exact attention on the original f32 values. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/formats.h"
#include "attention/kernels.h"
#include "attention/weights.h"
#include "cache/quant.h"
#include "tests/support/check_main.h"

/* Tolerances against the oracle on the dequantized values: the kernels see
 * exactly those values (dequantization is exact f32 arithmetic, see
 * attention/standard_simd.h), so only f32 attention rounding remains, as in
 * tests/attention/test_standard.c. With maxv = max |v| over visible rows and
 * S = |scale| * max_j sum_i |q_i k_ji|:
 *   |o - o_exact| <= maxv * (ATTN_REL_TOL + ATTN_SCORE_TOL * S).
 * ATTN_REL_TOL: exp (a few ulp per weight) and f32 sums over <= ~300 rows
 * (worst n * 2^-24 = 1.8e-5). ATTN_SCORE_TOL: an f32 dot of d <= 600 terms
 * is off by at most d * 2^-24 * S = 3.6e-5 * S; a score error delta moves
 * the output by <= 2 delta maxv. Random data sits far below both. */
#define ATTN_REL_TOL 2e-5
#define ATTN_SCORE_TOL 4e-5
/* Kernel vs ref: each within the bound of the exact answer -> twice it. */
#define KERNEL_VS_REF_FACTOR 2.0
/* h2o weights (as tests/attention/test_weights.c): relative to the weight
 * plus the score term, plus absolute f32 rounding of the accumulator. */
#define WEIGHT_REL_TOL 1e-5
#define WEIGHT_SCORE_TOL 8e-5
#define WEIGHT_ABS_TOL 1e-6

#define PAGE_ALIGN 64

/* ---- deterministic random numbers ------------------------------------------ */

static uint64_t rng_state = 0xda942042e4dd58b5ull;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static double rng_unit(void) /* (0, 1) */
{
    return ((double)(rng_next() >> 11) + 0.5) * 0x1p-53;
}

static float rng_normal(void)
{
    return (float)(sqrt(-2.0 * log(rng_unit())) * cos(6.283185307179586 * rng_unit()));
}

/* ---- a hand-built quantized cache ------------------------------------------ */

typedef struct qcache {
    unsigned char **pages; /* [n_pages] 64-byte aligned, unused bytes 0xff */
    size_t n_pages;
    kvd_kv_pages kv;
    float *k, *v;          /* [n][d] original values */
    float *kq, *vq;        /* [n][d] what the page holds, dequantized */
    size_t n;
} qcache;

static size_t align64(size_t x)
{
    return (x + PAGE_ALIGN - 1) / PAGE_ALIGN * PAGE_ALIGN;
}

/* Keys ~ N(0,1) with channels 1 and d/2 scaled x8 (the outlier channels
 * KIVI quantizes per channel for), values ~ N(0,1). */
static void gen_kv(float *k, float *v, size_t n, size_t d)
{
    for (size_t j = 0; j < n; j++)
        for (size_t i = 0; i < d; i++) {
            k[j * d + i] = rng_normal() * ((i == 1 || i == d / 2) ? 8.0f : 1.0f);
            v[j * d + i] = rng_normal();
        }
}

/* n slots of formats kf/vf (group: channels per group, or tokens per KIVI
 * block; spp a multiple of group for KIVI keys) over pages whose K region
 * starts 64 bytes in. Bytes no slot owns are 0xff, NaN as f16 or f32 (so a
 * kernel reading past n_visible, or into padding, poisons its output). */
static void qcache_build(qcache *c, kvd_row_format kf, kvd_row_format vf, size_t n, size_t d,
                         uint32_t group, size_t spp)
{
    const size_t krb = kvd_row_bytes(kf, d, group), vrb = kvd_row_bytes(vf, d, group);
    const size_t k_units = kvd_row_is_block(kf) ? spp / group : spp;
    const size_t k_off = PAGE_ALIGN, v_off = k_off + align64(k_units * krb);
    const size_t page_bytes = v_off + align64(spp * vrb) + PAGE_ALIGN;
    ck_assert(!kvd_row_is_block(kf) || spp % group == 0);
    c->n = n;
    c->n_pages = n == 0 ? 1 : (n + spp - 1) / spp;
    c->pages = calloc(c->n_pages, sizeof *c->pages);
    const size_t nd = (n ? n : 1) * d;
    c->k = malloc(nd * sizeof(float));
    c->v = malloc(nd * sizeof(float));
    c->kq = malloc(nd * sizeof(float));
    c->vq = malloc(nd * sizeof(float));
    ck_assert(c->pages && c->k && c->v && c->kq && c->vq);
    for (size_t p = 0; p < c->n_pages; p++) {
        c->pages[p] = aligned_alloc(PAGE_ALIGN, page_bytes);
        ck_assert_ptr_nonnull(c->pages[p]);
        memset(c->pages[p], 0xff, page_bytes);
    }
    c->kv = (kvd_kv_pages){.pages = (const unsigned char *const *)c->pages,
                           .slots_per_page = spp, .head_dim = d, .k_offset = k_off,
                           .v_offset = v_off, .k_format = kf, .v_format = vf,
                           .k_row_bytes = (uint32_t)krb, .v_row_bytes = (uint32_t)vrb,
                           .group = group};
    gen_kv(c->k, c->v, n, d);
    for (size_t j = 0; j < n; j++) {
        unsigned char *page = c->pages[j / spp];
        const size_t i = j % spp;
        kvd_quant_row(vf, c->v + j * d, d, group, page + v_off + i * vrb);
        kvd_dequant_row(vf, page + v_off + i * vrb, 0, d, group, c->vq + j * d);
        if (!kvd_row_is_block(kf)) {
            kvd_quant_row(kf, c->k + j * d, d, group, page + k_off + i * krb);
            kvd_dequant_row(kf, page + k_off + i * krb, 0, d, group, c->kq + j * d);
        } else if (i % group == 0) { /* first token of a block: the whole block */
            const size_t count = n - j < group ? n - j : group;
            unsigned char *blk = page + k_off + (i / group) * krb;
            kvd_quant_key_block(kf, c->k + j * d, d, count, d, group, blk);
            for (size_t t = 0; t < count; t++)
                kvd_dequant_row(kf, blk, t, d, group, c->kq + (j + t) * d);
        }
    }
}

static void qcache_free(qcache *c)
{
    for (size_t p = 0; p < c->n_pages; p++)
        free(c->pages[p]);
    free(c->pages);
    free(c->k);
    free(c->v);
    free(c->kq);
    free(c->vq);
}

/* ---- the oracle: two-pass softmax in double over flat rows ----------------- */

static void oracle(const float *k, const float *v, size_t n, size_t d, const float *q, float scale,
                   double *out)
{
    for (size_t i = 0; i < d; i++)
        out[i] = 0.0;
    if (n == 0)
        return;
    double *s = malloc(n * sizeof *s);
    ck_assert_ptr_nonnull(s);
    double mx = -INFINITY, sum = 0.0;
    for (size_t j = 0; j < n; j++) {
        double dot = 0.0;
        for (size_t i = 0; i < d; i++)
            dot += (double)q[i] * k[j * d + i];
        s[j] = (double)scale * dot;
        mx = s[j] > mx ? s[j] : mx;
    }
    for (size_t j = 0; j < n; j++)
        sum += (s[j] = exp(s[j] - mx));
    for (size_t j = 0; j < n; j++)
        for (size_t i = 0; i < d; i++)
            out[i] += s[j] / sum * v[j * d + i];
    free(s);
}

static double error_bound(const float *k, const float *v, size_t n, size_t d, const float *q,
                          float scale)
{
    double maxv = 0.0, smax = 0.0;
    for (size_t j = 0; j < n; j++) {
        double sabs = 0.0;
        for (size_t i = 0; i < d; i++) {
            maxv = fmax(maxv, fabs(v[j * d + i]));
            sabs += fabs((double)q[i] * k[j * d + i]);
        }
        smax = fmax(smax, fabs(scale) * sabs);
    }
    return maxv * (ATTN_REL_TOL + ATTN_SCORE_TOL * smax);
}

static float *random_queries(size_t n_q, size_t d)
{
    float *q = malloc(n_q * d * sizeof *q);
    ck_assert_ptr_nonnull(q);
    for (size_t i = 0; i < n_q * d; i++)
        q[i] = rng_normal();
    return q;
}

/* Every kernel over segs against the oracle on the flat rows k, v
 * (the segments' dequantized rows, concatenated); scalar first. */
static void check_all_kernels(const kvd_kv_segment *seg, size_t n_seg, const float *k,
                              const float *v, size_t n, size_t d, const float *q, size_t n_q,
                              float scale, const char *what)
{
    size_t n_kernels;
    const kvd_attention_kernels *kernels = kvd_attention_kernels_all(&n_kernels);
    float *ref = malloc(n_q * d * sizeof *ref), *o = malloc(n_q * d * sizeof *o);
    double *want = malloc(d * sizeof *want);
    ck_assert(ref && o && want);
    for (size_t i = 0; i < n_q * d; i++)
        ref[i] = 12345.0f;
    kvd_attend_ref(seg, n_seg, q, n_q, scale, ref);
    for (size_t h = 0; h < n_q; h++) {
        oracle(k, v, n, d, q + h * d, scale, want);
        const double tol = error_bound(k, v, n, d, q + h * d, scale);
        for (size_t i = 0; i < d; i++)
            if (!(fabs(ref[h * d + i] - want[i]) <= tol))
                ck_abort_msg("ref %s: d=%zu n=%zu n_q=%zu: o[%zu][%zu] = %.9g, want %.9g "
                             "(|err| %.3g > %.3g)",
                             what, d, n, n_q, h, i, (double)ref[h * d + i], want[i],
                             fabs(ref[h * d + i] - want[i]), tol);
    }
    for (size_t ki = 1; ki < n_kernels; ki++) {
        for (size_t i = 0; i < n_q * d; i++)
            o[i] = 12345.0f;
        kernels[ki].attend(seg, n_seg, q, n_q, scale, o);
        for (size_t h = 0; h < n_q; h++) {
            const double tol = KERNEL_VS_REF_FACTOR * error_bound(k, v, n, d, q + h * d, scale);
            for (size_t i = 0; i < d; i++)
                if (!(fabs(o[h * d + i] - ref[h * d + i]) <= tol))
                    ck_abort_msg("%s vs ref %s: d=%zu n=%zu n_q=%zu: o[%zu][%zu] = %.9g vs "
                                 "%.9g (tol %.3g)",
                                 kernels[ki].name, what, d, n, n_q, h, i, (double)o[h * d + i],
                                 (double)ref[h * d + i], tol);
        }
    }
    free(ref);
    free(o);
    free(want);
}

typedef struct format_pair {
    const char *name;
    kvd_row_format k, v;
} format_pair;

/* The dtypes' pairs (kvd_dtype_*_format) plus mixes no dtype uses, so each
 * decoder is exercised for keys and for values. */
static const format_pair pairs[] = {
    {"f32", KVD_ROW_F32, KVD_ROW_F32},        {"f16", KVD_ROW_F16, KVD_ROW_F16},
    {"bf16", KVD_ROW_BF16, KVD_ROW_BF16},     {"int8", KVD_ROW_I8, KVD_ROW_I8},
    {"int4", KVD_ROW_U4G, KVD_ROW_U4G},       {"kivi4", KVD_ROW_KIVI4_KEYS, KVD_ROW_U4G},
    {"kivi2", KVD_ROW_KIVI2_KEYS, KVD_ROW_U2G}, {"u2g/f16", KVD_ROW_U2G, KVD_ROW_F16},
    {"i8/bf16", KVD_ROW_I8, KVD_ROW_BF16},    {"bf16/u2g", KVD_ROW_BF16, KVD_ROW_U2G},
};
#define N_PAIRS (sizeof pairs / sizeof *pairs)

/* (a) + (b): every format pair over head_dims (odd, above one vector, above
 * one channel chunk of 256), groups that are and are not whole vectors
 * (8 and 50 take the scalar decode in the AVX-512 kernel), visible counts
 * around blocks of 16 and pages, GQA groups. */
START_TEST(test_formats_match_oracle)
{
    static const size_t dims[] = {1, 3, 17, 50, 64, 128, 130, 300};
    static const uint32_t groups[] = {32, 8, 16, 50, 64};
    static const size_t counts[] = {0, 1, 15, 16, 17, 100, 257};
    static const size_t heads[] = {1, 4, 7};
    for (size_t pi = 0; pi < N_PAIRS; pi++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
            const size_t d = dims[di];
            const uint32_t group = groups[rng_next() % (sizeof groups / sizeof *groups)];
            const size_t n = counts[rng_next() % (sizeof counts / sizeof *counts)];
            const size_t n_q = heads[rng_next() % (sizeof heads / sizeof *heads)];
            const size_t spp = kvd_row_is_block(pairs[pi].k) ? group * (1 + rng_next() % 3)
                                                             : 1 + rng_next() % 40;
            qcache c;
            qcache_build(&c, pairs[pi].k, pairs[pi].v, n, d, group, spp);
            float *q = random_queries(n_q, d);
            const kvd_kv_segment seg = {.kv = c.kv, .n = n};
            char what[96];
            snprintf(what, sizeof what, "%s group=%u spp=%zu", pairs[pi].name, group, spp);
            check_all_kernels(&seg, 1, c.kq, c.vq, n, d, q, n_q, 1.0f / sqrtf((float)d), what);
            /* a prefix: the kernels must stop at n_visible */
            if (n > 3) {
                const kvd_kv_segment pre = {.kv = c.kv, .n = n - 3};
                check_all_kernels(&pre, 1, c.kq, c.vq, n - 3, d, q, n_q, 0.3f, what);
            }
            free(q);
            qcache_free(&c);
        }
}
END_TEST

/* Many random shapes per format, the dtype pairs only; includes a group
 * larger than KVD_ATTN_MAX_GROUP and head_dim 600 (three chunks). */
START_TEST(test_random_shapes)
{
    for (int iter = 0; iter < 70; iter++) {
        const format_pair *fp = &pairs[rng_next() % 7];
        static const size_t dims[] = {2, 8, 33, 96, 128, 256, 257, 600};
        const size_t d = dims[rng_next() % (sizeof dims / sizeof *dims)];
        const uint32_t group = (uint32_t)(16u << (rng_next() % 3)); /* 16, 32, 64 */
        const size_t n = rng_next() % 300;
        const size_t n_q = iter == 0 ? KVD_ATTN_MAX_GROUP + 3 : 1 + rng_next() % 8;
        const size_t spp = kvd_row_is_block(fp->k) ? group * (1 + rng_next() % 2)
                                                   : 1 + rng_next() % 64;
        qcache c;
        qcache_build(&c, fp->k, fp->v, n, d, group, spp);
        float *q = random_queries(n_q, d);
        const kvd_kv_segment seg = {.kv = c.kv, .n = n};
        const float scale = (float)(rng_unit() * 2.0 - 0.5) / sqrtf((float)d);
        char what[96];
        snprintf(what, sizeof what, "%s group=%u spp=%zu scale=%g", fp->name, group, spp,
                 (double)scale);
        check_all_kernels(&seg, 1, c.kq, c.vq, n, d, q, n_q, scale, what);
        free(q);
        qcache_free(&c);
    }
}
END_TEST

/* (c): a quantized KIVI segment (whole blocks, then a partial block) and an
 * f32 residual segment equal one softmax over the concatenated rows. */
START_TEST(test_kivi_then_f32_segments)
{
    static const size_t dims[] = {16, 64, 128, 130};
    const kvd_row_format kfs[] = {KVD_ROW_KIVI4_KEYS, KVD_ROW_KIVI2_KEYS};
    const kvd_row_format vfs[] = {KVD_ROW_U4G, KVD_ROW_U2G};
    static const size_t n1s[] = {96, 70, 0, 32};
    static const size_t n2s[] = {20, 0, 33, 1};
    for (size_t fi = 0; fi < 2; fi++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
            for (size_t ni = 0; ni < sizeof n1s / sizeof *n1s; ni++) {
                const size_t d = dims[di], n1 = n1s[ni], n2 = n2s[ni], n_q = 4;
                qcache a, b;
                qcache_build(&a, kfs[fi], vfs[fi], n1, d, 32, 64);
                qcache_build(&b, KVD_ROW_F32, KVD_ROW_F32, n2, d, 32, 7);
                const kvd_kv_segment seg[2] = {{.kv = a.kv, .n = n1}, {.kv = b.kv, .n = n2}};
                const size_t n = n1 + n2;
                float *k = malloc((n + 1) * d * sizeof *k), *v = malloc((n + 1) * d * sizeof *v);
                ck_assert(k && v);
                memcpy(k, a.kq, n1 * d * sizeof *k);
                memcpy(v, a.vq, n1 * d * sizeof *v);
                memcpy(k + n1 * d, b.kq, n2 * d * sizeof *k);
                memcpy(v + n1 * d, b.vq, n2 * d * sizeof *v);
                float *q = random_queries(n_q, d);
                check_all_kernels(seg, 2, k, v, n, d, q, n_q, 1.0f / sqrtf((float)d),
                                  "kivi + f32 segments");

                /* h2o weights over the same two segments, slots numbered in
                 * order, against a double softmax of the concatenation. */
                float *scratch = malloc((n + 1) * sizeof *scratch);
                float *acc = malloc((n + 1) * sizeof *acc);
                double *want = calloc(n + 1, sizeof *want);
                ck_assert(scratch && acc && want);
                for (size_t j = 0; j <= n; j++)
                    acc[j] = 0.25f;
                const float scale = 1.0f / sqrtf((float)d);
                kvd_attention_weights_ref(seg, 2, q, n_q, scale, scratch, acc);
                double smax = 0.0;
                for (size_t h = 0; h < n_q; h++) {
                    double *s = malloc((n + 1) * sizeof *s), mx = -INFINITY, sum = 0.0;
                    ck_assert_ptr_nonnull(s);
                    for (size_t j = 0; j < n; j++) {
                        double dot = 0.0, sabs = 0.0;
                        for (size_t i = 0; i < d; i++) {
                            dot += (double)q[h * d + i] * k[j * d + i];
                            sabs += fabs((double)q[h * d + i] * k[j * d + i]);
                        }
                        s[j] = scale * dot;
                        mx = fmax(mx, s[j]);
                        smax = fmax(smax, scale * sabs);
                    }
                    for (size_t j = 0; j < n; j++)
                        sum += (s[j] = exp(s[j] - mx));
                    for (size_t j = 0; j < n; j++)
                        want[j] += s[j] / sum;
                    free(s);
                }
                for (size_t j = 0; j < n; j++) {
                    const double w = want[j] + 0.25;
                    const double tol = want[j] * (WEIGHT_REL_TOL + WEIGHT_SCORE_TOL * smax)
                                       + WEIGHT_ABS_TOL;
                    ck_assert_msg(fabs(acc[j] - w) <= tol, "weights: slot %zu of %zu: %.9g vs %.9g",
                                  j, n, (double)acc[j], w);
                }
                ck_assert_float_eq(acc[n], 0.25f); /* past the visible slots: untouched */
                free(scratch);
                free(acc);
                free(want);
                free(q);
                free(k);
                free(v);
                qcache_free(&a);
                qcache_free(&b);
            }
}
END_TEST

/* (d): the error each format costs against exact attention on the original
 * values, printed (DESIGN.md: kvd makes the loss measurable) and checked
 * only against loose sanity bounds (a broken decoder gives errors of order
 * 1; these are several times what the formats give on this data). */
START_TEST(test_report_error_vs_f32)
{
    const size_t d = 128, n = 2048, n_q = 4;
    const float scale = 1.0f / sqrtf((float)d);
    static const double sanity[] = {1e-5, 5e-3, 3e-2, 0.1, 0.5, 0.5, 1.5};
    printf("relative L2 error of attention vs exact f32 (d=128, n=2048, 4 heads, "
           "keys N(0,1) with 2 channels x8, values N(0,1)):\n");
    for (size_t pi = 0; pi < 7; pi++) {
        qcache c;
        rng_state = 0x1234567ull; /* the same data for every format */
        qcache_build(&c, pairs[pi].k, pairs[pi].v, n, d, 32, 64);
        float *q = random_queries(n_q, d);
        float *o = malloc(n_q * d * sizeof *o);
        double *want = malloc(d * sizeof *want);
        ck_assert(o && want);
        const kvd_kv_segment seg = {.kv = c.kv, .n = n};
        kvd_attention_kernels_get()->attend(&seg, 1, q, n_q, scale, o);
        double err = 0.0, ref = 0.0;
        for (size_t h = 0; h < n_q; h++) {
            oracle(c.k, c.v, n, d, q + h * d, scale, want);
            for (size_t i = 0; i < d; i++) {
                err += (o[h * d + i] - want[i]) * (o[h * d + i] - want[i]);
                ref += want[i] * want[i];
            }
        }
        const double rel = sqrt(err / ref);
        printf("  %-6s %.3e\n", pairs[pi].name, rel);
        ck_assert_msg(rel <= sanity[pi], "%s: relative error %.3g > sanity bound %.3g",
                      pairs[pi].name, rel, sanity[pi]);
        free(o);
        free(want);
        free(q);
        qcache_free(&c);
    }
}
END_TEST

static Suite *quant_attention_suite(void)
{
    Suite *s = suite_create("cache/quant_attention");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_formats_match_oracle);
    tcase_add_test(tc, test_random_shapes);
    tcase_add_test(tc, test_kivi_then_f32_segments);
    tcase_add_test(tc, test_report_error_vs_f32);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(quant_attention_suite)
