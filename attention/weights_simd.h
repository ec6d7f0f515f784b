/* attention/weights_simd.h — the h2o weights kernel body (weights.h), one
 * per vector layer via weights_{scalar,avx2,avx512}.c. No decoder or dot of
 * its own: it runs standard_simd.h's and prefill_simd.h's key decode and
 * scoring (included with KVD_SIMD_HELPERS_ONLY), then exp(score - lse). */
#ifndef KVD_SIMD_LAYER
#error "include a vector layer (attention/simd_*.h) before attention/weights_simd.h"
#endif
#ifndef PF_ROWS
#error "include attention/standard_simd.h and attention/prefill_simd.h before weights_simd.h"
#endif

#include <math.h>

#include "attention/weights.h"

/* acc[j .. min(j + W, n)) += the lanes of w: the one add per slot every
 * weights path ends with (a masked load and store past the last slot). */
KVD_SIMD_ATTR static inline void ws_add_lanes(float *restrict acc, vf w, size_t j, size_t n)
{
    if (j + KVD_SIMD_W <= n) {
        v_store(acc + j, v_add(v_load(acc + j), w));
    } else {
        const vmask tail = v_tail_mask(j, n);
        v_store_mask(acc + j, tail, v_add(v_load_mask(acc + j, tail), w));
    }
}

/* ---- few rows: one query at a time over the decode kernel's blocks ------ */

/* What one query's pass keeps (stack, ~60 KiB). */
typedef struct ws_state {
    _Alignas(64) float s[KVD_ATTN_MAX_GROUP][KVD_ATTN_BLOCK]; /* a block's scores per head */
    _Alignas(64) float tile[KVD_ATTN_BLOCK * KVD_ATTN_CHUNK]; /* decoded keys / code sums */
    float lse[KVD_ATTN_MAX_GROUP]; /* per head; +inf: the head gives nothing */
    simd_kivi_cache kc;
    simd_chunk kch[SIMD_CHUNKS];
    codes_prep cp;
} ws_state;

/* Adds to acc[0..n) the weights the g heads q ([g][d]) give the first n
 * slots of kv: the attend kernel's block walk and scores (simd_segment's),
 * without values or a running max. */
