#include "config.h"
#include "health.h"

#include <stdlib.h>

#include "balance.h"
#include "endpoint.h"

struct mu_health {
    mu_health_opts o;
    const mu_logger *log;
    uint64_t ok_us; /* moving average of successful attempts' latency, all endpoints */
    uint64_t rng;
    uint64_t ejections;
};

mu_health *mu_health_new(const mu_health_opts *opts, const mu_logger *log)
{
    mu_health *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->o = *opts;
    h->log = log;
    h->rng = opts->seed | 1;
    return h;
}

void mu_health_free(mu_health *h)
{
    free(h);
}

void mu_health_started(mu_health *h, mu_endpoint *e)
{
    MU_UNUSED(h);
    e->health.calls++;
}

/* ------------------------------------------------------------ ejection
 *
 * Outlier ejection, for every failure kind (docs/design.md, health):
 *   - a refused connect ejects at once: nothing listens there;
 *   - eject_after consecutive failures of the provider's own eject: a
 *     timeout, a connection broken after sending, an HTTP 5xx without a
 *     microutil body, a response that breaks the protocol or the size cap,
 *     and attempts unanswered far past the endpoint's usual latency
 *     (mu_health_silent) before their timeout fires;
 *   - an error rate far above the peers': at least 20 recent attempts, at
 *     least half failed (remote errors included), and 30 points above the
 *     rate of the other endpoints of its pools. Errors that every provider
 *     gives alike (bad input) eject nobody.
 * An ejection lasts eject_ms x ejections in a row, +0-25% jitter, up to
 * eject_max_ms; it is refused when it would leave more than
 * max_ejected_pct % of a pool's endpoints down (the first one down is
 * always allowed): then all are used, as in Envoy's panic mode. The
 * endpoint is tried again by real traffic once the time is up; one more
 * failure then ejects it again, longer, and an answer ends the streak. */
#define WINDOW_US 10000000u
#define RATE_MIN_CALLS 20u
#define RATE_GAP_PCT 30u
#define RATE_CHECK_US 1000000u
#define REFUSED_RETRY_US 1000000u

static int eject(mu_health *h, mu_endpoint *e, const mu_eject_rules *ru, uint64_t now,
                 const char *why)
{
    mu_health_ep *s = &e->health;
    if (s->down_until_us > now)
        return 0; /* already out */
    if (s->refused_us && now < s->refused_us + REFUSED_RETRY_US)
        return 0; /* refused a moment ago: not a pool scan and a log line per failure */
    mu_peers pe;
    mu_endpoint_peers(e, now, ru->max_ejected_pct, &pe);
    if (pe.over_cap) {
        s->refused_us = now;
        mu_log(h->log, MU_LOG_INFO,
               "%s: not ejected (%s): %d%% of its pool would be down, over max_ejected_percent "
               "(%d%%); every endpoint stays in use",
               e->key, why, pe.down_pct, ru->max_ejected_pct);
        return 0;
    }
    if (s->eject_level < 1000)
        s->eject_level++;
    uint64_t ms = (uint64_t)ru->eject_ms * s->eject_level;
    ms += mu_rand(&h->rng) % (ms / 4 + 1);
    if (ms > (uint64_t)ru->eject_max_ms)
        ms = (uint64_t)ru->eject_max_ms;
    s->down_until_us = now + ms * 1000u;
    mu_endpoint_sync(e);
    s->ejections++;
    s->ejected = 1;
    h->ejections++;
    mu_log(h->log, MU_LOG_INFO, "%s: ejected for %llu ms (ejection %u in a row): %s", e->key,
           (unsigned long long)ms, s->eject_level, why);
    return MU_HEALTH_EJECTED;
}

/* A failure of the provider's own. */
static int strike(mu_health *h, mu_endpoint *e, const mu_eject_rules *ru, uint64_t now,
                  const char *what)
{
    mu_health_ep *s = &e->health;
    s->failures++;
    s->fail_streak++;
    if (s->fail_streak < (unsigned)ru->eject_after)
        return 0;
    char why[160];
    mu_fmt(why, sizeof why, "%u failures in a row, the last: %s", s->fail_streak, what);
    return eject(h, e, ru, now, why);
}

