/* attention/tensor_simd.h — the body of the four-cache tensor kernel
 * (tensor.h), written once over the vector layer (simd_avx2.h,
 * simd_avx512.h, simd_scalar.h) and included by one thin .c file per layer
 * (tensor_avx2.c, tensor_avx512.c, tensor_scalar.c), which names it
 * KVD_SIMD_NAME(kvd__tensor_four_). Private to attention/. f32 views; a
 * head_dim above KVD_TENSOR_MAX_FAST_DIM runs kvd_tensor_four_view. */
#ifndef KVD_SIMD_LAYER
#error "include a vector layer (attention/simd_*.h) before attention/tensor_simd.h"
#endif

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "attention/kernels.h"
#include "attention/tensor.h"

#define LANES KVD_SIMD_W /* virtual queries per tile; keys per block */
/* Channels of q' per step of the score loop, held in registers beside the
 * LANES score accumulators (AVX-512: 8 + 16 of 32 registers; 8 lanes:
 * 4 + 8 of 16). */
#define T_QSTEP (KVD_SIMD_W == 16 ? 8 : 4)
/* Order of the score FMAs within a step: measured fastest per width
 * (AVX-512: keys innermost; AVX2: a key's T_QSTEP channels innermost, about
 * 20% faster there than keys innermost). */
#define T_KEYS_INNER (KVD_SIMD_W == 16)
/* Value accumulation: T_PV_LANES virtual queries x 4 vectors of
 * accumulators per pass (AVX-512: 16 of 32 registers; 8 lanes: 8 of 16). */
#define T_PV_LANES (KVD_SIMD_W == 16 ? 4 : 2)
#define PV_CHUNK (4 * KVD_SIMD_W) /* channels per pass: 4 vectors */

static size_t t_min(size_t x, size_t y)
{
    return x < y ? x : y;
}

static size_t t_first_visible(size_t n, size_t window)
{
    return window > 0 && window < n ? n - window : 0;
}

/* Key and value pointers of rows r0 .. r0+cnt-1 of a view (one division per
 * block, then a page cursor); entries cnt .. LANES-1 repeat the last row,
 * so a partial block reads only real rows (their weights are forced to 0). */
static void t_rows_at(const kvd_kv_pages *kv, size_t r0, size_t cnt, const float **kp,
                      const float **vp)
{
    const size_t spp = kv->slots_per_page, d = kv->head_dim;
    size_t p = r0 / spp, i = r0 % spp;
    for (size_t c = 0; c < cnt; c++) {
        const unsigned char *page = kv->pages[p];
        kp[c] = (const float *)(page + kv->k_offset) + i * d;
        vp[c] = (const float *)(page + kv->v_offset) + i * d;
        if (++i == spp) {
            i = 0;
            p++;
        }
    }
    for (size_t c = cnt; c < LANES; c++) {
        kp[c] = kp[cnt - 1];
        vp[c] = vp[cnt - 1];
    }
}

/* od = od * od_scale + o, then o = 0 and od_scale = 1, for heads [0, nh):
 * the f32 output sums of the last lanes move into the f64 ones. */
KVD_SIMD_ATTR static void t_fold(double *restrict od, double *restrict od_scale, float *restrict o,
                                 size_t nh, size_t d)
{
    for (size_t h = 0; h < nh; h++) {
        for (size_t i = 0; i < d; i++)
            od[h * d + i] = od[h * d + i] * od_scale[h] + (double)o[h * d + i];
        memset(o + h * d, 0, d * sizeof *o);
        od_scale[h] = 1.0;
    }
}

/* The blocked variant of the per-j algorithm (tensor.h, DESIGN.md §5).
 * A "virtual query" is one (head h, token j) pair: q'_hj = scale * q_h ⊙ k1_j.
 * Each is ordinary softmax attention over the visible (k2, v2) rows with its
 * own running max m_hj and sum l_hj and partial output u_hj [d]; folding it
 * into head h's global state (max M, sum L, output acc) is
 *   M' = max(M, m), acc = acc e^(M-M') + e^(m-M') (v1_j ⊙ u_hj),
 *   L = L e^(M-M') + e^(m-M') l_hj
 * which is exact (the softmax over pairs factors through j).
 * A tile puts W virtual queries in the W lanes of a vector, stored
 * transposed (qt [d][W]); then for a block of W keys the scores are W
 * vectors (one per key, lanes = virtual queries) built from d broadcast FMAs
 * each: no horizontal sums, the running max, exp and sum are lane-wise, and
 * each k2/v2 row is read once per W virtual queries — once per GQA group
 * and W/n_q tokens — from L1/L2 (the four caches are O(n d), cache-sized).
 * Per tile and key: d FMAs for scores + d FMAs for u, one vector exp.
 * Scratch: qt [d][W], u [W][d], p [W][W] and the f64 output sums od
 * [nh][d] (kernels.h: lanes summed in f32 over KVD_ATTN_FOLD_BLOCKS tiles,
 * then in f64) on the stack, no allocation, nothing n-sized. */
