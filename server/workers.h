/* server/workers.h — the worker pool that runs attention off the loop thread.
 * N threads take jobs from one FIFO; a finished job goes on a done-list and
 * the loop is woken with uv_async_send, where the job's completion runs.
 * Ordering between jobs of one session is the API's business, not ours.
 * A running job may borrow idle workers for pieces of its own work
 * (kvd_workers_parallel): it runs pieces too, and alone when none is idle. */
#ifndef KVD_SERVER_WORKERS_H
#define KVD_SERVER_WORKERS_H

#include <uv.h>

#include "api/api.h"
#include "cache/step.h"

typedef struct kvd_workers kvd_workers;

/* Starts `threads` workers whose completions run on `loop`. Returns 0 or a
 * negative errno. */
int kvd_workers_start(uv_loop_t *loop, unsigned threads, kvd_workers **out);

/* kvd_api_submit_fn: queue a job (loop thread). Never fails: the job node is
 * the job itself (intrusive), so queueing allocates nothing. */
void kvd_workers_submit(void *workers, kvd_api_job *job);

/* A kvd_parallel over w's idle workers, valid until kvd_workers_stop. Its
 * run may be called from a worker (a job's step) or any other thread: the
 * caller runs pieces itself and takes at most as many helpers as there are
 * idle workers not owed to queued jobs (so with N threads a job gets at most
 * N - 1), never waits for a worker to become free, and returns when every
 * piece has finished. */
kvd_parallel kvd_workers_parallel(kvd_workers *w);

/* Finishes queued jobs, joins the threads, closes the async handle (the
 * structure is freed in its close callback). Call on the loop thread when no
 * more jobs will be submitted. */
void kvd_workers_stop(kvd_workers *w);

#endif
