/* tests/load/traffic.c — the soak's mixed traffic: what each client sends next
 * (create in one of several configs, prefill and decode steps, multi-entry
 * "steps", fork, stats, list, /metrics, /healthz, delete, and requests about
 * another client's session that may race its delete) and the check of every
 * answer: the status in the expected set, and for a subset of f32 sessions
 * every output against the double reference of tests/support/ref_attention.c. */
#include "tests/load/load.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "tests/support/http_client.h"
#include "tests/support/tensor_body.h"

const char *const soak_kind_name[K_COUNT] = {"create", "step", "steps", "fork", "delete",
                                             "stats", "list", "metrics", "healthz"};

#define STD "\"layers\":2,\"heads\":4,\"kv_heads\":2,\"head_dim\":64"
#define TEN "\"attention\":\"tensor\",\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":16"
const soak_config soak_configs[] = {
    {"f32", "{" STD "}", 40, 2, 4, 2, 64, false, true, true, 0},
    {"f16", "{" STD ",\"cache\":{\"dtype\":\"f16\"}}", 10, 2, 4, 2, 64, false, true, false, 0},
    {"int8-h2o", "{" STD ",\"cache\":{\"dtype\":\"int8\",\"eviction\":\"h2o\",\"budget\":48,\"sink\":4,\"recent\":8}}",
     10, 2, 4, 2, 64, false, true, false, 0},
    {"f32-recency", "{" STD ",\"cache\":{\"eviction\":\"recency\",\"budget\":64,\"sink\":4}}", 10, 2, 4, 2, 64,
     false, true, false, 0},
    {"bf16-l2norm", "{" STD ",\"cache\":{\"dtype\":\"bf16\",\"eviction\":\"l2norm\",\"budget\":64,\"recent\":4}}",
     5, 2, 4, 2, 64, false, true, false, 0},
    {"kivi4", "{" STD ",\"cache\":{\"dtype\":\"kivi4\",\"group\":32,\"residual\":32}}", 10, 2, 4, 2, 64, false,
     false, false, 0},
    {"tensor-four-w32", "{" TEN ",\"window\":32}", 10, 1, 2, 1, 16, true, false, false, 0},
    {"tensor-two-f16", "{" TEN ",\"tensor_cache\":\"two\",\"cache\":{\"dtype\":\"f16\"}}", 5, 1, 2, 1, 16, true,
     false, false, 48},
};
const size_t soak_n_configs = sizeof soak_configs / sizeof soak_configs[0];

static size_t creates; /* every third checkable session is checked */

static double uni(client *c)
{
    return rng_uniform(&c->r, 0.0, 1.0);
}

static size_t pick(client *c, size_t n)
{
    return (size_t)(rng_next(&c->r) % n);
}

void traffic_init(client *c, int idx, uint64_t seed)
{
    memset(c, 0, sizeof *c);
    c->idx = idx;
    c->fd = -1;
    rng_seed(&c->r, seed * 1000003u + (uint64_t)idx);
    for (int i = 0; i < SOAK_SLOTS; i++)
        c->sess[i].reg = -1;
    c->left_on_conn = 50 + (unsigned)pick(c, 950);
}

size_t traffic_sessions(const client *c)
{
    size_t n = 0;
    for (int i = 0; i < SOAK_SLOTS; i++)
        n += c->sess[i].id[0] != '\0';
    return n;
}

static void reg_add(client *c, int slot)
{
    if (S.n_reg == S.cap_reg) {
        S.cap_reg = S.cap_reg ? 2 * S.cap_reg : 1024;
        S.reg = realloc(S.reg, S.cap_reg * sizeof *S.reg);
        S.reg_owner = realloc(S.reg_owner, S.cap_reg * sizeof *S.reg_owner);
        if (!S.reg || !S.reg_owner)
            abort();
    }
    S.reg[S.n_reg] = &c->sess[slot];
    S.reg_owner[S.n_reg].client = c->idx;
    S.reg_owner[S.n_reg].slot = slot;
    c->sess[slot].reg = (long)S.n_reg++;
}

static void reg_remove(soak_session *s)
{
    if (s->reg < 0)
        return;
    size_t i = (size_t)s->reg, last = S.n_reg - 1;
    S.reg[i] = S.reg[last];
    S.reg_owner[i] = S.reg_owner[last];
    S.reg[i]->reg = (long)i;
    S.n_reg--;
    s->reg = -1;
}

