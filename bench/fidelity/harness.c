/* bench/fidelity/harness.c — the fidelity runs: the configuration table, the
 * exact sampling run, the teacher-forced run of one configuration through its
 * own kvd session (one kvd layer per model layer, one decode step per token),
 * and the comparison against the exact run (bytes from the session, relative
 * attention error per layer, KL and top-1 of the next-token distribution). */
#include "bench/fidelity/harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/session.h"
#include "cache/step.h"
#include "cache/stream.h"
#include "cache/subgen.h"

#define SINK 4

/* The configurations, one row each; "rotated" rows store keys and values in
 * the randomized Hadamard basis (cache.rotate, issue 14 section 2). */
static const fid_config default_configs[] = {
    {"exact", KVD_DTYPE_F32, KVD_EVICT_NONE, 0, 0, 0, "none"},
    {"dtype", KVD_DTYPE_F16, KVD_EVICT_NONE, 0, 0, 0, "none"},
    {"dtype", KVD_DTYPE_BF16, KVD_EVICT_NONE, 0, 0, 0, "none"},
    {"dtype", KVD_DTYPE_INT8, KVD_EVICT_NONE, 0, 0, 0, "none"},
    {"dtype", KVD_DTYPE_INT4, KVD_EVICT_NONE, 0, 0, 0, "none"},
    {"dtype", KVD_DTYPE_KIVI4, KVD_EVICT_NONE, 0, 0, 0, "none"},
    {"dtype", KVD_DTYPE_KIVI2, KVD_EVICT_NONE, 0, 0, 0, "none"},
    {"rotated", KVD_DTYPE_INT8, KVD_EVICT_NONE, 0, 0, 0, "hadamard"},
    {"rotated", KVD_DTYPE_KIVI4, KVD_EVICT_NONE, 0, 0, 0, "hadamard"},
    {"rotated", KVD_DTYPE_INT4, KVD_EVICT_NONE, 0, 0, 0, "hadamard"},
    {"rotated", KVD_DTYPE_KIVI2, KVD_EVICT_NONE, 0, 0, 0, "hadamard"},
    {"recency", KVD_DTYPE_F32, KVD_EVICT_RECENCY, 8, SINK, 0, "none"},
    {"recency", KVD_DTYPE_F32, KVD_EVICT_RECENCY, 4, SINK, 0, "none"},
    {"recency", KVD_DTYPE_F32, KVD_EVICT_RECENCY, 2, SINK, 0, "none"},
    {"l2norm", KVD_DTYPE_F32, KVD_EVICT_L2NORM, 8, SINK, 2, "none"},
    {"l2norm", KVD_DTYPE_F32, KVD_EVICT_L2NORM, 4, SINK, 2, "none"},
    {"l2norm", KVD_DTYPE_F32, KVD_EVICT_L2NORM, 2, SINK, 2, "none"},
    {"h2o", KVD_DTYPE_F32, KVD_EVICT_H2O, 8, SINK, 2, "none"},
    {"h2o", KVD_DTYPE_F32, KVD_EVICT_H2O, 4, SINK, 2, "none"},
    {"h2o", KVD_DTYPE_F32, KVD_EVICT_H2O, 2, SINK, 2, "none"},
    {"h2o recent 0", KVD_DTYPE_F32, KVD_EVICT_H2O, 8, SINK, 0, "none"},
    {"h2o recent 0", KVD_DTYPE_F32, KVD_EVICT_H2O, 4, SINK, 0, "none"},
    {"h2o recent 0", KVD_DTYPE_F32, KVD_EVICT_H2O, 2, SINK, 0, "none"},
    {"subgen", KVD_DTYPE_F32, KVD_EVICT_SUBGEN, 8, SINK, 0, "none"},
    {"subgen", KVD_DTYPE_F32, KVD_EVICT_SUBGEN, 4, SINK, 0, "none"},
    {"subgen", KVD_DTYPE_F32, KVD_EVICT_SUBGEN, 2, SINK, 0, "none"},
    {"int8 + h2o", KVD_DTYPE_INT8, KVD_EVICT_H2O, 4, SINK, 2, "none"},
    {"int8 + h2o", KVD_DTYPE_INT8, KVD_EVICT_H2O, 2, SINK, 2, "none"},
    {"kivi4 + h2o", KVD_DTYPE_KIVI4, KVD_EVICT_H2O, 4, SINK, 2, "none"},
    {"kivi4 + h2o", KVD_DTYPE_KIVI4, KVD_EVICT_H2O, 2, SINK, 2, "none"},
};

