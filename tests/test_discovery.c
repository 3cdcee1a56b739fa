/* Discovery against a real ZooKeeper and real test providers: the watched
 * view, its costs, bad data, outages, session expiry and an ensemble. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <zookeeper/zookeeper.h>

#include "client.h"
#include "testbed.h"
#include "util.h"

static tb_zk *zk;

static int setup_zk(void **state)
{
    (void)state;
    zk = tb_zk_start();
    return zk ? 0 : -1;
}

static int teardown_zk(void **state)
{
    (void)state;
    tb_zk_free(zk);
    zk = NULL;
    return 0;
}

typedef struct fixture {
    struct event_base *base;
    mu_client *c;
} fixture;

static void fx_open(fixture *f, mu_config *cfg)
{
    f->base = event_base_new();
    assert_non_null(f->base);
    assert_int_equal(mu_client_new(f->base, cfg, &f->c), MU_OK);
    mu_client_set_log(f->c, MU_LOG_DEBUG, tu_log, NULL);
    mu_config_free(cfg);
}

static void fx_close(fixture *f)
{
    mu_client_free(f->c);
    event_base_free(f->base);
}

/* Endpoint count of a target, through the public introspection call. */
typedef struct count_ctx {
    size_t n;
    char first[72];
} count_ctx;

static void count_cb(const mu_endpoint_info *const *eps, size_t n, void *user)
{
    count_ctx *cc = user;
    cc->n = n;
    snprintf(cc->first, sizeof cc->first, "%s", n ? eps[0]->address : "");
}

static long endpoints(mu_client *c, const char *target)
{
    count_ctx cc = {0};
    if (mu_client_endpoints(c, target, count_cb, &cc) != MU_OK)
        return -1;
    return (long)cc.n;
}

typedef struct calls_ctx {
    const char *addr;
    unsigned long long calls;
} calls_ctx;

static void calls_cb(const mu_endpoint_info *const *eps, size_t n, void *user)
{
    calls_ctx *cc = user;
    for (size_t i = 0; i < n; i++)
        if (strcmp(eps[i]->address, cc->addr) == 0)
            cc->calls = eps[i]->calls;
}

/* Attempts sent to one endpoint, as introspection reports them. */
static unsigned long long calls_of(mu_client *c, const char *target, const char *addr)
{
    calls_ctx cc = {addr, 0};
    mu_client_endpoints(c, target, calls_cb, &cc);
    return cc.calls;
}

typedef struct wait_n {
    mu_client *c;
    const char *target;
    long want;
} wait_n;

static int has_n(void *arg)
{
    wait_n *w = arg;
    return endpoints(w->c, w->target) == w->want;
}

static int wait_endpoints(fixture *f, const char *target, long n, int ms)
{
    wait_n w = {f->c, target, n};
    return tu_run_until(f->base, has_n, &w, ms);
}

/* ------------------------------------------------------------------ tests */

static void test_view_follows_each_change(void **state)
{
    (void)state;
    fixture f;
    fx_open(&f, tu_config("zk_hosts", tb_zk_connstr(zk), NULL));
    const char *t = "micro:whoami";
    const char *args[] = {"--methods", "whoami", NULL};

    /* Nothing registered yet: fails fast, naming the path. */
    tu_outcome o;
    tu_call_sync(f.base, f.c, t, NULL, NULL, &o);
    assert_int_equal(o.status, MU_ENOPROVIDER);
    assert_non_null(strstr(o.detail, "/dubbo/micro/whoami/provider"));

    tb_provider *p[3];
    for (int i = 0; i < 3; i++) {
        mu_client_stats before, after;
        mu_client_stats_get(f.c, &before, sizeof before);
        p[i] = tb_provider_start(tb_zk_connstr(zk), args);
        assert_non_null(p[i]);
        assert_true(wait_endpoints(&f, t, i + 1, 10000));
        mu_client_stats_get(f.c, &after, sizeof after);
        if (i > 0) {
            /* One child joining costs one get_children and one get. */
            assert_int_equal(after.zk_get_children - before.zk_get_children, 1);
            assert_int_equal(after.zk_get - before.zk_get, 1);
        }
    }
    tu_call_sync(f.base, f.c, t, NULL, NULL, &o);
    assert_int_equal(o.status, MU_OK);

    /* Per-endpoint counters survive a refresh of the set. */
    unsigned long long before = calls_of(f.c, t, o.endpoint);
    assert_true(before >= 1);
    tb_provider *extra = tb_provider_start(tb_zk_connstr(zk), args);
    assert_non_null(extra);
    assert_true(wait_endpoints(&f, t, 4, 10000));
    assert_int_equal(calls_of(f.c, t, o.endpoint), before);
    assert_int_equal(tb_provider_kill(extra, SIGTERM), 0);
    tb_provider_free(extra);
    assert_true(wait_endpoints(&f, t, 3, 10000));
    assert_int_equal(calls_of(f.c, t, o.endpoint), before);

    for (int i = 0; i < 3; i++) {
        mu_client_stats before, after;
        mu_client_stats_get(f.c, &before, sizeof before);
        assert_int_equal(tb_provider_kill(p[i], SIGTERM), 0);
        tb_provider_free(p[i]);
        assert_true(wait_endpoints(&f, t, 2 - i, 10000));
        mu_client_stats_get(f.c, &after, sizeof after);
        /* A child leaving costs one get_children and no get. */
        assert_int_equal(after.zk_get - before.zk_get, 0);
    }
    tu_call_sync(f.base, f.c, t, NULL, NULL, &o);
    assert_int_equal(o.status, MU_ENOPROVIDER);
    fx_close(&f);
}

