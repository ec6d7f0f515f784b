/* attention/prefill_simd.h — the body of the tiled (prefill) attention kernel
 * (attention/prefill.h), written once over the vector layer and included by
 * prefill_{scalar,avx2,avx512}.c, which name it
 * KVD_SIMD_NAME(kvd__attend_prefill_). A tile is PF_ROWS (query, head) rows;
 * keys and values come PF_KB slots at a time, f32 rows in place, other
 * formats dequantized once per block into an f32 tile that the whole query
 * tile then uses. Private to attention/. */
#ifndef KVD_SIMD_LAYER
#error "include a vector layer (attention/simd_*.h) before attention/prefill_simd.h"
#endif

#include <float.h>
#include <math.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/kernels.h"
#include "attention/prefill.h"
#include "attention/simd_rows.h"

/* Register blocking, per vector width (W = 16 AVX-512 with 32 registers;
 * W = 8 AVX2 with 16, and the portable layer).
 * Scores (S^T = K Q^T, [key][row]): PF_KU keys x PF_RV row vectors of
 * accumulators; per channel PF_RV loads of the transposed query tile and
 * PF_KU broadcasts of key elements feed PF_KU * PF_RV FMAs.
 * Values (O += P V, [row][channel]): PF_RU rows x PF_CV channel vectors;
 * per key PF_CV value loads and PF_RU broadcast weights feed PF_RU * PF_CV
 * FMAs. Rows are lanes in the scores, so each row's max, weights and sums
 * are whole-vector operations over the tile. */
#if KVD_SIMD_W == 16
#define PF_KU 4
#define PF_RV 4
#define PF_RU 4
#define PF_CV 4
#define PF_ROWS 64 /* one PF_RV x W row group */
#define PF_KB 32   /* keys per block: 8 x PF_KU */
#else
#define PF_KU 6
#define PF_RV 2
#define PF_RU 6
#define PF_CV 2
#define PF_ROWS 32 /* two row groups of 16 */
#define PF_KB 36   /* 6 x PF_KU */
#endif
#define PF_RG (PF_RV * KVD_SIMD_W) /* rows per score micro-tile */

_Static_assert(PF_ROWS % PF_RG == 0, "a tile is whole row groups");

/* Channels the transposed query tile and the K/V decode tiles hold: a
 * head_dim above this (the API allows 4096) runs in channel chunks, like the
 * decode kernels' KVD_ATTN_CHUNK: scores summed over the chunks, values
 * decoded and accumulated chunk by chunk (f32 values in place, whole). */
#define PF_MAXD 256

#define PF_UNROLL _Pragma("GCC unroll 16")

/* The channel chunk's {s, z} of the KIVI key block last decoded, as f32:
 * worked out once per (block, chunk) and reused by its `group` tokens. */
/* KIVI key block headers: simd_kivi_cache (attention/simd_rows.h), whose
 * arrays hold a chunk of PF_MAXD channels. */
typedef simd_kivi_cache pf_kivi;
_Static_assert(PF_MAXD <= KVD_ATTN_CHUNK, "a prefill chunk fits the KIVI header cache");

/* Groups of a U4G/U2G row one chunk may touch on the vector path (group a
 * multiple of W >= 8): PF_MAXD / 8 plus a partial one at each end. */
#define PF_MAX_CHUNK_GROUPS (PF_MAXD / 8 + 2)

/* Everything one call keeps: on the stack (~140 KiB at W = 16, ~110 KiB
 * at W = 8; worker threads have MiB stacks). */
typedef struct pf_state {
    _Alignas(64) float qt[PF_MAXD * PF_ROWS]; /* [chunk channel][row], scaled q */
    _Alignas(64) float s[PF_KB * PF_ROWS];    /* [key][row] scores, then weights */
    _Alignas(64) float m[PF_ROWS];            /* running max per row (-FLT_MAX: none yet) */
    _Alignas(64) float alpha[PF_ROWS];        /* this block's rescale of each row */
    double l[PF_ROWS];                        /* softmax denominator per row */
    size_t nvis[PF_ROWS];                     /* slots each row sees */
    const float *qrow[PF_ROWS];               /* [row] -> q[i][h] */
    float *orow[PF_ROWS];                     /* [row] -> o[i][h], the accumulator */
    const float *krow[PF_KB], *vrow[PF_KB];   /* the block's key / value rows (f32) */
    _Alignas(64) float ktile[PF_KB * PF_MAXD]; /* decoded keys, [key][channel chunk] */
    _Alignas(64) float vtile[PF_KB * PF_MAXD]; /* decoded values, [key][channel chunk] */
    pf_kivi kc;                               /* KIVI key block headers */
} pf_state;

