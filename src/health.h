/*
 * health: what each provider endpoint has shown of itself, and the verdicts
 * drawn from it: ejection and whether its connections may be kept.
 *
 * The per-endpoint state (mu_health_ep) is a section of mu_endpoint that
 * only health.c writes; balance.c copies down_until_us, the EWMA and
 * oldest_us to steer picks (health.c calls mu_endpoint_sync after each
 * change to them), and
 * introspection (client.c) reads the counters. call.c reports each
 * attempt's start and end here, reads `reuse_ok` to date its attempts, and
 * never edits the state itself. Latency tracking (the peak EWMA the ewma
 * policy reads) and outlier ejection live here; slow start is balance's.
 *
 * Ownership:
 *   mu_health       private to health.c; made and freed by client.c.
 *   mu_health_ep    in the view's mu_endpoint memory; written by health.c.
 *   mu_health_opts  a value, copied into mu_health.
 *   mu_inflight, mu_attempt_report
 *                   built on call.c's stack for one call into health.
 */
#ifndef MU_HEALTH_H
#define MU_HEALTH_H

#include <stdint.h>

#include "common.h"
#include "outcome.h"

struct mu_endpoint;

/* Owned by health.c, embedded in each mu_endpoint. Zero is a new endpoint. */
typedef struct mu_health_ep {
    /* copied by balance.c for its picks (mu_endpoint_sync): kept together, first */
    uint64_t down_until_us; /* ejected: not picked before this while others are up */
    uint64_t ewma_us;       /* peak-sensitive moving average of its latency; 0: no sample */
    uint64_t ewma_at_us;    /* when ewma_us was last updated */
    uint64_t oldest_us;     /* launch time of its oldest attempt in flight; 0: none */
    /* the rest */
    uint64_t calls;         /* attempts begun */
    uint64_t failures;      /* failures of its own: refusals and the strikes (see health.c) */
    unsigned fail_streak;   /* consecutive failures of the provider's own (see health.c) */
    unsigned eject_level;   /* ejections in a row: the next one lasts eject_ms x this */
    uint64_t ejections;     /* times ejected */
    int ejected;            /* ejected, and no answer since */
    uint64_t last_answer_us;/* when an HTTP answer last came from it */
    uint64_t silent_upto_us;/* launch time of the latest attempt counted as silent */
    uint64_t win_calls, win_errors; /* recent attempts and errors, halved every 10 s */
    uint64_t win_at_us;     /* when they were last halved */
    uint64_t rate_check_us; /* when its error rate was last compared with its peers' */
    uint64_t refused_us;    /* when an ejection of it was last refused (max_ejected_percent) */
    uint64_t reuse_ok;      /* answers that came over a kept connection */
    int no_reuse;           /* it does not keep connections usable: one per call */
    int quickack;           /* it holds answers' bodies back until our ACK */
} mu_health_ep;

/* Ejection rules. They may differ per service (KEY.SERVICE): each attempt
 * is judged by its call's service's (mu_attempt_report.rules). */
typedef struct mu_eject_rules {
    int eject_ms;        /* first ejection; eject_ms x ejections in a row after */
    int eject_max_ms;    /* cap on one ejection */
    int eject_after;     /* consecutive failures that eject (a refusal ejects at once) */
    int max_ejected_pct; /* share of a pool's endpoints that may be ejected at once */
} mu_eject_rules;

typedef struct mu_health_opts {
    int stall_ms;        /* keepalive_stall_ms */
    uint64_t seed;       /* for the jitter */
} mu_health_opts;

typedef struct mu_health mu_health;

mu_health *mu_health_new(const mu_health_opts *opts, const mu_logger *log);
void mu_health_free(mu_health *h);

/* An attempt begins on e. */
void mu_health_started(mu_health *h, struct mu_endpoint *e);

/* The oldest attempt still in flight on an endpoint, as call.c sees it. */
typedef struct mu_inflight {
    uint64_t age_us;         /* since it was handed to the transport */
    uint64_t reused_before;  /* the endpoint's `reuse_ok` when it began */
    int fresh_connection;    /* it sent over a connection it opened */
} mu_inflight;

