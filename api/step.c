/* api/step.c — a step request on a worker: parse and validate the body
 * (once, even if the step is retried after reclaiming pages), run it on the
 * cache's step engine (cache/step.h), account its steps, evictions and
 * shadow error, and render the response. The engine either applies the whole
 * step or changes nothing; this file only translates. */
#include "api/internal.h"

#include <stdlib.h>

#include "api/json.h"
#include "api/step_body.h"
#include "api/wire.h"
#include "cache/step.h"

static void fail(api_job *job, int status, const char *code, const char *msg)
{
    kvd_api_error err;
    kvd_api_error_set(&err, status, code, NULL, "%s", msg);
    kvd_response_error(&job->resp, &err);
}

/* Parses the body unless a retry (after reclaiming pages) already did. */
static int parse_once(kvd_api *api, api_job *job, const kvd_session *sess)
{
    if (job->parsed)
        return 0;
    kvd_api_error err;
    /* Parsed from the text in place: number arrays go straight to f32
     * (kvd_step_request_parse_text bounds the parse to ~2x the body). */
    int rc = kvd_step_request_parse_text(job->body, job->body_len, &sess->config, &api->limits,
                                         &job->req, &job->multi, &err);
    free(job->body); /* may be 64 MiB: not kept while attention runs */
    job->body = NULL;
    if (rc != 0) {
        kvd_response_error(&job->resp, &err);
        return -1;
    }
    job->parsed = true;
    return 0;
}

void kvd__api_step_refusal(const kvd_api *api, int rc, const kvd_step_output *out, kvd_api_error *err)
{
    const size_t total = kvd_pool_pages_total(api->pool), need = out->need_pages;
    if (rc == KVD_STEP_NOMEM) {
        kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, NULL, "out of memory planning the step");
    } else if (rc == KVD_STEP_TOO_BIG && out->row_pages) {
        /* the bound of cache/plan.c plan_tensor_rows: the copy grows with n */
        kvd_api_error_set(err, 413, KVD_ERR_TOO_LARGE, NULL,
                          "this step needs %zu pages of %zu bytes, more than the %zu pages the whole pool "
                          "has: %zu of them are the f32 copy of the rows this quantized four-cache tensor "
                          "session attends over (4 x tokens x head_dim floats per kv head, held while the "
                          "step runs), too large for --memory at this session's length",
                          need, api->opt.page_bytes, total, out->row_pages);
    } else if (rc == KVD_STEP_TOO_BIG) {
        kvd_api_error_set(err, 413, KVD_ERR_TOO_LARGE, NULL,
                          "this step needs %zu pages of %zu bytes, more than the %zu pages the whole pool "
                          "has: send fewer tokens per request",
                          need, api->opt.page_bytes, total);
    } else if (out->row_pages) {
        kvd_api_error_set(err, 503, KVD_ERR_EXHAUSTED, NULL,
                          "KV pool exhausted: this step needs up to %zu pages, %zu of %zu are free (%zu of "
                          "them for the f32 copy of the tensor rows it attends over, held while it runs)",
                          need, kvd_pool_pages_free(api->pool), total, out->row_pages);
    } else {
        kvd_api_error_set(err, 503, KVD_ERR_EXHAUSTED, NULL,
                          "KV pool exhausted: this step needs up to %zu pages, %zu of %zu are free", need,
                          kvd_pool_pages_free(api->pool), total);
    }
}

/* The engine's refusal as the API's answer; nothing changed. A step that
 * needs more pages than the whole pool has can never succeed: 413 with both
 * counts and no Retry-After, not counted as rejected for a full pool (no
 * reclaim is tried for it). One that fits the pool but not its free pages is
 * a 503 with Retry-After, and --on-full evict may reclaim and retry it. */
static void refuse(kvd_api *api, api_job *job, int rc, const kvd_step_output *out)
{
    kvd_api_error err;
    kvd__api_step_refusal(api, rc, out, &err);
    kvd_response_error(&job->resp, &err);
    if (rc == KVD_STEP_POOL_FULL) {
        job->pool_full = true;
        job->need_pages = out->need_pages;
    }
}

/* Shadow mode's account (DESIGN.md §3): one observation per entry with
 * queries, its relative error against the exact copy. */
static void shadow_account(kvd_api *api, api_session *s, const kvd_step_output *out)
{
    api_shadow_stats *st = &s->shadow_stats;
    for (size_t i = 0; i < out->n_results; i++) {
        const kvd_step_result *r = &out->results[i];
        if (!r->has_shadow)
            continue;
        st->steps++;
        st->last_relative_error = r->relative_error;
        st->sum_relative_error += r->relative_error;
        if (r->max_abs_error > st->max_abs_error)
            st->max_abs_error = r->max_abs_error;
        kvd_histogram_observe_value(&api->stats.shadow_relative_error, kvd_shadow_error_bounds,
                                    r->relative_error);
    }
}

/* {"o", "tokens", "evicted"} of one entry, with "shadow" when measured,
 * written straight into the response text (no cJSON tree: the output
 * tensor's numbers are formatted once each, b64 encoded in place). */
