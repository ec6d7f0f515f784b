/* tests/cache/test_evict.c — eviction and copy-on-write (cache/evict.c,
 * cache/policy_*.c, the fork and append paths of cache/stream.c). Every
 * policy runs against a plain reference model (an array of {position,
 * key_norm, score} with O(n^2) selection and the same tie rules): the kept
 * token set must match exactly, every kept slot must hold its own token's K
 * and V rows, and the pool must hold exactly the stream's pages. (Streams
 * here are f32; quantized rows under eviction: tests/cache/test_stream.c.)
 * Over 600 lines: every policy and the copy-on-write paths run against the
 * one reference model defined here. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache/evict.h"
#include "cache/pool.h"
#include "cache/stream.h"

#include "tests/cache/policy_model.h"
#include "tests/support/check_main.h"

#define PAGE 1024 /* small pages: d = 8 gives 14 slots a page, so many pages */
#define D 8
#define SPP 14    /* (64 + 64 + 8) * 14 = 1008 <= 1024 (test_layout_assumption) */

/* ---- deterministic data: everything is a function of (salt, position) ----- */

/* Key element i of position p. A third of the tokens get one of four
 * constant rows (equal norms: l2norm ties), the rest random values. */
static float key_of(uint64_t salt, uint64_t p, size_t i)
{
    const uint64_t h = mix(salt * 0x100000001b3ull ^ p);
    if (h % 3 == 0)
        return (float)(1 + (h >> 8) % 4) * 0.5f * (((h >> 16) >> i) & 1 ? -1.0f : 1.0f);
    return (float)((int64_t)(mix(h + i) % 20001) - 10000) / 4096.0f;
}

/* Value element i of position p: distinct and exact in f32 for p < 2^20. */
static float val_of(uint64_t p, size_t i)
{
    return (float)p * 16.0f + (float)i + 0.5f;
}

/* The norm exactly as the stream computes it (of the f32 key, in double). */
static double norm_of(uint64_t salt, uint64_t p)
{
    double sq = 0.0;
    for (size_t i = 0; i < D; i++) {
        const float k = key_of(salt, p, i);
        sq += (double)k * k;
    }
    return sqrt(sq);
}

/* h2o weight of position p at step t: multiples of 1/8 in [0, 1], so sums
 * are exact in double on both sides and ties are frequent. */
static float weight_of(uint64_t salt, uint64_t step, uint64_t p)
{
    return (float)(mix(mix(salt ^ step) + p) % 9) / 8.0f;
}

/* ---- driving a real stream ------------------------------------------------ */

static void stream_new(kvd_stream *s, kvd_eviction policy, uint32_t sink, uint32_t recent)
{
    kvd_stream_init(s, PAGE, D);
    const kvd_evict_config cfg = {.policy = policy, .sink = sink, .recent = recent};
    ck_assert_int_eq(kvd_stream_evict_init(s, &cfg), 0);
    ck_assert_ptr_nonnull(s->evict);
}

/* Appends the next m positions (keys keyed by salt) the way a step does:
 * pages_needed, reserve table and index, take pages, append. */
static void t_append(kvd_stream *s, kvd_pool *pool, uint64_t salt, size_t m)
{
    const size_t need = kvd_stream_pages_needed(s, m);
    void **pages = malloc((need ? need : 1) * sizeof *pages);
    float *k = malloc((m ? m : 1) * D * sizeof *k), *v = malloc((m ? m : 1) * D * sizeof *v);
    REQUIRE(pages && k && v, "out of memory");
    for (size_t t = 0; t < m; t++)
        for (size_t i = 0; i < D; i++) {
            k[t * D + i] = key_of(salt, s->appended + t, i);
            v[t * D + i] = val_of(s->appended + t, i);
        }
    REQUIRE(kvd_stream_reserve_table(s, need) == 0, "reserve_table");
    REQUIRE(kvd_stream_evict_reserve(s, m) == 0, "evict_reserve");
    REQUIRE(kvd_pool_alloc(pool, need, pages) == 0, "pool_alloc");
    kvd_stream_append(s, pool, m, k, v, D, pages);
    free(pages);
    free(k);
    free(v);
}

/* Evicts down to target with exactly the spare pages the bound asks for;
 * unused spares go back. Returns the number evicted. */