static void test_cold_load_1000(void **state)
{
    (void)state;
    tb_zkc *z = tb_zkc_open(tb_zk_connstr(zk));
    assert_non_null(z);
    assert_int_equal(tb_zkc_mkdirs(z, "/dubbo/bulk/m/provider"), 0);
    for (int i = 0; i < 1000; i++) {
        char data[64];
        int n = snprintf(data, sizeof data, "{\"host\": \"127.0.0.1\", \"port\": %d}", 20000 + i);
        assert_int_equal(tb_zkc_create(z, "/dubbo/bulk/m/provider/", data, n,
                                       ZOO_EPHEMERAL | ZOO_SEQUENCE, NULL, 0),
                         0);
    }
    fixture f;
    fx_open(&f, tu_config("zk_hosts", tb_zk_connstr(zk), NULL));
    unsigned long long t0 = tu_now_ms();
    assert_int_equal(mu_client_watch(f.c, "bulk:m", NULL, NULL), MU_OK); /* starts the load */
    assert_true(wait_endpoints(&f, "bulk:m", 1000, 20000));
    unsigned long long ms = tu_now_ms() - t0;
    mu_client_stats st;
    mu_client_stats_get(f.c, &st, sizeof st);
    print_message("cold load of 1000 providers: %llu ms, %llu get_children, %llu gets\n", ms,
                  st.zk_get_children, st.zk_get);
    assert_int_equal(st.zk_get, 1000);
    assert_int_equal(st.zk_get_children, 1);

    /* One more joins: one get_children, one get. */
    char data[64];
    int n = snprintf(data, sizeof data, "{\"host\": \"127.0.0.1\", \"port\": %d}", 21000);
    assert_int_equal(tb_zkc_create(z, "/dubbo/bulk/m/provider/", data, n, ZOO_EPHEMERAL | ZOO_SEQUENCE,
                                   NULL, 0),
                     0);
    assert_true(wait_endpoints(&f, "bulk:m", 1001, 10000));
    mu_client_stats st2;
    mu_client_stats_get(f.c, &st2, sizeof st2);
    assert_int_equal(st2.zk_get - st.zk_get, 1);
    assert_int_equal(st2.zk_get_children - st.zk_get_children, 1);
    fx_close(&f);
    tb_zkc_close(z); /* ephemeral nodes go with the session */
}

