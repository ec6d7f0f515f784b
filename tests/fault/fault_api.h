/* tests/fault/fault_api.h — the harness of the allocation-fault sweeps
 * (tests/fault/alloc_faults.c, batch_faults.c): kvd's API without HTTP on a
 * synchronous fake executor, request bodies of exact binary fractions, JSON
 * normalized for comparing two runs, and checks made with no fault armed.
 * Single-threaded, process-global (as failmalloc.h). */
#ifndef KVD_TEST_FAULT_API_H
#define KVD_TEST_FAULT_API_H

#include <stdbool.h>
#include <stddef.h>

#include "api/api.h"

#define PAGE_BYTES 1024
#define POOL_BYTES ((size_t)4 << 20)

/* Shapes every session here uses: kv rows of 1 x 8, query rows of 2 x 8. */
#define KV_ROW 8
#define Q_ROW 16
#define STD "\"heads\":2,\"kv_heads\":1,\"head_dim\":8"

/* Set instead of asserting while faults are armed: Check's assertions
 * allocate (they record their location), so none may run in there. */
extern const char *harness_error;

/* An API on the fake executor and a fixed clock (asserts it was created). */
kvd_api *fault_api_create(void);
/* The same without the clock, returning kvd_api_create's code (for sweeping
 * kvd_api_create itself). */
int fault_api_create_bare(kvd_api **api);

/* One request, run to its answer (every job it queued run in order). Takes
 * ownership of body (malloc'd, NUL-terminated at len). No assertion inside:
 * safe while armed. */
kvd_response call_bytes(kvd_api *api, kvd_route route, const char *id, char *body, size_t len,
                        const char *content_type);
kvd_response call(kvd_api *api, kvd_route route, const char *id, char *body);
char *xstrdup(const char *s);

/* A growing string (malloc'd s, NUL-terminated). */
typedef struct sbuf {
    char *s;
    size_t len, cap;
} sbuf;
void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "name":[n numbers from seed] */
void sb_array(sbuf *b, const char *name, size_t n, unsigned seed);
/* {"layer":L,"k":..,"v":..,"q":..} (tensor: k1, k2, v1, v2), m tokens, m_q queries */
void sb_entry(sbuf *b, int layer, size_t m, size_t m_q, bool tensor, unsigned seed);
char *step_body(int layer, size_t m, size_t m_q, bool tensor, unsigned seed);

/* JSON without what differs between runs by design (ids, measured time),
 * listings sorted. malloc'd. */
char *normalize(const char *body);

/* Fault-free requests that must succeed (Check asserts). */
char *create(kvd_api *api, const char *body);                  /* the new id */
void step_ok(kvd_api *api, const char *id, char *body);         /* takes body */
char *fork_ok(kvd_api *api, const char *id);                    /* the child's id */
char *snapshot_ok(kvd_api *api, const char *id, size_t *len);   /* the bytes */
char *stats(kvd_api *api, const char *id);  /* normalized; NULL if no such session */
double num_field(const char *json, const char *key);
size_t list_ids(kvd_api *api, char ***ids); /* caller frees each and *ids */
/* Pool pages in use == the pages the live sessions report (exact only while
 * no pages are shared by a fork). */
void check_accounting(kvd_api *api);
/* Deletes every session; the pool must then be empty. */
void delete_all(kvd_api *api);

bool str_eq(const char *a, const char *b); /* both NULL or equal */
/* Equal but for heap_bytes (a refused step may keep tables it grew). */
bool same_but_heap(const char *a, const char *b);
/* r is a 500 or 503 with {"error":{"code","message"}} (sticky: a bare 500
 * too, when even the fallback body could not be allocated). */
void check_error(const kvd_response *r, bool sticky, const char *what);

#endif
