/* server/workers.c — fixed pool of worker threads running API jobs.
 * Jobs move loop -> `todo` (mutex + condvar) -> a worker -> `done` -> loop
 * (uv_async_send coalesces wake-ups, so the loop drains the whole done-list
 * each time). Both lists are intrusive FIFOs through kvd_api_job.link (common/fifo.h).
 * A job that splits its work posts a help task; idle workers (queued jobs
 * first) join it and take pieces by an atomic counter until none is left. */
#include "server/workers.h"

#include <errno.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "common/fifo.h"

/* One kvd_parallel run: lives on its caller's stack until every helper
 * that joined it has left. */
typedef struct help_task {
    kvd_parallel_fn fn;
    void *ctx;
    size_t n;
    atomic_size_t next;      /* next piece to take */
    unsigned wanted;         /* helpers still welcome (guarded by lock) */
    unsigned active;         /* helpers inside (guarded by lock) */
    struct help_task *link;  /* in kvd_workers.help while wanted > 0 */
} help_task;

struct kvd_workers {
    uv_async_t wake;          /* loop side: done jobs are waiting */
    pthread_mutex_t lock;
    pthread_cond_t has_work;
    kvd_fifo todo;            /* guarded by lock */
    kvd_fifo done;            /* guarded by lock */
    bool stopping;            /* guarded by lock */
    help_task *help;          /* guarded by lock: tasks that want helpers */
    unsigned idle;            /* guarded by lock: workers waiting for work */
    pthread_cond_t helpers_left; /* a task's last helper left it */
    unsigned n_threads;
    pthread_t *threads;
};

static void fifo_push(kvd_fifo *f, kvd_api_job *job)
{
    kvd_fifo_push(f, &job->link);
}

static kvd_api_job *fifo_pop(kvd_fifo *f)
{
    kvd_fifo_link *l = kvd_fifo_pop(f);
    return l ? kvd_container_of(l, kvd_api_job, link) : NULL;
}

static void run_pieces(help_task *t)
{
    size_t i;
    while ((i = atomic_fetch_add_explicit(&t->next, 1, memory_order_relaxed)) < t->n)
        t->fn(t->ctx, i);
}

static void unlink_task(kvd_workers *w, help_task *t)
{
    for (help_task **p = &w->help; *p; p = &(*p)->link)
        if (*p == t) {
            *p = t->link;
            return;
        }
}

static void *worker_main(void *arg)
{
    kvd_workers *w = arg;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        kvd_api_job *job;
        help_task *task = NULL;
        /* Queued jobs first: a split never delays another session's job. */
        while (!(job = fifo_pop(&w->todo)) && !(task = w->help) && !w->stopping) {
            w->idle++;
            pthread_cond_wait(&w->has_work, &w->lock);
            w->idle--;
        }
        if (task) {
            task->active++;
            if (--task->wanted == 0)
                unlink_task(w, task);
            pthread_mutex_unlock(&w->lock);
            run_pieces(task);
            pthread_mutex_lock(&w->lock);
            if (--task->active == 0)
                pthread_cond_broadcast(&w->helpers_left);
            continue;
        }
        if (!job)
            break; /* stopping and nothing left to do */
        pthread_mutex_unlock(&w->lock);
        kvd_api_job_run(job);
        pthread_mutex_lock(&w->lock);
        fifo_push(&w->done, job);
        uv_async_send(&w->wake);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* kvd_parallel.run: see workers.h. */
static void parallel_run(void *self, void *ctx, kvd_parallel_fn fn, size_t n)
{
    kvd_workers *w = self;
    help_task t = {.fn = fn, .ctx = ctx, .n = n};
    atomic_init(&t.next, 0);
    if (n == 0)
        return;
    unsigned helpers = 0;
    if (n > 1) {
        pthread_mutex_lock(&w->lock);
        const size_t owed = w->todo.len; /* idle workers about to take queued jobs */
        if (w->idle > owed && !w->stopping)
            helpers = (unsigned)(w->idle - owed < n - 1 ? w->idle - owed : n - 1);
        if (helpers) {
            t.wanted = helpers;
            t.link = w->help;
            w->help = &t;
            for (unsigned i = 0; i < helpers; i++)
                pthread_cond_signal(&w->has_work);
        }
        pthread_mutex_unlock(&w->lock);
    }
    run_pieces(&t);
    if (!helpers)
        return;
    /* Every piece is taken; whoever has not joined yet never will. */
    pthread_mutex_lock(&w->lock);
    if (t.wanted)
        unlink_task(w, &t);
    while (t.active)
        pthread_cond_wait(&w->helpers_left, &w->lock);
    pthread_mutex_unlock(&w->lock);
}

kvd_parallel kvd_workers_parallel(kvd_workers *w)
{
    return (kvd_parallel){.run = parallel_run, .self = w, .width = w->n_threads};
}

/* Loop thread: complete every finished job. */
static void on_wake(uv_async_t *handle)
{
    kvd_workers *w = handle->data;
    pthread_mutex_lock(&w->lock);
    kvd_fifo done = w->done;
    w->done.head = w->done.tail = NULL;
    pthread_mutex_unlock(&w->lock);
    kvd_api_job *job;
    while ((job = fifo_pop(&done))) {
        kvd_api_job_done(job->api, job); /* may submit the session's next job */
    }
}

int kvd_workers_start(uv_loop_t *loop, unsigned threads, kvd_workers **out)
{
    if (threads == 0)
        return -EINVAL;
    kvd_workers *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->threads = calloc(threads, sizeof *w->threads);
    if (!w->threads) {
        free(w);
        return -ENOMEM;
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->has_work, NULL);
    pthread_cond_init(&w->helpers_left, NULL);
    int rc = uv_async_init(loop, &w->wake, on_wake);
    if (rc != 0) {
        free(w->threads);
        free(w);
        return rc;
    }
    w->wake.data = w;
    for (unsigned i = 0; i < threads; i++) {
        rc = pthread_create(&w->threads[i], NULL, worker_main, w);
        if (rc != 0) {
            w->n_threads = i;
            kvd_workers_stop(w);
            return -rc;
        }
        w->n_threads = i + 1;
    }
    *out = w;
    return 0;
}

void kvd_workers_submit(void *workers, kvd_api_job *job)
{
    kvd_workers *w = workers;
    pthread_mutex_lock(&w->lock);
    fifo_push(&w->todo, job);
    pthread_cond_signal(&w->has_work);
    pthread_mutex_unlock(&w->lock);
}

static void on_async_closed(uv_handle_t *handle)
{
    kvd_workers *w = handle->data;
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->has_work);
    pthread_cond_destroy(&w->helpers_left);
    free(w->threads);
    free(w);
}

void kvd_workers_stop(kvd_workers *w)
{
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    pthread_cond_broadcast(&w->has_work);
    pthread_mutex_unlock(&w->lock);
    for (unsigned i = 0; i < w->n_threads; i++)
        pthread_join(w->threads[i], NULL);
    on_wake(&w->wake); /* complete what finished while we joined */
    uv_close((uv_handle_t *)&w->wake, on_async_closed);
}
