/* Attacks on the call layer's edges, as a hostile provider and a careless
 * caller would mount them, against real providers and a real ZooKeeper:
 *   - ids: another client's id, stale ids, ids cancelled from inside
 *     callbacks and from the log sink;
 *   - cancelling a call in each of its states (waiting, queued, running,
 *     backing off), and freeing the client from a watcher or an endpoints
 *     visitor while calls are in each of them;
 *   - the provider vanishing from ZooKeeper while a call backs off;
 *   - stall checks of a one-connection-per-worker provider whose calls are
 *     cancelled under them;
 *   - a host name with two addresses, in the register-before-listen window.
 * Every callback must fire exactly once; ASan checks the memory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>

#include "fixture.h"

/* One call: its outcome and id. */
typedef struct probe {
    tu_outcome o;
    mu_call_id id;
} probe;

static void probe_call(mu_client *c, const char *target, probe *p, const mu_call_opts *opts)
{
    memset(p, 0, sizeof *p);
    assert_int_equal(mu_call(c, target, "[1]", NULL, opts, tu_record, &p->o, &p->id), MU_OK);
    assert_true(p->id != 0);
}

static void assert_cancelled_once(const probe *p)
{
    assert_int_equal(p->o.fired, 1);
    if (p->o.status != MU_ECANCELLED)
        fail_msg("status %s: %s", mu_status_name(p->o.status), p->o.detail);
}

/* Calls in each state a call can wait in: running (the provider takes 600
 * ms), queued behind it (one connection per host), backing off (the other
 * provider refuses), and waiting for its group (a method not loaded yet,
 * which then queues too). */
typedef struct states {
    probe running, queued, backoff, waiting;
} states;

static void states_begin(mu_client *c, states *s, const char *waiting_target)
{
    mu_call_opts o = MU_CALL_OPTS_INIT;
    o.deadline_ms = 20000;
    probe_call(c, "stslow:echo", &s->running, &o);
    probe_call(c, "stslow:echo", &s->queued, &o);
    probe_call(c, "strefuse:echo", &s->backoff, &o);
    tu_run_for(base, 250); /* loaded: running, queued, backing off */
    assert_int_equal(s->running.o.fired + s->queued.o.fired + s->backoff.o.fired, 0);
    probe_call(c, waiting_target, &s->waiting, &o); /* its group is loading now */
}

static void assert_states_cancelled(const states *s)
{
    assert_cancelled_once(&s->running);
    assert_cancelled_once(&s->queued);
    assert_cancelled_once(&s->backoff);
    assert_cancelled_once(&s->waiting);
}

static void providers_for_states(tb_provider *p[2])
{
    p[0] = provider("stslow", "--delay-ms", "600", NULL);
    p[1] = provider("strefuse", "--listen-delay-ms", "60000", NULL);
    assert_non_null(p[0]);
    assert_non_null(p[1]);
}

/* ------------------------------------------------------------ 1. ids */

/* An id is a (generation, slot) pair counted per client: the first call of
 * every client has the same id. mu_call_cancel() promises to do nothing for
 * an id the client never gave. */
static void test_foreign_id_cancels_nothing(void **state)
{
    (void)state;
    tb_provider *p = provider("fid", "--delay-ms", "400", NULL);
    assert_non_null(p);
    mu_client *a = client(tu_config(NULL));
    mu_client *b = client(tu_config(NULL));
    probe pa, pb;
    probe_call(a, "fid:echo", &pa, NULL);
    probe_call(b, "fid:echo", &pb, NULL);
    tu_run_for(base, 100);
    int r = mu_call_cancel(b, pa.id); /* a's id, handed to b */
    if (r != 0 || pb.o.fired)
        fprintf(stderr, "  b's call was cancelled by a's id (ids %#llx, %#llx)\n",
                (unsigned long long)pa.id, (unsigned long long)pb.id);
    assert_int_equal(r, 0);
    assert_int_equal(pb.o.fired, 0);
    assert_true(tu_run_until(base, tu_fired, &pb.o, 5000));
    assert_int_equal(pb.o.status, MU_OK);
    assert_true(tu_run_until(base, tu_fired, &pa.o, 5000));
    assert_int_equal(pa.o.status, MU_OK);
    mu_client_free(a);
    mu_client_free(b);
    tb_provider_free(p);
}

