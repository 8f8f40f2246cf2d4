/* Linked only into the test binary of `make valgrind`: memcheck runs code
 * 20-50 times slower, so each test's Criterion timeout (a hang guard sized
 * for a native run) is multiplied by $CMP_TEST_TIMEOUT_SCALE. Criterion's
 * own --timeout cannot do it: it never lengthens a test's timeout. This
 * runs in the runner, before it starts any test process, which is where
 * the timeouts are enforced. */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <stdlib.h>

ReportHook(PRE_ALL)(struct criterion_test_set *set)
{
    const char *s = getenv("CMP_TEST_TIMEOUT_SCALE");
    double scale = s ? atof(s) : 0;
    if (scale <= 1)
        return;
    FOREACH_SET(struct criterion_suite_set * suite, set->suites)
    {
        FOREACH_SET(struct criterion_test * test, suite->tests)
        {
            if (test->data->timeout > 0)
                test->data->timeout *= scale;
        }
    }
}
