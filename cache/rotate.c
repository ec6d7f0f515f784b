/* cache/rotate.c — rotated quantization at the step engine's seam
 * (cache/rotate.h): the per-(layer, kv head) random signs from the session
 * seed, one row through H or H^T, a step's entries copied into the rotated
 * basis, and its outputs rotated back. */
#include "cache/rotate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention/hadamard.h"

const char *kvd_rotate_name(kvd_rotate r)
{
    switch (r) {
    case KVD_ROTATE_NONE: return "none";
    case KVD_ROTATE_HADAMARD: return "hadamard";
    }
    return "unknown";
}

static uint64_t splitmix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t kvd_rotate_key(uint64_t seed, uint32_t layer, uint32_t kv_head)
{
    return splitmix64(seed) ^ splitmix64(((uint64_t)layer << 32) | kv_head);
}

bool kvd_rotate_sign_negative(uint64_t key, size_t c)
{
    return splitmix64(key + c / 64) >> (c % 64) & 1;
}

static void apply_signs(uint64_t key, float *x, size_t d)
{
    uint64_t word = 0;
    for (size_t c = 0; c < d; c++) {
        if (c % 64 == 0)
            word = splitmix64(key + c / 64);
        if (word >> (c % 64) & 1)
            x[c] = -x[c];
    }
}

static void normalize(float *x, size_t d)
{
    const float inv = (float)(1.0 / sqrt((double)d)); /* exact for d = 4^k */
    for (size_t c = 0; c < d; c++)
        x[c] *= inv;
}

void kvd_rotate_row(uint64_t key, float *x, size_t d)
{
    apply_signs(key, x, d);
    kvd_hadamard(x, d);
    normalize(x, d);
}

void kvd_rotate_row_back(uint64_t key, float *x, size_t d)
{
    kvd_hadamard(x, d);
    normalize(x, d);
    apply_signs(key, x, d);
}

/* The buffer behind a rotated entries array: the entries, then (64-byte
 * aligned) each entry's rotated k, v and q rows. */
typedef struct rotated_block {
    size_t n;
    kvd_step_entry entries[];
} rotated_block;

kvd_step_entry *kvd__rotate_entries(const kvd_session_config *cfg, const kvd_step_entry *entries, size_t n)
{
    const size_t d = cfg->head_dim, row = (size_t)cfg->kv_heads * d, qrow = (size_t)cfg->heads * d;
    const uint32_t group = cfg->heads / cfg->kv_heads;
    size_t floats = 0;
    for (size_t i = 0; i < n; i++) {
        size_t add;
        if (__builtin_mul_overflow(entries[i].m, 2 * row, &add) || __builtin_add_overflow(floats, add, &floats)
            || __builtin_mul_overflow(entries[i].m_q, qrow, &add) || __builtin_add_overflow(floats, add, &floats))
            return NULL;
    }
    const size_t head = sizeof(rotated_block) + n * sizeof(kvd_step_entry);
    const size_t head_aligned = (head + 63) & ~(size_t)63;
    if (floats > (SIZE_MAX - head_aligned) / sizeof(float))
        return NULL;
    rotated_block *b = malloc(head_aligned + floats * sizeof(float));
    if (!b)
        return NULL;
    b->n = n;
    float *next = (float *)((char *)b + head_aligned);
    for (size_t i = 0; i < n; i++) {
        const kvd_step_entry *e = &entries[i];
        kvd_step_entry *r = &b->entries[i];
        *r = *e;
        float *k = next, *v = k + e->m * row, *q = v + e->m * row;
        next = q + e->m_q * qrow;
        if (e->m) {
            memcpy(k, e->k, e->m * row * sizeof(float));
            memcpy(v, e->v, e->m * row * sizeof(float));
        }
        if (e->m_q)
            memcpy(q, e->q, e->m_q * qrow * sizeof(float));
        for (uint32_t g = 0; g < cfg->kv_heads; g++) {
            const uint64_t key = kvd_rotate_key(cfg->seed, e->layer, g);
            for (size_t t = 0; t < e->m; t++) {
                kvd_rotate_row(key, k + t * row + (size_t)g * d, d);
                kvd_rotate_row(key, v + t * row + (size_t)g * d, d);
            }
            for (size_t t = 0; t < e->m_q; t++)
                for (uint32_t h = 0; h < group; h++)
                    kvd_rotate_row(key, q + t * qrow + ((size_t)g * group + h) * d, d);
        }
        r->k = e->m ? k : e->k;
        r->v = e->m ? v : e->v;
        r->q = e->m_q ? q : e->q;
    }
    return b->entries;
}

void kvd__rotate_entries_free(kvd_step_entry *rotated)
{
    if (rotated)
        free((char *)rotated - offsetof(rotated_block, entries));
}

void kvd__rotate_output_back(const kvd_session_config *cfg, uint32_t layer, float *o, size_t m_q)
{
    const size_t d = cfg->head_dim, qrow = (size_t)cfg->heads * d;
    const uint32_t group = cfg->heads / cfg->kv_heads;
    for (uint32_t g = 0; g < cfg->kv_heads; g++) {
        const uint64_t key = kvd_rotate_key(cfg->seed, layer, g);
        for (size_t t = 0; t < m_q; t++)
            for (uint32_t h = 0; h < group; h++)
                kvd_rotate_row_back(key, o + t * qrow + ((size_t)g * group + h) * d, d);
    }
}
