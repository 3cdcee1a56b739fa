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

#include <unistd.h>

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


/* ------------------------------------------------------------ ejection */

static unsigned long long ejections(mu_client *c)
{
    mu_client_stats st;
    mu_client_stats_get(c, &st, sizeof st);
    return st.ejections;
}

static downs endpoints_down(mu_client *c, const char *target)
{
    downs d = endpoints(c, target);
    assert_true(d.n >= 0);
    return d;
}

/* When the first ejection and the first revival were logged. */
typedef struct eject_times {
    unsigned long long t0, ejected, revived;
} eject_times;

static void time_ejections(mu_log_level level, const char *msg, void *user)
{
    eject_times *t = user;
    unsigned long long now = tu_now_ms();
    if (!t->ejected && strstr(msg, ": ejected for "))
        t->ejected = now;
    if (t->ejected && !t->revived && strstr(msg, "answering again"))
        t->revived = now;
    tu_log(level, msg, NULL);
}

/* Runs `total` calls at 64 in flight on target; prints the figures, with
 * the time to the first ejection (from the start of the load) and to the
 * first revival (from that ejection). */
static void run_load(load *l, mu_client *c, const char *target, int total, int idempotent,
                     int ms)
{
    eject_times t = {tu_now_ms(), 0, 0};
    mu_client_set_log(c, MU_LOG_DEBUG, time_ejections, &t);
    load_init(l, c, target, total, 64);
    l->idempotent = idempotent;
    load_go(l);
    load_wait(l, ms);
    mu_client_stats st;
    mu_client_stats_get(c, &st, sizeof st);
    char ej[96] = "";
    if (t.ejected)
        snprintf(ej, sizeof ej, "; ejected after %llu ms, revived %s%llu ms later",
                 t.ejected - t.t0, t.revived ? "" : "(not yet) ",
                 t.revived ? t.revived - t.ejected : 0);
    fprintf(stderr, "  %s: %d calls in %llu ms, %d failed (%d refused), %llu attempts, %llu "
            "retries, %llu hedges, %llu ejections%s%s%s\n",
            target, l->ended, tu_now_ms() - t.t0, l->failed, l->refused, l->attempts, st.retries,
            st.hedges, ejections(c), ej, l->failed ? "; first: " : "",
            l->failed ? l->first_failure : "");
    mu_client_set_log(c, MU_LOG_DEBUG, tu_log, NULL);
}

/* One of three providers raises on every call (1.0.2 answers each
 * exception with an OtherError 500): a third of the calls failed. Its error
 * rate, far above its peers', ejects it. */
