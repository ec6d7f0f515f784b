/* api/snapshot.c — GET /v1/sessions/{id}/snapshot (a job in the session's
 * queue, run on a worker: O(bytes) and it sees whole steps) and POST
 * /v1/sessions/restore (checked whole before anything is taken; keeps the
 * id, 409 if it is in use); plus what --state-dir needs: every session as
 * snapshot bytes, and a restore that keeps the owner (by key digest). The
 * bytes are cache/snapshot.c's format. */
#include "api/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/auth.h"
#include "api/create_body.h"
#include "cache/pool.h"
#include "cache/snapshot.h"

_Static_assert(KVD_SESSION_ID_MAX <= KVD_SNAPSHOT_ID_MAX, "a session id fits a snapshot");
_Static_assert(KVD_SHA256_BYTES == sizeof(((kvd_snapshot_meta *)0)->owner_digest), "owner digest size");

static void meta_of(const kvd_api *api, const api_session *s, kvd_snapshot_meta *m, bool with_owner)
{
    memset(m, 0, sizeof *m);
    snprintf(m->id, sizeof m->id, "%s", s->id);
    const kvd_auth_keys *keys = api->opt.keys;
    if (with_owner && keys && s->owner >= 1 && s->owner <= keys->n)
        memcpy(m->owner_digest, keys->digest[s->owner - 1], sizeof m->owner_digest);
    m->created_at = s->created_at;
    m->last_used_at = atomic_load(&s->last_used_at);
    m->steps = atomic_load(&s->steps);
    m->shadow_steps = s->shadow_stats.steps;
    m->shadow_last_rel = s->shadow_stats.last_relative_error;
    m->shadow_sum_rel = s->shadow_stats.sum_relative_error;
    m->shadow_max_abs = s->shadow_stats.max_abs_error;
}

