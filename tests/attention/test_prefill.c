/* tests/attention/test_prefill.c — the tiled prefill kernel
 * (attention/prefill.h), every tier, against its twin (m_q calls of the
 * oracle kvd_attend_lse_ref, one per query's visible prefix) and against an
 * exact double softmax: causal and block (VAR) masks, GQA groups inside a
 * wider head layout, sizes that are not multiples of the tiles, every row
 * format, a stream left by eviction (block table out of address order, a
 * KIVI quantized segment ending inside a key block, then the f32 residual),
 * head_dim above the query tile's chunk, lse, the same bits for any
 * split of the queries into calls (what the step engine's split relies on),
 * and every tier's block decode of quantized rows equal to
 * kvd_dequant_row bit for bit. */
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
#define RANDOM_UNITS_SEED 0x9e3779b97f4a7c15ull
#include "tests/attention/random_units.h"
#include "tests/attention/tiers.h"
#include "tests/support/check_main.h"

/* Named tolerances, those of tests/attention/test_quant_codes.c: with
 * maxv = max |v| and S = |scale| * max_j sum_i |q_i k_ji| over the visible
 * (dequantized) keys, |o - o_exact| <= maxv * (ATTN_REL_TOL + ATTN_SCORE_TOL
 * * S): an f32 dot of d <= 320 terms is off by well under 2 d 2^-24 S.
 * Kernel vs its twin (the oracle): twice that. lse: the f32 score error
 * (ATTN_SCORE_TOL * S) plus LSE_TOL for the sum and the polynomial exp
 * (tests/attention/test_lse.c's bound). A missed mask, a wrong row or a
 * wrong rescale moves outputs by O(maxv) and lse by O(1). */
#define ATTN_REL_TOL 2e-5
#define ATTN_SCORE_TOL 4e-5
#define KERNEL_VS_REF_FACTOR 2.0
#define LSE_TOL 2e-5

/* Slot j of a segment, dequantized (the rows the kernels must see). */
static void slot_rows(const kvd_kv_pages *kv, size_t j, float *k, float *v)
{
    size_t t;
    const unsigned char *u =
        kvd__kv_unit(kv, kv->k_offset, kv->k_format, kvd__kv_k_stride(kv), j, &t);
    kvd_dequant_row(kv->k_format, u, t, kv->head_dim, kv->group, k);
    u = kvd__kv_unit(kv, kv->v_offset, kv->v_format, kvd__kv_v_stride(kv), j, &t);
    kvd_dequant_row(kv->v_format, u, t, kv->head_dim, kv->group, v);
}

/* A case: the segments, and every visible row flat ([total][d]). */
typedef struct scene {
    pages part[2];
    kvd_kv_segment seg[2];
    size_t n_seg, total, d;
    float *k, *v;
} scene;

/* n slots of (kf, vf); with `residual` > 0 a second, f32 segment of that
 * many slots follows (a KIVI stream: quantized tokens, then the residual). */
static void scene_build(scene *s, kvd_row_format kf, kvd_row_format vf, size_t n, size_t residual,
                        size_t d, uint32_t group, size_t spp)
{
    memset(s, 0, sizeof *s);
    s->d = d;
    pages_build(&s->part[0], kf, vf, n, d, group, spp, false);
    s->seg[0] = (kvd_kv_segment){.kv = s->part[0].kv, .n = n};
    s->n_seg = 1;
    if (residual > 0) {
        pages_build(&s->part[1], KVD_ROW_F32, KVD_ROW_F32, residual, d, 0, 16, false);
        s->seg[1] = (kvd_kv_segment){.kv = s->part[1].kv, .n = residual};
        s->n_seg = 2;
    }
    s->total = n + residual;
    s->k = malloc((s->total + 1) * d * sizeof *s->k);
    s->v = malloc((s->total + 1) * d * sizeof *s->v);
    ck_assert(s->k && s->v);
    size_t j = 0;
    for (size_t g = 0; g < s->n_seg; g++)
        for (size_t i = 0; i < s->seg[g].n; i++, j++)
            slot_rows(&s->seg[g].kv, i, s->k + j * d, s->v + j * d);
}

