/* tests/cache/test_rotate.c — rotated quantization (cache/rotate.c at the
 * step seam of cache/step.c): H against its documented definition (signs
 * from splitmix64, written out here again), rows through H and back, a
 * rotated session's output against the exact unrotated double reference in
 * every dtype, lower int4 error than plain int4 on outlier keys, shadow
 * error measured against unrotated exact attention, eviction decisions as
 * without rotation, fork and snapshot/restore keeping it, and version-1
 * snapshots (no rotate byte) still restoring. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "cache/pool.h"
#include "cache/rotate.h"
#include "cache/session.h"
#include "cache/snapshot.h"
#include "cache/step.h"
#include "tests/support/check_main.h"
#include "tests/support/kvd_data.h"
#include "tests/support/ref_attention.h"

#define PAGE 4096
/* One row through H or H^T in f32: log2(d) adds and a scale, each within
 * 2^-24 relative of an O(||x||) value. */
#define TOL_ROW 1e-6
/* Output relative L2 error ||o - o_exact|| / ||o_exact|| a rotated session
 * stays under on uniform data (k, v in [-1, 1), q in [-2, 2)) against the
 * double reference: f32 rounding; f16/bf16 rounding of rotated rows; int8
 * (max|x|/254 a coordinate); int4 and KIVI-4 (range/30 a coordinate); KIVI-2
 * (range/6). Each about 3x what this data gives, so a broken rotation (a
 * missing sign, a wrong head's H, no rotation back) fails by far. */
static const struct {
    kvd_dtype dtype;
    double bound;
} FORMAT_BOUND[] = {
    {KVD_DTYPE_F32, 2e-6}, {KVD_DTYPE_F16, 1e-3}, {KVD_DTYPE_BF16, 8e-3}, {KVD_DTYPE_INT8, 2e-2},
    {KVD_DTYPE_INT4, 0.2}, {KVD_DTYPE_KIVI4, 0.2}, {KVD_DTYPE_KIVI2, 0.8},
};
/* The shadow's error and one the test takes against the double reference
 * agree to this (relative), both measuring the same o. */
#define TOL_SHADOW_AGREEMENT 1e-3
/* Outlier keys x16/x12 (d 64, group 32): a float64 model of the formats
 * predicts plain/rotated int4 output error 1.8x (bench/rotate.c); the
 * assertion leaves room for the sample's spread. */
#define MIN_INT4_GAIN 1.3

static kvd_session_config config(uint32_t layers, uint32_t heads, uint32_t kv_heads, uint32_t d, kvd_dtype dtype,
                                 bool rotate)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = layers;
    c.heads = heads;
    c.kv_heads = kv_heads;
    c.head_dim = d;
    c.scale = 1.0f / sqrtf((float)d);
    c.cache.dtype = dtype;
    c.cache.group = 32;
    c.cache.residual = 32;
    c.cache.rotate = rotate ? KVD_ROTATE_HADAMARD : KVD_ROTATE_NONE;
    c.seed = 0x5eed;
    c.ttl_seconds = 600;
    return c;
}