static void test_duplicates_and_bad_data(void **state)
{
    (void)state;
    const char *args[] = {"--service", "dup", "--methods", "whoami", "--dup", "3", "--bad-znode",
                          "nonjson", NULL};
    tb_provider *p = tb_provider_start(tb_zk_connstr(zk), args);
    assert_non_null(p);
    tb_zkc *z = tb_zkc_open(tb_zk_connstr(zk));
    assert_non_null(z);
    const char *bad[] = {"", "{\"host\": \"127.0.0.1\"}", "{\"host\": \"127.0.0.1\", \"port\": 70000}",
                         "[1, 2]", "{\"host\": \"a b\", \"port\": 80}", "{\"port\": \"80\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(tb_zkc_create(z, "/dubbo/dup/whoami/provider/", bad[i], (int)strlen(bad[i]),
                                       ZOO_EPHEMERAL | ZOO_SEQUENCE, NULL, 0),
                         0);
    /* A string port is accepted (docs/protocol.md §2.2: both forms exist). */
    char good[80];
    int n = snprintf(good, sizeof good, "{\"host\": \"127.0.0.1\", \"port\": \"%d\"}",
                     tb_provider_port(p));
    assert_int_equal(tb_zkc_create(z, "/dubbo/dup/whoami/provider/", good, n,
                                   ZOO_EPHEMERAL | ZOO_SEQUENCE, NULL, 0),
                     0);

    fixture f;
    fx_open(&f, tu_config("zk_hosts", tb_zk_connstr(zk), NULL));
    tu_outcome o;
    tu_call_sync(f.base, f.c, "dup:whoami", NULL, NULL, &o);
    assert_int_equal(o.status, MU_OK);
    char port[16];
    snprintf(port, sizeof port, "%d", tb_provider_port(p));
    assert_string_equal(o.result, port);
    /* 3 + 1 children for one host:port: one endpoint. */
    assert_int_equal(endpoints(f.c, "dup:whoami"), 1);
    mu_client_stats st;
    mu_client_stats_get(f.c, &st, sizeof st);
    assert_int_equal(st.znodes_skipped, 7); /* the provider's own bad node + 6 */
    fx_close(&f);
    tb_zkc_close(z);
    tb_provider_free(p);
}

static int loaded_1(void *arg)
{
    mu_client_stats st;
    mu_client_stats_get(arg, &st, sizeof st);
    return st.zk_get >= 1;
}

static void test_preload(void **state)
{
    (void)state;
    const char *args[] = {"--service", "pre", "--methods", "whoami", NULL};
    tb_provider *p = tb_provider_start(tb_zk_connstr(zk), args);
    assert_non_null(p);
    fixture f;
    fx_open(&f, tu_config("zk_hosts", tb_zk_connstr(zk), "preload", "pre:whoami, pre:other", NULL));
    /* Loaded with no call made. */
    assert_true(tu_run_until(f.base, loaded_1, f.c, 10000));
    /* zk_get counts the request sent: its answer may still be on the way
     * on a busy machine (seen beside test_chaos under make -j2 check). */
    assert_true(wait_endpoints(&f, "pre:whoami", 1, 10000));
    mu_client_stats st;
    mu_client_stats_get(f.c, &st, sizeof st);
    assert_int_equal(st.calls_started, 0);
    assert_int_equal(st.zk_get_children, 2); /* both preload targets listed */
    fx_close(&f);
    tb_provider_free(p);
}

/* A provider znode we may not read is skipped; its siblings serve. */
static void test_unreadable_child(void **state)
{
    (void)state;
    const char *args[] = {"--service", "acl", "--methods", "whoami", NULL};
    tb_provider *p = tb_provider_start(tb_zk_connstr(zk), args);
    assert_non_null(p);
    tb_zkc *z = tb_zkc_open(tb_zk_connstr(zk));
    assert_non_null(z);
    const char *data = "{\"host\": \"127.0.0.1\", \"port\": 9}";
    assert_int_equal(tb_zkc_create_unreadable(z, "/dubbo/acl/whoami/provider/", data,
                                              (int)strlen(data), ZOO_EPHEMERAL | ZOO_SEQUENCE, NULL, 0),
                     0);
    fixture f;
    fx_open(&f, tu_config("zk_hosts", tb_zk_connstr(zk), "deadline_ms", "5000", NULL));
    tu_outcome o;
    tu_call_sync(f.base, f.c, "acl:whoami", NULL, NULL, &o);
    if (o.status != MU_OK)
        fail_msg("%s: %s", mu_status_name(o.status), o.detail);
    assert_int_equal(endpoints(f.c, "acl:whoami"), 1);
    mu_client_stats st;
    mu_client_stats_get(f.c, &st, sizeof st);
    assert_int_equal(st.znodes_skipped, 1);
    fx_close(&f);
    tb_zkc_close(z);
    tb_provider_free(p);
}

