/* bench/fidelity/model.h — a small deterministic decoder (fixed-seed weights)
 * shaped like a trained model where it matters to a KV cache: outlier key
 * channels, a sink at token 0, local heads and content heads (docs/fidelity.md).
 * Attention is the caller's: each layer hands its post-RoPE q, k, v to a
 * function (the harness: a kvd session) and takes the output back. */
#ifndef KVD_BENCH_FIDELITY_MODEL_H
#define KVD_BENCH_FIDELITY_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct fid_model_params {
    uint32_t layers, d_model, heads, kv_heads, head_dim, ffn, vocab;
    double rope_base;
    /* Two key channels of each kv head (one low-frequency RoPE pair) are
     * outlier_scale times the rest, with a constant offset of
     * outlier_scale on the first; the query's matching channels are
     * divided by it, so exact scores are what they would be without. */
    float outlier_scale;
    /* Score bonus (in units of the scaled score) every query gives token 0,
     * spread per head over [0.5, 1] x this. */
    float sink_bonus;
    /* Score bonus of a local head at distance 0 (decays with distance as a
     * sum of cosines over the high-frequency RoPE pairs). */
    float local_bonus;
    /* Correlation of a content head's query projection with its key
     * projection: a query finds keys of tokens like its own, at any distance. */
    float content_corr;
    float logit_scale; /* std of the logits before the softmax */
    uint64_t seed;
} fid_model_params;

/* Defaults for a given size: d_model, head_dim and layers chosen by the
 * caller, the rest derived (heads = d_model / head_dim, kv_heads = heads / 4
 * or 1, ffn = 2 d_model). */
fid_model_params fid_model_default_params(uint32_t layers, uint32_t d_model, uint32_t head_dim, uint32_t vocab);

typedef struct fid_model fid_model;

/* Builds the weights; NULL on a bad shape (message on stderr) or no memory. */
fid_model *fid_model_create(const fid_model_params *p);
void fid_model_destroy(fid_model *m);
const fid_model_params *fid_model_params_of(const fid_model *m);

/* The attention of one layer for n consecutive tokens at positions pos0 ..
 * pos0 + n - 1, each seeing itself and everything before it: q [n][heads][hd],
 * k and v [n][kv_heads][hd] (RoPE applied), o [n][heads][hd] written. Returns
 * 0, or non-zero to abort the forward pass. */
typedef int (*fid_attend_fn)(void *ctx, uint32_t layer, size_t pos0, size_t n, const float *q, const float *k,
                             const float *v, float *o);

/* Runs tokens[0 .. n) (positions pos0 ..) through every layer, layer by layer
 * (all n tokens of a layer, then the next: the matmuls are n-row sgemms, and
 * attend sees a layer's n tokens at once). logits [n][vocab] is written
 * (NULL: not computed). Returns 0, attend's non-zero value, or -1 (memory). */
int fid_model_forward(const fid_model *m, const uint32_t *tokens, size_t pos0, size_t n, fid_attend_fn attend,
                      void *ctx, float *logits);

/* The deterministic generator every part of the harness draws from. */
typedef struct fid_rng {
    uint64_t s;
} fid_rng;
void fid_rng_seed(fid_rng *r, uint64_t seed);
uint64_t fid_rng_next(fid_rng *r);
double fid_rng_unit(fid_rng *r); /* (0, 1) */
float fid_rng_normal(fid_rng *r);

#endif