static double gauss(rng *r)
{
    const double u = rng_uniform(r, 1e-12, 1), v = rng_uniform(r, 0, 1);
    return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

/* The documented definition, written again: H x in double. */
static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void h_by_definition(uint64_t seed, uint32_t layer, uint32_t g, const float *x, double *out, size_t d)
{
    const uint64_t key = mix(seed) ^ mix(((uint64_t)layer << 32) | g);
    for (size_t i = 0; i < d; i++) {
        double sum = 0;
        for (size_t j = 0; j < d; j++) {
            const bool neg_s = mix(key + j / 64) >> (j % 64) & 1;
            const bool neg_w = __builtin_popcountll(i & j) & 1;
            sum += (neg_s != neg_w ? -1.0 : 1.0) * x[j];
        }
        out[i] = sum / sqrt((double)d);
    }
}

START_TEST(rows_match_the_definition)
{
    rng r;
    rng_seed(&r, 3);
    const size_t dims[] = {1, 2, 32, 64, 128, 256};
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        const size_t d = dims[di];
        float *x = rng_tensor(&r, d, -1, 1), *y = malloc(d * sizeof *y);
        double *want = malloc(d * sizeof *want);
        for (uint32_t layer = 0; layer < 2; layer++)
            for (uint32_t g = 0; g < 3; g++) {
                memcpy(y, x, d * sizeof *y);
                const uint64_t key = kvd_rotate_key(77, layer, g);
                kvd_rotate_row(key, y, d);
                h_by_definition(77, layer, g, x, want, d);
                double nx = 0, ny = 0;
                for (size_t i = 0; i < d; i++) {
                    ck_assert_msg(fabs(y[i] - want[i]) <= TOL_ROW, "d %zu (%u, %u) ch %zu: %g vs %g", d, layer,
                                  g, i, (double)y[i], want[i]);
                    nx += (double)x[i] * x[i];
                    ny += (double)y[i] * y[i];
                }
                ck_assert(fabs(sqrt(ny) - sqrt(nx)) <= TOL_ROW * sqrt(nx)); /* orthonormal */
                kvd_rotate_row_back(key, y, d);
                for (size_t i = 0; i < d; i++)
                    ck_assert_msg(fabs(y[i] - x[i]) <= 2 * TOL_ROW, "back: d %zu ch %zu", d, i);
            }
        free(x);
        free(y);
        free(want);
    }
    /* each (layer, kv head) its own signs, about half negative */
    size_t neg = 0, differ = 0;
    const uint64_t a = kvd_rotate_key(1, 0, 0), b = kvd_rotate_key(1, 0, 1), c = kvd_rotate_key(1, 1, 0);
    ck_assert(a != b && a != c && b != c && a != kvd_rotate_key(2, 0, 0));
    for (size_t i = 0; i < 1024; i++) {
        neg += kvd_rotate_sign_negative(a, i);
        differ += kvd_rotate_sign_negative(a, i) != kvd_rotate_sign_negative(b, i);
    }
    ck_assert_msg(neg > 400 && neg < 624 && differ > 400 && differ < 624, "neg %zu differ %zu", neg, differ);
}
END_TEST

START_TEST(create_refuses_what_cannot_rotate)
{
    kvd_session *s = NULL;
    kvd_session_config c = config(1, 2, 1, 48, KVD_DTYPE_INT4, true);
    c.cache.group = 16;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), -EINVAL);
    c = config(1, 2, 1, 64, KVD_DTYPE_F32, true);
    c.attention = KVD_ATTN_TENSOR;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), -EINVAL);
    c = config(1, 2, 1, 64, KVD_DTYPE_F32, true);
    c.cache.eviction = KVD_EVICT_SUBGEN;
    ck_assert_int_eq(kvd_session_check_rotate(&c), -EINVAL);
    c = config(1, 2, 1, 64, KVD_DTYPE_F32, true);
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    ck_assert_int_eq(kvd_session_shadow_config(&c).cache.rotate, KVD_ROTATE_NONE);
    ck_assert_str_eq(kvd_rotate_name(c.cache.rotate), "hadamard");
    ck_assert_str_eq(kvd_rotate_name(KVD_ROTATE_NONE), "none");
    kvd_session_destroy(s, NULL);
}
END_TEST

/* One entry's data, k/v/q filled by the caller's generator. */
typedef struct data {
    float *k, *v, *q;
} data;

static void data_free(data *x)
{
    free(x->k);
    free(x->v);
    free(x->q);
}

/* Runs one entry; returns o (caller frees) and the result's shadow error. */
static float *run(kvd_session *s, kvd_session *sh, kvd_pool *p, uint32_t layer, size_t m, size_t m_q,
                  const data *x, double *shadow_rel)
{
    kvd_step_entry e = {.layer = layer, .m = m, .m_q = m_q, .k = x->k, .v = x->v, .q = x->q,
                        .mask = m_q == m ? KVD_MASK_CAUSAL : KVD_MASK_BLOCK};
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(s, sh, p, &e, 1, &out), KVD_STEP_OK);
    float *o = out.results[0].o;
    out.results[0].o = NULL;
    if (shadow_rel) {
        ck_assert(out.results[0].has_shadow);
        *shadow_rel = out.results[0].relative_error;
    }
    kvd_step_output_free(&out);
    return o;
}

