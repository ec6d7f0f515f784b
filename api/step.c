/* api/step.c — one step request, run on a worker: parse and validate the
 * whole body, take every page the step needs from the pool at once (or fail
 * with 503 and change nothing), append the new tokens, run attention for each
 * query, and render the response. The session is touched only after every
 * check and allocation that can fail has passed. */
#include "api/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "attention/attention.h"

/* Scratch a step needs before it may touch the session (all freed together). */
typedef struct step_plan {
    size_t *new_tokens;      /* [n_streams] tokens this request appends per stream */
    size_t *pages_needed;    /* [n_streams] */
    void **pages;            /* [total_pages] taken from the pool, not yet placed */
    size_t total_pages;
    float **outputs;         /* [n_layers] each [m_q][heads][head_dim] */
    size_t *tokens_after;    /* [n_layers] stream tokens after each entry */
} step_plan;

static void plan_free(step_plan *p, size_t n_layers)
{
    free(p->new_tokens);
    free(p->pages_needed);
    free(p->pages);
    if (p->outputs)
        for (size_t i = 0; i < n_layers; i++)
            free(p->outputs[i]);
    free(p->outputs);
    free(p->tokens_after);
}

static int fail(api_job *job, int status, const char *code, const char *msg)
{
    kvd_api_error err;
    kvd_api_error_set(&err, status, code, NULL, "%s", msg);
    kvd_response_error(&job->resp, &err);
    return -1;
}

/* Allocations first; then the pool, all or nothing. Returns 0, or -1 with the
 * job's response set (nothing in the session changed). */
static int plan_step(kvd_api *api, api_job *job, kvd_session *sess, const kvd_step_request *req,
                     step_plan *p)
{
    const kvd_session_config *cfg = &sess->config;
    memset(p, 0, sizeof *p);
    p->new_tokens = calloc(sess->n_streams, sizeof *p->new_tokens);
    p->pages_needed = calloc(sess->n_streams, sizeof *p->pages_needed);
    p->outputs = calloc(req->n_layers, sizeof *p->outputs);
    p->tokens_after = calloc(req->n_layers, sizeof *p->tokens_after);
    if (!p->new_tokens || !p->pages_needed || !p->outputs || !p->tokens_after)
        return fail(job, 500, KVD_ERR_INTERNAL, "out of memory planning the step");
    size_t q_row = (size_t)cfg->heads * cfg->head_dim;
    for (size_t i = 0; i < req->n_layers; i++) {
        const kvd_step_layer *st = &req->layers[i];
        for (uint32_t g = 0; g < cfg->kv_heads; g++)
            p->new_tokens[(size_t)st->layer * cfg->kv_heads + g] += st->m;
        if (st->m_q) {
            p->outputs[i] = malloc(st->m_q * q_row * sizeof(float));
            if (!p->outputs[i])
                return fail(job, 500, KVD_ERR_INTERNAL, "out of memory for the step output");
        }
    }
    /* Pages depend only on the final token count, so several entries for
     * one layer in "steps" need exactly pages_needed(stream, their sum). */
    for (size_t i = 0; i < sess->n_streams; i++) {
        if (!p->new_tokens[i])
            continue;
        p->pages_needed[i] = kvd_stream_pages_needed(&sess->streams[i], p->new_tokens[i]);
        if (kvd_stream_reserve_table(&sess->streams[i], p->pages_needed[i]) != 0)
            return fail(job, 500, KVD_ERR_INTERNAL, "out of memory growing a block table");
        p->total_pages += p->pages_needed[i];
    }
    if (p->total_pages) {
        p->pages = malloc(p->total_pages * sizeof *p->pages);
        if (!p->pages)
            return fail(job, 500, KVD_ERR_INTERNAL, "out of memory planning the step");
        if (kvd_pool_alloc(api->pool, p->total_pages, p->pages) != 0) {
            kvd_api_error err;
            kvd_api_error_set(&err, 503, KVD_ERR_EXHAUSTED, NULL,
                              "KV pool exhausted: this step needs %zu pages, %zu of %zu are free",
                              p->total_pages, kvd_pool_pages_free(api->pool),
                              kvd_pool_pages_total(api->pool));
            kvd_response_error(&job->resp, &err);
            free(p->pages);
            p->pages = NULL;
            job->pool_full = true;
            return -1;
        }
    }
    return 0;
}

/* Appends one layer's tokens to its kv_heads streams, using pages from the
 * plan's array at *cursor. Cannot fail. */
static void apply_append(kvd_api *api, kvd_session *sess, const kvd_step_layer *st, step_plan *p,
                         size_t *cursor)
{
    const kvd_session_config *cfg = &sess->config;
    size_t row = (size_t)cfg->kv_heads * cfg->head_dim;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        kvd_stream *s = kvd_session_stream(sess, st->layer, g);
        size_t need = kvd_stream_pages_needed(s, st->m);
        kvd_stream_append(s, api->pool, st->m, st->k + (size_t)g * cfg->head_dim,
                          st->v + (size_t)g * cfg->head_dim, row, p->pages + *cursor);
        *cursor += need;
    }
}

/* Attention for every query of one layer entry; n_before = stream tokens
 * before this entry's append. Query heads g*group .. g*group+group-1 share kv
 * head g and are adjacent in q, so one kernel call serves the group. */
