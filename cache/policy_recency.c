/* cache/policy_recency.c — recency (StreamingLLM, Xiao et al. 2023): evict
 * the oldest unprotected token, so a stream keeps its sinks plus a sliding
 * window. The order is the heap's tie-break (position) alone. */
#include "cache/policy.h"

/* A constant key: every comparison falls through to position. Tokens become
 * candidates in position order, so each insertion is already in place and
 * only the O(log n) pop of a victim costs anything. */
static double recency_key(const kvd_evict_index *ix, size_t slot)
{
    (void)ix;
    (void)slot;
    return 0.0;
}

const kvd__policy kvd__policy_recency = {
    .name = "recency",
    .key = recency_key,
    .prepare = NULL,
    .scores = KVD__SCORE_NONE,
};