static double rel_err(const float *o, const double *want, size_t n)
{
    double e = 0, w = 0;
    for (size_t i = 0; i < n; i++) {
        e += ((double)o[i] - want[i]) * ((double)o[i] - want[i]);
        w += want[i] * want[i];
    }
    return sqrt(e / w);
}

static data uniform(rng *r, const kvd_session_config *c, size_t m, size_t m_q)
{
    const size_t kv = (size_t)c->kv_heads * c->head_dim, qr = (size_t)c->heads * c->head_dim;
    return (data){rng_tensor(r, m * kv + 1, -1, 1), rng_tensor(r, m * kv + 1, -1, 1),
                  rng_tensor(r, m_q * qr + 1, -2, 2)};
}

/* Every dtype rotated, GQA over two layers, a causal prefill then decode
 * steps: the output against the exact unrotated double reference. */
START_TEST(rotated_output_is_the_unrotated_output)
{
    const kvd_dtype dtype = FORMAT_BOUND[_i].dtype;
    kvd_pool *p;
    ck_assert_int_eq(kvd_pool_create(16 << 20, PAGE, &p), 0);
    const kvd_session_config c = config(2, 4, 2, 64, dtype, true);
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    ref_session *ref = ref_session_new(2, 4, 2, 64, c.scale);
    rng r;
    rng_seed(&r, 100 + (uint64_t)_i);
    double worst = 0;
    for (int step = 0; step < 12; step++)
        for (uint32_t layer = 0; layer < 2; layer++) {
            const size_t m = step == 0 ? 70 : 1, m_q = step == 0 ? 70 : 1;
            data x = uniform(&r, &c, m, m_q);
            float *o = run(s, NULL, p, layer, m, m_q, &x, NULL);
            double *want = malloc(m_q * 4 * 64 * sizeof *want);
            ck_assert_int_eq(ref_step(ref, layer, x.k, x.v, m, x.q, m_q, REF_MASK_CAUSAL, want), 0);
            const double e = rel_err(o, want, m_q * 4 * 64);
            worst = e > worst ? e : worst;
            free(o);
            free(want);
            data_free(&x);
        }
    ck_assert_msg(worst <= FORMAT_BOUND[_i].bound, "%s rotated: relative error %g, bound %g",
                  kvd_dtype_name(dtype), worst, FORMAT_BOUND[_i].bound);
    ref_session_free(ref);
    kvd_session_destroy(s, p);
    kvd_pool_destroy(p);
}
END_TEST

/* N(0,1) keys whose channels 5 and 40 are x16 and x12, N(0,1) values and
 * queries: 512 tokens, then 32 pure queries (block mask). */
static data outliers(rng *r, size_t m, size_t m_q, size_t heads, size_t d)
{
    data x = {malloc(m * d * sizeof(float)), malloc(m * d * sizeof(float)), malloc(m_q * heads * d * sizeof(float))};
    for (size_t i = 0; i < m * d; i++) {
        const size_t c = i % d;
        x.k[i] = (float)(gauss(r) * (c == 5 ? 16 : c == 40 ? 12 : 1));
        x.v[i] = (float)gauss(r);
    }
    for (size_t i = 0; i < m_q * heads * d; i++)
        x.q[i] = (float)gauss(r);
    return x;
}