static void test_unreachable_zookeeper(void **state)
{
    (void)state;
    fixture f;
    /* A port nothing listens on. */
    fx_open(&f, tu_config("zk_hosts", "127.0.0.1:1", "deadline_ms", "600", NULL));
    unsigned long long t0 = tu_now_ms();
    tu_outcome o;
    tu_call_sync(f.base, f.c, "micro:echo", NULL, NULL, &o);
    unsigned long long ms = tu_now_ms() - t0;
    assert_int_equal(o.status, MU_EDISCOVERY);
    assert_non_null(strstr(o.detail, "127.0.0.1:1"));
    assert_true(ms >= 550 && ms < 5000);
    assert_int_equal(o.attempts, 0);
    fx_close(&f);
}

static void test_static_list_without_zookeeper(void **state)
{
    (void)state;
    tb_provider *p = tb_provider_start(NULL, NULL);
    assert_non_null(p);
    char hosts[64];
    snprintf(hosts, sizeof hosts, "127.0.0.1:%d", tb_provider_port(p));
    fixture f;
    fx_open(&f, tu_config("zk_hosts", "", "static.micro", hosts, NULL));
    tu_outcome o;
    tu_call_sync(f.base, f.c, "micro:echo", "[\"hi\"]", NULL, &o);
    assert_int_equal(o.status, MU_OK);
    assert_string_equal(o.result, "{\"args\": [\"hi\"], \"kwargs\": {}}");
    assert_string_equal(o.endpoint, hosts);
    /* Without ZooKeeper, a service with no static list has no provider. */
    tu_call_sync(f.base, f.c, "other:echo", NULL, NULL, &o);
    assert_int_equal(o.status, MU_ENOPROVIDER);
    fx_close(&f);
    tb_provider_free(p);
}

static void test_per_service_layout(void **state)
{
    (void)state;
    const char *args[] = {"--service", "svc108", "--layout", "per-service", NULL};
    tb_provider *p = tb_provider_start(tb_zk_connstr(zk), args);
    assert_non_null(p);
    fixture f;
    fx_open(&f, tu_config("zk_hosts", tb_zk_connstr(zk), "layout", "per-service", NULL));
    tu_outcome o;
    tu_call_sync(f.base, f.c, "svc108:echo", "[1]", NULL, &o);
    assert_int_equal(o.status, MU_OK);
    tu_call_sync(f.base, f.c, "svc108:whoami", NULL, NULL, &o);
    assert_int_equal(o.status, MU_OK);
    fx_close(&f);
    tb_provider_free(p);
}

/* Calls every 50 ms while something happens; counts failures. */
typedef struct pacer {
    mu_client *c;
    const char *target;
    struct event *ev;
    int sent, ok, failed, inflight;
    char last_detail[400];
} pacer;

static void pacer_done(const mu_result *r, void *user)
{
    pacer *pc = user;
    pc->inflight--;
    if (r->status == MU_OK)
        pc->ok++;
    else {
        pc->failed++;
        snprintf(pc->last_detail, sizeof pc->last_detail, "%s: %s", mu_status_name(r->status),
                 r->detail);
    }
}

static void pacer_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pacer *pc = arg;
    if (mu_call(pc->c, pc->target, NULL, NULL, NULL, pacer_done, pc, NULL) == MU_OK) {
        pc->sent++;
        pc->inflight++;
    }
}

static void pacer_start(pacer *pc, fixture *f, const char *target)
{
    memset(pc, 0, sizeof *pc);
    pc->c = f->c;
    pc->target = target;
    pc->ev = event_new(f->base, -1, EV_PERSIST, pacer_tick, pc);
    struct timeval tv = {0, 50000};
    event_add(pc->ev, &tv);
}

static int pacer_idle(void *arg)
{
    return ((pacer *)arg)->inflight == 0;
}

static void pacer_stop(pacer *pc, fixture *f)
{
    event_free(pc->ev);
    tu_run_until(f->base, pacer_idle, pc, 20000);
}

static int zk_up(void *arg)
{
    return mu_client_zk_connected(arg);
}