static void scene_free(scene *s)
{
    pages_free(&s->part[0]);
    if (s->n_seg > 1)
        pages_free(&s->part[1]);
    free(s->k);
    free(s->v);
}

/* Exact double softmax of q over the first n rows; *lse its log-sum-exp;
 * *tol the named bound for this query. */
static void exact(const scene *s, size_t n, const float *q, float scale, double *out,
                  double *lse, double *tol, double *smax_out)
{
    const size_t d = s->d;
    double *w = malloc((n + 1) * sizeof *w), mx = -INFINITY, sum = 0.0, maxv = 0.0, smax = 0.0;
    ck_assert_ptr_nonnull(w);
    for (size_t j = 0; j < n; j++) {
        double dot = 0.0, sabs = 0.0;
        for (size_t i = 0; i < d; i++) {
            dot += (double)q[i] * s->k[j * d + i];
            sabs += fabs((double)q[i] * s->k[j * d + i]);
            maxv = fmax(maxv, fabs(s->v[j * d + i]));
        }
        w[j] = scale * dot;
        smax = fmax(smax, fabs(scale) * sabs);
        mx = fmax(mx, w[j]);
    }
    for (size_t i = 0; i < d; i++)
        out[i] = 0.0;
    for (size_t j = 0; j < n; j++)
        sum += (w[j] = exp(w[j] - mx));
    for (size_t j = 0; j < n; j++)
        for (size_t i = 0; i < d; i++)
            out[i] += w[j] / sum * s->v[j * d + i];
    *lse = n ? mx + log(sum) : -INFINITY;
    *tol = maxv * (ATTN_REL_TOL + ATTN_SCORE_TOL * smax);
    *smax_out = smax;
    free(w);
}

/* The oracle's segments for the first n slots of the scene. */
static size_t prefix(const scene *s, size_t n, kvd_kv_segment out[2])
{
    size_t k = 0;
    for (size_t g = 0; g < s->n_seg; g++) {
        out[k] = s->seg[g];
        out[k].n = n < s->seg[g].n ? n : s->seg[g].n;
        n -= out[k].n;
        k++;
    }
    return k;
}

#define SENTINEL 12345.0f

/* m_q queries of a GQA group of n_q heads, placed as group `g_at` of
 * `groups` in the step's [m_q][groups * n_q][d] layout, under the mask:
 * every tier against the oracle per query and against exact. Rows outside
 * the group must stay untouched. */
