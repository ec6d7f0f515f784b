/* attention/tensor.h — tensor attention (DESIGN.md §5; Alman & Song 2023;
 * Chen et al. 2025, arXiv 2503.11108) over paged f32 caches, stored either as
 * four n x d caches (k1, k2, v1, v2) or as two n^2 x d caches of pair rows
 * (k1_j ⊙ k2_k, v1_j ⊙ v2_k). Both give the same output to f32 rounding.
 *
 * For one query head with query q (d numbers) over the visible tokens T:
 *   s_jk = scale * sum_l q_l * k1_{j,l} * k2_{k,l}          (j, k in T)
 *   o    = sum_{j,k} softmax_{jk}(s) * (v1_j ⊙ v2_k)      (softmax over all |T|^2 pairs)
 * This header owns the definitions, the oracles (`_ref`, what tests compare
 * against), the production scalar code over views of any dtype, the pair-row
 * order and builder, and the four-cache kernel table chosen at run time
 * (kvd_tensor_kernels_get: tensor_simd.h over each vector layer). A
 * two-cache has no kernel of its own: it is standard attention over its pair
 * rows (attention.h, kvd_attention_kernels_get). Kernels never allocate. */
#ifndef KVD_ATTENTION_TENSOR_H
#define KVD_ATTENTION_TENSOR_H

#include <stddef.h>

#include "attention/attention.h"

/* Four caches. a = view of (k1 as K, v1 as V), b = view of (k2 as K, v2 as V),
 * same slot order, same head_dim d; slots 0..n-1 are the tokens. With
 * window W > 0 only the last min(W, n) tokens are visible (both members of a
 * pair; 2-simplicial attention's local form), window 0 = all n.
 *   q: [n_q][d] f32, the query heads of one GQA group sharing this kv head.
 *   o: [n_q][d] f32, written (may not alias q). No visible token writes zeros.
 * O(|T|^2 * d) time per head, O(1) memory besides o: one online softmax over
 * the pairs in order (j outer, k inner) with o as its accumulator. f32 views
 * only (kvd_kv_key / kvd_kv_value). The oracle every four-cache kernel is
 * tested against. */
void kvd_tensor_four_ref(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n, size_t window,
                         const float *q, size_t n_q, float scale, float *o);

/* kvd_tensor_four_ref that also writes, when lse is not NULL, lse[h] = the
 * natural log of head h's softmax denominator over the visible pairs,
 * log sum_{j,k} exp(s_jk), or -inf when no pair is visible (o = 0). */
void kvd_tensor_four_lse_ref(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n, size_t window,
                             const float *q, size_t n_q, float scale, float *o, float *lse);

/* Two caches. `pairs` slot r holds K = k1_j ⊙ k2_k and V = v1_j ⊙ v2_k of the
 * r-th pair in append order (kvd_tensor_pair_row): the pairs of tokens
 * 0..n-1 are exactly rows 0..n*n-1. Standard softmax attention over those
 * n*n rows (online softmax, f32 accumulation):
 *   q, o: [n_q][d] f32 as above; n == 0 writes zeros.
 * No window: the pairs of the last W tokens are not a contiguous run of rows
 * (a windowed two-cache is a four-cache's job: O(W*d) memory vs O(W^2*d)).
 * The oracle of the two-cache path, which production runs as the standard
 * kernels over the first n*n pair rows (tests compare them with this). */
void kvd_tensor_two_ref(const kvd_kv_pages *pairs, size_t n, const float *q, size_t n_q,
                        float scale, float *o);

/* A stream of any dtype as tensor attention reads it: up to two segments
 * (KIVI: quantized tokens, then the f32 residual), all tokens in slot order;
 * each segment's n is the tokens it holds. */
typedef struct kvd_tensor_view {
    kvd_kv_segment seg[2];
    size_t n_seg;
} kvd_tensor_view;

/* The four-cache attention and the pair-row builder over views of any
 * dtype, scalar: rows are dequantized one at a time (kvd_dequant_row); the
 * four-cache kernels take f32 views only, so production runs this for every
 * other dtype. Same contracts as kvd_tensor_four_ref / kvd_tensor_pair_rows. */
void kvd_tensor_four_view(const kvd_tensor_view *a, const kvd_tensor_view *b, size_t n,
                          size_t window, const float *q, size_t n_q, float scale, float *o);
/* kvd_tensor_four_view with kvd_tensor_four_lse_ref's lse ([n_q], or NULL). */
void kvd_tensor_four_view_lse(const kvd_tensor_view *a, const kvd_tensor_view *b, size_t n,
                              size_t window, const float *q, size_t n_q, float scale, float *o,
                              float *lse);