static void set_request(client *c, const char *method, const char *path, const char *body)
{
    free(c->out);
    c->out = http_format_request(method, path, body ? "application/json" : NULL, NULL, body,
                                 body ? strlen(body) : 0, &c->out_len);
    c->out_off = 0;
}

static void begin(client *c, req_kind kind, int slot)
{
    c->kind = kind;
    c->slot = slot;
    c->foreign = c->gone = false;
    c->abandon = AB_NONE;
    free(c->want);
    c->want = NULL;
    c->n_entries = 0;
}

/* One step request for session `slot`: a prefill first (some in JSON numbers), then
 * decode steps (b64 both ways), multi-layer "steps" bodies and pure queries. */
static void build_step(client *c, int slot)
{
    soak_session *s = &c->sess[slot];
    const soak_config *cf = &soak_configs[s->cfg];
    const size_t kvr = cf->kv_heads * cf->head_dim, qr = cf->heads * cf->head_dim;
    const bool first = s->tokens[0] == 0 && s->tokens[1] == 0;
    size_t n = 1, m[2] = {1, 1}, mq[2] = {1, 1};
    long layer[2] = {0, 1};
    bool b64 = true;
    double u = uni(c);
    if (first) {
        n = cf->layers;
        m[0] = m[1] = mq[0] = mq[1] = cf->tensor ? 4 + pick(c, 5) : 8 + pick(c, 17);
        /* A quarter of the prefills as JSON numbers (the text pass); printing
         * every one would make this generator the bottleneck of the start. */
        b64 = uni(c) >= 0.25;
    } else if (cf->layers > 1 && u < 0.3) {
        n = 2;
        if (uni(c) < 0.3)
            m[1] = 2; /* causal with m_q < m: only the last token's output */
    } else if (!cf->tensor && u < 0.38) {
        m[0] = 0; /* a pure query against the cache (block mask by default) */
        layer[0] = (long)pick(c, cf->layers);
    } else {
        layer[0] = (long)pick(c, cf->layers);
    }
    if (cf->max_tokens && s->tokens[0] + m[0] > cf->max_tokens) {
        s->steps_left = 0; /* a two-cache grows as n^2: delete it instead */
        return;
    }
    begin(c, n > 1 || first ? K_STEPS : K_STEP, slot);
    c->n_entries = n > 1 || first ? n : 0;
    size_t want_total = 0;
    for (size_t e = 0; e < n; e++)
        want_total += (c->entry_o[e] = mq[e] * qr);
    if (s->ref)
        c->want = malloc(want_total * sizeof *c->want);
    step_spec sp[2];
    tensor_step_spec tp[2];
    float *bufs[2][5] = {{0}};
    size_t off = 0;
    for (size_t e = 0; e < n; e++) {
        for (int t = 0; t < 4; t++)
            bufs[e][t] = rng_tensor(&c->r, m[e] * kvr, -1.0f, 1.0f);
        bufs[e][4] = rng_tensor(&c->r, mq[e] * qr, -1.0f, 1.0f);
        sp[e] = (step_spec){layer[e], bufs[e][0], bufs[e][1], m[e], bufs[e][4], mq[e], NULL, b64};
        tp[e] = (tensor_step_spec){layer[e], bufs[e][0], bufs[e][1], bufs[e][2], bufs[e][3], m[e],
                                   bufs[e][4], mq[e], NULL, b64};
        s->tokens[layer[e]] += m[e];
        if (s->ref) {
            ref_step(s->ref, (size_t)layer[e], bufs[e][0], bufs[e][1], m[e], bufs[e][4], mq[e],
                     ref_default_mask(m[e], mq[e]), c->want + off);
            off += c->entry_o[e];
        }
    }
    const char *enc = b64 ? "b64" : NULL;
    char *body;
    if (cf->tensor)
        body = c->n_entries ? tensor_steps_body(tp, n, kvr, qr, enc) : tensor_step_body(tp, kvr, qr, enc);
    else
        body = c->n_entries ? steps_body(sp, n, kvr, qr, enc) : step_body(sp, kvr, qr, enc);
    for (size_t e = 0; e < n; e++)
        for (int t = 0; t < 5; t++)
            free(bufs[e][t]);
    char path[160];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", s->id);
    set_request(c, "POST", path, body);
    free(body);
    /* Provoked: now and then an unchecked session's step is sent and the
     * connection closed before the answer (kvd must run it or drop it cleanly). */
    if (!s->ref && !first && uni(c) < 0.004)
        c->abandon = AB_FIRE;
}