/* ------------------------------------------------------------ 2. cancel in each state */

static void test_cancel_in_every_state(void **state)
{
    (void)state;
    tb_provider *p[2];
    providers_for_states(p);
    mu_client *c = client(tu_config("max_connections_per_host", "1", NULL));
    states s;
    states_begin(c, &s, "stslow:nothing");
    probe *all[] = {&s.waiting, &s.queued, &s.backoff, &s.running};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(mu_call_cancel(c, all[i]->id), 1);
        assert_int_equal(all[i]->o.fired, 1); /* at once, inside cancel */
        assert_int_equal(mu_call_cancel(c, all[i]->id), 0);
    }
    tu_run_for(base, 900); /* the provider answers the cancelled attempt meanwhile */
    assert_states_cancelled(&s);
    /* The lane gave back its connection slot: a new call is not stuck
     * behind the cancelled ones. */
    probe again;
    mu_call_opts o = MU_CALL_OPTS_INIT;
    o.deadline_ms = 3000;
    probe_call(c, "stslow:echo", &again, &o);
    assert_true(tu_run_until(base, tu_fired, &again.o, 5000));
    if (again.o.status != MU_OK)
        fail_msg("after the cancels: %s: %s", mu_status_name(again.o.status), again.o.detail);
    mu_client_free(c);
    tb_provider_free(p[0]);
    tb_provider_free(p[1]);
}

/* ------------------------------------------------------------ 3. free from user code */

typedef struct freeing {
    mu_client *c;
    int fired;
    mu_status call_after; /* mu_call() from the same user code, after the free */
    int cancel_after;     /* mu_call_cancel() likewise */
    mu_call_id some_id;
} freeing;

static void free_and_poke(freeing *f)
{
    f->fired++;
    mu_client_free(f->c);
    mu_client_free(f->c); /* twice: still harmless inside user code */
    f->call_after = mu_call(f->c, "stslow:echo", NULL, NULL, NULL, tu_record, NULL, NULL);
    f->cancel_after = mu_call_cancel(f->c, f->some_id);
}

static void free_in_watcher(const char *target, size_t n, void *user)
{
    (void)target;
    (void)n;
    free_and_poke(user);
}

static void test_free_from_watcher(void **state)
{
    (void)state;
    tb_provider *p[2];
    providers_for_states(p);
    mu_client *c = client(tu_config("max_connections_per_host", "1", NULL));
    states s;
    states_begin(c, &s, "stslow:whoami");
    freeing f = {c, 0, MU_OK, -1, s.running.id};
    /* A loaded target: the watcher runs on the next turn. */
    assert_int_equal(mu_client_watch(c, "stslow:echo", free_in_watcher, &f), MU_OK);
    tu_run_for(base, 400);
    assert_int_equal(f.fired, 1);
    assert_int_equal(f.call_after, MU_EINVAL);
    assert_int_equal(f.cancel_after, 0); /* already cancelled by the free */
    assert_states_cancelled(&s);
    tu_run_for(base, 100);
    assert_int_equal(f.fired, 1);
    tb_provider_free(p[0]);
    tb_provider_free(p[1]);
}

static void free_in_visitor(const mu_endpoint_info *const *eps, size_t n, void *user)
{
    (void)eps;
    (void)n;
    free_and_poke(user);
}