static void answered(mu_health *h, mu_endpoint *e, const mu_eject_rules *ru, uint64_t now)
{
    mu_health_ep *s = &e->health;
    s->fail_streak = 0;
    s->last_answer_us = now;
    if (s->ejected) {
        s->ejected = 0;
        mu_log(h->log, MU_LOG_INFO, "%s: answering again after ejection %u", e->key,
               s->eject_level);
    }
    /* Up for as long as it was last out: the next ejection starts short. */
    uint64_t last = (uint64_t)ru->eject_ms * s->eject_level;
    if (last > (uint64_t)ru->eject_max_ms)
        last = (uint64_t)ru->eject_max_ms;
    last *= 1000u;
    if (s->eject_level && now >= s->down_until_us + last)
        s->eject_level = 0;
}

/* The error-rate outlier check (see above). */
static int error_rate(mu_health *h, mu_endpoint *e, const mu_eject_rules *ru, int failed,
                      uint64_t now)
{
    mu_health_ep *s = &e->health;
    while (now >= s->win_at_us + WINDOW_US) { /* at most a few rounds: then it is 0 */
        s->win_calls /= 2;
        s->win_errors /= 2;
        s->win_at_us = s->win_calls ? s->win_at_us + WINDOW_US : now;
    }
    s->win_calls++;
    s->win_errors += failed != 0;
    if (!failed || s->win_calls < RATE_MIN_CALLS || s->win_errors * 2 < s->win_calls ||
        now < s->rate_check_us + RATE_CHECK_US || s->down_until_us > now)
        return 0;
    s->rate_check_us = now;
    mu_peers pe;
    mu_endpoint_peers(e, now, ru->max_ejected_pct, &pe);
    uint64_t own = s->win_errors * 100 / s->win_calls;
    uint64_t peers = pe.calls ? pe.errors * 100 / pe.calls : 100;
    if (own < peers + RATE_GAP_PCT)
        return 0;
    char why[160];
    mu_fmt(why, sizeof why, "%llu%% of its last %llu attempts failed, %llu%% of its peers'",
           (unsigned long long)own, (unsigned long long)s->win_calls, (unsigned long long)peers);
    return eject(h, e, ru, now, why);
}

uint64_t mu_health_ejections(const mu_health *h)
{
    return h->ejections;
}

/* Keep-alive that the provider does not honour (docs/protocol.md §6.5, §6.6).
 * - A kept connection died before any answer, and no answer has ever come
 *   over a kept connection to it: it closes every connection after one
 *   response without saying so (uwsgi --http-socket).
 * - The oldest attempt on it went over a new connection and has had no
 *   answer for keepalive_stall_ms, while at least 4 answers came over kept
 *   connections since it began: connections are served one at a time each
 *   by a fixed number of workers (uwsgi --http11-socket), and ours wait
 *   unread behind the connections we keep open. (Answers over new
 *   connections do not count: when many connections open at once, a busy
 *   server answers them in its own order.)
 * Either way its connections are then used once and closed, as the Python
 * client does; closing the kept ones frees the workers that the waiting
 * attempts need. Lasts while the endpoint is in the view. */
#define STALL_LATER_ANSWERS 4

static int one_per_call(mu_health *h, mu_endpoint *e, const char *why)
{
    if (e->health.no_reuse)
        return 0;
    e->health.no_reuse = 1;
    mu_log(h->log, MU_LOG_INFO, "%s: %s: one connection per call from now on", e->key, why);
    return MU_HEALTH_ONE_PER_CALL;
}

/* The oldest attempt could be one waiting unread behind kept connections. */
static int stall_suspect(const mu_endpoint *e, const mu_inflight *o)
{
    return o && o->fresh_connection && !e->health.no_reuse &&
           e->health.reuse_ok - o->reused_before >= STALL_LATER_ANSWERS;
}