/* Heavy-hitter scoring for tensor attention (H2O over pairs): adds to acc[j]
 * the softmax weight of every visible pair token j belongs to — (j, k) and
 * (k, j), the pair (j, j) once — from each of the n_q query heads, summed
 * over the heads. Same scores as the four-cache; two passes over the pairs
 * (max and sum, then the weights), no scratch. acc: [n] f32. */
void kvd_tensor_weights_view(const kvd_tensor_view *a, const kvd_tensor_view *b, size_t n,
                             size_t window, const float *q, size_t n_q, float scale, float *acc);
void kvd_tensor_pair_rows_view(const kvd_tensor_view *a, const kvd_tensor_view *b, size_t t, float *k_rows,
                               float *v_rows);

/* Tokens 0..n-1 of a view of any dtype as f32 rows, the same floats
 * kvd_tensor_four_view reads (KIVI: the quantized segment, then the
 * residual): keys to k [n][head_dim], values to v [n][head_dim]. O(n d);
 * lets a caller run the f32 four-cache kernels (kvd_tensor_kernels_get)
 * over a dequantized copy instead of the scalar view kernel. */
void kvd_tensor_view_rows(const kvd_tensor_view *view, size_t n, float *k, float *v);
/* Tokens j0 .. j0+n-1 of the view, the same floats, to k and v [n][head_dim]
 * (a caller filling page-sized pieces of its copy). */
void kvd_tensor_view_rows_from(const kvd_tensor_view *view, size_t j0, size_t n, float *k, float *v);

/* An f32 view of rows laid out as one "page": keys at page[0] (rows
 * [cap][d]), values right after them (v_offset = cap * d floats; cap a
 * multiple of 16 keeps the offset a multiple of 64). `page` must outlive
 * the view. */
static inline kvd_kv_pages kvd_tensor_rows_pages(const unsigned char *const *page, size_t cap, size_t d)
{
    kvd_kv_pages kv = {.pages = page, .slots_per_page = cap, .head_dim = d};
    kv.v_offset = cap * d * sizeof(float);
    return kv;
}

/* Row of pair (j, k) in the two-cache append order. Appending token t adds
 * its 2t+1 pairs (t,0),(t,1),...,(t,t),(0,t),(1,t),...,(t-1,t) as rows
 * t^2 .. t^2+2t, so the first n tokens own rows 0 .. n^2-1. */
static inline size_t kvd_tensor_pair_row(size_t j, size_t k)
{
    return j >= k ? j * j + k : k * k + k + 1 + j;
}

/* Pair rows appended by token t (0-based): 2t+1. */
static inline size_t kvd_tensor_pair_rows_added(size_t t)
{
    return 2 * t + 1;
}

/* The 2t+1 pair rows token t appends, in kvd_tensor_pair_row order, for
 * cache/ to store: a = (k1, v1) and b = (k2, v2) views holding tokens 0..t.
 *   k_rows: [2t+1][d] f32, row i = k1_j ⊙ k2_k of the i-th new pair (j, k)
 *   v_rows: [2t+1][d] f32, row i = v1_j ⊙ v2_k
 * Products are single f32 multiplications, so the rows are exact functions
 * of the four caches (bit-identical whoever computes them). */
void kvd_tensor_pair_rows(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t t, float *k_rows,
                          float *v_rows);

/* Largest head_dim the four-cache kernels handle with their fixed on-stack
 * tiles (a [d][16] tile of q ⊙ k1 and a [16][d] tile of partial outputs,
 * 16 KiB each at this bound); a larger d runs kvd_tensor_four_view. */
#define KVD_TENSOR_MAX_FAST_DIM 256

/* Query heads per pass (running max and sum per head on the stack); a
 * larger group is processed in chunks of this many heads. */
#define KVD_TENSOR_MAX_GROUP 64

typedef void (*kvd_tensor_four_fn)(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n,
                                   size_t window, const float *q, size_t n_q, float scale,
                                   float *o);

/* A kernel table: the same contract as kvd_tensor_four_ref. */
typedef struct kvd_tensor_kernels {
    const char *name; /* "scalar", "avx2", "avx512" */
    kvd_tensor_four_fn four;
    /* four with kvd_tensor_four_lse_ref's lse output ([n_q], NULL = not wanted) */
    void (*four_lse)(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n, size_t window,
                     const float *q, size_t n_q, float scale, float *o, float *lse);
} kvd_tensor_kernels;

/* The fastest table this CPU runs (AVX-512F, else AVX2+FMA, else scalar);
 * thread-safe, cheap after the first call. */
const kvd_tensor_kernels *kvd_tensor_kernels_get(void);

/* Every table this CPU can run, scalar first, best last; *n gets the count
 * (for tests and benchmarks that compare the levels). */
const kvd_tensor_kernels *kvd_tensor_kernels_all(size_t *n);

#endif
