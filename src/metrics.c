/*
 * metrics: families, kinds and the text exposition format (metrics.h).
 * Nothing here runs per call: call.c increments the counters through
 * metrics.h's inline helpers; this file only reads them when asked.
 */
#include "config.h"
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

const uint32_t mu_met_bound_us[MU_MET_BOUNDS] = {
    100,    250,    500,     1000,    2500,    5000,    10000,    25000,   50000,
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000,
};
const double mu_met_bound_s[MU_MET_BOUNDS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,
};

/* The `kind` label of each mu_status counted; 0 stands for statuses newer
 * than this table. Every status a call can end with has a row
 * (MU_ENOSPACE is no call's). */
_Static_assert(MU_MET_KINDS == MU_EOVERLOADED + 1, "a call status without a metrics kind");
static const char *const kinds[MU_MET_KINDS] = {
    "other",     "inval",   "nomem",     "config", "noprovider", "discovery",
    "timeout",   "connect", "transport", "http",   "protocol",   "toobig",
    "remote",    "cancelled", "auth",    "overloaded",
};

/* What a family shows, per target or per endpoint. */
enum field {
    F_CALLS, F_CALL_FAILED, F_CALLS_IN_FLIGHT, F_CALL_SECONDS, F_ATTEMPTS, F_FAILED,
    F_RETRIES, F_HEDGES, F_EJECTIONS,
    F_EP_ATTEMPTS, F_EP_FAILED, F_EP_RETRIES, F_EP_HEDGES, F_EP_EJECTIONS, F_EP_IN_FLIGHT,
    F_EP_SECONDS,
};

typedef struct family {
    const char *name;
    mu_metric_type type;
    enum field field;
    const char *help;
} family;

#define C MU_METRIC_COUNTER
#define G MU_METRIC_GAUGE
#define H MU_METRIC_HISTOGRAM
static const family families[] = {
    {"microutil_calls_total", C, F_CALLS, "Calls of the method that ended (their callback ran)."},
    {"microutil_call_failures_total", C, F_CALL_FAILED,
     "Calls of the method that ended in failure, by the failing status."},
    {"microutil_calls_in_flight", G, F_CALLS_IN_FLIGHT,
     "Calls of the method started and not yet ended."},
    {"microutil_call_duration_seconds", H, F_CALL_SECONDS,
     "Duration of the method's calls, from mu_call() to the callback, all outcomes."},
    {"microutil_attempts_total", C, F_ATTEMPTS,
     "Attempts of the method's calls that reached the transport and ended."},
    {"microutil_attempt_failures_total", C, F_FAILED,
     "Attempts of the method's calls that failed, by status."},
    {"microutil_retries_total", C, F_RETRIES,
     "Retries of the method's calls after a sent attempt failed."},
    {"microutil_hedges_total", C, F_HEDGES, "Hedge attempts started for the method's calls."},
    {"microutil_ejections_total", C, F_EJECTIONS,
     "Endpoints ejected on the outcome of one of the method's attempts."},
    {"microutil_endpoint_attempts_total", C, F_EP_ATTEMPTS,
     "Attempts that reached the transport and ended on the endpoint, all methods."},
    {"microutil_endpoint_attempt_failures_total", C, F_EP_FAILED,
     "Attempts on the endpoint that failed, by status."},
    {"microutil_endpoint_retries_total", C, F_EP_RETRIES,
     "Retries made after an attempt on the endpoint failed."},
    {"microutil_endpoint_hedges_total", C, F_EP_HEDGES,
     "Hedge attempts started because the endpoint was slow to answer."},
    {"microutil_endpoint_ejections_total", C, F_EP_EJECTIONS,
     "Times the endpoint was ejected (outlier detection)."},
    {"microutil_endpoint_in_flight", G, F_EP_IN_FLIGHT,
     "Attempts holding the endpoint now: in flight or queued for a connection."},
    {"microutil_endpoint_attempt_duration_seconds", H, F_EP_SECONDS,
     "Duration of the attempts on the endpoint, from the transport to their end."},
};
#undef C
#undef G
#undef H

/* ------------------------------------------------------------ the walk */

typedef struct walk {
    const family *f;
    mu_metrics_fn fn;
    void *user;
} walk;

static mu_metric base_of(const walk *w)
{
    mu_metric m;
    memset(&m, 0, sizeof m);
    m.size = sizeof m;
    m.name = w->f->name;
    m.help = w->f->help;
    m.type = w->f->type;
    return m;
}

/* One series per kind seen: a kind that never happened has none. */
static void by_kind(const walk *w, mu_metric *m, const uint64_t *counts)
{
    for (unsigned k = 0; k < MU_MET_KINDS; k++) {
        if (!counts[k])
            continue;
        m->kind = kinds[k];
        m->value = (double)counts[k];
        w->fn(m, w->user);
    }
}

static void histogram(const walk *w, mu_metric *m, const mu_met_hist *h)
{
    unsigned long long cum[MU_MET_BOUNDS], seen = 0;
    for (unsigned i = 0; i < MU_MET_BOUNDS; i++)
        cum[i] = seen += h->n[i];
    m->nbuckets = MU_MET_BOUNDS;
    m->le = mu_met_bound_s;
    m->buckets = cum;
    m->count = seen + h->n[MU_MET_BOUNDS];
    m->sum = (double)h->sum_us / 1e6;
    w->fn(m, w->user);
}

