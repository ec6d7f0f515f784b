/* tests/cache/policy_model.h — the plain reference model of eviction that
 * the cache tests drive beside a real stream: an unordered array of
 * {position, key_norm, score} with O(n^2) victim selection and evict.h's
 * rules written out (protection by position, the policy's key, ties to the
 * older token). Also the deterministic mixing function and the
 * assert-only-on-failure macro those tests share. Header-only: each test is
 * its own program. A test that includes it defines, before the include,
 *   static double norm_of(uint64_t salt, uint64_t p);   key norm of position p
 *   static float weight_of(uint64_t salt, uint64_t step, uint64_t p);   h2o weight
 * as its own data generator computes them (declared here, so the include may
 * come before them). */
#ifndef KVD_TESTS_CACHE_POLICY_MODEL_H
#define KVD_TESTS_CACHE_POLICY_MODEL_H

#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache/types.h"

/* Check logs every passing assertion (a write per ck_assert), so checks that
 * run after every step of long runs test first and assert only on failure. */
#define REQUIRE(cond, ...)                                                                 \
    do {                                                                                   \
        if (!(cond))                                                                       \
            ck_abort_msg(__VA_ARGS__);                                                     \
    } while (0)

static inline uint64_t mix(uint64_t x) /* splitmix64 finalizer */
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t rng_state;

static inline uint64_t rng_next(void)
{
    rng_state = mix(rng_state);
    return rng_state;
}

static double norm_of(uint64_t salt, uint64_t p);
static float weight_of(uint64_t salt, uint64_t step, uint64_t p);

typedef struct ref_tok {
    int64_t position;
    double key_norm;
    double score;
} ref_tok;

typedef struct ref_model {
    kvd_eviction policy;
    uint32_t sink, recent;
    uint64_t salt, appended, evicted;
    ref_tok *t; /* [cap], n in use, unordered */
    size_t n, cap;
} ref_model;

static inline void ref_init(ref_model *r, kvd_eviction policy, uint32_t sink, uint32_t recent,
                            uint64_t salt)
{
    memset(r, 0, sizeof *r);
    r->policy = policy;
    r->sink = sink;
    r->recent = recent;
    r->salt = salt;
}

static inline void ref_copy(ref_model *dst, const ref_model *src)
{
    *dst = *src;
    dst->t = malloc((src->cap ? src->cap : 1) * sizeof *dst->t);
    ck_assert_ptr_nonnull(dst->t);
    memcpy(dst->t, src->t, src->n * sizeof *dst->t);
}

static inline void ref_append(ref_model *r, size_t m)
{
    if (r->n + m > r->cap) {
        r->cap = (r->n + m) * 2;
        r->t = realloc(r->t, r->cap * sizeof *r->t);
        ck_assert_ptr_nonnull(r->t);
    }
    for (size_t i = 0; i < m; i++, r->appended++)
        r->t[r->n++] = (ref_tok){(int64_t)r->appended, norm_of(r->salt, r->appended), 0.0};
}

static inline bool ref_protected(const ref_model *r, int64_t p)
{
    return (uint64_t)p < r->sink || (uint64_t)p + r->recent >= r->appended;
}

static inline size_t ref_evictable(const ref_model *r)
{
    size_t c = 0;
    for (size_t i = 0; i < r->n; i++)
        c += !ref_protected(r, r->t[i].position);
    return c;
}

/* True when a should be evicted before b (evict.h's rules, written out). */
static inline bool ref_before(const ref_model *r, const ref_tok *a, const ref_tok *b)
{
    switch (r->policy) {
    case KVD_EVICT_L2NORM:
        if (a->key_norm != b->key_norm)
            return a->key_norm > b->key_norm;
        break;
    case KVD_EVICT_H2O:
        if (a->score != b->score)
            return a->score < b->score;
        break;
    default:
        break;
    }
    return a->position < b->position;
}

static inline size_t ref_evict(ref_model *r, size_t target)
{
    size_t count = 0;
    while (r->n > target) {
        size_t best = SIZE_MAX;
        for (size_t i = 0; i < r->n; i++)
            if (!ref_protected(r, r->t[i].position) &&
                (best == SIZE_MAX || ref_before(r, &r->t[i], &r->t[best])))
                best = i;
        if (best == SIZE_MAX)
            break;
        r->t[best] = r->t[--r->n];
        count++;
    }
    r->evicted += count;
    return count;
}

static inline void ref_add_weights(ref_model *r, uint64_t step)
{
    for (size_t i = 0; i < r->n; i++)
        r->t[i].score += (double)weight_of(r->salt, step, (uint64_t)r->t[i].position);
}

#endif