static double int4_error(bool rotate, double *own)
{
    kvd_pool *p;
    ck_assert_int_eq(kvd_pool_create(32 << 20, PAGE, &p), 0);
    kvd_session_config c = config(1, 4, 1, 64, KVD_DTYPE_INT4, rotate);
    c.shadow = true;
    const kvd_session_config sc = kvd_session_shadow_config(&c);
    kvd_session *s, *sh;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    ck_assert_int_eq(kvd_session_create(&sc, PAGE, &sh), 0);
    ref_session *ref = ref_session_new(1, 4, 1, 64, c.scale);
    rng r;
    rng_seed(&r, 2024); /* the same data with and without rotation */
    data x = outliers(&r, 512, 0, 4, 64);
    double shadow_rel;
    free(run(s, sh, p, 0, 512, 0, &x, NULL));
    ck_assert_int_eq(ref_step(ref, 0, x.k, x.v, 512, NULL, 0, REF_MASK_BLOCK, NULL), 0);
    data_free(&x);
    x = outliers(&r, 0, 32, 4, 64);
    float *o = run(s, sh, p, 0, 0, 32, &x, &shadow_rel);
    double *want = malloc(32 * 4 * 64 * sizeof *want);
    ck_assert_int_eq(ref_step(ref, 0, NULL, NULL, 0, x.q, 32, REF_MASK_BLOCK, want), 0);
    *own = rel_err(o, want, 32 * 4 * 64);
    free(o);
    free(want);
    data_free(&x);
    ref_session_free(ref);
    kvd_session_destroy(s, p);
    kvd_session_destroy(sh, p);
    kvd_pool_destroy(p);
    return shadow_rel;
}

/* The shadow copy measures the rotated int4 output against exact unrotated
 * attention (it agrees with the test's own double reference), and rotation
 * lowers int4's error on outlier keys. */
START_TEST(int4_outliers_and_shadow)
{
    double own_plain, own_rot;
    const double plain = int4_error(false, &own_plain), rot = int4_error(true, &own_rot);
    ck_assert_msg(fabs(plain - own_plain) <= TOL_SHADOW_AGREEMENT * own_plain, "plain: shadow %g, own %g", plain,
                  own_plain);
    ck_assert_msg(fabs(rot - own_rot) <= TOL_SHADOW_AGREEMENT * own_rot, "rotated: shadow %g, own %g", rot,
                  own_rot);
    ck_assert_msg(plain / rot >= MIN_INT4_GAIN, "int4 plain %g, rotated %g: ratio %g < %g", plain, rot,
                  plain / rot, MIN_INT4_GAIN);
}
END_TEST

/* Positions held by every stream of s, sorted per stream, concatenated. */
static size_t held_positions(kvd_session *s, int64_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n_streams; i++) {
        const size_t from = n;
        for (size_t j = 0; j < s->streams[i].n_tokens; j++)
            out[n++] = kvd_stream_meta(&s->streams[i], j)->position;
        for (size_t a = from + 1; a < n; a++) /* insertion sort: small */
            for (size_t b = a; b > from && out[b - 1] > out[b]; b--) {
                const int64_t t = out[b];
                out[b] = out[b - 1];
                out[b - 1] = t;
            }
    }
    return n;
}

/* l2norm ranks by ||k||, h2o by softmax weights: both invariant under an
 * orthonormal H, so an f32 session keeps the same tokens rotated or not. */
START_TEST(eviction_sees_the_same)
{
    const kvd_eviction policies[] = {KVD_EVICT_L2NORM, KVD_EVICT_H2O};
    for (int pi = 0; pi < 2; pi++) {
        kvd_pool *p;
        ck_assert_int_eq(kvd_pool_create(16 << 20, PAGE, &p), 0);
        kvd_session *s[2];
        for (int rot = 0; rot < 2; rot++) {
            kvd_session_config c = config(1, 4, 2, 64, KVD_DTYPE_F32, rot);
            c.cache.eviction = policies[pi];
            c.cache.budget = 24;
            c.cache.sink = 2;
            ck_assert_int_eq(kvd_session_create(&c, PAGE, &s[rot]), 0);
        }
        rng r;
        rng_seed(&r, 555 + (uint64_t)pi);
        for (int step = 0; step < 20; step++) {
            data x = uniform(&r, &s[0]->config, 4, 4);
            for (size_t i = 0; i < 4 * 2 * 64; i++) /* distinct norms: scale each row */
                x.k[i] *= 0.5f + (float)((i / 64) % 7) * 0.3f;
            for (int rot = 0; rot < 2; rot++)
                free(run(s[rot], NULL, p, 0, 4, 4, &x, NULL));
            data_free(&x);
        }
        int64_t a[64], b[64];
        const size_t na = held_positions(s[0], a), nb = held_positions(s[1], b);
        ck_assert_uint_eq(na, 48);
        ck_assert_uint_eq(na, nb);
        ck_assert_msg(memcmp(a, b, na * sizeof *a) == 0, "%s: rotation changed the tokens kept",
                      kvd_eviction_name(policies[pi]));
        for (int rot = 0; rot < 2; rot++)
            kvd_session_destroy(s[rot], p);
        kvd_pool_destroy(p);
    }
}
END_TEST

