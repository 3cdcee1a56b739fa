/* Faults under load (issue 13): each scenario keeps 64 calls in flight
 * against a real ZooKeeper (or a 3-server ensemble) and real test
 * providers, injects one fault in the middle of the load, and ends by
 * checking that every callback fired exactly once (tests/load.h: a malloc'd
 * token per call, freed by its callback; ASan turns a second callback into a
 * use after free and a missing one into a leak) and that failures stay
 * within a bound stated beside each scenario (and in README.md, "Faults
 * under load", with measured figures).
 *
 * Bounds, with C = 64 calls in flight:
 *   provider SIGKILLed         <= C: only the calls in flight on it, which
 *                              may have run (not idempotent), fail
 *   provider hangs (SIGSTOP)   <= C per ejection: each time it is tried
 *                              again, only the calls sent before in-flight
 *                              age ejects it again time out
 *   garbage provider joins     <= C per ejection (EPROTOCOL only)
 *   closing mid-response 5%    not idempotent: between 1% and 10% fail, all
 *                              MU_ETRANSPORT; idempotent: <= 0.5%
 *   500s (10% OtherError)      between 5% and 15%, all MU_EREMOTE, never
 *                              retried even when idempotent, 0 ejections
 *   ZooKeeper killed/restarted 0
 *   session expired            0, and the view never shrinks
 *   ensemble member killed     0
 *   every provider gone        the calls in flight at the kill (<= C, any
 *                              status) + MU_ECONNECT / MU_ENOPROVIDER while
 *                              none is up, each within deadline_ms + 1 s;
 *                              0 once new providers are seen
 *   callback storm             every call fails (that is the point); a
 *                              10 ms timer never waits more than 250 ms
 *
 * Not here: slow DNS for a static provider given by host name. The
 * resolver can be made slow honestly only by pointing it at a slow DNS
 * server, which needs root (/etc/resolv.conf) or a user, mount and network
 * namespace around the whole test; LD_PRELOAD and friends would fake it.
 *
 * Wall time: 23 to 27 s on 2 cores (the ensemble start and the ZooKeeper
 * restart are most of it). MU_TEST_FILTER=test_chaos_zk_restart runs one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zookeeper/zookeeper.h>

#include "client.h"
#include "fixture.h"
#include "load.h"

#define C_INFLIGHT 64

/* ------------------------------------------------------------ helpers */

static mu_client_stats stats(mu_client *c)
{
    mu_client_stats st;
    mu_client_stats_get(c, &st, sizeof st);
    return st;
}

/* A client on another ZooKeeper (the ensemble); takes cfg. */
static mu_client *client_at(mu_config *cfg, const char *connstr)
{
    mu_client *c = NULL;
    assert_int_equal(mu_config_set(cfg, "zk_hosts", connstr), MU_OK);
    assert_int_equal(mu_client_new(base, cfg, &c), MU_OK);
    mu_client_set_log(c, MU_LOG_DEBUG, tu_log, NULL);
    mu_config_free(cfg);
    return c;
}

typedef struct want_n {
    mu_client *c;
    const char *target;
    int n;
} want_n;

static int has_n(void *arg)
{
    want_n *w = arg;
    return endpoints(w->c, w->target).n == w->n;
}

/* Runs the loop (and so the load) until target lists exactly n endpoints. */
static int wait_endpoints(mu_client *c, const char *target, int n, int ms)
{
    want_n w = {c, target, n};
    return tu_run_until(base, has_n, &w, ms);
}

typedef struct mark {
    load *l;
    int n;
} mark;

static int reached(void *arg)
{
    mark *m = arg;
    return m->l->ended >= m->n;
}

/* Runs the loop until n calls of l have ended. */
static void run_to(load *l, int n, int ms)
{
    mark m = {l, n};
    assert_true(tu_run_until(base, reached, &m, ms));
}

/* A load with no fixed size: it runs until load_stop(). */
static void load_open(load *l, mu_client *c, const char *target, int idempotent)
{
    load_init(l, c, target, INT_MAX / 2, C_INFLIGHT);
    l->idempotent = idempotent;
    load_go(l);
}

/* No new calls; those in flight end (load_wait). */
static void load_stop(load *l)
{
    l->total = l->started;
}

