/* attention/tensor_avx2.c — AVX2+FMA twins of kvd_tensor_four_ref and
 * kvd_tensor_two_ref (tensor.h): the same algorithms as tensor_avx512.c
 * (read that file's comments) with 8-float vectors, so a four-cache tile is
 * 8 virtual queries and a two-cache block is 8 rows. Built with a target
 * attribute; tensor.c calls these only on a CPU with avx2 and fma. f32
 * views; a four-cache head_dim above KVD_TENSOR_MAX_FAST_DIM runs the _ref. */
#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attention/tensor.h"

#define TGT __attribute__((target("avx2,fma")))
#define LANES 8     /* floats per vector; virtual queries per tile; rows per block */
#define PV_CHUNK 32 /* channels per pass of a value accumulation: 4 vectors */
#define EXP_FLUSH (-86.0f) /* as in tensor_avx512.c: below, e^x is 0 (no denormals) */

static size_t min_sz(size_t x, size_t y)
{
    return x < y ? x : y;
}

static size_t first_visible(size_t n, size_t window)
{
    return window > 0 && window < n ? n - window : 0;
}

/* Key and value pointers of rows r0 .. r0+cnt-1; entries cnt .. LANES-1
 * repeat the last row (their weights are forced to 0). */
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

/* maskload mask: lanes of the vector at channel c that lie below d. */
TGT static inline __m256i tail_mask(size_t c, size_t d)
{
    const int left = c >= d ? 0 : d - c >= LANES ? LANES : (int)(d - c);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* x[0 .. d) *= c. */
TGT static void scale_row(float *x, size_t d, float c)
{
    const __m256 vc = _mm256_set1_ps(c);
    for (size_t i = 0; i < d; i += LANES) {
        const __m256i mk = tail_mask(i, d);
        _mm256_maskstore_ps(x + i, mk, _mm256_mul_ps(vc, _mm256_maskload_ps(x + i, mk)));
    }
}

/* out[i][c] = r[c][i] for an 8 x 8 tile (out: 8 rows of 8, 32-byte aligned). */
TGT static void transpose8(const __m256 r[8], float *out)
{
    __m256 t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) { /* per 128-bit lane: [a0 b0 a1 b1], [a2 b2 a3 b3] */
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 2
    for (int g = 0; g < 2; g++) { /* u[4g+k] lane L = column 4L+k of rows 4g..4g+3 */
        u[4 * g] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
        u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        _mm256_store_ps(out + k * 8, _mm256_permute2f128_ps(u[k], u[4 + k], 0x20));
        _mm256_store_ps(out + (k + 4) * 8, _mm256_permute2f128_ps(u[k], u[4 + k], 0x31));
    }
}

/* e^x for every lane, x <= 88 (the kernels pass x <= 0): tensor_avx512.c's
 * exp16 with 2^n built in the exponent field (n >= -125 after the flush,
 * so always a normal number). Lanes below EXP_FLUSH (and -inf, NaN) give 0. */
TGT static inline __m256 exp8(__m256 x)
{
    const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_FLUSH), _CMP_GE_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_FLUSH)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

/* ---- four caches (tile of 8 virtual queries; see tensor_avx512.c) ----------- */

