/* tests/support/ref_attention.h — an exact reference for a whole standard-
 * attention session, written from DESIGN.md §3/§5 and sharing no code with
 * kvd: every appended key and value is kept in double per (layer, kv head),
 * and outputs are computed with a two-pass softmax in double. The server's
 * f32 answers are compared against it under a named tolerance. */
#ifndef KVD_TEST_REF_ATTENTION_H
#define KVD_TEST_REF_ATTENTION_H

#include <stddef.h>

typedef enum { REF_MASK_CAUSAL, REF_MASK_BLOCK } ref_mask;

typedef struct ref_session ref_session;

/* scale <= 0 means the default 1/sqrt(head_dim). Never returns NULL. */
ref_session *ref_session_new(size_t layers, size_t heads, size_t kv_heads, size_t head_dim, double scale);
void ref_session_free(ref_session *s);

/* The mask the server uses when the request names none: causal when
 * m_q == m, else block. */
ref_mask ref_default_mask(size_t m, size_t m_q);

/* Appends m tokens to `layer` (k, v: [m][kv_heads][head_dim], row-major f32)
 * and then computes o: [m_q][heads][head_dim] for q: [m_q][heads][head_dim].
 * Causal (requires m_q <= m): query i sees the cache before the step plus
 * new tokens 0 .. m - m_q + i. Block: every query sees the cache plus all m
 * new tokens. Query head h reads kv head h / (heads / kv_heads). A query that
 * sees no token gets zeros. Returns 0, or -1 for a causal step with m_q > m
 * (then nothing is appended). */
int ref_step(ref_session *s, size_t layer, const float *k, const float *v, size_t m, const float *q,
             size_t m_q, ref_mask mask, double *o);

/* Tokens cached per stream of `layer` (every kv head holds the same count:
 * no eviction). */
size_t ref_tokens(const ref_session *s, size_t layer);
/* Summed over all streams (layers * kv_heads), as session stats report. */
size_t ref_total_tokens(const ref_session *s);
/* Largest |v| appended so far (the scale of any output). */
double ref_max_abs_v(const ref_session *s);

/* Max |got - want| over n outputs. */
double ref_max_abs_diff(const float *got, const double *want, size_t n);

#endif
