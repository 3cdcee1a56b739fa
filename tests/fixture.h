/* The fixture that end-to-end call tests share (header-only, one copy per
 * test program): one real ZooKeeper for the whole program, a fresh
 * event_base per test, and clients pointed at that ZooKeeper. */
#ifndef MU_TEST_FIXTURE_H
#define MU_TEST_FIXTURE_H

#include <stdarg.h>

#include "testbed.h"
#include "util.h"

static tb_zk *zk;
static struct event_base *base;

static int setup_all(void **state)
{
    (void)state;
    zk = tb_zk_start();
    return zk ? 0 : -1;
}

static int teardown_all(void **state)
{
    (void)state;
    tb_zk_free(zk);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    base = event_base_new();
    return base ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    event_base_free(base);
    return 0;
}

/* A client on base, for the shared ZooKeeper; takes cfg. Logs quietly
 * (MU_TEST_VERBOSE=1 shows everything). */
static mu_client *client(mu_config *cfg)
{
    mu_client *c = NULL;
    if (mu_config_set(cfg, "zk_hosts", tb_zk_connstr(zk)) != MU_OK)
        fail();
    assert_int_equal(mu_client_new(base, cfg, &c), MU_OK);
    mu_client_set_log(c, MU_LOG_DEBUG, tu_log, NULL);
    mu_config_free(cfg);
    return c;
}

/* A provider of svc registered in the shared ZooKeeper, with up to 12 more
 * arguments (NULL-terminated). */
static inline tb_provider *provider(const char *svc, ...)
{
    const char *args[16] = {"--service", svc};
    int n = 2;
    va_list ap;
    va_start(ap, svc);
    for (const char *a; n < 14 && (a = va_arg(ap, const char *)) != NULL;)
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    return tb_provider_start(tb_zk_connstr(zk), args);
}

#endif
