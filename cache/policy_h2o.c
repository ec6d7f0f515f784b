/* cache/policy_h2o.c — h2o (Zhang et al. 2023, heavy hitters): each slot
 * accumulates the softmax weight it receives (summed over the query heads of
 * its group, over queries and steps); evict the unprotected slot with the
 * smallest sum, ties to the smaller position. Owns the per-slot scores. */
#include <assert.h>

#include "cache/evict.h"
#include "cache/policy.h"

/* Victims are chosen from a heap rebuilt lazily: adding weights changes
 * every score, so it only marks the heap keys stale, and the first eviction
 * after that refreshes all keys and re-heapifies in O(n). A step pays O(n)
 * for that once, the same as one linear scan (and far below the O(n d) its
 * attention and weights already cost), but a step that evicts k tokens pays
 * O(n + k log n) instead of the O(k n) of a scan per victim. */
static void h2o_prepare(kvd_evict_index *ix)
{
    if (!ix->stale)
        return;
    for (size_t i = 0; i < ix->n_heap; i++)
        ix->heap[i].key = ix->score[ix->heap[i].slot];
    kvd__evict_heapify(ix);
    ix->stale = false;
}

static double h2o_key(const kvd_evict_index *ix, size_t slot)
{
    return ix->score[slot];
}

const kvd__policy kvd__policy_h2o = {
    .name = "h2o",
    .key = h2o_key,
    .prepare = h2o_prepare,
    .scores = KVD__SCORE_WEIGHTS,
};

void kvd_stream_add_weights(kvd_stream *s, const float *w, size_t n)
{
    kvd_evict_index *ix = s->evict;
    if (ix == NULL || ix->policy->scores != KVD__SCORE_WEIGHTS || n == 0)
        return;
    assert(n <= s->n_tokens);
    /* Double sums: a heavy hitter gains up to n_q per step while a cold
     * token gains ~1/n; in f32 (24-bit mantissa) an addition below 2^-24 of
     * the sum is lost, which long decodes at large n would reach. */
    for (size_t j = 0; j < n; j++)
        ix->score[j] += (double)w[j];
    ix->stale = true;
}