const fid_config *fid_default_configs(size_t *n)
{
    *n = sizeof default_configs / sizeof *default_configs;
    return default_configs;
}

fid_setup fid_default_setup(int tiny)
{
    fid_setup s = {.model = tiny ? fid_model_default_params(2, 128, 64, 512) : fid_model_default_params(4, 512, 64, 4096),
                   .prompt = tiny ? 8 : 16,
                   .context = tiny ? 96 : 512,
                   .page_bytes = 16384,
                   .sample_seed = 99};
    return s;
}

struct fid_harness {
    fid_setup setup;
    fid_model *model;
    uint32_t *tokens;     /* [context] */
    float *ref_logp;      /* [context][vocab] log-softmax of the exact teacher-forced run */
    uint32_t *ref_argmax; /* [context] */
    float *ref_attn;      /* [layers][context][heads * hd] */
    fid_profile profile;
};

const fid_profile *fid_harness_profile(const fid_harness *h)
{
    return &h->profile;
}

const fid_setup *fid_harness_setup(const fid_harness *h)
{
    return &h->setup;
}

const uint32_t *fid_harness_tokens(const fid_harness *h)
{
    return h->tokens;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint32_t budget_of(const fid_config *c, size_t context)
{
    return c->budget_div ? (uint32_t)(context / c->budget_div) : 0;
}

static uint32_t recent_of(const fid_config *c, uint32_t budget)
{
    if (c->eviction == KVD_EVICT_SUBGEN)
        return budget > c->sink ? budget - c->sink : 0;
    return c->recent_div ? budget / c->recent_div : 0;
}

void fid_config_name(const fid_config *c, char *buf, size_t len)
{
    const char *dt = kvd_dtype_name(c->dtype);
    const char *rot = strcmp(c->rotate, "none") == 0 ? "" : c->rotate;
    const char *plus = *rot ? " +" : "";
    if (c->eviction == KVD_EVICT_NONE)
        snprintf(buf, len, "%s%s%s", dt, plus, rot);
    else if (c->dtype == KVD_DTYPE_F32)
        snprintf(buf, len, "%s%s 1/%u%s%s", kvd_eviction_name(c->eviction),
                 c->eviction == KVD_EVICT_H2O && c->recent_div == 0 ? " r0" : "", c->budget_div, plus, rot);
    else
        snprintf(buf, len, "%s %s 1/%u%s%s", dt, kvd_eviction_name(c->eviction), c->budget_div, plus, rot);
}

/* The session config of one row. */
static int session_config(const fid_harness *h, const fid_config *c, kvd_session_config *sc)
{
    const fid_model_params *p = &h->setup.model;
    memset(sc, 0, sizeof *sc);
    sc->layers = p->layers;
    sc->heads = p->heads;
    sc->kv_heads = p->kv_heads;
    sc->head_dim = p->head_dim;
    sc->attention = KVD_ATTN_STANDARD;
    sc->scale = 1.0f / sqrtf((float)p->head_dim);
    sc->cache.dtype = c->dtype;
    sc->cache.eviction = c->eviction;
    sc->cache.budget = c->eviction == KVD_EVICT_SUBGEN ? 0 : budget_of(c, h->setup.context);
    sc->cache.sink = c->eviction == KVD_EVICT_NONE ? 0 : c->sink;
    sc->cache.recent = recent_of(c, budget_of(c, h->setup.context));
    sc->cache.group = 32;
    sc->cache.residual = 32;
    sc->cache.delta = 0.5;
    sc->cache.cluster_samples = 32;
    sc->cache.value_samples = 256;
    sc->seed = 7;
    sc->ttl_seconds = 600;
    if (strcmp(c->rotate, "hadamard") == 0)
        sc->cache.rotate = KVD_ROTATE_HADAMARD;
    else if (strcmp(c->rotate, "none") != 0) {
        fprintf(stderr, "fidelity: rotate \"%s\" is not a cache.rotate value\n", c->rotate);
        return -1;
    }
    return 0;
}

/* The attention of the model, through a kvd session: one decode step (m = 1,
 * one causal query) per token, as a model runner would send them. */
typedef struct attend_ctx {
    kvd_session *sess;
    kvd_pool *pool;
    const fid_model_params *p;
    float *record;  /* [layers][context][heads * hd] or NULL */
    size_t context;
} attend_ctx;

static int attend_kvd(void *vctx, uint32_t layer, size_t pos0, size_t n, const float *q, const float *k,
                      const float *v, float *o)
{
    attend_ctx *a = vctx;
    const size_t hd = a->p->head_dim, qrow = a->p->heads * hd, kvrow = a->p->kv_heads * hd;
    for (size_t t = 0; t < n; t++) {
        const kvd_step_entry e = {.layer = layer, .m = 1, .m_q = 1, .k = k + t * kvrow, .v = v + t * kvrow,
                                  .q = q + t * qrow, .mask = KVD_MASK_CAUSAL};
        kvd_step_output out;
        const int rc = kvd_step_run(a->sess, NULL, a->pool, &e, 1, &out);
        if (rc != KVD_STEP_OK) {
            fprintf(stderr, "fidelity: kvd_step_run failed (%d) at layer %u position %zu\n", rc, layer, pos0 + t);
            return 1;
        }
        memcpy(o + t * qrow, out.results[0].o, qrow * sizeof *o);
        kvd_step_output_free(&out);
        if (a->record)
            memcpy(a->record + ((size_t)layer * a->context + pos0 + t) * qrow, o + t * qrow, qrow * sizeof *o);
    }
    return 0;
}

/* A pool with room for the whole context at f32 in every stream, twice over
 * (page slack, KIVI's residual pages, SubGen's sketch). */
static int make_pool(const fid_harness *h, kvd_pool **pool)
{
    const fid_model_params *p = &h->setup.model;
    const size_t slot = 2 * (size_t)p->head_dim * 4 + 8;
    const size_t streams = (size_t)p->layers * p->kv_heads;
    const size_t bytes = 2 * streams * (h->setup.context * slot + 4 * h->setup.page_bytes) + (64u << 20);
    if (kvd_pool_create(bytes, h->setup.page_bytes, pool) != 0) {
        fprintf(stderr, "fidelity: cannot create a pool of %zu bytes\n", bytes);
        return -1;
    }
    return 0;
}

static void log_softmax(float *x, size_t n)
{
    float mx = x[0];
    for (size_t i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += exp((double)(x[i] - mx));
    const float lse = mx + (float)log(s);
    for (size_t i = 0; i < n; i++)
        x[i] -= lse;
}

static uint32_t argmax(const float *x, size_t n)
{
    size_t b = 0;
    for (size_t i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return (uint32_t)b;
}

/* Teacher-forced run of cfg over h->tokens: logits [context][vocab] (log-
 * softmaxed) and, when record is given, the attention outputs. */
static int run_forced(fid_harness *h, const fid_config *cfg, float *logp, float *record, fid_result *res)
{
    const fid_model_params *p = &h->setup.model;
    kvd_session_config sc;
    if (session_config(h, cfg, &sc) != 0)
        return -1;
    kvd_pool *pool;
    if (make_pool(h, &pool) != 0)
        return -1;
    kvd_session *sess;
    int rc = kvd_session_create(&sc, h->setup.page_bytes, &sess);
    if (rc != 0) {
        fprintf(stderr, "fidelity: kvd_session_create failed (%d)\n", rc);
        kvd_pool_destroy(pool);
        return -1;
    }
    attend_ctx a = {.sess = sess, .pool = pool, .p = p, .record = record, .context = h->setup.context};
    rc = fid_model_forward(h->model, h->tokens, 0, h->setup.context, attend_kvd, &a, logp);
    if (rc == 0) {
        for (size_t t = 0; t < h->setup.context; t++)
            log_softmax(logp + t * p->vocab, p->vocab);
        /* What the session holds at the end, as its stats report it. */
        double payload = 0.0, represented = 0.0;
        const size_t tokens = kvd_session_tokens(sess), pages = kvd_session_pages(sess);
        for (size_t i = 0; i < sess->n_streams; i++) {
            payload += (double)kvd_stream_payload_bytes(&sess->streams[i]);
            represented += (double)sess->streams[i].n_tokens;
            if (sess->subgen) {
                payload += (double)kvd_subgen_payload_bytes(&sess->subgen[i]);
                represented += (double)sess->subgen[i].items;
            }
        }
        res->kv_bytes_per_token = payload / (double)h->setup.context;
        res->stats_bytes_per_token = tokens ? (double)pages * (double)h->setup.page_bytes / (double)tokens : 0.0;
        res->bits_per_coordinate = represented > 0 ? 8.0 * payload / (2.0 * p->head_dim * represented) : 0.0;
        res->budget = sc.cache.eviction == KVD_EVICT_SUBGEN ? sc.cache.sink + sc.cache.recent : sc.cache.budget;
        res->recent = sc.cache.recent;
    }
    kvd_session_destroy(sess, pool);
    kvd_pool_destroy(pool);
    return rc == 0 ? 0 : -1;
}

/* The exact run, token by token as a decoder generates: each next token is
 * sampled at temperature 1 from the exact distribution. */
static int generate(fid_harness *h)
{
    const fid_model_params *p = &h->setup.model;
    fid_config exact = default_configs[0];
    kvd_session_config sc;
    kvd_pool *pool;
    kvd_session *sess;
    if (session_config(h, &exact, &sc) != 0 || make_pool(h, &pool) != 0)
        return -1;
    if (kvd_session_create(&sc, h->setup.page_bytes, &sess) != 0) {
        kvd_pool_destroy(pool);
        return -1;
    }
    fid_rng r;
    fid_rng_seed(&r, h->setup.sample_seed);
    h->tokens[0] = 0; /* BOS: the sink */
    for (size_t t = 1; t < h->setup.prompt; t++)
        h->tokens[t] = 1 + (uint32_t)(fid_rng_next(&r) % (p->vocab - 1));
    float *logits = malloc(p->vocab * sizeof *logits);
    attend_ctx a = {.sess = sess, .pool = pool, .p = p, .context = h->setup.context};
    int rc = logits ? 0 : -1;
    for (size_t t = 0; rc == 0 && t + 1 < h->setup.context; t++) {
        rc = fid_model_forward(h->model, h->tokens + t, t, 1, attend_kvd, &a, logits);
        if (rc != 0 || t + 1 < h->setup.prompt)
            continue;
        log_softmax(logits, p->vocab);
        double u = fid_rng_unit(&r), c = 0.0;
        uint32_t pick = p->vocab - 1;
        for (uint32_t i = 0; i < p->vocab; i++) {
            c += exp((double)logits[i]);
            if (u < c) {
                pick = i;
                break;
            }
        }
        h->tokens[t + 1] = pick;
    }
    free(logits);
    kvd_session_destroy(sess, pool);
    kvd_pool_destroy(pool);
    return rc == 0 ? 0 : -1;
}

/* The profile's attention: exact softmax attention in double over the whole
 * sequence (one call per layer with every token), measuring where each head
 * looks; the output is exact too, so the pass continues as the model would. */
typedef struct profile_ctx {
    const fid_model_params *p;
    size_t first;      /* first generated position */
    fid_profile *prof;
    double *w;         /* [context] scratch */
    double count[2];   /* (layer, position, head) samples per kind */
    double k_out, k_rest, n_out, n_rest;
} profile_ctx;

static int attend_profile(void *vctx, uint32_t layer, size_t pos0, size_t n, const float *q, const float *k,
                          const float *v, float *o)
{
    profile_ctx *c = vctx;
    const fid_model_params *p = c->p;
    const size_t hd = p->head_dim, H = p->heads, G = p->kv_heads, group = H / G, half = hd / 2;
    const double scale = 1.0 / sqrt((double)hd);
    (void)layer;
    if (pos0 != 0)
        return 1; /* the profile runs whole sequences */
    for (size_t t = 1; t < n; t++)
        for (size_t g = 0; g < G; g++)
            for (size_t i = 0; i < hd; i++) {
                const double a = fabs((double)k[(t * G + g) * hd + i]);
                if (i == half - 1 || i == hd - 1)
                    c->k_out += a, c->n_out++;
                else
                    c->k_rest += a, c->n_rest++;
            }
    for (size_t t = 0; t < n; t++)
        for (size_t h = 0; h < H; h++) {
            const float *qh = q + (t * H + h) * hd;
            const size_t g = h / group;
            double mx = -INFINITY, sum = 0.0;
            for (size_t j = 0; j <= t; j++) {
                double s = 0.0;
                for (size_t i = 0; i < hd; i++)
                    s += (double)qh[i] * k[(j * G + g) * hd + i];
                c->w[j] = s * scale;
                mx = c->w[j] > mx ? c->w[j] : mx;
            }
            for (size_t j = 0; j <= t; j++)
                sum += c->w[j] = exp(c->w[j] - mx);
            float *oh = o + (t * H + h) * hd;
            for (size_t i = 0; i < hd; i++) {
                double acc = 0.0;
                for (size_t j = 0; j <= t; j++)
                    acc += c->w[j] * v[(j * G + g) * hd + i];
                oh[i] = (float)(acc / sum);
            }
            if (t < c->first)
                continue;
            const int kind = (int)((h % group) % 2);
            double recent = 0.0, dist = 0.0, rest = 0.0;
            for (size_t j = 1; j <= t; j++) {
                const double wj = c->w[j] / sum;
                rest += wj;
                dist += wj * (double)(t - j);
                if (t - j < 16)
                    recent += wj;
            }
            c->prof->sink_mass[kind] += c->w[0] / sum;
            c->prof->recent_mass[kind] += recent;
            c->prof->mean_distance[kind] += rest > 0 ? dist / rest : 0.0;
            c->count[kind]++;
        }
    return 0;
}

static int profile(fid_harness *h)
{
    const fid_model_params *p = &h->setup.model;
    const size_t n = h->setup.context, V = p->vocab;
    profile_ctx c = {.p = p, .first = h->setup.prompt - 1, .prof = &h->profile};
    c.w = malloc(n * sizeof *c.w);
    float *logits = malloc(n * V * sizeof *logits);
    int rc = c.w && logits ? fid_model_forward(h->model, h->tokens, 0, n, attend_profile, &c, logits) : -1;
    if (rc == 0) {
        for (int kind = 0; kind < 2; kind++)
            if (c.count[kind] > 0) {
                h->profile.sink_mass[kind] /= c.count[kind];
                h->profile.recent_mass[kind] /= c.count[kind];
                h->profile.mean_distance[kind] /= c.count[kind];
            }
        h->profile.outlier_ratio = (c.k_out / c.n_out) / (c.k_rest / c.n_rest);
        /* The reference's own distributions (not the profile's logits). */
        double ent = 0.0, top = 0.0;
        for (size_t t = c.first; t + 1 < n; t++) {
            const float *lp = h->ref_logp + t * V;
            for (size_t i = 0; i < V; i++)
                ent -= exp((double)lp[i]) * (double)lp[i];
            top += exp((double)lp[h->ref_argmax[t]]);
        }
        h->profile.entropy = ent / (double)(n - 1 - c.first);
        h->profile.top1_prob = top / (double)(n - 1 - c.first);
    }
    free(c.w);
    free(logits);
    return rc == 0 ? 0 : -1;
}

int fid_harness_create(const fid_setup *setup, fid_harness **out)
{
    const fid_model_params *p = &setup->model;
    if (setup->prompt < 1 || setup->context <= setup->prompt || p->layers > FID_MAX_LAYERS) {
        fprintf(stderr, "fidelity: need 1 <= prompt < context and at most %d layers\n", FID_MAX_LAYERS);
        return -1;
    }
    fid_harness *h = calloc(1, sizeof *h);
    if (!h)
        return -1;
    h->setup = *setup;
    const size_t n = setup->context;
    h->model = fid_model_create(p);
    h->tokens = calloc(n, sizeof *h->tokens);
    h->ref_logp = malloc(n * p->vocab * sizeof *h->ref_logp);
    h->ref_argmax = malloc(n * sizeof *h->ref_argmax);
    h->ref_attn = malloc((size_t)p->layers * n * p->heads * p->head_dim * sizeof *h->ref_attn);
    fid_result ref;
    if (!h->model || !h->tokens || !h->ref_logp || !h->ref_argmax || !h->ref_attn || generate(h) != 0
        || run_forced(h, &default_configs[0], h->ref_logp, h->ref_attn, &ref) != 0) {
        fid_harness_destroy(h);
        return -1;
    }
    for (size_t t = 0; t < n; t++)
        h->ref_argmax[t] = argmax(h->ref_logp + t * p->vocab, p->vocab);
    if (profile(h) != 0) {
        fid_harness_destroy(h);
        return -1;
    }
    *out = h;
    return 0;
}

void fid_harness_destroy(fid_harness *h)
{
    if (!h)
        return;
    fid_model_destroy(h->model);
    free(h->tokens);
    free(h->ref_logp);
    free(h->ref_argmax);
    free(h->ref_attn);
    free(h);
}

int fid_harness_run(fid_harness *h, const fid_config *cfg, fid_result *res)
{
    const fid_model_params *p = &h->setup.model;
    const size_t n = h->setup.context, V = p->vocab, row = (size_t)p->heads * p->head_dim;
    memset(res, 0, sizeof *res);
    res->cfg = cfg;
    fid_config_name(cfg, res->name, sizeof res->name);
    if (cfg->budget_div)
        snprintf(res->label, sizeof res->label, "1/%u", cfg->budget_div);
    else
        snprintf(res->label, sizeof res->label, "%s", kvd_dtype_name(cfg->dtype));
    float *logp = malloc(n * V * sizeof *logp);
    float *attn = malloc((size_t)p->layers * n * row * sizeof *attn);
    const double t0 = now();
    if (!logp || !attn || run_forced(h, cfg, logp, attn, res) != 0) {
        free(logp);
        free(attn);
        return -1;
    }
    /* Compared at the generated positions: the logits at t predict token t + 1. */
    const size_t first = h->setup.prompt - 1, count = n - 1 - first;
    double kl = 0.0;
    size_t agree = 0;
    for (size_t t = first; t + 1 < n; t++) {
        const float *a = h->ref_logp + t * V, *b = logp + t * V;
        double d = 0.0;
        for (size_t i = 0; i < V; i++)
            d += exp((double)a[i]) * ((double)a[i] - (double)b[i]);
        kl += d > 0.0 ? d : 0.0; /* rounding can leave a tiny negative */
        agree += argmax(b, V) == h->ref_argmax[t];
    }
    res->kl_mean = kl / (double)count;
    res->top1 = (double)agree / (double)count;
    for (uint32_t l = 0; l < p->layers; l++) {
        double sum = 0.0, mx = 0.0;
        for (size_t t = first; t + 1 < n; t++) {
            const float *a = h->ref_attn + ((size_t)l * n + t) * row, *b = attn + ((size_t)l * n + t) * row;
            double num = 0.0, den = 0.0;
            for (size_t i = 0; i < row; i++) {
                num += ((double)b[i] - a[i]) * ((double)b[i] - a[i]);
                den += (double)a[i] * a[i];
            }
            const double e = den > 0.0 ? sqrt(num / den) : (num > 0.0 ? INFINITY : 0.0);
            sum += e;
            mx = e > mx ? e : mx;
        }
        res->err_mean[l] = sum / (double)count;
        res->err_max[l] = mx;
    }
    res->seconds = now() - t0;
    free(logp);
    free(attn);
    return 0;
}
