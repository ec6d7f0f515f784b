/* bench/rotate.c — what cache.rotate "hadamard" buys on outlier keys
 * (issue 14 §2). N(0,1) keys whose channels 10 and 50 (one in each int4
 * group) are x8/x6, x16/x12 and x32/x24 the others, N(0,1) values and
 * queries, head_dim 64, group 32 (KIVI residual 32), 1,024 tokens per kv
 * head (2 kv heads, 8 query heads, appended 256 at a time), 64 decode
 * queries, 4 seeds pooled. Each of int4, int8, kivi4, kivi2 runs plain and
 * rotated through kvd's real cache, step engine and dispatched kernels
 * (kvd_step_run); then int4 again with both outliers in one group
 * (channels 10 and 20), since where they fall changes plain int4's error.
 * The relative output error ||o - o_exact|| / ||o_exact|| is
 * taken against exact double attention over the data as sent. Beside each
 * plain/rotated ratio: the ratio a float64 model of the format predicts on
 * the same data (the formats' rounding written out in double: int8 per
 * token; int4 per token and group, z = min, s = (max - min)/15; KIVI keys per
 * channel over 32-token blocks, values per token and group, newest 32 tokens
 * exact; the same H from the session seed), and the issue's int4 targets.
 * Rotation costs no byte: the signs come from the seed. Errors, not times:
 * the numbers do not depend on the machine beyond f32 rounding.
 * Usage: bench_rotate */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "bench/bench.h"
#include "attention/hadamard.h"
#include "cache/pool.h"
#include "cache/rotate.h"
#include "cache/session.h"
#include "cache/step.h"

#define HEADS 8
#define KV_HEADS 2
#define GQ (HEADS / KV_HEADS)
#define D 64
#define GROUP 32
#define RESIDUAL 32
#define N_TOK 1024
#define CHUNK 256
#define N_Q 64
#define SEEDS 4
#define PAGE (16 * 1024)
#define OUT_A 10
static size_t out_b = 50; /* 50: the other int4 group; 20: the same one */
#define SESSION_SEED 0x5eedull

typedef struct outlier_case {
    double a, b;        /* channel OUT_A x a, OUT_B x b */
    double model_issue; /* the issue's float64 prediction for int4 */
    double target;      /* what kvd must reach */
} outlier_case;

static const outlier_case CASES[] = {{8, 6, 1.6, 1.5}, {16, 12, 1.8, 1.7}, {32, 24, 2.6, 2.4}};
static const kvd_dtype DTYPES[] = {KVD_DTYPE_INT4, KVD_DTYPE_INT8, KVD_DTYPE_KIVI4, KVD_DTYPE_KIVI2};
#define N_DT (sizeof DTYPES / sizeof *DTYPES)

/* ---- data ---- */

static uint64_t rng_state;
static double uniform01(void)
{
    rng_state += 0x9e3779b97f4a7c15ull;
    uint64_t z = rng_state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}
static double gauss(void)
{
    return sqrt(-2 * log(uniform01())) * cos(2 * M_PI * uniform01());
}

/* k, v: [N_TOK][KV_HEADS][D]; q: [N_Q][HEADS][D], as f32 (what a client sends). */
typedef struct dataset {
    float *k, *v, *q;
} dataset;

static dataset make_data(const outlier_case *c, uint64_t seed)
{
    rng_state = seed;
    dataset x = {malloc(sizeof(float) * N_TOK * KV_HEADS * D), malloc(sizeof(float) * N_TOK * KV_HEADS * D),
                 malloc(sizeof(float) * N_Q * HEADS * D)};
    for (size_t i = 0; i < (size_t)N_TOK * KV_HEADS * D; i++) {
        const size_t ch = i % D;
        x.k[i] = (float)(gauss() * (ch == OUT_A ? c->a : ch == out_b ? c->b : 1.0));
        x.v[i] = (float)gauss();
    }
    for (size_t i = 0; i < (size_t)N_Q * HEADS * D; i++)
        x.q[i] = (float)gauss();
    return x;
}

/* ---- attention in double over rows given as double [N_TOK][D] of one kv head ---- */

static void attend_f64(const double *k, const double *v, const double *q, double *o)
{
    static double s[N_TOK];
    const double scale = 1.0 / sqrt((double)D);
    double mx = -INFINITY, sum = 0;
    for (size_t j = 0; j < N_TOK; j++) {
        double dot = 0;
        for (size_t c = 0; c < D; c++)
            dot += q[c] * k[j * D + c];
        s[j] = scale * dot;
        mx = s[j] > mx ? s[j] : mx;
    }
    memset(o, 0, D * sizeof *o);
    for (size_t j = 0; j < N_TOK; j++) {
        const double p = exp(s[j] - mx);
        sum += p;
        for (size_t c = 0; c < D; c++)
            o[c] += p * v[j * D + c];
    }
    for (size_t c = 0; c < D; c++)
        o[c] /= sum;
}

