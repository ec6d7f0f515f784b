/* tests/server/test_workers.c — the worker pool lent to a split step
 * (kvd_workers_parallel): every piece runs exactly once, on the caller and
 * at most `threads` helpers; a piece that itself splits (every worker busy
 * helping) runs its pieces on its own thread instead of waiting; zero and
 * one piece run inline. No timing: only what ran, and where. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <uv.h>

#include "server/workers.h"
#include "tests/support/check_main.h"

#define PIECES 257
#define MAX_THREADS 16

typedef struct counts {
    atomic_int ran[PIECES];
    pthread_mutex_t lock;
    pthread_t seen[MAX_THREADS];
    int n_seen;
    const kvd_parallel *par; /* nested: each piece splits again */
    atomic_int inner;
} counts;

static void note_thread(counts *c)
{
    pthread_mutex_lock(&c->lock);
    int found = 0;
    for (int i = 0; i < c->n_seen; i++)
        found |= pthread_equal(c->seen[i], pthread_self());
    if (!found && c->n_seen < MAX_THREADS)
        c->seen[c->n_seen++] = pthread_self();
    pthread_mutex_unlock(&c->lock);
}

static void inner_piece(void *ctx, size_t i)
{
    (void)i;
    atomic_fetch_add(&((counts *)ctx)->inner, 1);
}

static void piece(void *ctx, size_t i)
{
    counts *c = ctx;
    atomic_fetch_add(&c->ran[i], 1);
    note_thread(c);
    volatile double x = 0; /* a little work so helpers get to join */
    for (int k = 0; k < 20000; k++)
        x += k * 0.5;
    if (c->par)
        c->par->run(c->par->self, c, inner_piece, 8);
}

static void with_workers(unsigned threads, bool nested, size_t n, int rounds)
{
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    kvd_workers *w;
    ck_assert_int_eq(kvd_workers_start(&loop, threads, &w), 0);
    const kvd_parallel par = kvd_workers_parallel(w);
    for (int r = 0; r < rounds; r++) {
        counts *c = calloc(1, sizeof *c);
        pthread_mutex_init(&c->lock, NULL);
        c->par = nested ? &par : NULL;
        par.run(par.self, c, piece, n);
        for (size_t i = 0; i < PIECES; i++)
            ck_assert_msg(atomic_load(&c->ran[i]) == (i < n ? 1 : 0), "round %d piece %zu ran %d times", r, i,
                          atomic_load(&c->ran[i]));
        ck_assert_int_le(c->n_seen, (int)threads + 1); /* the caller and at most every worker */
        if (nested)
            ck_assert_int_eq(atomic_load(&c->inner), (int)(8 * n));
        pthread_mutex_destroy(&c->lock);
        free(c);
    }
    kvd_workers_stop(w);
    ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}

START_TEST(every_piece_runs_once)
{
    with_workers(3, false, PIECES, 20);
    with_workers(1, false, PIECES, 5);
}
END_TEST

START_TEST(nested_split_never_waits_for_a_worker)
{
    with_workers(2, true, 64, 10);
    with_workers(4, true, 64, 10);
}
END_TEST

START_TEST(zero_and_one_piece)
{
    with_workers(2, false, 0, 1);
    with_workers(2, false, 1, 3);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("workers");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, every_piece_runs_once);
    tcase_add_test(tc, nested_split_never_waits_for_a_worker);
    tcase_add_test(tc, zero_and_one_piece);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
