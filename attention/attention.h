/* attention/attention.h — standard (softmax) attention over a paged KV stream.
 *
 * This module knows nothing of HTTP, sessions or the pool: it sees a stream as
 * a block table of pages, each holding `slots_per_page` token slots laid out as
 * described by kvd_kv_pages. This header owns the view types, the oracle
 * kvd_attend_ref and the kernel table chosen at run time (h2o scoring:
 * attention/weights.h).
 * `_ref` names only the scalar oracles tests compare against (never run in
 * production); every kernel tier, scalar included, is tested against them
 * (tests/attention/). */
#ifndef KVD_ATTENTION_H
#define KVD_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "attention/formats.h"

/* A read-only view of one stream's cached keys and values.
 * Slot j lives in page j / slots_per_page at index i = j % slots_per_page.
 * Per-token formats (attention/formats.h): its key row starts at
 *   pages[p] + k_offset + i * k_row_bytes   (value: v_offset, v_row_bytes).
 * KIVI keys: i's block is i / group, at pages[p] + k_offset + (i / group) *
 * k_row_bytes, token i % group within it (slots_per_page is a multiple of
 * group, so a block never straddles pages). Offsets are multiples of 64. */
typedef struct kvd_kv_pages {
    const unsigned char *const *pages; /* block table, ceil(n / slots_per_page) pages */
    size_t slots_per_page;
    size_t head_dim;
    size_t k_offset;                   /* bytes from page start to the K region */
    size_t v_offset;                   /* bytes from page start to the V region */
    kvd_row_format k_format, v_format; /* KVD_ROW_F32 (0) unless set */
    uint32_t k_row_bytes, v_row_bytes; /* 0 with f32 means head_dim * 4 */
    uint32_t group;                    /* U4G/U2G channels per group; KIVI tokens per key block */
} kvd_kv_pages;

/* The f32 row of slot j (f32 views only). */
static inline const float *kvd_kv_key(const kvd_kv_pages *kv, size_t j)
{
    const unsigned char *page = kv->pages[j / kv->slots_per_page];
    return (const float *)(page + kv->k_offset) + (j % kv->slots_per_page) * kv->head_dim;
}

static inline const float *kvd_kv_value(const kvd_kv_pages *kv, size_t j)
{
    const unsigned char *page = kv->pages[j / kv->slots_per_page];
    return (const float *)(page + kv->v_offset) + (j % kv->slots_per_page) * kv->head_dim;
}

/* A stream may be split in parts of different formats (KIVI: quantized
 * tokens, then the newest tokens in f32). Attention runs one online softmax
 * over the first n slots of each segment in order, as if concatenated. */
typedef struct kvd_kv_segment {
    kvd_kv_pages kv;
    size_t n;                          /* slots of this segment the queries see */
} kvd_kv_segment;

/* Attention of `n_q` query heads that share one kv head (a GQA group) over
 * the segments:
 *   o[h] = sum_j softmax_j(scale * <q[h], k_j>) * v_j
 * computed in one pass with a running max (online softmax), f32 accumulation,
 * reading (and dequantizing) each key and value once for the whole group.
 *   q: [n_q][head_dim] f32, o: [n_q][head_dim] f32 (written; may not alias q).
 * No visible slot at all writes zeros: a softmax over no tokens has no mass.
 * This is the oracle every kernel tier is tested against (standard.c: one
 * key at a time, libm expf); production runs kvd_attention_kernels_get(). */
void kvd_attend_ref(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t n_q,
                    float scale, float *o);

/* kvd_attend_ref that also writes, when lse is not NULL, lse[h] = the
 * natural log of head h's softmax denominator, log sum_j exp(scale *
 * <q[h], k_j>) (= m + log l of the online softmax), or -inf when no slot is
 * visible (o = 0 then). (o, lse) of disjoint parts of one context merge
 * exactly: o = sum_r exp(lse_r - L) o_r, L = log sum_r exp(lse_r). */
void kvd_attend_lse_ref(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t n_q,
                        float scale, float *o, float *lse);

/* One view of any format, first n_visible slots: kvd_attend_ref on one
 * segment (a test convenience). */
void kvd_attend_group_ref(const kvd_kv_pages *kv, size_t n_visible,
                          const float *q, size_t n_q, float scale, float *o);

/* Heavy-hitter scoring (H2O), the softmax weight each slot receives from a
 * step's queries given their lse: kvd_attention_weights in
 * attention/weights.h (it takes kvd_attend_prefill's mask). */

/* The kernel table chosen once at start-up for this CPU (runtime dispatch). */
typedef struct kvd_attention_kernels {
    const char *name; /* "scalar", "avx2", "avx512" */
    void (*attend)(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t n_q,
                   float scale, float *o);
    /* attend with kvd_attend_lse_ref's lse output ([n_q], NULL = not wanted). */
    void (*attend_lse)(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t n_q,
                       float scale, float *o, float *lse);
    /* attend_lse that also stores, when scores is not NULL, the scaled
     * scores its softmax used (h2o forms the weights from them and the lse:
     * kvd_attention_weights_from_scores, attention/weights.h):
     *   scores[h * scores_stride + j] = scale * <q[h], k_j> in f32, bit for
     * bit what the kernel exponentiated, for every visible slot j (numbered
     * across the segments in order; scores_stride >= their total). Nothing
     * else is written there. scores NULL: exactly attend_lse. */
    void (*attend_lse_scores)(const kvd_kv_segment *seg, size_t n_seg, const float *q,
                              size_t n_q, float scale, float *o, float *lse, float *scores,
                              size_t scores_stride);
} kvd_attention_kernels;

/* Kernels for the running CPU; thread-safe, cheap after the first call. */
const kvd_attention_kernels *kvd_attention_kernels_get(void);

/* CPU features kvd detected and uses, e.g. "avx2 fma avx512f" (for /v1/info). */
const char *kvd_cpu_features(void);

#endif
