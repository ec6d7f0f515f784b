/* tests/support/failing_alloc.c — the failing cJSON allocator of
 * failing_alloc.h. */
#include "tests/support/failing_alloc.h"

#include <stdlib.h>

#include <cJSON.h>

static int alloc_budget;

static void *failing_malloc(size_t n)
{
    if (alloc_budget <= 0)
        return NULL;
    alloc_budget--;
    return malloc(n);
}

void failing_alloc_install(void)
{
    cJSON_Hooks hooks = {.malloc_fn = failing_malloc, .free_fn = free};
    cJSON_InitHooks(&hooks);
}

void failing_alloc_budget(int budget)
{
    alloc_budget = budget;
}

void failing_alloc_uninstall(void)
{
    cJSON_InitHooks(NULL);
}
