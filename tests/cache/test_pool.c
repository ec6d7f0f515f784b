/* tests/cache/test_pool.c — the page pool: sizes and -EINVAL, allocation and
 * all-or-nothing exhaustion, exact accounting after every operation,
 * reference counts, page alignment, lazily backed memory, and concurrent
 * alloc/release from several threads. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/pool.h"
#include "tests/support/check_main.h"

#define PAGE 4096

static void assert_accounting(const kvd_pool *pool)
{
    ck_assert_uint_eq(kvd_pool_pages_used(pool) + kvd_pool_pages_free(pool),
                      kvd_pool_pages_total(pool));
}

START_TEST(test_create_sizes)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(10 * PAGE + 100, PAGE, &pool), 0);
    ck_assert_uint_eq(kvd_pool_pages_total(pool), 10); /* floor(memory / page) */
    ck_assert_uint_eq(kvd_pool_pages_free(pool), 10);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    ck_assert_uint_eq(kvd_pool_page_bytes(pool), PAGE);
    kvd_pool_destroy(pool);

    ck_assert_int_eq(kvd_pool_create(KVD_POOL_MIN_PAGE_BYTES, KVD_POOL_MIN_PAGE_BYTES, &pool), 0);
    ck_assert_uint_eq(kvd_pool_pages_total(pool), 1);
    kvd_pool_destroy(pool);
    kvd_pool_destroy(NULL); /* no-op */
}
END_TEST

START_TEST(test_create_einval)
{
    kvd_pool *pool = (kvd_pool *)&pool;
    /* not a multiple of 64 */
    ck_assert_int_eq(kvd_pool_create(1 << 20, 4096 + 32, &pool), -EINVAL);
    ck_assert_ptr_null(pool);
    /* below the minimum page size */
    ck_assert_int_eq(kvd_pool_create(1 << 20, KVD_POOL_MIN_PAGE_BYTES - 64, &pool), -EINVAL);
    ck_assert_int_eq(kvd_pool_create(1 << 20, 0, &pool), -EINVAL);
    /* fewer than one page */
    ck_assert_int_eq(kvd_pool_create(PAGE - 1, PAGE, &pool), -EINVAL);
    ck_assert_int_eq(kvd_pool_create(0, PAGE, &pool), -EINVAL);
    ck_assert_ptr_null(pool);
}
END_TEST

START_TEST(test_alloc_release_alignment)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(16 * PAGE, PAGE, &pool), 0);
    void *pages[16];
    ck_assert_int_eq(kvd_pool_alloc(pool, 0, pages), 0); /* takes nothing */
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);

    ck_assert_int_eq(kvd_pool_alloc(pool, 5, pages), 0);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 5);
    assert_accounting(pool);
    for (size_t i = 0; i < 5; i++) {
        ck_assert_uint_eq((uintptr_t)pages[i] % KVD_POOL_PAGE_ALIGN, 0);
        ck_assert_uint_eq(kvd_pool_refcount(pool, pages[i]), 1);
        for (size_t j = 0; j < i; j++) /* distinct and non-overlapping */
            ck_assert((uintptr_t)pages[i] >= (uintptr_t)pages[j] + PAGE ||
                      (uintptr_t)pages[j] >= (uintptr_t)pages[i] + PAGE);
        memset(pages[i], 0xA5, PAGE); /* whole page writable */
    }
    kvd_pool_release(pool, pages, 2);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 3);
    ck_assert_uint_eq(kvd_pool_refcount(pool, pages[0]), 0);
    ck_assert_uint_eq(kvd_pool_refcount(pool, pages[2]), 1);
    assert_accounting(pool);
    kvd_pool_release(pool, pages + 2, 3);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    assert_accounting(pool);

    /* Every page of the pool can be taken, each 64-byte aligned. */
    ck_assert_int_eq(kvd_pool_alloc(pool, 16, pages), 0);
    for (size_t i = 0; i < 16; i++)
        ck_assert_uint_eq((uintptr_t)pages[i] % KVD_POOL_PAGE_ALIGN, 0);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), 0);
    kvd_pool_release(pool, pages, 16);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), 16);

    /* A pointer that is not a pool page has reference count 0. */
    int local;
    ck_assert_uint_eq(kvd_pool_refcount(pool, &local), 0);
    kvd_pool_destroy(pool);
}
END_TEST

