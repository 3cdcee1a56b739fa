/*
 * metrics: the counters behind mu_client_metrics() and mu_metrics_write(),
 * and the Prometheus text they are written as.
 *
 * The counters live in structs that exist anyway, so that a call costs no
 * allocation and no lookup: a mu_ep_metrics section in each mu_endpoint
 * (endpoint.h) and a mu_target_metrics section in each mu_target
 * (call.h). Both are written only by call.c, through the inline helpers
 * below, where an attempt's or a call's outcome is already known; there
 * are no locks (one client, one loop). What other modules already count is
 * read, not copied: an endpoint's ejections (health.c's
 * `health.ejections`) and its attempts held (balance.c's `pending`).
 *
 * metrics.c owns the bucket bounds, the names of kinds, the families
 * (names, help, types, order) and the text writer. It reads the counters
 * through rows that client.c fills from its targets and the view's
 * endpoints (mu_met_source): it knows neither.
 *
 * Ownership:
 *   mu_ep_metrics      view's memory (in mu_endpoint), zeroed when view.c allocates it;
 *                      written by call.c.
 *   mu_target_metrics  client.c's memory (in mu_target); written by call.c.
 *   mu_met_source, rows  the caller's stack, for one walk.
 */
#ifndef MU_METRICS_H
#define MU_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "microutil/microutil.h"

/* Finite bucket bounds (microseconds in mu_met_bound_us, seconds in
 * mu_met_bound_s), 100 us to 30 s, 1-2.5-5 steps; one more bucket counts
 * what is above the last. */
#define MU_MET_BOUNDS 17
extern const uint32_t mu_met_bound_us[MU_MET_BOUNDS];
extern const double mu_met_bound_s[MU_MET_BOUNDS];

/* Failures are counted by mu_status; index 0 (MU_OK, never a failure)
 * holds statuses newer than this table ("other"). */
#define MU_MET_KINDS 16

typedef struct mu_met_hist {
    uint64_t n[MU_MET_BOUNDS + 1]; /* per bucket, not cumulative */
    uint64_t sum_us;
} mu_met_hist;

/* An endpoint's, all methods together (an endpoint is shared by every
 * group that lists it). */
typedef struct mu_ep_metrics {
    uint64_t attempts;              /* attempts that ended on it after reaching the transport */
    uint64_t failed[MU_MET_KINDS];  /* of which failed, by status */
    uint64_t retries;               /* retries after its attempts failed */
    uint64_t hedges;                /* hedges sent because it was slow to answer */
    mu_met_hist lat;                /* those attempts' durations */
} mu_ep_metrics;

/* A method's (one mu_target). */
typedef struct mu_target_metrics {
    uint64_t started, ended;        /* calls: in flight = started - ended */
    uint64_t call_failed[MU_MET_KINDS]; /* calls that ended in failure, by status */
    uint64_t attempts;              /* attempts that reached the transport and ended */
    uint64_t failed[MU_MET_KINDS];  /* of which failed, by status */
    uint64_t retries, hedges;       /* as mu_client_stats counts them */
    uint64_t ejections;             /* endpoints ejected on an attempt of this method's */
    mu_met_hist lat;                /* calls' durations, mu_call() to the callback */
} mu_target_metrics;

static inline void mu_met_hist_add(mu_met_hist *h, uint64_t us)
{
    unsigned i = 0;
    while (i < MU_MET_BOUNDS && us > mu_met_bound_us[i]) /* a few steps: most are fast */
        i++;
    h->n[i]++;
    h->sum_us += us;
}

static inline void mu_met_count(uint64_t *by_kind, mu_status st)
{
    by_kind[(unsigned)st < MU_MET_KINDS ? (unsigned)st : 0]++;
}

/* --- reading: one row per series source -------------------------------- */

typedef struct mu_met_target_row {
    const char *service, *method;
    const mu_target_metrics *m;
} mu_met_target_row;

typedef struct mu_met_ep_row {
    const char *endpoint;           /* "host:port" */
    const mu_ep_metrics *m;
    uint64_t ejections;             /* health.c's */
    int in_flight;                  /* balance.c's pending */
} mu_met_ep_row;

/* client.c walks its targets and the view's endpoints, once per family. */
typedef struct mu_met_source {
    void (*each_target)(void *src, void (*fn)(const mu_met_target_row *row, void *arg), void *arg);
    void (*each_endpoint)(void *src, void (*fn)(const mu_met_ep_row *row, void *arg), void *arg);
    void *src;
} mu_met_source;

/* Hands every series to fn, family after family (mu_client_metrics()). */
void mu_metrics_visit(const mu_met_source *s, mu_metrics_fn fn, void *user);

/* The text exposition format into buf (mu_metrics_write()). */
mu_status mu_metrics_text(const mu_met_source *s, char *buf, size_t cap, size_t *needed);

#endif
