/* api/step_body.c — the step body (POST /v1/sessions/{id}/step) into a
 * kvd_step_request checked against the session's config: shapes, k/v
 * pairing, masks, layer indices, the "steps" form, the response encoding
 * (tensors decoded by api/wire.c). On failure nothing stays allocated. No
 * global state: workers call these in parallel. */
#include "api/step_body.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/json.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static const char *const step_fields[] = {"layer", "k", "v", "q", "mask", "m", "return_lse"};
static const char *const tensor_step_fields[] = {"layer", "k1", "k2", "v1", "v2", "q", "mask", "m",
                                                     "return_lse"};
static const char *const tensor_fields[] = {"k1", "k2", "v1", "v2"};
static const char *const mask_names[] = {[KVD_MASK_CAUSAL] = "causal", [KVD_MASK_BLOCK] = "block"};
static const char *const encoding_names[] = {[KVD_WIRE_ENCODING_JSON] = "json",
                                             [KVD_WIRE_ENCODING_B64] = "b64"};

static const char *mask_name(int i) { return mask_names[i]; }
static const char *encoding_name(int i) { return encoding_names[i]; }

/* The members of one step object. `top` is the single form, where
 * "encoding" sits beside the step's own fields. */
static int check_step_fields(const cJSON *obj, const char *prefix, bool top, bool tensor,
                             kvd_api_error *err)
{
    const char *const *fields = tensor ? tensor_step_fields : step_fields;
    const size_t n_fields = tensor ? NELEM(tensor_step_fields) : NELEM(step_fields);
    uint32_t seen = 0;
    char path[96];
    for (const cJSON *c = obj->child; c; c = c->next) {
        const char *key = c->string ? c->string : "";
        snprintf(path, sizeof path, "%s%s", prefix, key);
        size_t i = 0;
        while (i < n_fields && strcmp(key, fields[i]) != 0)
            i++;
        if (i < n_fields) {
            if (seen & (UINT32_C(1) << i))
                return kvd__api_json_invalid(err, path, "duplicate field");
            seen |= UINT32_C(1) << i;
            continue;
        }
        if (strcmp(key, "encoding") == 0) {
            if (top)
                continue; /* read (and checked for duplicates) by the caller */
            return kvd__api_json_invalid(err, path, "only allowed at the top level of the body");
        }
        if (!tensor && kvd__api_json_in_list(key, tensor_fields, NELEM(tensor_fields)))
            return kvd__api_json_invalid(err, path,
                           "k1, k2, v1, v2 are for tensor attention; this session uses "
                           "standard attention (send k and v)");
        if (tensor && (strcmp(key, "k") == 0 || strcmp(key, "v") == 0))
            return kvd__api_json_invalid(err, path,
                           "k and v are for standard attention; this session uses tensor "
                           "attention (send k1, k2, v1, v2)");
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%.80s: unknown field (allowed: layer, %s, q, mask, m, return_lse%s)", path,
                                 tensor ? "k1, k2, v1, v2" : "k, v",
                                 top ? ", encoding; or steps" : "");
    }
    return 0;
}

/* Parses one step object into *st (tensors owned by *st even on failure,
 * so the caller's free releases whatever was decoded). */
/* A tensor field: from the numbers the text pass decoded when item is one
 * of its arrays, from the body's text when it is one of its b64 strings,
 * from the cJSON value otherwise (escaped strings, trees built by hand). */
static int decode(const kvd_json_doc *doc, const cJSON *item, const char *field,
                  const kvd_wire_shape *shape, size_t max_rows, float **out, size_t *rows,
                  kvd_api_error *err)
{
    kvd_json_tensor *t = kvd_json_doc_tensor(doc, item);
    if (t)
        return kvd_wire_decode_tensor(t, field, shape, max_rows, out, rows, err);
    const kvd_json_b64 *b = kvd_json_doc_b64(doc, item);
    if (b) /* straight from the body's text */
        return kvd_wire_decode_b64(b->text, b->len, field, shape, max_rows, out, rows, err);
    return kvd_wire_decode(item, field, shape, max_rows, out, rows, err);
}