static void check_case(const scene *s, size_t m_q, size_t n_q, size_t groups, size_t g_at,
                       kvd_prefill_mask mask, const char *what)
{
    const size_t d = s->d, heads = groups * n_q, stride = heads * d;
    const float scale = 1.0f / sqrtf((float)d);
    float *q = malloc(m_q * stride * sizeof *q), *ref = malloc(n_q * d * sizeof *ref),
          *o = malloc(m_q * stride * sizeof *o), *lse = malloc(m_q * heads * sizeof *lse),
          *ref_lse = malloc(n_q * sizeof *ref_lse);
    double *want = malloc(d * sizeof *want);
    ck_assert(q && ref && o && lse && ref_lse && want);
    for (size_t i = 0; i < m_q * stride; i++)
        q[i] = (float)(4.0 * rng_unit() - 2.0);
    const float *qg = q + g_at * n_q * d;
    for (size_t level = 0; level < 3; level++) {
        const kvd__prefill_fn fn = kvd__attend_prefill_tier(level);
        if (!fn)
            continue;
        for (size_t i = 0; i < m_q * stride; i++)
            o[i] = SENTINEL;
        for (size_t i = 0; i < m_q * heads; i++)
            lse[i] = SENTINEL;
        fn(s->seg, s->n_seg, qg, m_q, n_q, stride, mask, scale, o + g_at * n_q * d,
           lse + g_at * n_q, heads);
        for (size_t i = 0; i < m_q; i++) {
            size_t n = mask.n0 + i * mask.step;
            n = n < s->total ? n : s->total;
            kvd_kv_segment seg[2];
            const size_t n_seg = prefix(s, n, seg);
            kvd_attend_lse_ref(seg, n_seg, qg + i * stride, n_q, scale, ref, ref_lse);
            for (size_t hh = 0; hh < heads; hh++) {
                const size_t h = hh - g_at * n_q;
                const float *got = o + i * stride + hh * d;
                const float got_lse = lse[i * heads + hh];
                if (hh < g_at * n_q || hh >= (g_at + 1) * n_q) {
                    for (size_t c = 0; c < d; c++)
                        ck_assert_msg(got[c] == SENTINEL, "tier %zu %s wrote outside its group",
                                      level, what);
                    ck_assert_msg(got_lse == SENTINEL, "tier %zu %s wrote lse outside its group",
                                  level, what);
                    continue;
                }
                double want_lse, tol, smax;
                exact(s, n, qg + i * stride + h * d, scale, want, &want_lse, &tol, &smax);
                for (size_t c = 0; c < d; c++) {
                    const double r = ref[h * d + c];
                    if (!(fabs(got[c] - r) <= KERNEL_VS_REF_FACTOR * tol) ||
                        !(fabs(got[c] - want[c]) <= KERNEL_VS_REF_FACTOR * tol) ||
                        !(fabs(r - want[c]) <= tol))
                        ck_abort_msg("tier %zu %s q%zu h%zu (sees %zu): o[%zu] %.9g ref %.9g "
                                     "exact %.9g (tol %.3g)",
                                     level, what, i, h, n, c, (double)got[c], r, want[c], tol);
                }
                if (n == 0) {
                    ck_assert_msg(isinf(got_lse) && got_lse < 0, "tier %zu %s: lse %g, want -inf",
                                  level, what, (double)got_lse);
                    continue;
                }
                const double ltol = LSE_TOL * (1.0 + fabs(want_lse)) + ATTN_SCORE_TOL * smax;
                ck_assert_msg(fabs(got_lse - want_lse) <= ltol &&
                                  fabs(got_lse - ref_lse[h]) <= 2 * ltol,
                              "tier %zu %s q%zu h%zu: lse %.9g ref %.9g exact %.9g (tol %.3g)",
                              level, what, i, h, (double)got_lse, (double)ref_lse[h], want_lse,
                              ltol);
            }
        }
    }
    free(q);
    free(ref);
    free(o);
    free(lse);
    free(ref_lse);
    free(want);
}

/* A prefill of m_q tokens after n_before cached ones (the step engine's
 * causal mask: query i sees n_before + i + 1) and a VAR scale of m_q
 * tokens (block mask: every query sees n_before + m_q). */
static void check_masks(const scene *s, size_t m_q, size_t n_q, size_t groups, size_t g_at,
                        const char *what)
{
    const size_t n_before = s->total - m_q;
    char buf[160];
    snprintf(buf, sizeof buf, "%s causal n_before=%zu m_q=%zu n_q=%zu", what, n_before, m_q, n_q);
    check_case(s, m_q, n_q, groups, g_at, (kvd_prefill_mask){.n0 = n_before + 1, .step = 1}, buf);
    snprintf(buf, sizeof buf, "%s block n_before=%zu m_q=%zu n_q=%zu", what, n_before, m_q, n_q);
    check_case(s, m_q, n_q, groups, g_at, (kvd_prefill_mask){.n0 = s->total, .step = 0}, buf);
}

START_TEST(test_f32_shapes)
{
    /* head_dim: whole tiles, odd, above the 256-channel query chunk */
    static const size_t dims[] = {128, 33, 300};
    static const size_t mqs[] = {17, 70};
    static const size_t befores[] = {0, 37};
    static const size_t nqs[] = {4, 1, 7};
    for (size_t a = 0; a < sizeof dims / sizeof *dims; a++)
        for (size_t b = 0; b < sizeof mqs / sizeof *mqs; b++)
            for (size_t c = 0; c < sizeof befores / sizeof *befores; c++) {
                const size_t n_q = nqs[(a + b + c) % 3];
                scene s;
                scene_build(&s, KVD_ROW_F32, KVD_ROW_F32, befores[c] + mqs[b], 0, dims[a], 0, 15);
                char what[64];
                snprintf(what, sizeof what, "f32 d=%zu", dims[a]);
                check_masks(&s, mqs[b], n_q, 3, 1, what);
                scene_free(&s);
            }
}
END_TEST

