/* api/session_stats.c — GET /v1/sessions/{id}: what a session holds and what
 * it costs (DESIGN.md §3 "Session stats"). Runs on a worker as a job in the
 * session's queue (O(tokens): the kept positions), so the numbers describe
 * whole steps and the loop thread never walks slots. */
#include "api/internal.h"

#include <stdlib.h>

#include <cJSON.h>

#include "api/create_body.h"
#include "api/json.h"
#include "cache/quant.h"

/* Bits per cached K/V number: payload bytes (codes, scales, KIVI's f32
 * residual) over 2 * head_dim numbers per token. With no token yet, the
 * dtype's steady-state figure for a full row is reported instead. */
static double bits_per_coordinate(const kvd_session *s, size_t tokens)
{
    const size_t d = s->config.head_dim;
    if (!tokens) {
        const kvd_stream *st = &s->streams[0];
        double per_token = kvd_row_is_block(kvd_dtype_key_format(s->config.cache.dtype))
                               ? (double)st->k_row_bytes / s->config.cache.group
                               : (double)st->k_row_bytes;
        return 8.0 * (per_token + st->v_row_bytes) / (2.0 * (double)d);
    }
    double payload = 0;
    for (size_t i = 0; i < s->n_streams; i++)
        payload += (double)kvd_stream_payload_bytes(&s->streams[i]);
    if (s->subgen) {
        /* SubGen: the exact window plus every sketch row laid out (centres,
         * counts, all t reservoir rows of each cluster, the s samples) over
         * every token the cache stands for, sketched ones included; far
         * below 1 bit when keys cluster, far above 32 when they do not. */
        double represented = 0;
        for (size_t i = 0; i < s->n_streams; i++) {
            payload += (double)kvd_subgen_payload_bytes(&s->subgen[i]);
            represented += (double)(s->streams[i].n_tokens + s->subgen[i].items);
            if (s->subgen_b) /* SubGen4Cache: k2/v2 and their sketch; 4 * d numbers a token */
                payload += (double)(kvd_stream_payload_bytes(&s->tensor_b[i]) +
                                    kvd_subgen_payload_bytes(&s->subgen_b[i]));
        }
        return 8.0 * payload / ((s->subgen_b ? 4.0 : 2.0) * (double)d * represented);
    }
    return 8.0 * payload / (2.0 * (double)d * (double)tokens);
}