/* Exact outputs [N_Q][HEADS][D] of the data as sent. */
static double *exact_outputs(const dataset *x)
{
    double *o = malloc(sizeof(double) * N_Q * HEADS * D), *k = malloc(sizeof(double) * N_TOK * D),
           *v = malloc(sizeof(double) * N_TOK * D), q[D];
    for (uint32_t g = 0; g < KV_HEADS; g++) {
        for (size_t j = 0; j < N_TOK; j++)
            for (size_t c = 0; c < D; c++) {
                k[j * D + c] = x->k[(j * KV_HEADS + g) * D + c];
                v[j * D + c] = x->v[(j * KV_HEADS + g) * D + c];
            }
        for (size_t i = 0; i < N_Q; i++)
            for (uint32_t h = g * GQ; h < (g + 1) * GQ; h++) {
                for (size_t c = 0; c < D; c++)
                    q[c] = x->q[(i * HEADS + h) * D + c];
                attend_f64(k, v, q, o + (i * HEADS + h) * D);
            }
    }
    free(k);
    free(v);
    return o;
}

/* ---- the float64 model of the formats ---- */

static void rot_f64(uint64_t key, double *x, bool back)
{
    const double inv = 1.0 / sqrt((double)D);
    if (!back)
        for (size_t c = 0; c < D; c++)
            x[c] = kvd_rotate_sign_negative(key, c) ? -x[c] : x[c];
    kvd_hadamard_f64(x, D);
    for (size_t c = 0; c < D; c++)
        x[c] *= inv;
    if (back)
        for (size_t c = 0; c < D; c++)
            x[c] = kvd_rotate_sign_negative(key, c) ? -x[c] : x[c];
}

/* min/max affine rounding of x[0..n) (stride apart) with levels-1 steps */
static void affine(double *x, size_t n, size_t stride, int levels)
{
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        lo = x[i * stride] < lo ? x[i * stride] : lo;
        hi = x[i * stride] > hi ? x[i * stride] : hi;
    }
    const double s = (hi - lo) / (levels - 1);
    for (size_t i = 0; i < n; i++) {
        const double q = s > 0 ? nearbyint((x[i * stride] - lo) / s) : 0;
        x[i * stride] = lo + s * (q < 0 ? 0 : q > levels - 1 ? levels - 1 : q);
    }
}

static void per_token(kvd_dtype dt, double *row)
{
    if (dt == KVD_DTYPE_INT8) {
        double mx = 0;
        for (size_t c = 0; c < D; c++)
            mx = fabs(row[c]) > mx ? fabs(row[c]) : mx;
        const double s = mx / 127;
        for (size_t c = 0; c < D; c++)
            row[c] = s > 0 ? s * nearbyint(row[c] / s) : 0;
        return;
    }
    const int levels = dt == KVD_DTYPE_KIVI2 ? 4 : 16;
    for (size_t g0 = 0; g0 < D; g0 += GROUP)
        affine(row + g0, GROUP, 1, levels);
}

/* The model's outputs [N_Q][HEADS][D] for dtype dt, rotated or not. */
static double *model_outputs(const dataset *x, kvd_dtype dt, bool rotate)
{
    double *o = malloc(sizeof(double) * N_Q * HEADS * D), *k = malloc(sizeof(double) * N_TOK * D),
           *v = malloc(sizeof(double) * N_TOK * D), q[D];
    const bool kivi = dt == KVD_DTYPE_KIVI2 || dt == KVD_DTYPE_KIVI4;
    const size_t nq = kivi ? (N_TOK - RESIDUAL) / GROUP * GROUP : N_TOK; /* quantized tokens */
    for (uint32_t g = 0; g < KV_HEADS; g++) {
        const uint64_t key = kvd_rotate_key(SESSION_SEED, 0, g);
        for (size_t j = 0; j < N_TOK; j++) {
            for (size_t c = 0; c < D; c++) {
                k[j * D + c] = x->k[(j * KV_HEADS + g) * D + c];
                v[j * D + c] = x->v[(j * KV_HEADS + g) * D + c];
            }
            if (rotate) {
                rot_f64(key, k + j * D, false);
                rot_f64(key, v + j * D, false);
            }
            if (j < nq) {
                if (!kivi)
                    per_token(dt, k + j * D);
                per_token(dt, v + j * D);
            }
        }
        if (kivi) /* keys per channel over blocks of GROUP tokens */
            for (size_t b = 0; b < nq; b += GROUP)
                for (size_t c = 0; c < D; c++)
                    affine(k + b * D + c, GROUP, D, dt == KVD_DTYPE_KIVI2 ? 4 : 16);
        for (size_t i = 0; i < N_Q; i++)
            for (uint32_t h = g * GQ; h < (g + 1) * GQ; h++) {
                for (size_t c = 0; c < D; c++)
                    q[c] = x->q[(i * HEADS + h) * D + c];
                if (rotate)
                    rot_f64(key, q, false);
                double *out = o + (i * HEADS + h) * D;
                attend_f64(k, v, q, out);
                if (rotate)
                    rot_f64(key, out, true);
            }
    }
    free(k);
    free(v);
    return o;
}