static void build_delete(client *c, int slot)
{
    soak_session *s = &c->sess[slot];
    begin(c, K_DELETE, slot);
    /* It stays in the registry until the answer, so other clients' requests
     * may race the delete (a 404 for them). */
    s->deleting = true;
    char path[160];
    snprintf(path, sizeof path, "/v1/sessions/%s", s->id);
    set_request(c, "DELETE", path, NULL);
}

static void build_create(client *c, int slot)
{
    unsigned total = 0;
    for (size_t i = 0; i < soak_n_configs; i++)
        total += soak_configs[i].weight;
    unsigned w = (unsigned)pick(c, total);
    size_t i = 0;
    while (w >= soak_configs[i].weight)
        w -= soak_configs[i++].weight;
    begin(c, K_CREATE, slot);
    c->foreign_cfg = (int)i;
    set_request(c, "POST", "/v1/sessions", soak_configs[i].body);
    if (uni(c) < 0.003) { /* provoked: half a request, then close */
        c->abandon = AB_HALF;
        c->out_len -= strlen(soak_configs[i].body) / 2;
    }
}

/* A request about a session of another client: stats, or a fork when it can. */
static bool build_foreign(client *c)
{
    if (S.n_reg == 0)
        return false;
    size_t i = pick(c, S.n_reg);
    if (S.reg_owner[i].client == c->idx)
        return false;
    const soak_session *s = S.reg[i];
    bool fork = soak_configs[s->cfg].forkable && c->sess[1].id[0] == '\0' && uni(c) < 0.5;
    begin(c, fork ? K_FORK : K_STATS, fork ? 1 : -1);
    c->foreign = true;
    c->foreign_cfg = s->cfg;
    snprintf(c->foreign_id, sizeof c->foreign_id, "%s", s->id);
    char path[160];
    snprintf(path, sizeof path, "/v1/sessions/%s%s", s->id, fork ? "/fork" : "");
    set_request(c, fork ? "POST" : "GET", path, fork ? "{}" : NULL);
    return true;
}

bool traffic_next(client *c)
{
    if (S.phase == PH_PAUSE || S.phase == PH_DONE)
        return false;
    if (S.phase == PH_CLEANUP) {
        for (int i = 0; i < SOAK_SLOTS; i++)
            if (c->sess[i].id[0] && !c->sess[i].deleting) {
                build_delete(c, i);
                return true;
            }
        return false;
    }
    for (int i = 0; i < SOAK_SLOTS; i++)
        if (c->sess[i].id[0] && c->sess[i].steps_left <= 0) {
            build_delete(c, i);
            return true;
        }
    if (c->sess[0].id[0] == '\0') {
        build_create(c, 0);
        return true;
    }
    double u = uni(c);
    if (u < 0.02) {
        int slot = c->sess[1].id[0] && uni(c) < 0.5 ? 1 : 0;
        begin(c, K_STATS, slot);
        char path[160];
        snprintf(path, sizeof path, "/v1/sessions/%s", c->sess[slot].id);
        set_request(c, "GET", path, NULL);
    } else if (u < 0.04) {
        begin(c, K_LIST, -1);
        set_request(c, "GET", uni(c) < 0.5 ? "/v1/sessions" : "/v1/sessions?limit=10", NULL);
    } else if (u < 0.06) {
        begin(c, K_METRICS, -1);
        set_request(c, "GET", "/metrics", NULL);
    } else if (u < 0.08) {
        begin(c, K_HEALTHZ, -1);
        set_request(c, "GET", "/healthz", NULL);
    } else if (u < 0.10 && soak_configs[c->sess[0].cfg].forkable && c->sess[1].id[0] == '\0') {
        begin(c, K_FORK, 1);
        c->foreign_cfg = c->sess[0].cfg;
        char path[160];
        snprintf(path, sizeof path, "/v1/sessions/%s/fork", c->sess[0].id);
        set_request(c, "POST", path, uni(c) < 0.5 ? "{}" : NULL);
    } else if (u < 0.13 && build_foreign(c)) {
        /* built */
    } else if (u < 0.14 && S.n_gone > 0) {
        /* a session deleted a moment ago must stay gone */
        begin(c, K_STATS, -1);
        c->foreign = c->gone = true;
        char path[160];
        snprintf(path, sizeof path, "/v1/sessions/%s", S.gone[pick(c, S.n_gone < SOAK_GONE ? S.n_gone : SOAK_GONE)]);
        set_request(c, "GET", path, NULL);
    } else {
        int slot = c->sess[1].id[0] && u < 0.25 ? 1 : 0;
        build_step(c, slot);
        if (c->sess[slot].steps_left <= 0) { /* over its token cap */
            build_delete(c, slot);
            return true;
        }
        c->sess[slot].steps_left--;
    }
    return true;
}

