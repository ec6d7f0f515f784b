/* attention/kernels.h — private to attention/ and its tests: the attend
 * kernels and the four-cache tensor kernels of every tier (one body each,
 * standard_simd.h and tensor_simd.h, over each vector layer
 * attention/simd_*.h), the constants the attend kernels share, the slot
 * addressing of the row formats and the CPU levels.
 * Only dispatch.c decides which kernel runs; callers outside attention/ use
 * kvd_attention_kernels_get(). */
#ifndef KVD_ATTENTION_KERNELS_H
#define KVD_ATTENTION_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attention.h"

/* Query heads handled per pass over the keys and values. Each head needs a
 * running max and a running sum on the stack (kernels never allocate), so the
 * group is processed in chunks of this many heads; every GQA/MQA group seen in
 * practice (heads / kv_heads <= 64) is one chunk, i.e. one read of the cache. */
#define KVD_ATTN_MAX_GROUP 64

/* Keys per block in the SIMD kernels: scores of a block are computed first,
 * then the running max is updated once per block (one rescale of the
 * accumulator instead of one per key) and the block's weights are
 * exponentiated as whole vectors. 16 = one AVX-512 vector, two AVX2 vectors;
 * a block of K rows, then of V rows (16 * head_dim * 4 bytes as f32, 8 KiB
 * at d = 128, read in place or dequantized into a tile) stays in L1 while
 * every head of the group uses it. */
#define KVD_ATTN_BLOCK 16

/* Channels dequantized per pass into the kernels' per-block tile (quantized
 * formats only; f32 rows are read in place). The tile is KVD_ATTN_BLOCK x
 * KVD_ATTN_CHUNK f32 = 16 KiB on the stack, an L1-sized slice of the block
 * rather than a copy of the cache: a head_dim above this (the API allows up
 * to 4096) is processed in channel chunks, scores summed over the chunks.
 * A multiple of 16 so every chunk but the last is whole vectors. */
#define KVD_ATTN_CHUNK 256

/* Long sums (issue 14). A running sum of exp weights, or of weighted value
 * rows, kept in f32 over n / 16 blocks drifts like n * 2^-24 (a two-cache
 * query at 462,400 pair rows came back scaled by 1.00036). The kernels add
 * each block's weights in f32 (16 terms) and keep the denominator in f64;
 * the output accumulates in f32 for KVD_ATTN_FOLD_BLOCKS blocks (the
 * four-cache: tiles of 16 lanes; a span short enough for f32) and is then
 * folded into an f64 sum, so the error stays at f32-rounding level at any
 * length, for a fold of d doubles per head per 1,024 tokens. */
#define KVD_ATTN_FOLD_BLOCKS 64

/* Doubles of the attend kernels' f64 output sums ([heads][d], on the
 * stack, 64 KiB): heads per pass are min(KVD_ATTN_MAX_GROUP, this / d), so
 * every group up to 64 heads is one pass at d <= 128, 32 at d = 256, 2 at
 * the API's largest d = 4096. A larger d keeps f32 output sums. */
#define KVD_ATTN_ACC_DOUBLES 8192

/* Bytes from one key row (or KIVI key block) to the next in a K region. */
static inline size_t kvd__kv_k_stride(const kvd_kv_pages *kv)
{
    return kv->k_row_bytes ? kv->k_row_bytes : kvd_row_bytes(kv->k_format, kv->head_dim, kv->group);
}

static inline size_t kvd__kv_v_stride(const kvd_kv_pages *kv)
{
    return kv->v_row_bytes ? kv->v_row_bytes : kvd_row_bytes(kv->v_format, kv->head_dim, kv->group);
}

/* Where slot j of a region lives: the unit (row, or KIVI block) and the
 * token within it (0 for per-token rows). attention.h gives the layout. */
static inline const unsigned char *kvd__kv_unit(const kvd_kv_pages *kv, size_t offset,
                                               kvd_row_format f, size_t stride, size_t j,
                                               size_t *t)
{
    const unsigned char *region = kv->pages[j / kv->slots_per_page] + offset;
    const size_t i = j % kv->slots_per_page;
    if (kvd_row_is_block(f)) {
        *t = i % kv->group;
        return region + (i / kv->group) * stride;
    }
    *t = 0;
    return region + i * stride;
}

/* Same contract as kvd_attend_ref, every row format. The scalar tier
 * (portable C, standard_scalar.c) runs on any CPU; the others are built with
 * target attributes: call them only if the CPU has the features
 * (kvd_attention_kernels_get does the check). */
void kvd__attend_scalar(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t n_q,
                       float scale, float *o);
void kvd__attend_lse_scalar(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t n_q,
                           float scale, float *o, float *lse);
void kvd__attend_lse_scores_scalar(const kvd_kv_segment *seg, size_t n_seg, const float *q,
                                  size_t n_q, float scale, float *o, float *lse, float *scores,
                                  size_t scores_stride);
#if defined(__x86_64__)
void kvd__attend_lse_avx2(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t n_q,
                         float scale, float *o, float *lse);
void kvd__attend_lse_avx512(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t n_q,
                           float scale, float *o, float *lse);
void kvd__attend_lse_scores_avx2(const kvd_kv_segment *seg, size_t n_seg, const float *q,
                                size_t n_q, float scale, float *o, float *lse, float *scores,
                                size_t scores_stride);
void kvd__attend_lse_scores_avx512(const kvd_kv_segment *seg, size_t n_seg, const float *q,
                                  size_t n_q, float scale, float *o, float *lse, float *scores,
                                  size_t scores_stride);
void kvd__attend_avx2(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t n_q,
                     float scale, float *o); /* avx2 + fma + f16c */
void kvd__attend_avx512(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t n_q,
                       float scale, float *o); /* avx512f (+ f16c, implied by every
                                                  avx512f CPU; checked anyway) */
#endif

/* The four-cache kernels, one body (tensor_simd.h) per vector layer. The
 * scalar one runs on any CPU; the others are built with target attributes:
 * call them only when the CPU has the features (kvd_tensor_kernels_get
 * checks). Same contract as kvd_tensor_four_ref. */
void kvd__tensor_four_scalar(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n,
                            size_t window, const float *q, size_t n_q, float scale, float *o);
void kvd__tensor_four_lse_scalar(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n,
                                size_t window, const float *q, size_t n_q, float scale, float *o,
                                float *lse);
#if defined(__x86_64__)
void kvd__tensor_four_lse_avx2(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n,
                              size_t window, const float *q, size_t n_q, float scale, float *o,
                              float *lse);
void kvd__tensor_four_lse_avx512(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n,
                                size_t window, const float *q, size_t n_q, float scale, float *o,
                                float *lse);
void kvd__tensor_four_avx2(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n, size_t window,
                          const float *q, size_t n_q, float scale,
                          float *o); /* avx2 + fma + f16c */
void kvd__tensor_four_avx512(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n,
                            size_t window, const float *q, size_t n_q, float scale,
                            float *o); /* avx512f + f16c */
#endif

/* Kernel levels this CPU runs, the same for every kernel family: 1 scalar,
 * 2 AVX2 + FMA (+ F16C), 3 AVX-512F as well (attention/dispatch.c). */
size_t kvd__simd_levels(void);

/* Every kernel table this CPU can run, best last (scalar first); *n gets the
 * count. For tests and benchmarks that compare kernels with each other. */
const kvd_attention_kernels *kvd_attention_kernels_all(size_t *n);

#endif
