/* api/batch.c — POST /v1/batch: step entries of many sessions in one request.
 * The loop thread parses the body once, answers items it can judge alone (not
 * an object, no such session, 429), and queues one JOB_BATCH per session
 * holding that session's items in request order; each runs on a worker like a
 * step, after the session's earlier requests. The batch answers when its last
 * job is done, every item in request order with its own status. Under
 * --on-full evict an item that finds the pool full stops its job: the loop
 * reclaims pages from idle sessions outside the batch (api/lifetime.c) and the
 * job runs on from that item, retried once, as a single step would be. */
#include "api/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/json.h"
#include "api/step_body.h"
#include "cache/step.h"

struct api_batch {
    void *reply;
    char *body;                /* the request's text: its b64 strings are decoded from it */
    kvd_json_doc doc;          /* the parsed body; each item read by its job only */
    const cJSON **item;        /* [n]: the items of "steps" */
    char **out;                /* [n]: each item's rendered answer (with "status") */
    size_t *out_len;           /* [n]: strlen(out[i]) once its job measured it, else 0 */
    bool *applied;             /* [n]: the item's step changed its session */
    char (*sessions)[KVD_SESSION_ID_MAX + 1]; /* [n_sessions]: the ids of the sessions
                                  with a job in the batch (never reclaimed for it) */
    size_t n_sessions;
    char *oom_answer;          /* [OOM_ANSWER_CAP(n)]: reserved before any item runs,
                                  for the 500 naming the applied items when the
                                  answer cannot be allocated (batch_render) */
    size_t n;
    size_t refs;               /* unfinished jobs + the handler while it builds (loop) */
    kvd_wire_encoding enc;
};

/* "{...}" -> "{\"status\":S,...}" (takes json). NULL on failure. */
static char *with_status(int status, char *json)
{
    if (!json || json[0] != '{') {
        free(json);
        return NULL;
    }
    const size_t len = strlen(json);
    char *s = malloc(len + 32);
    if (s) { /* the head formatted, the (long) rest copied */
        const int h = snprintf(s, 32, "{\"status\":%d%s", status, json[1] == '}' ? "" : ",");
        memcpy(s + h, json + 1, len); /* with its NUL */
    }
    free(json);
    return s;
}

static char *item_error(const kvd_api_error *err)
{
    size_t len;
    return with_status(err->status, kvd_api_error_json(err, &len));
}

static char *item_errorf(int status, const char *code, const char *field, const char *msg)
{
    kvd_api_error err;
    kvd_api_error_set(&err, status, code, field, "%s", msg);
    return item_error(&err);
}

static void batch_free(api_batch *b)
{
    for (size_t i = 0; b->out && i < b->n; i++) /* out is NULL if its calloc failed */
        free(b->out[i]);
    free(b->out);
    free(b->out_len);
    free(b->applied);
    free(b->sessions);
    free(b->oom_answer);
    free(b->item);
    kvd_json_doc_free(&b->doc);
    free(b->body);
    free(b);
}

#define OOM_ANSWER_HEAD \
    "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory rendering the batch's answer; " \
    "the steps of items [" /* indices */
#define OOM_ANSWER_TAIL "] were applied, the others changed nothing\"}}"
#define OOM_ANSWER_NONE \
    "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory rendering the batch's answer; " \
    "no item was applied\"}}"
/* Room for OOM_ANSWER_HEAD, n indices of up to 20 digits with commas, and
 * OOM_ANSWER_TAIL. */
#define OOM_ANSWER_CAP(n) (sizeof OOM_ANSWER_HEAD + sizeof OOM_ANSWER_TAIL + (n) * 21)
_Static_assert(sizeof OOM_ANSWER_NONE <= OOM_ANSWER_CAP(0), "the no-item answer fits the reserved buffer");

/* The whole answer could not be allocated after items ran: a 500 in the
 * reserved buffer that says which items' steps were applied, so a client
 * knows what its sessions hold (nothing allocated here). */
static void batch_oom_answer(api_batch *b, kvd_response *resp)
{
    char *p = b->oom_answer;
    p += sprintf(p, OOM_ANSWER_HEAD);
    bool first = true;
    for (size_t i = 0; i < b->n; i++)
        if (b->applied[i]) {
            p += sprintf(p, "%s%zu", first ? "" : ",", i);
            first = false;
        }
    if (first) /* none: no list to give (fits: shorter than the head) */
        strcpy(b->oom_answer, OOM_ANSWER_NONE);
    else
        strcpy(p, OOM_ANSWER_TAIL);
    kvd__api_response_json(resp, 500, b->oom_answer);
    b->oom_answer = NULL; /* the response owns it */
}