static size_t t_evict(kvd_stream *s, kvd_pool *pool, size_t target)
{
    const size_t count = s->n_tokens > target ? s->n_tokens - target : 0;
    const size_t bound = kvd_stream_evict_pages_bound(s, count);
    REQUIRE(bound <= s->n_shared && bound <= count, "bound");
    void **spare = malloc((bound ? bound : 1) * sizeof *spare);
    REQUIRE(spare != NULL, "out of memory");
    REQUIRE(kvd_pool_alloc(pool, bound, spare) == 0, "pool_alloc");
    size_t used = 0;
    const size_t n = kvd_stream_evict(s, pool, target, spare, bound, &used);
    REQUIRE(used <= bound, "spare used %zu > bound %zu", used, bound);
    kvd_pool_release(pool, spare + used, bound - used);
    free(spare);
    return n;
}

static void t_add_weights(kvd_stream *s, uint64_t salt, uint64_t step)
{
    float *w = malloc((s->n_tokens ? s->n_tokens : 1) * sizeof *w);
    REQUIRE(w != NULL, "out of memory");
    for (size_t j = 0; j < s->n_tokens; j++)
        w[j] = weight_of(salt, step, (uint64_t)kvd_stream_meta(s, j)->position);
    kvd_stream_add_weights(s, w, s->n_tokens);
    free(w);
}

static int cmp_i64(const void *a, const void *b)
{
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The stream keeps exactly the model's token set, each slot holds its own
 * token's rows, and its pages are exactly ceil(n / spp). (Norms live in the
 * index; the kept sets of l2norm runs check them.) */
static void check_stream(const kvd_stream *s, const ref_model *r)
{
    REQUIRE(s->n_tokens == r->n, "n_tokens %zu, model %zu", s->n_tokens, r->n);
    REQUIRE(s->appended == r->appended, "appended");
    REQUIRE(s->evicted == r->evicted, "evicted %llu, model %llu",
            (unsigned long long)s->evicted, (unsigned long long)r->evicted);
    REQUIRE(s->n_pages == (s->n_tokens + s->slots_per_page - 1) / s->slots_per_page,
            "n_pages %zu for %zu tokens", s->n_pages, s->n_tokens);
    REQUIRE(kvd_stream_evictable(s) == ref_evictable(r), "evictable %zu, model %zu",
            kvd_stream_evictable(s), ref_evictable(r));
    const size_t n = r->n;
    int64_t *got = malloc((n ? n : 1) * sizeof *got), *want = malloc((n ? n : 1) * sizeof *want);
    ck_assert(got && want);
    const kvd_kv_pages kv = kvd_stream_view(s);
    for (size_t j = 0; j < n; j++) {
        const kvd_slot_meta *meta = kvd_stream_meta(s, j);
        const uint64_t p = (uint64_t)meta->position;
        got[j] = meta->position;
        want[j] = r->t[j].position;
        const float *key = kvd_kv_key(&kv, j), *val = kvd_kv_value(&kv, j);
        for (size_t i = 0; i < D; i++) {
            REQUIRE(key[i] == key_of(r->salt, p, i), "slot %zu pos %llu key[%zu]", j,
                    (unsigned long long)p, i);
            REQUIRE(val[i] == val_of(p, i), "slot %zu pos %llu val[%zu]", j,
                    (unsigned long long)p, i);
        }
    }
    qsort(got, n, sizeof *got, cmp_i64);
    qsort(want, n, sizeof *want, cmp_i64);
    for (size_t j = 0; j < n; j++)
        REQUIRE(got[j] == want[j], "kept set differs at %zu: %lld vs %lld", j,
                (long long)got[j], (long long)want[j]);
    free(got);
    free(want);
}

static const kvd_eviction policies[] = {KVD_EVICT_RECENCY, KVD_EVICT_L2NORM, KVD_EVICT_H2O};
#define N_POLICIES (sizeof policies / sizeof *policies)

/* One step on stream and model: append m, (h2o) weights, evict to budget. */
static void step_both(kvd_stream *s, ref_model *r, kvd_pool *pool, size_t m, size_t budget,
                      uint64_t step)
{
    t_append(s, pool, r->salt, m);
    ref_append(r, m);
    if (r->policy == KVD_EVICT_H2O) {
        t_add_weights(s, r->salt, step);
        ref_add_weights(r, step);
    }
    const size_t want = ref_evict(r, budget);
    const size_t got = t_evict(s, pool, budget);
    REQUIRE(got == want, "evicted %zu, model %zu", got, want);
}

