/* api/step_body.h — the step body (POST /v1/sessions/{id}/step) as a typed,
 * validated kvd_step_request: one layer entry or a "steps" array, tensors
 * decoded to f32. Parsing validates the whole request against the session's
 * config before anything is returned, so a step can be applied knowing it is
 * well-formed; nothing here touches a session. */
#ifndef KVD_API_STEP_BODY_H
#define KVD_API_STEP_BODY_H

#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "api/errors.h"
#include "api/limits.h"
#include "api/wire.h"
#include "cache/session.h"

typedef enum { KVD_MASK_CAUSAL, KVD_MASK_BLOCK } kvd_mask;

/* One layer's step. Tensors are owned by the request (freed by
 * kvd_step_request_free). Shapes (row-major f32):
 *   k, v: [m][kv_heads][head_dim]      (standard; tensor: k1, v1, and k2, v2 alike)
 *   q:    [m_q][heads][head_dim]
 * mask: causal requires m_q <= m; query i then sees the cache plus new tokens
 * 0 .. m - m_q + i (the queries belong to the last m_q new tokens); block:
 * every query sees the cache plus all m new tokens. */
typedef struct kvd_step_layer {
    uint32_t layer;
    size_t m, m_q;
    float *k, *v;      /* standard: k, v; tensor: k1, v1 */
    float *k2, *v2;    /* tensor only: k2, v2 (NULL for standard sessions) */
    float *q;
    kvd_mask mask;
} kvd_step_layer;

typedef struct kvd_step_request {
    kvd_step_layer *layers;  /* in request order ("steps" array or one) */
    size_t n_layers;
    kvd_wire_encoding encoding; /* of the response tensors */
} kvd_step_request;

/* Parses and validates a step body against the session's config: shapes,
 * layer index, mask, finiteness, unknown fields. Either the body is one step
 * ({"layer", "k", "v", "q", "mask", "encoding"}) or {"steps": [...],
 * "encoding"}. Fields named in errors use the path, e.g. "steps[2].q".
 * Returns 0 (caller frees with kvd_step_request_free) or -1 with err. */
int kvd_step_request_parse(const cJSON *body, const kvd_session_config *cfg,
                           const kvd_api_limits *lim, kvd_step_request *req,
                           kvd_api_error *err);
void kvd_step_request_free(kvd_step_request *req);

#endif