/* From the visitor, at the top level of the caller's code. */
static void test_free_from_visitor(void **state)
{
    (void)state;
    tb_provider *p[2];
    providers_for_states(p);
    mu_client *c = client(tu_config("max_connections_per_host", "1", NULL));
    states s;
    states_begin(c, &s, "stslow:mixed");
    freeing f = {c, 0, MU_OK, -1, s.queued.id};
    assert_int_equal(mu_client_endpoints(c, "stslow:echo", free_in_visitor, &f), MU_OK);
    assert_int_equal(f.fired, 1);
    assert_int_equal(f.call_after, MU_EINVAL);
    assert_int_equal(f.cancel_after, 0);
    assert_states_cancelled(&s);
    tu_run_for(base, 300);
    assert_int_equal(f.fired, 1);
    tb_provider_free(p[0]);
    tb_provider_free(p[1]);
}

/* From a visitor run by a call's callback: two frames of user code. */
static void visit_then_free(const mu_result *r, void *user)
{
    freeing *f = user;
    (void)r;
    assert_int_equal(mu_client_endpoints(f->c, "stslow:echo", free_in_visitor, f), MU_OK);
}

static void test_free_from_visitor_in_callback(void **state)
{
    (void)state;
    tb_provider *p[2];
    providers_for_states(p);
    mu_client *c = client(tu_config("max_connections_per_host", "1", NULL));
    states s;
    states_begin(c, &s, "stslow:unicode_name");
    freeing f = {c, 0, MU_OK, -1, s.backoff.id};
    /* No provider node: its outcome is delivered on the next turn. */
    assert_int_equal(mu_call(c, "stslow:no_node", NULL, NULL, NULL, visit_then_free, &f, NULL),
                     MU_OK);
    tu_run_for(base, 400);
    assert_int_equal(f.fired, 1);
    assert_int_equal(f.call_after, MU_EINVAL);
    assert_states_cancelled(&s);
    tu_run_for(base, 100);
    assert_int_equal(f.fired, 1);
    tb_provider_free(p[0]);
    tb_provider_free(p[1]);
}

/* ------------------------------------------------------------ 4. reentrant cancels */

/* Calls whose outcomes are delivered in one batch; the first to run
 * cancels all the others, which must fire inside that cancel, once. */
typedef struct batch {
    mu_client *c;
    probe p[6];
    int order[6], n;
    int cancelled_by_first;
} batch;

typedef struct batch_ref {
    batch *b;
    int i;
} batch_ref;

static void batch_cb(const mu_result *r, void *user)
{
    batch_ref *ref = user;
    batch *b = ref->b;
    tu_record(r, &b->p[ref->i].o);
    b->order[b->n++] = ref->i;
    if (b->n != 1)
        return;
    for (int j = 0; j < 6; j++)
        b->cancelled_by_first += mu_call_cancel(b->c, b->p[j].id);
}

static void test_cancel_within_a_delivery_batch(void **state)
{
    (void)state;
    mu_client *c = client(tu_config("zk_hosts", "", NULL)); /* no ZooKeeper: no provider */
    batch b;
    memset(&b, 0, sizeof b);
    b.c = c;
    batch_ref refs[6];
    for (int i = 0; i < 6; i++) {
        refs[i] = (batch_ref){&b, i};
        assert_int_equal(mu_call(c, "nobody:m", NULL, NULL, NULL, batch_cb, &refs[i], &b.p[i].id),
                         MU_OK);
    }
    tu_run_for(base, 100);
    assert_int_equal(b.n, 6);
    assert_int_equal(b.cancelled_by_first, 5); /* not itself: it is being delivered */
    int first = b.order[0];
    assert_int_equal(b.p[first].o.status, MU_ENOPROVIDER);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(b.p[i].o.fired, 1);
        if (i != first)
            assert_int_equal(b.p[i].o.status, MU_ECANCELLED);
    }
    mu_client_free(c);
}

/* The log sink may not cancel, nor call; it runs inside the client's work. */
typedef struct sink_poker {
    mu_client *c;
    mu_call_id id;
    int lines, cancels, calls_ok;
} sink_poker;