uint64_t mu_health_stall_wait(const mu_health *h, const mu_endpoint *e, const mu_inflight *o)
{
    uint64_t limit = (uint64_t)h->o.stall_ms * 1000u;
    if (!stall_suspect(e, o))
        return 0;
    return o->age_us >= limit ? 1 : limit - o->age_us;
}

int mu_health_stalled(mu_health *h, mu_endpoint *e, const mu_inflight *o)
{
    if (!stall_suspect(e, o) || o->age_us < (uint64_t)h->o.stall_ms * 1000u)
        return 0;
    return one_per_call(h, e, "it leaves new connections unread while it serves kept ones");
}

static int learn_keepalive(mu_health *h, mu_endpoint *e, const mu_attempt_report *r)
{
    mu_health_ep *s = &e->health;
    if (r->answered && r->reused)
        s->reuse_ok++;
    if (r->died_on_reuse && s->reuse_ok == 0)
        return one_per_call(h, e, "it closes connections after each response");
    if (r->answered)
        return mu_health_stalled(h, e, r->oldest);
    return 0;
}

/* A small answer whose body came 30 ms or more after its first byte: the
 * server's Nagle waited for our delayed ACK of the headers (two writes,
 * Python's http.server; docs/protocol.md §6.2). Linux delays an ACK by at
 * least 40 ms. From then on its connections ack at once. */
#define NAGLE_WAIT_US 30000u
#define NAGLE_BODY_MAX (16u * 1024u)

static void learn_quickack(mu_health *h, mu_endpoint *e, const mu_attempt_report *r)
{
    if (e->health.quickack || !r->answered || r->body_wait_us < NAGLE_WAIT_US ||
        r->body_len > NAGLE_BODY_MAX)
        return;
    e->health.quickack = 1;
    mu_log(h->log, MU_LOG_INFO,
           "%s: the body of a %zu-byte answer came %llu ms after its headers (Nagle waiting for "
           "our delayed ACK): acking at once from now on",
           e->key, r->body_len, (unsigned long long)(r->body_wait_us / 1000));
}

/* Latency (docs/design.md, health): a peak-sensitive moving average, as
 * Finagle's PeakEwma: a sample above the average replaces it at once (a
 * slow provider is seen at its first slow answer); a lower one pulls it
 * down by 1/8. Between samples it halves every 2.1 s, so an
 * endpoint that went slow and got no traffic since is tried again
 * (mu_health_latency). */
static uint64_t ewma_now(const mu_health_ep *s, uint64_t now)
{
    return s->ewma_us ? mu_health_latency(s->ewma_us, s->ewma_at_us, 0, now, 0) : 0;
}

static void ewma_sample(mu_health_ep *s, uint64_t sample_us, uint64_t now)
{
    uint64_t cur = ewma_now(s, now);
    if (!s->ewma_us || sample_us >= cur)
        s->ewma_us = sample_us ? sample_us : 1;
    else
        s->ewma_us = cur - (cur - sample_us) / 8;
    s->ewma_at_us = now;
}

/* What an attempt's end says of its endpoint's latency. Answers and
 * failures after sending count; refusals and neutral ends do not. A failed
 * attempt counts as slow, at least 5 times the usual success (and 5 ms):
 * otherwise a provider that fails fast (1.0.2 answers every exception with
 * an OtherError 500 at once, say with its database down) would look the
 * fastest and draw the traffic (measured: 2,994 calls of 3,000 to the one
 * of 3 providers failing everything). Errors that every provider gives
 * alike (bad input) weigh on all alike. */
#define FAIL_FACTOR 5u
#define FAIL_MIN_US 5000u

static uint64_t latency_sample(mu_health *h, const mu_attempt_report *r)
{
    if (!r->failed) {
        h->ok_us = h->ok_us ? h->ok_us - h->ok_us / 16 + r->latency_us / 16 : r->latency_us;
        return r->latency_us;
    }
    uint64_t floor = h->ok_us * FAIL_FACTOR > FAIL_MIN_US ? h->ok_us * FAIL_FACTOR : FAIL_MIN_US;
    return r->latency_us > floor ? r->latency_us : floor;
}

