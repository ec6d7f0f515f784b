/* cache/stream_fork.c — copy-on-write forks of one stream (cache/stream.h):
 * a fork in phases (prepare allocates, commit takes the page references and
 * flags every page shared on both sides, abort undoes prepare), KIVI's
 * residual forked with its stream, and making a shared page private before
 * it is written (one page, or all of a stream's). */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"
#include "cache/stream.h"

int kvd__stream_unshare(kvd_stream *s, kvd_pool *pool, size_t i, void *spare)
{
    assert(i < s->n_pages && s->shared != NULL && s->shared[i]);
    int used = 0;
    /* A count of 1 means every other holder has let go, and none can come
     * back (only a holder can fork), so writing in place is safe. A count
     * read as > 1 may drop to 1 before we release: then the copy was merely
     * unneeded, never wrong. */
    if (kvd_pool_refcount(pool, s->pages[i]) > 1) {
        if (spare == NULL)
            return -1;
        void *old = s->pages[i];
        memcpy(spare, old, kvd_pool_page_bytes(pool));
        s->pages[i] = spare;
        kvd_pool_release(pool, &old, 1);
        kvd__pool_count_copy(pool);
        used = 1;
    }
    s->shared[i] = 0;
    s->n_shared--;
    return used;
}

size_t kvd__stream_unshare_all(kvd_stream *s, kvd_pool *pool, void *const *spare, size_t n_spare)
{
    size_t used = 0;
    for (size_t i = 0; s->n_shared > 0 && i < s->n_pages; i++) {
        if (!s->shared[i])
            continue;
        const int r = kvd__stream_unshare(s, pool, i, used < n_spare ? spare[used] : NULL);
        assert(r >= 0 && "the caller planned a page for every shared one");
        used += r > 0;
    }
    return used;
}

int kvd__stream_fork_prepare(const kvd_stream *src, kvd_stream *dst)
{
    /* KIVI forks share the quantized pages and the residual's alike; the
     * step engine makes the pages a settle or an eviction rewrites private
     * first (kvd__stream_kivi_unshare, cache/session.h). */
    *dst = *src; /* shape, counters; every owned pointer is replaced below */
    dst->pages = NULL;
    dst->shared = NULL;
    dst->evict = NULL;
    dst->residual = NULL;
    dst->cap_pages = 0;
    dst->n_shared = 0;
    if (src->n_pages > 0) {
        dst->pages = malloc(src->n_pages * sizeof *dst->pages); /* <= src's table: no overflow */
        dst->shared = calloc(src->n_pages, 1);
        if (dst->pages == NULL || dst->shared == NULL)
            goto fail;
        memcpy(dst->pages, src->pages, src->n_pages * sizeof *dst->pages);
        dst->cap_pages = src->n_pages;
    }
    if (src->evict != NULL && kvd__evict_clone(src->evict, src->n_tokens, &dst->evict) != 0)
        goto fail;
    if (src->residual != NULL) {
        /* its own residual and gather buffer, one allocation as init_format makes */
        kvd__kivi_residual *r = malloc(kvd__stream_heap_bytes_init(src->head_dim, &src->fmt));
        if (r == NULL)
            goto fail;
        dst->residual = &r->s;
        if (kvd__stream_fork_prepare(src->residual, &r->s) != 0)
            goto fail;
    }
    return 0;

fail:
    kvd__stream_fork_abort(dst);
    return -ENOMEM;
}

void kvd__stream_fork_commit(kvd_stream *src, kvd_stream *dst, kvd_pool *pool)
{
    if (src->residual != NULL)
        kvd__stream_fork_commit(src->residual, dst->residual, pool);
    if (src->n_pages == 0)
        return;
    assert(src->shared != NULL && src->cap_pages >= src->n_pages);
    kvd_pool_retain(pool, src->pages, src->n_pages);
    memset(src->shared, 1, src->n_pages);
    memset(dst->shared, 1, src->n_pages);
    src->n_shared = dst->n_shared = src->n_pages;
}

void kvd__stream_fork_abort(kvd_stream *dst)
{
    free(dst->pages);
    free(dst->shared);
    kvd__evict_free(dst->evict);
    if (dst->residual != NULL) {
        kvd__stream_fork_abort(dst->residual);
        free(dst->residual); /* the kvd__kivi_residual, its first member */
    }
    /* an empty stream of the same shape, as kvd_stream_init leaves it (a
     * KIVI one without its residual, as kvd_stream_release leaves it) */
    dst->pages = NULL;
    dst->shared = NULL;
    dst->evict = NULL;
    dst->residual = NULL;
    dst->n_pages = dst->cap_pages = dst->n_shared = dst->n_tokens = 0;
    dst->appended = dst->evicted = 0;
}

int kvd_stream_fork(kvd_stream *src, kvd_stream *dst, kvd_pool *pool)
{
    const int rc = kvd__stream_fork_prepare(src, dst);
    if (rc != 0)
        return rc;
    kvd__stream_fork_commit(src, dst, pool);
    return 0;
}

