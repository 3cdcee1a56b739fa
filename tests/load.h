/* A load for end-to-end tests (header-only; include after fixture.h):
 * keeps `inflight` calls going until `total` have ended, and checks that
 * every callback fires exactly once. Each call carries a token allocated
 * when it starts and freed by its callback: a second callback for it is a
 * use after free and a missing one a leak, both fatal under ASan. */
#ifndef MU_TEST_LOAD_H
#define MU_TEST_LOAD_H

typedef struct load {
    mu_client *c;
    const char *target;
    int total, started, ended, failed, inflight;
    int idempotent;            /* mu_call_opts.idempotent: 0 unless set after load_init */
    int refused;               /* mu_call itself failed */
    int max_attempts;
    unsigned long long attempts, max_latency_us;
    int by_status[32];
    const char *watch_ep;      /* "host:port": count the calls it served */
    int watch_hits;
    unsigned long long slow_us; /* count the calls that took this long or more */
    int slow;
    char first_failure[400];
} load;

typedef struct load_token {
    load *l;
} load_token;

static inline void load_next(load *l);

static inline void load_done(const mu_result *r, void *user)
{
    load_token *t = user;
    load *l = t->l;
    free(t);
    l->ended++;
    l->attempts += (unsigned long long)r->attempts;
    if (r->attempts > l->max_attempts)
        l->max_attempts = r->attempts;
    if (r->latency_us > l->max_latency_us)
        l->max_latency_us = r->latency_us;
    if ((unsigned)r->status < sizeof l->by_status / sizeof l->by_status[0])
        l->by_status[r->status]++;
    if (l->watch_ep && r->endpoint && strcmp(r->endpoint, l->watch_ep) == 0)
        l->watch_hits++;
    if (l->slow_us && r->latency_us >= l->slow_us)
        l->slow++;
    if (r->status != MU_OK && l->failed++ == 0)
        snprintf(l->first_failure, sizeof l->first_failure, "%s: %s", mu_status_name(r->status),
                 r->detail);
    load_next(l);
}

static inline void load_next(load *l)
{
    if (l->started >= l->total)
        return;
    char args[32];
    snprintf(args, sizeof args, "[%d]", l->started);
    mu_call_opts o = MU_CALL_OPTS_INIT;
    o.idempotent = l->idempotent;
    l->started++;
    load_token *t = malloc(sizeof *t);
    assert_non_null(t);
    t->l = l;
    mu_status st = mu_call(l->c, l->target, args, NULL, &o, load_done, t, NULL);
    if (st != MU_OK) {
        free(t);
        l->ended++;
        l->refused++;
        if ((unsigned)st < sizeof l->by_status / sizeof l->by_status[0])
            l->by_status[st]++;
        if (l->failed++ == 0)
            snprintf(l->first_failure, sizeof l->first_failure, "mu_call: %s",
                     mu_client_errmsg(l->c));
    }
}

static inline int load_over(void *arg)
{
    load *l = arg;
    return l->ended >= l->total;
}

static inline void load_init(load *l, mu_client *c, const char *target, int total, int inflight)
{
    memset(l, 0, sizeof *l);
    l->c = c;
    l->target = target;
    l->total = total;
    l->inflight = inflight;
}

static inline void load_go(load *l)
{
    for (int i = 0; i < l->inflight; i++)
        load_next(l);
}

/* Non-idempotent calls. */
static inline void load_begin(load *l, mu_client *c, const char *target, int total, int inflight)
{
    load_init(l, c, target, total, inflight);
    load_go(l);
}

/* Runs the loop until every call has ended (fails the test after ms). */
static inline void load_wait(load *l, int ms)
{
    assert_true(tu_run_until(base, load_over, l, ms));
    assert_int_equal(l->ended, l->started);
}

/* load_wait, and no call may have failed. */
static inline void load_finish(load *l, int ms)
{
    load_wait(l, ms);
    if (l->failed)
        fprintf(stderr, "  %d of %d failed; first: %s\n", l->failed, l->total, l->first_failure);
    assert_int_equal(l->failed, 0);
}

/* The endpoints of target as mu_client_endpoints sees them: how many, how
 * many are down, their ejections; n = -1 while the group is not loaded. */
typedef struct downs {
    int down, n;
    unsigned long long ejections;
} downs;

static inline void count_down(const mu_endpoint_info *const *eps, size_t n, void *user)
{
    downs *d = user;
    d->n = (int)n;
    for (size_t i = 0; i < n; i++) {
        d->down += eps[i]->down;
        d->ejections += eps[i]->ejections;
    }
}

static inline downs endpoints(mu_client *c, const char *target)
{
    downs d = {0, -1, 0};
    if (mu_client_endpoints(c, target, count_down, &d) != MU_OK)
        d.n = -1;
    return d;
}

#endif
