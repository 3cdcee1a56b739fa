/* Metrics (mu_client_metrics, mu_metrics_write): the numbers against what
 * was done, real ZooKeeper and real test providers: calls and the
 * histogram count after N calls, failures by kind with a --garbage
 * provider, retries, hedges and ejections against mu_client_stats, and the
 * text writer's buffer contract. scripts/check-metrics runs promtool over
 * mucall's output. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "fixture.h"

/* What the visitor saw, summed over the series that match. */
typedef struct seen {
    const char *service, *method, *endpoint; /* NULL: any */
    double calls, call_failed, in_flight, attempts, retries, hedges, ejections;
    double failed[20];                     /* by kind index in kinds[] */
    double ep_attempts, ep_retries, ep_hedges, ep_ejections, ep_in_flight;
    double ep_failed[20];
    unsigned long long hist_count, ep_hist_count;
    double hist_sum;
    int bad_hist; /* buckets not cumulative, or past the count */
    int series;
} seen;

static const char *const kinds[] = {"protocol", "timeout", "transport", "connect", "http",
                                    "remote",   "toobig",  "other"};

static int kind_index(const char *k)
{
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kinds[i], k) == 0)
            return (int)i;
    return 19;
}

static int match(const char *want, const char *got)
{
    return !want || (got && strcmp(want, got) == 0);
}

static void on_metric(const mu_metric *m, void *user)
{
    seen *s = user;
    assert_true(m->size >= sizeof *m);
    assert_non_null(m->name);
    assert_non_null(m->help);
    s->series++;
    if (m->endpoint) {
        if (!match(s->endpoint, m->endpoint))
            return;
    } else if (!match(s->service, m->service) || !match(s->method, m->method)) {
        return;
    }
    const char *n = m->name;
    if (m->type == MU_METRIC_HISTOGRAM) {
        unsigned long long prev = 0;
        assert_true(m->nbuckets >= 16 && m->nbuckets <= 20);
        for (size_t i = 0; i < m->nbuckets; i++) {
            if (m->buckets[i] < prev || m->buckets[i] > m->count ||
                (i && !(m->le[i] > m->le[i - 1])))
                s->bad_hist = 1;
            prev = m->buckets[i];
        }
        if (strcmp(n, "microutil_call_duration_seconds") == 0) {
            s->hist_count += m->count;
            s->hist_sum += m->sum;
        } else if (strcmp(n, "microutil_endpoint_attempt_duration_seconds") == 0) {
            s->ep_hist_count += m->count;
        }
        return;
    }
    double v = m->value;
    if (strcmp(n, "microutil_calls_total") == 0)
        s->calls += v;
    else if (strcmp(n, "microutil_call_failures_total") == 0)
        s->call_failed += v;
    else if (strcmp(n, "microutil_calls_in_flight") == 0)
        s->in_flight += v;
    else if (strcmp(n, "microutil_attempts_total") == 0)
        s->attempts += v;
    else if (strcmp(n, "microutil_attempt_failures_total") == 0)
        s->failed[kind_index(m->kind)] += v;
    else if (strcmp(n, "microutil_retries_total") == 0)
        s->retries += v;
    else if (strcmp(n, "microutil_hedges_total") == 0)
        s->hedges += v;
    else if (strcmp(n, "microutil_ejections_total") == 0)
        s->ejections += v;
    else if (strcmp(n, "microutil_endpoint_attempts_total") == 0)
        s->ep_attempts += v;
    else if (strcmp(n, "microutil_endpoint_attempt_failures_total") == 0)
        s->ep_failed[kind_index(m->kind)] += v;
    else if (strcmp(n, "microutil_endpoint_retries_total") == 0)
        s->ep_retries += v;
    else if (strcmp(n, "microutil_endpoint_hedges_total") == 0)
        s->ep_hedges += v;
    else if (strcmp(n, "microutil_endpoint_ejections_total") == 0)
        s->ep_ejections += v;
    else if (strcmp(n, "microutil_endpoint_in_flight") == 0)
        s->ep_in_flight += v;
}