TGT static void four_group(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t lo, size_t w,
                           const float *q, size_t nh, float scale, float *o)
{
    const size_t d = a->head_dim;
    const size_t dp = (d + PV_CHUNK - 1) / PV_CHUNK * PV_CHUNK; /* u row stride */
    float gm[KVD_TENSOR_MAX_GROUP], gl[KVD_TENSOR_MAX_GROUP];  /* per head: max M, sum L */
    _Alignas(32) float qt[KVD_TENSOR_MAX_FAST_DIM * LANES];     /* [d][8] virtual queries */
    _Alignas(32) float u[LANES * KVD_TENSOR_MAX_FAST_DIM];      /* [8][dp] partial outputs */
    _Alignas(32) float p[LANES * LANES];                        /* [key][lane] block weights */
    _Alignas(32) float lane_m[LANES], lane_l[LANES], alpha[LANES];
    const float *k2p[LANES], *v2p[LANES];

    memset(o, 0, nh * d * sizeof *o);
    for (size_t h = 0; h < nh; h++) {
        gm[h] = -INFINITY;
        gl[h] = 0.0f;
    }
    const size_t n_virtual = nh * w;
    for (size_t r0 = 0; r0 < n_virtual; r0 += LANES) {
        const size_t lanes = min_sz(LANES, n_virtual - r0);
        /* qt: 8 channels at a time, the 8 lanes' q' rows as vectors,
         * transposed in registers (spare lanes: zero rows, never merged). */
        const float *qrow[LANES], *k1row[LANES];
        for (size_t c = 0; c < lanes; c++) {
            qrow[c] = q + (r0 + c) / w * d;
            k1row[c] = kvd_kv_key(a, lo + (r0 + c) % w);
        }
        const __m256 vs = _mm256_set1_ps(scale);
        for (size_t l = 0; l < d; l += LANES) {
            const __m256i mk = tail_mask(l, d);
            __m256 rows[LANES];
            for (size_t c = 0; c < LANES; c++) {
                rows[c] = _mm256_setzero_ps();
                if (c < lanes)
                    rows[c] = _mm256_mul_ps(_mm256_mul_ps(vs, _mm256_maskload_ps(qrow[c] + l, mk)),
                                            _mm256_maskload_ps(k1row[c] + l, mk));
            }
            transpose8(rows, qt + l * LANES);
        }
        memset(u, 0, LANES * dp * sizeof *u);
        __m256 m = _mm256_set1_ps(-INFINITY), lsum = _mm256_setzero_ps();

        for (size_t k0 = 0; k0 < w; k0 += LANES) {
            const size_t nk = min_sz(LANES, w - k0);
            rows_at(b, lo + k0, nk, k2p, v2p);

            __m256 s[LANES]; /* s[kk] lane c = <q'_c, k2_kk> */
#pragma GCC unroll 8
            for (int kk = 0; kk < LANES; kk++)
                s[kk] = _mm256_setzero_ps();
            size_t l = 0;
            for (; l + 4 <= d; l += 4) {
                const float *qr = qt + l * LANES;
                const __m256 q0 = _mm256_load_ps(qr), q1 = _mm256_load_ps(qr + 8),
                             q2 = _mm256_load_ps(qr + 16), q3 = _mm256_load_ps(qr + 24);
#pragma GCC unroll 8
                for (int kk = 0; kk < LANES; kk++) {
                    const float *k = k2p[kk] + l;
                    __m256 t = s[kk];
                    t = _mm256_fmadd_ps(q0, _mm256_broadcast_ss(k), t);
                    t = _mm256_fmadd_ps(q1, _mm256_broadcast_ss(k + 1), t);
                    t = _mm256_fmadd_ps(q2, _mm256_broadcast_ss(k + 2), t);
                    t = _mm256_fmadd_ps(q3, _mm256_broadcast_ss(k + 3), t);
                    s[kk] = t;
                }
            }
            for (; l < d; l++) {
                const __m256 qv = _mm256_load_ps(qt + l * LANES);
#pragma GCC unroll 8
                for (int kk = 0; kk < LANES; kk++)
                    s[kk] = _mm256_fmadd_ps(qv, _mm256_broadcast_ss(k2p[kk] + l), s[kk]);
            }
            for (size_t kk = nk; kk < LANES; kk++)
                s[kk] = _mm256_set1_ps(-INFINITY);

            __m256 bm = s[0];
#pragma GCC unroll 8
            for (int kk = 1; kk < LANES; kk++)
                bm = _mm256_max_ps(bm, s[kk]);
            const __m256 m_new = _mm256_max_ps(m, bm);
            const int grew = _mm256_movemask_ps(_mm256_cmp_ps(m_new, m, _CMP_GT_OQ));
            const __m256 al = exp8(_mm256_sub_ps(m, m_new));
            lsum = _mm256_mul_ps(lsum, al);
#pragma GCC unroll 8
            for (int kk = 0; kk < LANES; kk++) {
                const __m256 pk = exp8(_mm256_sub_ps(s[kk], m_new));
                lsum = _mm256_add_ps(lsum, pk);
                _mm256_store_ps(p + kk * LANES, pk);
            }
            m = m_new;
            _mm256_store_ps(alpha, al);

            /* u[c] = u[c] * alpha[c] + sum_kk p[kk][c] v2_kk: 2 lanes x 4 vectors. */
            for (size_t ch = 0; ch < dp; ch += PV_CHUNK) {
                const __m256i mk0 = tail_mask(ch, d), mk1 = tail_mask(ch + 8, d),
                              mk2 = tail_mask(ch + 16, d), mk3 = tail_mask(ch + 24, d);
                for (size_t c0 = 0; c0 < LANES; c0 += 2) {
                    float *u0 = u + c0 * dp + ch, *u1 = u0 + dp;
                    __m256 a0 = _mm256_load_ps(u0), a1 = _mm256_load_ps(u0 + 8),
                           a2 = _mm256_load_ps(u0 + 16), a3 = _mm256_load_ps(u0 + 24);
                    __m256 b0 = _mm256_load_ps(u1), b1 = _mm256_load_ps(u1 + 8),
                           b2 = _mm256_load_ps(u1 + 16), b3 = _mm256_load_ps(u1 + 24);
                    if (grew) {
                        const __m256 sa = _mm256_set1_ps(alpha[c0]);
                        const __m256 sb = _mm256_set1_ps(alpha[c0 + 1]);
                        a0 = _mm256_mul_ps(a0, sa);
                        a1 = _mm256_mul_ps(a1, sa);
                        a2 = _mm256_mul_ps(a2, sa);
                        a3 = _mm256_mul_ps(a3, sa);
                        b0 = _mm256_mul_ps(b0, sb);
                        b1 = _mm256_mul_ps(b1, sb);
                        b2 = _mm256_mul_ps(b2, sb);
                        b3 = _mm256_mul_ps(b3, sb);
                    }
#pragma GCC unroll 8
                    for (int kk = 0; kk < LANES; kk++) {
                        const float *vr = v2p[kk] + ch;
                        const __m256 x0 = _mm256_maskload_ps(vr, mk0),
                                     x1 = _mm256_maskload_ps(vr + 8, mk1),
                                     x2 = _mm256_maskload_ps(vr + 16, mk2),
                                     x3 = _mm256_maskload_ps(vr + 24, mk3);
                        const __m256 pa = _mm256_broadcast_ss(p + kk * LANES + c0);
                        const __m256 pb = _mm256_broadcast_ss(p + kk * LANES + c0 + 1);
                        a0 = _mm256_fmadd_ps(pa, x0, a0);
                        a1 = _mm256_fmadd_ps(pa, x1, a1);
                        a2 = _mm256_fmadd_ps(pa, x2, a2);
                        a3 = _mm256_fmadd_ps(pa, x3, a3);
                        b0 = _mm256_fmadd_ps(pb, x0, b0);
                        b1 = _mm256_fmadd_ps(pb, x1, b1);
                        b2 = _mm256_fmadd_ps(pb, x2, b2);
                        b3 = _mm256_fmadd_ps(pb, x3, b3);
                    }
                    _mm256_store_ps(u0, a0);
                    _mm256_store_ps(u0 + 8, a1);
                    _mm256_store_ps(u0 + 16, a2);
                    _mm256_store_ps(u0 + 24, a3);
                    _mm256_store_ps(u1, b0);
                    _mm256_store_ps(u1 + 8, b1);
                    _mm256_store_ps(u1 + 16, b2);
                    _mm256_store_ps(u1 + 24, b3);
                }
            }
        }

        _mm256_store_ps(lane_m, m);
        _mm256_store_ps(lane_l, lsum);
        for (size_t c = 0; c < lanes; c++) {
            const size_t h = (r0 + c) / w, j = lo + (r0 + c) % w;
            const float mx = fmaxf(gm[h], lane_m[c]);
            const float ca = expf(gm[h] - mx), cb = expf(lane_m[c] - mx);
            const float *v1 = kvd_kv_value(a, j), *uc = u + c * dp;
            float *oh = o + h * d;
            const __m256 va = _mm256_set1_ps(ca), vb = _mm256_set1_ps(cb);
            for (size_t i = 0; i < d; i += LANES) {
                const __m256i mk = tail_mask(i, d);
                const __m256 x =
                    _mm256_mul_ps(_mm256_maskload_ps(v1 + i, mk), _mm256_load_ps(uc + i));
                const __m256 y = _mm256_mul_ps(va, _mm256_maskload_ps(oh + i, mk));
                _mm256_maskstore_ps(oh + i, mk, _mm256_fmadd_ps(vb, x, y));
            }
            gl[h] = gl[h] * ca + cb * lane_l[c];
            gm[h] = mx;
        }
    }
    for (size_t h = 0; h < nh; h++) {
        if (gl[h] > 0.0f)
            scale_row(o + h * d, d, 1.0f / gl[h]);
    }
}