START_TEST(test_gqa_wide)
{
    /* a group wider than a tile (rows of one query split across tiles) and
     * a group of 16 heads, each inside a wider step layout */
    static const size_t nqs[] = {16, 40, 2};
    for (size_t a = 0; a < sizeof nqs / sizeof *nqs; a++) {
        scene s;
        scene_build(&s, KVD_ROW_F32, KVD_ROW_F32, 60, 0, 64, 0, 16);
        check_masks(&s, 20, nqs[a], 2, a % 2, "f32 gqa");
        scene_free(&s);
    }
}
END_TEST

START_TEST(test_quantized)
{
    static const struct {
        kvd_row_format k, v;
        uint32_t group;
        const char *name;
    } fmts[] = {
        {KVD_ROW_F16, KVD_ROW_F16, 0, "f16"},
        {KVD_ROW_BF16, KVD_ROW_BF16, 0, "bf16"},
        {KVD_ROW_I8, KVD_ROW_I8, 0, "int8"},
        {KVD_ROW_U4G, KVD_ROW_U4G, 32, "int4"},
        {KVD_ROW_U2G, KVD_ROW_U2G, 16, "int2"},
        {KVD_ROW_KIVI4_KEYS, KVD_ROW_F32, 32, "kivi4"},
        {KVD_ROW_KIVI2_KEYS, KVD_ROW_F32, 16, "kivi2"},
    };
    static const size_t dims[] = {72, 264};
    for (size_t f = 0; f < sizeof fmts / sizeof *fmts; f++)
        for (size_t a = 0; a < sizeof dims / sizeof *dims; a++) {
            scene s;
            const size_t spp = kvd_row_is_block(fmts[f].k) ? 4 * fmts[f].group : 31;
            scene_build(&s, fmts[f].k, fmts[f].v, 90 + 7 * a, 0, dims[a], fmts[f].group, spp);
            char what[64];
            snprintf(what, sizeof what, "%s d=%zu", fmts[f].name, dims[a]);
            check_masks(&s, 33, 4, 2, 1, what);
            scene_free(&s);
        }
}
END_TEST

/* The rows the kernel's blocks decode, every tier, equal kvd_dequant_row
 * bit for bit: packed formats with groups of whole vectors (the vector
 * path), groups that are not (the scalar fallback), head_dims with a tail
 * and above the 256-channel chunk, runs of slots that start inside a block
 * and cross pages (KIVI: key blocks and pages), and a partly filled last
 * page. */