/* ---- policy tests ------------------------------------------------------------ */

START_TEST(test_layout_assumption)
{
    ck_assert_uint_eq(sizeof(kvd_slot_meta), 8);
    ck_assert_uint_eq(kvd_stream_slots_per_page(PAGE, D), SPP);
}
END_TEST

/* Sinks and the recent window survive; with budget below them all, evict
 * stops early and returns fewer than asked. */
START_TEST(test_protection_and_all_protected)
{
    for (size_t pi = 0; pi < N_POLICIES; pi++) {
        kvd_pool *pool;
        ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
        kvd_stream s;
        ref_model r;
        stream_new(&s, policies[pi], 4, 8);
        ref_init(&r, policies[pi], 4, 8, 11 + pi);
        t_append(&s, pool, r.salt, 30);
        ref_append(&r, 30);
        ck_assert_uint_eq(kvd_stream_evictable(&s), 18);
        if (policies[pi] == KVD_EVICT_H2O) {
            t_add_weights(&s, r.salt, 0);
            ref_add_weights(&r, 0);
        }
        /* budget 5 < 4 sinks + 8 recent: only the 18 others can go */
        ck_assert_uint_eq(t_evict(&s, pool, 5), 18);
        ck_assert_uint_eq(ref_evict(&r, 5), 18);
        ck_assert_uint_eq(s.n_tokens, 12);
        ck_assert_uint_eq(kvd_stream_evictable(&s), 0);
        check_stream(&s, &r);
        for (size_t j = 0; j < s.n_tokens; j++) {
            const int64_t p = kvd_stream_meta(&s, j)->position;
            ck_assert(p < 4 || p >= 22);
        }
        ck_assert_uint_eq(kvd_pool_pages_used(pool), s.n_pages);
        /* nothing left to evict: a no-op */
        ck_assert_uint_eq(t_evict(&s, pool, 0), 0);
        /* one more token pushes position 22 out of the window: evictable */
        t_append(&s, pool, r.salt, 1);
        ref_append(&r, 1);
        ck_assert_uint_eq(kvd_stream_evictable(&s), 1);
        ck_assert_uint_eq(t_evict(&s, pool, 0), 1);
        ck_assert_uint_eq(ref_evict(&r, 0), 1);
        check_stream(&s, &r);
        kvd_stream_release(&s, pool);
        ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
        free(r.t);
        kvd_pool_destroy(pool);
    }
}
END_TEST

/* Budget 1 with no protection: one token survives each step; a budget
 * larger than the stream evicts nothing; one append far over budget. */
START_TEST(test_budget_edges)
{
    for (size_t pi = 0; pi < N_POLICIES; pi++) {
        kvd_pool *pool;
        ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
        kvd_stream s;
        ref_model r;

        stream_new(&s, policies[pi], 0, 0);
        ref_init(&r, policies[pi], 0, 0, 21 + pi);
        for (uint64_t step = 0; step < 200; step++) {
            step_both(&s, &r, pool, step % 4, 1, step);
            REQUIRE(s.n_tokens <= 1, "over budget");
            check_stream(&s, &r);
            REQUIRE(kvd_pool_pages_used(pool) == s.n_pages, "pool used");
        }
        kvd_stream_release(&s, pool);
        free(r.t);

        stream_new(&s, policies[pi], 2, 3);
        ref_init(&r, policies[pi], 2, 3, 31 + pi);
        for (uint64_t step = 0; step < 20; step++) {
            step_both(&s, &r, pool, 5, 1000, step);
            ck_assert_uint_eq(s.evicted, 0);
        }
        check_stream(&s, &r);
        kvd_stream_release(&s, pool);
        free(r.t);

        /* 500 tokens in one append, budget 10: 490 out in one call */
        stream_new(&s, policies[pi], 2, 3);
        ref_init(&r, policies[pi], 2, 3, 41 + pi);
        step_both(&s, &r, pool, 500, 10, 0);
        ck_assert_uint_eq(s.n_tokens, 10);
        ck_assert_uint_eq(s.evicted, 490);
        check_stream(&s, &r);
        ck_assert_uint_eq(kvd_pool_pages_used(pool), s.n_pages);
        ck_assert_uint_eq(s.n_pages, 1);
        kvd_stream_release(&s, pool);
        free(r.t);
        ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
        kvd_pool_destroy(pool);
    }
}
END_TEST