static seen look(mu_client *c, const char *service, const char *method, const char *endpoint)
{
    seen s;
    memset(&s, 0, sizeof s);
    s.service = service;
    s.method = method;
    s.endpoint = endpoint;
    assert_int_equal(mu_client_metrics(c, on_metric, &s), MU_OK);
    assert_int_equal(s.bad_hist, 0);
    return s;
}

/* N calls in flight together, run to their end. */
typedef struct batch {
    int done, ok;
} batch;

static void batch_cb(const mu_result *r, void *user)
{
    batch *b = user;
    b->done++;
    b->ok += r->status == MU_OK;
}

static batch run_calls(mu_client *c, const char *target, int n)
{
    batch b = {0, 0};
    for (int i = 0; i < n; i++)
        assert_int_equal(mu_call(c, target, "[1]", NULL, NULL, batch_cb, &b, NULL), MU_OK);
    for (int i = 0; i < 3000 && b.done < n; i++)
        tu_run_for(base, 10);
    assert_int_equal(b.done, n);
    return b;
}

/* After N calls: calls_total and the histogram count are N, in flight 0,
 * and no failure; the endpoint saw N attempts. */
static void test_metrics_counts(void **state)
{
    (void)state;
    tb_provider *p = provider("mcount", NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config(NULL));
    enum { N = 57 };
    batch b = run_calls(c, "mcount:echo", N);
    assert_int_equal(b.ok, N);
    seen s = look(c, "mcount", "echo", NULL);
    assert_int_equal((int)s.calls, N);
    assert_int_equal((int)s.hist_count, N);
    assert_true(s.hist_sum > 0);
    assert_int_equal((int)s.in_flight, 0);
    assert_int_equal((int)s.attempts, N);
    assert_int_equal((int)s.call_failed, 0);
    char ep[32];
    snprintf(ep, sizeof ep, "127.0.0.1:%d", tb_provider_port(p));
    seen e = look(c, NULL, NULL, ep);
    assert_int_equal((int)e.ep_attempts, N);
    assert_int_equal((int)e.ep_hist_count, N);
    assert_int_equal((int)e.ep_in_flight, 0);
    /* In flight: counted while the calls run. */
    batch b2 = {0, 0};
    for (int i = 0; i < 5; i++)
        assert_int_equal(mu_call(c, "mcount:echo", "[1]", NULL, NULL, batch_cb, &b2, NULL), MU_OK);
    s = look(c, "mcount", "echo", NULL);
    assert_int_equal((int)s.in_flight, 5);
    e = look(c, NULL, NULL, ep);
    assert_int_equal((int)e.ep_in_flight, 5);
    for (int i = 0; i < 3000 && b2.done < 5; i++)
        tu_run_for(base, 10);
    s = look(c, "mcount", "echo", NULL);
    assert_int_equal((int)s.in_flight, 0);
    assert_int_equal((int)s.calls, N + 5);
    mu_client_free(c);
    tb_provider_free(p);
}

/* A --garbage provider beside a good one: its attempts fail as protocol
 * errors, counted per method and on its endpoint only; retries and
 * ejections add up to mu_client_stats. A service with only the garbage
 * provider: every call fails, counted by kind. */