/* How one attempt on e ended. */
typedef struct mu_attempt_report {
    mu_signal signal;
    mu_status status;        /* the attempt's outcome */
    const mu_eject_rules *rules; /* its call's service's */
    int failed;              /* the attempt's outcome was not MU_OK */
    uint64_t now_us;         /* when it ended */
    uint64_t latency_us;
    int answered;            /* an HTTP answer came back */
    long http_status;        /* its status (0: none) */
    int reused;              /* over a kept connection */
    int died_on_reuse;       /* a kept connection ended before any answer byte */
    uint64_t body_wait_us;   /* from the first answer byte to the last */
    size_t body_len;         /* answer body bytes */
    const mu_inflight *oldest; /* the oldest other attempt in flight on e, or NULL */
} mu_attempt_report;

/* Verdicts, as bits. */
enum {
    MU_HEALTH_EJECTED = 1,      /* attempts queued on e should go elsewhere */
    MU_HEALTH_ONE_PER_CALL = 2, /* e no longer keeps connections: close its idle ones */
};

/* Records the end of an attempt on e. */
int mu_health_ended(mu_health *h, struct mu_endpoint *e, const mu_attempt_report *r);

/* The oldest attempt on e, unanswered so far, would show e stalling new
 * connections if still unanswered after this many microseconds; 0 when
 * there is nothing to watch for. */
uint64_t mu_health_stall_wait(const mu_health *h, const struct mu_endpoint *e,
                              const mu_inflight *oldest);
/* That time has passed with the oldest attempt still unanswered. */
int mu_health_stalled(mu_health *h, struct mu_endpoint *e, const mu_inflight *oldest);

/* In-flight age: how long an attempt may go unanswered before it counts as
 * a failure of its endpoint's, though its timeout has not fired: 8 times
 * its method's usual latency (usual_us, measured over every endpoint: a
 * slow method is not judged by a fast one's latency), at least 100 ms.
 * 0 (never) while the method has had no answer. */
uint64_t mu_health_silent_after(uint64_t usual_us);
/* The attempt on e launched at launch_us has gone unanswered past
 * mu_health_silent_after(). Told oldest first; each attempt counts once,
 * and only if no answer has come from e since it began. */
int mu_health_silent(mu_health *h, struct mu_endpoint *e, const mu_eject_rules *rules,
                     uint64_t launch_us, uint64_t now_us);

/* Ejections so far, all endpoints. */
uint64_t mu_health_ejections(const mu_health *h);

/* The oldest attempt in flight on e began at launch_us (0: none in flight).
 * call.c tells whenever that changes. */
void mu_health_inflight(mu_health *h, struct mu_endpoint *e, uint64_t launch_us);

/* The ewma policy's view of an endpoint's latency now, in microseconds
 * (at least 1): its peak EWMA (ewma_us, last sampled at ewma_at_us) halved
 * for every 2^MU_EWMA_HALFLIFE_SHIFT us (2.1 s) without a sample, or
 * `neutral` while it has none (ewma_us 0); raised to the age of its oldest
 * attempt in flight (launched at oldest_us; 0: none), so that a stalled
 * endpoint costs more before any call to it ends. A pure function of the
 * fields picks read: balance.c keeps copies of them per pool
 * (mu_endpoint_sync) and calls it on those. A pick's cost is this x
 * (pending + 1). The half-life is a power of two: a shift, not a division,
 * in every pick. */
#define MU_EWMA_HALFLIFE_SHIFT 21
static inline uint64_t mu_health_latency(uint64_t ewma_us, uint64_t ewma_at_us, uint64_t oldest_us,
                                         uint64_t now_us, uint64_t neutral)
{
    uint64_t lat = neutral;
    if (ewma_us) {
        uint64_t halves = now_us > ewma_at_us ? (now_us - ewma_at_us) >> MU_EWMA_HALFLIFE_SHIFT : 0;
        lat = halves >= 63 ? 0 : ewma_us >> halves;
    }
    uint64_t age = oldest_us && now_us > oldest_us ? now_us - oldest_us : 0;
    lat = age > lat ? age : lat;
    return lat ? lat : 1;
}

/* Not ejected at now. */
int mu_health_up(const struct mu_endpoint *e, uint64_t now_us);
/* Its connections may be kept for the next exchange. */
int mu_health_keepalive(const struct mu_endpoint *e);
/* Its connections should ack at once (TCP_QUICKACK). */
int mu_health_quickack(const struct mu_endpoint *e);

#endif