static int parse_step(const kvd_json_doc *doc, const cJSON *obj, const char *prefix, bool top,
                      const kvd_session_config *cfg, const kvd_api_limits *lim,
                      kvd_step_entry *st, kvd_api_error *err)
{
    char path[96];
    const bool tensor = cfg->attention == KVD_ATTN_TENSOR;
    if (check_step_fields(obj, prefix, top, tensor, err) != 0)
        return -1;

    snprintf(path, sizeof path, "%slayer", prefix);
    const cJSON *layer = cJSON_GetObjectItemCaseSensitive(obj, "layer");
    if (layer && !(cJSON_IsNumber(layer) && isfinite(layer->valuedouble)
                   && layer->valuedouble == floor(layer->valuedouble)
                   && layer->valuedouble >= 0 && layer->valuedouble < (double)cfg->layers)) {
        if (cJSON_IsNumber(layer))
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                     "%s: expected an integer in 0..%" PRIu32 " (the session has "
                                     "%" PRIu32 " layers), got %g",
                                     path, cfg->layers - 1, cfg->layers, layer->valuedouble);
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: expected an integer in 0..%" PRIu32 ", got %s",
                                 path, cfg->layers - 1, kvd__api_json_type_name(layer));
    }
    st->layer = layer ? (uint32_t)layer->valuedouble : 0;

    /* "return_lse": also answer each query head's log-sum-exp (to merge
     * attention over parts of one context held by several processes). */
    snprintf(path, sizeof path, "%sreturn_lse", prefix);
    const cJSON *lse = cJSON_GetObjectItemCaseSensitive(obj, "return_lse");
    if (lse && !cJSON_IsBool(lse))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path, "%s: expected true or false, got %s",
                                 path, kvd__api_json_type_name(lse));
    st->return_lse = cJSON_IsTrue(lse);
    if (st->return_lse && cfg->cache.eviction == KVD_EVICT_SUBGEN)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: not available with eviction \"subgen\" (its attention is "
                                 "an estimate with no exact softmax denominator)", path);

    /* "m": the client's own count of new tokens, checked against k/v below
     * (a flat array of the wrong head count would otherwise be read as
     * more tokens). */
    const uint64_t max_m = lim->max_step_tokens;
    uint64_t m_given = 0;
    const cJSON *m_item = cJSON_GetObjectItemCaseSensitive(obj, "m");
    snprintf(path, sizeof path, "%sm", prefix);
    if (m_item && kvd__api_json_get_uint(obj, "m", path, 0, max_m, 0, &m_given, err) != 0)
        return -1;

    /* The new tokens' tensors: k, v (standard) or k1, v1, k2, v2 (tensor),
     * all present or all absent, each [m][kv_heads][head_dim]. */
    static const char *const std_names[] = {"k", "v"};
    static const char *const tensor_names[] = {"k1", "v1", "k2", "v2"};
    const char *const *names = tensor ? tensor_names : std_names;
    const size_t n_names = tensor ? 4 : 2;
    const float **dst[4] = {&st->k, &st->v, &st->k2, &st->v2};
    size_t present = 0;
    for (size_t i = 0; i < n_names; i++)
        present += cJSON_GetObjectItemCaseSensitive(obj, names[i]) != NULL;
    if (present != 0 && present != n_names)
        for (size_t i = 0; i < n_names; i++)
            if (!cJSON_GetObjectItemCaseSensitive(obj, names[i])) {
                snprintf(path, sizeof path, "%s%s", prefix, names[i]);
                return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                         "%s: missing (%s come together: the new tokens' keys "
                                         "and values)", path, tensor ? "k1, v1, k2, v2" : "k and v");
            }
    const kvd_wire_shape shape_kv = {.heads = cfg->kv_heads, .head_dim = cfg->head_dim,
                                     .rows_name = "m", .heads_name = "kv_heads"};
    const kvd_wire_shape shape_q = {.heads = cfg->heads, .head_dim = cfg->head_dim,
                                    .rows_name = "m_q", .heads_name = "heads"};
    /* The per-step token bound keeps one step's work and scratch bounded. */
    const size_t max_rows = lim->max_step_tokens > SIZE_MAX ? SIZE_MAX
                                                            : (size_t)lim->max_step_tokens;
    if (present) {
        for (size_t i = 0; i < n_names; i++) {
            size_t rows = 0;
            snprintf(path, sizeof path, "%s%s", prefix, names[i]);
            float *decoded = NULL;
            int rc = decode(doc, cJSON_GetObjectItemCaseSensitive(obj, names[i]), path,
                            &shape_kv, max_rows, &decoded, &rows, err);
            *dst[i] = decoded;
            if (rc != 0)
                return -1;
            if (i > 0 && rows != st->m)
                return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                         "%s: %zu tokens, but %s has %zu (%s must hold the same "
                                         "number of tokens)", path, rows, names[0], st->m,
                                         tensor ? "k1, v1, k2, v2" : "k and v");
            st->m = rows;
        }
    }
    if (m_item && m_given != st->m) {
        snprintf(path, sizeof path, "%sm", prefix);
        if (!present)
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                     "%s: %" PRIu64 " new tokens given, but the step has no %s "
                                     "(0 new tokens)", path, m_given, tensor ? "k1, v1, k2, v2"
                                                                             : "k and v");
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: %" PRIu64 " new tokens given, but %s%s holds %zu (rows of "
                                 "kv_heads*head_dim = %" PRIu32 "*%" PRIu32 " numbers)",
                                 path, m_given, prefix, names[0], st->m, cfg->kv_heads,
                                 cfg->head_dim);
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(obj, "q");
    if (q) {
        snprintf(path, sizeof path, "%sq", prefix);
        float *decoded = NULL;
        int rc = decode(doc, q, path, &shape_q, max_rows, &decoded, &st->m_q, err);
        st->q = decoded;
        if (rc != 0)
            return -1;
    }

    /* Default: causal when every new token has its query (prefill, decode),
     * block otherwise (a VAR scale, or pure queries against the cache). */
    snprintf(path, sizeof path, "%smask", prefix);
    int mask = KVD_MASK_BLOCK;
    if (kvd__api_json_get_enum(obj, "mask", path, mask_name, (int)NELEM(mask_names),
                               st->m_q == st->m ? KVD_MASK_CAUSAL : KVD_MASK_BLOCK, &mask, err))
        return -1;
    st->mask = (kvd_mask)mask;
    /* Causal queries are the last m_q of the m new tokens, so there cannot
     * be more queries than new tokens. */
    if (st->mask == KVD_MASK_CAUSAL && st->m_q > st->m)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: \"causal\" needs m_q <= m (each query is one of the step's "
                                 "new tokens), got m_q = %zu queries and m = %zu new tokens; use "
                                 "\"block\" for queries that see the cache and all new tokens",
                                 path, st->m_q, st->m);
    return 0;
}