static void test_metrics_failures(void **state)
{
    (void)state;
    tb_provider *good = provider("mfail", NULL);
    tb_provider *bad = provider("mfail", "--garbage", NULL);
    tb_provider *only = provider("mjunk", "--garbage", NULL);
    assert_non_null(good);
    assert_non_null(bad);
    assert_non_null(only);
    mu_client *c = client(tu_config("policy", "round-robin", "idempotent", "mfail:*",
                                    "retry_budget_min_per_s", "1000", NULL));
    enum { N = 40 };
    batch b = run_calls(c, "mfail:echo", N);
    assert_true(b.ok > N / 2); /* retried on the good one, while the retry budget lasts */
    mu_client_stats st;
    mu_client_stats_get(c, &st, sizeof st);
    seen s = look(c, "mfail", "echo", NULL);
    assert_int_equal((int)s.calls, N);
    assert_int_equal((int)s.hist_count, N);
    assert_int_equal((int)s.call_failed, N - b.ok);
    assert_true(s.failed[kind_index("protocol")] > 0);
    assert_int_equal((int)s.attempts, b.ok + (int)s.failed[kind_index("protocol")]);
    assert_int_equal((int)s.retries, (int)st.retries);
    assert_int_equal((int)s.ejections, (int)st.ejections);
    assert_true(st.ejections >= 1);

    char ep_bad[32], ep_good[32];
    snprintf(ep_bad, sizeof ep_bad, "127.0.0.1:%d", tb_provider_port(bad));
    snprintf(ep_good, sizeof ep_good, "127.0.0.1:%d", tb_provider_port(good));
    seen eb = look(c, NULL, NULL, ep_bad), eg = look(c, NULL, NULL, ep_good);
    assert_int_equal((int)eb.ep_failed[kind_index("protocol")],
                     (int)s.failed[kind_index("protocol")]);
    assert_int_equal((int)eb.ep_attempts, (int)eb.ep_failed[kind_index("protocol")]);
    assert_int_equal((int)eg.ep_failed[kind_index("protocol")], 0);
    assert_int_equal((int)(eb.ep_retries + eg.ep_retries), (int)st.retries);
    assert_int_equal((int)eb.ep_ejections, (int)st.ejections);
    assert_int_equal((int)eg.ep_ejections, 0);

    /* Only garbage: every call fails, and says why. */
    b = run_calls(c, "mjunk:echo", 3);
    assert_int_equal(b.ok, 0);
    s = look(c, "mjunk", "echo", NULL);
    assert_int_equal((int)s.calls, 3);
    assert_int_equal((int)s.call_failed, 3);
    assert_int_equal((int)s.hist_count, 3);
    assert_true(s.failed[kind_index("protocol")] >= 3);
    mu_client_free(c);
    tb_provider_free(only);
    tb_provider_free(bad);
    tb_provider_free(good);
}

/* Hedges against a slow provider: counted once per hedge, per method and
 * on the slow endpoint, as mu_client_stats counts them; the pair is one
 * call. */
static void test_metrics_hedges(void **state)
{
    (void)state;
    tb_provider *fast = provider("mhedge", NULL);
    tb_provider *slow = provider("mhedge", "--delay-ms", "200", NULL);
    assert_non_null(fast);
    assert_non_null(slow);
    mu_client *c = client(tu_config("policy", "round-robin", "idempotent", "mhedge:*",
                                    "hedge_ms", "20", NULL));
    enum { N = 10 };
    tu_outcome o;
    for (int i = 0; i < N; i++)
        assert_int_equal(tu_call_sync(base, c, "mhedge:echo", "[1]", NULL, &o), MU_OK);
    mu_client_stats st;
    mu_client_stats_get(c, &st, sizeof st);
    assert_true(st.hedges >= 1);
    seen s = look(c, "mhedge", "echo", NULL);
    assert_int_equal((int)s.calls, N);
    assert_int_equal((int)s.hist_count, N);
    assert_int_equal((int)s.hedges, (int)st.hedges);
    char ep_slow[32];
    snprintf(ep_slow, sizeof ep_slow, "127.0.0.1:%d", tb_provider_port(slow));
    seen e = look(c, NULL, NULL, ep_slow);
    seen all = look(c, NULL, NULL, NULL);
    assert_int_equal((int)e.ep_hedges, (int)st.hedges);
    assert_int_equal((int)all.ep_hedges, (int)st.hedges);
    mu_client_free(c);
    tb_provider_free(slow);
    tb_provider_free(fast);
}

static void ignore_endpoints(const mu_endpoint_info *const *eps, size_t n, void *user)
{
    (void)eps;
    (void)n;
    (void)user;
}