/* Long random runs: 3,000 steps of 0..5 tokens, evicting to budget after
 * each, for several seeds and protection settings; checked after every step. */
START_TEST(test_long_random_runs)
{
    static const struct {
        uint32_t sink, recent;
        size_t budget;
    } shapes[] = {{4, 8, 40}, {0, 0, 25}, {3, 0, 17}, {0, 6, 30}, {5, 20, 26}};
    for (size_t pi = 0; pi < N_POLICIES; pi++)
        for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
            for (uint64_t seed = 1; seed <= 3; seed++) {
                kvd_pool *pool;
                ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
                kvd_stream s;
                ref_model r;
                stream_new(&s, policies[pi], shapes[si].sink, shapes[si].recent);
                ref_init(&r, policies[pi], shapes[si].sink, shapes[si].recent,
                         seed * 1000 + si * 10 + pi);
                rng_state = seed * 7919 + si;
                for (uint64_t step = 0; step < 3000; step++) {
                    step_both(&s, &r, pool, rng_next() % 6, shapes[si].budget, step);
                    check_stream(&s, &r);
                    REQUIRE(kvd_pool_pages_used(pool) == s.n_pages, "pool used");
                }
                ck_assert_uint_gt(s.evicted, 1000);
                kvd_stream_release(&s, pool);
                ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
                free(r.t);
                kvd_pool_destroy(pool);
            }
}
END_TEST

/* h2o with several steps of weights between evictions, and evictions of
 * several tokens at once (the lazily rebuilt heap must see every update). */
START_TEST(test_h2o_weights_between_evictions)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    kvd_stream s;
    ref_model r;
    stream_new(&s, KVD_EVICT_H2O, 2, 4);
    ref_init(&r, KVD_EVICT_H2O, 2, 4, 77);
    rng_state = 5;
    for (uint64_t step = 0; step < 1500; step++) {
        const size_t m = rng_next() % 8;
        t_append(&s, pool, r.salt, m);
        ref_append(&r, m);
        t_add_weights(&s, r.salt, step);
        ref_add_weights(&r, step);
        if (step % 3 == 2) { /* evict only every third step, down to 20..50 */
            const size_t budget = 20 + rng_next() % 31;
            const size_t want = ref_evict(&r, budget), got = t_evict(&s, pool, budget);
            REQUIRE(got == want, "evicted %zu, model %zu", got, want);
        }
        check_stream(&s, &r);
        REQUIRE(kvd_pool_pages_used(pool) == s.n_pages, "pool used");
    }
    /* weights on other policies are a no-op */
    kvd_stream o;
    stream_new(&o, KVD_EVICT_L2NORM, 0, 0);
    t_append(&o, pool, 1, 3);
    const float w[3] = {1, 2, 3};
    kvd_stream_add_weights(&o, w, 3);
    kvd_stream_release(&o, pool);
    kvd_stream_release(&s, pool);
    free(r.t);
    kvd_pool_destroy(pool);
}
END_TEST

/* An index attached to a stream that already holds tokens indexes them;
 * policy none attaches nothing; subgen is not a ranking policy. */
START_TEST(test_init_on_populated_stream)
{
    for (size_t pi = 0; pi < N_POLICIES; pi++) {
        kvd_pool *pool;
        ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
        kvd_stream s;
        kvd_stream_init(&s, PAGE, D);
        ref_model r;
        ref_init(&r, policies[pi], 3, 7, 91 + pi);
        t_append(&s, pool, r.salt, 57); /* no index: reserve is a no-op */
        ref_append(&r, 57);
        ck_assert_uint_eq(kvd_stream_evictable(&s), 0);
        ck_assert_uint_eq(kvd_stream_evict(&s, pool, 0, NULL, 0, &(size_t){0}), 0);
        const kvd_evict_config cfg = {.policy = policies[pi], .sink = 3, .recent = 7};
        ck_assert_int_eq(kvd_stream_evict_init(&s, &cfg), 0);
        check_stream(&s, &r);
        for (uint64_t step = 0; step < 300; step++)
            step_both(&s, &r, pool, step % 5, 30, step);
        check_stream(&s, &r);
        kvd_stream_release(&s, pool);
        ck_assert_ptr_null(s.evict);
        free(r.t);
        kvd_pool_destroy(pool);
    }
    kvd_stream s;
    kvd_stream_init(&s, PAGE, D);
    const kvd_evict_config none = {.policy = KVD_EVICT_NONE};
    ck_assert_int_eq(kvd_stream_evict_init(&s, &none), 0);
    ck_assert_ptr_null(s.evict);
    const kvd_evict_config subgen = {.policy = KVD_EVICT_SUBGEN};
    ck_assert_int_eq(kvd_stream_evict_init(&s, &subgen), -EINVAL);
    ck_assert_ptr_null(s.evict);
}
END_TEST

