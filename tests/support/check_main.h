/* tests/support/check_main.h — the one `main` every Check test program uses:
 * KVD_TEST_MAIN(make_suite) runs the suite make_suite() returns and exits
 * non-zero when any test failed. The _NOFORK form runs the tests in the
 * program's own process (for tests whose fakes keep process-global state). */
#ifndef KVD_TESTS_CHECK_MAIN_H
#define KVD_TESTS_CHECK_MAIN_H

#include <stdbool.h>

#include <check.h>

/* Runs s (and frees it with its runner); returns the process exit status. */
int kvd_test_run(Suite *s, bool fork_each_test);

#define KVD_TEST_MAIN(make_suite)                                                                  \
    int main(void)                                                                                 \
    {                                                                                              \
        return kvd_test_run(make_suite(), true);                                                   \
    }

#define KVD_TEST_MAIN_NOFORK(make_suite)                                                           \
    int main(void)                                                                                 \
    {                                                                                              \
        return kvd_test_run(make_suite(), false);                                                  \
    }

#endif
