/* api/instance.c — the kvd_api object: made from its options (pool, limits,
 * registry, the injected clock), destroyed with every session and queued
 * job, and the accessors the server reads. The rest of the API is split by
 * job: handlers, registry, queue, lifetime, response, step. */
#include "api/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/json.h"
#include "cache/pool.h"

/* Requests one session may have waiting before the next gets a 429. */
#define KVD_DEFAULT_SESSION_QUEUE 64

double kvd__api_now(const kvd_api *api)
{
    return api->opt.now ? api->opt.now(api->opt.now_ctx) : kvd_clock_unix();
}

int kvd_api_create(const kvd_api_options *opt, kvd_api_submit_fn submit, void *executor,
                   kvd_api_respond_fn respond, kvd_api **out)
{
    if (opt->id_prefix && opt->id_prefix[0] && !kvd_api_id_prefix_valid(opt->id_prefix))
        return -EINVAL;
    /* cJSON allocation failures become visible (api/json.h); before any
     * worker exists. */
    kvd__api_json_hooks_install();
    kvd_api *api = calloc(1, sizeof *api);
    if (!api)
        return -ENOMEM;
    api->opt = *opt;
    if (opt->id_prefix)
        strcpy(api->id_prefix, opt->id_prefix); /* length checked above */
    api->opt.id_prefix = api->id_prefix;
    if (!api->opt.session_queue)
        api->opt.session_queue = KVD_DEFAULT_SESSION_QUEUE;
    kvd_api_limits_default(&api->limits, opt->page_bytes);
    if (opt->session_ttl > 0)
        api->limits.default_ttl_seconds = opt->session_ttl;
    api->submit = submit;
    api->executor = executor;
    api->respond = respond;
    api->n_buckets = 64;
    api->buckets = calloc(api->n_buckets, sizeof *api->buckets);
    if (!api->buckets) {
        free(api);
        return -ENOMEM;
    }
    int rc = kvd_pool_create(opt->memory_bytes, opt->page_bytes, &api->pool);
    if (rc != 0) {
        free(api->buckets);
        free(api);
        return rc;
    }
    if (!api->opt.max_sessions) {
        /* --max-sessions 0 (the default): one session per pool page, at
         * least KVD_MIN_DEFAULT_SESSIONS — a session that holds nothing
         * still costs heap (its streams' tables), so the count is finite. */
        const size_t pages = kvd_pool_pages_total(api->pool);
        api->opt.max_sessions = pages < KVD_MIN_DEFAULT_SESSIONS ? KVD_MIN_DEFAULT_SESSIONS
                                : pages > UINT32_MAX           ? UINT32_MAX
                                                               : (uint32_t)pages;
    }
    if (!api->opt.max_session_heap) {
        /* --max-session-heap 0 (the default): a quarter of --memory, at
         * least KVD_MIN_SESSION_HEAP, so that sessions' bookkeeping can add
         * at most that much to the pool before creates are refused. */
        const size_t quarter = opt->memory_bytes / 4;
        api->opt.max_session_heap = quarter > KVD_MIN_SESSION_HEAP ? quarter : KVD_MIN_SESSION_HEAP;
    }
    *out = api;
    return 0;
}

void kvd_api_destroy(kvd_api *api)
{
    if (!api)
        return;
    for (size_t i = 0; i < api->n_buckets; i++) {
        api_session *s = api->buckets[i];
        while (s) {
            api_session *next = s->hash_next;
            api_job *job;
            while ((job = kvd__api_queue_pop(s)))
                kvd__api_job_free(job); /* never reached a worker: nothing to answer */
            kvd__api_session_free(api, s);
            s = next;
        }
    }
    free(api->buckets);
    free(api->sorted);
    kvd_pool_destroy(api->pool);
    free(api);
}

const kvd_pool *kvd_api_pool(const kvd_api *api)
{
    return api->pool;
}

const kvd_api_stats *kvd_api_stats_get(const kvd_api *api)
{
    return &api->stats;
}