static void unexpected(client *c, int status, const char *body, size_t len, const char *why)
{
    S.unexpected++;
    if (S.unexpected <= SOAK_PRINT_MAX)
        fprintf(stderr, "soak: UNEXPECTED %s answer %d (%s) on client %d: %.*s\n", soak_kind_name[c->kind],
                status, why, c->idx, (int)(len < 300 ? len : 300), body);
}

static bool is_exhausted(int status, const char *body)
{
    return status == 503 && strstr(body, "\"resource_exhausted\"") != NULL;
}

static void clear_slot(client *c, int slot)
{
    soak_session *s = &c->sess[slot];
    reg_remove(s);
    if (s->ref)
        ref_session_free(s->ref);
    memset(s, 0, sizeof *s);
    s->reg = -1;
}

static void new_session(client *c, int slot, const char *id, int cfg, bool child)
{
    soak_session *s = &c->sess[slot];
    snprintf(s->id, sizeof s->id, "%s", id);
    s->cfg = cfg;
    s->steps_left = child ? 4 + (int)pick(c, 12) : 16 + (int)pick(c, 80);
    const soak_config *cf = &soak_configs[cfg];
    if (child && !c->foreign) { /* the parent's token counts (the cap of a two-cache) */
        s->tokens[0] = c->sess[0].tokens[0];
        s->tokens[1] = c->sess[0].tokens[1];
    } else if (child) {
        s->tokens[0] = s->tokens[1] = 1; /* not a first step: no prefill */
    }
    if (!child && cf->checkable && creates++ % 3 == 0) {
        s->ref = ref_session_new(cf->layers, cf->heads, cf->kv_heads, cf->head_dim, 0);
        S.checked_sessions++;
    }
    reg_add(c, slot);
    S.live++;
}

/* Checks each entry's "o" (length, finiteness, and against c->want). */
static void check_step(client *c, const char *body, size_t len)
{
    cJSON *j = cJSON_ParseWithLength(body, len);
    const cJSON *entries[2] = {0};
    size_t n = c->n_entries ? c->n_entries : 1;
    if (c->n_entries) {
        const cJSON *steps = cJSON_GetObjectItemCaseSensitive(j, "steps");
        for (size_t e = 0; e < n; e++)
            entries[e] = cJSON_GetArrayItem(steps, (int)e);
    } else {
        entries[0] = j;
    }
    soak_session *s = &c->sess[c->slot];
    size_t off = 0;
    for (size_t e = 0; e < n; e++) {
        float *o = NULL;
        size_t got = 0;
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(entries[e], "o");
        if (!item || tensor_from_json(item, &o, &got) != 0 || got != c->entry_o[e]) {
            S.bad_outputs++;
            unexpected(c, 200, body, len, "malformed o");
            free(o);
            break;
        }
        for (size_t i = 0; i < got; i++)
            if (!isfinite(o[i])) {
                S.bad_outputs++;
                unexpected(c, 200, body, len, "non-finite o");
                break;
            }
        if (c->want && s->ref) {
            double scale = fmax(ref_max_abs_v(s->ref), 1e-30);
            double err = ref_max_abs_diff(o, c->want + off, got) / scale;
            if (err > S.max_err_rel)
                S.max_err_rel = err;
            if (!(err <= SOAK_TOL_REL)) {
                S.bad_outputs++;
                if (S.bad_outputs <= SOAK_PRINT_MAX)
                    fprintf(stderr, "soak: session %s: output off the reference by %.3g (tol %.1g)\n", s->id,
                            err, SOAK_TOL_REL);
            }
            S.checked_entries++;
        }
        off += got;
        free(o);
    }
    cJSON_Delete(j);
}