static void entry_json(kvd_wire_buf *b, const kvd_session_config *cfg, const kvd_step_entry *e,
                       const kvd_step_result *r, kvd_wire_encoding enc)
{
    kvd_wire_buf_put(b, "{\"o\":", 5);
    kvd_wire_buf_tensor(b, r->o, e->m_q * cfg->heads * cfg->head_dim, enc);
    if (r->lse) { /* [m_q][heads]; JSON has no -inf: null there (b64 keeps -inf) */
        kvd_wire_buf_put(b, ",\"lse\":", 7);
        kvd_wire_buf_tensor(b, r->lse, e->m_q * cfg->heads, enc);
    }
    kvd_wire_buf_put(b, ",\"tokens\":", 10);
    kvd_wire_buf_size(b, r->tokens);
    kvd_wire_buf_put(b, ",\"evicted\":", 11);
    kvd_wire_buf_size(b, r->evicted);
    if (r->has_shadow) {
        kvd_wire_buf_puts(b, ",\"shadow\":{\"relative_error\":");
        kvd_wire_buf_double(b, r->relative_error);
        kvd_wire_buf_puts(b, ",\"max_abs_error\":");
        kvd_wire_buf_double(b, r->max_abs_error);
        kvd_wire_buf_put(b, "}", 1);
    }
    kvd_wire_buf_put(b, "}", 1);
}

char *kvd__api_step_entry_text(const kvd_session_config *cfg, const kvd_step_entry *e, const kvd_step_result *r,
                               kvd_wire_encoding enc)
{
    kvd_wire_buf b = {0};
    entry_json(&b, cfg, e, r, enc);
    if (b.failed) {
        kvd_wire_buf_free(&b);
        return NULL;
    }
    return b.p;
}

/* One entry's object, or {"steps": [...]} when the body used "steps".
 * Returns the malloc'd text, or NULL when an allocation failed. */
static char *render(const kvd_session_config *cfg, const kvd_step_request *req, bool multi,
                    const kvd_step_output *out)
{
    kvd_wire_buf b = {0};
    if (!multi) {
        entry_json(&b, cfg, &req->entries[0], &out->results[0], req->encoding);
    } else {
        kvd_wire_buf_put(&b, "{\"steps\":[", 10);
        for (size_t i = 0; i < req->n_entries; i++) {
            if (i)
                kvd_wire_buf_put(&b, ",", 1);
            entry_json(&b, cfg, &req->entries[i], &out->results[i], req->encoding);
        }
        kvd_wire_buf_put(&b, "]}", 2);
    }
    if (b.failed) {
        kvd_wire_buf_free(&b);
        return NULL;
    }
    return b.p;
}

void kvd__api_step_account(kvd_api *api, api_session *s, size_t n_entries, const kvd_step_output *out,
                           double seconds)
{
    const kvd_session_config *cfg = &s->cache->config;
    if (s->shadow)
        shadow_account(api, s, out);
    /* A step is one layer entry (DESIGN.md §1): a request of n entries counts n. */
    atomic_fetch_add_explicit(&s->steps, n_entries, memory_order_relaxed);
    atomic_store(&s->last_used_at, kvd__api_now(api));
    atomic_store(&s->last_step_seconds, seconds);
    kvd__api_session_summarize(s);
    atomic_fetch_add_explicit(&api->stats.steps, n_entries, memory_order_relaxed);
    atomic_fetch_add_explicit(&api->stats.step_tokens, out->tokens_in, memory_order_relaxed);
    atomic_fetch_add_explicit(&api->stats.tensor_row_pages, out->row_pages, memory_order_relaxed);
    atomic_fetch_add_explicit(&api->stats.evictions[cfg->cache.eviction], out->evicted_total,
                              memory_order_relaxed);
    kvd_histogram_observe(&api->stats.step_seconds[cfg->attention], seconds);
}

void kvd__api_step_run(kvd_api *api, api_job *job)
{
    const double t0 = kvd_clock_mono();
    api_session *s = job->session;
    kvd_session *sess = s->cache;
    job->pool_full = false;
    kvd_histogram *phase = api->stats.phase_seconds;
    if (!job->parsed)
        kvd_histogram_observe(&phase[KVD_PHASE_QUEUE], t0 - job->queued_at);
    if (parse_once(api, job, sess) != 0)
        return;
    const kvd_step_request *req = &job->req;
    kvd_step_output out;
    const double t1 = kvd_clock_mono();
    kvd_histogram_observe(&phase[KVD_PHASE_PARSE], t1 - t0);
    int rc = kvd_step_run_parallel(sess, s->shadow, api->pool, req->entries, req->n_entries, api->opt.parallel,
                                   &out);
    const double t2 = kvd_clock_mono();
    kvd_histogram_observe(&phase[KVD_PHASE_ATTEND], t2 - t1);
    if (rc != KVD_STEP_OK) {
        refuse(api, job, rc, &out);
        return;
    }
    job->applied = true;
    job->seconds = kvd_clock_mono() - t0;
    const kvd_session_config *cfg = &sess->config;

    /* Render. A failure here leaves the step applied and says so. */
    char *json = render(cfg, req, job->multi, &out);
    kvd_histogram_observe(&phase[KVD_PHASE_RENDER], kvd_clock_mono() - t2);
    if (json)
        kvd__api_response_json(&job->resp, 200, json);
    else
        fail(job, 500, KVD_ERR_INTERNAL, "out of memory rendering the output; the step was applied");

    kvd__api_step_account(api, s, req->n_entries, &out, job->seconds);
    kvd_step_output_free(&out);
}
