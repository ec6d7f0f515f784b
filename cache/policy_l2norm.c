/* cache/policy_l2norm.c — l2norm (Devoto et al. 2024; kvpress KnormPress):
 * evict the unprotected token whose key has the largest L2 norm, since
 * low-norm keys draw high attention. Ties go to the smaller position. */
#include "cache/policy.h"

/* The heap is a min-heap, so the largest norm needs the smallest key. The
 * norm was computed once at append (kvd_slot_meta.key_norm) and never
 * changes, so a key set at insertion stays exact. */
static double l2norm_key(const kvd_evict_index *ix, const kvd_slot_meta *meta, size_t slot)
{
    (void)ix;
    (void)slot;
    return -(double)meta->key_norm;
}

const kvd__policy kvd__policy_l2norm = {
    .name = "l2norm",
    .key = l2norm_key,
    .prepare = NULL,
    .has_scores = false,
};
