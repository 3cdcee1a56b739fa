#include "config.h"
#include "health.h"

#include <stdlib.h>

#include "endpoint.h"

#define MAX_EJECT_MS 30000u

struct mu_health {
    mu_health_opts o;
    const mu_logger *log;
    uint64_t ok_us; /* moving average of successful attempts' latency, all endpoints */
};

mu_health *mu_health_new(const mu_health_opts *opts, const mu_logger *log)
{
    mu_health *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->o = *opts;
    h->log = log;
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

/* A refusal: ejected for eject_ms, doubling per consecutive refusal. */
static void eject(mu_health *h, mu_health_ep *s)
{
    s->failures++;
    s->fail_streak++;
    unsigned shift = s->fail_streak > 6 ? 5 : s->fail_streak - 1;
    uint64_t ms = (uint64_t)h->o.eject_ms << shift;
    if (ms > MAX_EJECT_MS)
        ms = MAX_EJECT_MS;
    s->down_until_us = mu_now_us() + ms * 1000u;
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
 * down by 1/8. Between samples it halves every EWMA_HALFLIFE_US, so an
 * endpoint that went slow and got no traffic since is tried again. */
#define EWMA_HALFLIFE_US 2000000u

static uint64_t ewma_now(const mu_health_ep *s, uint64_t now)
{
    uint64_t halves = now > s->ewma_at_us ? (now - s->ewma_at_us) / EWMA_HALFLIFE_US : 0;
    return halves >= 63 ? 0 : s->ewma_us >> halves;
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
}

uint64_t mu_health_cost(const mu_endpoint *e, uint64_t now_us, uint64_t neutral)
{
    const mu_health_ep *s = &e->health;
    uint64_t lat = s->ewma_us ? ewma_now(s, now_us) : neutral;
    uint64_t age = s->oldest_us && now_us > s->oldest_us ? now_us - s->oldest_us : 0;
    if (age > lat)
        lat = age; /* a stalled endpoint costs more before any call to it ends */
    return (lat ? lat : 1) * (uint64_t)(e->pending + 1);
}

int mu_health_ended(mu_health *h, mu_endpoint *e, const mu_attempt_report *r)
{
    learn_quickack(h, e, r);
    if (r->signal == MU_SIG_ANSWERED || r->signal == MU_SIG_TIMEOUT || r->signal == MU_SIG_BROKEN)
        ewma_sample(&e->health, latency_sample(h, r), r->now_us);
    mu_health_ep *s = &e->health;
    int verdict = learn_keepalive(h, e, r);
    switch (r->signal) {
    case MU_SIG_ANSWERED:
        s->fail_streak = 0;
        s->down_until_us = 0;
        break;
    case MU_SIG_REFUSED:
        eject(h, s);
        verdict |= MU_HEALTH_EJECTED;
        break;
    case MU_SIG_TIMEOUT:
    case MU_SIG_BROKEN:
        s->failures++;
        break;
    case MU_SIG_NEUTRAL:
        break;
    }
    return verdict;
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
