/* attention/kernels.h — private to attention/ and its tests: the SIMD twins of
 * kvd_attend_group_ref and the constants every attend_group kernel shares.
 * Only dispatch.c decides which of these runs; callers outside attention/ use
 * kvd_attention_kernels_get(). */
#ifndef KVD_ATTENTION_KERNELS_H
#define KVD_ATTENTION_KERNELS_H

#include <stddef.h>

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
 * a block of K and V rows (2 * 16 * head_dim * 4 bytes, 16 KiB at d = 128)
 * stays in L1 while every head of the group uses it. */
#define KVD_ATTN_BLOCK 16

#if defined(__x86_64__)
/* Built with target attributes: call only if the CPU has the features
 * (kvd_attention_kernels_get does the check). */
void kvd_attend_group_avx2(const kvd_kv_pages *kv, size_t n_visible,
                           const float *q, size_t n_q, float scale, float *o); /* avx2 + fma */
void kvd_attend_group_avx512(const kvd_kv_pages *kv, size_t n_visible,
                             const float *q, size_t n_q, float scale, float *o); /* avx512f */
#endif

/* Every kernel table this CPU can run, best last (scalar first); *n gets the
 * count. For tests and benchmarks that compare kernels with each other. */
const kvd_attention_kernels *kvd_attention_kernels_all(size_t *n);

#endif