static void test_zookeeper_restart_during_calls(void **state)
{
    (void)state;
    tb_zk *own = tb_zk_start();
    assert_non_null(own);
    const char *args[] = {"--methods", "whoami", "--session-ms", "30000", NULL};
    tb_provider *p = tb_provider_start(tb_zk_connstr(own), args);
    assert_non_null(p);
    fixture f;
    fx_open(&f, tu_config("zk_hosts", tb_zk_connstr(own), "zk_session_timeout_ms", "30000", NULL));
    assert_true(wait_endpoints(&f, "micro:whoami", 1, 10000));

    pacer pc;
    pacer_start(&pc, &f, "micro:whoami");
    tu_run_for(f.base, 300);
    assert_int_equal(tb_zk_stop(own), 0);
    tu_run_for(f.base, 1500); /* ZooKeeper down: calls keep going from the view */
    assert_false(mu_client_zk_connected(f.c));
    assert_int_equal(tb_zk_restart(own), 0);
    assert_true(tu_run_until(f.base, zk_up, f.c, 20000));
    tu_run_for(f.base, 300);
    pacer_stop(&pc, &f);
    if (pc.failed)
        fail_msg("%d of %d calls failed; last: %s", pc.failed, pc.sent, pc.last_detail);
    assert_true(pc.ok >= 20);

    /* Watches are back: a new provider is seen. */
    tb_provider *q = tb_provider_start(tb_zk_connstr(own), args);
    assert_non_null(q);
    assert_true(wait_endpoints(&f, "micro:whoami", 2, 10000));
    fx_close(&f);
    tb_provider_free(q);
    tb_provider_free(p);
    tb_zk_free(own);
}

/* The least endpoint count seen after the first load. */
typedef struct low_water {
    mu_client *c;
    long min;
    int notices;
} low_water;

static void watch_cb(const char *target, size_t n, void *user)
{
    low_water *lw = user;
    (void)target;
    lw->notices++;
    if ((long)n < lw->min)
        lw->min = (long)n;
}

static int sessions_2(void *arg)
{
    mu_client_stats st;
    mu_client_stats_get(arg, &st, sizeof st);
    return st.zk_sessions >= 2 && mu_client_zk_connected(arg);
}

static void test_session_expiry(void **state)
{
    (void)state;
    const char *args[] = {"--methods", "whoami", NULL};
    tb_provider *p = tb_provider_start(tb_zk_connstr(zk), args);
    assert_non_null(p);
    fixture f;
    fx_open(&f, tu_config("zk_hosts", tb_zk_connstr(zk), "zk_session_timeout_ms", "4000", NULL));
    assert_true(wait_endpoints(&f, "micro:whoami", 1, 10000));
    low_water lw = {f.c, 1000, 0};
    assert_int_equal(mu_client_watch(f.c, "micro:whoami", watch_cb, &lw), MU_OK);
    tu_run_for(f.base, 100);

    zhandle_t *zh = mu_registry_zhandle(mu_client_registry(f.c));
    assert_non_null(zh);
    clientid_t id = *zoo_client_id(zh);
    assert_int_equal(tb_zk_expire_session(tb_zk_connstr(zk), &id), 0);
    /* A change made while our session is being replaced. */
    tb_provider *q = tb_provider_start(tb_zk_connstr(zk), args);
    assert_non_null(q);

    pacer pc;
    pacer_start(&pc, &f, "micro:whoami");
    assert_true(tu_run_until(f.base, sessions_2, f.c, 20000));
    assert_true(wait_endpoints(&f, "micro:whoami", 2, 10000));
    pacer_stop(&pc, &f);
    if (pc.failed)
        fail_msg("%d of %d calls failed; last: %s", pc.failed, pc.sent, pc.last_detail);
    /* Never an empty window. */
    assert_true(lw.min >= 1);
    fx_close(&f);
    tb_provider_free(q);
    tb_provider_free(p);
}