/* A fork keeps the rotation: parent and child give the same next output. */
START_TEST(fork_keeps_rotation)
{
    kvd_pool *p;
    ck_assert_int_eq(kvd_pool_create(16 << 20, PAGE, &p), 0);
    const kvd_session_config c = config(1, 4, 2, 64, KVD_DTYPE_INT8, true);
    kvd_session *s, *f;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    rng r;
    rng_seed(&r, 9);
    data x = uniform(&r, &c, 40, 40);
    free(run(s, NULL, p, 0, 40, 40, &x, NULL));
    data_free(&x);
    ck_assert_int_eq(kvd_session_fork(s, p, &f), 0);
    ck_assert_int_eq(f->config.cache.rotate, KVD_ROTATE_HADAMARD);
    x = uniform(&r, &c, 1, 1);
    float *a = run(s, NULL, p, 0, 1, 1, &x, NULL), *b = run(f, NULL, p, 0, 1, 1, &x, NULL);
    ck_assert_mem_eq(a, b, 4 * 64 * sizeof *a);
    free(a);
    free(b);
    data_free(&x);
    kvd_session_destroy(f, p);
    kvd_session_destroy(s, p);
    kvd_pool_destroy(p);
}
END_TEST

static kvd_snapshot_meta meta(void)
{
    kvd_snapshot_meta m;
    memset(&m, 0, sizeof m);
    strcpy(m.id, "rot");
    m.created_at = m.last_used_at = 1;
    return m;
}

/* Snapshot and restore keep the rotation (and the next step bit for bit). */
START_TEST(snapshot_keeps_rotation)
{
    kvd_pool *p;
    ck_assert_int_eq(kvd_pool_create(16 << 20, PAGE, &p), 0);
    kvd_session_config c = config(1, 4, 2, 64, KVD_DTYPE_INT4, true);
    c.shadow = true;
    c.cache.eviction = KVD_EVICT_L2NORM;
    c.cache.budget = 30;
    const kvd_session_config sc = kvd_session_shadow_config(&c);
    kvd_session *s, *sh, *b, *bsh;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    ck_assert_int_eq(kvd_session_create(&sc, PAGE, &sh), 0);
    rng r;
    rng_seed(&r, 10);
    data x = uniform(&r, &c, 40, 40);
    free(run(s, sh, p, 0, 40, 40, &x, NULL));
    data_free(&x);
    const kvd_snapshot_meta m = meta();
    void *bytes;
    size_t len;
    ck_assert_int_eq(kvd_session_snapshot(s, sh, &m, PAGE, &bytes, &len), 0);
    kvd_session_config peek;
    ck_assert_int_eq(kvd_snapshot_peek(bytes, len, NULL, &peek), 0);
    ck_assert_int_eq(peek.cache.rotate, KVD_ROTATE_HADAMARD);
    ck_assert_int_eq(kvd_session_restore(bytes, len, p, NULL, &b, &bsh), 0);
    ck_assert_int_eq(b->config.cache.rotate, KVD_ROTATE_HADAMARD);
    ck_assert_int_eq(bsh->config.cache.rotate, KVD_ROTATE_NONE);
    x = uniform(&r, &c, 1, 1);
    double ea, eb;
    float *oa = run(s, sh, p, 0, 1, 1, &x, &ea), *ob = run(b, bsh, p, 0, 1, 1, &x, &eb);
    ck_assert_mem_eq(oa, ob, 4 * 64 * sizeof *oa);
    ck_assert(ea == eb);
    free(oa);
    free(ob);
    data_free(&x);
    free(bytes);
    kvd_session_destroy(s, p);
    kvd_session_destroy(sh, p);
    kvd_session_destroy(b, p);
    kvd_session_destroy(bsh, p);
    kvd_pool_destroy(p);
}
END_TEST

