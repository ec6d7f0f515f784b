/* tests/support/failing_alloc.h — fault injection for cJSON (as sqlite's
 * test_malloc.c): once installed, the next `budget` cJSON allocations
 * succeed and every later one fails, so a test can sweep the budget over an
 * allocation-failure path. Process-global: single-threaded tests only. */
#ifndef KVD_TEST_FAILING_ALLOC_H
#define KVD_TEST_FAILING_ALLOC_H

/* Routes cJSON's allocations through the failing allocator. */
void failing_alloc_install(void);
/* The next `budget` allocations succeed, then each one fails. */
void failing_alloc_budget(int budget);
/* cJSON back on malloc/free. */
void failing_alloc_uninstall(void);

#endif
