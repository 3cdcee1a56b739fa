/*
 * call: every call's life, owned by struct mu_calls (private to call.c).
 * Wait for discovery (bounded by the deadline), pick (balance), send
 * (transport), decode (codec), classify (outcome), report to health, retry
 * when that is safe, and deliver the result exactly once.
 *
 * client.c resolves the target and hands the call here; nothing in here
 * calls back into client.c except through the function pointers of
 * mu_calls_deps. User callbacks only ever run from the calls' own drain
 * event or from mu_calls_cancel() and mu_calls_cancel_all(): never deep
 * inside curl or ZooKeeper, so a callback may free the client or cancel any
 * call.
 *
 * Ownership:
 *   mu_calls          private to call.c; made and freed by client.c.
 *   call objects      (struct mu_call_handle) private to call.c, recycled
 *                     there; each owns one mu_xfer, its timers and decoder.
 *   mu_target         owned by client.c's target table; calls borrow it.
 *   mu_call_settings, mu_calls_deps
 *                     built by client.c, copied into mu_calls at creation.
 * call.c also writes the endpoints' lane section (endpoint.h).
 */
#ifndef MU_CALL_H
#define MU_CALL_H

#include <stddef.h>
#include <stdint.h>

#include "balance.h"
#include "codec.h"
#include "common.h"
#include "health.h"
#include "life.h"
#include "metrics.h"
#include "transport.h"
#include "view.h"

struct event_base;

/* A method's recent latencies: 4 log-spaced buckets per octave of
 * microseconds (from 1 us to over an hour), halved every 1,024 samples so
 * that it follows the present. */
#define MU_LAT_BUCKETS 128
typedef struct mu_lat_hist {
    uint32_t n[MU_LAT_BUCKETS];
    uint32_t total, since_halving;
} mu_lat_hist;

/* What may differ per service (KEY.SERVICE). Owned by client.c: one with
 * the client's values, one per service that overrides any, each living
 * as long as the client; targets point at their service's. */
typedef struct mu_svc_opts {
    mu_policy policy;
    int timeout_ms, deadline_ms, retries;
    int hedge_ms;       /* 0: no hedging (unless hedge_pm) */
    int hedge_pm;       /* hedge = pNN: the percentile, per mille; 0: hedge_ms alone */
    int slow_start_ms;  /* 0: none */
    int tls;            /* its providers are called over HTTPS */
    int empty_protection; /* keep a method's last list when it empties (per-method layout) */
    mu_eject_rules eject;
} mu_svc_opts;

/* What a target ("svc:method") resolves to. Owned by client.c's target
 * table; calls hold a pointer to it for their lifetime. */
typedef struct mu_target {
    mu_group *g;
    int idempotent;
    const mu_svc_opts *o;
    size_t split; /* offset of ':' */
    uint64_t usual_us; /* call.c's: moving average of the method's successful attempts
                        * (1/16 a sample), for in-flight age; 0: none yet */
    mu_lat_hist lat;   /* call.c's: the same attempts' latencies, for hedge = pNN */
    mu_target_metrics met; /* call.c's: the method's counters (metrics.h) */
} mu_target;

/* The settings calls need, copied at creation. */
typedef struct mu_call_settings {
    int deadline_ms;                 /* the client's: calls with it share a common timeout */
    int max_per_host;                /* attempts handed to curl per endpoint; the rest queue */
    int max_calls;                   /* calls live at once (max_calls) */
    int max_queue;                   /* attempts queued per endpoint (max_queue_per_host) */
    int budget_pct, budget_min_per_s; /* retry_budget_percent, retry_budget_min_per_s */
    int backoff_ms, backoff_max_ms;  /* connect_backoff_ms, connect_backoff_max_ms */
    mu_proto proto;
    const char *auth_token;          /* borrowed from the client */
    size_t max_response;
} mu_call_settings;

/* What calls use but do not own. */
typedef struct mu_calls_deps {
    struct event_base *base;
    mu_transport *tp;
    mu_view *view;     /* endpoint references are released through it */
    mu_health *health;
    const mu_logger *log;
    mu_client_stats *stats;
    mu_life *life;     /* the client's; user callbacks run inside it */
    /* Why providers may be slow to load (ZooKeeper unreachable), for the
     * detail of MU_EDISCOVERY; writes "" when nothing is known. */
    void (*discovery_state)(void *user, char *buf, size_t cap);
    void *user;
} mu_calls_deps;

typedef struct mu_calls mu_calls;

mu_calls *mu_calls_new(const mu_calls_deps *deps, const mu_call_settings *s, uint64_t seed);
/* Every call must have ended (mu_calls_cancel_all) first. */
void mu_calls_free(mu_calls *m);

/* Starts a call (mu_call()). MU_EINVAL or MU_ENOMEM with err set, and then
 * cb never fires. */
mu_status mu_calls_start(mu_calls *m, mu_target *t, const char *method, const char *args,
                         const char *kwargs, const mu_call_opts *o, mu_call_cb cb, void *user,
                         mu_call_id *id, char *err, size_t errcap);
/* mu_call_cancel(): 1 if a live call was cancelled (its callback ran). */
int mu_calls_cancel(mu_calls *m, mu_call_id id);
/* Every call not yet delivered ends now with MU_ECANCELLED. */
void mu_calls_cancel_all(mu_calls *m);
/* A group's endpoint set or state changed: calls waiting for it go on. */
void mu_calls_group_changed(mu_calls *m, mu_group *g);

#endif
