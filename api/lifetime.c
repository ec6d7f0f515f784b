/* api/lifetime.c — how long sessions live and what a full pool does (loop
 * thread): TTL expiry by the API's clock, LRU reclaim under --on-full evict,
 * completing a worker's job (a step, or a batch item, retried once after a
 * reclaim), and readiness. */
#include "api/internal.h"

#include <stdlib.h>
#include <string.h>

#include "cache/pool.h"
#include "cache/reclaim.h"
#include "cache/session.h"

static bool session_idle(const api_session *s)
{
    return !s->running && !s->queue.head && !s->deleted;
}

static bool session_expired(const api_session *s, double now)
{
    return session_idle(s) && atomic_load(&s->last_used_at) + s->cache->config.ttl_seconds <= now;
}

size_t kvd_api_expire(kvd_api *api)
{
    const double now = kvd__api_now(api);
    size_t n = 0;
    for (size_t i = 0; i < api->n_buckets; i++) {
        api_session **p = &api->buckets[i];
        while (*p) {
            api_session *s = *p;
            if (!session_expired(s, now)) {
                p = &s->hash_next;
                continue;
            }
            *p = s->hash_next; /* unlink here: registry_remove would rescan */
            kvd__api_registry_unlist(api, s);
            api->n_sessions--;
            kvd__api_session_free(api, s);
            n++;
        }
    }
    if (n)
        atomic_fetch_add_explicit(&api->stats.sessions_expired, n, memory_order_relaxed);
    return n;
}

/* Could --on-full evict take tokens from this session? Idle, and the cache
 * says a page would come free (cache/reclaim.h). */
static bool session_reclaimable(const api_session *s)
{
    return session_idle(s) && kvd_session_reclaimable(s->cache);
}

static int cmp_lru(const void *a, const void *b)
{
    double x = atomic_load(&(*(api_session *const *)a)->last_used_at);
    double y = atomic_load(&(*(api_session *const *)b)->last_used_at);
    return (x > y) - (x < y);
}

/* Frees pool pages for a step that needs `need` (loop thread): expired
 * sessions first, then, with --on-full evict, tokens of the least recently
 * used idle sessions that have a policy, each stream down to its protected
 * sink + recent tokens, until enough pages are free; when all of them
 * together could not free enough, none loses a token. For a batch item
 * (batch != NULL) no session with an item in that batch loses tokens: its
 * items ran, or will run, against what it holds. Returns free pages. */
static size_t reclaim_pages(kvd_api *api, size_t need, const api_batch *batch)
{
    kvd_api_expire(api);
    size_t free_pages = kvd_pool_pages_free(api->pool);
    if (free_pages >= need || !api->opt.on_full_evict)
        return free_pages;
    api_session **lru = malloc((api->n_sessions ? api->n_sessions : 1) * sizeof *lru);
    if (!lru)
        return free_pages; /* the step gets its 503 */
    size_t n = 0;
    for (size_t i = 0; i < api->n_buckets; i++)
        for (api_session *s = api->buckets[i]; s; s = s->hash_next)
            if (session_reclaimable(s) && !kvd__api_batch_has_session(batch, s))
                lru[n++] = s;
    qsort(lru, n, sizeof *lru, cmp_lru);
    /* Take nothing unless it makes room (DESIGN.md §4: the step fails
     * whole): if every candidate reclaimed together could not free enough,
     * idle users keep their context and the step gets its 503. The count is
     * exact (cache/reclaim.h) and candidates share no page, so when it says
     * enough, evicting in LRU order gets there. */
    size_t can_free = free_pages;
    for (size_t i = 0; i < n && can_free < need; i++)
        can_free += kvd_session_reclaimable_pages(lru[i]->cache);
    if (can_free < need)
        n = 0;
    for (size_t i = 0; i < n && free_pages < need; i++) {
        kvd_session *c = lru[i]->cache;
        const uint64_t k = kvd_session_reclaim(c, api->pool, need);
        atomic_fetch_add_explicit(&api->stats.evictions[c->config.cache.eviction], k, memory_order_relaxed);
        atomic_fetch_add_explicit(&api->stats.reclaimed_tokens, k, memory_order_relaxed);
        free_pages = kvd_pool_pages_free(api->pool);
        kvd__api_session_summarize(lru[i]);
    }
    free(lru);
    return free_pages;
}

void kvd_api_job_done(kvd_api *api, kvd_api_job *base)
{
    api_job *job = (api_job *)base;
    api_session *s = job->session;
    if (job->kind == JOB_BATCH && job->pool_full) {
        /* A batch item found the pool full under --on-full evict and its job
         * stopped there (api/batch.c): reclaim, then the job runs on from
         * that item, which is retried once whatever the reclaim freed (the
         * item answers its own 503 if the pool is still full). The session
         * stays busy, so its later items still follow it in order. */
        job->pool_full = false;
        job->item_retried = true;
        reclaim_pages(api, job->need_pages, job->batch);
        api->submit(api->executor, &job->base);
        return;
    }
    if (job->pool_full && api->opt.on_full_evict && !job->retried &&
        reclaim_pages(api, job->need_pages, NULL) >= job->need_pages) {
        /* --on-full evict freed enough: run the same (parsed) step again.
         * The session stays busy, so nothing else of it runs in between. */
        job->retried = true;
        free(job->resp.body);
        memset(&job->resp, 0, sizeof job->resp);
        api->submit(api->executor, &job->base);
        return;
    }
    s->running = false;
    if (job->pool_full)
        atomic_fetch_add_explicit(&api->stats.rejected_pool_full, 1, memory_order_relaxed);
    kvd__api_answer_job(api, job);
    kvd__api_session_pump(api, s);
}

bool kvd_api_ready(const kvd_api *api)
{
    /* Exhausted = fewer than 1% of pages free (DESIGN.md §3, /readyz) and
     * nothing that a step could reclaim. */
    size_t total = kvd_pool_pages_total(api->pool);
    if (kvd_pool_pages_free(api->pool) * 100 >= total)
        return true;
    double now = kvd__api_now(api);
    for (size_t i = 0; i < api->n_buckets; i++)
        for (const api_session *s = api->buckets[i]; s; s = s->hash_next)
            if (session_expired(s, now) || (api->opt.on_full_evict && session_reclaimable(s)))
                return true;
    return false;
}