/* S^T[j][rg .. rg + PF_RG) (+)= <k_j, q_r> over channels [0, dc) of the
 * chunk, for the keys j0 .. j0 + nk of the block (nk = PF_KU or 1). */
KVD_SIMD_ATTR static inline __attribute__((always_inline)) void
pf_scores(const float *restrict qt, const float *const *restrict krow, size_t c0, size_t dc,
          size_t nk, float *restrict s, int add)
{
    vf acc[PF_KU][PF_RV];
    PF_UNROLL
    for (size_t u = 0; u < PF_KU; u++)
        PF_UNROLL
        for (size_t v = 0; v < PF_RV; v++)
            acc[u][v] = v_zero();
    const float *k[PF_KU];
    PF_UNROLL
    for (size_t u = 0; u < PF_KU; u++)
        k[u] = krow[u < nk ? u : 0] + c0;
    for (size_t c = 0; c < dc; c++) {
        vf qv[PF_RV];
        PF_UNROLL
        for (size_t v = 0; v < PF_RV; v++)
            qv[v] = v_load(qt + c * PF_ROWS + v * KVD_SIMD_W);
        PF_UNROLL
        for (size_t u = 0; u < PF_KU; u++) {
            if (u < nk) {
                const vf b = v_set1(k[u][c]);
                PF_UNROLL
                for (size_t v = 0; v < PF_RV; v++)
                    acc[u][v] = v_fma(b, qv[v], acc[u][v]);
            }
        }
    }
    PF_UNROLL
    for (size_t u = 0; u < PF_KU; u++)
        if (u < nk)
            PF_UNROLL
            for (size_t v = 0; v < PF_RV; v++) {
                float *out = s + u * PF_ROWS + v * KVD_SIMD_W;
                v_store(out, add ? v_add(v_load(out), acc[u][v]) : acc[u][v]);
            }
}

/* O[r] = alpha_r * O[r] + sum_j P[j][r] v_j over channels [c, c + nv*W) for
 * rows r0 .. r0 + nr (nr <= PF_RU), nv vectors (<= PF_CV); the last vector
 * may be partial (mask). Value rows hold channel c at vrow[j][c - voff]. */
KVD_SIMD_ATTR static inline __attribute__((always_inline)) void
pf_values(pf_state *restrict st, size_t r0, size_t nr, size_t c, size_t voff, size_t nv,
          vmask last, size_t nb)
{
    vf acc[PF_RU][PF_CV];
    PF_UNROLL
    for (size_t u = 0; u < PF_RU; u++)
        PF_UNROLL
        for (size_t v = 0; v < PF_CV; v++)
            acc[u][v] = v_zero(); /* dead where u >= nr or v >= nv; quiets GCC */
    PF_UNROLL
    for (size_t u = 0; u < PF_RU; u++)
        if (u < nr) {
            const vf a = v_set1(st->alpha[r0 + u]);
            PF_UNROLL
            for (size_t v = 0; v < PF_CV; v++)
                if (v < nv)
                    acc[u][v] = v_mul(a, v + 1 < nv ? v_load(st->orow[r0 + u] + c + v * KVD_SIMD_W)
                                                    : v_load_mask(st->orow[r0 + u] + c + v * KVD_SIMD_W, last));
        }
    for (size_t j = 0; j < nb; j++) {
        vf vv[PF_CV];
        PF_UNROLL
        for (size_t v = 0; v < PF_CV; v++)
            vv[v] = v_zero();
        const float *restrict vr = st->vrow[j] + (c - voff);
        PF_UNROLL
        for (size_t v = 0; v < PF_CV; v++)
            if (v < nv)
                vv[v] = v + 1 < nv ? v_load(vr + v * KVD_SIMD_W) : v_load_mask(vr + v * KVD_SIMD_W, last);
        const float *restrict p = st->s + j * PF_ROWS + r0;
        PF_UNROLL
        for (size_t u = 0; u < PF_RU; u++)
            if (u < nr) {
                const vf b = v_set1(p[u]);
                PF_UNROLL
                for (size_t v = 0; v < PF_CV; v++)
                    if (v < nv)
                        acc[u][v] = v_fma(b, vv[v], acc[u][v]);
            }
    }
    PF_UNROLL
    for (size_t u = 0; u < PF_RU; u++)
        if (u < nr)
            PF_UNROLL
            for (size_t v = 0; v < PF_CV; v++)
                if (v < nv) {
                    float *out = st->orow[r0 + u] + c + v * KVD_SIMD_W;
                    if (v + 1 < nv)
                        v_store(out, acc[u][v]);
                    else
                        v_store_mask(out, last, acc[u][v]);
                }
}

