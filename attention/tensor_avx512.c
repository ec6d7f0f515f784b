/* attention/tensor_avx512.c — AVX-512F twins of kvd_tensor_four_ref and
 * kvd_tensor_two_ref (tensor.h), built with a target attribute so the rest
 * of the binary runs on any x86-64; tensor.c calls them only on a CPU with
 * avx512f. f32 views; a four-cache head_dim above KVD_TENSOR_MAX_FAST_DIM
 * runs the _ref. */
#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attention/tensor.h"

#define TGT __attribute__((target("avx512f")))
#define LANES 16 /* floats per vector; virtual queries per four-cache tile; rows per block */
#define PV_CHUNK 64 /* channels per pass of a value accumulation: 4 vectors */

/* exp(x) below this is flushed to 0: the weight of a pair e^86 times
 * lighter than the heaviest is below f32 resolution of any sum that holds
 * the heaviest (weight 1), and flushing keeps denormals (slow microcode
 * assists on Intel) out of the accumulators. Also turns -inf into 0. */
#define EXP_FLUSH (-86.0f)

static size_t min_sz(size_t x, size_t y)
{
    return x < y ? x : y;
}

static size_t first_visible(size_t n, size_t window)
{
    return window > 0 && window < n ? n - window : 0;
}

/* Key and value pointers of rows r0 .. r0+cnt-1 of a view (one division per
 * block, then a page cursor); entries cnt .. LANES-1 repeat the last row,
 * so a partial block reads only real rows (their weights are forced to 0). */
static void rows_at(const kvd_kv_pages *kv, size_t r0, size_t cnt, const float **kp,
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

/* Lanes of the vector at channel c that lie below d. */
static __mmask16 tail_mask(size_t c, size_t d)
{
    if (c >= d)
        return 0;
    return d - c >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (d - c)) - 1u);
}

/* x[0 .. d) *= c. */
TGT static void scale_row(float *x, size_t d, float c)
{
    const __m512 vc = _mm512_set1_ps(c);
    for (size_t i = 0; i < d; i += LANES) {
        const __mmask16 mk = tail_mask(i, d);
        _mm512_mask_storeu_ps(x + i, mk, _mm512_mul_ps(vc, _mm512_maskz_loadu_ps(mk, x + i)));
    }
}

/* out[i][c] = r[c][i] for a 16 x 16 tile (out: 16 rows of 16, 64-byte
 * aligned): pairs, then quads (unpack), then 128-bit lanes (2 shuffles). */
TGT static void transpose16(const __m512 r[16], float *out)
{
    __m512 t[16], u[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) { /* per 128-bit lane: [a0 b0 a1 b1], [a2 b2 a3 b3] */
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) { /* u[4g+k] lane L = column 4L+k of rows 4g..4g+3 */
        const __m512d t0 = _mm512_castps_pd(t[4 * g]), t1 = _mm512_castps_pd(t[4 * g + 1]),
                      t2 = _mm512_castps_pd(t[4 * g + 2]), t3 = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        const __m512 a = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88);     /* cols k, k+8: rows 0-7 */
        const __m512 b = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xdd);     /* cols k+4, k+12 */
        const __m512 c = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88); /* rows 8-15 */
        const __m512 e = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xdd);
        _mm512_store_ps(out + k * 16, _mm512_shuffle_f32x4(a, c, 0x88));
        _mm512_store_ps(out + (k + 8) * 16, _mm512_shuffle_f32x4(a, c, 0xdd));
        _mm512_store_ps(out + (k + 4) * 16, _mm512_shuffle_f32x4(b, e, 0x88));
        _mm512_store_ps(out + (k + 12) * 16, _mm512_shuffle_f32x4(b, e, 0xdd));
    }
}

/* e^x for every lane, x <= 88 (the kernels pass x <= 0). Cody-Waite range
 * reduction x = n ln2 + r, |r| <= ln2/2, then Cephes' degree-7 expf
 * polynomial (~1 ulp) and vscalefps for the 2^n. Lanes below EXP_FLUSH
 * (and -inf, NaN) give 0. */
