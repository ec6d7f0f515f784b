/* bench/fidelity/model.c — the fidelity harness's decoder: weights drawn from
 * a fixed seed and then shaped (outlier key channels, a sink at token 0, local
 * and content heads; see model.h and docs/fidelity.md), and the forward pass:
 * RMSNorm, one fused QKV sgemm, RoPE, attention by the caller, output
 * projection, a gated SiLU MLP, and the unembedding. Matmuls are OpenBLAS. */
#include "bench/fidelity/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

typedef struct fid_layer {
    float *wqkv;   /* [(heads + 2 kv_heads) * hd][d_model]: q rows, then k, then v */
    float *bq, *bk; /* [heads * hd], [kv_heads * hd]: biases added before RoPE */
    float *wo;     /* [d_model][heads * hd] */
    float *wgu;    /* [2 ffn][d_model]: gate rows, then up rows */
    float *wdown;  /* [d_model][ffn] */
} fid_layer;

struct fid_model {
    fid_model_params p;
    float *embed;   /* [vocab][d_model] */
    float *unembed; /* [vocab][d_model] */
    fid_layer *layer;
};

/* ---- random numbers: splitmix64 ---- */

void fid_rng_seed(fid_rng *r, uint64_t seed)
{
    r->s = seed;
}

uint64_t fid_rng_next(fid_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double fid_rng_unit(fid_rng *r)
{
    return ((double)(fid_rng_next(r) >> 11) + 0.5) * 0x1p-53;
}

float fid_rng_normal(fid_rng *r)
{
    const double u = fid_rng_unit(r), w = fid_rng_unit(r);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * w));
}

fid_model_params fid_model_default_params(uint32_t layers, uint32_t d_model, uint32_t head_dim, uint32_t vocab)
{
    fid_model_params p = {0};
    p.layers = layers;
    p.d_model = d_model;
    p.head_dim = head_dim;
    p.heads = head_dim ? d_model / head_dim : 0;
    p.kv_heads = p.heads >= 4 ? p.heads / 4 : 1;
    p.ffn = 2 * d_model;
    p.vocab = vocab;
    p.rope_base = 10000.0;
    p.outlier_scale = 16.0f;
    p.sink_bonus = 10.0f;
    p.local_bonus = 9.0f;
    p.content_corr = 0.7f;
    p.logit_scale = 4.5f;
    p.seed = 20260514;
    return p;
}

static float *normal_matrix(fid_rng *r, size_t n, float std)
{
    float *a = malloc(n * sizeof *a);
    if (a)
        for (size_t i = 0; i < n; i++)
            a[i] = std * fid_rng_normal(r);
    return a;
}

/* One layer's weights and their shaping; the three features live in fixed
 * RoPE pairs of every head (rotate-half: channel i pairs with i + hd/2 and
 * turns at pos * base^(-2i/hd)): the outlier pair is the slowest, the sink
 * pair the next slowest, local heads use the fastest quarter. */