/* {"steps": [item, ...]} from the rendered items; a missing one (allocation
 * failed) is an item 500 written here, so every item has an answer that says
 * whether its step was applied. */
static void batch_render(api_batch *b, kvd_response *resp)
{
    static const char oom_item[] =
        "{\"status\":500,\"error\":{\"code\":\"internal\",\"message\":\"out of memory rendering this item\"}}";
    static const char oom_item_applied[] =
        "{\"status\":500,\"error\":{\"code\":\"internal\",\"message\":\"out of memory rendering this item; "
        "the step was applied\"}}";
    size_t len = sizeof "{\"steps\":[]}";
    for (size_t i = 0; i < b->n; i++) {
        if (b->out[i] && !b->out_len[i]) /* answered on the loop thread */
            b->out_len[i] = strlen(b->out[i]);
        len += (b->out[i] ? b->out_len[i] : sizeof oom_item_applied) + 1;
    }
    char *json = malloc(len);
    if (!json) {
        batch_oom_answer(b, resp);
        return;
    }
    char *p = json;
    p += sprintf(p, "{\"steps\":[");
    for (size_t i = 0; i < b->n; i++) {
        if (i)
            *p++ = ',';
        const char *s = b->out[i] ? b->out[i] : b->applied[i] ? oom_item_applied : oom_item;
        const size_t l = b->out[i] ? b->out_len[i] : strlen(s);
        memcpy(p, s, l);
        p += l;
    }
    strcpy(p, "]}");
    kvd__api_response_json(resp, 200, json);
}

/* Drops one reference; the last answers (reply != NULL) or just frees. */
static void batch_unref(kvd_api *api, api_batch *b, bool answer)
{
    if (--b->refs)
        return;
    if (answer) {
        kvd_response resp;
        memset(&resp, 0, sizeof resp);
        batch_render(b, &resp);
        api->respond(b->reply, &resp);
    }
    batch_free(b);
}

void kvd__api_batch_done(kvd_api *api, api_job *job)
{
    api_batch *b = job->batch;
    job->batch = NULL; /* kvd__api_job_free must not drop it again */
    batch_unref(api, b, true);
}

/* The tensors the parse decoded into the entry (as kvd_step_request_free). */
static void entry_free(kvd_step_entry *e)
{
    free((void *)e->k);
    free((void *)e->v);
    free((void *)e->k2);
    free((void *)e->v2);
    free((void *)e->q);
}

void kvd__api_batch_release(api_job *job)
{
    if (job->item_held) /* the batch ends before the item waiting for a reclaim ran */
        entry_free(&job->item_entry);
    job->item_held = false;
    free(job->items);
    job->items = NULL;
    if (job->batch)
        batch_unref(NULL, job->batch, false);
    job->batch = NULL;
}

bool kvd__api_batch_has_session(const api_batch *b, const api_session *s)
{
    for (size_t i = 0; b && i < b->n_sessions; i++)
        if (strcmp(b->sessions[i], s->id) == 0)
            return true;
    return false;
}

/* One item on its session: parse against the session's config, run, render.
 * Each item is a step of its own: a failed one changes nothing, and the
 * session's later items still run (as later single steps would). An item
 * the pool cannot hold under --on-full evict, not yet retried, is kept
 * parsed in the job and not answered: NULL with *wait set, and the loop
 * reclaims and runs it again (kvd_api_job_done). */
static char *run_item(kvd_api *api, api_job *job, size_t i, bool *wait)
{
    api_batch *b = job->batch;
    api_session *s = job->session;
    char prefix[48];
    snprintf(prefix, sizeof prefix, "steps[%zu].", i);
    kvd_step_entry entry;
    kvd_api_error err;
    kvd_histogram *phase = api->stats.phase_seconds;
    const double t0 = kvd_clock_mono();
    *wait = false;
    if (job->item_held) { /* parsed before the reclaim */
        entry = job->item_entry;
        job->item_held = false;
    } else if (kvd_step_entry_parse(&b->doc, b->item[i], prefix, &s->cache->config, &api->limits, &entry,
                                    &err) != 0) {
        entry_free(&entry);
        return item_error(&err);
    }
    kvd_step_output out;
    const double t1 = kvd_clock_mono();
    kvd_histogram_observe(&phase[KVD_PHASE_PARSE], t1 - t0);
    const int rc = kvd_step_run(s->cache, s->shadow, api->pool, &entry, 1, &out);
    const double t2 = kvd_clock_mono();
    kvd_histogram_observe(&phase[KVD_PHASE_ATTEND], t2 - t1);
    if (rc == KVD_STEP_POOL_FULL && api->opt.on_full_evict && !job->item_retried) {
        job->item_entry = entry;
        job->item_held = true;
        job->pool_full = true;
        job->need_pages = out.need_pages;
        *wait = true;
        return NULL;
    }
    char *json = NULL;
    if (rc != KVD_STEP_OK) { /* the engine's refusal; nothing changed */
        kvd__api_step_refusal(api, rc, &out, &err);
        if (rc == KVD_STEP_POOL_FULL)
            atomic_fetch_add_explicit(&api->stats.rejected_pool_full, 1, memory_order_relaxed);
        json = item_error(&err);
    } else {
        b->applied[i] = true;
        const double seconds = kvd_clock_mono() - t0;
        json = with_status(200, kvd__api_step_entry_text(&s->cache->config, &entry, &out.results[0], b->enc));
        kvd_histogram_observe(&phase[KVD_PHASE_RENDER], kvd_clock_mono() - t2);
        if (!json)
            json = item_errorf(500, KVD_ERR_INTERNAL, NULL,
                               "out of memory rendering the output; the step was applied");
        kvd__api_step_account(api, s, 1, &out, seconds);
        kvd_step_output_free(&out);
    }
    entry_free(&entry);
    return json;
}

