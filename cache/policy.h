/* cache/policy.h — private to cache/: the eviction index that the mechanism
 * (evict.c) maintains and the hooks each policy (policy_*.c) provides. The
 * mechanism owns membership (which tokens are candidates, where each slot is);
 * a policy owns only the order among candidates (its key) and any per-slot
 * state that order needs (h2o's scores). */
#ifndef KVD_CACHE_POLICY_H
#define KVD_CACHE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/stream.h"

#define KVD__NOT_IN_HEAP SIZE_MAX /* heap_pos of a protected slot */

/* One candidate. The heap orders by (key, position), smallest first; `slot`
 * never takes part in the order, so moving a token to another slot only
 * rewrites `slot` and the back-pointer, never the heap shape. */
typedef struct kvd__evict_entry {
    double key;        /* policy's key: smaller is evicted first */
    int64_t position;  /* ties: the smaller (older) position first, as evict.h says */
    size_t slot;       /* where the token is now */
} kvd__evict_entry;

/* What the index's per-slot `score` array holds for a policy. */
typedef enum kvd__score_kind {
    KVD__SCORE_NONE,    /* no array (recency) */
    KVD__SCORE_WEIGHTS, /* accumulated softmax weight, 0 at append (h2o) */
    KVD__SCORE_NORM,    /* the key's L2 norm, set at append (l2norm) */
} kvd__score_kind;

typedef struct kvd__policy {
    const char *name;
    /* Key of the token in `slot` at the moment it becomes a candidate. */
    double (*key)(const kvd_evict_index *ix, size_t slot);
    /* Called before victims are chosen (NULL: nothing to do); h2o refreshes
     * keys that went stale when weights were added. */
    void (*prepare)(kvd_evict_index *ix);
    kvd__score_kind scores;
} kvd__policy;

struct kvd_evict_index {
    const kvd__policy *policy;
    uint32_t sink, recent;
    size_t cap;                /* slots the per-slot arrays and the heap hold */
    size_t *heap_pos;          /* [cap] slot -> index in heap, KVD__NOT_IN_HEAP if protected */
    /* [cap] per slot, moved with its token: h2o the softmax weight it has
     * accumulated, l2norm its key's norm (8 bytes a token paid only by
     * sessions with that policy, not by every page); recency NULL */
    double *score;
    kvd__evict_entry *heap;    /* [cap] binary min-heap of every unprotected token */
    size_t n_heap;
    /* The newest min(recent, appended) tokens (all present: they are never
     * evicted), oldest first, as a circular buffer of slots: position
     * appended - ring_n + i is in ring[(ring_head + i) % ring_cap]. */
    size_t *ring;              /* [ring_cap], ring_cap = min(recent, cap) */
    size_t ring_cap, ring_head, ring_n;
    bool stale;                /* h2o: scores changed since heap keys were set */
};

extern const kvd__policy kvd__policy_recency;
extern const kvd__policy kvd__policy_l2norm;
extern const kvd__policy kvd__policy_h2o;

/* Restores the heap order over heap[0..n_heap) in O(n_heap) (bottom-up). */
void kvd__evict_heapify(kvd_evict_index *ix);

#endif