static void poking_sink(mu_log_level level, const char *msg, void *user)
{
    sink_poker *sp = user;
    (void)level;
    (void)msg;
    sp->lines++;
    sp->cancels += mu_call_cancel(sp->c, sp->id);
    sp->calls_ok += mu_call(sp->c, "stslow:echo", NULL, NULL, NULL, tu_record, NULL, NULL) == MU_OK;
}

static void test_log_sink_cannot_cancel(void **state)
{
    (void)state;
    tb_provider *p = provider("strefuse", "--listen-delay-ms", "60000", NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config(NULL));
    sink_poker sp = {c, 0, 0, 0, 0};
    probe b;
    mu_call_opts o = MU_CALL_OPTS_INIT;
    o.deadline_ms = 600;
    probe_call(c, "strefuse:echo", &b, &o);
    sp.id = b.id;
    mu_client_set_log(c, MU_LOG_DEBUG, poking_sink, &sp); /* every backoff logs */
    assert_true(tu_run_until(base, tu_fired, &b.o, 5000));
    mu_client_set_log(c, MU_LOG_DEBUG, tu_log, NULL);
    assert_true(sp.lines > 0);
    assert_int_equal(sp.cancels, 0);
    assert_int_equal(sp.calls_ok, 0);
    assert_int_equal(b.o.status, MU_ECONNECT);
    mu_client_free(c);
    tb_provider_free(p);
}

/* The sink frees the client while a call's callback runs: the callback's
 * first call to a static service logs its endpoints synchronously. */
typedef struct sink_freer {
    mu_client *c;
    int armed, freed;
    mu_status inner;
    tu_outcome inner_o, other;
} sink_freer;

static void freeing_sink(mu_log_level level, const char *msg, void *user)
{
    sink_freer *sf = user;
    (void)level;
    (void)msg;
    if (sf->armed && !sf->freed) {
        sf->freed = 1;
        mu_client_free(sf->c);
    }
}

static void call_static_from_callback(const mu_result *r, void *user)
{
    sink_freer *sf = user;
    (void)r;
    sf->armed = 1;
    sf->inner = mu_call(sf->c, "lsvc:echo", NULL, NULL, NULL, tu_record, &sf->inner_o, NULL);
}

static void test_sink_frees_inside_callback(void **state)
{
    (void)state;
    tb_provider *p = provider("stslow", "--delay-ms", "600", NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config("static.lsvc", "127.0.0.1:1", NULL));
    sink_freer sf;
    memset(&sf, 0, sizeof sf);
    sf.c = c;
    mu_client_set_log(c, MU_LOG_DEBUG, freeing_sink, &sf);
    assert_int_equal(mu_call(c, "stslow:echo", NULL, NULL, NULL, tu_record, &sf.other, NULL), MU_OK);
    assert_int_equal(mu_call(c, "stslow:no_node", NULL, NULL, NULL, call_static_from_callback, &sf,
                             NULL),
                     MU_OK);
    tu_run_for(base, 500);
    assert_int_equal(sf.freed, 1);
    assert_int_equal(sf.other.fired, 1);
    assert_int_equal(sf.other.status, MU_ECANCELLED);
    if (sf.inner == MU_OK) { /* started before the free took effect: cancelled by it */
        assert_int_equal(sf.inner_o.fired, 1);
        assert_int_equal(sf.inner_o.status, MU_ECANCELLED);
    }
    tb_provider_free(p);
}

/* ------------------------------------------------------------ 5. provider gone */

static void count_endpoints(const mu_endpoint_info *const *eps, size_t n, void *user)
{
    (void)eps;
    *(size_t *)user = n;
}