void mu_health_inflight(mu_health *h, mu_endpoint *e, uint64_t launch_us)
{
    MU_UNUSED(h);
    e->health.oldest_us = launch_us;
    mu_endpoint_sync(e);
}

/* A failure of the provider's own, among attempts that reached it: what
 * strike() counts. NULL for anything else. */
static const char *own_failure(const mu_attempt_report *r)
{
    if (r->signal == MU_SIG_TIMEOUT)
        return "no answer within timeout_ms";
    if (r->signal == MU_SIG_BROKEN)
        return "the connection broke after the request was sent";
    switch (r->status) {
    case MU_EHTTP: /* a 4xx is the caller's (a wrong path gets Django's 404 from all) */
        return r->answered && r->http_status >= 500 ? "an HTTP 5xx without a microutil body"
                                                    : NULL;
    case MU_EPROTOCOL:
        return "a response that breaks the protocol";
    case MU_ETOOBIG:
        return "a response over max_response_bytes";
    default:
        return NULL;
    }
}

/* An attempt that ended unanswered and that in-flight age already counted
 * (mu_health_silent: attempts are told oldest first, so every unanswered
 * attempt launched up to silent_upto_us was counted, or had an answer
 * from e come after it began, which makes its silence no failure of e's). */
static int counted_silent(const mu_endpoint *e, const mu_attempt_report *r)
{
    uint64_t launch = r->now_us - r->latency_us;
    return (r->signal == MU_SIG_TIMEOUT || r->signal == MU_SIG_BROKEN) &&
           launch <= e->health.silent_upto_us;
}

int mu_health_ended(mu_health *h, mu_endpoint *e, const mu_attempt_report *r)
{
    learn_quickack(h, e, r);
    if (r->signal == MU_SIG_ANSWERED || r->signal == MU_SIG_TIMEOUT || r->signal == MU_SIG_BROKEN) {
        ewma_sample(&e->health, latency_sample(h, r), r->now_us);
        mu_endpoint_sync(e);
    }
    int verdict = learn_keepalive(h, e, r);
    const char *own = own_failure(r);
    if (r->signal == MU_SIG_REFUSED) {
        e->health.failures++;
        e->health.fail_streak++;
        verdict |= eject(h, e, r->rules, r->now_us, "connection refused");
    } else if (own && counted_silent(e, r)) {
        /* struck already, while in flight: one attempt, one strike */
    } else if (own) {
        verdict |= strike(h, e, r->rules, r->now_us, own);
    } else if (r->signal == MU_SIG_ANSWERED) {
        answered(h, e, r->rules, r->now_us);
    }
    if (own || r->signal == MU_SIG_ANSWERED)
        verdict |= error_rate(h, e, r->rules, own || r->failed, r->now_us);
    return verdict;
}

#define SILENT_FACTOR 8u
#define SILENT_MIN_US 100000u

uint64_t mu_health_silent_after(uint64_t usual_us)
{
    if (!usual_us)
        return 0;
    uint64_t us = usual_us * SILENT_FACTOR;
    return us > SILENT_MIN_US ? us : SILENT_MIN_US;
}

int mu_health_silent(mu_health *h, mu_endpoint *e, const mu_eject_rules *ru, uint64_t launch_us,
                     uint64_t now_us)
{
    mu_health_ep *s = &e->health;
    if (s->last_answer_us >= launch_us || launch_us <= s->silent_upto_us)
        return 0; /* it answers (that call is just slow), or counted already */
    s->silent_upto_us = launch_us;
    char what[96];
    mu_fmt(what, sizeof what, "an attempt unanswered for %llu ms, 8 times its method's usual",
           (unsigned long long)((now_us - launch_us) / 1000));
    return strike(h, e, ru, now_us, what);
}

int mu_health_up(const mu_endpoint *e, uint64_t now_us)
{
    return e->health.down_until_us <= now_us;
}

int mu_health_keepalive(const mu_endpoint *e)
{
    return !e->health.no_reuse;
}

int mu_health_quickack(const mu_endpoint *e)
{
    return e->health.quickack;
}
