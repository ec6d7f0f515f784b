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

static size_t div_up(size_t a, size_t b)
{
    return a / b + (a % b != 0);
}

/* Pages a stream holds after kvd__stream_truncate-style trims down to n
 * tokens: each trim keeps min(held, ceil(tokens / spp)), and the counts only
 * fall, so the last trim decides. */
static size_t kept_after_trim(const kvd_stream *st, size_t keep_pages)
{
    return st->n_pages < keep_pages ? st->n_pages : keep_pages;
}

/* KIVI (cache/stream_kivi.c): each evicted token is dropped from the f32
 * residual while it has any, else from the quantized part, and
 * kvd__stream_kivi_trim keeps div_up(nr, spp_r) residual pages and the
 * quantized pages the next settle fills. Both counts only fall over the
 * evictions and kvd__stream_kivi_settled is monotone in both, so the keeps
 * never rise: the final trim decides, as for a truncate. */
static size_t kivi_pages_freed(const kvd_stream *st, size_t evict)
{
    const kvd_stream *r = st->residual;
    const size_t nr = r->n_tokens - (evict < r->n_tokens ? evict : r->n_tokens);
    const size_t nq = st->n_tokens - evict - nr;
    const size_t keep_r = div_up(nr, r->slots_per_page);
    const size_t keep_q = div_up(kvd__stream_kivi_settled(st, nq, nr), st->slots_per_page);
    return (r->n_pages - kept_after_trim(r, keep_r)) + (st->n_pages - kept_after_trim(st, keep_q));
}

/* Pages kvd_stream_evict(st, pool, 0, ...) returns from a per-token stream
 * that shares nothing: as the token count falls from n to n - evict, each
 * time it reaches a multiple t of spp a page goes back if the stream holds
 * more than t / spp (cache/evict.c). Replayed over those multiples only. */
static size_t stream_pages_freed(const kvd_stream *st, size_t evict)
{
    const size_t n = st->n_tokens, left = n - evict, spp = st->slots_per_page;
    size_t pages = st->n_pages;
    if (evict == 0)
        return 0;
    for (size_t t = (n - 1) / spp * spp;; t -= spp) {
        if (t < left)
            break;
        if (pages > t / spp)
            pages--;
        if (t < spp)
            break;
    }
    return st->n_pages - pages;
}

/* The mirror (k2/v2) is cut one token per eviction of the stream it follows:
 * kvd__stream_kivi_drop_last for KIVI, kvd__stream_truncate otherwise. */
static size_t mirror_pages_freed(const kvd_stream *m, size_t evict)
{
    if (m->residual != NULL)
        return kivi_pages_freed(m, evict);
    return m->n_pages - kept_after_trim(m, div_up(m->n_tokens - evict, m->slots_per_page));
}

/* Pages evicting every evictable token of stream j gives back: its own, its
 * mirror's and its pair rows' (n'^2 of them). Exact, not a bound: every
 * formula above replays what the eviction code does to the page counts,
 * and none depends on which tokens go (only on how many: kvd_stream_evict
 * with target 0 takes all n_heap unprotected tokens, the heap's size does
 * not change under h2o's prepare, and without shared pages no unshare can
 * stop it early). */
static size_t stream_reclaim_pages(const kvd_session *s, size_t j)
{
    const kvd_stream *st = &s->streams[j];
    const size_t e = kvd_stream_evictable(st);
    if (e == 0)
        return 0; /* kvd_stream_evict returns at once; no pair rebuild */
    size_t pages = st->residual != NULL ? kivi_pages_freed(st, e) : stream_pages_freed(st, e);
    if (st->mirror != NULL)
        pages += mirror_pages_freed(st->mirror, e);
    if (s->pairs != NULL) {
        const size_t left = st->n_tokens - e;
        const kvd_stream *pr = &s->pairs[j];
        pages += pr->n_pages - kept_after_trim(pr, div_up(left * left, pr->slots_per_page));
    }
    return pages;
}

/* The kinds reclaim takes from at all. */
static bool reclaim_takes(const kvd_session *s)
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
    return !kvd_session_shared_pages(s); /* eviction could not copy a shared page it writes */
}

bool kvd_session_reclaimable(const kvd_session *s)
{
    if (!reclaim_takes(s))
        return false;
    /* Exactly kvd_session_reclaimable_pages(s) > 0, stopping at the first
     * stream that gives a page. Fewer than a page's worth of evictable
     * tokens can give one too (a partly filled last page, a mirror's page,
     * pair rows, which shrink by 2n - 1 per token). */
    for (size_t j = 0; j < s->n_streams; j++)
        if (stream_reclaim_pages(s, j) > 0)
            return true;
    return false;
}

size_t kvd_session_reclaimable_pages(const kvd_session *s)
{
    if (!reclaim_takes(s))
        return 0;
    size_t pages = 0;
    for (size_t j = 0; j < s->n_streams; j++)
        pages += stream_reclaim_pages(s, j);
    return pages;
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