KVD_SIMD_ATTR static void t_four_group(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t lo,
                                       size_t w, const float *q, size_t nh, float scale, float *o,
                                       float *lse)
{
    const size_t d = a->head_dim;
    const size_t dp = (d + PV_CHUNK - 1) / PV_CHUNK * PV_CHUNK; /* u row stride */
    float gm[KVD_TENSOR_MAX_GROUP];                             /* per head: max M */
    double gl[KVD_TENSOR_MAX_GROUP];                            /* and sum L, f64 (kernels.h) */
    _Alignas(64) float qt[KVD_TENSOR_MAX_FAST_DIM * LANES];     /* [d][W] virtual queries */
    _Alignas(64) float u[LANES * KVD_TENSOR_MAX_FAST_DIM];      /* [W][dp] partial outputs */
    _Alignas(64) float p[LANES * LANES];                        /* [key][lane] block weights */
    _Alignas(64) float lane_m[LANES], block_l[LANES], alpha[LANES];
    double lane_l[LANES]; /* each lane's sum l_hj: f32 block sums added in f64 */
    /* The heads' output sums (kernels.h): o [nh][d] the f32 sum of the
     * lanes of the last KVD_ATTN_FOLD_BLOCKS tiles, od [nh][d] the f64 sum
     * before them, still to be multiplied by od_scale. */
    _Alignas(64) double od[KVD_ATTN_ACC_DOUBLES];
    double od_scale[KVD_TENSOR_MAX_GROUP];
    size_t tiles = 0; /* since the last fold */
    const float *k2p[LANES], *v2p[LANES];

    memset(o, 0, nh * d * sizeof *o);
    memset(od, 0, nh * d * sizeof *od);
    for (size_t h = 0; h < nh; h++) {
        gm[h] = -INFINITY;
        gl[h] = 0.0;
        od_scale[h] = 1.0;
    }
    const size_t n_virtual = nh * w;
    for (size_t r0 = 0; r0 < n_virtual; r0 += LANES) {
        const size_t lanes = t_min(LANES, n_virtual - r0);
        /* qt: W channels at a time, the W lanes' q' rows as vectors,
         * transposed in registers (spare lanes: zero rows, never merged). */
        const float *qrow[LANES], *k1row[LANES];
        for (size_t c = 0; c < lanes; c++) {
            qrow[c] = q + (r0 + c) / w * d;
            k1row[c] = kvd_kv_key(a, lo + (r0 + c) % w);
        }
        const vf vs = v_set1(scale);
        for (size_t l = 0; l < d; l += LANES) {
            const vmask mk = v_tail_mask(l, d);
            vf rows[LANES];
            for (size_t c = 0; c < LANES; c++) {
                rows[c] = v_zero();
                if (c < lanes)
                    rows[c] = v_mul(v_mul(vs, v_load_mask(qrow[c] + l, mk)),
                                    v_load_mask(k1row[c] + l, mk));
            }
            v_transpose(rows, qt + l * LANES);
        }
        memset(u, 0, LANES * dp * sizeof *u);
        vf m = v_set1(-INFINITY);
        for (size_t c = 0; c < LANES; c++)
            lane_l[c] = 0.0;

        for (size_t k0 = 0; k0 < w; k0 += LANES) {
            const size_t nk = t_min(LANES, w - k0);
            t_rows_at(b, lo + k0, nk, k2p, v2p);

            /* Scores: s[kk] lane c = <q'_c, k2_kk>. T_QSTEP qt vectors and
             * W accumulators stay in registers, each k2 number is one
             * broadcast FMA operand. */
            vf s[LANES];
            _Pragma("GCC unroll 16")
            for (int kk = 0; kk < LANES; kk++)
                s[kk] = v_zero();
            size_t l = 0;
            for (; l + T_QSTEP <= d; l += T_QSTEP) {
                vf qv[T_QSTEP];
                _Pragma("GCC unroll 8")
                for (int i = 0; i < T_QSTEP; i++)
                    qv[i] = v_load(qt + (l + i) * LANES);
                if (T_KEYS_INNER) {
                    /* keys innermost: W independent FMAs between dependent ones */
                    _Pragma("GCC unroll 8")
                    for (int i = 0; i < T_QSTEP; i++)
                        _Pragma("GCC unroll 16")
                        for (int kk = 0; kk < LANES; kk++)
                            s[kk] = v_fma(qv[i], v_set1(k2p[kk][l + i]), s[kk]);
                } else {
                    /* channels innermost: one key's T_QSTEP numbers in a row */
                    _Pragma("GCC unroll 16")
                    for (int kk = 0; kk < LANES; kk++) {
                        const float *k = k2p[kk] + l;
                        vf t = s[kk];
                        _Pragma("GCC unroll 8")
                        for (int i = 0; i < T_QSTEP; i++)
                            t = v_fma(qv[i], v_set1(k[i]), t);
                        s[kk] = t;
                    }
                }
            }
            for (; l < d; l++) {
                const vf qv = v_load(qt + l * LANES);
                _Pragma("GCC unroll 16")
                for (int kk = 0; kk < LANES; kk++)
                    s[kk] = v_fma(qv, v_set1(k2p[kk][l]), s[kk]);
            }
            for (size_t kk = nk; kk < LANES; kk++)
                s[kk] = v_set1(-INFINITY); /* no such key */

            /* Online softmax, lane-wise: one max and rescale per block. */
            vf bm = s[0];
            _Pragma("GCC unroll 16")
            for (int kk = 1; kk < LANES; kk++)
                bm = v_max(bm, s[kk]);
            const vf m_new = v_max(m, bm);
            const int grew = v_any_gt(m_new, m);
            const vf al = v_exp(v_sub(m, m_new)); /* 1 where m held, 0 at first */
            vf bsum = v_zero();
            _Pragma("GCC unroll 16")
            for (int kk = 0; kk < LANES; kk++) {
                const vf pk = v_exp(v_sub(s[kk], m_new));
                bsum = v_add(bsum, pk);
                v_store(p + kk * LANES, pk);
            }
            m = m_new;
            v_store(alpha, al);
            v_store(block_l, bsum);
            for (size_t c = 0; c < LANES; c++)
                lane_l[c] = lane_l[c] * alpha[c] + block_l[c];

            /* u[c] = u[c] * alpha[c] + sum_kk p[kk][c] v2_kk, T_PV_LANES
             * lanes x 4 vectors of accumulators at a time, v2 rows from L1. */
            for (size_t ch = 0; ch < dp; ch += PV_CHUNK) {
                vmask mk[4];
                _Pragma("GCC unroll 4")
                for (int v = 0; v < 4; v++)
                    mk[v] = v_tail_mask(ch + (size_t)v * LANES, d);
                for (size_t c0 = 0; c0 < LANES; c0 += T_PV_LANES) {
                    vf acc[T_PV_LANES][4];
                    _Pragma("GCC unroll 4")
                    for (int i = 0; i < T_PV_LANES; i++) {
                        const float *ur = u + (c0 + i) * dp + ch;
                        _Pragma("GCC unroll 4")
                        for (int v = 0; v < 4; v++)
                            acc[i][v] = v_load(ur + v * LANES);
                        if (grew) {
                            const vf sc = v_set1(alpha[c0 + i]);
                            _Pragma("GCC unroll 4")
                            for (int v = 0; v < 4; v++)
                                acc[i][v] = v_mul(acc[i][v], sc);
                        }
                    }
                    _Pragma("GCC unroll 16")
                    for (int kk = 0; kk < LANES; kk++) {
                        const float *vr = v2p[kk] + ch;
                        vf x[4];
                        _Pragma("GCC unroll 4")
                        for (int v = 0; v < 4; v++)
                            x[v] = v_load_mask(vr + v * LANES, mk[v]);
                        _Pragma("GCC unroll 4")
                        for (int i = 0; i < T_PV_LANES; i++) {
                            const vf pb = v_set1(p[kk * LANES + c0 + i]);
                            _Pragma("GCC unroll 4")
                            for (int v = 0; v < 4; v++)
                                acc[i][v] = v_fma(pb, x[v], acc[i][v]);
                        }
                    }
                    _Pragma("GCC unroll 4")
                    for (int i = 0; i < T_PV_LANES; i++) {
                        float *ur = u + (c0 + i) * dp + ch;
                        _Pragma("GCC unroll 4")
                        for (int v = 0; v < 4; v++)
                            v_store(ur + v * LANES, acc[i][v]);
                    }
                }
            }
        }

        /* Fold each lane (h, j) into head h's global state. */
        v_store(lane_m, m);
        for (size_t c = 0; c < lanes; c++) {
            const size_t h = (r0 + c) / w, j = lo + (r0 + c) % w;
            const float mx = fmaxf(gm[h], lane_m[c]);
            const float ca = expf(gm[h] - mx), cb = expf(lane_m[c] - mx);
            const float *v1 = kvd_kv_value(a, j), *uc = u + c * dp;
            float *oh = o + h * d;
            const vf va = v_set1(ca), vb = v_set1(cb);
            for (size_t i = 0; i < d; i += LANES) {
                const vmask mk = v_tail_mask(i, d);
                const vf x = v_mul(v_load_mask(v1 + i, mk), v_load(uc + i));
                const vf y = v_mul(va, v_load_mask(oh + i, mk));
                v_store_mask(oh + i, mk, v_fma(vb, x, y));
            }
            gl[h] = gl[h] * ca + cb * lane_l[c];
            od_scale[h] *= ca;
            gm[h] = mx;
        }
        if (++tiles == KVD_ATTN_FOLD_BLOCKS || r0 + LANES >= n_virtual) {
            t_fold(od, od_scale, o, nh, d);
            tiles = 0;
        }
    }
    for (size_t h = 0; h < nh; h++) {
        /* gl >= 1 once a pair was seen; none seen: od = 0, o = 0 */
        const double inv = gl[h] > 0.0 ? 1.0 / gl[h] : 0.0;
        for (size_t i = 0; i < d; i++)
            o[h * d + i] = (float)(od[h * d + i] * inv);
        if (lse) /* the running max folded in; -inf when no pair was seen */
            lse[h] = gl[h] > 0.0 ? (float)((double)gm[h] + log(gl[h])) : -INFINITY;
    }
}