TGT void kvd_tensor_four_avx2(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n,
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

/* ---- two caches (blocks of 8 rows; see tensor_avx512.c) --------------------- */

/* Lane kk = sum of the lanes of x[kk]: 7 adds, 14 shuffles for 8 dots. */
TGT static inline __m256 hsum8(const __m256 x[8])
{
    __m256 y[4], z[2];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        y[i] = _mm256_add_ps(_mm256_unpacklo_ps(x[2 * i], x[2 * i + 1]),
                             _mm256_unpackhi_ps(x[2 * i], x[2 * i + 1]));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) {
        const __m256d e = _mm256_castps_pd(y[2 * i]), f = _mm256_castps_pd(y[2 * i + 1]);
        z[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(e, f)),
                             _mm256_castpd_ps(_mm256_unpackhi_pd(e, f)));
    }
    return _mm256_add_ps(_mm256_permute2f128_ps(z[0], z[1], 0x20),
                         _mm256_permute2f128_ps(z[0], z[1], 0x31));
}

/* acc[kk] += q[c..] * k_kk[c..] over nv vectors from channel c; as in
 * tensor_avx512.c, `masked` = 1 only for the partial last vector (nv = 1). */
TGT static inline __attribute__((always_inline)) void
dot_chunk(int nv, int masked, const float *qh, const float *const *kp, size_t c, __m256i mask,
          __m256 acc[8])
{
    __m256 qv[4];
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++)
        qv[v] = masked ? _mm256_maskload_ps(qh + c + 8 * v, mask) : _mm256_loadu_ps(qh + c + 8 * v);
