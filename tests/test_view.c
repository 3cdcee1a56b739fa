/* Unit tests for view: what a group's endpoint set becomes as the
 * registry and the snapshot feed it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "../src/balance.h"
#include "../src/view.h"

static void no_fetch(mu_group *g, const char *name, void *user)
{
    (void)g, (void)name, (void)user;
}

/* The group's list from ZooKeeper: one child naming port, or none. */
static void list(mu_view *v, mu_group *g, int port)
{
    char *names[1] = {"p1"};
    char data[64];
    snprintf(data, sizeof data, "{\"host\": \"127.0.0.1\", \"port\": %d}", port);
    int fetch = mu_view_children(v, g, names, port ? 1 : 0, no_fetch, NULL);
    if (fetch)
        mu_view_child_data(v, g, "p1", data, strlen(data));
}

/* Empty-push protection keeps a list ZooKeeper gave, not a snapshot's: a
 * method whose first real list is empty drops its stale endpoints (and is
 * no longer stale), even while a sibling has providers. A sibling known
 * only from the snapshot does not count as the service having providers. */
static void test_empty_protection_and_stale(void **state)
{
    (void)state;
    mu_view *v = mu_view_new("/json/", NULL, NULL, NULL, NULL);
    assert_non_null(v);
    mu_group *a = mu_view_group(v, "/dubbo/svc/a/provider", 1);
    mu_group *b = mu_view_group(v, "/dubbo/svc/b/provider", 1);
    assert_non_null(a);
    assert_non_null(b);
    a->empty_protection = b->empty_protection = 1;
    assert_int_equal(mu_view_set_stale(v, a, "127.0.0.1:9001"), 0);
    assert_int_equal(mu_view_set_stale(v, b, "127.0.0.1:9002"), 0);
    list(v, a, 0); /* a's first real list: empty; b only stale */
    assert_int_equal(mu_pool_size(a->pool), 0);
    assert_int_equal(a->stale, 0);
    list(v, b, 9002); /* b from ZooKeeper now */
    assert_int_equal(b->stale, 0);
    assert_int_equal(mu_pool_size(b->pool), 1);
    list(v, a, 9001);
    assert_int_equal(mu_pool_size(a->pool), 1);
    list(v, a, 0); /* a list ZooKeeper gave, emptied while b has providers: kept */
    assert_int_equal(mu_pool_size(a->pool), 1);
    mu_view_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_protection_and_stale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
