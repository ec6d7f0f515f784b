/* server/workers.c — fixed pool of worker threads running API jobs.
 * Jobs move loop -> `todo` (mutex + condvar) -> a worker -> `done` -> loop
 * (uv_async_send coalesces wake-ups, so the loop drains the whole done-list
 * each time). Both lists are intrusive FIFOs through kvd_api_job.link (common/fifo.h). */
#include "server/workers.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "common/fifo.h"

struct kvd_workers {
    uv_async_t wake;          /* loop side: done jobs are waiting */
    pthread_mutex_t lock;
    pthread_cond_t has_work;
    kvd_fifo todo;            /* guarded by lock */
    kvd_fifo done;            /* guarded by lock */
    bool stopping;            /* guarded by lock */
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

static void *worker_main(void *arg)
{
    kvd_workers *w = arg;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        kvd_api_job *job;
        while (!(job = fifo_pop(&w->todo)) && !w->stopping)
            pthread_cond_wait(&w->has_work, &w->lock);
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
