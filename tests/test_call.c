/* Calls end to end: real ZooKeeper, real test providers. Balancing,
 * concurrency, timeouts, retries, cancellation and misuse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <yajl/yajl_tree.h>
#include <microutil/microutil_yajl.h>
#include <signal.h>

#include "fixture.h"

/* Providers of a service of their own per test, so tests do not mix. */
static tb_provider *start(const char *svc, const char *extra1, const char *extra2)
{
    const char *args[8] = {"--service", svc, NULL};
    int n = 2;
    if (extra1) {
        const char *sp = strchr(extra1, ' ');
        /* "--flag value" pairs are given as one string for brevity */
        static char a[4][64];
        static int ai;
        if (sp) {
            snprintf(a[ai % 4], sizeof a[0], "%.*s", (int)(sp - extra1), extra1);
            args[n++] = a[ai++ % 4];
            args[n++] = sp + 1;
        } else
            args[n++] = extra1;
    }
    if (extra2)
        args[n++] = extra2;
    args[n] = NULL;
    return tb_provider_start(tb_zk_connstr(zk), args);
}


/* ------------------------------------------------------------ distribution */

typedef struct tally {
    int done, ok;
    char ports[8][16];
    int counts[8];
    int n;
    mu_status last;
    char detail[300];
} tally;

static void tally_cb(const mu_result *r, void *user)
{
    tally *t = user;
    t->done++;
    t->last = r->status;
    if (r->status != MU_OK) {
        snprintf(t->detail, sizeof t->detail, "%s", r->detail);
        return;
    }
    t->ok++;
    for (int i = 0; i < t->n; i++) {
        if ((size_t)r->result_len == strlen(t->ports[i]) && memcmp(r->result, t->ports[i], r->result_len) == 0) {
            t->counts[i]++;
            return;
        }
    }
    if (t->n < 8) {
        snprintf(t->ports[t->n], sizeof t->ports[0], "%.*s", (int)r->result_len, r->result);
        t->counts[t->n++] = 1;
    }
}

typedef struct loadgen {
    mu_client *c;
    const char *target;
    const char *policy;
    int total, started, inflight, window;
    tally t;
} loadgen;

static void lg_done(const mu_result *r, void *user);

static void lg_fill(loadgen *g)
{
    while (g->inflight < g->window && g->started < g->total) {
        mu_call_opts o = MU_CALL_OPTS_INIT;
        o.policy = g->policy;
        assert_int_equal(mu_call(g->c, g->target, NULL, NULL, &o, lg_done, g, NULL), MU_OK);
        g->started++;
        g->inflight++;
    }
}

static void lg_done(const mu_result *r, void *user)
{
    loadgen *g = user;
    g->inflight--;
    tally_cb(r, &g->t);
    lg_fill(g);
}

static int lg_finished(void *arg)
{
    loadgen *g = arg;
    return g->t.done == g->total;
}

static void run_load(loadgen *g, mu_client *c, const char *target, const char *policy, int total,
                     int window)
{
    memset(g, 0, sizeof *g);
    g->c = c;
    g->target = target;
    g->policy = policy;
    g->total = total;
    g->window = window;
    lg_fill(g);
    assert_true(tu_run_until(base, lg_finished, g, 60000));
    if (g->t.ok != total)
        fail_msg("%d of %d failed: %s", total - g->t.ok, total, g->t.detail);
}