TGT static inline __m512 exp16(__m512 x)
{
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_FLUSH), _CMP_GE_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_FLUSH)), _mm512_set1_ps(88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n));
}

/* ---- four caches ----------------------------------------------------------- */

/* The blocked variant of the per-j algorithm (tensor.h, DESIGN.md §5).
 * A "virtual query" is one (head h, token j) pair: q'_hj = scale * q_h ⊙ k1_j.
 * Each is ordinary softmax attention over the visible (k2, v2) rows with its
 * own running max m_hj and sum l_hj and partial output u_hj [d]; folding it
 * into head h's global state (max M, sum L, output acc) is
 *   M' = max(M, m), acc = acc e^(M-M') + e^(m-M') (v1_j ⊙ u_hj),
 *   L = L e^(M-M') + e^(m-M') l_hj
 * which is exact (the softmax over pairs factors through j).
 * A tile puts 16 virtual queries in the 16 lanes of a vector, stored
 * transposed (qt [d][16]); then for a block of 16 keys the scores are 16
 * vectors (one per key, lanes = virtual queries) built from d broadcast FMAs
 * each: no horizontal sums, the running max, exp and sum are lane-wise, and
 * each k2/v2 row is read once per 16 virtual queries — once per GQA group
 * and 16/n_q tokens — from L1/L2 (the four caches are O(n d), cache-sized).
 * Per tile and key: d FMAs for scores + d FMAs for u, one vector exp.
 * Scratch: qt [d][16], u [16][d], p [16][16] on the stack (O(d)), no
 * allocation, nothing n-sized. */
TGT static void four_group(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t lo, size_t w,
                           const float *q, size_t nh, float scale, float *o)
{
    const size_t d = a->head_dim;
    const size_t dp = (d + PV_CHUNK - 1) / PV_CHUNK * PV_CHUNK; /* u row stride */
    float gm[KVD_TENSOR_MAX_GROUP], gl[KVD_TENSOR_MAX_GROUP];  /* per head: max M, sum L */
    _Alignas(64) float qt[KVD_TENSOR_MAX_FAST_DIM * LANES];     /* [d][16] virtual queries */
    _Alignas(64) float u[LANES * KVD_TENSOR_MAX_FAST_DIM];      /* [16][dp] partial outputs */
    _Alignas(64) float p[LANES * LANES];                        /* [key][lane] block weights */
    _Alignas(64) float lane_m[LANES], lane_l[LANES], alpha[LANES];
    const float *k2p[LANES], *v2p[LANES];

    memset(o, 0, nh * d * sizeof *o);
    for (size_t h = 0; h < nh; h++) {
        gm[h] = -INFINITY;
        gl[h] = 0.0f;
    }
    const size_t n_virtual = nh * w;
    for (size_t r0 = 0; r0 < n_virtual; r0 += LANES) {
        const size_t lanes = min_sz(LANES, n_virtual - r0);
        /* qt: 16 channels at a time, the 16 lanes' q' rows as vectors,
         * transposed in registers (spare lanes: zero rows, never merged). */
        const float *qrow[LANES], *k1row[LANES];
        for (size_t c = 0; c < lanes; c++) {
            qrow[c] = q + (r0 + c) / w * d;
            k1row[c] = kvd_kv_key(a, lo + (r0 + c) % w);
        }
        const __m512 vs = _mm512_set1_ps(scale);
        for (size_t l = 0; l < d; l += LANES) {
            const __mmask16 mk = tail_mask(l, d);
            __m512 rows[LANES];
            for (size_t c = 0; c < LANES; c++) {
                rows[c] = _mm512_setzero_ps();
                if (c < lanes)
                    rows[c] = _mm512_mul_ps(
                        _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(mk, qrow[c] + l)),
                        _mm512_maskz_loadu_ps(mk, k1row[c] + l));
            }
            transpose16(rows, qt + l * LANES);
        }
        memset(u, 0, LANES * dp * sizeof *u);
        __m512 m = _mm512_set1_ps(-INFINITY), lsum = _mm512_setzero_ps();

        for (size_t k0 = 0; k0 < w; k0 += LANES) {
            const size_t nk = min_sz(LANES, w - k0);
            rows_at(b, lo + k0, nk, k2p, v2p);

            /* Scores: s[kk] lane c = <q'_c, k2_kk>. Channels in steps of 8:
             * 8 qt vectors + 16 accumulators stay in registers, each k2
             * number is one embedded-broadcast FMA operand. */
            __m512 s[LANES];
#pragma GCC unroll 16
            for (int kk = 0; kk < LANES; kk++)
                s[kk] = _mm512_setzero_ps();
            size_t l = 0;
            for (; l + 8 <= d; l += 8) {
                __m512 qv[8];
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++)
                    qv[i] = _mm512_load_ps(qt + (l + i) * LANES);
                /* keys innermost: 16 independent FMAs between dependent ones */
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++)
#pragma GCC unroll 16
                    for (int kk = 0; kk < LANES; kk++)
                        s[kk] = _mm512_fmadd_ps(qv[i], _mm512_set1_ps(k2p[kk][l + i]), s[kk]);
            }
            for (; l < d; l++) {
                const __m512 qv = _mm512_load_ps(qt + l * LANES);
#pragma GCC unroll 16
                for (int kk = 0; kk < LANES; kk++)
                    s[kk] = _mm512_fmadd_ps(qv, _mm512_set1_ps(k2p[kk][l]), s[kk]);
            }
            for (size_t kk = nk; kk < LANES; kk++)
                s[kk] = _mm512_set1_ps(-INFINITY); /* no such key */

            /* Online softmax, lane-wise: one max and rescale per block. */
            __m512 bm = s[0];
