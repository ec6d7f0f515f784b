/* api/limits.h — hard limits on request shapes (each enforced with a 400
 * naming the field): the products bound the work and bookkeeping one request
 * can ask for; the body size limit (--max-body) bounds the rest. */
#ifndef KVD_API_LIMITS_H
#define KVD_API_LIMITS_H

#include <stddef.h>
#include <stdint.h>

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

/* Fills lim with the defaults above for a pool of page_bytes pages. */
void kvd_api_limits_default(kvd_api_limits *lim, size_t page_bytes);

#endif