static void test_ensemble_failover(void **state)
{
    (void)state;
    tb_ensemble *e = tb_ensemble_start(3);
    assert_non_null(e);
    const char *args[] = {"--methods", "whoami", "--session-ms", "20000", NULL};
    tb_provider *p = tb_provider_start(tb_ensemble_connstr(e), args);
    assert_non_null(p);
    fixture f;
    fx_open(&f, tu_config("zk_hosts", tb_ensemble_connstr(e), "zk_session_timeout_ms", "20000",
                          NULL));
    assert_true(wait_endpoints(&f, "micro:whoami", 1, 20000));
    const char *cur = zoo_get_current_server(mu_registry_zhandle(mu_client_registry(f.c)));
    assert_non_null(cur);
    int victim = -1;
    for (int i = 0; i < 3; i++) {
        char hp[64];
        snprintf(hp, sizeof hp, "127.0.0.1:%d", tb_ensemble_member_port(e, i));
        if (strcmp(cur, hp) == 0)
            victim = i;
    }
    assert_true(victim >= 0);

    pacer pc;
    pacer_start(&pc, &f, "micro:whoami");
    tu_run_for(f.base, 300);
    assert_int_equal(tb_ensemble_stop_member(e, victim), 0);
    tu_run_for(f.base, 500);
    assert_true(tu_run_until(f.base, zk_up, f.c, 30000));
    const char *now = zoo_get_current_server(mu_registry_zhandle(mu_client_registry(f.c)));
    char old[64];
    snprintf(old, sizeof old, "127.0.0.1:%d", tb_ensemble_member_port(e, victim));
    assert_string_not_equal(now, old);
    tu_run_for(f.base, 300);
    pacer_stop(&pc, &f);
    if (pc.failed)
        fail_msg("%d of %d calls failed; last: %s", pc.failed, pc.sent, pc.last_detail);
    /* Watches work through the new server. */
    tb_provider *q = tb_provider_start(tb_ensemble_connstr(e), args);
    assert_non_null(q);
    assert_true(wait_endpoints(&f, "micro:whoami", 2, 20000));
    fx_close(&f);
    tb_provider_free(q);
    tb_provider_free(p);
    tb_ensemble_free(e);
}

/* 20 clients on one loop watch one method through a ZooKeeper restart,
 * then through the loss of their sessions.
 *   - Restart: the sessions resume and the ZooKeeper client re-arms our
 *     watches itself (SetWatches, with the last zxid seen), so nobody
 *     re-lists; a provider that joins while the clients are away reaches
 *     each of them by its watch: one get_children each, no more; a
 *     restart with no change costs no request at all.
 *   - Sessions expired: every watch is gone, so every client lists again,
 *     each after its own random delay (at most min(session timeout / 4,
 *     2 s): 1 s here), serving its view meanwhile. Asserted eventually:
 *     exactly one re-list each within the bound plus slack, and the delays
 *     are not all alike (20 draws from [0, 1000] ms within 100 ms of each
 *     other: about 1e-18). */
#define HERD 20

static unsigned long long stat_of(mu_client *c, int sessions)
{
    mu_client_stats st;
    mu_client_stats_get(c, &st, sizeof st);
    return sessions ? st.zk_sessions : st.zk_get_children;
}

static int connected(void *arg)
{
    return mu_client_zk_connected(arg);
}

static void add_child(tb_zk *zk, const char *name, int port)
{
    tb_zkc *z = tb_zkc_open(tb_zk_connstr(zk));
    assert_non_null(z);
    char path[128], data[64];
    snprintf(path, sizeof path, "/dubbo/herd/echo/provider/%s", name);
    snprintf(data, sizeof data, "{\"host\": \"127.0.0.1\", \"port\": %d}", port);
    assert_int_equal(tb_zkc_mkdirs(z, "/dubbo/herd/echo/provider"), ZOK);
    assert_int_equal(tb_zkc_create(z, path, data, (int)strlen(data), 0, NULL, 0), ZOK);
    tb_zkc_close(z);
}

static void all_have(struct event_base *base, mu_client **c, int n)
{
    for (int i = 0; i < HERD; i++) {
        wait_n w = {c[i], "herd:echo", n};
        assert_true(tu_run_until(base, has_n, &w, 10000));
    }
}

