/* api/request.h — typed, validated requests: the create body (a resolved
 * kvd_session_config) and the step body. Parsing validates the whole request
 * before anything is returned, so a handler can apply a step knowing it is
 * well-formed; nothing here touches a session. */
#ifndef KVD_API_REQUEST_H
#define KVD_API_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "api/errors.h"
#include "api/wire.h"
#include "cache/session.h"

/* Hard limits on shapes (each enforced with a 400 naming the field). The
 * products bound the work and bookkeeping one request can ask for; the body
 * size limit (--max-body) bounds the rest. */
typedef struct kvd_api_limits {
    uint32_t max_layers;          /* 1024 */
    uint32_t max_heads;           /* 1024 */
    uint32_t max_head_dim;        /* 4096, and one slot must fit in a page */
    uint64_t max_streams;         /* layers * kv_heads: 65536 */
    uint64_t max_step_tokens;     /* m and m_q per step: 1 << 20 */
    uint32_t max_steps_per_request; /* entries of "steps": 4096 */
    size_t page_bytes;            /* the pool's page size, for the slot-fits check */
    double default_ttl_seconds;   /* ttl_seconds when the create body has none (--session-ttl) */
} kvd_api_limits;

void kvd_api_limits_default(kvd_api_limits *lim, size_t page_bytes);

/* Parses and validates a create body. Unknown fields are a 400 naming the
 * field; values the server does not implement yet (e.g. dtype "int4") are a
 * 400 whose message says "not yet supported". On success fills *cfg with
 * every default resolved and returns 0; else -1 with err. The seed defaults to
 * a random value (so the resolved config shows the seed actually used). */
int kvd_session_config_parse(const cJSON *body, const kvd_api_limits *lim,
                             kvd_session_config *cfg, kvd_api_error *err);

/* The resolved config as JSON (same field names as the create body).
 * Caller owns the result; NULL on allocation failure. */
cJSON *kvd_session_config_to_json(const kvd_session_config *cfg);

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
    kvd_wire_encoding encoding;   /* of the response tensors */
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

/* Parses a JSON body with cJSON_ParseWithOpts (thread-safe error position;
 * a body that is not one complete JSON object is a 400 saying where).
 * Returns the object (caller cJSON_Deletes) or NULL with err. */
cJSON *kvd_json_parse_object(const char *body, size_t len, kvd_api_error *err);

#endif