/* ---- kvd ---- */

/* kvd's outputs [N_Q][HEADS][D] (f32) through a real session, or NULL. */
static float *kvd_outputs(const dataset *x, kvd_pool *pool, kvd_dtype dt, bool rotate)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = 1;
    c.heads = HEADS;
    c.kv_heads = KV_HEADS;
    c.head_dim = D;
    c.scale = 1.0f / sqrtf((float)D);
    c.cache.dtype = dt;
    c.cache.group = GROUP;
    c.cache.residual = RESIDUAL;
    c.cache.rotate = rotate ? KVD_ROTATE_HADAMARD : KVD_ROTATE_NONE; /* the one switch */
    c.seed = SESSION_SEED;
    c.ttl_seconds = 600;
    kvd_session *s;
    if (kvd_session_create(&c, PAGE, &s) != 0)
        return NULL;
    float *o = NULL;
    kvd_step_output out;
    for (size_t t = 0; t < N_TOK; t += CHUNK) {
        const kvd_step_entry e = {.m = CHUNK, .k = x->k + t * KV_HEADS * D, .v = x->v + t * KV_HEADS * D,
                                  .mask = KVD_MASK_BLOCK};
        if (kvd_step_run(s, NULL, pool, &e, 1, &out) != KVD_STEP_OK)
            goto done;
        kvd_step_output_free(&out);
    }
    const kvd_step_entry e = {.m_q = N_Q, .q = x->q, .mask = KVD_MASK_BLOCK};
    if (kvd_step_run(s, NULL, pool, &e, 1, &out) != KVD_STEP_OK)
        goto done;
    o = out.results[0].o;
    out.results[0].o = NULL;
    kvd_step_output_free(&out);
done:
    kvd_session_destroy(s, pool);
    return o;
}

/* squared error and squared reference, accumulated */
typedef struct acc {
    double err, ref;
} acc;

static void add_f32(acc *a, const float *o, const double *ref)
{
    for (size_t i = 0; i < (size_t)N_Q * HEADS * D; i++) {
        a->err += ((double)o[i] - ref[i]) * ((double)o[i] - ref[i]);
        a->ref += ref[i] * ref[i];
    }
}

static void add_f64(acc *a, const double *o, const double *ref)
{
    for (size_t i = 0; i < (size_t)N_Q * HEADS * D; i++) {
        a->err += (o[i] - ref[i]) * (o[i] - ref[i]);
        a->ref += ref[i] * ref[i];
    }
}

static double rel(const acc *a)
{
    return sqrt(a->err / a->ref);
}

/* The table's rows for every outlier case and the first n_dt dtypes;
 * returns how many int4 targets were missed. */