KVD_SIMD_ATTR void KVD_SIMD_NAME(kvd__tensor_four_lse_)(const kvd_kv_pages *a, const kvd_kv_pages *b,
                                                      size_t n, size_t window, const float *q,
                                                      size_t n_q, float scale, float *o, float *lse)
{
    const size_t d = a->head_dim;
    if (d > KVD_TENSOR_MAX_FAST_DIM) {
        /* beyond the on-stack tiles: the scalar kernel over one segment */
        const kvd_tensor_view va = {.seg = {{.kv = *a, .n = n}}, .n_seg = 1};
        const kvd_tensor_view vb = {.seg = {{.kv = *b, .n = n}}, .n_seg = 1};
        kvd_tensor_four_view_lse(&va, &vb, n, window, q, n_q, scale, o, lse);
        return;
    }
    const size_t lo = t_first_visible(n, window);
    /* heads per pass: as many as the f64 output sums hold (>= 32) */
    const size_t per_pass = t_min(KVD_TENSOR_MAX_GROUP, KVD_ATTN_ACC_DOUBLES / d);
    for (size_t h0 = 0; h0 < n_q; h0 += per_pass) {
        const size_t nh = t_min(per_pass, n_q - h0);
        t_four_group(a, b, lo, n - lo, q + h0 * d, nh, scale, o + h0 * d, lse ? lse + h0 : NULL);
    }
}

KVD_SIMD_ATTR void KVD_SIMD_NAME(kvd__tensor_four_)(const kvd_kv_pages *a, const kvd_kv_pages *b,
                                                  size_t n, size_t window, const float *q,
                                                  size_t n_q, float scale, float *o)
{
    KVD_SIMD_NAME(kvd__tensor_four_lse_)(a, b, n, window, q, n_q, scale, o, NULL);
}