/* Reserving the impossible fails with nothing changed. */
START_TEST(test_reserve_enomem)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(64 * PAGE, PAGE, &pool), 0);
    kvd_stream s;
    stream_new(&s, KVD_EVICT_H2O, 1, 2);
    t_append(&s, pool, 5, 20);
    ck_assert_int_eq(kvd_stream_evict_reserve(&s, SIZE_MAX), -ENOMEM);
    ck_assert_int_eq(kvd_stream_evict_reserve(&s, SIZE_MAX / 8), -ENOMEM);
    ck_assert_int_eq(kvd_stream_evict_reserve(&s, 0), 0);
    ref_model r;
    ref_init(&r, KVD_EVICT_H2O, 1, 2, 5);
    ref_append(&r, 20);
    check_stream(&s, &r);
    step_both(&s, &r, pool, 3, 10, 1);
    check_stream(&s, &r);
    kvd_stream_release(&s, pool);
    free(r.t);
    kvd_pool_destroy(pool);
}
END_TEST

/* ---- copy-on-write ------------------------------------------------------------- */

static size_t count_in(const kvd_stream *s, const void *page)
{
    size_t c = 0;
    for (size_t i = 0; i < s->n_pages; i++)
        c += s->pages[i] == page;
    return c;
}

/* Pool state for streams a and b (b may be NULL): every page's refcount is
 * the number of tables holding it, the pool holds exactly their union, and
 * the shared flags are counted right. */
static void check_sharing(const kvd_pool *pool, const kvd_stream *a, const kvd_stream *b)
{
    const kvd_stream *ss[2] = {a, b};
    size_t distinct = 0;
    for (size_t x = 0; x < 2; x++) {
        const kvd_stream *s = ss[x];
        if (s == NULL)
            continue;
        size_t flagged = 0;
        for (size_t i = 0; i < s->n_pages; i++) {
            const void *pg = s->pages[i];
            REQUIRE(count_in(s, pg) == 1, "page %zu twice in one table", i);
            const size_t holders = count_in(a, pg) + (b ? count_in(b, pg) : 0);
            REQUIRE(kvd_pool_refcount(pool, pg) == holders, "page %zu: refcount %u, %zu holders",
                    i, kvd_pool_refcount(pool, pg), holders);
            /* held by both: must be flagged on both */
            REQUIRE(holders < 2 || s->shared[i], "page %zu held by both, not flagged", i);
            flagged += s->shared[i] != 0;
            if (x == 0 || count_in(a, pg) == 0)
                distinct++;
        }
        REQUIRE(s->n_shared == flagged, "n_shared %zu, flagged %zu", s->n_shared, flagged);
    }
    REQUIRE(kvd_pool_pages_used(pool) == distinct, "pool used %zu, distinct pages %zu",
            kvd_pool_pages_used(pool), distinct);
}

/* Table entries of s that differ from a snapshot (at indices both have). */
static size_t replaced(const kvd_stream *s, void *const *before, size_t n_before)
{
    size_t c = 0;
    for (size_t i = 0; i < s->n_pages && i < n_before; i++)
        c += s->pages[i] != before[i];
    return c;
}