KVD_SIMD_ATTR static void ws_segment(const kvd_kv_pages *kv, size_t n, const float *restrict q,
                                     size_t g, float scale, ws_state *restrict st,
                                     float *restrict acc)
{
    const size_t d = kv->head_dim, spp = kv->slots_per_page, ks = kvd__kv_k_stride(kv);
    const int k_block = kvd_row_is_block(kv->k_format);
    const size_t k_codes = k_block ? (d * (kv->k_format == KVD_ROW_KIVI4_KEYS ? 4 : 2) + 7) / 8 : 0;
    st->kc.unit = NULL; /* block headers of another segment are stale */
    for (size_t c0 = 0, ci = 0; c0 < d && ci < SIMD_CHUNKS; c0 += KVD_ATTN_CHUNK, ci++)
        st->kch[ci] = simd_chunk_of(kv->k_format, d, kv->group, c0,
                                    d - c0 < KVD_ATTN_CHUNK ? d : c0 + KVD_ATTN_CHUNK);
    codes_prepare(&st->cp, kv->k_format, d, kv->group, q, g);
    simd_cursor cur = {0, 0, 0, 0}, ahead = {0, 0, 0, 0};
    for (size_t j = 0; j < KVD_ATTN_BLOCK && j < n; j++)
        simd_cursor_next(&ahead, spp, kv->group);
    const vf vscale = v_set1(scale);

    for (size_t j0 = 0; j0 < n; j0 += KVD_ATTN_BLOCK) {
        const size_t nb = n - j0 < KVD_ATTN_BLOCK ? n - j0 : KVD_ATTN_BLOCK;
        const unsigned char *ku[KVD_ATTN_BLOCK];
        size_t kt[KVD_ATTN_BLOCK];
        const float *rows[KVD_ATTN_BLOCK];
        for (size_t b = 0; b < nb; b++) {
            ku[b] = kv->pages[cur.p] + kv->k_offset + (k_block ? cur.kb : cur.i) * ks;
            kt[b] = k_block ? cur.kt : 0;
            simd_cursor_next(&cur, spp, kv->group);
        }
        /* the next block's keys, one block ahead (no values: never read) */
        for (size_t b = 0; b < KVD_ATTN_BLOCK && j0 + KVD_ATTN_BLOCK + b < n; b++) {
            const unsigned char *page = kv->pages[ahead.p] + kv->k_offset;
            if (!k_block)
                simd_prefetch(page + ahead.i * ks, ks);
            else
                simd_prefetch(page + ahead.kb * ks + 4 * d + ahead.kt * k_codes, k_codes);
            simd_cursor_next(&ahead, spp, kv->group);
        }

        /* scores, as the attend kernel computes them */
        if (st->cp.mode != CODES_OFF)
            codes_scores(&st->cp, ku, kt, nb, st->tile, st->s, NULL);
        for (size_t c0 = 0, ci = 0; !st->cp.mode && c0 < d; c0 += KVD_ATTN_CHUNK, ci++) {
            const size_t c1 = d - c0 < KVD_ATTN_CHUNK ? d : c0 + KVD_ATTN_CHUNK;
            const simd_chunk kch = ci < SIMD_CHUNKS ? st->kch[ci]
                                                    : simd_chunk_of(kv->k_format, d, kv->group, c0, c1);
            simd_rows(&kch, ku, kt, nb, &st->kc, st->tile, rows, NULL);
            for (size_t h = 0; h < g; h++) {
                const float *restrict qh = q + h * d + c0;
                if (c0 == 0) {
                    simd_dot_block(qh, rows, nb, c1 - c0, st->s[h], NULL);
                    continue;
                }
                _Alignas(64) float part[KVD_ATTN_BLOCK];
                simd_dot_block(qh, rows, nb, c1 - c0, part, NULL);
                for (size_t b = 0; b < nb; b++)
                    st->s[h][b] += part[b];
            }
        }
        for (size_t h = 0; h < g; h++) /* a short last block: defined lanes */
            for (size_t b = nb; b < KVD_ATTN_BLOCK; b++)
                st->s[h][b] = 0.0f;

        /* weights: exp(scale * s - lse) summed over the heads, one add per slot */
        for (size_t b0 = 0; b0 < nb; b0 += KVD_SIMD_W) {
            vf w = v_zero();
            for (size_t h = 0; h < g; h++)
                w = v_add(w, v_exp(v_sub(v_mul(v_load(st->s[h] + b0), vscale), v_set1(st->lse[h]))));
            ws_add_lanes(acc + j0, w, b0, nb);
        }
    }
}

/* Queries one at a time, heads in chunks of KVD_ATTN_MAX_GROUP. */
KVD_SIMD_ATTR __attribute__((noinline)) static void
ws_queries(const kvd_kv_segment *seg, size_t n_seg, size_t total, const float *q, size_t m_q,
           size_t n_q, size_t q_stride, kvd_prefill_mask mask, float scale, const float *lse,
           size_t lse_stride, float *acc)
{
    const size_t d = seg[0].kv.head_dim;
    ws_state st;
    for (size_t i = 0; i < m_q; i++) {
        size_t vis = mask.n0 + i * mask.step;
        vis = vis < total ? vis : total;
        for (size_t h0 = 0; vis > 0 && h0 < n_q; h0 += KVD_ATTN_MAX_GROUP) {
            const size_t g = n_q - h0 < KVD_ATTN_MAX_GROUP ? n_q - h0 : KVD_ATTN_MAX_GROUP;
            int any = 0;
            for (size_t h = 0; h < g; h++) {
                const float l = lse[i * lse_stride + h0 + h];
                st.lse[h] = isfinite(l) ? l : INFINITY; /* exp(s - inf) = 0 */
                any |= isfinite(l);
            }
            if (!any)
                continue;
            size_t left = vis, j0 = 0;
            for (size_t s = 0; s < n_seg && left > 0; j0 += seg[s].n, s++) {
                const size_t ns = seg[s].n < left ? seg[s].n : left;
                if (ns > 0)
                    ws_segment(&seg[s].kv, ns, q + i * q_stride + h0 * d, g, scale, &st, acc + j0);
                left -= ns;
            }
        }
    }
}