START_TEST(test_decode_bits)
{
    static const struct {
        kvd_row_format k, v;
        uint32_t group;
    } fmts[] = {
        {KVD_ROW_U4G, KVD_ROW_U4G, 32},         {KVD_ROW_U4G, KVD_ROW_U4G, 16},
        {KVD_ROW_U4G, KVD_ROW_U4G, 48},         {KVD_ROW_U4G, KVD_ROW_U4G, 8},
        {KVD_ROW_U4G, KVD_ROW_U4G, 12},         {KVD_ROW_U2G, KVD_ROW_U2G, 16},
        {KVD_ROW_U2G, KVD_ROW_U2G, 64},         {KVD_ROW_U2G, KVD_ROW_U2G, 8},
        {KVD_ROW_KIVI4_KEYS, KVD_ROW_U4G, 32},  {KVD_ROW_KIVI2_KEYS, KVD_ROW_U2G, 16},
        {KVD_ROW_KIVI4_KEYS, KVD_ROW_U4G, 7},   {KVD_ROW_KIVI2_KEYS, KVD_ROW_U2G, 64},
        {KVD_ROW_F16, KVD_ROW_BF16, 0},         {KVD_ROW_I8, KVD_ROW_I8, 0},
    };
    static const size_t dims[] = {128, 72, 33, 264, 512};
    static const struct {
        size_t j0, n;
    } runs[] = {{0, 0}, {5, 70}, {31, 1}, {40, 0}}; /* n 0: to the end */
    size_t checked = 0;
    for (size_t f = 0; f < sizeof fmts / sizeof *fmts; f++)
        for (size_t a = 0; a < sizeof dims / sizeof *dims; a++) {
            const size_t d = dims[a];
            const uint32_t group = fmts[f].group;
            const int block = kvd_row_is_block(fmts[f].k);
            const size_t spp = block ? 2 * group : 13, n = block ? 5 * group + 3 : 97;
            pages p;
            pages_build(&p, fmts[f].k, fmts[f].v, n, d, group, spp, false);
            float *want = malloc(n * d * sizeof *want), *got = malloc(n * d * sizeof *got);
            ck_assert(want && got);
            for (int values = 0; values < 2; values++) {
                for (size_t j = 0; j < n; j++) {
                    size_t t;
                    const kvd_row_format rf = values ? p.kv.v_format : p.kv.k_format;
                    const unsigned char *u =
                        values ? kvd__kv_unit(&p.kv, p.kv.v_offset, rf, kvd__kv_v_stride(&p.kv), j, &t)
                               : kvd__kv_unit(&p.kv, p.kv.k_offset, rf, kvd__kv_k_stride(&p.kv), j, &t);
                    kvd_dequant_row(rf, u, t, d, group, want + j * d);
                }
                for (size_t level = 0; level < 3; level++) {
                    const kvd__prefill_decode_fn fn = kvd__prefill_decode_tier(level);
                    if (!fn)
                        continue;
                    for (size_t r = 0; r < sizeof runs / sizeof *runs; r++) {
                        const size_t j0 = runs[r].j0;
                        if (j0 >= n)
                            continue;
                        const size_t cnt = runs[r].n && runs[r].n < n - j0 ? runs[r].n : n - j0;
                        for (size_t i = 0; i < cnt * d; i++)
                            got[i] = SENTINEL;
                        fn(&p.kv, values, j0, cnt, got);
                        for (size_t i = 0; i < cnt * d; i++)
                            if (memcmp(&got[i], &want[j0 * d + i], sizeof *got) != 0)
                                ck_abort_msg("tier %zu format %d/%d group %u d=%zu %s slot %zu "
                                             "channel %zu: %.9g, kvd_dequant_row %.9g",
                                             level, (int)fmts[f].k, (int)fmts[f].v, group, d,
                                             values ? "value" : "key", j0 + i / d, i % d,
                                             (double)got[i], (double)want[j0 * d + i]);
                        checked++;
                    }
                }
            }
            free(want);
            free(got);
            pages_free(&p);
        }
    ck_assert(checked > 0);
}
END_TEST

START_TEST(test_evicted_kivi)
{
    /* after eviction a KIVI stream's quantized part may end inside a key
     * block (70 = 2 blocks of 32 + 6), the f32 residual after it; the
     * prefill's tokens sit in the residual, the cache before them spans
     * both segments */
    scene s;
    scene_build(&s, KVD_ROW_KIVI4_KEYS, KVD_ROW_F32, 70, 40, 128, 32, 64);
    check_masks(&s, 20, 4, 2, 0, "kivi4 evicted");
    check_masks(&s, 40, 4, 2, 1, "kivi4 evicted");
    scene_free(&s);
    scene_build(&s, KVD_ROW_F16, KVD_ROW_I8, 45, 17, 64, 0, 7);
    check_masks(&s, 62, 2, 1, 0, "f16/int8 two segments");
    scene_free(&s);
}
END_TEST

START_TEST(test_nothing_visible)
{
    /* a pure query against an empty cache: o = 0, lse = -inf */
    scene s;
    scene_build(&s, KVD_ROW_F32, KVD_ROW_F32, 0, 0, 64, 0, 16);
    check_case(&s, 20, 4, 1, 0, (kvd_prefill_mask){.n0 = 0, .step = 0}, "empty");
    scene_free(&s);
    /* step 1 from zero: query 0 sees nothing, the rest a growing prefix */
    scene_build(&s, KVD_ROW_F32, KVD_ROW_F32, 40, 0, 64, 0, 16);
    check_case(&s, 30, 4, 1, 0, (kvd_prefill_mask){.n0 = 0, .step = 1}, "from zero");
    scene_free(&s);
}
END_TEST