START_TEST(test_exhaustion_all_or_nothing)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(8 * PAGE, PAGE, &pool), 0);
    void *a[8], *b[8];
    for (size_t i = 0; i < 8; i++)
        b[i] = NULL;
    ck_assert_int_eq(kvd_pool_alloc(pool, 6, a), 0);
    /* 3 > 2 free: fails and takes nothing (pages_out untouched). */
    ck_assert_int_eq(kvd_pool_alloc(pool, 3, b), -ENOSPC);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), 2);
    for (size_t i = 0; i < 8; i++)
        ck_assert_ptr_null(b[i]);
    assert_accounting(pool);
    ck_assert_int_eq(kvd_pool_alloc(pool, 9, b), -ENOSPC); /* more than the pool */
    ck_assert_int_eq(kvd_pool_alloc(pool, 2, b), 0);         /* exactly what is left */
    ck_assert_uint_eq(kvd_pool_pages_free(pool), 0);
    ck_assert_int_eq(kvd_pool_alloc(pool, 1, b + 2), -ENOSPC);
    assert_accounting(pool);
    kvd_pool_release(pool, a, 6);
    kvd_pool_release(pool, b, 2);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), 8);
    kvd_pool_destroy(pool);
}
END_TEST

START_TEST(test_refcounts)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(4 * PAGE, PAGE, &pool), 0);
    void *p[2];
    ck_assert_int_eq(kvd_pool_alloc(pool, 2, p), 0);
    kvd_pool_retain(pool, p, 2); /* a fork shares both */
    kvd_pool_retain(pool, p, 1); /* and a second fork the first */
    ck_assert_uint_eq(kvd_pool_refcount(pool, p[0]), 3);
    ck_assert_uint_eq(kvd_pool_refcount(pool, p[1]), 2);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 2); /* shared pages count once */

    kvd_pool_release(pool, p, 2);
    ck_assert_uint_eq(kvd_pool_refcount(pool, p[0]), 2);
    ck_assert_uint_eq(kvd_pool_refcount(pool, p[1]), 1);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 2);
    kvd_pool_release(pool, p, 2);
    ck_assert_uint_eq(kvd_pool_refcount(pool, p[1]), 0);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 1); /* p[1] is free again */
    assert_accounting(pool);
    kvd_pool_release(pool, p, 1);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);

    /* A freed page is handed out again with a fresh count of 1. */
    void *again[4];
    ck_assert_int_eq(kvd_pool_alloc(pool, 4, again), 0);
    for (size_t i = 0; i < 4; i++)
        ck_assert_uint_eq(kvd_pool_refcount(pool, again[i]), 1);
    kvd_pool_release(pool, again, 4);
    kvd_pool_destroy(pool);
}
END_TEST

#ifndef NDEBUG
/* Releasing a page twice, or one not from the pool, is a programming error. */
START_TEST(test_double_release_asserts)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(4 * PAGE, PAGE, &pool), 0);
    void *p[1];
    ck_assert_int_eq(kvd_pool_alloc(pool, 1, p), 0);
    kvd_pool_release(pool, p, 1);
    kvd_pool_release(pool, p, 1); /* aborts */
}
END_TEST

START_TEST(test_foreign_release_asserts)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(4 * PAGE, PAGE, &pool), 0);
    void *p[1];
    ck_assert_int_eq(kvd_pool_alloc(pool, 1, p), 0);
    void *inside[1] = {(unsigned char *)p[0] + 64}; /* inside a page, not its start */
    kvd_pool_release(pool, inside, 1); /* aborts */
}
END_TEST
#endif

#if defined(__linux__)
static size_t resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    ck_assert_ptr_nonnull(f);
    unsigned long size, resident;
    ck_assert_int_eq(fscanf(f, "%lu %lu", &size, &resident), 2);
    fclose(f);
    return resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* Untouched pages cost no resident memory (MAP_NORESERVE, lazily backed). */
