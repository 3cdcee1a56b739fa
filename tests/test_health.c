/* Unit tests for health: verdicts on one endpoint from the reports call.c
 * would give, with the pools (balance) it needs for its peers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/balance.h"
#include "../src/endpoint.h"
#include "../src/health.h"

#define NOW 1000000000ull

static const mu_eject_rules rules = {1000, 30000, 5, 50};

typedef struct fixture {
    mu_endpoint ep[3];
    mu_pool *pool;
    mu_health *h;
} fixture;

static void fixture_init(fixture *f)
{
    memset(f, 0, sizeof *f);
    mu_endpoint *v[3];
    for (int i = 0; i < 3; i++) {
        snprintf(f->ep[i].key, sizeof f->ep[i].key, "10.0.0.%d:8000", i + 1);
        v[i] = &f->ep[i];
    }
    assert_non_null(f->pool = mu_pool_new());
    assert_int_equal(mu_pool_set(f->pool, v, 3), 0);
    mu_health_opts o = {10, 1};
    assert_non_null(f->h = mu_health_new(&o, NULL));
}

static void fixture_done(fixture *f)
{
    mu_health_free(f->h);
    mu_pool_free(f->pool);
}

static mu_attempt_report timed_out(uint64_t launch, uint64_t now)
{
    mu_attempt_report r = {.signal = MU_SIG_TIMEOUT, .status = MU_ETIMEDOUT, .rules = &rules,
                           .failed = 1, .now_us = now, .latency_us = now - launch};
    return r;
}

/* An attempt counted by in-flight age and then timing out is one failure,
 * not two: three such attempts are three of eject_after_failures (5). */
static void test_silent_then_timeout_counts_once(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    mu_endpoint *e = &f.ep[0];
    for (int i = 0; i < 3; i++) {
        uint64_t launch = NOW + (uint64_t)i * 10000000u;
        mu_health_silent(f.h, e, &rules, launch, launch + 500000);
        mu_attempt_report r = timed_out(launch, launch + 2000000);
        mu_health_ended(f.h, e, &r);
    }
    assert_int_equal(e->health.fail_streak, 3);
    assert_int_equal(e->health.ejections, 0);
    /* two more, not counted while in flight: five in a row eject it */
    for (int i = 3; i < 5; i++) {
        uint64_t launch = NOW + (uint64_t)i * 10000000u;
        mu_attempt_report r = timed_out(launch, launch + 2000000);
        mu_health_ended(f.h, e, &r);
    }
    assert_int_equal(e->health.ejections, 1);
    fixture_done(&f);
}

/* A 4xx without a microutil body is the caller's (a wrong path), a 5xx is
 * the provider's. */
static void test_http_4xx_is_no_strike(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f);
    mu_endpoint *e = &f.ep[1];
    mu_attempt_report r = {.signal = MU_SIG_ANSWERED, .status = MU_EHTTP, .rules = &rules,
                           .failed = 1, .now_us = NOW, .latency_us = 1000, .answered = 1,
                           .http_status = 404};
    mu_health_ended(f.h, e, &r);
    assert_int_equal(e->health.fail_streak, 0);
    r.http_status = 503;
    mu_health_ended(f.h, e, &r);
    assert_int_equal(e->health.fail_streak, 1);
    fixture_done(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_silent_then_timeout_counts_once),
        cmocka_unit_test(test_http_4xx_is_no_strike),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