/* Rows r0 .. r0 + nr of the tile, channels [c0, c1) (value rows from
 * channel voff), one block of nb keys. */
KVD_SIMD_ATTR static void pf_values_rows(pf_state *restrict st, size_t r0, size_t nr, size_t c0,
                                         size_t c1, size_t voff, size_t nb)
{
    const vmask full = v_tail_mask(0, KVD_SIMD_W);
    size_t c = c0;
    for (; c + PF_CV * KVD_SIMD_W <= c1; c += PF_CV * KVD_SIMD_W)
        pf_values(st, r0, nr, c, voff, PF_CV, full, nb);
    for (; c < c1; c += KVD_SIMD_W)
        pf_values(st, r0, nr, c, voff, 1, v_tail_mask(c, c1), nb);
}

/* Channels [c0, c1) of a row (token t of a unit) as f32 into out, bit for
 * bit what kvd_dequant_range gives: whole vectors in registers, every tail
 * (and U4G/U2G groups that are not whole vectors) by kvd_dequant_range.
 * f16, bf16 and int8's code are exact conversions and int8's s * q rounds
 * once, as the reference does; U4G/U2G and KIVI compute z + s*q with one
 * fma, the reference's single rounding because s*q (an 11-bit half times a
 * code of <= 4 bits) is exact in f32. c0 is a multiple of PF_MAXD, so
 * vectors start on whole bytes of packed codes. Always inlined into the
 * row loops, where the format is a constant after the switch. */
KVD_SIMD_ATTR static inline __attribute__((always_inline)) void
pf_decode(kvd_row_format f, const unsigned char *unit, size_t t, size_t d, uint32_t group,
          size_t c0, size_t c1, pf_kivi *restrict kc, float *restrict out)
{
    size_t c = c0;
    switch (f) {
    case KVD_ROW_F16:
    case KVD_ROW_BF16:
    case KVD_ROW_I8:
        c = simd_decode_plain(f, unit, c0, c1, out);
        break;
    case KVD_ROW_U4G:
    case KVD_ROW_U2G: {
        if (group % KVD_SIMD_W != 0)
            break; /* a vector would straddle two groups: scalar */
        /* the {s, z} of the groups the chunk's whole vectors touch, one
         * F16C conversion, then group by group: a table (AVX-512) or
         * broadcast s and z per group, a shift and a lookup or fma per
         * vector */
        const int four = f == KVD_ROW_U4G;
        const size_t end = c0 + (c1 - c0) / KVD_SIMD_W * KVD_SIMD_W;
        if (end == c0)
            break;
        const size_t g0 = c0 / group, g1 = (end + group - 1) / group;
        _Alignas(64) float sz[2 * PF_MAX_CHUNK_GROUPS];
        v_halves(unit + 4 * g0, 2 * (g1 - g0), sz);
        const unsigned char *restrict codes = unit + 4 * ((d + group - 1) / group);
        for (size_t g = g0; c < end; g++) {
            const size_t ge = (g + 1) * group < end ? (g + 1) * group : end;
            if (four) {
                const vgroup vg = v_group4(sz[2 * (g - g0)], sz[2 * (g - g0) + 1]);
                for (; c < ge; c += KVD_SIMD_W)
                    v_store(out + (c - c0), v_dq4(codes + c / 2, &vg));
            } else {
                const vgroup vg = v_group2(sz[2 * (g - g0)], sz[2 * (g - g0) + 1]);
                for (; c < ge; c += KVD_SIMD_W)
                    v_store(out + (c - c0), v_dq2(codes + c / 4, &vg));
            }
        }
        break;
    }
    case KVD_ROW_KIVI4_KEYS:
    case KVD_ROW_KIVI2_KEYS: {
        const int four = f == KVD_ROW_KIVI4_KEYS;
        c = simd_decode_kivi_keys(four, unit, unit + 4 * d + t * ((d * (four ? 4 : 2) + 7) / 8), c0,
                                  c1, kc, out);
        break;
    }
    default:
        break;
    }
    if (c < c1)
        kvd_dequant_range(f, unit, t, d, group, c, c1, out + (c - c0));
}

