/* cache/reclaim.c — taking pages back from idle sessions under memory
 * pressure (cache/reclaim.h): evicting each stream down to its protected
 * tokens, with a tensor session's k2/v2 following as the mirror and a
 * two-cache's pair rows rebuilt for the tokens kept. */
#include "cache/reclaim.h"

#include <stdlib.h>

#include "cache/evict.h"
#include "cache/stream.h"

static bool is_kivi(const kvd_session_config *cfg)
{
    return cfg->cache.dtype == KVD_DTYPE_KIVI2 || cfg->cache.dtype == KVD_DTYPE_KIVI4;
}

bool kvd_session_reclaimable(const kvd_session *s)
{
    if (s->config.cache.eviction == KVD_EVICT_NONE)
        return false;
    /* subgen streams hold only their protected window already; sketching
     * it would need pages (clusters, samples), not free them. */
    if (s->subgen)
        return false;
    /* A KIVI two-cache rebuilds its pair rows by appending them anew into
     * the f32 residual and settling them (cache/step.c): pages that a full
     * pool does not have. Skipped, so it never loses tokens without them. */
    if (s->pairs && is_kivi(&s->config))
        return false;
    if (kvd_session_shared_pages(s))
        return false; /* eviction without pages could not copy a shared page it writes */
    for (size_t i = 0; i < s->n_streams; i++)
        if (kvd_stream_evictable(&s->streams[i]) >= s->streams[i].slots_per_page)
            return true; /* at least one whole page would come free */
    return false;
}

uint64_t kvd_session_reclaim(kvd_session *s, kvd_pool *pool, size_t want_free)
{
    float *pair_k = NULL, *pair_v = NULL;
    if (s->pairs) {
        /* Scratch for one token's 2t+1 pair rows, t < the most tokens any
         * stream keeps (eviction only shrinks): taken before anything is
         * evicted, so a failed malloc reclaims nothing rather than leaving
         * rows out of step. */
        size_t max_tokens = 1;
        for (size_t j = 0; j < s->n_streams; j++)
            if (s->streams[j].n_tokens > max_tokens)
                max_tokens = s->streams[j].n_tokens;
        const size_t bytes = 2 * max_tokens * s->config.head_dim * sizeof(float);
        pair_k = malloc(bytes);
        pair_v = malloc(bytes);
        if (!pair_k || !pair_v) {
            free(pair_k);
            free(pair_v);
            return 0;
        }
    }
    uint64_t evicted = 0;
    for (size_t j = 0; j < s->n_streams && kvd_pool_pages_free(pool) < want_free; j++) {
        size_t used = 0;
        const size_t k = kvd_stream_evict(&s->streams[j], pool, 0, NULL, 0, &used);
        if (k && s->pairs)
            kvd__session_rebuild_pairs(s, pool, j, pair_k, pair_v);
        evicted += k;
    }
    free(pair_k);
    free(pair_v);
    return evicted;
}
