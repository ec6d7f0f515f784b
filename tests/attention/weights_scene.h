/* tests/attention/weights_scene.h — the h2o weight tests' caches (test-only,
 * header-only): random rows of every format in pages whose block table is
 * shuffled, up to three segments (an empty one between), every slot's key
 * dequantized in a flat array for the double-precision references. Shared
 * by test_weights_lse.c and test_weights_scores.c. */
#ifndef KVD_TESTS_ATTENTION_WEIGHTS_SCENE_H
#define KVD_TESTS_ATTENTION_WEIGHTS_SCENE_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/formats.h"
#include "attention/kernels.h"

#define RANDOM_UNITS_SEED 0x853c49e6748fea9bull
#include "tests/attention/random_units.h"

/* Up to three segments; k: every slot's key dequantized, flat [total][d]. */
typedef struct scene {
    pages part[3];
    kvd_kv_segment seg[3];
    size_t n_seg, total, d;
    float *k;
} scene;

/* n slots of format kf; then, with `residual` > 0, an f32 segment of that
 * many (KIVI's residual); with `empty`, an empty segment between them. */
static void scene_build(scene *s, kvd_row_format kf, size_t n, size_t residual, int empty, size_t d,
                        uint32_t group, size_t spp)
{
    memset(s, 0, sizeof *s);
    s->d = d;
    pages_build(&s->part[0], kf, KVD_ROW_F32, n, d, group, spp, true);
    s->seg[s->n_seg++] = (kvd_kv_segment){.kv = s->part[0].kv, .n = n};
    if (empty) {
        pages_build(&s->part[1], KVD_ROW_F32, KVD_ROW_F32, 16, d, 0, 16, true);
        s->seg[s->n_seg++] = (kvd_kv_segment){.kv = s->part[1].kv, .n = 0};
    }
    if (residual > 0) {
        pages_build(&s->part[2], KVD_ROW_F32, KVD_ROW_F32, residual, d, 0, 16, true);
        s->seg[s->n_seg++] = (kvd_kv_segment){.kv = s->part[2].kv, .n = residual};
    }
    s->total = n + residual;
    s->k = malloc((s->total + 1) * d * sizeof *s->k);
    ck_assert_ptr_nonnull(s->k);
    size_t j = 0;
    for (size_t g = 0; g < s->n_seg; g++)
        for (size_t i = 0; i < s->seg[g].n; i++, j++) {
            const kvd_kv_pages *kv = &s->seg[g].kv;
            size_t t;
            const unsigned char *u =
                kvd__kv_unit(kv, kv->k_offset, kv->k_format, kvd__kv_k_stride(kv), i, &t);
            kvd_dequant_row(kv->k_format, u, t, d, kv->group, s->k + j * d);
        }
}

static void scene_free(scene *s)
{
    pages_free(&s->part[0]);
    if (s->part[1].page)
        pages_free(&s->part[1]);
    if (s->part[2].page)
        pages_free(&s->part[2]);
    free(s->k);
}

/* The quantized sweep both weights tests walk: every key format at three
 * head_dims — 128: keys from codes on both vector widths; 72: through the
 * tile; 264: above one chunk. */
typedef struct scene_format {
    kvd_row_format k;
    uint32_t group;
    const char *name;
} scene_format;

static const scene_format SCENE_FORMATS[] = {
    {KVD_ROW_F16, 0, "f16"},          {KVD_ROW_BF16, 0, "bf16"},
    {KVD_ROW_I8, 0, "int8"},          {KVD_ROW_U4G, 32, "int4"},
    {KVD_ROW_U4G, 12, "int4 g12"},    {KVD_ROW_U2G, 16, "int2"},
    {KVD_ROW_KIVI4_KEYS, 32, "kivi4"}, {KVD_ROW_KIVI2_KEYS, 16, "kivi2"},
};
#define SCENE_N_FORMATS (sizeof SCENE_FORMATS / sizeof *SCENE_FORMATS)

static const size_t SCENE_DIMS[] = {128, 72, 264};
#define SCENE_N_DIMS (sizeof SCENE_DIMS / sizeof *SCENE_DIMS)

/* Scene (format f, head_dim a) of the sweep (KIVI: quantized blocks, then
 * the f32 residual as a second segment), named in what[64]. */
static void scene_build_sweep(scene *s, size_t f, size_t a, char what[64])
{
    const scene_format *fm = &SCENE_FORMATS[f];
    const int kivi = kvd_row_is_block(fm->k);
    const size_t spp = kivi ? 4 * fm->group : 31;
    scene_build(s, fm->k, kivi ? 3 * fm->group : 90 + 7 * a, kivi ? 21 : 0, 0, SCENE_DIMS[a], fm->group,
                spp);
    snprintf(what, 64, "%s d=%zu", fm->name, SCENE_DIMS[a]);
}

#endif