#pragma GCC unroll 8
    for (int kk = 0; kk < 8; kk++) {
        const float *k = kp[kk] + c;
        __m256 t = acc[kk];
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++)
            t = _mm256_fmadd_ps(qv[v], masked ? _mm256_maskload_ps(k + 8 * v, mask)
                                              : _mm256_loadu_ps(k + 8 * v),
                                t);
        acc[kk] = t;
    }
}

TGT static inline __m256 block_scores(const float *qh, const float *const *kp, size_t d)
{
    __m256 acc[8];
#pragma GCC unroll 8
    for (int kk = 0; kk < 8; kk++)
        acc[kk] = _mm256_setzero_ps();
    const __m256i none = _mm256_setzero_si256();
    size_t c = 0;
    for (; c + 32 <= d; c += 32)
        dot_chunk(4, 0, qh, kp, c, none, acc);
    switch ((d - c) / 8) {
    case 3: dot_chunk(3, 0, qh, kp, c, none, acc); break;
    case 2: dot_chunk(2, 0, qh, kp, c, none, acc); break;
    case 1: dot_chunk(1, 0, qh, kp, c, none, acc); break;
    default: break;
    }
    c += (d - c) / 8 * 8;
    if (c < d)
        dot_chunk(1, 1, qh, kp, c, tail_mask(c, d), acc);
    return hsum8(acc);
}

/* o[h] += sum_kk p[h][kk] v_kk for nh <= 2 heads, 32 channels at a time. */
TGT static inline __attribute__((always_inline)) void
pv_heads(int nh, const float *p, const float *const *vp, size_t d, float *o)
{
    for (size_t ch = 0; ch < d; ch += PV_CHUNK) {
        __m256i mk[4];
#pragma GCC unroll 8
        for (int v = 0; v < 4; v++)
            mk[v] = tail_mask(ch + 8 * (size_t)v, d);
        __m256 acc[2][4];
#pragma GCC unroll 8
        for (int h = 0; h < nh; h++)
#pragma GCC unroll 8
            for (int v = 0; v < 4; v++)
                acc[h][v] = _mm256_maskload_ps(o + (size_t)h * d + ch + 8 * v, mk[v]);
#pragma GCC unroll 8
        for (int kk = 0; kk < 8; kk++) {
            const float *vr = vp[kk] + ch;
            __m256 x[4];
#pragma GCC unroll 8
            for (int v = 0; v < 4; v++)
                x[v] = _mm256_maskload_ps(vr + 8 * v, mk[v]);
#pragma GCC unroll 8
            for (int h = 0; h < nh; h++) {
                const __m256 pb = _mm256_broadcast_ss(p + h * 8 + kk);
#pragma GCC unroll 8
                for (int v = 0; v < 4; v++)
                    acc[h][v] = _mm256_fmadd_ps(pb, x[v], acc[h][v]);
            }
        }
#pragma GCC unroll 8
        for (int h = 0; h < nh; h++)
#pragma GCC unroll 8
            for (int v = 0; v < 4; v++)
                _mm256_maskstore_ps(o + (size_t)h * d + ch + 8 * v, mk[v], acc[h][v]);
    }
}