/* ---- many rows: tiles of (query, head) rows against key blocks ---------- */

/* Asks for the key bytes of slots [j0, j1) of a view (pf_prefetch's walk
 * without the values). */
static void wt_prefetch(const kvd_kv_pages *kv, size_t j0, size_t j1)
{
    const size_t ks = kvd__kv_k_stride(kv);
    for (size_t j = j0; j < j1; j++) {
        size_t t;
        const unsigned char *k = kvd__kv_unit(kv, kv->k_offset, kv->k_format, ks, j, &t);
        for (size_t b = 0; b < ks && b < 4096; b += 64)
            __builtin_prefetch(k + b, 0, 3);
    }
}

/* One block of nb keys (global slots g0 .., slots j0 .. of a segment of ns)
 * against the tile: pf_block's scores and mask, then per key the sum over
 * the tile's rows (lanes) of exp(s - lse), W keys reduced at once. lse_t:
 * [PF_ROWS], +inf on padded rows (their scores, 0, weigh exp(-inf) = 0). */
KVD_SIMD_ATTR static void wt_block(pf_state *restrict st, const float *restrict lse_t,
                                   const kvd_kv_pages *kv, size_t j0, size_t g0, size_t nb,
                                   size_t ns, size_t rows, size_t nvis_min, float scale,
                                   float *restrict acc)
{
    if (j0 + nb < ns && !kvd_row_is_block(kv->k_format))
        wt_prefetch(kv, j0 + nb, j0 + nb + (ns - j0 - nb < PF_KB ? ns - j0 - nb : PF_KB));
    const size_t live = (rows + PF_RG - 1) / PF_RG * PF_RG;
    pf_block_scores(st, kv, j0, g0, nb, rows, nvis_min, scale);
    for (size_t jb = 0; jb < nb; jb += KVD_SIMD_W) {
        vf r[KVD_SIMD_W];
        for (size_t b = 0; b < KVD_SIMD_W; b++) {
            vf sum = v_zero();
            if (jb + b < nb) {
                const float *restrict sj = st->s + (jb + b) * PF_ROWS;
                for (size_t rv = 0; rv < live; rv += KVD_SIMD_W)
                    sum = v_add(sum, v_exp(v_sub(v_load(sj + rv), v_load(lse_t + rv))));
            }
            r[b] = sum;
        }
        ws_add_lanes(acc + g0, v_sum_lanes(r), jb, nb);
    }
}