#pragma GCC unroll 16
            for (int kk = 1; kk < LANES; kk++)
                bm = _mm512_max_ps(bm, s[kk]);
            const __m512 m_new = _mm512_max_ps(m, bm);
            const __mmask16 grew = _mm512_cmp_ps_mask(m_new, m, _CMP_GT_OQ);
            const __m512 al = exp16(_mm512_sub_ps(m, m_new)); /* 1 where m held, 0 at first */
            lsum = _mm512_mul_ps(lsum, al);
#pragma GCC unroll 16
            for (int kk = 0; kk < LANES; kk++) {
                const __m512 pk = exp16(_mm512_sub_ps(s[kk], m_new));
                lsum = _mm512_add_ps(lsum, pk);
                _mm512_store_ps(p + kk * LANES, pk);
            }
            m = m_new;
            _mm512_store_ps(alpha, al);

            /* u[c] = u[c] * alpha[c] + sum_kk p[kk][c] v2_kk, 4 lanes x 4
             * vectors of accumulators at a time, v2 rows from L1. */
            for (size_t ch = 0; ch < dp; ch += PV_CHUNK) {
                const __mmask16 mk0 = tail_mask(ch, d), mk1 = tail_mask(ch + 16, d),
                                mk2 = tail_mask(ch + 32, d), mk3 = tail_mask(ch + 48, d);
                for (size_t c0 = 0; c0 < LANES; c0 += 4) {
                    __m512 acc[4][4];
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) {
                        float *ur = u + (c0 + i) * dp + ch;
#pragma GCC unroll 8
                        for (int v = 0; v < 4; v++)
                            acc[i][v] = _mm512_load_ps(ur + 16 * v);
                        if (grew) {
                            const __m512 sc = _mm512_set1_ps(alpha[c0 + i]);
#pragma GCC unroll 8
                            for (int v = 0; v < 4; v++)
                                acc[i][v] = _mm512_mul_ps(acc[i][v], sc);
                        }
                    }
#pragma GCC unroll 16
                    for (int kk = 0; kk < LANES; kk++) {
                        const float *vr = v2p[kk] + ch;
                        const __m512 x0 = _mm512_maskz_loadu_ps(mk0, vr),
                                     x1 = _mm512_maskz_loadu_ps(mk1, vr + 16),
                                     x2 = _mm512_maskz_loadu_ps(mk2, vr + 32),
                                     x3 = _mm512_maskz_loadu_ps(mk3, vr + 48);
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) {
                            const __m512 pb = _mm512_set1_ps(p[kk * LANES + c0 + i]);
                            acc[i][0] = _mm512_fmadd_ps(pb, x0, acc[i][0]);
                            acc[i][1] = _mm512_fmadd_ps(pb, x1, acc[i][1]);
                            acc[i][2] = _mm512_fmadd_ps(pb, x2, acc[i][2]);
                            acc[i][3] = _mm512_fmadd_ps(pb, x3, acc[i][3]);
                        }
                    }
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) {
                        float *ur = u + (c0 + i) * dp + ch;
#pragma GCC unroll 8
                        for (int v = 0; v < 4; v++)
                            _mm512_store_ps(ur + 16 * v, acc[i][v]);
                    }
                }
            }
        }

        /* Fold each lane (h, j) into head h's global state. */
        _mm512_store_ps(lane_m, m);
        _mm512_store_ps(lane_l, lsum);
        for (size_t c = 0; c < lanes; c++) {
            const size_t h = (r0 + c) / w, j = lo + (r0 + c) % w;
            const float mx = fmaxf(gm[h], lane_m[c]);
            const float ca = expf(gm[h] - mx), cb = expf(lane_m[c] - mx);
            const float *v1 = kvd_kv_value(a, j), *uc = u + c * dp;
            float *oh = o + h * d;
            const __m512 va = _mm512_set1_ps(ca), vb = _mm512_set1_ps(cb);
            for (size_t i = 0; i < d; i += LANES) {
                const __mmask16 mk = tail_mask(i, d);
                const __m512 x =
                    _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, v1 + i), _mm512_load_ps(uc + i));
                const __m512 y = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(mk, oh + i));
                _mm512_mask_storeu_ps(oh + i, mk, _mm512_fmadd_ps(vb, x, y));
            }
            gl[h] = gl[h] * ca + cb * lane_l[c];
            gm[h] = mx;
        }
    }
    for (size_t h = 0; h < nh; h++) {
        if (gl[h] > 0.0f) /* >= 1 once a pair was seen */
            scale_row(o + h * d, d, 1.0f / gl[h]);
    }
}