/* Runs the loop until the client sees n endpoints of target (5 s). */
static void wait_endpoints(mu_client *c, const char *target, size_t n)
{
    unsigned long long end = tu_now_ms() + 5000;
    size_t seen = n + 1;
    while (tu_now_ms() < end) {
        if (mu_client_endpoints(c, target, count_endpoints, &seen) == MU_OK && seen == n)
            return;
        tu_run_for(base, 20);
    }
    fail_msg("%s: %zu endpoint(s) after 5 s, want %zu", target, seen, n);
}

/* The only provider is registered and refuses; the call backs off. It then
 * leaves ZooKeeper, so the view frees its endpoint (no attempt holds it
 * during a backoff). The call must end with MU_ENOPROVIDER at its next
 * round, not wait out its deadline nor touch the freed endpoint. */
static void test_provider_leaves_during_backoff(void **state)
{
    (void)state;
    tb_provider *p = provider("gone", "--listen-delay-ms", "60000", NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config(NULL));
    probe b;
    mu_call_opts o = MU_CALL_OPTS_INIT;
    o.deadline_ms = 8000;
    probe_call(c, "gone:echo", &b, &o);
    tu_run_for(base, 400);
    assert_int_equal(b.o.fired, 0);
    assert_int_equal(tb_provider_kill(p, SIGTERM), 0); /* deregisters at once */
    unsigned long long t0 = tu_now_ms();
    assert_true(tu_run_until(base, tu_fired, &b.o, 10000));
    unsigned long long took = tu_now_ms() - t0;
    fprintf(stderr, "  ended %llu ms after the provider left: %s: %s\n", took,
            mu_status_name(b.o.status), b.o.detail);
    assert_int_equal(b.o.status, MU_ENOPROVIDER);
    assert_true(took < 3000);
    /* A new provider of the service: calls reach it. */
    tb_provider *q = provider("gone", NULL);
    assert_non_null(q);
    wait_endpoints(c, "gone:echo", 1);
    tu_outcome ok;
    tu_call_sync(base, c, "gone:echo", "[2]", NULL, &ok);
    assert_int_equal(ok.status, MU_OK);
    mu_client_free(c);
    tb_provider_free(p);
    tb_provider_free(q);
}

/* ------------------------------------------------------------ 6. stall checks */

/* One worker serving one connection at a time: calls on new connections
 * wait unread, the stall check is armed on them, and they are cancelled at
 * varied moments (before, around and after keepalive_stall_ms). */
static void stall_round(mu_client *c, int wait_ms, int *fired_total)
{
    probe ps[6];
    mu_call_opts o = MU_CALL_OPTS_INIT;
    o.idempotent = 0;
    for (int i = 0; i < 6; i++)
        probe_call(c, "stall1:echo", &ps[i], &o);
    tu_run_for(base, wait_ms);
    for (int i = 0; i < 6; i++) {
        int was = ps[i].o.fired;
        int r = mu_call_cancel(c, ps[i].id);
        assert_int_equal(r, !was);
        assert_int_equal(ps[i].o.fired, 1);
    }
    tu_run_for(base, 30);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(ps[i].o.fired, 1);
        *fired_total += ps[i].o.fired;
    }
}

static void test_stall_check_under_cancels(void **state)
{
    (void)state;
    tb_provider *p = provider("stall1", "--workers", "1", NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config("keepalive_stall_ms", "100", NULL));
    tu_outcome warm;
    tu_call_sync(base, c, "stall1:echo", "[0]", NULL, &warm);
    assert_int_equal(warm.status, MU_OK);
    int total = 0;
    static const int waits[] = {5, 60, 95, 105, 140, 250, 20, 400};
    for (size_t i = 0; i < sizeof waits / sizeof waits[0]; i++)
        stall_round(c, waits[i], &total);
    assert_int_equal(total, 6 * (int)(sizeof waits / sizeof waits[0]));
    /* Whatever the client learnt, calls still go through. */
    tu_outcome o;
    tu_call_sync(base, c, "stall1:echo", "[9]", NULL, &o);
    if (o.status != MU_OK)
        fail_msg("%s: %s", mu_status_name(o.status), o.detail);
    mu_client_free(c);
    tb_provider_free(p);
}