static void test_relist_after_restart_is_spread(void **state)
{
    (void)state;
    tb_zk *own = tb_zk_start();
    assert_non_null(own);
    add_child(own, "p1", 1);
    struct event_base *base = event_base_new();
    assert_non_null(base);
    mu_client *c[HERD];
    unsigned long long gc0[HERD], s0[HERD], t_up[HERD], t_relist[HERD];
    for (int i = 0; i < HERD; i++) {
        mu_config *cfg = tu_config("zk_hosts", tb_zk_connstr(own), "zk_session_timeout_ms", "4000",
                                   NULL);
        assert_int_equal(mu_client_new(base, cfg, &c[i]), MU_OK);
        mu_config_free(cfg);
        mu_client_set_log(c[i], MU_LOG_WARN, tu_log, NULL);
        endpoints(c[i], "herd:echo"); /* starts loading */
    }
    all_have(base, c, 1);

    /* 1. A restart; p2 joins before the clients' loop runs again. */
    for (int i = 0; i < HERD; i++)
        gc0[i] = stat_of(c[i], 0);
    assert_int_equal(tb_zk_stop(own), 0);
    tu_run_for(base, 500);
    assert_int_equal(tb_zk_restart(own), 0);
    add_child(own, "p2", 2);
    all_have(base, c, 2);
    tu_run_for(base, 1500); /* past the re-list bound: nothing more comes */
    for (int i = 0; i < HERD; i++) {
        assert_int_equal(stat_of(c[i], 1), 1);           /* resumed */
        assert_int_equal(stat_of(c[i], 0), gc0[i] + 1);  /* the watch's list only */
    }

    /* A restart with no change: nothing to list at all. */
    for (int i = 0; i < HERD; i++)
        gc0[i] = stat_of(c[i], 0);
    assert_int_equal(tb_zk_stop(own), 0);
    tu_run_for(base, 500);
    assert_int_equal(tb_zk_restart(own), 0);
    for (int i = 0; i < HERD; i++)
        assert_true(tu_run_until(base, connected, c[i], 10000));
    tu_run_for(base, 1500);
    for (int i = 0; i < HERD; i++)
        assert_int_equal(stat_of(c[i], 0), gc0[i]);

    /* 2. Every session expires: each client lists again, spread. */
    for (int i = 0; i < HERD; i++) {
        gc0[i] = stat_of(c[i], 0);
        s0[i] = stat_of(c[i], 1);
        t_up[i] = t_relist[i] = 0;
        clientid_t id = *zoo_client_id(mu_registry_zhandle(mu_client_registry(c[i])));
        assert_int_equal(tb_zk_expire_session(tb_zk_connstr(own), &id), 0);
    }
    unsigned long long deadline = tu_now_ms() + 20000;
    int left = HERD;
    while (left > 0 && tu_now_ms() < deadline) {
        tu_run_for(base, 5);
        unsigned long long now = tu_now_ms();
        for (int i = 0; i < HERD; i++) {
            if (!t_up[i] && stat_of(c[i], 1) > s0[i])
                t_up[i] = now;
            if (t_up[i] && !t_relist[i] && stat_of(c[i], 0) > gc0[i]) {
                t_relist[i] = now;
                left--;
            }
            /* The view keeps serving while the re-list waits. */
            assert_int_equal(endpoints(c[i], "herd:echo"), 2);
        }
    }
    assert_int_equal(left, 0);
    tu_run_for(base, 1200);
    unsigned long long dmin = ~0ull, dmax = 0;
    for (int i = 0; i < HERD; i++) {
        assert_int_equal(stat_of(c[i], 0), gc0[i] + 1);
        unsigned long long d = t_relist[i] - t_up[i];
        assert_true(d <= 1000 + 500); /* the bound, plus the loop's and our polling's slack */
        dmin = d < dmin ? d : dmin;
        dmax = d > dmax ? d : dmax;
    }
    assert_true(dmax - dmin >= 100);

    /* The new watches work: a join reaches every client. */
    add_child(own, "p3", 3);
    all_have(base, c, 3);
    for (int i = 0; i < HERD; i++)
        mu_client_free(c[i]);
    event_base_free(base);
    tb_zk_free(own);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_view_follows_each_change),
        cmocka_unit_test(test_cold_load_1000),
        cmocka_unit_test(test_duplicates_and_bad_data),
        cmocka_unit_test(test_preload),
        cmocka_unit_test(test_unreadable_child),
        cmocka_unit_test(test_unreachable_zookeeper),
        cmocka_unit_test(test_static_list_without_zookeeper),
        cmocka_unit_test(test_per_service_layout),
        cmocka_unit_test(test_session_expiry),
        cmocka_unit_test(test_zookeeper_restart_during_calls),
        cmocka_unit_test(test_relist_after_restart_is_spread),
        cmocka_unit_test(test_ensemble_failover),
    };
    return cmocka_run_group_tests(tests, setup_zk, teardown_zk);
}
