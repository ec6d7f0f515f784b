/* tests/fuzz/support.c — deterministic randomness and a quiet stderr for the
 * fuzz targets (see support.h). Defining kvd__api_random_bytes here keeps the
 * linker from taking api/random.c's object out of libkvd_api.a. */
#include "tests/fuzz/support.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/random.h"
#include "cache/pool.h"
#include "cache/session.h"

static unsigned char next_id = 1;
static FILE *real_stderr;

void kvd_fuzz_reset(void)
{
    next_id = 1;
}

int kvd__api_random_bytes(void *buf, size_t n)
{
    /* 16 bytes are a session id (api/registry.c), anything else a seed. */
    if (n == 16) {
        memset(buf, next_id, n);
        next_id = (unsigned char)(next_id + 1);
    } else {
        memset(buf, 0, n);
    }
    return 0;
}

void kvd_fuzz_quiet(void)
{
    if (real_stderr || getenv("KVD_FUZZ_LOG"))
        return;
    int fd = dup(STDERR_FILENO);
    real_stderr = fd >= 0 ? fdopen(fd, "w") : NULL;
    FILE *null = fopen("/dev/null", "w");
    if (real_stderr && null)
        stderr = null; /* glibc: stderr is an assignable FILE * */
}

void kvd_fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    FILE *out = real_stderr ? real_stderr : stderr;
    fprintf(out, "fuzz invariant (%s:%d): %s: ", file, line, cond);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(out, fmt, ap);
    va_end(ap);
    fputc('\n', out);
    fflush(out);
    abort();
}

/* Distinct pages seen and how many block tables hold each. */
typedef struct page_count {
    const void *page;
    size_t refs;
} page_count;

typedef struct page_set {
    page_count *p;
    size_t n, cap;
} page_set;

static void count_page(page_set *set, const void *page)
{
    for (size_t i = 0; i < set->n; i++)
        if (set->p[i].page == page) {
            set->p[i].refs++;
            return;
        }
    if (set->n == set->cap) {
        set->cap = set->cap ? 2 * set->cap : 64;
        set->p = realloc(set->p, set->cap * sizeof *set->p);
        KVD_FUZZ_CHECK(set->p != NULL, "out of memory counting pages");
    }
    set->p[set->n++] = (page_count){page, 1};
}

static void count_stream(page_set *set, const kvd_stream *s)
{
    for (size_t i = 0; i < s->n_pages; i++)
        count_page(set, s->pages[i]);
    if (s->residual)
        count_stream(set, s->residual);
}

static void count_rows(page_set *set, const kvd__subgen_rows *r)
{
    for (size_t i = 0; i < r->n_pages; i++)
        count_page(set, r->pages[i]);
}

/* A SubGen sketch's four row arrays (cache/subgen.h). */
static void count_sketch(page_set *set, const kvd_subgen *g)
{
    count_rows(set, &g->centres);
    count_rows(set, &g->counts);
    count_rows(set, &g->reservoir);
    count_rows(set, &g->samples);
}

static void count_session(page_set *set, const kvd_session *s)
{
    for (size_t i = 0; i < s->n_streams; i++) {
        count_stream(set, &s->streams[i]);
        if (s->tensor_b)
            count_stream(set, &s->tensor_b[i]);
        if (s->pairs)
            count_stream(set, &s->pairs[i]);
        if (s->subgen)
            count_sketch(set, &s->subgen[i]);
        if (s->subgen_b)
            count_sketch(set, &s->subgen_b[i]);
    }
}

void kvd_fuzz_check_pages(const kvd_pool *pool, kvd_session *const *sessions, size_t n)
{
    page_set set = {0};
    size_t held = 0;
    for (size_t i = 0; i < n; i++)
        if (sessions[i]) {
            count_session(&set, sessions[i]);
            held += kvd_session_pages(sessions[i]);
        }
    size_t refs = 0;
    for (size_t i = 0; i < set.n; i++) {
        const unsigned rc = kvd_pool_refcount(pool, set.p[i].page);
        KVD_FUZZ_CHECK(rc == set.p[i].refs, "page %p: pool refcount %u, held %zu times",
                       set.p[i].page, rc, set.p[i].refs);
        refs += set.p[i].refs;
    }
    KVD_FUZZ_CHECK(refs == held, "block tables hold %zu pages, kvd_session_pages says %zu", refs,
                   held);
    KVD_FUZZ_CHECK(set.n == kvd_pool_pages_used(pool), "sessions hold %zu distinct pages, pool uses %zu",
                   set.n, kvd_pool_pages_used(pool));
    free(set.p);
}