/* ------------------------------------------------------------ 7. two addresses */

/* curl resolves "localhost" itself to 127.0.0.1 and ::1. The provider,
 * advertised as localhost, registers before it listens: both addresses
 * refuse. Nothing was sent, so the non-idempotent call must wait and
 * succeed, as with a provider advertised by address. */
static void test_two_address_host_in_startup_window(void **state)
{
    (void)state;
    tb_provider *p = provider("win2", "--host", "localhost", "--listen-delay-ms", "300", NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config(NULL));
    tu_outcome o;
    mu_call_opts opts = MU_CALL_OPTS_INIT;
    opts.idempotent = 0;
    opts.retries = 0;
    tu_call_sync(base, c, "win2:echo", "[1]", &opts, &o);
    if (o.status != MU_OK)
        fprintf(stderr, "  %s: %s\n", mu_status_name(o.status), o.detail);
    assert_int_equal(o.status, MU_OK);
    mu_client_free(c);
    tb_provider_free(p);
}

/* The same provider once it listens: nothing was wrong with its
 * connections, so they are kept, as with one advertised by address. */
static void test_two_address_host_keeps_connections(void **state)
{
    (void)state;
    tb_provider *p = provider("win3", "--host", "localhost", "--listen-delay-ms", "300", NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config(NULL));
    tu_outcome o;
    tu_call_sync(base, c, "win3:echo", "[0]", NULL, &o); /* met the refusing port */
    tu_run_for(base, 400);                              /* listening by now */
    mu_client_stats before, after;
    mu_client_stats_get(c, &before, sizeof before);
    for (int i = 0; i < 20; i++) {
        tu_call_sync(base, c, "win3:echo", "[1]", NULL, &o);
        assert_int_equal(o.status, MU_OK);
    }
    mu_client_stats_get(c, &after, sizeof after);
    unsigned long long opened = after.connections - before.connections;
    fprintf(stderr, "  20 sequential calls opened %llu connection(s)\n", opened);
    assert_true(opened <= 2);
    mu_client_free(c);
    tb_provider_free(p);
}

/* A provider advertised as localhost dies (SIGKILL: its node stays for the
 * session). Its port refuses on both addresses: nothing was sent, so no
 * non-idempotent call may fail while another provider serves. */
static void test_two_address_host_killed(void **state)
{
    (void)state;
    tb_provider *dead = provider("kill2", "--host", "localhost", "--session-ms", "30000", NULL);
    tb_provider *live = provider("kill2", NULL);
    assert_non_null(dead);
    assert_non_null(live);
    mu_client *c = client(tu_config(NULL));
    wait_endpoints(c, "kill2:echo", 2);
    assert_int_equal(tb_provider_kill(dead, SIGKILL), 0);
    mu_call_opts opts = MU_CALL_OPTS_INIT;
    opts.idempotent = 0;
    int failed = 0;
    for (int i = 0; i < 10; i++) {
        tu_outcome o;
        tu_call_sync(base, c, "kill2:echo", "[1]", &opts, &o);
        if (o.status != MU_OK && failed++ == 0)
            fprintf(stderr, "  %s: %s\n", mu_status_name(o.status), o.detail);
    }
    assert_int_equal(failed, 0);
    mu_client_free(c);
    tb_provider_free(dead);
    tb_provider_free(live);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_foreign_id_cancels_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_in_every_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_watcher, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_visitor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_visitor_in_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_within_a_delivery_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_sink_cannot_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sink_frees_inside_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_provider_leaves_during_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stall_check_under_cancels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_address_host_in_startup_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_address_host_keeps_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_address_host_killed, setup, teardown),
    };
    if (getenv("MU_TEST_FILTER")) /* e.g. MU_TEST_FILTER='*stall*' */
        cmocka_set_test_filter(getenv("MU_TEST_FILTER"));
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
