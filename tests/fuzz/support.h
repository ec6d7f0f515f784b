/* tests/fuzz/support.h — what every libFuzzer target of tests/fuzz shares:
 * deterministic "randomness" (session ids and seeds are the same on every
 * run of an input, so a crash reproduces and an input can name a session it
 * created) and a quiet stderr (the access log) that still lets a target say
 * why it aborted. Fuzz builds only (CMake -DKVD_FUZZ=ON). */
#ifndef KVD_TESTS_FUZZ_SUPPORT_H
#define KVD_TESTS_FUZZ_SUPPORT_H

#include <stddef.h>

/* Starts an input: the next session id is "0101...01" (32 hex digits; the
 * Nth id of an input repeats the byte N), every other random draw (seeds)
 * is zeros. kvd__api_random_bytes is defined by support.c, which replaces
 * api/random.c's at link time. */
void kvd_fuzz_reset(void);

/* Sends stderr (the access log's writes) to /dev/null unless KVD_FUZZ_LOG
 * is set; sanitizer and libFuzzer reports still reach file descriptor 2. */
void kvd_fuzz_quiet(void);

/* An invariant broke: prints "fuzz invariant: <msg>" on the real stderr
 * and aborts (libFuzzer saves the input as a crash). */
#define KVD_FUZZ_CHECK(cond, ...)                                                \
    do {                                                                         \
        if (!(cond))                                                             \
            kvd_fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);               \
    } while (0)

typedef struct kvd_pool kvd_pool;
typedef struct kvd_session kvd_session;

/* The pool's accounting against what the sessions hold: every page of every
 * stream (k/v, tensor k2/v2 and pair rows, KIVI residuals) is counted, each
 * distinct page's count must equal its pool reference count (forks share
 * pages) and the distinct pages must be exactly the pool's used pages.
 * Aborts through KVD_FUZZ_CHECK otherwise. NULL entries are skipped. */
void kvd_fuzz_check_pages(const kvd_pool *pool, kvd_session *const *sessions, size_t n);

_Noreturn void kvd_fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