/* Key/value row pointers of slots [j0, j0 + nb) of one segment: in place for
 * f32 (row starts), else decoded into the tiles (keys: channels [c0, c1)
 * only, from the tile row's start, called once per channel chunk; values
 * whole). */
KVD_SIMD_ATTR static void pf_block_keys(const kvd_kv_pages *kv, size_t j0, size_t nb, size_t c0, size_t c1,
                          pf_state *st)
{
    const size_t ks = kvd__kv_k_stride(kv);
    for (size_t b = 0; b < nb; b++) {
        size_t t;
        const unsigned char *u = kvd__kv_unit(kv, kv->k_offset, kv->k_format, ks, j0 + b, &t);
        if (kv->k_format == KVD_ROW_F32) {
            st->krow[b] = (const float *)u; /* c0 is added by pf_scores */
        } else {
            pf_decode(kv->k_format, u, t, kv->head_dim, kv->group, c0, c1, &st->kc,
                      st->ktile + b * PF_MAXD);
            st->krow[b] = st->ktile + b * PF_MAXD;
        }
    }
}

KVD_SIMD_ATTR static void pf_block_values(const kvd_kv_pages *kv, size_t j0, size_t nb, size_t c0, size_t c1,
                            pf_state *st)
{
    const size_t vs = kvd__kv_v_stride(kv);
    for (size_t b = 0; b < nb; b++) {
        size_t t;
        const unsigned char *u = kvd__kv_unit(kv, kv->v_offset, kv->v_format, vs, j0 + b, &t);
        if (kv->v_format == KVD_ROW_F32) {
            st->vrow[b] = (const float *)u;
        } else {
            pf_decode(kv->v_format, u, t, kv->head_dim, kv->group, c0, c1, &st->kc,
                      st->vtile + b * PF_MAXD);
            st->vrow[b] = st->vtile + b * PF_MAXD;
        }
    }
}

/* Writes the transposed, scaled query chunk [c0, c1) of the tile's rows. */
static void pf_pack_q(pf_state *st, size_t rows, size_t c0, size_t c1, float scale)
{
    const size_t live = (rows + PF_RG - 1) / PF_RG * PF_RG;
    for (size_t c = c0; c < c1; c++) {
        float *restrict dst = st->qt + (c - c0) * PF_ROWS;
        for (size_t r = 0; r < rows; r++)
            dst[r] = scale * st->qrow[r][c];
        for (size_t r = rows; r < live; r++)
            dst[r] = 0.0f;
    }
}

/* Asks for the key and value bytes of slots [j0, j1) of a segment: a block
 * takes ~15 us of arithmetic at d = 128, time enough to bring the next one
 * from memory, which the hardware prefetcher (four rows read side by side,
 * pages in no address order) does not do on its own. */
static void pf_prefetch(const kvd_kv_pages *kv, size_t j0, size_t j1)
{
    const size_t ks = kvd__kv_k_stride(kv), vs = kvd__kv_v_stride(kv);
    for (size_t j = j0; j < j1; j++) {
        size_t t;
        const unsigned char *k = kvd__kv_unit(kv, kv->k_offset, kv->k_format, ks, j, &t);
        const unsigned char *v = kvd__kv_unit(kv, kv->v_offset, kv->v_format, vs, j, &t);
        /* a KIVI block's codes of token t, or the row; scales come along */
        for (size_t b = 0; b < ks && b < 4096; b += 64)
            __builtin_prefetch(k + b, 0, 3);
        for (size_t b = 0; b < vs && b < 4096; b += 64)
            __builtin_prefetch(v + b, 0, 3);
    }
}

/* The scores of nb keys (global slots g0 .., slots j0 .. of a segment)
 * against the tile into st->s ([key][PF_ROWS]), channel chunk by chunk
 * (one chunk for head_dim <= PF_MAXD), then the mask: row r sees global
 * slots < nvis[r], padded rows none (-inf). The attention's block below
 * and h2o's weights (weights_simd.h) both start from it. */