/* On success req owns every tensor (kvd_step_request_free releases them);
 * on failure req is left empty and nothing stays allocated. */
int kvd_step_request_parse(const cJSON *body, const kvd_session_config *cfg,
                           const kvd_api_limits *lim, kvd_step_request *req,
                           kvd_api_error *err)
{
    const kvd_json_doc doc = {.root = (cJSON *)body};
    return kvd_step_request_parse_doc(&doc, cfg, lim, req, err);
}

size_t kvd_step_body_max_values(const kvd_api_limits *lim)
{
    /* The root, "encoding" and "steps", then per step its object and at
     * most nine members (layer, mask, m, return_lse, q and four tensors); slack for the
     * single form. */
    return 10 * (size_t)lim->max_steps_per_request + 64;
}

int kvd_step_request_parse_text(char *text, size_t len, const kvd_session_config *cfg,
                                const kvd_api_limits *lim, kvd_step_request *req, bool *multi,
                                kvd_api_error *err)
{
    memset(req, 0, sizeof *req);
    kvd_json_doc doc;
    if (kvd_json_parse_step_text(text, len, kvd_step_body_max_values(lim), &doc, err) != 0)
        return -1;
    *multi = cJSON_GetObjectItemCaseSensitive(doc.root, "steps") != NULL;
    int rc = kvd_step_request_parse_doc(&doc, cfg, lim, req, err);
    kvd_json_doc_free(&doc);
    return rc;
}