static void on_target(const mu_met_target_row *r, void *arg)
{
    const walk *w = arg;
    const mu_target_metrics *t = r->m;
    mu_metric m = base_of(w);
    m.service = r->service;
    m.method = r->method;
    switch (w->f->field) {
    case F_CALLS: m.value = (double)t->ended; break;
    case F_CALL_FAILED: by_kind(w, &m, t->call_failed); return;
    case F_CALLS_IN_FLIGHT: m.value = (double)(t->started - t->ended); break;
    case F_CALL_SECONDS: histogram(w, &m, &t->lat); return;
    case F_ATTEMPTS: m.value = (double)t->attempts; break;
    case F_FAILED: by_kind(w, &m, t->failed); return;
    case F_RETRIES: m.value = (double)t->retries; break;
    case F_HEDGES: m.value = (double)t->hedges; break;
    case F_EJECTIONS: m.value = (double)t->ejections; break;
    default: return;
    }
    w->fn(&m, w->user);
}

static void on_endpoint(const mu_met_ep_row *r, void *arg)
{
    const walk *w = arg;
    const mu_ep_metrics *e = r->m;
    mu_metric m = base_of(w);
    m.endpoint = r->endpoint;
    switch (w->f->field) {
    case F_EP_ATTEMPTS: m.value = (double)e->attempts; break;
    case F_EP_FAILED: by_kind(w, &m, e->failed); return;
    case F_EP_RETRIES: m.value = (double)e->retries; break;
    case F_EP_HEDGES: m.value = (double)e->hedges; break;
    case F_EP_EJECTIONS: m.value = (double)r->ejections; break;
    case F_EP_IN_FLIGHT: m.value = (double)r->in_flight; break;
    case F_EP_SECONDS: histogram(w, &m, &e->lat); return;
    default: return;
    }
    w->fn(&m, w->user);
}

void mu_metrics_visit(const mu_met_source *s, mu_metrics_fn fn, void *user)
{
    for (size_t i = 0; i < MU_ARRAY_LEN(families); i++) {
        walk w = {&families[i], fn, user};
        if (families[i].field < F_EP_ATTEMPTS)
            s->each_target(s->src, on_target, &w);
        else
            s->each_endpoint(s->src, on_endpoint, &w);
    }
}

/* ------------------------------------------------------------ the text */

/* Writes what fits, counts everything: the size comes from one pass. */
typedef struct out {
    char *buf;
    size_t cap, len;
    const char *family; /* the family whose HELP and TYPE were written last */
} out;

static void put(out *o, const char *s, size_t n)
{
    if (o->len < o->cap)
        memcpy(o->buf + o->len, s, o->len + n <= o->cap ? n : o->cap - o->len);
    o->len += n;
}

static void puts_(out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void putf(out *o, const char *fmt, ...) MU_PRINTF(2, 3);
static void putf(out *o, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        put(o, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A label value: backslash, double quote and line feed escaped. */
static void put_escaped(out *o, const char *s)
{
    for (const char *p = s; *p; p++) {
        if (*p == '\\')
            put(o, "\\\\", 2);
        else if (*p == '"')
            put(o, "\\\"", 2);
        else if (*p == '\n')
            put(o, "\\n", 2);
        else
            put(o, p, 1);
    }
}

static void put_label(out *o, int *n, const char *name, const char *value)
{
    if (!value)
        return;
    put(o, *n ? "," : "{", 1);
    puts_(o, name);
    put(o, "=\"", 2);
    put_escaped(o, value);
    put(o, "\"", 1);
    ++*n;
}

/* name{labels[,le="bound"]} */
static void put_series(out *o, const mu_metric *m, const char *suffix, const char *le)
{
    int n = 0;
    puts_(o, m->name);
    puts_(o, suffix);
    put_label(o, &n, "service", m->service);
    put_label(o, &n, "method", m->method);
    put_label(o, &n, "endpoint", m->endpoint);
    put_label(o, &n, "kind", m->kind);
    put_label(o, &n, "le", le);
    if (n)
        put(o, "}", 1);
    put(o, " ", 1);
}

static void put_number(out *o, double v)
{
    if (v >= 0 && v < 9007199254740992.0 && v == (double)(unsigned long long)v)
        putf(o, "%llu\n", (unsigned long long)v);
    else
        putf(o, "%.17g\n", v);
}

static void write_one(const mu_metric *m, void *user)
{
    out *o = user;
    static const char *const types[] = {"counter", "gauge", "histogram"};
    if (o->family != m->name) {
        o->family = m->name;
        putf(o, "# HELP %s ", m->name);
        puts_(o, m->help); /* ours: no backslash nor line feed to escape */
        putf(o, "\n# TYPE %s %s\n", m->name, types[m->type]);
    }
    if (m->type != MU_METRIC_HISTOGRAM) {
        put_series(o, m, "", NULL);
        put_number(o, m->value);
        return;
    }
    char le[32];
    for (size_t i = 0; i < m->nbuckets; i++) {
        mu_fmt(le, sizeof le, "%g", m->le[i]);
        put_series(o, m, "_bucket", le);
        put_number(o, (double)m->buckets[i]);
    }
    put_series(o, m, "_bucket", "+Inf");
    put_number(o, (double)m->count);
    put_series(o, m, "_sum", NULL);
    putf(o, "%.6f\n", m->sum);
    put_series(o, m, "_count", NULL);
    put_number(o, (double)m->count);
}

mu_status mu_metrics_text(const mu_met_source *s, char *buf, size_t cap, size_t *needed)
{
    out o = {buf, cap, 0, NULL};
    mu_metrics_visit(s, write_one, &o);
    if (needed)
        *needed = o.len + 1;
    if (o.len + 1 > cap) {
        if (cap)
            buf[0] = '\0';
        return MU_ENOSPACE;
    }
    buf[o.len] = '\0';
    return MU_OK;
}
