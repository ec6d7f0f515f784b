/* cache/reclaim.c — taking pages back from idle sessions under memory
 * pressure (cache/reclaim.h). */
#include "cache/reclaim.h"

#include "cache/evict.h"
#include "cache/stream.h"

bool kvd_session_reclaimable(const kvd_session *s)
{
    if (s->config.cache.eviction == KVD_EVICT_NONE)
        return false;
    for (size_t i = 0; i < s->n_streams; i++)
        if (s->streams[i].n_shared)
            return false;
    for (size_t i = 0; i < s->n_streams; i++)
        if (kvd_stream_evictable(&s->streams[i]) >= s->streams[i].slots_per_page)
            return true; /* at least one whole page would come free */
    return false;
}

uint64_t kvd_session_reclaim(kvd_session *s, kvd_pool *pool, size_t want_free)
{
    uint64_t evicted = 0;
    for (size_t j = 0; j < s->n_streams && kvd_pool_pages_free(pool) < want_free; j++) {
        size_t used = 0;
        evicted += kvd_stream_evict(&s->streams[j], pool, 0, NULL, 0, &used);
    }
    return evicted;
}
