/* cache/policy_l2norm.c — l2norm (Devoto et al. 2024; kvpress KnormPress):
 * evict the unprotected token whose key has the largest L2 norm, since
 * low-norm keys draw high attention. Ties go to the smaller position. */
#include "cache/policy.h"

/* The heap is a min-heap, so the largest norm needs the smallest key. The
 * norm was computed once at append, in double from the f32 key as received
 * (before any quantization), kept in the index's score array, and never
 * changes, so a key set at insertion stays exact. */
static double l2norm_key(const kvd_evict_index *ix, size_t slot)
{
    return -ix->score[slot];
}

const kvd__policy kvd__policy_l2norm = {
    .name = "l2norm",
    .key = l2norm_key,
    .prepare = NULL,
    .scores = KVD__SCORE_NORM,
};