void traffic_answer(client *c, int status, const char *body, size_t len)
{
    S.status[c->kind][status >= 100 && status < 600 ? status / 100 : 0]++;
    bool ex = is_exhausted(status, body);
    switch (c->kind) {
    case K_CREATE: {
        if (ex) {
            S.exhausted[c->kind]++;
            break;
        }
        cJSON *j = status == 201 ? cJSON_ParseWithLength(body, len) : NULL;
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
        if (cJSON_IsString(id) && strlen(id->valuestring) < SOAK_ID_MAX)
            new_session(c, c->slot, id->valuestring, c->foreign_cfg, false);
        else
            unexpected(c, status, body, len, "create");
        cJSON_Delete(j);
        break;
    }
    case K_STEP:
    case K_STEPS:
        if (status == 200) {
            check_step(c, body, len);
        } else if (ex) {
            S.exhausted[c->kind]++;
            if (c->sess[c->slot].ref) { /* nothing was appended, but the reference did */
                ref_session_free(c->sess[c->slot].ref);
                c->sess[c->slot].ref = NULL;
                S.checks_lost++;
            }
        } else {
            unexpected(c, status, body, len, "step");
        }
        break;
    case K_FORK: {
        if (ex) {
            S.exhausted[c->kind]++;
            break;
        }
        if (status == 404 && c->foreign) {
            S.raced_404++;
            break;
        }
        cJSON *j = status == 201 ? cJSON_ParseWithLength(body, len) : NULL;
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
        if (cJSON_IsString(id) && strlen(id->valuestring) < SOAK_ID_MAX && c->sess[1].id[0] == '\0')
            new_session(c, 1, id->valuestring, c->foreign_cfg, true);
        else
            unexpected(c, status, body, len, "fork");
        cJSON_Delete(j);
        break;
    }
    case K_DELETE:
        if (status == 200 && strstr(body, "\"deleted\":true")) {
            snprintf(S.gone[S.n_gone++ % SOAK_GONE], SOAK_ID_MAX, "%s", c->sess[c->slot].id);
            clear_slot(c, c->slot);
            S.live--;
        } else {
            unexpected(c, status, body, len, "delete");
            clear_slot(c, c->slot); /* do not loop on it */
        }
        break;
    case K_STATS:
        if (c->gone) {
            if (status == 404)
                S.gone_404++;
            else
                unexpected(c, status, body, len, "a deleted session answered");
        } else if (status == 404 && c->foreign)
            S.raced_404++;
        else if (status != 200 || !strstr(body, "\"pages\""))
            unexpected(c, status, body, len, "stats");
        break;
    case K_LIST:
        if (status != 200 || !strstr(body, "\"sessions\""))
            unexpected(c, status, body, len, "list");
        break;
    case K_METRICS:
        if (status != 200 || !strstr(body, "kvd_pool_pages"))
            unexpected(c, status, body, len, "metrics");
        break;
    case K_HEALTHZ:
        if (status != 200)
            unexpected(c, status, body, len, "healthz");
        break;
    default:
        break;
    }
    free(c->want);
    c->want = NULL;
}

void traffic_abandoned(client *c)
{
    if (c->abandon == AB_HALF)
        S.half_sent++;
    else
        S.fire_and_close++;
    free(c->want);
    c->want = NULL;
}

void traffic_lost(client *c)
{
    if (c->kind == K_DELETE && c->slot >= 0)
        c->sess[c->slot].deleting = false; /* try again: the clean-up must not wait for it */
    free(c->want);
    c->want = NULL;
}

void traffic_free(client *c)
{
    for (int i = 0; i < SOAK_SLOTS; i++)
        if (c->sess[i].ref)
            ref_session_free(c->sess[i].ref);
    free(c->want);
    free(c->out);
    free(c->in);
}