TGT static inline float hmax8(__m256 x)
{
    __m128 y = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    y = _mm_max_ps(y, _mm_movehl_ps(y, y));
    y = _mm_max_ss(y, _mm_shuffle_ps(y, y, 1));
    return _mm_cvtss_f32(y);
}

TGT static inline float hadd8(__m256 x)
{
    __m128 y = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    y = _mm_add_ps(y, _mm_movehl_ps(y, y));
    y = _mm_add_ss(y, _mm_shuffle_ps(y, y, 1));
    return _mm_cvtss_f32(y);
}

TGT static void two_group(const kvd_kv_pages *pairs, size_t rows, const float *q, size_t nh,
                          float scale, float *o)
{
    const size_t d = pairs->head_dim;
    float m[KVD_TENSOR_MAX_GROUP];
    _Alignas(32) float lacc[KVD_TENSOR_MAX_GROUP * LANES]; /* [h][8] running sums by lane */
    _Alignas(32) float p[KVD_TENSOR_MAX_GROUP * LANES];    /* [h][8] block weights */
    const float *kp[LANES], *vp[LANES];

    memset(o, 0, nh * d * sizeof *o);
    memset(lacc, 0, sizeof lacc);
    for (size_t h = 0; h < nh; h++)
        m[h] = -INFINITY;
    const __m256 vscale = _mm256_set1_ps(scale);
    for (size_t r0 = 0; r0 < rows; r0 += LANES) {
        const size_t nr = min_sz(LANES, rows - r0);
        rows_at(pairs, r0, nr, kp, vp);
        const __m256 real = _mm256_castsi256_ps(tail_mask(0, nr));
        for (size_t h = 0; h < nh; h++) {
            __m256 s = _mm256_mul_ps(block_scores(q + h * d, kp, d), vscale);
            s = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), s, real);
            const float bm = hmax8(s);
            __m256 l = _mm256_load_ps(lacc + h * LANES);
            if (bm > m[h]) {
                const float c = expf(m[h] - bm);
                l = _mm256_mul_ps(l, _mm256_set1_ps(c));
                scale_row(o + h * d, d, c);
                m[h] = bm;
            }
            const __m256 pw = exp8(_mm256_sub_ps(s, _mm256_set1_ps(m[h])));
            _mm256_store_ps(lacc + h * LANES, _mm256_add_ps(l, pw));
            _mm256_store_ps(p + h * LANES, pw);
        }
        size_t h = 0;
        for (; h + 2 <= nh; h += 2)
            pv_heads(2, p + h * LANES, vp, d, o + h * d);
        if (h < nh)
            pv_heads(1, p + h * LANES, vp, d, o + h * d);
    }
    if (rows == 0)
        return;
    for (size_t h = 0; h < nh; h++) {
        scale_row(o + h * d, d, 1.0f / hadd8(_mm256_load_ps(lacc + h * LANES)));
    }
}

TGT void kvd_tensor_two_avx2(const kvd_kv_pages *pairs, size_t n, const float *q, size_t n_q,
                             float scale, float *o)
{
    const size_t d = pairs->head_dim; /* any d: no d-sized scratch here */
    for (size_t h0 = 0; h0 < n_q; h0 += KVD_TENSOR_MAX_GROUP) {
        const size_t nh = min_sz(KVD_TENSOR_MAX_GROUP, n_q - h0);
        two_group(pairs, n * n, q + h0 * d, nh, scale, o + h0 * d);
    }
}

#else
typedef int kvd_tensor_avx2_unused; /* ISO C forbids an empty translation unit */
#endif