static void put_le32(uint8_t *at, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        at[i] = (uint8_t)(v >> (8 * i));
}

/* A version-1 snapshot (written before cache.rotate: no rotate byte after
 * ttl_seconds) still restores, unrotated. Made from a version-2 one of an
 * empty session: rotated and unrotated differ only in that byte (and the
 * checksum), which is cut out. */
START_TEST(version_1_restores_unrotated)
{
    kvd_pool *p;
    ck_assert_int_eq(kvd_pool_create(4 << 20, PAGE, &p), 0);
    void *bytes[2];
    size_t len[2];
    const kvd_snapshot_meta m = meta();
    for (int rot = 0; rot < 2; rot++) {
        const kvd_session_config c = config(1, 2, 1, 64, KVD_DTYPE_INT8, rot);
        kvd_session *s;
        ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
        ck_assert_int_eq(kvd_session_snapshot(s, NULL, &m, PAGE, &bytes[rot], &len[rot]), 0);
        kvd_session_destroy(s, p);
    }
    ck_assert_uint_eq(len[0], len[1]);
    uint8_t *a = bytes[0], *b = bytes[1];
    size_t at = 0, differ = 0;
    for (size_t i = 0; i < len[0] - 4; i++)
        if (a[i] != b[i]) {
            at = i;
            differ++;
        }
    ck_assert_uint_eq(differ, 1);
    ck_assert(a[at] == KVD_ROTATE_NONE && b[at] == KVD_ROTATE_HADAMARD);
    /* cut the byte out, say version 1, fix the length and the checksum */
    memmove(b + at, b + at + 1, len[1] - at - 1);
    const size_t n = len[1] - 1;
    put_le32(b + 8, 1);
    for (int i = 0; i < 8; i++)
        b[16 + i] = (uint8_t)((uint64_t)n >> (8 * i));
    put_le32(b + n - 4, kvd_crc32c(0, b, n - 4));
    kvd_session *s, *sh;
    ck_assert_int_eq(kvd_session_restore(b, n, p, NULL, &s, &sh), 0);
    ck_assert_int_eq(s->config.cache.rotate, KVD_ROTATE_NONE);
    ck_assert_int_eq(s->config.cache.dtype, KVD_DTYPE_INT8);
    kvd_session_destroy(s, p);
    /* the same bytes claiming version 2 lack a byte: refused */
    put_le32(b + 8, 2);
    put_le32(b + n - 4, kvd_crc32c(0, b, n - 4));
    ck_assert_int_lt(kvd_session_restore(b, n, p, NULL, &s, &sh), 0);
    free(bytes[0]);
    free(bytes[1]);
    kvd_pool_destroy(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("rotate");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, rows_match_the_definition);
    tcase_add_test(tc, create_refuses_what_cannot_rotate);
    tcase_add_loop_test(tc, rotated_output_is_the_unrotated_output, 0,
                        (int)(sizeof FORMAT_BOUND / sizeof *FORMAT_BOUND));
    tcase_add_test(tc, int4_outliers_and_shadow);
    tcase_add_test(tc, eviction_sees_the_same);
    tcase_add_test(tc, fork_keeps_rotation);
    tcase_add_test(tc, snapshot_keeps_rotation);
    tcase_add_test(tc, version_1_restores_unrotated);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
