/* tests/support/check_main.c — runs a Check suite for KVD_TEST_MAIN. */
#include "tests/support/check_main.h"

#include <stdlib.h>

int kvd_test_run(Suite *s, bool fork_each_test)
{
    SRunner *sr = srunner_create(s);
    if (!fork_each_test)
        srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