/* The writer: the size asked with no buffer, MU_ENOSPACE and "" one byte
 * short, the text when it fits; label values escaped. */
static void test_metrics_write(void **state)
{
    (void)state;
    tb_provider *p = provider("mtext", NULL);
    assert_non_null(p);
    mu_client *c = client(tu_config(NULL));
    run_calls(c, "mtext:echo", 7);
    /* A method name with a quote and a backslash: valid in a target. */
    mu_client_endpoints(c, "mtext:we\"ird\\name", ignore_endpoints, NULL);

    size_t need = 0, need2 = 0;
    assert_int_equal(mu_metrics_write(c, NULL, 0, &need), MU_ENOSPACE);
    assert_true(need > 100);
    char *buf = malloc(need);
    assert_non_null(buf);
    memset(buf, 'x', need);
    assert_int_equal(mu_metrics_write(c, buf, need - 1, &need2), MU_ENOSPACE);
    assert_int_equal(need2, need);
    assert_int_equal(buf[0], '\0');
    assert_int_equal(mu_metrics_write(c, buf, need, &need2), MU_OK);
    assert_int_equal(need2, need);
    assert_int_equal(strlen(buf), need - 1);
    assert_non_null(strstr(buf, "# TYPE microutil_calls_total counter\n"));
    assert_non_null(strstr(buf, "# HELP microutil_calls_total "));
    assert_non_null(strstr(buf, "\nmicroutil_calls_total{service=\"mtext\",method=\"echo\"} 7\n"));
    assert_non_null(strstr(buf, "# TYPE microutil_call_duration_seconds histogram\n"));
    assert_non_null(strstr(buf, "microutil_call_duration_seconds_bucket{service=\"mtext\","
                                "method=\"echo\",le=\"+Inf\"} 7\n"));
    assert_non_null(strstr(buf, "microutil_call_duration_seconds_count{service=\"mtext\","
                                "method=\"echo\"} 7\n"));
    assert_non_null(strstr(buf, "method=\"we\\\"ird\\\\name\""));
    /* Each family's HELP and TYPE once. */
    const char *first = strstr(buf, "# TYPE microutil_calls_total ");
    assert_null(strstr(first + 1, "# TYPE microutil_calls_total "));
    assert_int_equal(buf[need - 2], '\n');
    free(buf);
    assert_int_equal(mu_metrics_write(NULL, NULL, 0, &need), MU_EINVAL);
    assert_int_equal(mu_client_metrics(c, NULL, NULL), MU_EINVAL);
    assert_string_equal(mu_status_name(MU_ENOSPACE), "MU_ENOSPACE");
    mu_client_free(c);
    tb_provider_free(p);
}

/* From inside the visitor, mu_call() is refused and a free waits. */
typedef struct inside {
    mu_client *c;
    mu_status call;
    int freed;
} inside;

static void inside_cb(const mu_result *r, void *user)
{
    (void)r;
    (void)user;
}

static void on_metric_inside(const mu_metric *m, void *user)
{
    (void)m;
    inside *in = user;
    if (in->freed)
        return;
    in->call = mu_call(in->c, "mtext:other", NULL, NULL, NULL, inside_cb, NULL, NULL);
    mu_client_free(in->c);
    in->freed = 1;
}

static void test_metrics_visitor_reentry(void **state)
{
    (void)state;
    mu_client *c = client(tu_config("static.mstat", "127.0.0.1:1", NULL));
    mu_client_endpoints(c, "mstat:echo", ignore_endpoints, NULL);
    inside in = {c, MU_OK, 0};
    assert_int_equal(mu_client_metrics(c, on_metric_inside, &in), MU_OK);
    assert_int_equal(in.freed, 1);
    assert_int_equal(in.call, MU_EINVAL);
    tu_run_for(base, 50); /* the free is carried out here */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_metrics_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_hedges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_visitor_reentry, setup, teardown),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