void kvd__api_batch_run(kvd_api *api, api_job *job)
{
    job->pool_full = false;
    if (!job->item_retried) /* not a job resumed after a reclaim */
        kvd_histogram_observe(&api->stats.phase_seconds[KVD_PHASE_QUEUE], kvd_clock_mono() - job->queued_at);
    for (; job->next_item < job->n_items; job->next_item++) {
        const size_t i = job->items[job->next_item];
        bool wait;
        job->batch->out[i] = run_item(api, job, i, &wait);
        if (wait) /* the loop reclaims, then this item runs again */
            return;
        job->item_retried = false;
        if (job->batch->out[i]) /* measured here, on the worker: the render only copies */
            job->batch->out_len[i] = strlen(job->batch->out[i]);
    }
}

/* The body: {"steps": [...], "encoding"?}. Returns 0 or -1 with err. */
static int check_body(const kvd_api *api, const cJSON *root, const cJSON **steps, kvd_wire_encoding *enc,
                      kvd_api_error *err)
{
    *steps = NULL;
    *enc = KVD_WIRE_ENCODING_JSON;
    for (const cJSON *c = root->child; c; c = c->next) {
        const char *key = c->string ? c->string : "";
        if (strcmp(key, "steps") == 0 && !*steps) {
            *steps = c;
        } else if (strcmp(key, "encoding") == 0) {
            if (cJSON_IsString(c) && strcmp(c->valuestring, "json") == 0)
                *enc = KVD_WIRE_ENCODING_JSON;
            else if (cJSON_IsString(c) && strcmp(c->valuestring, "b64") == 0)
                *enc = KVD_WIRE_ENCODING_B64;
            else
                return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "encoding",
                                         "encoding: expected \"json\" or \"b64\"");
        } else {
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, key,
                                     "%.80s: %s (a batch is {\"steps\": [...], \"encoding\"})", key,
                                     strcmp(key, "steps") == 0 ? "duplicate field" : "unknown field");
        }
    }
    const int count = *steps && cJSON_IsArray(*steps) ? cJSON_GetArraySize(*steps) : -1;
    if (count <= 0 || (uint64_t)count > api->limits.max_steps_per_request)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "steps",
                                 "steps: expected an array of 1..%u step objects, each with a \"session\"",
                                 (unsigned)api->limits.max_steps_per_request);
    return 0;
}

/* Judges item i on the loop thread: its session (404 unless this key's) and
 * the fields only a batch item has. NULL with b->out[i] set if answered. */