KVD_SIMD_ATTR __attribute__((noinline)) static void
wt_tiled(const kvd_kv_segment *seg, size_t n_seg, size_t total, const float *q, size_t m_q,
         size_t n_q, size_t q_stride, kvd_prefill_mask mask, float scale, const float *lse,
         size_t lse_stride, float *acc)
{
    const size_t d = seg[0].kv.head_dim;
    pf_state st;
    st.kc.unit = NULL;
    _Alignas(64) float lse_t[PF_ROWS];
    const size_t all_rows = m_q * n_q;
    for (size_t r0 = 0; r0 < all_rows; r0 += PF_ROWS) {
        const size_t rows = all_rows - r0 < PF_ROWS ? all_rows - r0 : PF_ROWS;
        size_t nmin = SIZE_MAX, nmax = 0;
        for (size_t r = 0; r < rows; r++) {
            const size_t i = (r0 + r) / n_q, h = (r0 + r) % n_q;
            size_t n = mask.n0 + i * mask.step;
            n = n < total ? n : total;
            const float l = lse[i * lse_stride + h];
            if (!isfinite(l))
                n = 0; /* sees nothing (-inf), or no weights to give */
            st.nvis[r] = n;
            lse_t[r] = isfinite(l) ? l : INFINITY;
            nmin = n < nmin ? n : nmin;
            nmax = n > nmax ? n : nmax;
            st.qrow[r] = q + i * q_stride + h * d;
        }
        for (size_t r = rows; r < PF_ROWS; r++)
            lse_t[r] = INFINITY;
        if (nmax == 0)
            continue;
        if (d <= PF_MAXD)
            pf_pack_q(&st, rows, 0, d, scale);
        size_t g0 = 0;
        for (size_t s = 0; s < n_seg && g0 < nmax; s++) {
            const size_t ns = seg[s].n;
            for (size_t j0 = 0; j0 < ns && g0 + j0 < nmax; j0 += PF_KB) {
                size_t nb = ns - j0 < PF_KB ? ns - j0 : PF_KB;
                nb = nmax - (g0 + j0) < nb ? nmax - (g0 + j0) : nb;
                wt_block(&st, lse_t, &seg[s].kv, j0, g0 + j0, nb, ns, rows, nmin, scale, acc);
            }
            g0 += ns;
        }
    }
}

/* ---- the decode path: from the scores the attention stored ------------- */

KVD_SIMD_ATTR void KVD_SIMD_NAME(kvd__attention_weights_scores_)(const float *scores, size_t stride,
                                                                  size_t n, size_t n_q,
                                                                  const float *lse, float *acc)
{
    /* heads in ws_queries' chunks, so the adds into acc run in its order */
    for (size_t h0 = 0; h0 < n_q && n > 0; h0 += KVD_ATTN_MAX_GROUP) {
        const size_t g = n_q - h0 < KVD_ATTN_MAX_GROUP ? n_q - h0 : KVD_ATTN_MAX_GROUP;
        const float *sh[KVD_ATTN_MAX_GROUP];
        vf vl[KVD_ATTN_MAX_GROUP];
        size_t live = 0; /* heads that saw something */
        for (size_t h = 0; h < g; h++)
            if (isfinite(lse[h0 + h])) {
                sh[live] = scores + (h0 + h) * stride;
                vl[live++] = v_set1(lse[h0 + h]);
            }
        if (live == 0)
            continue;
        size_t j = 0;
        for (; j + KVD_SIMD_W <= n; j += KVD_SIMD_W) {
            vf w = v_zero();
            for (size_t h = 0; h < live; h++)
                w = v_add(w, v_exp(v_sub(v_load(sh[h] + j), vl[h])));
            ws_add_lanes(acc, w, j, n);
        }
        if (j < n) {
            const vmask tail = v_tail_mask(j, n);
            vf w = v_zero();
            for (size_t h = 0; h < live; h++)
                w = v_add(w, v_exp(v_sub(v_load_mask(sh[h] + j, tail), vl[h])));
            ws_add_lanes(acc, w, j, n);
        }
    }
}

KVD_SIMD_ATTR void KVD_SIMD_NAME(kvd__attention_weights_)(const kvd_kv_segment *seg, size_t n_seg,
                                                           const float *q, size_t m_q, size_t n_q,
                                                           size_t q_stride, kvd_prefill_mask mask,
                                                           float scale, const float *lse,
                                                           size_t lse_stride, float *acc)
{
    if (m_q == 0 || n_q == 0 || n_seg == 0)
        return;
    size_t total = 0;
    for (size_t s = 0; s < n_seg; s++)
        total += seg[s].n;
    if (total == 0)
        return; /* no slot to give weight to */
    if (m_q >= KVD_PREFILL_MIN_QUERIES || m_q * n_q >= KVD_WEIGHTS_TILE_ROWS)
        wt_tiled(seg, n_seg, total, q, m_q, n_q, q_stride, mask, scale, lse, lse_stride, acc);
    else
        ws_queries(seg, n_seg, total, q, m_q, n_q, q_stride, mask, scale, lse, lse_stride, acc);
}