KVD_SIMD_ATTR static void pf_block_scores(pf_state *restrict st, const kvd_kv_pages *kv, size_t j0,
                                          size_t g0, size_t nb, size_t rows, size_t nvis_min,
                                          float scale)
{
    const size_t d = kv->head_dim;
    const size_t live = (rows + PF_RG - 1) / PF_RG * PF_RG;
    for (size_t c0 = 0; c0 < d; c0 += PF_MAXD) {
        const size_t c1 = d - c0 < PF_MAXD ? d : c0 + PF_MAXD;
        const size_t koff = kv->k_format == KVD_ROW_F32 ? c0 : 0; /* tile rows start at c0 */
        if (d > PF_MAXD)
            pf_pack_q(st, rows, c0, c1, scale);
        pf_block_keys(kv, j0, nb, c0, c1, st);
        for (size_t rg = 0; rg < live; rg += PF_RG) {
            size_t j = 0;
            for (; j + PF_KU <= nb; j += PF_KU)
                pf_scores(st->qt + rg, st->krow + j, koff, c1 - c0, PF_KU,
                          st->s + j * PF_ROWS + rg, c0 > 0);
            for (; j < nb; j++)
                pf_scores(st->qt + rg, st->krow + j, koff, c1 - c0, 1, st->s + j * PF_ROWS + rg,
                          c0 > 0);
        }
    }
    if (g0 + nb > nvis_min)
        for (size_t r = 0; r < live; r++) {
            const size_t n = r < rows ? st->nvis[r] : 0;
            for (size_t j = n > g0 ? n - g0 : 0; j < nb; j++)
                st->s[j * PF_ROWS + r] = -INFINITY;
        }
}

/* One block of nb keys (global slots g0 .., slots j0 .. of a segment of ns)
 * against the tile: scores, masking, the online softmax per row, then
 * O += P V. */
KVD_SIMD_ATTR static void pf_block(pf_state *restrict st, const kvd_kv_pages *kv, size_t j0,
                                   size_t g0, size_t nb, size_t ns, size_t rows, size_t nvis_min,
                                   float scale)
{
    const size_t d = kv->head_dim;
    if (j0 + nb < ns && !kvd_row_is_block(kv->k_format))
        pf_prefetch(kv, j0 + nb, j0 + nb + (ns - j0 - nb < PF_KB ? ns - j0 - nb : PF_KB));
    const size_t live = (rows + PF_RG - 1) / PF_RG * PF_RG;
    pf_block_scores(st, kv, j0, g0, nb, rows, nvis_min, scale);
    /* online softmax, the tile's rows as lanes: one rescale per row and
     * block; the block's weights summed in f32, folded into the row's
     * double denominator. Scores of -inf (masked) weigh exp(-inf) = 0, and
     * a row with nothing visible yet keeps m = -FLT_MAX, so no inf - inf. */
    for (size_t r = 0; r < live; r += KVD_SIMD_W) {
        const vf mold = v_load(st->m + r);
        vf bmax = mold;
        for (size_t j = 0; j < nb; j++)
            bmax = v_max(bmax, v_load(st->s + j * PF_ROWS + r));
        vf psum = v_zero();
        for (size_t j = 0; j < nb; j++) {
            const vf p = v_exp(v_sub(v_load(st->s + j * PF_ROWS + r), bmax));
            v_store(st->s + j * PF_ROWS + r, p);
            psum = v_add(psum, p);
        }
        v_store(st->alpha + r, v_exp(v_sub(mold, bmax)));
        v_store(st->m + r, bmax);
        _Alignas(64) float ps[KVD_SIMD_W];
        v_store(ps, psum);
        for (size_t i = 0; i < KVD_SIMD_W && r + i < rows; i++)
            st->l[r + i] = st->l[r + i] * st->alpha[r + i] + (double)ps[i];
    }
    /* values: in place over all channels (f32), else a tile per chunk */
    const size_t vchunk = kv->v_format == KVD_ROW_F32 ? d : PF_MAXD;
    for (size_t c0 = 0; c0 < d; c0 += vchunk) {
        const size_t c1 = d - c0 < vchunk ? d : c0 + vchunk;
        const size_t voff = kv->v_format == KVD_ROW_F32 ? 0 : c0;
        pf_block_values(kv, j0, nb, c0, c1, st);
        size_t r = 0;
        for (; r + PF_RU <= rows; r += PF_RU)
            pf_values_rows(st, r, PF_RU, c0, c1, voff, nb);
        for (; r < rows; r++)
            pf_values_rows(st, r, 1, c0, c1, voff, nb);
    }
}

