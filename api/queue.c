/* api/queue.c — each session's request queue (loop thread): jobs wait in
 * arrival order and run one at a time. Cheap jobs (delete, fork) run inline
 * when the queue reaches them, so they see whole steps; a step and a stats
 * request (O(tokens)) and a snapshot (O(bytes)) go to a worker through the server's submit. Completion is api/lifetime.c's. */
#include "api/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/json.h"
#include "cache/session.h"

void kvd__api_job_free(api_job *job)
{
    if (job->kind == JOB_BATCH)
        kvd__api_batch_release(job);
    if (job->parsed)
        kvd_step_request_free(&job->req);
    free(job->body);
    free(job->resp.body);
    free(job);
}

static void queue_push(api_session *s, api_job *job)
{
    kvd_fifo_push(&s->queue, &job->queue_link);
}

api_job *kvd__api_queue_pop(api_session *s)
{
    kvd_fifo_link *l = kvd_fifo_pop(&s->queue);
    return l ? kvd_container_of(l, api_job, queue_link) : NULL;
}

void kvd__api_answer_job(kvd_api *api, api_job *job)
{
    if (job->kind == JOB_BATCH) { /* its items' answers go into the batch's */
        kvd__api_batch_done(api, job);
        kvd__api_job_free(job);
        return;
    }
    kvd_response resp = job->resp;
    job->resp.body = NULL; /* ownership moves to the server */
    api->respond(job->reply, &resp);
    kvd__api_job_free(job);
}

/* Runs what the session's queue allows: cheap jobs inline, one step on a
 * worker. Frees a deleted session once its queue is empty. Loop thread. */
void kvd__api_session_pump(kvd_api *api, api_session *s)
{
    while (!s->running) {
        api_job *job = kvd__api_queue_pop(s);
        if (!job)
            break;
        kvd__api_json_oom_reset(); /* an inline job's answer is built from here */
        switch (job->kind) {
        case JOB_STEP:
        case JOB_BATCH:
            s->running = true;
            api->submit(api->executor, &job->base);
            return;
        case JOB_STATS:
        case JOB_SNAPSHOT:
            /* O(tokens) (a snapshot: O(bytes)) (the kept positions): on a worker in the session's
             * order, never on the loop thread. */
            s->running = true;
            api->submit(api->executor, &job->base);
            return;
        case JOB_DELETE: {
            size_t pages = kvd_session_pages(s->cache);
            cJSON *o = cJSON_CreateObject();
            if (o) {
                cJSON_AddStringToObject(o, "id", s->id);
                cJSON_AddBoolToObject(o, "deleted", 1);
                cJSON_AddNumberToObject(o, "pages_freed", (double)pages);
            }
            kvd__api_respond_cjson(&job->resp, 200, o);
            kvd__api_session_unaccount(s);
            kvd_session_destroy(s->cache, api->pool);
            kvd_session_destroy(s->shadow, api->pool);
            s->cache = NULL;
            s->shadow = NULL;
            kvd__api_answer_job(api, job);
            break;
        }
        case JOB_FORK: {
            /* Runs when the parent is idle, so its pages are whole steps;
             * the fork copies block tables, not pages (O(pages) on the loop),
             * except a subgen sketch's, which it copies whole. */
            kvd_session *child, *child_shadow = NULL;
            if (kvd__api_session_limit_reached(api, &job->resp)) {
                kvd__api_answer_job(api, job);
                break;
            }
            /* The child's heap, known before the fork; refused here, the
             * parent is untouched. */
            size_t need = kvd_session_fork_heap_bytes(s->cache);
            if (s->shadow)
                need += kvd_session_fork_heap_bytes(s->shadow);
            if (kvd__api_session_heap_refused(api, need + sizeof(api_session), &job->resp)) {
                kvd__api_answer_job(api, job);
                break;
            }
            int rc = kvd_session_fork(s->cache, api->pool, &child);
            if (rc == 0 && s->shadow && (rc = kvd_session_fork(s->shadow, api->pool, &child_shadow)) != 0)
                kvd_session_destroy(child, api->pool);
            if (rc == -ENOSPC) { /* a subgen sketch is copied: its pages come from the pool */
                kvd__api_respond_error(&job->resp, 503, KVD_ERR_EXHAUSTED, NULL,
                                       "the pool has too few free pages to copy the session's subgen sketch");
                kvd__api_answer_job(api, job);
                break;
            }
            if (rc != 0) {
                kvd__api_respond_error(&job->resp, 500, KVD_ERR_INTERNAL, NULL,
                                       "out of memory forking the session");
                kvd__api_answer_job(api, job);
                break;
            }
            api_session *c = kvd__api_session_register(api, child, child_shadow, &job->resp);
            if (c) {
                c->owner = s->owner; /* the forker: only the owner reaches the parent */
                c->shadow_stats = s->shadow_stats;
                kvd__api_respond_created(c, s->id, &job->resp);
                if (job->resp.status != 201) /* the 500 stands: no child lives */
                    kvd__api_session_drop(api, c);
            }
            kvd__api_answer_job(api, job);
            break;
        }
        }
    }
    if (s->deleted && !s->running && !s->queue.head)
        free(s);
}

