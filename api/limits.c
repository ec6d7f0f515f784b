/* api/limits.c — the default shape and size limits of requests (the values
 * /v1/info reports); the server overrides the default ttl. */
#include "api/limits.h"

#define TTL_DEFAULT_SECONDS 600.0 /* DESIGN.md §3; the server's --session-ttl overrides */

void kvd_api_limits_default(kvd_api_limits *lim, size_t page_bytes)
{
    lim->max_layers = 1024;
    lim->max_heads = 1024;
    lim->max_head_dim = 4096;
    lim->max_streams = 65536;
    lim->max_step_tokens = (uint64_t)1 << 20;
    lim->max_steps_per_request = 4096;
    lim->page_bytes = page_bytes;
    lim->default_ttl_seconds = TTL_DEFAULT_SECONDS;
}