int kvd_step_request_parse_doc(const kvd_json_doc *doc, const kvd_session_config *cfg,
                               const kvd_api_limits *lim, kvd_step_request *req,
                               kvd_api_error *err)
{
    const cJSON *body = doc->root;
    memset(req, 0, sizeof *req);
    if (!cJSON_IsObject(body))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                                 "body must be a JSON object, got %s",
                                 body ? kvd__api_json_type_name(body) : "nothing");
    if (cfg->layers == 0 || cfg->heads == 0 || cfg->kv_heads == 0 || cfg->head_dim == 0)
        return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, NULL, "session has an empty shape");

    int enc = KVD_WIRE_ENCODING_JSON;
    if (kvd__api_json_get_enum(body, "encoding", "encoding", encoding_name,
                               (int)NELEM(encoding_names), KVD_WIRE_ENCODING_JSON, &enc, err))
        return -1;
    int n_enc = 0;
    for (const cJSON *c = body->child; c; c = c->next)
        n_enc += c->string && strcmp(c->string, "encoding") == 0;
    if (n_enc > 1)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "encoding",
                                 "encoding: duplicate field");

    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(body, "steps");
    size_t n = 1;
    if (steps) {
        int n_steps = 0;
        for (const cJSON *c = body->child; c; c = c->next) {
            const char *key = c->string ? c->string : "";
            if (strcmp(key, "encoding") == 0)
                continue;
            if (strcmp(key, "steps") == 0) {
                if (++n_steps > 1)
                    return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "steps",
                                             "steps: duplicate field");
                continue;
            }
            if (kvd__api_json_in_list(key, step_fields, NELEM(step_fields))
                || kvd__api_json_in_list(key, tensor_fields, NELEM(tensor_fields)))
                return kvd_api_error_set(err, 400, KVD_ERR_INVALID, key,
                                         "%s: not allowed beside \"steps\" (put it inside each "
                                         "step)", key);
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, key,
                                     "%.80s: unknown field (allowed beside steps: encoding)",
                                     key);
        }
        if (!cJSON_IsArray(steps))
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "steps",
                                     "steps: expected an array of step objects, got %s",
                                     kvd__api_json_type_name(steps));
        int count = cJSON_GetArraySize(steps);
        if (count <= 0)
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "steps",
                                     "steps: expected 1..%" PRIu32 " step objects, got none",
                                     lim->max_steps_per_request);
        /* Bounds the per-request bookkeeping (one output per step). */
        if ((uint64_t)count > lim->max_steps_per_request)
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "steps",
                                     "steps: expected 1..%" PRIu32 " step objects, got %d",
                                     lim->max_steps_per_request, count);
        n = (size_t)count;
    }

    req->entries = calloc(n, sizeof *req->entries);
    if (!req->entries)
        return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, NULL,
                                 "out of memory for %zu steps", n);
    req->n_entries = n;
    req->encoding = (kvd_wire_encoding)enc;

    if (!steps) {
        if (parse_step(doc, body, "", true, cfg, lim, &req->entries[0], err) != 0)
            goto fail;
        return 0;
    }
    size_t i = 0;
    char prefix[48];
    for (const cJSON *s = steps->child; s; s = s->next, i++) {
        snprintf(prefix, sizeof prefix, "steps[%zu].", i);
        if (!cJSON_IsObject(s)) {
            snprintf(prefix, sizeof prefix, "steps[%zu]", i);
            kvd_api_error_set(err, 400, KVD_ERR_INVALID, prefix,
                              "%s: expected a step object, got %s", prefix,
                              kvd__api_json_type_name(s));
            goto fail;
        }
        if (parse_step(doc, s, prefix, false, cfg, lim, &req->entries[i], err) != 0)
            goto fail;
    }
    return 0;

fail:
    kvd_step_request_free(req);
    return -1;
}

int kvd_step_entry_parse(const kvd_json_doc *doc, const cJSON *obj, const char *prefix,
                         const kvd_session_config *cfg, const kvd_api_limits *lim,
                         kvd_step_entry *entry, kvd_api_error *err)
{
    memset(entry, 0, sizeof *entry);
    return parse_step(doc, obj, prefix, false, cfg, lim, entry, err);
}

void kvd_step_request_free(kvd_step_request *req)
{
    if (!req)
        return;
    for (size_t i = 0; req->entries && i < req->n_entries; i++) {
        free((void *)req->entries[i].k); /* the request owns what it decoded */
        free((void *)req->entries[i].v);
        free((void *)req->entries[i].k2);
        free((void *)req->entries[i].v2);
        free((void *)req->entries[i].q);
    }
    free(req->entries);
    memset(req, 0, sizeof *req);
}