char *kvd__api_session_stats_json(const kvd_api *api, const api_session *as)
{
    const kvd_session *s = as->cache;
    const kvd_session_config *cfg = &s->config;
    size_t page_bytes = api->opt.page_bytes;
    size_t tokens = kvd_session_tokens(s), pages = kvd_session_pages(s);
    size_t n_clusters = 0;
    for (size_t i = 0; s->subgen && i < s->n_streams; i++)
        n_clusters += s->subgen[i].n_clusters + (s->subgen_b ? s->subgen_b[i].n_clusters : 0);
    double bytes = (double)pages * (double)page_bytes;

    kvd__api_json_oom_reset(); /* a member that failed to allocate fails the whole */
    cJSON *o = cJSON_CreateObject();
    cJSON *conf = kvd_session_config_to_json(cfg);
    cJSON *layers = cJSON_CreateArray();
    if (!o || !conf || !layers) {
        cJSON_Delete(o);
        cJSON_Delete(conf);
        cJSON_Delete(layers);
        return NULL;
    }
    cJSON_AddStringToObject(o, "id", as->id);
    if (!cJSON_AddItemToObject(o, "config", conf)) { /* not attached: ours to free */
        cJSON_Delete(o);
        cJSON_Delete(conf);
        cJSON_Delete(layers);
        return NULL;
    }
    cJSON_AddNumberToObject(o, "steps", (double)atomic_load(&as->steps));
    cJSON_AddNumberToObject(o, "created_at", as->created_at);
    cJSON_AddNumberToObject(o, "last_used_at", atomic_load(&as->last_used_at));
    cJSON_AddNumberToObject(o, "last_step_seconds", atomic_load(&as->last_step_seconds));
    cJSON_AddNumberToObject(o, "tokens", (double)tokens);
    cJSON_AddNumberToObject(o, "appended", (double)kvd_session_appended(s));
    cJSON_AddNumberToObject(o, "evicted", (double)kvd_session_evicted(s));
    cJSON_AddNumberToObject(o, "pages", (double)pages);
    /* Pages that may still be shared with a fork (copied on first write). */
    cJSON_AddNumberToObject(o, "shared_pages", (double)kvd_session_shared_pages(s));
    cJSON_AddNumberToObject(o, "bytes", bytes);
    /* Ordinary heap outside the pool (cache, shadow copy, registry entry):
     * its share of --max-session-heap. */
    cJSON_AddNumberToObject(o, "heap_bytes", (double)kvd__api_session_heap(as));
    cJSON_AddNumberToObject(o, "shadow_bytes",
                            as->shadow ? (double)kvd_session_pages(as->shadow) * (double)page_bytes : 0.0);
    /* Everything the session holds per cached token: payload, slot metadata
     * and the unused tail of its last pages. */
    cJSON_AddNumberToObject(o, "bytes_per_token", tokens ? bytes / (double)tokens : 0.0);
    cJSON_AddNumberToObject(o, "bits_per_coordinate", bits_per_coordinate(s, tokens));
    cJSON_AddStringToObject(o, "dtype", kvd_dtype_name(cfg->cache.dtype));
    /* The growth class of the layout (DESIGN.md §5, arXiv 2503.11108): the
     * two-cache holds n^2 pair rows; everything else O(n) rows. */
    cJSON_AddStringToObject(o, "memory_scaling", s->pairs ? "n^2*d" : "n*d");
    if (s->pairs)
        cJSON_AddNumberToObject(o, "pair_rows", (double)kvd_session_pair_rows(s));
    if (s->subgen) /* summed over streams; per kv head under "layers" */
        cJSON_AddNumberToObject(o, "clusters", (double)n_clusters);
    if (!cJSON_AddItemToObject(o, "layers", layers)) {
        cJSON_Delete(o);
        cJSON_Delete(layers);
        return NULL;
    }
    for (uint32_t l = 0; l < cfg->layers; l++) {
        cJSON *lo = cJSON_CreateObject();
        cJSON *tok = cJSON_AddArrayToObject(lo, "tokens");
        cJSON *ev = cJSON_AddArrayToObject(lo, "evicted");
        cJSON *first = cJSON_AddArrayToObject(lo, "oldest_position");
        cJSON *last = cJSON_AddArrayToObject(lo, "newest_position");
        /* subgen: clusters and sketched tokens per kv head */
        cJSON *clusters = s->subgen ? cJSON_AddArrayToObject(lo, "clusters") : NULL;
        cJSON *sketched = s->subgen ? cJSON_AddArrayToObject(lo, "sketched") : NULL;
        if (!lo || !tok || !ev || !first || !last || (s->subgen && (!clusters || !sketched))) {
            cJSON_Delete(lo);
            cJSON_Delete(o);
            return NULL;
        }
        size_t layer_pages = 0;
        for (uint32_t g = 0; g < cfg->kv_heads; g++) {
            const size_t idx = (size_t)l * cfg->kv_heads + g;
            const kvd_stream *st = &s->streams[idx];
            cJSON_AddItemToArray(tok, cJSON_CreateNumber((double)st->n_tokens));
            cJSON_AddItemToArray(ev, cJSON_CreateNumber((double)st->evicted));
            if (s->subgen) {
                /* SubGen4Cache: k1 clusters + k2 clusters */
                const kvd_subgen *b = s->subgen_b ? &s->subgen_b[idx] : NULL;
                cJSON_AddItemToArray(clusters, cJSON_CreateNumber(
                                                   (double)(s->subgen[idx].n_clusters + (b ? b->n_clusters : 0))));
                cJSON_AddItemToArray(sketched, cJSON_CreateNumber((double)s->subgen[idx].items));
                layer_pages += kvd_subgen_pages(&s->subgen[idx]) + (b ? kvd_subgen_pages(b) : 0);
            }
            /* Slots keep their original positions (eviction reorders slots,
             * never renumbers tokens): the kept range, or null when empty.
             * O(tokens) reads of slot metadata, on an idle session. */
            int64_t lo_pos = INT64_MAX, hi_pos = -1;
            for (size_t j = 0; j < st->n_tokens; j++) {
                int64_t p = kvd_stream_meta(st, j)->position;
                lo_pos = p < lo_pos ? p : lo_pos;
                hi_pos = p > hi_pos ? p : hi_pos;
            }
            cJSON_AddItemToArray(first, st->n_tokens ? cJSON_CreateNumber((double)lo_pos) : cJSON_CreateNull());
            cJSON_AddItemToArray(last, st->n_tokens ? cJSON_CreateNumber((double)hi_pos) : cJSON_CreateNull());
            /* every page of the (layer, kv head): KIVI's f32 residual, tensor
             * attention's k2/v2 and pair rows included */
            const kvd_stream *parts[3] = {st, s->tensor_b ? &s->tensor_b[idx] : NULL,
                                          s->pairs ? &s->pairs[idx] : NULL};
            for (int k = 0; k < 3; k++)
                if (parts[k])
                    layer_pages += parts[k]->n_pages + (parts[k]->residual ? parts[k]->residual->n_pages : 0);
        }
        cJSON_AddNumberToObject(lo, "pages", (double)layer_pages);
        cJSON_AddNumberToObject(lo, "bytes", (double)layer_pages * (double)page_bytes);
        cJSON_AddItemToArray(layers, lo);
    }
    if (as->shadow) {
        const api_shadow_stats *sh = &as->shadow_stats;
        cJSON *so = cJSON_AddObjectToObject(o, "shadow");
        if (so) {
            cJSON_AddNumberToObject(so, "steps", (double)sh->steps);
            cJSON_AddNumberToObject(so, "last_relative_error", sh->last_relative_error);
            cJSON_AddNumberToObject(so, "mean_relative_error",
                                    sh->steps ? sh->sum_relative_error / (double)sh->steps : 0.0);
            cJSON_AddNumberToObject(so, "max_abs_error", sh->max_abs_error);
        }
    }
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (json && kvd__api_json_oom()) {
        free(json);
        return NULL;
    }
    return json;
}
