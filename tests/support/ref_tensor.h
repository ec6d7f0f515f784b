/* tests/support/ref_tensor.h — an exact reference for a whole tensor-
 * attention session (DESIGN.md §5, 2-simplicial attention), written from the
 * design and sharing no code with kvd: every appended k1, k2, v1, v2 is kept
 * in double per (layer, kv head) and outputs are a brute-force two-pass
 * softmax over all visible pairs (j, k), in double. It also applies the
 * window: a query sees only the last min(W, |T|) of its visible tokens T,
 * and at the end of each request (ref_tensor_end_request) tokens older than
 * the last W of each stream are dropped. */
#ifndef KVD_TEST_REF_TENSOR_H
#define KVD_TEST_REF_TENSOR_H

#include <stddef.h>

#include "tests/support/ref_attention.h" /* ref_mask */

typedef struct ref_tensor ref_tensor;

/* scale <= 0 means the default 1/sqrt(head_dim); window 0 = unlimited.
 * Never returns NULL. */
ref_tensor *ref_tensor_new(size_t layers, size_t heads, size_t kv_heads, size_t head_dim, double scale,
                           size_t window);
void ref_tensor_free(ref_tensor *s);

/* Appends m tokens to `layer` (k1, k2, v1, v2: [m][kv_heads][head_dim],
 * row-major f32; NULL when m = 0) and computes o: [m_q][heads][head_dim]
 * for q: [m_q][heads][head_dim]. Visibility as for standard attention
 * (ref_step): causal query i sees the cache plus new tokens 0..m-m_q+i,
 * block sees the cache plus all m; then the window keeps the last W of
 * those. For query head h (kv head g = h / (heads/kv_heads)):
 *   s_jk = scale * sum_l q_l k1_{j,l} k2_{k,l},
 *   o    = sum_{j,k} softmax_jk(s) (v1_j (.) v2_k).
 * A query that sees no token gets zeros. Returns 0, or -1 for a causal step
 * with m_q > m (nothing appended). Does not drop old tokens: call
 * ref_tensor_end_request once the whole request is applied. */
int ref_tensor_step(ref_tensor *s, size_t layer, const float *k1, const float *k2, const float *v1,
                    const float *v2, size_t m, const float *q, size_t m_q, ref_mask mask, double *o);

/* With a window W > 0: every stream keeps only its last W tokens. */
void ref_tensor_end_request(ref_tensor *s);

/* Tokens cached per stream of `layer` (all kv heads hold the same count). */
size_t ref_tensor_tokens(const ref_tensor *s, size_t layer);
/* Summed over all streams (layers * kv_heads), as session stats report. */
size_t ref_tensor_total_tokens(const ref_tensor *s);
/* Tokens ever appended, summed over streams. */
size_t ref_tensor_total_appended(const ref_tensor *s);
/* Sum over streams of tokens^2: the pair rows a two-cache holds. */
size_t ref_tensor_pair_rows(const ref_tensor *s);

#endif
