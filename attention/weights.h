/* attention/weights.h — h2o scoring: the softmax weight each cached slot
 * receives from a step's queries, summed over a GQA group, from the lse the
 * attention call already produced (no max or sum pass): recomputing the
 * scores (many queries), or from the scores the decode kernel stored (few
 * queries). Owns the calls, their tiers and the oracle of the pass they
 * replaced; the body is weights_simd.h, one weights_{scalar,avx2,avx512}.c
 * per layer. */
#ifndef KVD_ATTENTION_WEIGHTS_H
#define KVD_ATTENTION_WEIGHTS_H

#include <stddef.h>

#include "attention/attention.h"
#include "attention/prefill.h"

/* Queries x heads of one call from which the kernel runs tiles of (query,
 * head) rows against key blocks (prefill_simd.h's tiles: each key block is
 * read and decoded once per tile) instead of one query at a time over the
 * decode kernel's blocks (keys scored from their codes where
 * standard_codes.h can); so do KVD_PREFILL_MIN_QUERIES queries of any
 * group, as the attention does. 64 = one AVX-512 tile: 16 queries of a
 * group of 4. */
#define KVD_WEIGHTS_TILE_ROWS 64

/* Adds to acc[j] (j counted across the segments in order) the softmax
 * weight slot j receives from each of the m_q x n_q (query, head) rows:
 *   acc[j] += sum_i sum_h [j < vis(i)] exp(scale * <q[i][h], k_j> - lse[i][h]),
 *   vis(i) = mask.n0 + i * mask.step (kvd_attend_prefill's mask, capped at
 *   the segments' slots),
 * where lse[i][h] = lse[i * lse_stride + h] is the row's log-sum-exp as
 * kvd_attend_lse_ref / kvd_attend_prefill give it for the same visible
 * slots: then each row's weights are its softmax and sum to 1 within the
 * f32 bounds tests/attention/test_weights_lse.c names. A row whose lse is
 * not finite (-inf: it sees no slot) gives nothing. q, q_stride as
 * kvd_attend_prefill ([m_q][q_stride] floats, the group's heads at
 * q + i * q_stride + h * head_dim). Slots no query sees are untouched.
 * Every row format, any number of segments, any head_dim; no allocation
 * (~150 KiB of stack). Numerics: f32 scores as the attend kernels compute
 * them, the kernels' polynomial exp (an argument above 0, a score a few ulp
 * above its lse, weighs exactly 1), weights summed over a key's rows in f32
 * before one add into acc[j]. The order of the adds into acc depends only
 * on (m_q, n_q) and the mask, so a call gives the same bits every time.
 * Thread-safe; chooses the CPU's best tier (attention/dispatch.c's levels). */
void kvd_attention_weights(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t m_q,
                           size_t n_q, size_t q_stride, kvd_prefill_mask mask, float scale,
                           const float *lse, size_t lse_stride, float *acc);

/* The decode path's weights, from the scores the attention call stored
 * (kvd_attention_kernels.attend_lse_scores): for j < n
 *   acc[j] += sum_h exp(scores[h * stride + j] - lse[h]),  h < n_q,
 * a head whose lse is not finite (it saw nothing) giving nothing. With the
 * scores and lse of one attend_lse_scores call each head's weights are its
 * softmax (they sum to 1 within the f32 bounds test_weights_scores.c
 * names) with no second read of the keys and no second dot product: one
 * pass over n_q * n floats. Numerics as kvd_attention_weights: the kernels'
 * polynomial exp, a key's weights summed over the heads in f32 (in head
 * order, heads in chunks of KVD_ATTN_MAX_GROUP) before one add into acc[j].
 * No allocation; thread-safe; the CPU's best tier. */
void kvd_attention_weights_from_scores(const float *scores, size_t stride, size_t n, size_t n_q,
                                       const float *lse, float *acc);

/* The pass kvd_attention_weights replaced (before issue 9), kept as a scalar
 * oracle for tests and the benchmark's baseline: one query's n_q heads
 * ([n_q][head_dim]) over every slot of the segments, three passes per head
 * (scores by kvd_dequant_range and their max, expf and a double sum,
 * normalize and add), needing no lse. scratch: [total slots] f32. Never run
 * in production (weights.c). */
void kvd_attention_weights_ref(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t n_q,
                               float scale, float *scratch, float *acc);

/* The tiers, private to attention/ and its tests and benchmarks (same
 * contract; the AVX ones only where kvd__simd_levels() says the CPU has
 * them). kvd__attention_weights_tier(level): 0 scalar, 1 avx2, 2 avx512, or
 * NULL where the CPU or the build has no such tier. */
typedef void (*kvd__weights_fn)(const kvd_kv_segment *seg, size_t n_seg, const float *q,
                                size_t m_q, size_t n_q, size_t q_stride, kvd_prefill_mask mask,
                                float scale, const float *lse, size_t lse_stride, float *acc);
kvd__weights_fn kvd__attention_weights_tier(size_t level);

void kvd__attention_weights_scalar(const kvd_kv_segment *seg, size_t n_seg, const float *q,
                                   size_t m_q, size_t n_q, size_t q_stride,
                                   kvd_prefill_mask mask, float scale, const float *lse,
                                   size_t lse_stride, float *acc);
typedef void (*kvd__weights_scores_fn)(const float *scores, size_t stride, size_t n, size_t n_q,
                                       const float *lse, float *acc);
kvd__weights_scores_fn kvd__attention_weights_scores_tier(size_t level);

void kvd__attention_weights_scores_scalar(const float *scores, size_t stride, size_t n, size_t n_q,
                                          const float *lse, float *acc);
#if defined(__x86_64__)
void kvd__attention_weights_scores_avx2(const float *scores, size_t stride, size_t n, size_t n_q,
                                        const float *lse, float *acc);
void kvd__attention_weights_scores_avx512(const float *scores, size_t stride, size_t n,
                                          size_t n_q, const float *lse, float *acc);
void kvd__attention_weights_avx2(const kvd_kv_segment *seg, size_t n_seg, const float *q,
                                 size_t m_q, size_t n_q, size_t q_stride, kvd_prefill_mask mask,
                                 float scale, const float *lse, size_t lse_stride, float *acc);
void kvd__attention_weights_avx512(const kvd_kv_segment *seg, size_t n_seg, const float *q,
                                   size_t m_q, size_t n_q, size_t q_stride,
                                   kvd_prefill_mask mask, float scale, const float *lse,
                                   size_t lse_stride, float *acc);
#endif

#endif