static api_session *item_session(kvd_api *api, api_batch *b, size_t i, cJSON *item, uint32_t owner)
{
    char path[64];
    if (!cJSON_IsObject(item)) {
        snprintf(path, sizeof path, "steps[%zu]", i);
        b->out[i] = item_errorf(400, KVD_ERR_INVALID, path, "expected a step object with a \"session\"");
        return NULL;
    }
    const cJSON *sid = cJSON_GetObjectItemCaseSensitive(item, "session");
    snprintf(path, sizeof path, "steps[%zu].session", i);
    if (!cJSON_IsString(sid)) {
        b->out[i] = item_errorf(400, KVD_ERR_INVALID, path, "session: expected the session's id (a string)");
        return NULL;
    }
    for (const char *f = "steps"; f; f = strcmp(f, "steps") == 0 ? "encoding" : NULL)
        if (cJSON_GetObjectItemCaseSensitive(item, f)) {
            snprintf(path, sizeof path, "steps[%zu].%s", i, f);
            b->out[i] = item_errorf(400, KVD_ERR_INVALID, path,
                                    strcmp(f, "steps") == 0
                                        ? "a batch item is one step entry; \"steps\" is not allowed in it"
                                        : "encoding is set once for the whole batch, beside \"steps\"");
            return NULL;
        }
    api_session *s = kvd__api_registry_find(api, sid->valuestring);
    if (!s || s->owner != owner) { /* another key's session: as if none */
        b->out[i] = item_errorf(404, KVD_ERR_NOT_FOUND, path, "no such session");
        return NULL;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(item, "session"); /* the step parser knows no "session" */
    return s;
}

bool kvd__api_handle_batch(kvd_api *api, kvd_api_request *req, uint32_t owner, void *reply,
                           kvd_response *resp)
{
    kvd_api_error err;
    api_batch *b = calloc(1, sizeof *b);
    if (!b) {
        kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return true;
    }
    b->reply = reply;
    b->refs = 1;
    const cJSON *steps;
    if (!req->body) {
        kvd_api_error_set(&err, 400, KVD_ERR_INVALID, NULL, "a batch needs a body: {\"steps\": [...]}");
        goto refuse;
    }
    /* Tensor arrays decode straight to f32 (no cJSON node per number); b64
     * strings stay in the body, which the batch keeps until its items ran. */
    b->body = req->body;
    req->body = NULL;
    const double t0 = kvd_clock_mono();
    if (kvd_json_parse_step_text(b->body, req->body_len, kvd_step_body_max_values(&api->limits), &b->doc,
                                 &err) != 0)
        goto refuse;
    /* The body's parse (loop thread), once per batch; items add their own. */
    kvd_histogram_observe(&api->stats.phase_seconds[KVD_PHASE_PARSE], kvd_clock_mono() - t0);
    if (!cJSON_IsObject(b->doc.root)) {
        kvd_api_error_set(&err, 400, KVD_ERR_INVALID, NULL, "body must be a JSON object");
        goto refuse;
    }
    if (check_body(api, b->doc.root, &steps, &b->enc, &err) != 0)
        goto refuse;
    b->n = (size_t)cJSON_GetArraySize(steps);
    b->item = calloc(b->n, sizeof *b->item);
    b->out = calloc(b->n, sizeof *b->out);
    b->out_len = calloc(b->n, sizeof *b->out_len);
    b->applied = calloc(b->n, sizeof *b->applied);
    b->sessions = calloc(b->n, sizeof *b->sessions);
    b->oom_answer = malloc(OOM_ANSWER_CAP(b->n));
    api_job **jobs = calloc(b->n, sizeof *jobs); /* one per distinct session, in first-seen order */
    if (!b->item || !b->out || !b->out_len || !b->applied || !b->sessions || !b->oom_answer || !jobs) {
        free(jobs);
        kvd_api_error_set(&err, 500, KVD_ERR_INTERNAL, NULL, "out of memory for the batch");
        goto refuse;
    }
    size_t n_jobs = 0, i = 0;
    for (cJSON *it = steps->child; it; it = it->next, i++) {
        b->item[i] = it;
        api_session *s = item_session(api, b, i, it, owner);
        if (!s)
            continue;
        size_t j = 0;
        while (j < n_jobs && jobs[j]->session != s)
            j++;
        if (j == n_jobs) {
            api_job *job = calloc(1, sizeof *job);
            size_t *items = calloc(b->n, sizeof *items);
            if (!job || !items) {
                free(job);
                free(items);
                b->out[i] = NULL; /* rendered as an item 500 */
                continue;
            }
            job->kind = JOB_BATCH;
            job->session = s;
            job->items = items;
            jobs[n_jobs++] = job;
            strcpy(b->sessions[b->n_sessions++], s->id);
        }
        jobs[j]->items[jobs[j]->n_items++] = i;
    }
    /* Queued after everything judged: a job that completes at once (a
     * synchronous executor) cannot answer the batch while refs holds it. */
    for (size_t j = 0; j < n_jobs; j++) {
        api_job *job = jobs[j];
        job->batch = b;
        b->refs++;
        kvd_response busy;
        memset(&busy, 0, sizeof busy);
        if (!kvd__api_enqueue_job(api, job->session, job, &busy)) {
            for (size_t k = 0; k < job->n_items; k++)
                b->out[job->items[k]] = item_errorf(429, KVD_ERR_BUSY, NULL,
                                                    "too many requests queued for this session; retry "
                                                    "after the pending ones finish");
            free(busy.body);
            kvd__api_job_free(job); /* drops its reference */
        }
    }
    free(jobs);
    if (b->refs > 1) {
        b->refs--; /* the jobs answer it */
        return false;
    }
    batch_render(b, resp);
    batch_free(b);
    return true;

refuse:
    kvd_response_error(resp, &err);
    batch_free(b);
    return true;
}