static void test_round_robin_exact(void **state)
{
    (void)state;
    tb_provider *p[3];
    for (int i = 0; i < 3; i++)
        assert_non_null(p[i] = start("rr", NULL, NULL));
    mu_client *c = client(tu_config("policy", "round-robin", NULL));
    tu_outcome o;
    tu_call_sync(base, c, "rr:whoami", NULL, NULL, &o); /* load the view */
    assert_int_equal(o.status, MU_OK);
    loadgen g;
    run_load(&g, c, "rr:whoami", NULL, 300, 1);
    assert_int_equal(g.t.n, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(g.t.counts[i], 100);
    /* Concurrency does not change round-robin's evenness. */
    run_load(&g, c, "rr:whoami", NULL, 600, 30);
    for (int i = 0; i < 3; i++)
        assert_int_equal(g.t.counts[i], 200);
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

static void test_random_within_bounds(void **state)
{
    (void)state;
    tb_provider *p[3];
    for (int i = 0; i < 3; i++)
        assert_non_null(p[i] = start("rnd", NULL, NULL));
    mu_client *c = client(tu_config("policy.rnd", "random", NULL));
    tu_outcome o;
    tu_call_sync(base, c, "rnd:whoami", NULL, NULL, &o);
    loadgen g;
    run_load(&g, c, "rnd:whoami", NULL, 3000, 20);
    assert_int_equal(g.t.n, 3);
    /* Binomial(3000, 1/3): sd ~ 25.8; allow 5 sd. */
    for (int i = 0; i < 3; i++)
        assert_true(fabs(g.t.counts[i] - 1000.0) < 130.0);
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

/* The default policy (ewma) must not favour a provider because it fails
 * fast: 1.0.2 answers every exception at once with OtherError 500. */
static void test_fast_failures_draw_no_traffic(void **state)
{
    (void)state;
    tb_provider *p[3];
    assert_non_null(p[0] = start("ff", "--delay-ms 1", NULL));
    assert_non_null(p[1] = start("ff", "--delay-ms 1", NULL));
    assert_non_null(p[2] = start("ff", "--fail-rate 1", NULL));
    mu_client *c = client(tu_config(NULL));
    tu_outcome o;
    int failed = 0;
    for (int i = 0; i < 300; i++) {
        tu_call_sync(base, c, "ff:echo", NULL, NULL, &o);
        failed += o.status != MU_OK;
    }
    fprintf(stderr, "  %d of 300 calls went to the provider failing everything\n", failed);
    assert_true(failed < 30); /* round-robin: 100; before failures counted as slow: ~300 */
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

/* hash: calls with one key go to one provider; keys spread. */
static void test_hash_key_sticks(void **state)
{
    (void)state;
    tb_provider *p[3];
    for (int i = 0; i < 3; i++)
        assert_non_null(p[i] = start("hsh", NULL, NULL));
    mu_client *c = client(tu_config("policy.hsh", "hash", NULL));
    tu_outcome o;
    mu_call_opts opts = MU_CALL_OPTS_INIT;
    char first[72] = "", key[32];
    int same = 0;
    opts.hash_key = "user-42";
    for (int i = 0; i < 20; i++) {
        tu_call_sync(base, c, "hsh:whoami", NULL, &opts, &o);
        assert_int_equal(o.status, MU_OK);
        if (!first[0])
            snprintf(first, sizeof first, "%s", o.endpoint);
        same += strcmp(first, o.endpoint) == 0;
    }
    assert_int_equal(same, 20);
    int hits[3] = {0};
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof key, "user-%d", i);
        opts.hash_key = key;
        tu_call_sync(base, c, "hsh:whoami", NULL, &opts, &o);
        for (int j = 0; j < 3; j++) {
            char ep[32];
            snprintf(ep, sizeof ep, "127.0.0.1:%d", tb_provider_port(p[j]));
            hits[j] += strcmp(ep, o.endpoint) == 0;
        }
    }
    for (int j = 0; j < 3; j++)
        assert_true(hits[j] > 40); /* every provider owns a share of the keys */
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

static void test_least_pending_avoids_slow(void **state)
{
    (void)state;
    tb_provider *fast1 = start("lp", NULL, NULL), *fast2 = start("lp", NULL, NULL);
    tb_provider *slow = start("lp", "--delay-ms 300", NULL);
    assert_non_null(fast1);
    assert_non_null(fast2);
    assert_non_null(slow);
    /* Round-robin by configuration, least-pending per call: the override
     * is what keeps the slow one nearly idle (round-robin would give it 1/3). */
    mu_client *c = client(tu_config("policy", "round-robin", NULL));
    tu_outcome o;
    tu_call_sync(base, c, "lp:whoami", NULL, NULL, &o);
    loadgen g;
    run_load(&g, c, "lp:whoami", "least-pending", 2000, 16);
    char slow_port[16];
    snprintf(slow_port, sizeof slow_port, "%d", tb_provider_port(slow));
    int slow_n = 0;
    for (int i = 0; i < g.t.n; i++)
        if (strcmp(g.t.ports[i], slow_port) == 0)
            slow_n = g.t.counts[i];
    print_message("least-pending: slow provider got %d of 2000\n", slow_n);
    assert_true(slow_n < 2000 / 50); /* under 2% */
    mu_client_free(c);
    tb_provider_free(fast1);
    tb_provider_free(fast2);
    tb_provider_free(slow);
}

/* --------------------------------------------------------- 10k concurrent */

typedef struct echo_run {
    mu_client *c;
    int total, started, inflight, window, done, ok, mismatched, dup;
    unsigned char *seen;
} echo_run;

static void echo_done(const mu_result *r, void *user);

static void echo_fill(echo_run *e)
{
    while (e->inflight < e->window && e->started < e->total) {
        char args[64];
        snprintf(args, sizeof args, "[%d]", e->started);
        intptr_t tag = e->started;
        /* The user pointer carries the call's own id: result must match it. */
        struct pair {
            echo_run *e;
            intptr_t id;
        } *pp = malloc(sizeof *pp);
        pp->e = e;
        pp->id = tag;
        assert_int_equal(mu_call(e->c, "many:echo", args, NULL, NULL, echo_done, pp, NULL), MU_OK);
        e->started++;
        e->inflight++;
    }
}

static void echo_done(const mu_result *r, void *user)
{
    struct pair {
        echo_run *e;
        intptr_t id;
    } *pp = user;
    echo_run *e = pp->e;
    e->inflight--;
    e->done++;
    if (e->seen[pp->id]++)
        e->dup++;
    char want[64];
    snprintf(want, sizeof want, "{\"args\": [%d], \"kwargs\": {}}", (int)pp->id);
    if (r->status == MU_OK) {
        e->ok++;
        if (r->result_len != strlen(want) || memcmp(r->result, want, r->result_len) != 0)
            e->mismatched++;
    }
    free(pp);
    echo_fill(e);
}

static int echo_finished(void *arg)
{
    echo_run *e = arg;
    return e->done == e->total;
}

static void test_10000_calls_500_in_flight(void **state)
{
    (void)state;
    tb_provider *p[3];
    for (int i = 0; i < 3; i++)
        assert_non_null(p[i] = start("many", NULL, NULL));
    mu_client *c = client(tu_config("policy", "least-pending", NULL));
    echo_run e = {c, 10000, 0, 0, 500, 0, 0, 0, 0, NULL};
    e.seen = calloc(10000, 1);
    echo_fill(&e);
    assert_true(tu_run_until(base, echo_finished, &e, 120000));
    tu_run_for(base, 50); /* a second callback for any call would show now */
    assert_int_equal(e.done, 10000);
    assert_int_equal(e.dup, 0);
    assert_int_equal(e.ok, 10000);
    assert_int_equal(e.mismatched, 0);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(e.seen[i], 1);
    mu_client_stats st;
    mu_client_stats_get(c, &st, sizeof st);
    print_message("10000 calls, 500 in flight: %llu connections opened\n", st.connections);
    assert_true(st.connections <= 3 * 32 + 10); /* keep-alive, capped per host */
    free(e.seen);
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

/* ----------------------------------------------------- timeouts, retries */

static void test_hang_times_out(void **state)
{
    (void)state;
    tb_provider *h = start("hang", "--hang", NULL);
    assert_non_null(h);
    mu_client *c = client(tu_config("timeout_ms", "300", "retries", "0", NULL));
    tu_outcome o;
    unsigned long long t0 = tu_now_ms();
    tu_call_sync(base, c, "hang:echo", NULL, NULL, &o);
    unsigned long long ms = tu_now_ms() - t0;
    assert_int_equal(o.status, MU_ETIMEDOUT);
    assert_int_equal(o.attempts, 1);
    assert_true(ms >= 290 && ms < 3000);

    /* The deadline caps all attempts, even idempotent retries. */
    mu_call_opts opt = MU_CALL_OPTS_INIT;
    opt.timeout_ms = 400;
    opt.retries = 5;
    opt.deadline_ms = 700;
    opt.idempotent = 1;
    t0 = tu_now_ms();
    tu_call_sync(base, c, "hang:echo", NULL, &opt, &o);
    ms = tu_now_ms() - t0;
    assert_int_equal(o.status, MU_ETIMEDOUT);
    assert_int_equal(o.attempts, 2);
    assert_true(ms >= 690 && ms < 3000);
    mu_client_free(c);
    tb_provider_free(h);
}

static void test_idempotent_only_retries_timeouts(void **state)
{
    (void)state;
    tb_provider *h = start("idem", "--hang", NULL), *ok = start("idem", NULL, NULL);
    assert_non_null(h);
    assert_non_null(ok);
    char hang_ep[32];
    snprintf(hang_ep, sizeof hang_ep, "127.0.0.1:%d", tb_provider_port(h));
    /* Round-robin and no ejection keep sending calls to the hanging
     * provider (ewma, or in-flight age, would soon avoid it): this is
     * about retries, not balancing. */
    mu_client *c = client(tu_config("timeout_ms", "300", "idempotent", "idem:whoami", "policy",
                                    "round-robin", "max_ejected_percent", "0", NULL));
    tu_outcome o;
    int non_idem_timeouts = 0, idem_retried = 0;
    for (int i = 0; i < 6; i++) {
        /* Not idempotent: a timeout is final, attempts == 1. */
        tu_call_sync(base, c, "idem:echo", NULL, NULL, &o);
        if (o.status == MU_ETIMEDOUT) {
            assert_int_equal(o.attempts, 1);
            assert_string_equal(o.endpoint, hang_ep);
            assert_non_null(strstr(o.detail, "not idempotent"));
            non_idem_timeouts++;
        } else
            assert_int_equal(o.status, MU_OK);
        /* Idempotent by configuration: retried on the other provider. */
        tu_call_sync(base, c, "idem:whoami", NULL, NULL, &o);
        assert_int_equal(o.status, MU_OK);
        if (o.attempts == 2)
            idem_retried++;
    }
    assert_true(non_idem_timeouts >= 2);
    assert_true(idem_retried >= 2);
    mu_client_free(c);
    tb_provider_free(h);
    tb_provider_free(ok);
}

static void test_killed_provider_costs_no_failure(void **state)
{
    (void)state;
    tb_provider *p[3];
    for (int i = 0; i < 3; i++)
        assert_non_null(p[i] = start("kill", "--session-ms 30000", NULL));
    /* Ejected for longer than the 60 calls take, however slow the machine. */
    /* Round-robin: the dead one is sure to be picked (ewma may never pick
     * it in 60 calls, having seen it slow). */
    mu_client *c = client(tu_config("eject_ms", "10000", "policy", "round-robin", NULL));
    tu_outcome o;
    tu_call_sync(base, c, "kill:whoami", NULL, NULL, &o);
    assert_int_equal(o.status, MU_OK);
    /* Crash: the znode stays for the session timeout. */
    tb_provider_kill(p[0], SIGKILL);
    int retried = 0;
    for (int i = 0; i < 60; i++) {
        tu_call_sync(base, c, "kill:echo", "[1]", NULL, &o);
        if (o.status != MU_OK)
            fail_msg("call %d failed: %s", i, o.detail);
        if (o.attempts == 2)
            retried++;
    }
    /* The first pick of the dead one is retried; then it is ejected. */
    assert_true(retried >= 1 && retried <= 3);
    mu_client_free(c);
    for (int i = 0; i < 3; i++)
        tb_provider_free(p[i]);
}

static void parse_cb(const mu_result *r, void *user)
{
    int *ok = user;
    char err[128];
    yajl_val v = mu_result_parse(r, err, sizeof err);
    const char *path[] = {"kwargs", "k", NULL};
    yajl_val k = v ? yajl_tree_get(v, path, yajl_t_string) : NULL;
    const char *text = k ? YAJL_GET_STRING(k) : NULL;
    *ok = text && strcmp(text, "v") == 0 ? 1 : -1;
    yajl_tree_free(v);
}

static int parsed(void *arg)
{
    return *(int *)arg != 0;
}

static void test_result_parse(void **state)
{
    (void)state;
    tb_provider *p = start("tree", NULL, NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config(NULL));
    int ok = 0;
    assert_int_equal(mu_call(c, "tree:echo", "[1]", "{\"k\": \"v\"}", NULL, parse_cb, &ok, NULL), MU_OK);
    assert_true(tu_run_until(base, parsed, &ok, 10000));
    assert_int_equal(ok, 1);
    mu_client_free(c);
    tb_provider_free(p);
}

/* A result nested deeper than MU_RESULT_MAX_DEPTH is refused with a clean
 * error; 300,000 levels crashed yajl_tree's recursion before. Brackets in
 * strings do not count. */
static void test_result_parse_depth(void **state)
{
    (void)state;
    size_t deep = 300000;
    char *text = malloc(2 * deep + 1);
    assert_non_null(text);
    memset(text, '[', deep);
    memset(text + deep, ']', deep);
    text[2 * deep] = '\0';
    mu_result r = {.status = MU_OK, .result = text, .result_len = 2 * deep, .detail = ""};
    char err[128] = "";
    assert_null(mu_result_parse(&r, err, sizeof err));
    assert_non_null(strstr(err, "deeper than 512"));
    /* 512 levels parse; brackets inside strings are text. */
    snprintf(text, 2 * deep + 1, "%s", "");
    size_t n = 0;
    for (int i = 0; i < MU_RESULT_MAX_DEPTH; i++)
        text[n++] = '[';
    n += (size_t)sprintf(text + n, "\"[[[[\\\"[[\"");
    for (int i = 0; i < MU_RESULT_MAX_DEPTH; i++)
        text[n++] = ']';
    text[n] = '\0';
    r.result_len = n;
    yajl_val v = mu_result_parse(&r, err, sizeof err);
    assert_non_null(v);
    yajl_tree_free(v);
    free(text);
}

static void test_remote_errors(void **state)
{
    (void)state;
    tb_provider *p = start("err", NULL, NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config(NULL));
    tu_outcome o;
    tu_call_sync(base, c, "err:fail", "[\"boom\"]", NULL, &o);
    assert_int_equal(o.status, MU_EREMOTE);
    assert_string_equal(o.error_name, "OtherError");
    assert_int_equal(o.error_code, 500);
    assert_int_equal(o.http_status, 500);
    assert_int_equal(o.attempts, 1); /* never retried */
    tb_provider *q = start("err", "--methods whoami", NULL); /* only to register no_such */
    (void)q;
    tu_call_sync(base, c, "err:nothing", NULL, NULL, &o);
    assert_int_equal(o.status, MU_OK);
    assert_string_equal(o.result, "null");
    mu_client_free(c);
    tb_provider_free(q);
    tb_provider_free(p);
}

static void test_bad_responses(void **state)
{
    (void)state;
    tb_provider *g = start("garb", "--garbage", NULL);
    assert_non_null(g);
    mu_client *c = client(tu_config(NULL));
    tu_outcome o;
    tu_call_sync(base, c, "garb:echo", NULL, NULL, &o);
    assert_int_equal(o.status, MU_EPROTOCOL);
    assert_non_null(strstr(o.detail, "127.0.0.1:"));
    tb_provider *d = start("drop", "--drop-rate 1", NULL);
    assert_non_null(d);
    tu_call_sync(base, c, "drop:echo", NULL, NULL, &o);
    assert_int_equal(o.status, MU_ETRANSPORT);
    assert_int_equal(o.attempts, 1); /* not idempotent */
    /* Other calls are not disturbed. */
    tb_provider *ok = start("fine", NULL, NULL);
    tu_call_sync(base, c, "fine:echo", "[2]", NULL, &o);
    assert_int_equal(o.status, MU_OK);
    mu_client_free(c);
    tb_provider_free(ok);
    tb_provider_free(d);
    tb_provider_free(g);
}

/* Attempts beyond max_connections_per_host wait in the SDK's own queue, in
 * order; the deadline covers that wait, and a queued call can be cancelled. */
typedef struct ordered {
    int order[16];
    int n;
} ordered;

typedef struct slot {
    ordered *o;
    int id;
    tu_outcome out;
} slot;

static void slot_cb(const mu_result *r, void *user)
{
    slot *sl = user;
    tu_record(r, &sl->out);
    sl->o->order[sl->o->n++] = sl->id;
}

static int all_fired(void *arg)
{
    slot *sl = arg;
    for (int i = 0; i < 8; i++)
        if (!sl[i].out.fired)
            return 0;
    return 1;
}

static void test_per_endpoint_queue(void **state)
{
    (void)state;
    tb_provider *p = start("q", "--delay-ms 100", NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config("max_connections_per_host", "2", NULL));
    tu_outcome o;
    tu_call_sync(base, c, "q:echo", NULL, NULL, &o);
    assert_int_equal(o.status, MU_OK);

    ordered ord = {{0}, 0};
    slot s[10];
    memset(s, 0, sizeof s);
    mu_call_id h9 = 0;
    for (int i = 0; i < 10; i++) {
        s[i].o = &ord;
        s[i].id = i;
        mu_call_opts opt = MU_CALL_OPTS_INIT;
        if (i == 8)
            opt.deadline_ms = 150; /* behind 8 others on 2 connections: cannot start in time */
        assert_int_equal(mu_call(c, "q:echo", NULL, NULL, &opt, slot_cb, &s[i], i == 9 ? &h9 : NULL),
                         MU_OK);
    }
    assert_int_equal(mu_call_cancel(c, h9), 1); /* queued: ends at once */
    assert_int_equal(s[9].out.status, MU_ECANCELLED);
    assert_true(tu_run_until(base, all_fired, s, 10000));
    tu_run_for(base, 200);
    for (int i = 0; i < 8; i++)
        assert_int_equal(s[i].out.status, MU_OK);
    assert_int_equal(s[8].out.fired, 1);
    assert_int_equal(s[8].out.status, MU_ETIMEDOUT);
    assert_non_null(strstr(s[8].out.detail, "waited for a connection"));
    /* First in, first out: pairs of calls finish in the order they came. */
    int pos[10];
    for (int i = 0; i < ord.n; i++)
        pos[ord.order[i]] = i;
    for (int i = 0; i + 2 < 8; i++)
        assert_true(pos[i] < pos[i + 2]);
    mu_client_stats st;
    mu_client_stats_get(c, &st, sizeof st);
    assert_true(st.connections <= 2);
    mu_client_free(c);
    tb_provider_free(p);
}

static void test_response_size_cap(void **state)
{
    (void)state;
    tb_provider *p = start("cap", NULL, NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config("max_response_bytes", "4096", NULL));
    tu_outcome o;
    /* 3000 bytes: under the cap, sent uncompressed. */
    tu_call_sync(base, c, "cap:big", "[3000]", NULL, &o);
    assert_int_equal(o.status, MU_OK);
    /* 100000 bytes: the LZ4 body is small, but its declared size is over
     * the cap, so it is refused before anything is allocated for it. */
    tu_call_sync(base, c, "cap:big", "[100000]", NULL, &o);
    assert_int_equal(o.status, MU_ETOOBIG);
    assert_non_null(strstr(o.detail, "over the cap"));
    assert_int_equal(o.attempts, 1);
    /* The client goes on working. */
    tu_call_sync(base, c, "cap:echo", "[1]", NULL, &o);
    assert_int_equal(o.status, MU_OK);
    mu_client_free(c);
    tb_provider_free(p);
}

static void test_protocol_variants(void **state)
{
    (void)state;
    tb_provider *a = start("auth", "--auth s3cret", "--path=/jsonp/");
    tb_provider *j = start("jp", "--path /jsonp/", NULL);
    assert_non_null(a);
    assert_non_null(j);
    mu_client *c = client(tu_config("protocol", "1.0.4", "auth_token", "s3cret", NULL));
    tu_outcome o;
    tu_call_sync(base, c, "auth:echo", "[\"t\"]", NULL, &o);
    assert_int_equal(o.status, MU_OK);
    mu_client_free(c);
    c = client(tu_config("protocol", "1.0.4", "auth_token", "wrong", NULL));
    tu_call_sync(base, c, "auth:echo", NULL, NULL, &o);
    assert_int_equal(o.status, MU_EAUTH);
    assert_int_equal(o.http_status, 401);
    mu_client_free(c);
    c = client(tu_config("protocol", "1.0.3", NULL));
    tu_call_sync(base, c, "jp:echo", NULL, NULL, &o);
    assert_int_equal(o.status, MU_OK);
    mu_client_free(c);
    tb_provider_free(a);
    tb_provider_free(j);
}

/* ------------------------------------------------- cancel, free, misuse */

static void test_cancel_and_free(void **state)
{
    (void)state;
    tb_provider *s = start("slowc", "--delay-ms 500", NULL);
    assert_non_null(s);
    mu_client *c = client(tu_config(NULL));
    tu_outcome warm;
    tu_call_sync(base, c, "slowc:echo", NULL, NULL, &warm);
    assert_int_equal(warm.status, MU_OK);

    /* Cancel: the callback fires at once with MU_ECANCELLED, and only once. */
    tu_outcome o = {0};
    mu_call_id h = 0;
    assert_int_equal(mu_call(c, "slowc:echo", NULL, NULL, NULL, tu_record, &o, &h), MU_OK);
    tu_run_for(base, 50);
    assert_int_equal(o.fired, 0);
    assert_int_equal(mu_call_cancel(c, h), 1);
    assert_int_equal(o.fired, 1);
    /* Cancelling it again, after its callback ran, does nothing, though the
     * next call reuses its call object. */
    tu_outcome o2 = {0};
    mu_call_id h2 = 0;
    assert_int_equal(mu_call(c, "slowc:echo", NULL, NULL, NULL, tu_record, &o2, &h2), MU_OK);
    assert_true(h2 != h);
    assert_int_equal(mu_call_cancel(c, h), 0);
    assert_int_equal(o.fired, 1);
    assert_int_equal(o2.fired, 0);
    assert_true(tu_run_until(base, tu_fired, &o2, 5000));
    assert_int_equal(o2.status, MU_OK);
    assert_int_equal(mu_call_cancel(c, h2), 0);
    assert_int_equal(o.status, MU_ECANCELLED);
    tu_run_for(base, 700);
    assert_int_equal(o.fired, 1);

    /* Free with calls in flight: each fires once with MU_ECANCELLED, also
     * one whose outcome (no provider node) is known but not delivered. */
    tu_outcome many[20], known = {0};
    memset(many, 0, sizeof many);
    for (int i = 0; i < 20; i++)
        assert_int_equal(mu_call(c, "slowc:echo", NULL, NULL, NULL, tu_record, &many[i], NULL), MU_OK);
    tu_run_for(base, 50);
    tu_call_sync(base, c, "slowc:no_node", NULL, NULL, &known); /* loads: no node */
    assert_int_equal(known.status, MU_ENOPROVIDER);
    memset(&known, 0, sizeof known);
    assert_int_equal(mu_call(c, "slowc:no_node", NULL, NULL, NULL, tu_record, &known, NULL), MU_OK);
    mu_client_free(c);
    assert_int_equal(known.fired, 1);
    assert_int_equal(known.status, MU_ECANCELLED);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(many[i].fired, 1);
        assert_int_equal(many[i].status, MU_ECANCELLED);
    }
    tb_provider_free(s);
}

typedef struct freer {
    mu_client *c;
    int fired;
    tu_outcome others[5];
} freer;

static void free_inside(const mu_result *r, void *user)
{
    freer *f = user;
    (void)r;
    f->fired++;
    mu_client_free(f->c); /* from inside a callback */
}

static void test_free_from_callback(void **state)
{
    (void)state;
    tb_provider *p = start("fic", NULL, NULL), *s = start("ficslow", "--delay-ms 2000", NULL);
    assert_non_null(p);
    assert_non_null(s);
    mu_client *c = client(tu_config(NULL));
    freer f;
    memset(&f, 0, sizeof f);
    f.c = c;
    for (int i = 0; i < 5; i++)
        assert_int_equal(mu_call(c, "ficslow:echo", NULL, NULL, NULL, tu_record, &f.others[i], NULL),
                         MU_OK);
    assert_int_equal(mu_call(c, "fic:echo", NULL, NULL, NULL, free_inside, &f, NULL), MU_OK);
    tu_run_for(base, 1000);
    assert_int_equal(f.fired, 1);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(f.others[i].fired, 1);
        assert_int_equal(f.others[i].status, MU_ECANCELLED);
    }
    tu_run_for(base, 100); /* nothing of the client may fire any more */
    tb_provider_free(p);
    tb_provider_free(s);
}

/* The ABI can grow: the caller's size bounds what the library writes. */
static void test_abi(void **state)
{
    (void)state;
    assert_string_equal(mu_version(), MU_VERSION_STRING);
    assert_int_equal(mu_version_num(), MU_VERSION_NUM);
    mu_client *c = client(tu_config(NULL));
    unsigned char buf[sizeof(mu_client_stats) + 16];
    memset(buf, 0xab, sizeof buf);
    size_t old = offsetof(mu_client_stats, calls_started); /* an older, shorter struct */
    mu_client_stats_get(c, (mu_client_stats *)(void *)buf, old);
    for (size_t i = old; i < sizeof buf; i++)
        assert_int_equal(buf[i], 0xab);
    mu_client_stats full;
    memset(&full, 0xab, sizeof full);
    mu_client_stats_get(c, &full, sizeof full);
    assert_int_equal(full.calls_started, 0);
    /* Ids nobody gave, and of another client, are refused. */
    assert_int_equal(mu_call_cancel(c, 0), 0);
    assert_int_equal(mu_call_cancel(c, 0xffffffffffffffffull), 0);
    assert_int_equal(mu_call_cancel(c, (1ull << 32) | 1u), 0);
    mu_client_free(c);
}

static void test_misuse(void **state)
{
    (void)state;
    mu_client *c = client(tu_config(NULL));
    tu_outcome o = {0};
    const char *bad_targets[] = {"noColon", "a:b:c", ":m", "s:", "s p:m", "a/b:m", "s:..", ".:m"};
    for (size_t i = 0; i < sizeof bad_targets / sizeof bad_targets[0]; i++) {
        assert_int_equal(mu_call(c, bad_targets[i], NULL, NULL, NULL, tu_record, &o, NULL), MU_EINVAL);
        assert_non_null(strstr(mu_client_errmsg(c), "SERVICE:METHOD"));
    }
    /* Each refusal says what is wrong with this target. */
    char big[10240];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    big[5] = ':';
    assert_int_equal(mu_call(c, big, NULL, NULL, NULL, tu_record, &o, NULL), MU_EINVAL);
    assert_non_null(strstr(mu_client_errmsg(c), "10239 bytes long, over the 512 allowed"));
    static const char *const not_utf8[] = {"s:m\xff", "s:\xc0\xaf", "s\xed\xa0\x80:m",
                                           "s:caf\xc3"};
    for (size_t i = 0; i < sizeof not_utf8 / sizeof not_utf8[0]; i++) {
        assert_int_equal(mu_call(c, not_utf8[i], NULL, NULL, NULL, tu_record, &o, NULL), MU_EINVAL);
        assert_non_null(strstr(mu_client_errmsg(c), "not valid UTF-8"));
    }
    tu_outcome fine = {0}; /* UTF-8 names are fine: this call is made */
    assert_int_equal(mu_call(c, "caf\xc3\xa9:m\xe2\x82\xac", NULL, NULL, NULL, tu_record, &fine,
                             NULL),
                     MU_OK);
    assert_int_equal(mu_call(c, "s:m", "{}", NULL, NULL, tu_record, &o, NULL), MU_EINVAL);
    assert_non_null(strstr(mu_client_errmsg(c), "args must be a JSON array"));
    assert_int_equal(mu_call(c, "s:m", "[1,", NULL, NULL, tu_record, &o, NULL), MU_EINVAL);
    assert_int_equal(mu_call(c, "s:m", NULL, "[]", NULL, tu_record, &o, NULL), MU_EINVAL);
    assert_int_equal(mu_call(c, "s:m", NULL, NULL, NULL, NULL, &o, NULL), MU_EINVAL);
    mu_call_opts opt = MU_CALL_OPTS_INIT;
    opt.policy = "fastest";
    assert_int_equal(mu_call(c, "s:m", NULL, NULL, &opt, tu_record, &o, NULL), MU_EINVAL);
    assert_non_null(strstr(mu_client_errmsg(c), "fastest"));
    tu_run_for(base, 50);
    assert_int_equal(o.fired, 0); /* no callback for a refused call */
    mu_client_free(c);
    mu_client_free(NULL);
    assert_int_equal(mu_call_cancel(NULL, 1), 0);
}

/* ---------------------------------------------------- reentrancy edges */

typedef struct watcher {
    mu_client *c;
    int fired;
} watcher;

static void unwatch_self(const char *target, size_t n, void *user)
{
    watcher *w = user;
    (void)n;
    w->fired++;
    mu_client_watch(w->c, target, NULL, NULL); /* removes the watch being called */
}

/* yajl_tree_parse allows comments, so a '"' inside one must not hide the
 * brackets after it from the depth check: a comment holding a quote, then
 * 300,000 levels, overflowed the stack, as in test_result_parse_depth.
 * Found by tests/fuzz/fuzz_result's depth invariant. */
static void test_result_parse_depth_comments(void **state)
{
    (void)state;
    static const char *const heads[] = {"/*\"*/", "// \"\n", "/* ' */ /* \" */ "};
    size_t levels = MU_RESULT_MAX_DEPTH + 1;
    char text[2 * (MU_RESULT_MAX_DEPTH + 1) + 32];
    for (size_t h = 0; h < sizeof heads / sizeof heads[0]; h++) {
        size_t n = (size_t)sprintf(text, "%s", heads[h]);
        memset(text + n, '[', levels);
        memset(text + n + levels, ']', levels);
        n += 2 * levels;
        text[n] = '\0';
        mu_result r = {.status = MU_OK, .result = text, .result_len = n, .detail = ""};
        char err[128] = "";
        yajl_val v = mu_result_parse(&r, err, sizeof err);
        if (v) {
            yajl_tree_free(v);
            fail_msg("%s: %zu levels accepted", heads[h], levels);
        }
        assert_non_null(strstr(err, "deeper than 512"));
    }
    /* A comment that closes keeps the count: 512 levels still parse. */
    size_t n = (size_t)sprintf(text, "/* [ */ ");
    memset(text + n, '[', MU_RESULT_MAX_DEPTH);
    memset(text + n + MU_RESULT_MAX_DEPTH, ']', MU_RESULT_MAX_DEPTH);
    n += 2 * MU_RESULT_MAX_DEPTH;
    text[n] = '\0';
    mu_result r = {.status = MU_OK, .result = text, .result_len = n, .detail = ""};
    char err[128] = "";
    yajl_val v = mu_result_parse(&r, err, sizeof err);
    assert_non_null(v);
    yajl_tree_free(v);
}

static void test_reentrant_edges(void **state)
{
    (void)state;
    tb_provider *p = start("re", NULL, NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config(NULL));
    tu_outcome o;
    tu_call_sync(base, c, "re:echo", NULL, NULL, &o);
    assert_int_equal(o.status, MU_OK);

    /* A watch that removes itself from its own callback (ASan checks the rest). */
    watcher w = {c, 0};
    assert_int_equal(mu_client_watch(c, "re:echo", unwatch_self, &w), MU_OK);
    assert_int_equal(mu_client_watch(c, "re:whoami", unwatch_self, &w), MU_OK);
    tu_run_for(base, 300);
    assert_int_equal(w.fired, 2);

    /* Cancel a call whose outcome is known but not delivered yet: the
     * callback fires inside cancel, once. */
    tu_outcome d = {0};
    mu_call_id h = 0;
    assert_int_equal(mu_call(c, "re:no_such_method_node", NULL, NULL, NULL, tu_record, &d, &h), MU_OK);
    tu_run_for(base, 300); /* loaded: no node, so the outcome is queued at once */
    tu_outcome d2 = {0};
    assert_int_equal(mu_call(c, "re:no_such_method_node", NULL, NULL, NULL, tu_record, &d2, &h), MU_OK);
    assert_int_equal(d2.fired, 0);
    assert_int_equal(mu_call_cancel(c, h), 1);
    assert_int_equal(d2.fired, 1);
    assert_int_equal(d2.status, MU_ECANCELLED);
    tu_run_for(base, 50);
    assert_int_equal(d2.fired, 1);
    mu_client_free(c);
    tb_provider_free(p);
}

/* A callback that calls again each time its call fails at once must not
 * starve the loop: other events still run. */
typedef struct spinner {
    mu_client *c;
    int calls;
    int stop;
    int timer_fired_at;
} spinner;

static void spin_cb(const mu_result *r, void *user)
{
    spinner *sp = user;
    (void)r;
    if (sp->stop)
        return;
    sp->calls++;
    mu_call(sp->c, "spin:nothing_here", NULL, NULL, NULL, spin_cb, sp, NULL);
}

static void spin_timer(evutil_socket_t fd, short what, void *arg)
{
    spinner *sp = arg;
    (void)fd;
    (void)what;
    sp->timer_fired_at = sp->calls;
    sp->stop = 1;
}

static void test_drain_does_not_starve_the_loop(void **state)
{
    (void)state;
    mu_client *c = client(tu_config("zk_hosts", "", NULL)); /* no ZooKeeper: no provider at once */
    spinner sp = {c, 0, 0, -1};
    assert_int_equal(mu_call(c, "spin:nothing_here", NULL, NULL, NULL, spin_cb, &sp, NULL), MU_OK);
    struct event *t = evtimer_new(base, spin_timer, &sp);
    struct timeval zero = {0, 0};
    evtimer_add(t, &zero);
    tu_run_for(base, 200);
    event_free(t);
    assert_true(sp.timer_fired_at >= 0);
    assert_true(sp.timer_fired_at < 10);
    mu_client_free(c);
}

/* The log sink may free the client: it happens when the loop turns. */
typedef struct log_freer {
    mu_client *c;
    int freed;
} log_freer;

static void freeing_log(mu_log_level level, const char *msg, void *user)
{
    log_freer *lf = user;
    (void)level;
    (void)msg;
    if (!lf->freed) {
        lf->freed = 1;
        mu_client_free(lf->c);
    }
}

static void test_free_from_log_sink(void **state)
{
    (void)state;
    mu_client *c = client(tu_config(NULL));
    log_freer lf = {c, 0};
    mu_client_set_log(c, MU_LOG_DEBUG, freeing_log, &lf);
    tu_outcome o = {0};
    /* Loading a target logs (a session, a listing); a pending call then
     * ends with MU_ECANCELLED when the free happens. */
    assert_int_equal(mu_call(c, "logfree:echo", NULL, NULL, NULL, tu_record, &o, NULL), MU_OK);
    tu_run_for(base, 1000);
    assert_int_equal(lf.freed, 1);
    assert_int_equal(o.fired, 1);
}

/* Attempts queued on a provider that turns out dead move to another one
 * without spending a retry each. */
static void test_queue_moves_off_dead_provider(void **state)
{
    (void)state;
    tb_provider *dead = start("mv", "--session-ms 30000", NULL), *live = start("mv", "--delay-ms 20", NULL);
    assert_non_null(dead);
    assert_non_null(live);
    mu_client *c = client(tu_config("max_connections_per_host", "1", NULL));
    tu_outcome o;
    tu_call_sync(base, c, "mv:echo", NULL, NULL, &o);
    assert_int_equal(o.status, MU_OK);
    tb_provider_kill(dead, SIGKILL); /* its znode stays */
    tu_outcome many[20];
    memset(many, 0, sizeof many);
    for (int i = 0; i < 20; i++)
        assert_int_equal(mu_call(c, "mv:echo", NULL, NULL, NULL, tu_record, &many[i], NULL), MU_OK);
    unsigned long long t0 = tu_now_ms();
    while (tu_now_ms() - t0 < 10000) {
        int done = 0;
        for (int i = 0; i < 20; i++)
            done += many[i].fired;
        if (done == 20)
            break;
        tu_run_for(base, 20);
    }
    int twice = 0;
    for (int i = 0; i < 20; i++) {
        assert_int_equal(many[i].fired, 1);
        if (many[i].status != MU_OK)
            fail_msg("call %d: %s", i, many[i].detail);
        if (many[i].attempts > 1)
            twice++;
    }
    /* Only the attempt that met the refusal (and at most the one that the
     * freed slot started at the same moment) took a second attempt. */
    assert_true(twice <= 2);
    mu_client_free(c);
    tb_provider_free(dead);
    tb_provider_free(live);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_robin_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_within_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hash_key_sticks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_failures_draw_no_traffic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_least_pending_avoids_slow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_10000_calls_500_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hang_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotent_only_retries_timeouts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_killed_provider_costs_no_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_result_parse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remote_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_responses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_per_endpoint_queue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_size_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_protocol_variants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_and_free, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_misuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abi, setup, teardown),
        cmocka_unit_test(test_result_parse_depth),
        cmocka_unit_test(test_result_parse_depth_comments),
        cmocka_unit_test_setup_teardown(test_reentrant_edges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_does_not_starve_the_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_log_sink, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_moves_off_dead_provider, setup, teardown),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
