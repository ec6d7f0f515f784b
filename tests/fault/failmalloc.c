/* tests/fault/failmalloc.c — the --wrap'd allocator of failmalloc.h. Only
 * references from the objects being linked are redirected: libc's and
 * shared libraries' own calls keep the real malloc, so cJSON (a shared
 * library) is hooked separately with the same counter. free is not wrapped:
 * every pointer handed out comes from the real allocator. */
#include "tests/fault/failmalloc.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);

static bool armed, sticky_mode;
static long counted, fail_at_n, failed;

/* Counts one allocation; true if it is to fail. */
static bool should_fail(void)
{
    if (!armed)
        return false;
    counted++;
    if (fail_at_n > 0 && (counted == fail_at_n || (sticky_mode && counted > fail_at_n))) {
        failed++;
        return true;
    }
    return false;
}

void *__wrap_malloc(size_t n)
{
    return should_fail() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    /* A failed realloc leaves p allocated, as the real one does. */
    return should_fail() ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
    return should_fail() ? NULL : __real_strdup(s);
}

static void *cjson_malloc(size_t n)
{
    return __wrap_malloc(n);
}

void failmalloc_install_cjson(void)
{
    cJSON_Hooks hooks = {.malloc_fn = cjson_malloc, .free_fn = free};
    cJSON_InitHooks(&hooks);
}

void failmalloc_arm(long fail_at, bool sticky)
{
    counted = 0;
    failed = 0;
    fail_at_n = fail_at;
    sticky_mode = sticky;
    armed = true;
}

long failmalloc_disarm(void)
{
    armed = false;
    return counted;
}

long failmalloc_failed(void)
{
    return failed;
}
