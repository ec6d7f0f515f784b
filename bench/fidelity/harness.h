/* bench/fidelity/harness.h — prices cache configurations on the fidelity
 * decoder: an exact run (f32, no eviction) samples a sequence and records the
 * reference; each configuration (a row of fid_default_configs) runs teacher-
 * forced on the same tokens through its own in-process kvd session and is
 * compared (bytes, bits, attention error per layer, KL, top-1). */
#ifndef KVD_BENCH_FIDELITY_HARNESS_H
#define KVD_BENCH_FIDELITY_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "bench/fidelity/model.h"
#include "cache/types.h"

#define FID_MAX_LAYERS 16

/* One row: a dtype, a policy at a budget, and a rotation. */
typedef struct fid_config {
    const char *family;   /* plot series: "dtype", "recency", "h2o", ... */
    kvd_dtype dtype;
    kvd_eviction eviction;
    uint32_t budget_div;  /* budget = context / budget_div tokens; 0 = no budget */
    uint32_t sink;        /* protected first tokens (with a policy) */
    uint32_t recent_div;  /* recent = budget / recent_div; 0 = none. subgen: recent = budget - sink */
    const char *rotate;   /* cache.rotate: "none" or "hadamard" */
} fid_config;

/* The table `make bench` runs: the exact f32 row first, then every dtype,
 * then every policy at 1/8, 1/4 and 1/2 of the context. */
const fid_config *fid_default_configs(size_t *n);

typedef struct fid_setup {
    fid_model_params model;
    size_t prompt;        /* prompt tokens (token 0 is BOS, the rest fixed-seed random) */
    size_t context;       /* prompt + generated tokens */
    size_t page_bytes;    /* kvd pool page size */
    uint64_t sample_seed; /* the exact run samples at temperature 1 from this seed */
} fid_setup;

/* The setups: `make bench`'s (4 layers, d_model 512, head_dim 64, vocab 4096,
 * 512 tokens) and the smoke test's tiny one (2 layers, d_model 128, vocab
 * 512, 96 tokens: well under a second). */
fid_setup fid_default_setup(int tiny);

typedef struct fid_result {
    const fid_config *cfg;
    char name[48];                   /* "int4", "h2o 1/8", ... */
    char label[16];                  /* the point's label in the plot: the dtype, or the budget "1/8" */
    uint32_t budget, recent;
    double kv_bytes_per_token;       /* cache payload of the whole model at the end / context tokens */
    double stats_bytes_per_token;    /* pages * page_bytes / tokens held, as GET /v1/sessions/{id} says */
    double bits_per_coordinate;      /* payload bits per cached K/V number, as the stats say */
    double err_mean[FID_MAX_LAYERS]; /* relative attention output error per layer, generated positions */
    double err_max[FID_MAX_LAYERS];
    double kl_mean;                  /* KL(exact || this), nats per generated token */
    double top1;                     /* fraction of generated positions whose argmax matches the exact run's */
    double seconds;
} fid_result;

/* The exact run's shape, measured (plain C attention over its own q, k, v),
 * averaged over layers and the generated positions, by head kind: local
 * heads (even heads of a kv group) and content heads (odd). */
typedef struct fid_profile {
    double entropy;          /* mean next-token entropy, nats */
    double top1_prob;        /* mean probability of the argmax token */
    double sink_mass[2];     /* attention weight on token 0: [local, content] */
    double recent_mass[2];   /* weight on the last 16 tokens (token 0 excluded) */
    double mean_distance[2]; /* weighted mean distance back (token 0 excluded) */
    double outlier_ratio;    /* mean |k| on the two outlier channels / on the others (token 0 excluded) */
} fid_profile;

typedef struct fid_harness fid_harness;

/* Builds the model, samples the sequence with the exact configuration and
 * records the reference. Returns 0, or -1 (message on stderr). */
int fid_harness_create(const fid_setup *setup, fid_harness **out);
void fid_harness_destroy(fid_harness *h);
const fid_setup *fid_harness_setup(const fid_harness *h);
const fid_profile *fid_harness_profile(const fid_harness *h);

/* The sampled sequence: setup->context tokens. */
const uint32_t *fid_harness_tokens(const fid_harness *h);

/* Runs cfg teacher-forced and fills res. Returns 0, or -1 (message on
 * stderr: the session could not be made or a step failed). */
int fid_harness_run(fid_harness *h, const fid_config *cfg, fid_result *res);

/* "f32", "int4", "h2o 1/8", "kivi2 +hadamard": the row's label. */
void fid_config_name(const fid_config *cfg, char *buf, size_t len);

#endif