TGT void kvd_tensor_four_avx512(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n,
                                size_t window, const float *q, size_t n_q, float scale, float *o)
{
    const size_t d = a->head_dim;
    if (d > KVD_TENSOR_MAX_FAST_DIM) {
        kvd_tensor_four_ref(a, b, n, window, q, n_q, scale, o);
        return;
    }
    const size_t lo = first_visible(n, window);
    for (size_t h0 = 0; h0 < n_q; h0 += KVD_TENSOR_MAX_GROUP) {
        const size_t nh = min_sz(KVD_TENSOR_MAX_GROUP, n_q - h0);
        four_group(a, b, lo, n - lo, q + h0 * d, nh, scale, o + h0 * d);
    }
}

/* ---- two caches ------------------------------------------------------------ */

/* Sums of 16 vectors as one vector: lane kk = sum of the lanes of x[kk].
 * A transpose-and-add tree: 15 adds and 30 shuffles for 16 dot products. */
TGT static inline __m512 hsum16(const __m512 x[16])
{
    __m512 y[8], z[4];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] */
        y[i] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]),
                             _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) { /* per 128-bit lane: the 4 rows' partial sums */
        const __m512d e = _mm512_castps_pd(y[2 * i]), f = _mm512_castps_pd(y[2 * i + 1]);
        z[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(e, f)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(e, f)));
    }
    /* Across the 128-bit lanes: z[g] holds rows 4g..4g+3 in each lane. */
    const __m512 f01 = _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88),
                                     _mm512_shuffle_f32x4(z[0], z[1], 0xdd));
    const __m512 f23 = _mm512_add_ps(_mm512_shuffle_f32x4(z[2], z[3], 0x88),
                                     _mm512_shuffle_f32x4(z[2], z[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(f01, f23, 0x88),
                         _mm512_shuffle_f32x4(f01, f23, 0xdd));
}

/* acc[kk] += q[c..] * k_kk[c..] over nv vectors from channel c, q's
 * vectors held in registers. nv and `masked` are constants after inlining:
 * whole vectors use plain loads (which fold into the FMAs); masked = 1 is
 * the one partial vector at the end of a row (nv = 1). */
TGT static inline __attribute__((always_inline)) void
dot_chunk(int nv, int masked, const float *qh, const float *const *kp, size_t c, __mmask16 mask,
          __m512 acc[16])
{
    __m512 qv[8];
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++)
        qv[v] = masked ? _mm512_maskz_loadu_ps(mask, qh + c + 16 * v)
                       : _mm512_loadu_ps(qh + c + 16 * v);
    /* Rows innermost: 16 independent FMAs between two that depend on each
     * other, so the 4-cycle FMA latency never stalls the two FMA ports. */
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++)
#pragma GCC unroll 16
        for (int kk = 0; kk < 16; kk++)
            acc[kk] = _mm512_fmadd_ps(qv[v],
                                      masked ? _mm512_maskz_loadu_ps(mask, kp[kk] + c + 16 * v)
                                             : _mm512_loadu_ps(kp[kk] + c + 16 * v),
                                      acc[kk]);
}