static int run_cases(kvd_pool *pool, size_t n_dt)
{
    int missed = 0;
    for (size_t ci = 0; ci < sizeof CASES / sizeof *CASES; ci++) {
        const outlier_case *oc = &CASES[ci];
        acc kv[N_DT][2], mo[N_DT][2];
        memset(kv, 0, sizeof kv);
        memset(mo, 0, sizeof mo);
        for (uint64_t seed = 0; seed < SEEDS; seed++) {
            dataset x = make_data(oc, 1000 * (ci + 1) + seed);
            double *ex = exact_outputs(&x);
            for (size_t di = 0; di < n_dt; di++)
                for (int r = 0; r < 2; r++) {
                    float *o = kvd_outputs(&x, pool, DTYPES[di], r);
                    if (!o) {
                        fprintf(stderr, "bench: step failed\n");
                        exit(1);
                    }
                    add_f32(&kv[di][r], o, ex);
                    free(o);
                    double *m = model_outputs(&x, DTYPES[di], r);
                    add_f64(&mo[di][r], m, ex);
                    free(m);
                }
            free(ex);
            free(x.k);
            free(x.v);
            free(x.q);
        }
        for (size_t di = 0; di < n_dt; di++) {
            const double ratio = rel(&kv[di][0]) / rel(&kv[di][1]);
            const double model = rel(&mo[di][0]) / rel(&mo[di][1]);
            char label[40];
            snprintf(label, sizeof label, "x%.0f/x%.0f", oc->a, oc->b);
            printf("%-9s %-6s %11.4e %11.4e %7.2fx %11.2fx", di == 0 ? label : "", kvd_dtype_name(DTYPES[di]),
                   rel(&kv[di][0]), rel(&kv[di][1]), ratio, model);
            if (DTYPES[di] == KVD_DTYPE_INT4) {
                const bool ok = ratio >= oc->target;
                missed += !ok;
                printf("  issue: model %.1fx, target >= %.1fx: %s", oc->model_issue, oc->target,
                       ok ? "met" : "MISSED");
            } else if (ratio < 1.0) {
                printf("  rotation does not help here");
            }
            printf("\n");
        }
    }
    return missed;
}

/* How far one seed's data moves the float64 model's int4 ratio: the issue's
 * 2.6x at x32/x24 is not reproduced pooled over SEEDS seeds (2.0x), so the
 * model alone runs over SPREAD_SEEDS more, each its own ratio. */
#define SPREAD_SEEDS 16

static void model_spread(void)
{
    printf("\nfloat64 model alone, int4 plain/rotated per seed (%d seeds, each %d queries x %d heads):\n",
           SPREAD_SEEDS, N_Q, HEADS);
    for (size_t ci = 0; ci < sizeof CASES / sizeof *CASES; ci++) {
        double r[SPREAD_SEEDS];
        for (uint64_t seed = 0; seed < SPREAD_SEEDS; seed++) {
            dataset x = make_data(&CASES[ci], 7000 * (ci + 1) + seed);
            double *ex = exact_outputs(&x);
            acc a[2];
            memset(a, 0, sizeof a);
            for (int rot = 0; rot < 2; rot++) {
                double *m = model_outputs(&x, KVD_DTYPE_INT4, rot);
                add_f64(&a[rot], m, ex);
                free(m);
            }
            r[seed] = rel(&a[0]) / rel(&a[1]);
            free(ex);
            free(x.k);
            free(x.v);
            free(x.q);
        }
        qsort(r, SPREAD_SEEDS, sizeof *r, bench_cmp_double);
        printf("  x%.0f/x%.0f: min %.2fx, median %.2fx, max %.2fx (issue's model %.1fx)\n", CASES[ci].a,
               CASES[ci].b, r[0], (r[SPREAD_SEEDS / 2 - 1] + r[SPREAD_SEEDS / 2]) / 2, r[SPREAD_SEEDS - 1],
               CASES[ci].model_issue);
    }
}

int main(void)
{
    char cpu[128];
    bench_cpu_model(cpu, sizeof cpu);
    kvd_pool *pool;
    if (kvd_pool_create((size_t)64 << 20, PAGE, &pool) != 0) {
        fprintf(stderr, "bench: no pool\n");
        return 1;
    }
    printf("rotated quantization (cache.rotate \"hadamard\") on outlier keys\n");
    printf("CPU: %s; kernel %s; Release build\n", cpu, kvd_attention_kernels_get()->name);
    printf("keys N(0,1), channels %d and %d x a / x b; values, queries N(0,1); head_dim %d, group %d, "
           "KIVI residual %d;\n%d tokens per kv head, %d kv / %d q heads, %d queries, %d seeds pooled; "
           "error = ||o - o_exact|| / ||o_exact|| vs exact double\n\n",
           OUT_A, (int)out_b, D, GROUP, RESIDUAL, N_TOK, KV_HEADS, HEADS, N_Q, SEEDS);
    printf("%-9s %-6s %11s %11s %8s %12s %s\n", "outliers", "dtype", "plain", "rotated", "ratio", "model ratio",
           "");
    int missed = run_cases(pool, N_DT);
    out_b = 20;
    printf("\nint4 with both outliers in one group (channels %d and %d):\n", OUT_A, (int)out_b);
    missed += run_cases(pool, 1);
    out_b = 50;
    model_spread();
    printf("\nint4 targets: %s\n", missed ? "some MISSED" : "all met");
    kvd_pool_destroy(pool);
    return 0;
}
