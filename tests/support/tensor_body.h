/* tests/support/tensor_body.h — step bodies for tensor-attention sessions
 * (DESIGN.md §3: "k1", "k2", "v1", "v2" instead of "k", "v"), in the same
 * wire form as kvd_data.h's step_body: JSON number arrays or "b64:" f32. */
#ifndef KVD_TEST_TENSOR_BODY_H
#define KVD_TEST_TENSOR_BODY_H

#include <stdbool.h>
#include <stddef.h>

#include "tests/support/kvd_data.h"

typedef struct tensor_step_spec {
    long layer;
    const float *k1, *k2, *v1, *v2; /* [m][kv_heads][head_dim] */
    size_t m;                       /* 0: the four fields are left out ("none") */
    const float *q;                 /* [m_q][heads][head_dim] */
    size_t m_q;
    const char *mask;               /* "causal", "block", or NULL for the server's default */
    bool b64;                       /* tensors as "b64:..." (an empty q is always []) */
} tensor_step_spec;

/* Appends {"layer":..,"k1":..,"k2":..,"v1":..,"v2":..,"q":..[,"mask":..]}. */
void sb_tensor_step_object(sbuf *b, const tensor_step_spec *s, size_t kv_row, size_t q_row);
/* A one-layer body; encoding NULL leaves "encoding" out. Caller frees. */
char *tensor_step_body(const tensor_step_spec *s, size_t kv_row, size_t q_row, const char *encoding);
/* A {"steps":[...]} body. Caller frees. */
char *tensor_steps_body(const tensor_step_spec *s, size_t n, size_t kv_row, size_t q_row, const char *encoding);

#endif