void kvd__api_snapshot_run(kvd_api *api, api_job *job)
{
    const api_session *s = job->session;
    kvd_snapshot_meta m;
    /* Over HTTP the owner's key digest stays out: the restoring key owns it. */
    meta_of(api, s, &m, false);
    void *bytes;
    size_t len;
    const int rc = kvd_session_snapshot(s->cache, s->shadow, &m, api->opt.page_bytes, &bytes, &len);
    if (rc == -ENOTSUP) {
        kvd__api_respond_error(&job->resp, 501, "unimplemented", NULL,
                               "snapshots of this eviction kind are not supported by this snapshot format");
        return;
    }
    if (rc != 0) {
        kvd__api_respond_error(&job->resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory writing the snapshot");
        return;
    }
    job->resp.status = 200;
    job->resp.content_type = "application/octet-stream";
    job->resp.body = bytes;
    job->resp.body_len = len;
}

/* An id this server could have made: 32 lowercase hex, optionally after
 * "<prefix>-" (the registry hashes the last 32 characters). */
static bool id_ok(const char *id)
{
    const size_t len = strlen(id);
    if (len < KVD_SESSION_ID_HEX || len > KVD_SESSION_ID_MAX)
        return false;
    for (size_t i = len - KVD_SESSION_ID_HEX; i < len; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return false;
    if (len == KVD_SESSION_ID_HEX)
        return true;
    char prefix[KVD_SESSION_ID_MAX + 1];
    const size_t plen = len - KVD_SESSION_ID_HEX - 1;
    if (id[plen] != '-')
        return false;
    memcpy(prefix, id, plen);
    prefix[plen] = '\0';
    return kvd_api_id_prefix_valid(prefix);
}

/* Restores bytes as a session owned by `owner` (or, with by_digest, by the
 * key whose digest the snapshot carries). Returns the new session, or NULL
 * with resp holding the error; nothing changed then. */
static api_session *restore(kvd_api *api, const void *bytes, size_t len, uint32_t owner, bool by_digest,
                            kvd_response *resp)
{
    kvd_api_error err;
    kvd_snapshot_meta m;
    kvd_session_config cfg;
    int rc = kvd_snapshot_peek(bytes, len, &m, &cfg);
    if (rc != 0) {
        kvd_api_error_set(&err, 400, KVD_ERR_INVALID, NULL, "snapshot refused: %s", kvd_snapshot_strerror(rc));
        kvd_response_error(resp, &err);
        return NULL;
    }
    if (!id_ok(m.id)) {
        kvd__api_respond_error(resp, 400, KVD_ERR_INVALID, "id", "snapshot refused: its id is not a kvd session id");
        return NULL;
    }
    /* The config must pass this server's limits as a create body would. */
    cJSON *j = kvd_session_config_to_json(&cfg);
    /* The seed goes out as a raw number token, which a parse of the tree
     * does not read back; it has no limit to check. */
    cJSON_DeleteItemFromObjectCaseSensitive(j, "seed");
    kvd_session_config again;
    rc = j ? kvd_session_config_parse(j, &api->limits, &again, &err) : -1;
    cJSON_Delete(j);
    if (!j) {
        kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return NULL;
    }
    if (rc != 0) {
        char msg[sizeof err.message - 32], field[sizeof err.field];
        snprintf(msg, sizeof msg, "%.300s", err.message);
        snprintf(field, sizeof field, "%s", err.field);
        kvd_api_error_set(&err, 400, KVD_ERR_INVALID, field[0] ? field : NULL,
                          "snapshot refused: its config %s", msg);
        kvd_response_error(resp, &err);
        return NULL;
    }
    if (by_digest) {
        static const uint8_t zero[KVD_SHA256_BYTES];
        const kvd_auth_keys *keys = api->opt.keys;
        owner = KVD_OWNER_ANON;
        if (keys && keys->n) {
            owner = KVD_OWNER_DENIED;
            for (size_t i = 0; i < keys->n; i++)
                if (memcmp(keys->digest[i], m.owner_digest, KVD_SHA256_BYTES) == 0)
                    owner = (uint32_t)(i + 1);
            if (owner == KVD_OWNER_DENIED || memcmp(m.owner_digest, zero, sizeof zero) == 0) {
                kvd__api_respond_error(resp, 400, KVD_ERR_INVALID, NULL,
                                       "snapshot refused: its owner's API key is not configured");
                return NULL;
            }
        }
    }
    if (kvd__api_registry_find(api, m.id)) {
        kvd__api_respond_error(resp, 409, KVD_ERR_CONFLICT, "id", "a session with this id exists");
        return NULL;
    }
    if (kvd__api_session_limit_reached(api, resp))
        return NULL;
    size_t need = sizeof(api_session) + kvd_session_heap_bytes_new(&cfg);
    if (cfg.shadow) {
        const kvd_session_config exact = kvd_session_shadow_config(&cfg);
        need += kvd_session_heap_bytes_new(&exact);
    }
    if (kvd__api_session_heap_refused(api, need, resp))
        return NULL;
    kvd_session *cache, *shadow;
    rc = kvd_session_restore(bytes, len, api->pool, NULL, &cache, &shadow);
    if (rc == KVD_SNAPSHOT_ENOSPC) {
        kvd_api_error_set(&err, 503, KVD_ERR_EXHAUSTED, NULL,
                          "KV pool exhausted: restoring this snapshot needs more pages than the %zu free",
                          kvd_pool_pages_free(api->pool));
        kvd_response_error(resp, &err);
        return NULL;
    }
    if (rc == KVD_SNAPSHOT_ENOMEM) {
        kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory restoring the snapshot");
        return NULL;
    }
    if (rc != 0) {
        kvd_api_error_set(&err, 400, KVD_ERR_INVALID, NULL, "snapshot refused: %s", kvd_snapshot_strerror(rc));
        kvd_response_error(resp, &err);
        return NULL;
    }
    api_session *s = kvd__api_session_register_as(api, cache, shadow, m.id, resp);
    if (!s)
        return NULL;
    s->owner = owner;
    s->created_at = m.created_at;
    atomic_store(&s->steps, m.steps);
    s->shadow_stats = (api_shadow_stats){.steps = m.shadow_steps,
                                         .last_relative_error = m.shadow_last_rel,
                                         .sum_relative_error = m.shadow_sum_rel,
                                         .max_abs_error = m.shadow_max_abs};
    /* last_used_at is now (set by register): time spent in a snapshot does
     * not count toward the session's ttl. */
    return s;
}

void kvd__api_handle_restore(kvd_api *api, const kvd_api_request *req, uint32_t owner, kvd_response *resp)
{
    api_session *s = restore(api, req->body, req->body_len, owner, false, resp);
    if (s) {
        kvd__api_respond_created(s, NULL, resp);
        if (resp->status != 201) /* a 500 must create nothing (as a create's) */
            kvd__api_session_drop(api, s);
    }
}

int kvd_api_restore(kvd_api *api, const void *bytes, size_t len, char *id, size_t id_len, char *why, size_t why_len)
{
    kvd_response resp = {0};
    api_session *s = restore(api, bytes, len, KVD_OWNER_ANON, true, &resp);
    if (!s && why_len)
        snprintf(why, why_len, "%d %.*s", resp.status, (int)resp.body_len, resp.body ? resp.body : "");
    if (s && id_len)
        snprintf(id, id_len, "%s", s->id);
    free(resp.body);
    return s ? 0 : -1;
}

int kvd_api_snapshot_each(kvd_api *api, kvd_api_snapshot_fn fn, void *ctx)
{
    int failed = 0;
    for (size_t i = 0; i < api->n_sessions; i++) {
        const api_session *s = api->sorted[i];
        kvd_snapshot_meta m;
        meta_of(api, s, &m, true);
        void *bytes;
        size_t len;
        const int rc = kvd_session_snapshot(s->cache, s->shadow, &m, api->opt.page_bytes, &bytes, &len);
        if (fn(ctx, s->id, rc == 0 ? bytes : NULL, rc == 0 ? len : 0) != 0)
            failed++;
        if (rc == 0)
            free(bytes);
    }
    return failed;
}