static int make_layer(const fid_model_params *p, fid_rng *r, fid_layer *L)
{
    const size_t D = p->d_model, hd = p->head_dim, H = p->heads, G = p->kv_heads, F = p->ffn;
    const size_t group = H / G, half = hd / 2;
    const size_t ch_out = half - 1, ch_sink = half - 2, n_local = hd / 4;
    L->wqkv = normal_matrix(r, (H + 2 * G) * hd * D, 1.0f / sqrtf((float)D));
    L->bq = calloc(H * hd, sizeof *L->bq);
    L->bk = calloc(G * hd, sizeof *L->bk);
    L->wo = normal_matrix(r, D * H * hd, 1.5f / sqrtf((float)(H * hd)));
    L->wgu = normal_matrix(r, 2 * F * D, 1.0f / sqrtf((float)D));
    L->wdown = normal_matrix(r, D * F, 1.0f / sqrtf((float)F));
    if (!L->wqkv || !L->bq || !L->bk || !L->wo || !L->wgu || !L->wdown)
        return -1;
    float *wq = L->wqkv, *wk = wq + H * hd * D, *wv = wk + G * hd * D;
    for (size_t g = 0; g < G; g++) {
        float *kg = wk + g * hd * D;
        for (size_t j = 0; j < group; j++) {
            const size_t h = g * group + j;
            float *qh = wq + h * hd * D;
            /* Odd heads of a group are content heads: their query projection
             * leans on the key projection, so a token finds earlier tokens
             * like itself wherever they are. */
            if (j % 2 == 1) {
                const float a = p->content_corr, b = sqrtf(1.0f - a * a);
                for (size_t i = 0; i < hd * D; i++)
                    qh[i] = a * kg[i] + b * qh[i];
            } else {
                /* Even heads are local: a query bias along the keys' bias
                 * direction in the fast RoPE pairs scores sum_i cos(dist *
                 * theta_i), highest at distance 0 and fading within ~1/theta. */
                const float bonus = p->local_bonus * (1.0f - 0.25f * (float)(j / 2 % 2));
                for (size_t i = 0; i < n_local; i++)
                    L->bq[h * hd + i] = bonus * sqrtf((float)hd) / (float)n_local;
            }
            /* Outlier pair: the query's share divided by what the key's is
             * multiplied by, so exact scores do not change. */
            for (size_t c = 0; c < D; c++) {
                qh[ch_out * D + c] /= p->outlier_scale;
                qh[(ch_out + half) * D + c] /= p->outlier_scale;
            }
            /* Sink pair: the query is a constant (bias only) that meets
             * token 0's key there, and nothing else's. */
            memset(qh + ch_sink * D, 0, D * sizeof *qh);
            memset(qh + (ch_sink + half) * D, 0, D * sizeof *qh);
            const float spread = 0.5f + 0.5f * (float)((h * 7) % group) / (float)(group > 1 ? group - 1 : 1);
            L->bq[h * hd + ch_sink] = spread * p->sink_bonus * sqrtf((float)hd) / sqrtf((float)D);
            for (size_t i = 0; i < hd; i++)
                qh[i * D] = 0.0f; /* column 0 is token 0's alone */
        }
        for (size_t c = 0; c < D; c++) {
            kg[ch_out * D + c] *= p->outlier_scale;
            kg[(ch_out + half) * D + c] *= p->outlier_scale;
        }
        L->bk[g * hd + ch_out] = p->outlier_scale;
        for (size_t i = 0; i < n_local; i++)
            L->bk[g * hd + i] = 1.0f;
        /* Token 0's residual is (nearly) all in coordinate 0: only the sink
         * channel of the key reads it, and values do not (a sink is a no-op). */
        for (size_t i = 0; i < hd; i++) {
            kg[i * D] = 0.0f;
            wv[(g * hd + i) * D] = 0.0f;
        }
        memset(kg + ch_sink * D, 0, D * sizeof *kg);
        memset(kg + (ch_sink + half) * D, 0, D * sizeof *kg);
        kg[ch_sink * D] = 1.0f;
    }
    /* Nothing writes coordinate 0 of the residual: it stays token 0's mark. */
    memset(L->wo, 0, H * hd * sizeof *L->wo);
    memset(L->wdown, 0, F * sizeof *L->wdown);
    return 0;
}

fid_model *fid_model_create(const fid_model_params *p)
{
    if (p->layers == 0 || p->head_dim < 8 || p->head_dim % 8 || p->heads == 0 || p->kv_heads == 0
        || p->heads % p->kv_heads || p->d_model < 8 || p->ffn == 0 || p->vocab < 2 || p->outlier_scale <= 0) {
        fprintf(stderr, "fidelity: bad model shape (layers %u, d_model %u, heads %u/%u, head_dim %u)\n", p->layers,
                p->d_model, p->heads, p->kv_heads, p->head_dim);
        return NULL;
    }
    fid_model *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->p = *p;
    fid_rng r;
    fid_rng_seed(&r, p->seed);
    const size_t D = p->d_model, V = p->vocab;
    m->embed = normal_matrix(&r, V * D, 1.0f);
    m->unembed = normal_matrix(&r, V * D, p->logit_scale / sqrtf((float)D));
    m->layer = calloc(p->layers, sizeof *m->layer);
    if (!m->embed || !m->unembed || !m->layer) {
        fid_model_destroy(m);
        return NULL;
    }
    /* Token 0 (BOS) is the sink: a residual all in coordinate 0, which no
     * other token has. */
    for (size_t t = 0; t < V; t++)
        m->embed[t * D] = 0.0f;
    memset(m->embed, 0, D * sizeof *m->embed);
    m->embed[0] = sqrtf((float)D);
    for (uint32_t l = 0; l < p->layers; l++)
        if (make_layer(p, &r, &m->layer[l]) != 0) {
            fid_model_destroy(m);
            return NULL;
        }
    return m;
}

void fid_model_destroy(fid_model *m)
{
    if (!m)
        return;
    for (uint32_t l = 0; m->layer && l < m->p.layers; l++) {
        fid_layer *L = &m->layer[l];
        free(L->wqkv);
        free(L->bq);
        free(L->bk);
        free(L->wo);
        free(L->wgu);
        free(L->wdown);
    }
    free(m->layer);
    free(m->embed);
    free(m->unembed);
    free(m);
}