START_TEST(test_untouched_pages_not_resident)
{
    const size_t before = resident_bytes();
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create((size_t)1 << 30, 16384, &pool), 0);
    ck_assert_uint_eq(kvd_pool_pages_total(pool), 65536);
    void *p[4];
    ck_assert_int_eq(kvd_pool_alloc(pool, 4, p), 0);
    for (size_t i = 0; i < 4; i++)
        memset(p[i], 1, 16384);
    const size_t after = resident_bytes();
    /* 4 touched pages + ~0.75 MiB of bookkeeping, far below 1 GiB. */
    ck_assert_msg(after < before + (32u << 20), "RSS grew by %zu bytes", after - before);
    kvd_pool_release(pool, p, 4);
    kvd_pool_destroy(pool);
}
END_TEST
#endif

/* ---- concurrency ---------------------------------------------------------- */

#define THREADS 4
#define ROUNDS 3000

typedef struct worker {
    kvd_pool *pool;
    unsigned seed;
    unsigned char stamp; /* distinct per thread */
    size_t enospc; /* allocations refused (when threads overlap) */
} worker;

static void *worker_run(void *arg)
{
    worker *w = arg;
    void *held[8];
    for (int r = 0; r < ROUNDS; r++) {
        const size_t n = 1 + rand_r(&w->seed) % 8;
        const int rc = kvd_pool_alloc(w->pool, n, held);
        if (rc == -ENOSPC) {
            w->enospc++;
            continue;
        }
        ck_assert_int_eq(rc, 0);
        /* Stamp the pages; if another thread got one of them too, the stamp
         * is overwritten before we check it. */
        for (size_t i = 0; i < n; i++)
            memset(held[i], w->stamp, 256);
        if (r % 3 == 0) { /* share and unshare, as forks do */
            kvd_pool_retain(w->pool, held, n);
            kvd_pool_release(w->pool, held, n);
        }
        /* One assertion per round: each ck_assert records a checkpoint, far
         * costlier than the pool operations under test. */
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            const unsigned char *b = held[i];
            for (size_t k = 0; k < 256; k++)
                bad += b[k] != w->stamp;
        }
        ck_assert_uint_eq(bad, 0);
        /* used and free are two snapshots here (other threads move pages in
         * between), so check what holds for each alone: our n pages are in
         * use and nothing exceeds the pool; exact sums are checked at rest. */
        const size_t used = kvd_pool_pages_used(w->pool);
        ck_assert_uint_ge(used, n);
        ck_assert_uint_le(used, kvd_pool_pages_total(w->pool));
        ck_assert_uint_le(kvd_pool_pages_free(w->pool), kvd_pool_pages_total(w->pool) - n);
        kvd_pool_release(w->pool, held, n);
    }
    return NULL;
}

START_TEST(test_concurrent_alloc_release)
{
    kvd_pool *pool;
    /* 20 pages for up to 4 x 8 wanted: some allocations must fail. */
    ck_assert_int_eq(kvd_pool_create(20 * PAGE, PAGE, &pool), 0);
    pthread_t tid[THREADS];
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.pool = pool, .seed = 0x1234u * (unsigned)(i + 1),
                         .stamp = (unsigned char)(i + 1), .enospc = 0};
        ck_assert_int_eq(pthread_create(&tid[i], NULL, worker_run, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        ck_assert_int_eq(pthread_join(tid[i], NULL), 0);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), 20);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);

    /* Every page is free again, with count 0, and can all be taken at once. */
    void *all[20];
    ck_assert_int_eq(kvd_pool_alloc(pool, 20, all), 0);
    for (size_t i = 0; i < 20; i++)
        ck_assert_uint_eq(kvd_pool_refcount(pool, all[i]), 1);
    kvd_pool_release(pool, all, 20);
    kvd_pool_destroy(pool);
}
END_TEST

static Suite *pool_suite(void)
{
    Suite *s = suite_create("cache/pool");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_create_sizes);
    tcase_add_test(tc, test_create_einval);
    tcase_add_test(tc, test_alloc_release_alignment);
    tcase_add_test(tc, test_exhaustion_all_or_nothing);
    tcase_add_test(tc, test_refcounts);
#ifndef NDEBUG
    tcase_add_test_raise_signal(tc, test_double_release_asserts, SIGABRT);
    tcase_add_test_raise_signal(tc, test_foreign_release_asserts, SIGABRT);
#endif
#if defined(__linux__)
    tcase_add_test(tc, test_untouched_pages_not_resident);
#endif
    tcase_add_test(tc, test_concurrent_alloc_release);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(pool_suite)
