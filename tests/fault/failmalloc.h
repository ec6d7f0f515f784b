/* tests/fault/failmalloc.h — a fault-injecting allocator for a test program
 * linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup
 * (as sqlite's test_malloc.c): while armed it counts every allocation made
 * by the program's own objects (kvd's static libraries included) and by
 * cJSON (through cJSON_InitHooks), and fails the Nth — once, or from then on.
 * Process-global and single-threaded. */
#ifndef KVD_TEST_FAILMALLOC_H
#define KVD_TEST_FAILMALLOC_H

#include <stdbool.h>

/* Routes cJSON's allocations through the counting malloc (call once, first). */
void failmalloc_install_cjson(void);
/* Starts counting from 0; allocation number fail_at (1-based; 0 = none)
 * returns NULL, and with sticky every later one too. */
void failmalloc_arm(long fail_at, bool sticky);
/* Stops counting and failing; returns the allocations counted while armed. */
long failmalloc_disarm(void);
/* How many allocations were made to fail since the last arm. */
long failmalloc_failed(void);

#endif