/* Forking 10,000 tokens copies nothing and takes no page. */
START_TEST(test_fork_large_copies_nothing)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(2048 * PAGE, PAGE, &pool), 0);
    kvd_stream p, c;
    stream_new(&p, KVD_EVICT_L2NORM, 4, 16);
    t_append(&p, pool, 3, 10000);
    const size_t used = kvd_pool_pages_used(pool);
    ck_assert_uint_eq(used, p.n_pages);
    ck_assert_uint_eq(p.n_pages, (10000 + SPP - 1) / SPP);
    ck_assert_int_eq(kvd_stream_fork(&p, &c, pool), 0);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), used);
    ck_assert_uint_eq(kvd_pool_copies(pool), 0);
    ck_assert_uint_eq(c.n_tokens, 10000);
    ck_assert_uint_eq(c.appended, 10000);
    ck_assert_uint_eq(p.n_shared, p.n_pages);
    ck_assert_uint_eq(c.n_shared, c.n_pages);
    for (size_t i = 0; i < p.n_pages; i++) {
        ck_assert_ptr_eq(p.pages[i], c.pages[i]);
        ck_assert_uint_eq(kvd_pool_refcount(pool, p.pages[i]), 2);
        ck_assert(p.shared[i] && c.shared[i]);
    }
    ck_assert_ptr_ne(c.evict, p.evict);
    ck_assert_uint_eq(kvd_stream_evictable(&c), kvd_stream_evictable(&p));
    check_sharing(pool, &p, &c);
    kvd_stream_release(&p, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), used); /* the child still holds them */
    kvd_stream_release(&c, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

/* A scripted fork: each write into a shared page costs exactly one copy,
 * once; a page the sibling gave up is written in place. */
START_TEST(test_fork_scripted_copies)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    kvd_stream p, c;
    ref_model rp, rc;
    stream_new(&p, KVD_EVICT_RECENCY, 0, 0);
    ref_init(&rp, KVD_EVICT_RECENCY, 0, 0, 8);
    t_append(&p, pool, 8, 3 * SPP + 5); /* 4 pages, the tail 5/SPP full */
    ref_append(&rp, 3 * SPP + 5);
    ck_assert_int_eq(kvd_stream_fork(&p, &c, pool), 0);
    ref_copy(&rc, &rp);
    void *orig[4];
    memcpy(orig, p.pages, sizeof orig);

    /* parent appends into the shared tail: one page for the copy */
    ck_assert_uint_eq(kvd_stream_pages_needed(&p, 1), 1);
    ck_assert_uint_eq(kvd_stream_pages_needed(&p, SPP - 4), 2); /* copy + 1 new page */
    t_append(&p, pool, 8, 1);
    ref_append(&rp, 1);
    ck_assert_uint_eq(kvd_pool_copies(pool), 1);
    ck_assert_ptr_ne(p.pages[3], orig[3]);
    ck_assert_ptr_eq(c.pages[3], orig[3]);
    ck_assert_uint_eq(kvd_pool_refcount(pool, orig[3]), 1);
    for (size_t i = 0; i < 3; i++) /* untouched pages stay shared */
        ck_assert_uint_eq(kvd_pool_refcount(pool, orig[i]), 2);
    ck_assert_uint_eq(p.n_shared, 3);
    check_sharing(pool, &p, &c);
    check_stream(&p, &rp);
    check_stream(&c, &rc);

    /* child appends into its tail, still flagged but no longer shared:
     * planned as a copy, written in place, the spare goes back */
    ck_assert_uint_eq(kvd_stream_pages_needed(&c, 1), 1);
    t_append(&c, pool, 8, 1);
    ref_append(&rc, 1);
    ck_assert_uint_eq(kvd_pool_copies(pool), 1);
    ck_assert_ptr_eq(c.pages[3], orig[3]);
    ck_assert(!c.shared[3]);
    check_sharing(pool, &p, &c);
    check_stream(&c, &rc);
    check_stream(&p, &rp);

    /* parent evicts its oldest token (slot 0, page 0): the last slot moves
     * in, so page 0 is copied; a second eviction there copies nothing more */
    ck_assert_uint_eq(kvd_stream_evict_pages_bound(&p, 1), 1);
    ck_assert_uint_eq(t_evict(&p, pool, p.n_tokens - 1), 1);
    ck_assert_uint_eq(ref_evict(&rp, rp.n - 1), 1);
    ck_assert_uint_eq(kvd_pool_copies(pool), 2);
    ck_assert_ptr_ne(p.pages[0], orig[0]);
    ck_assert_uint_eq(kvd_pool_refcount(pool, orig[0]), 1);
    ck_assert_uint_eq(t_evict(&p, pool, p.n_tokens - 1), 1);
    ck_assert_uint_eq(ref_evict(&rp, rp.n - 1), 1);
    ck_assert_uint_eq(kvd_pool_copies(pool), 2);
    check_sharing(pool, &p, &c);
    check_stream(&p, &rp);
    check_stream(&c, &rc);

    /* Without spare pages the child evicts in place where it may: page 0
     * is flagged but the parent let go of it (refcount 1), so positions
     * 0..SPP-1 go with no copy; position SPP sits in page 1, still held by
     * both, and there eviction stops, changing nothing. */
    size_t used = 0;
    ck_assert(c.shared[0] && c.shared[1]);
    ck_assert_uint_eq(kvd_pool_refcount(pool, c.pages[0]), 1);
    ck_assert_uint_eq(kvd_stream_evict(&c, pool, 0, NULL, 0, &used), SPP);
    ck_assert_uint_eq(ref_evict(&rc, rc.n - SPP), SPP);
    ck_assert_uint_eq(used, 0);
    ck_assert_uint_eq(kvd_pool_copies(pool), 2);
    ck_assert(!c.shared[0] && c.shared[1]);
    check_sharing(pool, &p, &c);
    check_stream(&c, &rc);
    /* with one spare it goes on: page 1 is copied once */
    void *spare;
    ck_assert_int_eq(kvd_pool_alloc(pool, 1, &spare), 0);
    used = 0;
    ck_assert_uint_eq(kvd_stream_evict(&c, pool, c.n_tokens - 3, &spare, 1, &used), 3);
    ck_assert_uint_eq(ref_evict(&rc, rc.n - 3), 3);
    ck_assert_uint_eq(used, 1);
    ck_assert_uint_eq(kvd_pool_copies(pool), 3);
    ck_assert_ptr_eq(c.pages[1], spare);
    check_sharing(pool, &p, &c);
    check_stream(&c, &rc);
    check_stream(&p, &rp);

    kvd_stream_release(&p, pool);
    free(rp.t);
    check_sharing(pool, &c, NULL);
    check_stream(&c, &rc);
    kvd_stream_release(&c, pool);
    free(rc.t);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

/* Releasing the parent leaves the child whole; the child then writes every
 * formerly shared page in place (refcount 1): no copies at all. */
START_TEST(test_fork_sibling_released)
{
    for (size_t pi = 0; pi < N_POLICIES; pi++) {
        kvd_pool *pool;
        ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
        kvd_stream p, c;
        ref_model r;
        stream_new(&p, policies[pi], 2, 3);
        ref_init(&r, policies[pi], 2, 3, 61 + pi);
        for (uint64_t step = 0; step < 50; step++)
            step_both(&p, &r, pool, 3, 40, step);
        ck_assert_int_eq(kvd_stream_fork(&p, &c, pool), 0);
        kvd_stream_release(&p, pool);
        check_sharing(pool, &c, NULL);
        check_stream(&c, &r);
        for (uint64_t step = 50; step < 300; step++) {
            step_both(&c, &r, pool, step % 4, 30, step);
            check_stream(&c, &r);
            REQUIRE(kvd_pool_pages_used(pool) == c.n_pages, "pool used");
        }
        ck_assert_uint_eq(kvd_pool_copies(pool), 0);
        kvd_stream_release(&c, pool);
        free(r.t);
        kvd_pool_destroy(pool);
    }
}
END_TEST

/* Parent and child run independent random steps after a fork (re-forked
 * every 300 steps): neither sees the other's tokens, data stays intact on
 * both sides, refcounts equal the number of holders, and each copy the pool
 * counts is one table entry replaced. */
START_TEST(test_fork_independent_random)
{
    for (size_t pi = 0; pi < N_POLICIES; pi++)
        for (uint64_t seed = 1; seed <= 3; seed++) {
            kvd_pool *pool;
            ck_assert_int_eq(kvd_pool_create(512 * PAGE, PAGE, &pool), 0);
            kvd_stream s[2];
            ref_model r[2];
            stream_new(&s[0], policies[pi], 3, 5);
            ref_init(&r[0], policies[pi], 3, 5, 500 + seed * 10 + pi);
            rng_state = seed * 104729;
            for (uint64_t step = 0; step < 40; step++)
                step_both(&s[0], &r[0], pool, rng_next() % 6, 60, step);
            ck_assert_int_eq(kvd_stream_fork(&s[0], &s[1], pool), 0);
            ref_copy(&r[1], &r[0]);
            for (uint64_t step = 40; step < 1200; step++) {
                if (step % 300 == 0) { /* re-fork: drop the child, fork again */
                    kvd_stream_release(&s[1], pool);
                    free(r[1].t);
                    ck_assert_int_eq(kvd_stream_fork(&s[0], &s[1], pool), 0);
                    ref_copy(&r[1], &r[0]);
                    check_sharing(pool, &s[0], &s[1]);
                }
                const size_t x = rng_next() % 2; /* which side moves */
                void *before[64];
                const size_t nb = s[x].n_pages;
                REQUIRE(nb <= 64, "snapshot too small");
                memcpy(before, s[x].pages, nb * sizeof *before);
                const unsigned long long copies = kvd_pool_copies(pool);
                step_both(&s[x], &r[x], pool, rng_next() % 6, 20 + x * 15, step);
                /* Each copy replaces one table entry, except that a copied
                 * tail page may be emptied and dropped later in the same
                 * evict call (a copy that turned out unneeded). */
                const size_t rep = replaced(&s[x], before, nb);
                const size_t dropped = nb > s[x].n_pages ? nb - s[x].n_pages : 0;
                const unsigned long long dc = kvd_pool_copies(pool) - copies;
                REQUIRE(dc >= rep && dc <= rep + dropped && (dropped > 0 || dc == rep),
                        "copies %llu, replaced %zu, dropped %zu", dc, rep, dropped);
                check_sharing(pool, &s[0], &s[1]);
                check_stream(&s[0], &r[0]);
                check_stream(&s[1], &r[1]);
            }
            ck_assert_uint_gt(kvd_pool_copies(pool), 0);
            kvd_stream_release(&s[0], pool);
            check_sharing(pool, &s[1], NULL);
            check_stream(&s[1], &r[1]);
            kvd_stream_release(&s[1], pool);
            ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
            free(r[0].t);
            free(r[1].t);
            kvd_pool_destroy(pool);
        }
}
END_TEST

/* Pages needed and table growth keep the shared flags in step. */
START_TEST(test_shared_flags_follow_table)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    kvd_stream p, c;
    stream_new(&p, KVD_EVICT_RECENCY, 0, 0);
    t_append(&p, pool, 2, 2 * SPP); /* exactly 2 full pages */
    ck_assert_int_eq(kvd_stream_fork(&p, &c, pool), 0);
    /* a full tail page is not written by the next append: no copy planned */
    ck_assert_uint_eq(kvd_stream_pages_needed(&p, 1), 1);
    ck_assert_uint_eq(kvd_stream_pages_needed(&p, 0), 0);
    for (size_t k = 0; k < 100; k++) /* grow the table well past its size */
        t_append(&p, pool, 2, 1);
    ck_assert_uint_eq(kvd_pool_copies(pool), 0);
    ck_assert(p.shared[0] && p.shared[1]);
    for (size_t i = 2; i < p.n_pages; i++)
        ck_assert(!p.shared[i]);
    ck_assert_uint_eq(p.n_shared, 2);
    check_sharing(pool, &p, &c);
    kvd_stream_release(&p, pool);
    kvd_stream_release(&c, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    /* forking an empty stream shares nothing */
    stream_new(&p, KVD_EVICT_H2O, 0, 0);
    ck_assert_int_eq(kvd_stream_fork(&p, &c, pool), 0);
    ck_assert_uint_eq(c.n_pages, 0);
    t_append(&c, pool, 2, 3);
    ck_assert_uint_eq(p.n_tokens, 0);
    kvd_stream_release(&p, pool);
    kvd_stream_release(&c, pool);
    kvd_pool_destroy(pool);
}
END_TEST

static Suite *evict_suite(void)
{
    Suite *s = suite_create("cache/evict");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_layout_assumption);
    tcase_add_test(tc, test_protection_and_all_protected);
    tcase_add_test(tc, test_budget_edges);
    tcase_add_test(tc, test_long_random_runs);
    tcase_add_test(tc, test_h2o_weights_between_evictions);
    tcase_add_test(tc, test_init_on_populated_stream);
    tcase_add_test(tc, test_reserve_enomem);
    tcase_add_test(tc, test_fork_large_copies_nothing);
    tcase_add_test(tc, test_fork_scripted_copies);
    tcase_add_test(tc, test_fork_sibling_released);
    tcase_add_test(tc, test_fork_independent_random);
    tcase_add_test(tc, test_shared_flags_follow_table);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(evict_suite)
