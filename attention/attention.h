/* attention/attention.h — standard (softmax) attention over a paged KV stream.
 *
 * This module knows nothing of HTTP, sessions or the pool: it sees a stream as
 * a block table of pages, each holding `slots_per_page` token slots laid out as
 * described by kvd_kv_pages. Every fast kernel has a scalar `_ref` twin that is
 * the oracle in tests (tests/attention/). */
#ifndef KVD_ATTENTION_H
#define KVD_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

/* A read-only view of one stream's cached keys and values (f32 pages).
 * Slot j lives in page j / slots_per_page at index i = j % slots_per_page:
 *   key   = (const float *)(pages[p] + k_offset) + i * head_dim
 *   value = (const float *)(pages[p] + v_offset) + i * head_dim
 * Offsets are multiples of 64 so rows of a 64-byte-aligned page stay aligned. */
typedef struct kvd_kv_pages {
    const unsigned char *const *pages; /* block table, ceil(n / slots_per_page) pages */
    size_t slots_per_page;
    size_t head_dim;
    size_t k_offset;                   /* bytes from page start to K block [spp][head_dim] f32 */
    size_t v_offset;                   /* bytes from page start to V block [spp][head_dim] f32 */
} kvd_kv_pages;

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

/* Attention of `n_q` query heads that share one kv head (a GQA group) over the
 * first `n_visible` slots of `kv`:
 *   o[h] = sum_j softmax_j(scale * <q[h], k_j>) * v_j
 * computed in one pass with a running max (online softmax), f32 accumulation,
 * reading each key and value once for the whole group.
 *   q: [n_q][head_dim] f32, o: [n_q][head_dim] f32 (written; may not alias q).
 * n_visible == 0 writes zeros: a softmax over no tokens has no mass to spread. */
void kvd_attend_group_ref(const kvd_kv_pages *kv, size_t n_visible,
                          const float *q, size_t n_q, float scale, float *o);

/* Heavy-hitter scoring (H2O): adds to acc[j], for j < n_visible, the softmax
 * weight slot j receives from each of the n_q query heads (same scores as
 * kvd_attend_group_ref), summed over the heads. scratch: [n_visible] f32.
 * A second pass over the keys, paid only by sessions with eviction h2o. */
void kvd_attention_weights_ref(const kvd_kv_pages *kv, size_t n_visible, const float *q,
                               size_t n_q, float scale, float *scratch, float *acc);

/* The kernel table chosen once at start-up for this CPU (runtime dispatch). */
typedef struct kvd_attention_kernels {
    const char *name; /* "scalar", "avx2", "avx512" */
    void (*attend_group)(const kvd_kv_pages *kv, size_t n_visible,
                         const float *q, size_t n_q, float scale, float *o);
} kvd_attention_kernels;

/* Kernels for the running CPU; thread-safe, cheap after the first call. */
const kvd_attention_kernels *kvd_attention_kernels_get(void);

/* CPU features kvd detected and uses, e.g. "avx2 fma avx512f" (for /v1/info). */
const char *kvd_cpu_features(void);

#endif