static void test_error_rate_outlier(void **state)
{
    (void)state;
    tb_provider *p[3] = {provider("rate", NULL), provider("rate", NULL),
                         provider("rate", "--fail-rate", "1", NULL)};
    for (int i = 0; i < 3; i++)
        assert_non_null(p[i]);
    mu_client *c = client(tu_config("policy", "round-robin", NULL));
    load l;
    run_load(&l, c, "rate:echo", 3000, 0, 30000);
    assert_true(ejections(c) >= 1);
    assert_true(l.by_status[MU_EREMOTE] < 3000 / 10); /* was 1,000 */
    downs d = endpoints_down(c, "rate:echo");
    assert_int_equal(d.down, 1);
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

/* Three providers (started with flag, or none) all failing a load of n
 * calls alike with want: nobody is ejected. */
static void alike_eject_nobody(const char *flag, mu_config *cfg, int n, mu_status want)
{
    tb_provider *p[3];
    for (int i = 0; i < 3; i++)
        assert_non_null(p[i] = flag ? provider("alike", flag, "1", NULL) : provider("alike", NULL));
    mu_client *c = client(cfg);
    load l;
    run_load(&l, c, "alike:echo", n, 0, 30000);
    assert_int_equal(l.by_status[want], n);
    assert_int_equal(ejections(c), 0);
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

/* Every provider raises alike (bad input, say): nobody is ejected. */
static void test_errors_alike_eject_nobody(void **state)
{
    (void)state;
    alike_eject_nobody("--fail-rate", tu_config(NULL), 2000, MU_EREMOTE);
}

/* One of two providers accepts and never answers. Round-robin kept
 * sending it half the calls (128 calls completed in 20 s). In-flight age
 * ejects it in about 100 ms; only the calls already on it wait for their
 * timeout. */
static void test_silent_provider(void **state)
{
    (void)state;
    tb_provider *good = provider("silent", NULL), *bad = provider("silent", "--hang", NULL);
    assert_non_null(good);
    assert_non_null(bad);
    mu_client *c = client(tu_config("policy", "round-robin", "timeout_ms", "2000", NULL));
    load l;
    unsigned long long t0 = tu_now_ms();
    run_load(&l, c, "silent:echo", 4000, 0, 20000);
    /* Per ejection, at most the calls in flight on it before it was found
     * out (it is revived after eject_ms and found out again). */
    assert_true(ejections(c) >= 1);
    assert_true((unsigned long long)l.failed <= 64 * ejections(c));
    assert_true(tu_now_ms() - t0 < 15000);
    mu_client_free(c);
    tb_provider_free(good);
    tb_provider_free(bad);
}

/* Garbage bodies (EPROTOCOL) from n of three providers. */
static void garbage_from(int nbad, load *l, downs *d)
{
    tb_provider *p[3];
    for (int i = 0; i < 3; i++) {
        p[i] = i < nbad ? provider("junk", "--garbage", NULL) : provider("junk", NULL);
        assert_non_null(p[i]);
    }
    mu_client *c = client(tu_config("policy", "round-robin", NULL));
    run_load(l, c, "junk:echo", 3000, 0, 30000);
    assert_true(ejections(c) >= 1);
    *d = endpoints_down(c, "junk:echo");
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

/* One of three: eject_after_failures in a row eject it. */
static void test_consecutive_failures(void **state)
{
    (void)state;
    load l;
    downs d;
    garbage_from(1, &l, &d);
    assert_true(l.by_status[MU_EPROTOCOL] < 3000 / 10); /* was 1,000 */
    assert_int_equal(d.down, 1);
}

/* A 4xx is the caller's mistake, not the providers': a client posting to
 * the wrong path (the Django 404 every provider gives) ejects nobody. */
static void test_client_404_ejects_nobody(void **state)
{
    (void)state;
    alike_eject_nobody(NULL, tu_config("policy", "round-robin", "path", "/wrong/", NULL), 300,
                       MU_EHTTP);
}

/* Two of three: at most half of the pool is ejected (max_ejected_percent),
 * so one bad provider stays in use with the good one: panic mode, never
 * none. */
static void test_max_ejected(void **state)
{
    (void)state;
    load l;
    downs d;
    garbage_from(2, &l, &d);
    assert_int_equal(d.down, 1);
    assert_true(l.by_status[MU_EPROTOCOL] < 3000 * 6 / 10); /* was 2,000 */
    assert_true(l.by_status[MU_EPROTOCOL] > 3000 / 4);     /* the other bad one is used */
}

/* ------------------------------------------------------------ retry budget */

/* Every provider hangs; idempotent calls, 50 ms timeout, 2 retries: each
 * call made 3 attempts, tripling the load on a fleet that is already down.
 * The budget allows retries for 20% of calls, plus 10 a second. */
static void test_retry_budget(void **state)
{
    (void)state;
    tb_provider *a = provider("down", "--hang", NULL), *b = provider("down", "--hang", NULL);
    assert_non_null(a);
    assert_non_null(b);
    mu_client *c = client(tu_config("timeout_ms", "50", "retries", "2", NULL));
    load l;
    unsigned long long t0 = tu_now_ms();
    run_load(&l, c, "down:echo", 1000, 1, 60000);
    unsigned long long ms = tu_now_ms() - t0;
    mu_client_stats st;
    mu_client_stats_get(c, &st, sizeof st);
    fprintf(stderr, "  %llu retries, %llu denied in %llu ms\n", st.retries, st.retries_denied, ms);
    assert_int_equal(l.failed, 1000);
    /* 20% of 1,000, the floor for the run's length and the first second's */
    assert_true(st.retries <= 200 + 10 * (ms / 1000 + 2));
    assert_true(st.retries_denied > 0);
    assert_true(strstr(l.first_failure, "retry budget") || l.by_status[MU_ETIMEDOUT] == 1000);
    mu_client_free(c);
    tb_provider_free(a);
    tb_provider_free(b);
}

/* ------------------------------------------------------------ per service */

/* The ejection rules are the call's service's: the same garbage provider
 * is ejected for one service and kept by another that turned ejection off
 * (eject_after_failures.SERVICE, max_ejected_percent.SERVICE). */
static void test_rules_per_service(void **state)
{
    (void)state;
    tb_provider *p[2] = {provider("lax", "--garbage", NULL), provider("lax", NULL)};
    for (int i = 0; i < 2; i++)
        assert_non_null(p[i]);
    mu_client *c = client(tu_config("policy", "round-robin", "eject_after_failures.lax", "1000",
                                    "max_ejected_percent.lax", "0", "timeout_ms.lax", "3000",
                                    NULL));
    load l;
    run_load(&l, c, "lax:echo", 1000, 0, 30000);
    assert_int_equal(ejections(c), 0);
    assert_true(l.by_status[MU_EPROTOCOL] >= 400); /* half, give or take */
    mu_client_free(c);
    c = client(tu_config("policy", "round-robin", NULL));
    run_load(&l, c, "lax:echo", 1000, 0, 30000);
    assert_true(ejections(c) >= 1);
    assert_true(l.by_status[MU_EPROTOCOL] < 100);
    mu_client_free(c);
    for (int i = 0; i < 2; i++)
        tb_provider_free(p[i]);
}

/* ------------------------------------------------------------ slow start */

/* A provider joins a loaded method under load: with slow_start_ms its
 * share of the calls ramps up from 10% instead of jumping to a third. */
static void test_slow_start(void **state)
{
    (void)state;
    tb_provider *a = provider("warm", NULL), *b = provider("warm", NULL);
    assert_non_null(a);
    assert_non_null(b);
    mu_client *c = client(tu_config("policy", "round-robin", "slow_start_ms.warm", "4000", NULL));
    load l;
    load_init(&l, c, "warm:echo", 100000000, 64);
    load_go(&l);
    tu_run_for(base, 300);
    tb_provider *n = provider("warm", NULL);
    assert_non_null(n);
    char ep[32];
    snprintf(ep, sizeof ep, "127.0.0.1:%d", tb_provider_port(n));
    l.watch_ep = ep;
    int ended0 = l.ended;
    tu_run_for(base, 1000);
    int window = l.ended - ended0, hits = l.watch_hits;
    l.total = l.started; /* stop */
    load_wait(&l, 20000);
    fprintf(stderr, "  the new provider served %d of %d calls in its first second (%.1f%%)\n", hits,
            window, 100.0 * hits / (window ? window : 1));
    assert_int_equal(l.failed, 0);
    assert_true(hits > 0);
    assert_true(hits * 100 < window * 20); /* a third without slow start */
    mu_client_free(c);
    tb_provider_free(a);
    tb_provider_free(b);
    tb_provider_free(n);
}

/* ------------------------------------------------------------ hedging */

static unsigned long long hedges(mu_client *c)
{
    mu_client_stats st;
    mu_client_stats_get(c, &st, sizeof st);
    return st.hedges;
}

/* One of two providers answers after 500 ms. Idempotent calls hedged at
 * 20 ms: the first answer wins, so no call waits for the slow one while
 * the budget allows a hedge; the budget caps hedges as it caps retries. */
static void test_hedging(void **state)
{
    (void)state;
    tb_provider *fast = provider("hedge", NULL), *slow = provider("hedge", "--delay-ms", "500", NULL);
    assert_non_null(fast);
    assert_non_null(slow);
    mu_client *c = client(tu_config("policy", "round-robin", "hedge_ms.hedge", "20",
                                    "retry_budget_percent", "1000", NULL));
    load l;
    load_init(&l, c, "hedge:echo", 1000, 64);
    l.idempotent = 1;
    l.slow_us = 450000;
    load_go(&l);
    load_wait(&l, 60000);
    fprintf(stderr, "  ample budget: %d calls, %d failed, %llu hedges, %d took 450 ms or more\n",
            l.ended, l.failed, hedges(c), l.slow);
    assert_int_equal(l.failed, 0);
    assert_true(hedges(c) >= 300); /* half the calls went to the slow one */
    /* About 500 without hedging; a loaded machine delays some hedges too
     * (22 seen with a load average of 7 on 2 cores). */
    assert_true(l.slow <= 50);
    mu_client_free(c);

    /* The default budget: 20% of calls plus 10 a second. */
    c = client(tu_config("policy", "round-robin", "hedge_ms.hedge", "20", NULL));
    unsigned long long t0 = tu_now_ms();
    load_init(&l, c, "hedge:echo", 1000, 64);
    l.idempotent = 1;
    load_go(&l);
    load_wait(&l, 60000);
    unsigned long long secs = (tu_now_ms() - t0) / 1000 + 2;
    fprintf(stderr, "  default budget: %llu hedges in %llu s\n", hedges(c), secs - 2);
    assert_int_equal(l.failed, 0);
    assert_true(hedges(c) > 0);
    assert_true(hedges(c) <= 200 + 10 * secs);
    mu_client_free(c);
    tb_provider_free(fast);
    tb_provider_free(slow);
}

typedef struct once {
    int fired, cancelled;
} once;

static void once_cb(const mu_result *r, void *user)
{
    once *o = user;
    o->fired++;
    o->cancelled += r->status == MU_ECANCELLED;
}

/* Cancelling a hedged call by its id, and freeing the client while pairs
 * race: one callback per call, whichever of the pair holds it. */
static void test_hedge_cancel_and_free(void **state)
{
    (void)state;
    tb_provider *a = provider("hc", "--delay-ms", "300", NULL),
                *b = provider("hc", "--delay-ms", "300", NULL);
    assert_non_null(a);
    assert_non_null(b);
    mu_client *c = client(tu_config("hedge_ms", "10", "retry_budget_percent", "1000",
                                    "preload", "hc:echo", NULL));
    tu_run_for(base, 300);
    enum { N = 64 };
    once o[N];
    mu_call_id ids[N];
    memset(o, 0, sizeof o);
    mu_call_opts opts = MU_CALL_OPTS_INIT;
    opts.idempotent = 1;
    for (int i = 0; i < N; i++)
        assert_int_equal(mu_call(c, "hc:echo", "[1]", NULL, &opts, once_cb, &o[i], &ids[i]), MU_OK);
    tu_run_for(base, 100); /* every call hedged by now */
    assert_true(hedges(c) >= N / 2);
    for (int i = 0; i < N; i += 2) {
        assert_int_equal(mu_call_cancel(c, ids[i]), 1);
        assert_int_equal(o[i].fired, 1);
        assert_int_equal(mu_call_cancel(c, ids[i]), 0); /* stale now */
    }
    tu_run_for(base, 50);
    mu_client_free(c);
    for (int i = 0; i < N; i++) {
        assert_int_equal(o[i].fired, 1);
        assert_int_equal(o[i].cancelled, 1);
    }
    tb_provider_free(a);
    tb_provider_free(b);
}

/* hedge = pNN: the delay follows the method's own latency percentile, once
 * 100 answers are known. 3 fast providers and 1 answering after 500 ms:
 * the median is a fast answer, so calls to the slow one are hedged after
 * a few ms. */
static void test_hedge_percentile(void **state)
{
    (void)state;
    tb_provider *p[4] = {provider("hp", NULL), provider("hp", NULL), provider("hp", NULL),
                         provider("hp", "--delay-ms", "500", NULL)};
    for (int i = 0; i < 4; i++)
        assert_non_null(p[i]);
    mu_client *c = client(tu_config("policy", "round-robin", "hedge.hp", "p50",
                                    "retry_budget_percent", "1000", NULL));
    load l;
    load_init(&l, c, "hp:echo", 2000, 64);
    l.idempotent = 1;
    l.slow_us = 450000;
    load_go(&l);
    load_wait(&l, 60000);
    fprintf(stderr, "  hedge = p50: %d calls, %d failed, %llu hedges, %d took 450 ms or more\n",
            l.ended, l.failed, hedges(c), l.slow);
    assert_int_equal(l.failed, 0);
    assert_true(hedges(c) >= 300);  /* a quarter of the calls went to the slow one */
    assert_true(l.slow <= 150);     /* about 500 without hedging */
    mu_client_free(c);
    for (int i = 0; i < 4; i++)
        tb_provider_free(p[i]);
}

/* ------------------------------------------------------------ response memory */

/* A provider that sends an endless body, next to two good ones: each of
 * its responses may buffer max_response_bytes, and 8 such calls reached
 * 443 MB. max_buffered_bytes bounds what all calls being received hold;
 * the response cut counts as a failure of its provider's, so it is
 * ejected, and the healthy calls go on. */
static void test_endless_bodies(void **state)
{
    (void)state;
    tb_provider *p[3] = {provider("endless", "--endless", NULL), provider("endless", NULL),
                         provider("endless", NULL)};
    for (int i = 0; i < 3; i++)
        assert_non_null(p[i]);
    mu_client *c = client(tu_config("policy", "round-robin", "max_response_bytes", "4194304",
                                    "max_buffered_bytes", "8388608", NULL));
    load l;
    char bad[32];
    snprintf(bad, sizeof bad, "127.0.0.1:%d", tb_provider_port(p[0]));
    load_init(&l, c, "endless:echo", 2000, 64);
    l.watch_ep = bad;
    load_go(&l);
    load_wait(&l, 60000);
    mu_client_stats st;
    mu_client_stats_get(c, &st, sizeof st);
    fprintf(stderr, "  endless bodies: %d calls, %d failed (%d on the endless provider), %llu "
            "ejections; response bytes held at most: %llu (cap 8388608)\n",
            l.ended, l.failed, l.watch_hits, ejections(c), st.response_bytes_peak);
    assert_true(st.response_bytes_peak <= 8388608 + 64 * 65536); /* small ones pass */
    assert_true(st.response_bytes_peak > 4194304);
    assert_true(ejections(c) >= 1);
    assert_int_equal(l.failed, l.by_status[MU_ETOOBIG]);
    assert_true((unsigned long long)l.failed <= 64 * ejections(c));
    assert_int_equal(l.failed, l.watch_hits); /* no healthy answer was cut */
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

/* A 1 MB response header: it was reported as "Out of memory" (libcurl's
 * code for it, with no text). It is a protocol error of the provider's,
 * and the detail says what happened. */
static void test_huge_header(void **state)
{
    (void)state;
    tb_provider *p = provider("hdr", "--header-bytes", "1048576", NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config(NULL));
    tu_outcome o;
    tu_call_sync(base, c, "hdr:echo", "[1]", NULL, &o);
    assert_int_equal(o.status, MU_EPROTOCOL);
    assert_non_null(strstr(o.detail, "response headers over libcurl's limits"));
    mu_client_free(c);
    tb_provider_free(p);
}

/* A 302 to another provider is not followed: the call gets the 302
 * (MU_EHTTP), and the provider it points at sees nothing. */
static void test_redirect_not_followed(void **state)
{
    (void)state;
    tb_provider *target = provider("elsewhere", NULL);
    assert_non_null(target);
    char url[96];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/json/", tb_provider_port(target));
    tb_provider *p = provider("redir", "--redirect", url, NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config(NULL));
    tu_outcome o;
    tu_call_sync(base, c, "redir:echo", "[1]", NULL, &o);
    assert_int_equal(o.status, MU_EHTTP);
    assert_int_equal(o.http_status, 302);
    assert_int_equal(o.attempts, 1);
    mu_client_free(c);
    tb_provider_free(p);
    tb_provider_free(target);
}

/* ------------------------------------------------------------ last-known-good view */

typedef struct stale_seen {
    int n, stale;
} stale_seen;

static void count_stale(const mu_endpoint_info *const *eps, size_t n, void *user)
{
    stale_seen *s = user;
    s->n = (int)n;
    s->stale = 0;
    for (size_t i = 0; i < n; i++)
        s->stale += eps[i]->stale;
}

typedef struct loading {
    mu_client *c;
    const char *target;
} loading;

static int loaded(void *arg)
{
    loading *l = arg;
    stale_seen s = {0, 0};
    return mu_client_endpoints(l->c, l->target, count_stale, &s) == MU_OK && s.n == 1;
}

/* A snapshot file of this test process, named by tag. */
static void snapshot_path(char *file, size_t cap, const char *tag)
{
    snprintf(file, cap, "/tmp/mu-snapshot-%s-%d", tag, (int)getpid());
}

static void write_text(const char *file, const char *text)
{
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void read_text(const char *file, char *text, size_t cap)
{
    FILE *f = fopen(file, "r");
    assert_non_null(f);
    size_t got = fread(text, 1, cap - 1, f);
    text[got] = '\0';
    fclose(f);
}

/* A client with snapshot_file that loads target (one provider) and ends:
 * the file it wrote, in text. */
static void snapshot_of_a_run(const char *file, const char *target, char *text, size_t cap)
{
    loading l = {client(tu_config("snapshot_file", file, "preload", target, NULL)), target};
    mu_client *c = l.c;
    assert_true(tu_run_until(base, loaded, &l, 5000));
    tu_run_for(base, 300); /* the write is 200 ms after the change */
    mu_client_free(c);
    read_text(file, text, cap);
}

/* The view is written to snapshot_file; a client started while ZooKeeper
 * is down serves from it, marked stale, and ZooKeeper's list replaces it
 * once ZooKeeper is back. */
static void test_snapshot_stale_start(void **state)
{
    (void)state;
    char file[64];
    snapshot_path(file, sizeof file, "stale");
    remove(file);
    tb_provider *p = provider("snap", NULL);
    assert_non_null(p);
    char text[4096];
    snapshot_of_a_run(file, "snap:echo", text, sizeof text);
    char ep[32];
    snprintf(ep, sizeof ep, "127.0.0.1:%d", tb_provider_port(p));
    assert_non_null(strstr(text, "/dubbo/snap/echo/provider "));
    assert_non_null(strstr(text, ep));

    assert_int_equal(tb_zk_stop(zk), 0);
    mu_client *c = client(tu_config("snapshot_file", file, "snapshot_stale_after_ms", "200", NULL));
    /* 64 in flight from the start, ZooKeeper down: all served once the
     * snapshot's list is used. */
    load l;
    load_init(&l, c, "snap:echo", 2000, 64);
    load_go(&l);
    load_wait(&l, 20000);
    fprintf(stderr, "  ZooKeeper down at start: %d calls, %d failed, the slowest %llu ms\n",
            l.ended, l.failed, l.max_latency_us / 1000);
    assert_int_equal(l.failed, 0);
    stale_seen s = {0, 0};
    assert_int_equal(mu_client_endpoints(c, "snap:echo", count_stale, &s), MU_OK);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.stale, 1);
    assert_int_equal(tb_zk_restart(zk), 0);
    for (int i = 0; i < 100 && s.stale; i++) {
        tu_run_for(base, 100);
        assert_int_equal(mu_client_endpoints(c, "snap:echo", count_stale, &s), MU_OK);
    }
    assert_int_equal(s.stale, 0); /* ZooKeeper's own list now */
    assert_int_equal(s.n, 1);
    mu_client_free(c);
    tb_provider_free(p);
    remove(file);
}

/* A method this run never calls keeps its line: the snapshot is rewritten
 * when the called one loads, and the rare one must still have its last
 * known providers at the next start without ZooKeeper. */
static void test_snapshot_keeps_unlisted(void **state)
{
    (void)state;
    char file[64];
    snapshot_path(file, sizeof file, "keep");
    write_text(file, "# libmicroutil snapshot 1\n/dubbo/rare/m/provider 127.0.0.1:9\n");
    tb_provider *p = provider("keep", NULL); /* not snap: its last provider may linger */
    assert_non_null(p);
    char text[4096];
    snapshot_of_a_run(file, "keep:echo", text, sizeof text);
    assert_non_null(strstr(text, "/dubbo/keep/echo/provider "));
    assert_non_null(strstr(text, "/dubbo/rare/m/provider 127.0.0.1:9\n"));
    tb_provider_free(p);
    remove(file);
}

/* A bad snapshot file: bad lines are skipped with a warning naming the
 * line; good ones are kept. */
static void test_snapshot_bad_lines(void **state)
{
    (void)state;
    char file[64];
    snapshot_path(file, sizeof file, "bad");
    write_text(file, "# libmicroutil snapshot 1\nnot a line\n/dubbo/x/y/provider 127.0.0.1\n"
                     "/dubbo/x/y/provider 127.0.0.1:1,127.0.0.1:2\n");
    /* ZooKeeper unreachable (a closed port): the good line is used. */
    mu_config *cfg = tu_config("snapshot_file", file, "snapshot_stale_after_ms", "100",
                               "deadline_ms", "800", "log_level", "error", NULL);
    assert_int_equal(mu_config_set(cfg, "zk_hosts", "127.0.0.1:1"), MU_OK);
    mu_client *c = NULL;
    assert_int_equal(mu_client_new(base, cfg, &c), MU_OK);
    mu_config_free(cfg);
    tu_outcome o;
    tu_call_sync(base, c, "x:y", NULL, NULL, &o);
    assert_int_equal(o.status, MU_ECONNECT);
    assert_non_null(strstr(o.detail, "127.0.0.1:1"));
    assert_non_null(strstr(o.detail, "127.0.0.1:2"));
    mu_client_free(c);
    remove(file);
}

/* empty_protection: a method's list that becomes empty while the service's
 * other methods still have providers keeps its last endpoints. */
static void empty_push(const char *key, const char *protection, mu_status want)
{
    tb_provider *p = provider("ep", NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config(key, protection, "preload", "ep:echo,ep:whoami", NULL));
    tu_outcome o;
    tu_call_sync(base, c, "ep:echo", "[1]", NULL, &o);
    assert_int_equal(o.status, MU_OK);
    tb_zkc *z = tb_zkc_open(tb_zk_connstr(zk));
    assert_non_null(z);
    char **names = NULL;
    int n = 0;
    assert_int_equal(tb_zkc_children(z, "/dubbo/ep/echo/provider", &names, &n), 0);
    for (int i = 0; i < n; i++) {
        char path[512];
        snprintf(path, sizeof path, "/dubbo/ep/echo/provider/%s", names[i]);
        assert_int_equal(tb_zkc_delete(z, path), 0);
    }
    tb_strv_free(names, n);
    /* 64 in flight across the empty push: with protection, none fails. */
    load l;
    load_init(&l, c, "ep:echo", 100000000, 64);
    load_go(&l);
    tu_run_for(base, 500); /* the watch fires, the empty list arrives */
    l.total = l.started;
    load_wait(&l, 20000);
    fprintf(stderr, "  empty_protection %s: %d calls across the empty push, %d failed\n",
            protection, l.ended, l.failed);
    if (want == MU_OK)
        assert_int_equal(l.failed, 0);
    else
        assert_true(l.by_status[MU_ENOPROVIDER] > 0);
    tu_call_sync(base, c, "ep:echo", "[1]", NULL, &o);
    assert_int_equal(o.status, want);
    tu_call_sync(base, c, "ep:whoami", NULL, NULL, &o);
    assert_int_equal(o.status, MU_OK);
    tb_zkc_close(z);
    mu_client_free(c);
    tb_provider_free(p);
}

static void test_empty_protection(void **state)
{
    (void)state;
    empty_push("empty_protection", "off", MU_ENOPROVIDER);
    empty_push("empty_protection.ep", "on", MU_OK); /* per service */
}

/* ------------------------------------------------------------ retry backoff */

/* Retries of sent attempts wait a jittered, doubling backoff
 * (connect_backoff_ms), bounded by the deadline. */
static void test_retry_backoff(void **state)
{
    (void)state;
    tb_provider *a = provider("rb", "--garbage", NULL), *b = provider("rb", "--garbage", NULL);
    assert_non_null(a);
    assert_non_null(b);
    mu_client *c = client(tu_config("connect_backoff_ms", "100", "connect_backoff_max_ms", "1000",
                                    "max_ejected_percent", "0", NULL));
    mu_call_opts o = MU_CALL_OPTS_INIT;
    o.idempotent = 1;
    tu_outcome r;
    tu_call_sync(base, c, "rb:echo", "[1]", &o, &r);
    fprintf(stderr, "  3 attempts in %llu ms: %s\n", r.latency_us / 1000, r.detail);
    assert_int_equal(r.status, MU_EPROTOCOL);
    assert_int_equal(r.attempts, 3);
    assert_true(r.latency_us >= 150000); /* 50-100 ms, then 100-200 ms */
    /* A short deadline: the waits shrink to fit; the call ends in time. */
    o.deadline_ms = 120;
    tu_call_sync(base, c, "rb:echo", "[1]", &o, &r);
    fprintf(stderr, "  deadline 120 ms: %d attempts in %llu ms: %s\n", r.attempts,
            r.latency_us / 1000, r.detail);
    assert_true(r.latency_us < 400000);
    assert_true(r.attempts >= 2);
    mu_client_free(c);
    tb_provider_free(a);
    tb_provider_free(b);
}

/* ------------------------------------------------------------ review findings
 * From a hostile review of the fault-tolerance change (each failed before
 * its fix): a hedged call's callback that cancels its own id or frees the
 * client; a racing pair cancelled by id whose callback frees the client; a
 * provider that never answers found by in-flight age while load goes on;
 * a healthy provider's slow method not taken for silence. */
typedef struct rcall {
    mu_client *c;
    mu_call_id id;
    int fired;
    int mode; /* 1: cancel own id in callback; 2: free client in callback */
    int cancel_rc;
    int attempts;
    mu_client **freed;
} rcall;

static void r_cb(const mu_result *r, void *user)
{
    rcall *k = user;
    k->fired++;
        if (k->fired > 1)
        return;
    k->attempts = r->attempts;
    if (r->attempts < 2)
        return; /* only the hedged call */
    if (k->mode == 1)
        k->cancel_rc = mu_call_cancel(k->c, k->id);
    else if (k->mode == 2 && *k->freed) {
        mu_client *c = *k->freed;
        *k->freed = NULL;
        mu_client_free(c);
    }
}

static int all_fired(void *arg)
{
    rcall *k = arg;
    return k[0].fired && k[1].fired;
}

/* A hedge wins; its callback cancels the call's own id. */
static void hedge_winner(int mode)
{
    tb_provider *fast = provider("rv", NULL), *slow = provider("rv", "--delay-ms", "800", NULL);
    assert_non_null(fast);
    assert_non_null(slow);
    mu_client *c = client(tu_config("policy", "round-robin", "hedge_ms", "30",
                                    "retry_budget_percent", "1000", "preload", "rv:echo", NULL));
    tu_run_for(base, 300);
    rcall k[2];
    memset(k, 0, sizeof k);
    mu_client *holder = c;
    mu_call_opts o = MU_CALL_OPTS_INIT;
    o.idempotent = 1;
    for (int i = 0; i < 2; i++) {
        k[i].c = c;
        k[i].mode = mode;
        k[i].freed = &holder;
        assert_int_equal(mu_call(c, "rv:echo", "[1]", NULL, &o, r_cb, &k[i], &k[i].id), MU_OK);
    }
    tu_run_until(base, all_fired, k, 3000);
    tu_run_for(base, 100);
    fprintf(stderr, "  hedges=%llu fired: %d %d; cancel from own callback returned %d/%d\n",
            holder ? hedges(holder) : 0ULL, k[0].fired, k[1].fired, k[0].cancel_rc,
            k[1].cancel_rc);
    if (holder)
        mu_client_free(holder);
    tb_provider_free(fast);
    tb_provider_free(slow);
    assert_int_equal(k[0].fired, 1);
    assert_int_equal(k[1].fired, 1);
}

static void test_hedge_cancel_own_id(void **state)
{
    (void)state;
    hedge_winner(1);
}

static void test_hedge_free_in_callback(void **state)
{
    (void)state;
    hedge_winner(2);
}

/* A racing hedged pair is cancelled by id; the cancel callback frees the
 * client: the hedge is still live during the callback. */
static void race_cb(const mu_result *r, void *user)
{
    rcall *k = user;
    k->fired++;
    (void)r;
    if (k->fired == 1 && k->mode == 2 && *k->freed) {
        mu_client *c = *k->freed;
        *k->freed = NULL;
        mu_client_free(c);
    }
}

static void test_cancel_racing_pair_then_free(void **state)
{
    (void)state;
    tb_provider *a = provider("rw", "--delay-ms", "800", NULL),
                *b = provider("rw", "--delay-ms", "800", NULL);
    assert_non_null(a);
    assert_non_null(b);
    mu_client *c = client(tu_config("hedge_ms", "20", "retry_budget_percent", "1000", "preload",
                                    "rw:echo", NULL));
    tu_run_for(base, 300);
    rcall k;
    memset(&k, 0, sizeof k);
    mu_client *holder = c;
    k.c = c;
    k.mode = 2;
    k.freed = &holder;
    mu_call_opts o = MU_CALL_OPTS_INIT;
    o.idempotent = 1;
    assert_int_equal(mu_call(c, "rw:echo", "[1]", NULL, &o, race_cb, &k, &k.id), MU_OK);
    tu_run_for(base, 100);
    fprintf(stderr, "  hedges=%llu\n", hedges(c));
    assert_int_equal(mu_call_cancel(c, k.id), 1);
    if (holder)
        mu_client_free(holder);
    tb_provider_free(a);
    tb_provider_free(b);
    assert_int_equal(k.fired, 1);
}

/* A provider that accepts and never answers, next to a good one. Design:
 * attempts unanswered 8x past the usual latency (>= 100 ms) count as
 * failures before their timeout. Load goes on for 1.5 s with timeout 4 s. */
static int n_done;
static void cnt_cb(const mu_result *r, void *user)
{
    (void)r;
    (void)user;
    n_done++;
}

static void test_blackhole_not_watched(void **state)
{
    (void)state;
    tb_provider *good = provider("bh", NULL), *bad = provider("bh", "--hang", NULL);
    assert_non_null(good);
    assert_non_null(bad);
    mu_client *c = client(tu_config("policy", "round-robin", "timeout_ms", "4000",
                                    "deadline_ms", "6000", "preload", "bh:echo", NULL));
    tu_run_for(base, 300);
    n_done = 0;
    mu_call_opts o = MU_CALL_OPTS_INIT;
    for (int i = 0; i < 300; i++) {
        assert_int_equal(mu_call(c, "bh:echo", "[1]", NULL, &o, cnt_cb, NULL, NULL), MU_OK);
        tu_run_for(base, 5);
    }
    unsigned long long ej = ejections(c);
    fprintf(stderr, "  after 1.5 s of load (timeout 4 s): %llu ejections, %d calls ended\n", ej,
            n_done);
    mu_client_free(c);
    tb_provider_free(good);
    tb_provider_free(bad);
    assert_true(ej >= 1);
}

/* A healthy provider with a fast and a slow method: a burst of slow calls
 * with no other answer in between counts as 'silent' and ejects it. */
static void test_slow_method_false_ejection(void **state)
{
    (void)state;
    tb_provider *p = provider("sm", NULL), *q = provider("sm", NULL);
    assert_non_null(p);
    assert_non_null(q);
    mu_client *c = client(tu_config("policy", "round-robin", "timeout_ms", "5000", "preload",
                                    "sm:echo,sm:slow", NULL));
    tu_run_for(base, 300);
    n_done = 0;
    mu_call_opts o = MU_CALL_OPTS_INIT;
    /* Prime: a slow call and fast calls in flight together, so that an
     * answer arms the watch while the slow one is in flight. */
    for (int i = 0; i < 2; i++)
        assert_int_equal(mu_call(c, "sm:slow", "[1500]", NULL, &o, cnt_cb, NULL, NULL), MU_OK);
    for (int i = 0; i < 2; i++)
        assert_int_equal(mu_call(c, "sm:echo", "[1]", NULL, &o, cnt_cb, NULL, NULL), MU_OK);
    tu_run_for(base, 30);
    /* The batch job: 20 slow calls, 750 ms each; the provider is healthy. */
    for (int i = 0; i < 20; i++)
        assert_int_equal(mu_call(c, "sm:slow", "[750]", NULL, &o, cnt_cb, NULL, NULL), MU_OK);
    tu_run_for(base, 600);
    unsigned long long ej = ejections(c);
    fprintf(stderr, "  healthy providers, slow method: %llu ejections within 600 ms\n", ej);
    tu_run_for(base, 2000);
    mu_client_free(c);
    tb_provider_free(p);
    tb_provider_free(q);
    assert_int_equal(ej, 0);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_rate_outlier, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_alike_eject_nobody, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_provider, setup, teardown),
        cmocka_unit_test_setup_teardown(test_consecutive_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_ejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_404_ejects_nobody, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_endless_bodies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_huge_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redirect_not_followed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rules_per_service, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hedging, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hedge_cancel_and_free, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hedge_percentile, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_stale_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_bad_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_keeps_unlisted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_protection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hedge_cancel_own_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hedge_free_in_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_racing_pair_then_free, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blackhole_not_watched, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_method_false_ejection, setup, teardown),
    };
    if (getenv("MU_TEST_FILTER"))
        cmocka_set_test_filter(getenv("MU_TEST_FILTER"));
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