/* Raw scores <q_h, k_kk> of a block of 16 rows as one vector. */
TGT static inline __m512 block_scores(const float *qh, const float *const *kp, size_t d)
{
    __m512 acc[16];
#pragma GCC unroll 16
    for (int kk = 0; kk < 16; kk++)
        acc[kk] = _mm512_setzero_ps();
    size_t c = 0;
    for (; c + 128 <= d; c += 128)
        dot_chunk(8, 0, qh, kp, c, 0, acc);
    switch ((d - c) / 16) { /* constant nv: q and acc stay in registers */
    case 7: dot_chunk(7, 0, qh, kp, c, 0, acc); break;
    case 6: dot_chunk(6, 0, qh, kp, c, 0, acc); break;
    case 5: dot_chunk(5, 0, qh, kp, c, 0, acc); break;
    case 4: dot_chunk(4, 0, qh, kp, c, 0, acc); break;
    case 3: dot_chunk(3, 0, qh, kp, c, 0, acc); break;
    case 2: dot_chunk(2, 0, qh, kp, c, 0, acc); break;
    case 1: dot_chunk(1, 0, qh, kp, c, 0, acc); break;
    default: break;
    }
    c += (d - c) / 16 * 16;
    if (c < d)
        dot_chunk(1, 1, qh, kp, c, tail_mask(c, d), acc);
    return hsum16(acc);
}

/* o[h] += sum_kk p[h][kk] v_kk for nh <= 4 heads, 64 channels at a time:
 * 4 heads x 4 vectors of accumulators, each v row chunk loaded once. */
TGT static inline __attribute__((always_inline)) void
pv_heads(int nh, const float *p, const float *const *vp, size_t d, float *o)
{
    for (size_t ch = 0; ch < d; ch += PV_CHUNK) {
        __mmask16 mk[4];
#pragma GCC unroll 8
        for (int v = 0; v < 4; v++)
            mk[v] = tail_mask(ch + 16 * (size_t)v, d);
        __m512 acc[4][4];
#pragma GCC unroll 8
        for (int h = 0; h < nh; h++)
#pragma GCC unroll 8
            for (int v = 0; v < 4; v++)
                acc[h][v] = _mm512_maskz_loadu_ps(mk[v], o + (size_t)h * d + ch + 16 * v);
#pragma GCC unroll 16
        for (int kk = 0; kk < 16; kk++) {
            const float *vr = vp[kk] + ch;
            __m512 x[4];
#pragma GCC unroll 8
            for (int v = 0; v < 4; v++)
                x[v] = _mm512_maskz_loadu_ps(mk[v], vr + 16 * v);
#pragma GCC unroll 8
            for (int h = 0; h < nh; h++) {
                const __m512 pb = _mm512_set1_ps(p[h * 16 + kk]);
#pragma GCC unroll 8
                for (int v = 0; v < 4; v++)
                    acc[h][v] = _mm512_fmadd_ps(pb, x[v], acc[h][v]);
            }
        }
#pragma GCC unroll 8
        for (int h = 0; h < nh; h++)
#pragma GCC unroll 8
            for (int v = 0; v < 4; v++)
                _mm512_mask_storeu_ps(o + (size_t)h * d + ch + 16 * v, mk[v], acc[h][v]);
    }
}

