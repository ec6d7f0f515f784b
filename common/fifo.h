/* common/fifo.h — an intrusive singly linked FIFO: the element embeds a
 * kvd_fifo_link and the queue never allocates, so pushing cannot fail. Used
 * for a session's request queue, the worker pool's queues and a connection's
 * pipelined requests. Not thread-safe: the owner locks (or owns the thread). */
#ifndef KVD_COMMON_FIFO_H
#define KVD_COMMON_FIFO_H

#include <stddef.h>

typedef struct kvd_fifo_link {
    struct kvd_fifo_link *next;
} kvd_fifo_link;

typedef struct kvd_fifo {
    kvd_fifo_link *head, *tail;
    size_t len;
} kvd_fifo;

/* The struct of type `type` whose member `member` is at `ptr`. */
#define kvd_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

static inline void kvd_fifo_push(kvd_fifo *f, kvd_fifo_link *l)
{
    l->next = NULL;
    if (f->tail)
        f->tail->next = l;
    else
        f->head = l;
    f->tail = l;
    f->len++;
}

/* The oldest element, removed; NULL when empty. */
static inline kvd_fifo_link *kvd_fifo_pop(kvd_fifo *f)
{
    kvd_fifo_link *l = f->head;
    if (l) {
        f->head = l->next;
        if (!f->head)
            f->tail = NULL;
        l->next = NULL;
        f->len--;
    }
    return l;
}

/* Removes l wherever it is (O(len): callers keep their queues short, e.g. a
 * connection's pipelined requests). No-op if l is not queued in f. */
static inline void kvd_fifo_remove(kvd_fifo *f, kvd_fifo_link *l)
{
    kvd_fifo_link *prev = NULL;
    for (kvd_fifo_link *it = f->head; it; prev = it, it = it->next) {
        if (it != l)
            continue;
        if (prev)
            prev->next = it->next;
        else
            f->head = it->next;
        if (f->tail == it)
            f->tail = prev;
        it->next = NULL;
        f->len--;
        return;
    }
}

#endif