const fid_model_params *fid_model_params_of(const fid_model *m)
{
    return &m->p;
}

static void rmsnorm(const float *x, float *y, size_t n, size_t D)
{
    for (size_t t = 0; t < n; t++) {
        double ss = 0.0;
        for (size_t i = 0; i < D; i++)
            ss += (double)x[t * D + i] * x[t * D + i];
        const float inv = (float)(1.0 / sqrt(ss / (double)D + 1e-6));
        for (size_t i = 0; i < D; i++)
            y[t * D + i] = x[t * D + i] * inv;
    }
}

/* Rotate-half RoPE of `rows` heads of one token at position pos. */
static void rope(float *x, size_t rows, size_t hd, size_t pos, double base)
{
    const size_t half = hd / 2;
    for (size_t i = 0; i < half; i++) {
        const double th = (double)pos * pow(base, -2.0 * (double)i / (double)hd);
        const float c = (float)cos(th), s = (float)sin(th);
        for (size_t h = 0; h < rows; h++) {
            float *a = x + h * hd + i, *b = a + half;
            const float x0 = *a, x1 = *b;
            *a = x0 * c - x1 * s;
            *b = x0 * s + x1 * c;
        }
    }
}

/* Row-major C[n][N] = A[n][K] . W[N][K]^T + beta C. */
static void matmul_t(const float *A, const float *W, float *C, size_t n, size_t N, size_t K, float beta)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)N, (int)K, 1.0f, A, (int)K, W, (int)K, beta,
                C, (int)N);
}

int fid_model_forward(const fid_model *m, const uint32_t *tokens, size_t pos0, size_t n, fid_attend_fn attend,
                      void *ctx, float *logits)
{
    const fid_model_params *p = &m->p;
    const size_t D = p->d_model, hd = p->head_dim, H = p->heads, G = p->kv_heads, F = p->ffn;
    const size_t qkv_w = (H + 2 * G) * hd;
    float *x = malloc(n * D * sizeof *x), *h = malloc(n * D * sizeof *h);
    float *qkv = malloc(n * qkv_w * sizeof *qkv), *q = malloc(n * H * hd * sizeof *q);
    float *k = malloc(n * G * hd * sizeof *k), *v = malloc(n * G * hd * sizeof *v);
    float *o = malloc(n * H * hd * sizeof *o), *gu = malloc(n * 2 * F * sizeof *gu);
    int rc = -1;
    if (!x || !h || !qkv || !q || !k || !v || !o || !gu)
        goto out;
    for (size_t t = 0; t < n; t++)
        memcpy(x + t * D, m->embed + (size_t)tokens[t] * D, D * sizeof *x);
    for (uint32_t l = 0; l < p->layers; l++) {
        const fid_layer *L = &m->layer[l];
        rmsnorm(x, h, n, D);
        matmul_t(h, L->wqkv, qkv, n, qkv_w, D, 0.0f);
        for (size_t t = 0; t < n; t++) {
            const float *row = qkv + t * qkv_w;
            float *qt = q + t * H * hd, *kt = k + t * G * hd;
            for (size_t i = 0; i < H * hd; i++)
                qt[i] = row[i] + L->bq[i];
            for (size_t i = 0; i < G * hd; i++)
                kt[i] = row[H * hd + i] + L->bk[i];
            memcpy(v + t * G * hd, row + (H + G) * hd, G * hd * sizeof *v);
            rope(qt, H, hd, pos0 + t, p->rope_base);
            rope(kt, G, hd, pos0 + t, p->rope_base);
        }
        rc = attend(ctx, l, pos0, n, q, k, v, o);
        if (rc != 0)
            goto out;
        rc = -1;
        matmul_t(o, L->wo, x, n, D, H * hd, 1.0f);
        rmsnorm(x, h, n, D);
        matmul_t(h, L->wgu, gu, n, 2 * F, D, 0.0f);
        for (size_t t = 0; t < n; t++) {
            float *g = gu + t * 2 * F;
            for (size_t i = 0; i < F; i++)
                g[i] = g[i] / (1.0f + expf(-g[i])) * g[F + i]; /* silu(gate) * up, into the gate half */
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)D, (int)F, 1.0f, gu, (int)(2 * F),
                    L->wdown, (int)F, 1.0f, x, (int)D);
    }
    if (logits) {
        rmsnorm(x, h, n, D);
        matmul_t(h, m->unembed, logits, n, p->vocab, D, 0.0f);
    }
    rc = 0;
out:
    free(x);
    free(h);
    free(qkv);
    free(q);
    free(k);
    free(v);
    free(o);
    free(gu);
    return rc;
}
