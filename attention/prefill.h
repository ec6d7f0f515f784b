/* attention/prefill.h — the tiled attention kernel for steps that carry many
 * queries (prefill, VAR scales): tiles of (query, head) rows of one GQA group
 * against blocks of keys and values, so each K/V block is read (and, for a
 * quantized cache, dequantized) once per tile instead of once per query.
 * This header owns the call, its mask and the threshold the step engine uses
 * to choose it; the body is prefill_simd.h, one thin .c per vector layer. */
#ifndef KVD_ATTENTION_PREFILL_H
#define KVD_ATTENTION_PREFILL_H

#include <stddef.h>

#include "attention/attention.h"

/* Queries per step entry from which the step engine (cache/step.c) runs
 * the tiled kernel instead of one decode-kernel call per query (for every
 * piece of a split entry alike). Below it a tile would be mostly padding; at
 * 16 queries x a GQA group of 4 heads the tile of the AVX-512 tier (64 rows)
 * is full. Chosen on speed only: both paths meet the same tolerances
 * (tests/attention/test_prefill.c). A row's result does not depend on the
 * tile that holds it (blocks start at fixed slots; a masked slot adds exact
 * zeros), so any split of the queries gives the same bits. */
#define KVD_PREFILL_MIN_QUERIES 16

/* Which slots each query of a call sees: query i sees the first
 * n0 + i * step slots of the segments (taken in order, as if concatenated).
 * step 1 is the causal mask of a prefill (query i sees the cache and new
 * tokens 0..i); step 0 the block mask of one VAR scale or a pure query (every
 * query sees the same slots). Other steps work too (any non-decreasing
 * count); the last query's count must not exceed the segments' slots. */
typedef struct kvd_prefill_mask {
    size_t n0;
    size_t step;
} kvd_prefill_mask;

/* Attention of m_q queries x n_q query heads that share one kv head:
 *   o[i][h] = sum_{j < vis(i)} softmax_j(scale * <q[i][h], k_j>) * v_j,
 *   vis(i) = mask.n0 + i * mask.step,
 * the same function as m_q calls of kvd_attend_lse_ref with each query's
 * visible prefix, to within the f32 bound tests/attention/test_prefill.c
 * names. Query i's heads are rows q + i * q_stride + h * head_dim
 * (q_stride >= n_q * head_dim floats: the step's [m_q][heads][d] layout with
 * q at the group's first head); o uses the same layout (written; must not
 * alias q). lse (NULL = not wanted): lse[i * lse_stride + h] = log of the
 * softmax denominator, -inf (and o = 0) where a query sees no slot.
 * Any row format, any number of segments, any head_dim; no allocation (the
 * tiles live on the stack, ~140 KiB: worker threads have MiB
 * stacks). Numerics: f32 dot products and weights as the decode kernels;
 * each row's softmax denominator sums a key block in f32 and folds the
 * block sums into a double. Thread-safe; chooses the CPU's best tier. */
void kvd_attend_prefill(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t m_q,
                        size_t n_q, size_t q_stride, kvd_prefill_mask mask, float scale, float *o,
                        float *lse, size_t lse_stride);

/* The tiers, private to attention/ and its tests and benchmarks (same
 * contract; the AVX ones only where kvd__simd_levels() says the CPU has
 * them). kvd__attend_prefill_tier(level) gives level 0 scalar, 1 avx2,
 * 2 avx512, or NULL where the CPU or the build has no such tier. */
typedef void (*kvd__prefill_fn)(const kvd_kv_segment *seg, size_t n_seg, const float *q,
                                size_t m_q, size_t n_q, size_t q_stride, kvd_prefill_mask mask,
                                float scale, float *o, float *lse, size_t lse_stride);
kvd__prefill_fn kvd__attend_prefill_tier(size_t level);

void kvd__attend_prefill_scalar(const kvd_kv_segment *seg, size_t n_seg, const float *q,
                                size_t m_q, size_t n_q, size_t q_stride, kvd_prefill_mask mask,
                                float scale, float *o, float *lse, size_t lse_stride);
#if defined(__x86_64__)
void kvd__attend_prefill_avx2(const kvd_kv_segment *seg, size_t n_seg, const float *q,
                              size_t m_q, size_t n_q, size_t q_stride, kvd_prefill_mask mask,
                              float scale, float *o, float *lse, size_t lse_stride);
void kvd__attend_prefill_avx512(const kvd_kv_segment *seg, size_t n_seg, const float *q,
                                size_t m_q, size_t n_q, size_t q_stride, kvd_prefill_mask mask,
                                float scale, float *o, float *lse, size_t lse_stride);
#endif

/* Test hook: keys (values = 0) or values of slots [j0, j0 + n) of one view,
 * all head_dim channels, decoded to f32 the way the tier's blocks decode
 * them, into out[n][head_dim]: kvd_dequant_range's floats bit for bit
 * (tests/attention/test_prefill.c). kvd__prefill_decode_tier(level) as
 * kvd__attend_prefill_tier. */
typedef void (*kvd__prefill_decode_fn)(const kvd_kv_pages *kv, int values, size_t j0, size_t n,
                                       float *out);
kvd__prefill_decode_fn kvd__prefill_decode_tier(size_t level);
void kvd__prefill_decode_scalar(const kvd_kv_pages *kv, int values, size_t j0, size_t n,
                                float *out);
#if defined(__x86_64__)
void kvd__prefill_decode_avx2(const kvd_kv_pages *kv, int values, size_t j0, size_t n, float *out);
void kvd__prefill_decode_avx512(const kvd_kv_pages *kv, int values, size_t j0, size_t n,
                                float *out);
#endif

#endif