bool kvd__api_enqueue_job(kvd_api *api, api_session *s, api_job *job, kvd_response *resp)
{
    if (s->queue.len >= api->opt.session_queue) {
        atomic_fetch_add_explicit(&api->stats.rejected_queue_full, 1, memory_order_relaxed);
        kvd__api_respond_error(resp, 429, KVD_ERR_BUSY, NULL,
                               "too many requests queued for this session; retry after the pending ones finish");
        return false;
    }
    job->base.api = api;
    atomic_store(&s->last_used_at, kvd__api_now(api));
    job->queued_at = kvd_clock_mono();
    queue_push(s, job);
    kvd__api_session_pump(api, s);
    return true;
}

/* Queues a job for the session (or 429s). Returns false if answered now. */
bool kvd__api_enqueue(kvd_api *api, api_session *s, api_job_kind kind,
                      kvd_api_request *req, void *reply, kvd_response *resp)
{
    if (s->queue.len >= api->opt.session_queue) {
        atomic_fetch_add_explicit(&api->stats.rejected_queue_full, 1, memory_order_relaxed);
        kvd__api_respond_error(resp, 429, KVD_ERR_BUSY, NULL,
                               "too many requests queued for this session; retry after the pending ones finish");
        return false;
    }
    api_job *job = calloc(1, sizeof *job);
    if (!job) {
        kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return false;
    }
    job->base.api = api;
    job->kind = kind;
    job->session = s;
    job->reply = reply;
    atomic_store(&s->last_used_at, kvd__api_now(api)); /* any request keeps it alive */
    if (kind == JOB_STEP) {
        /* The server's buffer itself, not a copy: held once while queued. */
        job->body = req->body;
        job->body_len = req->body_len;
        req->body = NULL;
    }
    job->queued_at = kvd_clock_mono();
    queue_push(s, job);
    kvd__api_session_pump(api, s);
    return true;
}

void kvd_api_job_run(kvd_api_job *base)
{
    api_job *job = (api_job *)base;
    kvd__api_json_oom_reset();
    if (job->kind == JOB_STATS) {
        char *json = kvd__api_session_stats_json(job->base.api, job->session);
        if (json)
            kvd__api_response_json(&job->resp, 200, json);
        else
            kvd__api_respond_error(&job->resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    if (job->kind == JOB_SNAPSHOT) {
        kvd__api_snapshot_run(job->base.api, job);
        return;
    }
    if (job->kind == JOB_BATCH) {
        kvd__api_batch_run(job->base.api, job);
        return;
    }
    kvd__api_step_run(job->base.api, job);
}