/* Standard attention over the n^2 pair rows for nh <= KVD_TENSOR_MAX_GROUP
 * heads, one pass: each block of 16 rows is read from memory once for the
 * whole group (then from L1 per head). o[h] is the accumulator. */
TGT static void two_group(const kvd_kv_pages *pairs, size_t rows, const float *q, size_t nh,
                          float scale, float *o)
{
    const size_t d = pairs->head_dim;
    float m[KVD_TENSOR_MAX_GROUP];
    _Alignas(64) float lacc[KVD_TENSOR_MAX_GROUP * LANES]; /* [h][16] running sums by lane */
    _Alignas(64) float p[KVD_TENSOR_MAX_GROUP * LANES];    /* [h][16] block weights */
    const float *kp[LANES], *vp[LANES];

    memset(o, 0, nh * d * sizeof *o);
    memset(lacc, 0, sizeof lacc);
    for (size_t h = 0; h < nh; h++)
        m[h] = -INFINITY;
    const __m512 vscale = _mm512_set1_ps(scale);
    for (size_t r0 = 0; r0 < rows; r0 += LANES) {
        const size_t nr = min_sz(LANES, rows - r0);
        rows_at(pairs, r0, nr, kp, vp);
        const __mmask16 real = (__mmask16)(nr == LANES ? 0xffffu : (1u << nr) - 1u);
        for (size_t h = 0; h < nh; h++) {
            __m512 s = _mm512_mul_ps(block_scores(q + h * d, kp, d), vscale);
            s = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), real, s);
            const float bm = _mm512_reduce_max_ps(s);
            __m512 l = _mm512_load_ps(lacc + h * LANES);
            if (bm > m[h]) { /* the max grew: rescale this head's sum and output */
                const float c = expf(m[h] - bm);
                l = _mm512_mul_ps(l, _mm512_set1_ps(c));
                scale_row(o + h * d, d, c);
                m[h] = bm;
            }
            const __m512 pw = exp16(_mm512_sub_ps(s, _mm512_set1_ps(m[h])));
            _mm512_store_ps(lacc + h * LANES, _mm512_add_ps(l, pw));
            _mm512_store_ps(p + h * LANES, pw);
        }
        size_t h = 0;
        for (; h + 4 <= nh; h += 4)
            pv_heads(4, p + h * LANES, vp, d, o + h * d);
        switch (nh - h) {
        case 3: pv_heads(3, p + h * LANES, vp, d, o + h * d); break;
        case 2: pv_heads(2, p + h * LANES, vp, d, o + h * d); break;
        case 1: pv_heads(1, p + h * LANES, vp, d, o + h * d); break;
        default: break;
        }
    }
    if (rows == 0)
        return;
    for (size_t h = 0; h < nh; h++) {
        scale_row(o + h * d, d, 1.0f / _mm512_reduce_add_ps(_mm512_load_ps(lacc + h * LANES)));
    }
}

TGT void kvd_tensor_two_avx512(const kvd_kv_pages *pairs, size_t n, const float *q, size_t n_q,
                               float scale, float *o)
{
    const size_t d = pairs->head_dim; /* any d: no d-sized scratch here */
    for (size_t h0 = 0; h0 < n_q; h0 += KVD_TENSOR_MAX_GROUP) {
        const size_t nh = min_sz(KVD_TENSOR_MAX_GROUP, n_q - h0);
        two_group(pairs, n * n, q + h0 * d, nh, scale, o + h0 * d);
    }
}

#else
typedef int kvd_tensor_avx512_unused; /* ISO C forbids an empty translation unit */
#endif