/* One line per scenario: the figures README.md's table quotes. */
static void report(const char *name, const load *l, const char *bound, mu_client *c,
                   unsigned long long t0)
{
    mu_client_stats st = stats(c);
    char by[256] = "";
    size_t off = 0;
    for (int s = 1; s < (int)(sizeof l->by_status / sizeof l->by_status[0]); s++)
        if (l->by_status[s] && off < sizeof by)
            off += (size_t)snprintf(by + off, sizeof by - off, " %s=%d",
                                    mu_status_name((mu_status)s), l->by_status[s]);
    fprintf(stderr,
            "  chaos %-12s %7d calls, %5d failed (bound %s), %llu attempts, %llu ejections, "
            "%llu ms%s\n",
            name, l->ended, l->failed, bound, l->attempts, st.ejections, tu_now_ms() - t0, by);
    if (l->failed)
        fprintf(stderr, "  first failure: %s\n", l->first_failure);
}

/* ------------------------------------------------------------ providers */

/* One of three providers is SIGKILLed in the middle of the load. Its
 * znodes stay (its session lives 10 s), so the view keeps listing it: new
 * connections are refused, which ejects it at once and moves the call on
 * without using a retry. Only the calls in flight on it may have run and
 * fail (not idempotent). Bound: C. */
static void test_chaos_provider_killed(void **state)
{
    (void)state;
    tb_provider *p[3] = {provider("killed", NULL), provider("killed", NULL),
                         provider("killed", NULL)};
    for (int i = 0; i < 3; i++)
        assert_non_null(p[i]);
    mu_client *c = client(tu_config("timeout_ms", "2000", NULL));
    load l;
    unsigned long long t0 = tu_now_ms();
    load_init(&l, c, "killed:echo", 4000, C_INFLIGHT);
    load_go(&l);
    run_to(&l, 1000, 20000);
    assert_int_equal(tb_provider_kill(p[0], SIGKILL), 0);
    load_wait(&l, 30000);
    report("killed", &l, "64", c, t0);
    assert_true(l.failed <= C_INFLIGHT);
    assert_int_equal(l.by_status[MU_ECONNECT], 0); /* refusals never end a call */
    downs d = endpoints(c, "killed:echo");
    assert_int_equal(d.n, 3);           /* its znodes are still there */
    assert_true(stats(c).ejections >= 1); /* and it was found out */
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

/* One of three providers stops answering in the middle of the load
 * (SIGSTOP: the kernel still accepts connections and reads requests,
 * nothing answers, like --hang but starting mid-load). In-flight age ejects
 * it in about 100 ms; the calls already on it time out (timeout_ms 1000,
 * not idempotent). Each revival after eject_ms costs at most the calls sent
 * to it before it is found out again. Bound: C per ejection. */
static void test_chaos_provider_hangs(void **state)
{
    (void)state;
    tb_provider *p[3] = {provider("hangs", NULL), provider("hangs", NULL),
                         provider("hangs", NULL)};
    for (int i = 0; i < 3; i++)
        assert_non_null(p[i]);
    mu_client *c = client(tu_config("timeout_ms", "1000", NULL));
    load l;
    unsigned long long t0 = tu_now_ms();
    load_init(&l, c, "hangs:echo", 6000, C_INFLIGHT);
    load_go(&l);
    run_to(&l, 1000, 20000);
    assert_int_equal(tb_provider_kill(p[0], SIGSTOP), 0);
    load_wait(&l, 30000);
    unsigned long long ej = stats(c).ejections;
    report("hangs", &l, "64 x ejections", c, t0);
    assert_true(ej >= 1);
    assert_true((unsigned long long)l.failed <= C_INFLIGHT * ej);
    assert_int_equal(l.failed, l.by_status[MU_ETIMEDOUT]);
    assert_true(tu_now_ms() - t0 < 20000);
    assert_int_equal(tb_provider_kill(p[0], SIGCONT), 0);
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

/* A provider that answers garbage joins two good ones in the middle of the
 * load: it is seen through the watch, used, and ejected after
 * eject_after_failures (5) in a row. Bound: C per ejection, EPROTOCOL
 * only. */
static void test_chaos_garbage_joins(void **state)
{
    (void)state;
    tb_provider *p[3] = {provider("junk", NULL), provider("junk", NULL), NULL};
    assert_non_null(p[0]);
    assert_non_null(p[1]);
    mu_client *c = client(tu_config(NULL));
    load l;
    unsigned long long t0 = tu_now_ms();
    load_init(&l, c, "junk:echo", 5000, C_INFLIGHT);
    load_go(&l);
    run_to(&l, 500, 20000);
    p[2] = provider("junk", "--garbage", NULL);
    assert_non_null(p[2]);
    assert_true(wait_endpoints(c, "junk:echo", 3, 10000));
    load_wait(&l, 30000);
    unsigned long long ej = stats(c).ejections;
    report("garbage", &l, "64 x ejections", c, t0);
    assert_true(l.by_status[MU_EPROTOCOL] >= 1); /* it was used */
    assert_true(ej >= 1);
    assert_int_equal(l.failed, l.by_status[MU_EPROTOCOL]);
    assert_true((unsigned long long)l.failed <= C_INFLIGHT * ej);
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

/* Every provider closes 5% of its connections in the middle of an answer
 * (headers and part of the body, then close). Not idempotent: such a call
 * may have run, so it fails with MU_ETRANSPORT and is never sent again:
 * between 1% and 10% fail. Idempotent: sent again on another provider
 * (within the retry budget, 20% of calls): at most 0.5% fail (three drops
 * in a row: 0.0125%). */
static void test_chaos_drop_mid_response(void **state)
{
    (void)state;
    tb_provider *p[3];
    for (int i = 0; i < 3; i++) {
        p[i] = provider("drop", "--drop-rate", "0.05", NULL);
        assert_non_null(p[i]);
    }
    mu_client *c = client(tu_config(NULL));
    load l;
    unsigned long long t0 = tu_now_ms();
    load_init(&l, c, "drop:echo", 3000, C_INFLIGHT);
    load_go(&l);
    load_wait(&l, 30000);
    report("drop", &l, "30..300", c, t0);
    assert_true(l.failed >= 3000 / 100);
    assert_true(l.failed <= 3000 / 10);
    assert_int_equal(l.failed, l.by_status[MU_ETRANSPORT]);

    t0 = tu_now_ms();
    load_init(&l, c, "drop:echo", 3000, C_INFLIGHT);
    l.idempotent = 1;
    load_go(&l);
    load_wait(&l, 30000);
    report("drop idem", &l, "15", c, t0);
    assert_true(l.failed <= 3000 / 200);
    assert_true(l.attempts > 3000 + 3000 / 100); /* the drops were sent again */
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

/* Every provider raises on 10% of calls (1.0.2: an OtherError 500 with a
 * microutil body). Remote errors are answers: never retried, even for
 * idempotent calls, and errors that every provider gives alike eject
 * nobody. Between 5% and 15% fail, all MU_EREMOTE, one attempt each. */
static void test_chaos_500s(void **state)
{
    (void)state;
    tb_provider *p[3];
    for (int i = 0; i < 3; i++) {
        p[i] = provider("fivehundred", "--fail-rate", "0.1", NULL);
        assert_non_null(p[i]);
    }
    mu_client *c = client(tu_config(NULL));
    load l;
    unsigned long long t0 = tu_now_ms();
    load_init(&l, c, "fivehundred:echo", 4000, C_INFLIGHT);
    l.idempotent = 1;
    load_go(&l);
    load_wait(&l, 30000);
    report("500s", &l, "200..600", c, t0);
    assert_int_equal(l.failed, l.by_status[MU_EREMOTE]);
    assert_true(l.failed >= 4000 * 5 / 100);
    assert_true(l.failed <= 4000 * 15 / 100);
    assert_int_equal(l.attempts, 4000);
    assert_int_equal(stats(c).ejections, 0);
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

/* ------------------------------------------------------------ ZooKeeper */

static int zk_up(void *arg)
{
    return mu_client_zk_connected(arg);
}

/* ZooKeeper is stopped in the middle of the load and started again on the
 * same port and data. Calls are served from the view all along; the client
 * reconnects and its watches work again (a new provider is seen). Bound: 0.
 * (The testbed blocks while it stops and starts the server, so the loop
 * pauses then too: in-flight calls only wait.) */
static void test_chaos_zk_restart(void **state)
{
    (void)state;
    tb_provider *p[3] = {provider("zkr", NULL), provider("zkr", NULL), NULL};
    assert_non_null(p[0]);
    assert_non_null(p[1]);
    mu_client *c = client(tu_config("preload", "zkr:echo", NULL));
    assert_true(wait_endpoints(c, "zkr:echo", 2, 10000));
    load l;
    unsigned long long t0 = tu_now_ms();
    load_open(&l, c, "zkr:echo", 0);
    run_to(&l, 500, 20000);
    assert_int_equal(tb_zk_stop(zk), 0);
    int at_stop = l.ended;
    tu_run_for(base, 1500); /* ZooKeeper down */
    assert_false(mu_client_zk_connected(c));
    int served_down = l.ended - at_stop;
    assert_int_equal(tb_zk_restart(zk), 0);
    assert_true(tu_run_until(base, zk_up, c, 20000));
    p[2] = provider("zkr", NULL);
    assert_non_null(p[2]);
    assert_true(wait_endpoints(c, "zkr:echo", 3, 10000));
    tu_run_for(base, 300);
    load_stop(&l);
    load_wait(&l, 30000);
    report("zk restart", &l, "0", c, t0);
    fprintf(stderr, "  %d calls served while ZooKeeper was down\n", served_down);
    assert_true(served_down > 100);
    assert_int_equal(l.failed, 0);
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

typedef struct low_water {
    long min;
    int notices;
} low_water;

static void watch_min(const char *target, size_t n, void *user)
{
    low_water *lw = user;
    (void)target;
    lw->notices++;
    if ((long)n < lw->min)
        lw->min = (long)n;
}

static int sessions_2(void *arg)
{
    return stats(arg).zk_sessions >= 2 && mu_client_zk_connected(arg);
}

/* The client's session is expired on the server (testbed helper) in the
 * middle of the load, and a provider joins meanwhile. A new session is
 * made, watches re-installed, the method re-listed; the endpoint set is
 * swapped only when complete, so it never shrinks. Bound: 0. */
static void test_chaos_session_expiry(void **state)
{
    (void)state;
    tb_provider *p[3] = {provider("expiry", NULL), provider("expiry", NULL), NULL};
    assert_non_null(p[0]);
    assert_non_null(p[1]);
    mu_client *c = client(tu_config("zk_session_timeout_ms", "4000", "preload", "expiry:echo",
                                    NULL));
    assert_true(wait_endpoints(c, "expiry:echo", 2, 10000));
    low_water lw = {1000, 0};
    assert_int_equal(mu_client_watch(c, "expiry:echo", watch_min, &lw), MU_OK);
    load l;
    unsigned long long t0 = tu_now_ms();
    load_open(&l, c, "expiry:echo", 0);
    run_to(&l, 500, 20000);
    zhandle_t *zh = mu_registry_zhandle(mu_client_registry(c));
    assert_non_null(zh);
    clientid_t id = *zoo_client_id(zh);
    assert_int_equal(tb_zk_expire_session(tb_zk_connstr(zk), &id), 0);
    p[2] = provider("expiry", NULL);
    assert_non_null(p[2]);
    assert_true(tu_run_until(base, sessions_2, c, 20000));
    assert_true(wait_endpoints(c, "expiry:echo", 3, 10000));
    tu_run_for(base, 300);
    load_stop(&l);
    load_wait(&l, 30000);
    report("expiry", &l, "0", c, t0);
    assert_int_equal(l.failed, 0);
    assert_true(lw.min >= 2); /* never an empty or partial view */
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

typedef struct moved {
    mu_client *c;
    char old[64];
} moved;

static int moved_on(void *arg)
{
    moved *m = arg;
    if (!mu_client_zk_connected(m->c))
        return 0;
    const char *now = zoo_get_current_server(mu_registry_zhandle(mu_client_registry(m->c)));
    return now && strcmp(now, m->old) != 0;
}

/* A 3-server ensemble; the member the client is connected to is stopped in
 * the middle of the load. The client moves to another member within its
 * session (20 s), calls are served from the view meanwhile, and watches
 * work through the new member. Bound: 0. */
static void test_chaos_ensemble_member_killed(void **state)
{
    (void)state;
    tb_ensemble *e = tb_ensemble_start(3);
    assert_non_null(e);
    const char *cs = tb_ensemble_connstr(e);
    const char *pa[] = {"--service", "ens", "--session-ms", "20000", NULL};
    tb_provider *p[3] = {tb_provider_start(cs, pa), tb_provider_start(cs, pa), NULL};
    assert_non_null(p[0]);
    assert_non_null(p[1]);
    mu_client *c = client_at(tu_config("zk_session_timeout_ms", "20000", "preload", "ens:echo",
                                       NULL), cs);
    assert_true(wait_endpoints(c, "ens:echo", 2, 20000));
    load l;
    unsigned long long t0 = tu_now_ms();
    load_open(&l, c, "ens:echo", 0);
    run_to(&l, 500, 20000);
    moved m = {c, ""};
    const char *cur = zoo_get_current_server(mu_registry_zhandle(mu_client_registry(c)));
    assert_non_null(cur);
    snprintf(m.old, sizeof m.old, "%s", cur);
    int victim = -1;
    for (int i = 0; i < 3; i++)
        if (strcmp(m.old, tb_ensemble_member_connstr(e, i)) == 0)
            victim = i;
    assert_true(victim >= 0);
    assert_int_equal(tb_ensemble_stop_member(e, victim), 0);
    assert_true(tu_run_until(base, moved_on, &m, 30000));
    p[2] = tb_provider_start(cs, pa);
    assert_non_null(p[2]);
    assert_true(wait_endpoints(c, "ens:echo", 3, 20000));
    tu_run_for(base, 300);
    load_stop(&l);
    load_wait(&l, 30000);
    report("ensemble", &l, "0", c, t0);
    fprintf(stderr, "  moved from %s to %s\n", m.old,
            zoo_get_current_server(mu_registry_zhandle(mu_client_registry(c))));
    assert_int_equal(l.failed, 0);
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
    tb_ensemble_free(e);
}

/* ------------------------------------------------------------ all gone */

/* Both providers of a service are SIGKILLed in the middle of the load. For
 * about a second their znodes stay (sessions of 1 s): connections are
 * refused, calls back off and end with MU_ECONNECT at their deadline
 * (500 ms). Then the znodes go and calls end at once with MU_ENOPROVIDER.
 * New providers start on the same service; once they are seen, no call
 * fails. Bounds: failures other than MU_ECONNECT and MU_ENOPROVIDER <= C
 * (the calls in flight at the kill); no call takes more than deadline_ms +
 * 1 s; 0 failures among the 2,000 calls after the new providers are seen. */
static void test_chaos_all_gone_and_back(void **state)
{
    (void)state;
    tb_provider *p[2] = {provider("gone", "--session-ms", "1000", NULL),
                         provider("gone", "--session-ms", "1000", NULL)};
    assert_non_null(p[0]);
    assert_non_null(p[1]);
    mu_client *c = client(tu_config("timeout_ms", "400", "deadline_ms", "500", "preload",
                                    "gone:echo", NULL));
    assert_true(wait_endpoints(c, "gone:echo", 2, 10000));
    load l;
    unsigned long long t0 = tu_now_ms();
    load_open(&l, c, "gone:echo", 0);
    run_to(&l, 500, 20000);
    int ok_before = l.ended - l.failed;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tb_provider_kill(p[i], SIGKILL), 0);
        tb_provider_free(p[i]);
    }
    /* Refused while the znodes stay, then no provider at all. */
    assert_true(wait_endpoints(c, "gone:echo", 0, 10000));
    tu_run_for(base, 300);
    int econnect = l.by_status[MU_ECONNECT], enoprov = l.by_status[MU_ENOPROVIDER];
    int gone_calls = l.ended;
    for (int i = 0; i < 2; i++) {
        p[i] = provider("gone", NULL);
        assert_non_null(p[i]);
    }
    assert_true(wait_endpoints(c, "gone:echo", 2, 10000));
    /* Calls that started before they were seen may still end either way. */
    run_to(&l, l.started + C_INFLIGHT, 10000);
    int failed_back = l.failed, from = l.ended;
    run_to(&l, from + 2000, 20000);
    load_stop(&l);
    load_wait(&l, 30000);
    int other = l.failed - l.by_status[MU_ECONNECT] - l.by_status[MU_ENOPROVIDER];
    report("all gone", &l, "64 + ECONNECT/ENOPROVIDER while gone", c, t0);
    fprintf(stderr, "  %d ok before, %d ECONNECT and %d ENOPROVIDER while gone (%d calls), "
            "%d other failures, %d failed after back, max latency %llu ms\n",
            ok_before, econnect, enoprov, gone_calls, other, l.failed - failed_back,
            l.max_latency_us / 1000);
    assert_true(econnect + enoprov > 0);
    assert_true(enoprov > 0); /* the empty group fails fast */
    assert_true(other <= C_INFLIGHT);
    assert_true(l.max_latency_us < (500 + 1000) * 1000ull);
    assert_int_equal(l.failed - failed_back, 0);
    mu_client_free(c);
    for (int i = 0; i < 2; i++)
        tb_provider_free(p[i]);
}

/* ------------------------------------------------------------ storm */

typedef struct ticker {
    struct event *ev;
    unsigned long long last_ms, max_gap_ms;
    int ticks;
} ticker;

static void tick(evutil_socket_t fd, short what, void *arg)
{
    ticker *t = arg;
    (void)fd;
    (void)what;
    unsigned long long now = tu_now_ms();
    if (t->ticks++ > 0 && now - t->last_ms > t->max_gap_ms)
        t->max_gap_ms = now - t->last_ms;
    t->last_ms = now;
}

/* A port on 127.0.0.1 where nothing listens (bound, then closed). */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Callbacks that re-issue failing calls at once (load.h's own callback
 * does): 64 chains on a loaded group with no provider (its provider node
 * exists, empty: MU_ENOPROVIDER at once) and 64 on a static provider that
 * refuses (backoff, then MU_ECONNECT at deadline_ms 200). The loop must
 * keep running its timers (a 10 ms timer never waits more than 250 ms), and
 * when the chains stop re-issuing, it all ends. */
static void test_chaos_callback_storm(void **state)
{
    (void)state;
    tb_zkc *z = tb_zkc_open(tb_zk_connstr(zk));
    assert_non_null(z);
    assert_int_equal(tb_zkc_mkdirs(z, "/dubbo/storm/echo/provider"), ZOK);
    char hp[64];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", closed_port());
    mu_client *c = client(tu_config("deadline_ms", "200", "static.refused", hp, "preload",
                                    "storm:echo", NULL));
    assert_true(wait_endpoints(c, "storm:echo", 0, 10000));
    ticker t = {0};
    t.ev = event_new(base, -1, EV_PERSIST, tick, &t);
    assert_non_null(t.ev);
    struct timeval every = {0, 10000};
    assert_int_equal(event_add(t.ev, &every), 0);
    load empty, refused;
    unsigned long long t0 = tu_now_ms();
    load_open(&empty, c, "storm:echo", 0);
    load_open(&refused, c, "refused:echo", 1);
    tu_run_for(base, 1500);
    load_stop(&empty);
    load_stop(&refused);
    load_wait(&empty, 10000);
    load_wait(&refused, 10000);
    unsigned long long ms = tu_now_ms() - t0;
    event_free(t.ev);
    report("storm empty", &empty, "all", c, t0);
    report("storm refuse", &refused, "all", c, t0);
    fprintf(stderr, "  timer: %d ticks in %llu ms, longest gap %llu ms\n", t.ticks, ms,
            t.max_gap_ms);
    assert_true(empty.ended > 1000); /* a storm indeed */
    assert_int_equal(empty.by_status[MU_ENOPROVIDER], empty.ended);
    assert_true(refused.ended >= C_INFLIGHT);
    /* MU_ETIMEDOUT when the deadline falls during a connect attempt */
    assert_int_equal(refused.by_status[MU_ECONNECT] + refused.by_status[MU_ETIMEDOUT],
                     refused.ended);
    assert_true(refused.by_status[MU_ECONNECT] > refused.ended / 2);
    /* A starved timer would wait the whole storm (1.5 s); 250 ms leaves room
     * for a busy 2-core machine (measured: 22 to 56 ms). */
    assert_true(t.ticks >= 1500 / 10 / 2);
    assert_true(t.max_gap_ms <= 250);
    mu_client_free(c);
    assert_int_equal(tb_zkc_delete_tree(z, "/dubbo/storm"), ZOK);
    tb_zkc_close(z);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_chaos_provider_killed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chaos_provider_hangs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chaos_garbage_joins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chaos_drop_mid_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chaos_500s, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chaos_zk_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chaos_session_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chaos_ensemble_member_killed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chaos_all_gone_and_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chaos_callback_storm, setup, teardown),
    };
    if (getenv("MU_TEST_FILTER"))
        cmocka_set_test_filter(getenv("MU_TEST_FILTER"));
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