static void apply_attention(kvd_session *sess, const kvd_step_layer *st, size_t n_before, float *o)
{
    const kvd_session_config *cfg = &sess->config;
    const kvd_attention_kernels *kern = kvd_attention_kernels_get();
    uint32_t group = cfg->heads / cfg->kv_heads;
    size_t d = cfg->head_dim;
    for (size_t i = 0; i < st->m_q; i++) {
        /* causal: query i belongs to new token m - m_q + i and sees it and
         * everything before; block: every query sees all m new tokens. */
        size_t visible = n_before + (st->mask == KVD_MASK_CAUSAL ? st->m - st->m_q + i + 1 : st->m);
        for (uint32_t g = 0; g < cfg->kv_heads; g++) {
            kvd_kv_pages view = kvd_stream_view(kvd_session_stream(sess, st->layer, g));
            size_t off = (i * cfg->heads + (size_t)g * group) * d;
            kern->attend_group(&view, visible, st->q + off, group, cfg->scale, o + off);
        }
    }
}

static cJSON *layer_result(const kvd_session *sess, const kvd_step_layer *st, const float *o,
                           size_t tokens, kvd_encoding enc)
{
    const kvd_session_config *cfg = &sess->config;
    cJSON *r = cJSON_CreateObject();
    cJSON *ot = kvd_tensor_encode(o, st->m_q * cfg->heads * cfg->head_dim, enc);
    if (!r || !ot) {
        cJSON_Delete(r);
        cJSON_Delete(ot);
        return NULL;
    }
    cJSON_AddItemToObject(r, "o", ot);
    cJSON_AddNumberToObject(r, "tokens", (double)tokens);
    cJSON_AddNumberToObject(r, "evicted", 0);
    return r;
}

void kvd_api_step_run(kvd_api *api, api_job *job)
{
    double t0 = kvd_api_now_mono();
    kvd_session *sess = job->session->cache;
    kvd_api_error err;
    cJSON *body = kvd_json_parse_object(job->body, job->body_len, &err);
    if (!body) {
        kvd_response_error(&job->resp, &err);
        return;
    }
    kvd_step_request req;
    bool multi = cJSON_GetObjectItemCaseSensitive(body, "steps") != NULL;
    int rc = kvd_step_request_parse(body, &sess->config, &api->limits, &req, &err);
    cJSON_Delete(body);
    free(job->body); /* may be 64 MiB: not kept while attention runs */
    job->body = NULL;
    if (rc != 0) {
        kvd_response_error(&job->resp, &err);
        return;
    }
    step_plan plan;
    if (plan_step(api, job, sess, &req, &plan) != 0) {
        plan_free(&plan, req.n_layers);
        kvd_step_request_free(&req);
        return;
    }

    /* From here on nothing can fail: the step is applied whole. */
    size_t cursor = 0;
    uint64_t tokens_in = 0;
    for (size_t i = 0; i < req.n_layers; i++) {
        const kvd_step_layer *st = &req.layers[i];
        size_t n_before = kvd_session_stream(sess, st->layer, 0)->n_tokens;
        if (st->m)
            apply_append(api, sess, st, &plan, &cursor);
        if (st->m_q)
            apply_attention(sess, st, n_before, plan.outputs[i]);
        plan.tokens_after[i] = kvd_session_stream(sess, st->layer, 0)->n_tokens;
        tokens_in += st->m;
    }
    job->applied = true;
    job->seconds = kvd_api_now_mono() - t0;

    /* Render. A failure here leaves the step applied and says so. */
    cJSON *out = NULL;
    if (multi) {
        out = cJSON_CreateObject();
        cJSON *arr = out ? cJSON_AddArrayToObject(out, "steps") : NULL;
        for (size_t i = 0; arr && i < req.n_layers; i++) {
            cJSON *r = layer_result(sess, &req.layers[i], plan.outputs[i], plan.tokens_after[i],
                                     req.encoding);
            if (!r) {
                cJSON_Delete(out);
                out = NULL;
                break;
            }
            cJSON_AddItemToArray(arr, r);
        }
    } else {
        out = layer_result(sess, &req.layers[0], plan.outputs[0], plan.tokens_after[0], req.encoding);
    }
    char *json = out ? cJSON_PrintUnformatted(out) : NULL;
    cJSON_Delete(out);
    if (json)
        kvd_response_json(&job->resp, 200, json);
    else
        fail(job, 500, KVD_ERR_INTERNAL, "out of memory rendering the output; the step was applied");

    api_session *s = job->session;
    atomic_fetch_add_explicit(&s->steps, 1, memory_order_relaxed);
    atomic_store(&s->last_used_at, kvd_api_now_unix());
    atomic_store(&s->last_step_seconds, job->seconds);
    atomic_store(&s->tokens_summary, kvd_session_tokens(sess));
    atomic_store(&s->pages_summary, kvd_session_pages(sess));
    atomic_fetch_add_explicit(&api->stats.steps, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&api->stats.step_tokens, tokens_in, memory_order_relaxed);
    kvd_histogram_observe(&api->stats.step_seconds, job->seconds);
    plan_free(&plan, req.n_layers);
    kvd_step_request_free(&req);
}