#ifndef KVD_SIMD_HELPERS_ONLY /* attention/weights_*.c take the helpers above alone */
KVD_SIMD_ATTR void KVD_SIMD_NAME(kvd__attend_prefill_)(const kvd_kv_segment *seg, size_t n_seg,
                                                        const float *q, size_t m_q, size_t n_q,
                                                        size_t q_stride, kvd_prefill_mask mask,
                                                        float scale, float *o, float *lse,
                                                        size_t lse_stride)
{
    if (m_q == 0 || n_q == 0)
        return;
    const size_t d = seg[0].kv.head_dim; /* n_seg >= 1: every view names head_dim */
    size_t total = 0;
    for (size_t s = 0; s < n_seg; s++)
        total += seg[s].n;
    pf_state st;
    st.kc.unit = NULL;
    const size_t all_rows = m_q * n_q;
    for (size_t r0 = 0; r0 < all_rows; r0 += PF_ROWS) {
        const size_t rows = all_rows - r0 < PF_ROWS ? all_rows - r0 : PF_ROWS;
        size_t nmin = SIZE_MAX, nmax = 0;
        for (size_t r = 0; r < rows; r++) {
            const size_t i = (r0 + r) / n_q, h = (r0 + r) % n_q;
            size_t n = mask.n0 + i * mask.step;
            n = n < total ? n : total;
            st.nvis[r] = n;
            nmin = n < nmin ? n : nmin;
            nmax = n > nmax ? n : nmax;
            st.qrow[r] = q + i * q_stride + h * d;
            st.orow[r] = o + i * q_stride + h * d;
            memset(st.orow[r], 0, d * sizeof(float));
            st.m[r] = -FLT_MAX;
            st.l[r] = 0.0;
        }
        for (size_t r = rows; r < PF_ROWS; r++)
            st.m[r] = -FLT_MAX;
        if (d <= PF_MAXD)
            pf_pack_q(&st, rows, 0, d, scale);
        /* the blocks: slots [0, nmax) of the segments, in order */
        size_t g0 = 0;
        for (size_t s = 0; s < n_seg && g0 < nmax; s++) {
            const size_t ns = seg[s].n;
            for (size_t j0 = 0; j0 < ns && g0 + j0 < nmax; j0 += PF_KB) {
                size_t nb = ns - j0 < PF_KB ? ns - j0 : PF_KB;
                nb = nmax - (g0 + j0) < nb ? nmax - (g0 + j0) : nb;
                pf_block(&st, &seg[s].kv, j0, g0 + j0, nb, ns, rows, nmin, scale);
            }
            g0 += ns;
        }
        /* normalize; l > 0 wherever a slot was seen (the max's key weighs 1) */
        for (size_t r = 0; r < rows; r++) {
            const size_t i = (r0 + r) / n_q, h = (r0 + r) % n_q;
            if (st.l[r] > 0.0) {
                const float inv = (float)(1.0 / st.l[r]);
                for (size_t c = 0; c < d; c++)
                    st.orow[r][c] *= inv;
            }
            if (lse)
                lse[i * lse_stride + h] =
                    st.l[r] > 0.0 ? (float)((double)st.m[r] + log(st.l[r])) : -INFINITY;
        }
    }
}

/* The test hook (prefill.h): rows of slots [j0, j0 + n) of one view as the
 * kernel's blocks decode them, channel chunk by channel chunk. */
KVD_SIMD_ATTR void KVD_SIMD_NAME(kvd__prefill_decode_)(const kvd_kv_pages *kv, int values,
                                                        size_t j0, size_t n, float *out)
{
    const size_t d = kv->head_dim;
    pf_state st;
    st.kc.unit = NULL;
    for (size_t b0 = 0; b0 < n; b0 += PF_KB) {
        const size_t nb = n - b0 < PF_KB ? n - b0 : PF_KB;
        for (size_t c0 = 0; c0 < d; c0 += PF_MAXD) {
            const size_t c1 = d - c0 < PF_MAXD ? d : c0 + PF_MAXD;
            const int f32 = (values ? kv->v_format : kv->k_format) == KVD_ROW_F32;
            if (values)
                pf_block_values(kv, j0 + b0, nb, c0, c1, &st);
            else
                pf_block_keys(kv, j0 + b0, nb, c0, c1, &st);
            for (size_t b = 0; b < nb; b++)
                memcpy(out + (b0 + b) * d + c0, (values ? st.vrow : st.krow)[b] + (f32 ? c0 : 0),
                       (c1 - c0) * sizeof *out);
        }
    }
}
#endif /* KVD_SIMD_HELPERS_ONLY */