START_TEST(test_dispatch_matches_tier)
{
    /* kvd_attend_prefill runs this CPU's best tier */
    scene s;
    scene_build(&s, KVD_ROW_F32, KVD_ROW_F32, 50, 0, 64, 0, 16);
    const size_t m_q = 18, n_q = 4, d = 64;
    float *q = malloc(m_q * n_q * d * sizeof *q), *a = malloc(m_q * n_q * d * sizeof *a),
          *b = malloc(m_q * n_q * d * sizeof *b);
    ck_assert(q && a && b);
    for (size_t i = 0; i < m_q * n_q * d; i++)
        q[i] = (float)(2.0 * rng_unit() - 1.0);
    const kvd_prefill_mask mask = {.n0 = 33, .step = 1};
    kvd_attend_prefill(s.seg, 1, q, m_q, n_q, n_q * d, mask, 0.125f, a, NULL, 0);
    kvd__attend_prefill_tier(kvd__simd_levels() - 1)(s.seg, 1, q, m_q, n_q, n_q * d, mask, 0.125f,
                                                     b, NULL, 0);
    ck_assert(memcmp(a, b, m_q * n_q * d * sizeof *a) == 0);
    free(q);
    free(a);
    free(b);
    scene_free(&s);
}
END_TEST

START_TEST(test_split_is_bit_identical)
{
    /* the step engine splits an entry's queries into pieces: every piece
     * size gives the bits of the whole call (prefill.h's promise) */
    scene s;
    scene_build(&s, KVD_ROW_KIVI4_KEYS, KVD_ROW_F32, 96, 70, 128, 32, 64);
    const size_t m_q = 70, n_q = 4, d = 128, stride = n_q * d;
    float *q = malloc(m_q * stride * sizeof *q), *a = malloc(m_q * stride * sizeof *a),
          *b = malloc(m_q * stride * sizeof *b), *la = malloc(m_q * n_q * sizeof *la),
          *lb = malloc(m_q * n_q * sizeof *lb);
    ck_assert(q && a && b && la && lb);
    for (size_t i = 0; i < m_q * stride; i++)
        q[i] = (float)(4.0 * rng_unit() - 2.0);
    static const size_t pieces[] = {1, 3, 16, 17, 33};
    for (size_t level = 0; level < 3; level++) {
        const kvd__prefill_fn fn = kvd__attend_prefill_tier(level);
        if (!fn)
            continue;
        for (size_t step = 0; step < 2; step++) {
            const size_t n0 = step ? 97 : s.total;
            fn(s.seg, s.n_seg, q, m_q, n_q, stride, (kvd_prefill_mask){n0, step}, 0.09f, a, la, n_q);
            for (size_t p = 0; p < sizeof pieces / sizeof *pieces; p++) {
                for (size_t i0 = 0; i0 < m_q; i0 += pieces[p]) {
                    const size_t k = m_q - i0 < pieces[p] ? m_q - i0 : pieces[p];
                    fn(s.seg, s.n_seg, q + i0 * stride, k, n_q, stride,
                       (kvd_prefill_mask){n0 + i0 * step, step}, 0.09f, b + i0 * stride,
                       lb + i0 * n_q, n_q);
                }
                ck_assert_msg(memcmp(a, b, m_q * stride * sizeof *a) == 0 &&
                                  memcmp(la, lb, m_q * n_q * sizeof *la) == 0,
                              "tier %zu step %zu: pieces of %zu differ from one call", level, step,
                              pieces[p]);
            }
        }
    }
    free(q);
    free(a);
    free(b);
    free(la);
    free(lb);
    scene_free(&s);
}
END_TEST

static Suite *make_suite(void)
{
    tiers_print("prefill");
    Suite *s = suite_create("prefill");
    TCase *tc = tcase_create("tiled");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_f32_shapes);
    tcase_add_test(tc, test_gqa_wide);
    tcase_add_test(tc, test_quantized);
    tcase_add_test(tc, test_decode_bits);
    tcase_add_test(tc, test_evicted_kivi);
    tcase_add_test(tc, test_nothing_visible);
    tcase_add_test(tc, test_dispatch_matches_tier);
    tcase_add_test(tc, test_split_is_bit_identical);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
