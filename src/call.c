/*
 * call: one call's life. Resolve, wait for discovery (bounded by the
 * deadline), pick, send, classify the outcome, retry on another endpoint
 * when that is safe, and deliver the result exactly once.
 *
 * User callbacks only ever run from the client's drain event, from
 * mu_call_cancel() or from mu_client_free(): never deep inside curl or
 * ZooKeeper, so a callback may free the client or cancel any call.
 */
#include "config.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "outcome.h"

typedef struct mu_call_handle call_t;

/* Sent attempts are at most 1 + 10 retries; rounds of unsent ones are
 * reset after each backoff. Past the cap an endpoint is simply not
 * remembered (it may be picked again sooner). */
#define MAX_TRIED 16

enum call_state {
    C_WAITING,  /* for its group's first load */
    C_QUEUED,   /* an attempt waits for one of its endpoint's connections */
    C_RUNNING,  /* an attempt is in flight */
    C_BACKOFF,  /* no provider accepted a connection: waiting to try again */
    C_DONE,     /* outcome known, queued for delivery */
    C_DELIVERING,
};

struct mu_call_handle {
    mu_client *c;
    struct mu_call_handle *prev, *next; /* c->live */
    /* done queue, the group's waiters, or the endpoint's queue or running list */
    struct mu_call_handle *qnext;
    struct mu_call_handle *qprev;       /* the endpoint's queue or running list only */
    enum call_state state;
    mu_target *t;
    mu_call_cb cb;
    void *user;
    mu_buf body;
    size_t prefix_len;
    mu_xfer *x;
    struct event *timer; /* the deadline */
    struct event *backoff; /* the wait before trying refusing providers again */
    struct curl_slist *hdrs; /* per attempt, 1.0.4+ only */
    const struct curl_slist *send_hdrs; /* the headers of the attempt */
    mu_endpoint *ep;     /* the attempt in flight holds ep->pending */
    mu_endpoint *tried[MAX_TRIED]; /* this round's endpoints, avoided while others exist */
    int ntried;
    int attempts;     /* every attempt begun, as reported in mu_result */
    int sent;         /* attempts that may have reached a provider: these use up retries */
    int max_attempts; /* bound on sent */
    int nbackoff;     /* waits so far */
    int idempotent, timeout_ms;
    uint64_t launch_us;      /* when the running attempt went to curl */
    uint64_t done_at_launch; /* its endpoint's done_seq then */
    long attempt_timeout_ms; /* what the running attempt was given (may be cut by the deadline) */
    mu_policy policy;
    uint64_t start_us, deadline_us;
    char request_id[40];
    /* outcome */
    mu_status status;
    long http_status;
    char endpoint[72];
    char detail[320];
    char unsent_why[200];  /* the last attempt that never reached a provider */
    char unsent_eps[160];  /* "host:port, ..." of those attempts */
    mu_decoder dec;
    mu_reply reply;
};

#define MAX_SPARES 4096
#define KEEP_BYTES (64u * 1024u)


static void on_deadline(evutil_socket_t fd, short what, void *arg);
static void on_backoff(evutil_socket_t fd, short what, void *arg);
static void start_attempt(call_t *k);
static void retry_unsent(call_t *k, const char *why);

/* --------------------------------------------------------------- plumbing */

static void live_unlink(call_t *k)
{
    mu_client *c = k->c;
    if (k->prev)
        k->prev->next = k->next;
    else
        c->live = k->next;
    if (k->next)
        k->next->prev = k->prev;
    k->prev = k->next = NULL;
}

static void call_destroy(call_t *k)
{
    mu_xfer_free(k->x);
    event_free(k->timer);
    event_free(k->backoff);
    mu_buf_free(&k->body);
    mu_decoder_cleanup(&k->dec);
    free(k);
}

static void recycle(call_t *k)
{
    mu_client *c = k->c;
    live_unlink(k);
    if (k->hdrs) {
        curl_slist_free_all(k->hdrs);
        k->hdrs = NULL;
    }
    if (c->nspare < MAX_SPARES && !c->dying) {
        /* A spare keeps small buffers only: one huge response must not stay
         * resident in every recycled call. */
        mu_xfer_trim(k->x, KEEP_BYTES);
        if (k->dec.plain.cap > KEEP_BYTES)
            mu_buf_free(&k->dec.plain);
        if (k->dec.scratch.cap > KEEP_BYTES)
            mu_buf_free(&k->dec.scratch);
        if (k->body.cap > KEEP_BYTES)
            mu_buf_free(&k->body);
        k->qnext = c->spare;
        c->spare = k;
        c->nspare++;
        return;
    }
    call_destroy(k);
}

void mu_calls_free_spares(mu_client *c)
{
    while (c->spare) {
        call_t *k = c->spare;
        c->spare = k->qnext;
        call_destroy(k);
    }
    c->nspare = 0;
}

static call_t *call_get(mu_client *c)
{
    call_t *k = c->spare;
    if (k) {
        c->spare = k->qnext;
        c->nspare--;
    } else {
        k = calloc(1, sizeof *k);
        if (!k)
            return NULL;
        k->c = c;
        k->x = mu_xfer_new(c->tp);
        k->timer = evtimer_new(c->base, on_deadline, k);
        k->backoff = evtimer_new(c->base, on_backoff, k);
        if (!k->x || !k->timer || !k->backoff) {
            if (k->x)
                mu_xfer_free(k->x);
            if (k->timer)
                event_free(k->timer);
            if (k->backoff)
                event_free(k->backoff);
            free(k);
            return NULL;
        }
        mu_decoder_init(&k->dec, c->s.max_response);
        k->dec.cache = &c->ycache;
    }
    k->qnext = k->qprev = NULL;
    k->state = C_RUNNING; /* neither waiting nor queued until told */
    k->ep = NULL;
    k->ntried = 0;
    k->attempts = 0;
    k->sent = 0;
    k->nbackoff = 0;
    k->unsent_why[0] = '\0';
    k->unsent_eps[0] = '\0';
    k->http_status = 0;
    k->endpoint[0] = '\0';
    k->detail[0] = '\0';
    k->status = MU_OK;
    memset(&k->reply, 0, sizeof k->reply);
    mu_buf_reset(&k->body);
    k->next = c->live;
    k->prev = NULL;
    if (c->live)
        c->live->prev = k;
    c->live = k;
    return k;
}

/* Ends the attempt in flight, if any: gives back the endpoint's pending slot. */
static void end_attempt(call_t *k)
{
    if (!k->ep)
        return;
    mu_endpoint *e = k->ep;
    k->ep = NULL;
    mu_endpoint_pending_add(e, -1);
    mu_view_endpoint_release(k->c->view, e);
}

static void waiters_remove(call_t *k)
{
    call_t **pp = (call_t **)&k->t->g->waiters;
    while (*pp && *pp != k)
        pp = &(*pp)->qnext;
    if (*pp)
        *pp = k->qnext;
    k->qnext = NULL;
}

/* ----------------------------------------------------- per-endpoint queue */

/* At most max_per_host attempts per endpoint are handed to curl; the rest
 * wait here in order. curl 7.88's own pending queue costs more CPU per call
 * and is unfair (bench: 1.5x the calls/s at 256 in flight with our own
 * queue). The per-attempt timeout starts when the attempt leaves the
 * queue; the call's deadline covers the wait. */

static void queue_remove(call_t *k)
{
    mu_endpoint *e = k->ep;
    if (k->qprev)
        k->qprev->qnext = k->qnext;
    else
        e->queue_head = k->qnext;
    if (k->qnext)
        k->qnext->qprev = k->qprev;
    else
        e->queue_tail = k->qprev;
    k->qnext = k->qprev = NULL;
}

/* Attempts handed to curl, per endpoint, oldest first: the oldest is what
 * the stall check below looks at. */
static void run_add(call_t *k)
{
    mu_endpoint *e = k->ep;
    k->qnext = NULL;
    k->qprev = e->run_tail;
    if (e->run_tail)
        e->run_tail->qnext = k;
    else
        e->run_head = k;
    e->run_tail = k;
}

static void run_remove(call_t *k)
{
    mu_endpoint *e = k->ep;
    if (k->qprev)
        k->qprev->qnext = k->qnext;
    else
        e->run_head = k->qnext;
    if (k->qnext)
        k->qnext->qprev = k->qprev;
    else
        e->run_tail = k->qprev;
    k->qnext = k->qprev = NULL;
}

static void on_xfer_done(mu_xfer *x, const mu_xfer_result *res, void *user);
static void finish(call_t *k, mu_status st, const char *fmt, ...) MU_PRINTF(3, 4);

/* Hands k's attempt to the transport. 0, or -1 after finishing the call. */
static int launch(call_t *k)
{
    mu_endpoint *e = k->ep;
    uint64_t now = mu_now_us();
    k->state = C_RUNNING;
    if (now >= k->deadline_us) {
        end_attempt(k);
        finish(k, MU_ETIMEDOUT, "deadline passed while attempt %d waited for a connection to %s",
               k->attempts, k->endpoint);
        return -1;
    }
    long remaining_ms = (long)((k->deadline_us - now + 999) / 1000);
    long timeout = k->timeout_ms < remaining_ms ? k->timeout_ms : remaining_ms;
    k->attempt_timeout_ms = timeout;
    e->active++;
    mu_xfer_set_reuse(k->x, !e->no_reuse);
    if (mu_xfer_start(k->x, e->url, k->body.data, k->body.len, k->send_hdrs, timeout, on_xfer_done,
                      k) != 0) {
        e->active--;
        end_attempt(k);
        finish(k, MU_ETRANSPORT, "the HTTP transport refused the request to %s", k->endpoint);
        return -1;
    }
    k->launch_us = now;
    k->done_at_launch = e->done_seq;
    run_add(k);
    return 0;
}

/* Starts queued attempts while e has room. */
static void pump(mu_endpoint *e)
{
    while (e->queue_head && e->active < e->queue_head->c->s.max_per_host) {
        call_t *k = e->queue_head;
        queue_remove(k);
        launch(k);
    }
}

/* Stops whatever the call is doing (wait, attempt, deadline). */
static void stop(call_t *k)
{
    evtimer_del(k->timer);
    if (k->state == C_WAITING)
        waiters_remove(k);
    if (k->state == C_BACKOFF)
        evtimer_del(k->backoff);
    /* k->ep is NULL once the attempt has ended (completed, or never left
     * the queue): then there is nothing to undo. */
    if (k->state == C_QUEUED && k->ep) {
        queue_remove(k);
        end_attempt(k);
    }
    if (k->state == C_RUNNING && k->ep) {
        mu_endpoint *e = k->ep;
        mu_xfer_cancel(k->x);
        run_remove(k);
        e->active--;
        pump(e); /* before end_attempt, which may free e */
        end_attempt(k);
    }
}

/* Records the outcome and queues the call for delivery. */
static void finish(call_t *k, mu_status st, const char *fmt, ...) MU_PRINTF(3, 4);
static void finish(call_t *k, mu_status st, const char *fmt, ...)
{
    mu_client *c = k->c;
    stop(k);
    k->status = st;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(k->detail, sizeof k->detail, fmt, ap);
        va_end(ap);
    }
    k->state = C_DONE;
    k->qnext = NULL;
    if (c->done_tail)
        c->done_tail->qnext = k;
    else
        c->done_head = k;
    c->done_tail = k;
    mu_client_kick(c);
}

static void deliver(call_t *k)
{
    mu_client *c = k->c;
    mu_result r;
    memset(&r, 0, sizeof r);
    r.status = k->status;
    r.result = "null";
    r.result_len = 4;
    if (k->status == MU_OK) {
        r.result = k->reply.result;
        r.result_len = k->reply.result_len;
    } else if (k->status == MU_EREMOTE) {
        r.error_name = k->reply.err_name;
        r.error_code = k->reply.err_code;
        r.error_message = k->reply.err_message;
    }
    r.endpoint = k->endpoint[0] ? k->endpoint : NULL;
    r.attempts = k->attempts;
    r.http_status = k->http_status;
    r.latency_us = mu_now_us() - k->start_us;
    r.detail = k->status == MU_OK ? "" : k->detail;
    if (k->status == MU_OK)
        c->stats.calls_ok++;
    else
        c->stats.calls_failed++;
    k->state = C_DELIVERING;
    c->depth++;
    k->cb(&r, k->user);
    c->depth--;
    recycle(k);
}

/* The result text must be NUL-terminated for users: it is a slice of the
 * decoded document, followed in memory by more JSON, so copy when needed. */
static void terminate_result(call_t *k)
{
    mu_reply *r = &k->reply;
    if (k->status != MU_OK || r->result[r->result_len] == '\0')
        return;
    /* The scratch buffer is ours until the next decode. */
    mu_buf *s = &k->dec.scratch;
    size_t off = s->len;
    if (mu_buf_append(s, r->result, r->result_len) != 0 || mu_buf_append(s, "", 1) != 0) {
        k->status = MU_ENOMEM;
        mu_fmt(k->detail, sizeof k->detail, "out of memory copying a result of %zu bytes",
               r->result_len);
        return;
    }
    /* Error strings also point into scratch: they are not used on success. */
    r->result = s->data + off;
}

/* Unlinks k from a singly linked queue; 1 if it was there. */
static int unlink_from(call_t **head, call_t **tail, call_t *k)
{
    call_t *prev = NULL;
    for (call_t **pp = head; *pp; prev = *pp, pp = &(*pp)->qnext) {
        if (*pp != k)
            continue;
        *pp = k->qnext;
        if (tail && *tail == k)
            *tail = prev;
        k->qnext = NULL;
        return 1;
    }
    return 0;
}

void mu_calls_drain(mu_client *c)
{
    /* Only what is queued now: completions queued by these callbacks wait
     * for the next loop turn, so a callback that keeps failing and retrying
     * synchronously cannot starve the loop. */
    c->batch = c->done_head;
    c->done_head = c->done_tail = NULL;
    c->draining = 1;
    while (c->batch && !c->dying) {
        call_t *k = c->batch;
        c->batch = k->qnext;
        deliver(k);
    }
    for (mu_watch *w = c->watches; w && !c->dying; w = w->next) {
        if (!w->dirty || !w->fn)
            continue;
        w->dirty = 0;
        c->depth++;
        w->fn(w->target, mu_pool_size(w->g->pool), w->user);
        c->depth--;
    }
    c->draining = 0;
    if (!c->dying) {
        /* Watches removed from inside their callbacks are unlinked now. */
        for (mu_watch **pp = &c->watches; *pp;) {
            mu_watch *w = *pp;
            if (w->fn) {
                pp = &w->next;
                continue;
            }
            *pp = w->next;
            free(w->target);
            free(w);
        }
        if (c->done_head)
            mu_client_kick(c);
    }
}

/* ------------------------------------------------------------- attempts */

static int retryable_budget(call_t *k)
{
    return k->sent < k->max_attempts && mu_now_us() + 1000 < k->deadline_us;
}

static void mark_down(call_t *k, mu_endpoint *e)
{
    e->failures++;
    e->fail_streak++;
    unsigned shift = e->fail_streak > 6 ? 5 : e->fail_streak - 1;
    uint64_t ms = (uint64_t)k->c->s.eject_ms << shift;
    if (ms > 30000)
        ms = 30000;
    e->down_until_us = mu_now_us() + ms * 1000u;
}

/* The endpoint is down: attempts still waiting in its queue have sent
 * nothing, so they move to another provider now instead of each finding
 * out the slow way. Moving does not use up one of their retries. */
static void reroute_queue(mu_endpoint *e)
{
    /* Take the whole queue first: with no other provider, a call may be
     * queued on e again, and must not be moved twice. */
    call_t *q = e->queue_head;
    e->queue_head = e->queue_tail = NULL;
    while (q) {
        call_t *next = q->qnext;
        q->qnext = q->qprev = NULL;
        end_attempt(q); /* e stays alive: the call in on_xfer_done still holds it */
        q->attempts--;
        q->c->stats.attempts--;
        q->state = C_RUNNING;
        start_attempt(q); /* e is in q->tried, so it is avoided while others exist */
        q = next;
    }
}

/* Keep-alive that the provider does not honour (docs/protocol.md §6).
 * - A reused connection died before any answer, and no answer has ever
 *   come over a reused connection to it: it closes every connection after
 *   one response without saying so (uwsgi --http-socket).
 * - The oldest attempt on it went over a new connection and has had no
 *   answer for keepalive_stall_ms, while at least 4 attempts begun after it
 *   were answered: connections are served one at a time each, by a fixed
 *   number of workers (uwsgi --http11-socket), and ours wait unread behind
 *   the connections we keep open.
 * Either way connections to it are then used once and closed ("Connection:
 * close"), as the Python client does; closing the kept ones frees the
 * workers that the waiting attempts need. Lasts while it is in the view. */
static void learn_reuse(call_t *k, mu_endpoint *e, const mu_xfer_result *res, uint64_t now)
{
    mu_client *c = k->c;
    const char *why = NULL;
    if (res->code == CURLE_OK && res->reused)
        e->reuse_ok++;
    if (e->no_reuse)
        return;
    if (res->died_on_reuse && e->reuse_ok == 0) {
        why = "it closes connections after each response";
    } else if (res->code == CURLE_OK && e->run_head) {
        call_t *old = e->run_head;
        if (now - old->launch_us >= (uint64_t)c->s.stall_ms * 1000u &&
            e->done_seq - old->done_at_launch >= 4 && mu_xfer_fresh_connection(old->x))
            why = "it leaves new connections unread while it serves kept ones";
    }
    if (!why)
        return;
    e->no_reuse = 1;
    mu_log(&c->log, MU_LOG_INFO, "%s: %s: one connection per call from now on", e->key, why);
}

/* The provider's health, from one attempt's signal. */
static void note_health(call_t *k, mu_endpoint *e, mu_signal sig)
{
    switch (sig) {
    case MU_SIG_ANSWERED:
        e->fail_streak = 0;
        e->down_until_us = 0;
        break;
    case MU_SIG_REFUSED:
        mark_down(k, e);
        reroute_queue(e);
        break;
    case MU_SIG_TIMEOUT:
    case MU_SIG_BROKEN:
        e->failures++;
        break;
    case MU_SIG_NEUTRAL:
        break;
    }
}

static void describe(call_t *k, const mu_endpoint *e, const mu_xfer_result *res, mu_status st,
                     char *why, size_t cap)
{
    const char *err = res->error[0] ? res->error : curl_easy_strerror(res->code);
    if (res->code == CURLE_OK && !res->too_big) {
        mu_fmt(why, cap, "%s from %s", k->reply.detail, e->key);
        return;
    }
    switch (st) {
    case MU_ETOOBIG:
        mu_fmt(why, cap, "response from %s is over max_response_bytes (%zu)", e->key,
               k->c->s.max_response);
        break;
    case MU_ECONNECT:
        mu_fmt(why, cap, "connect to %s failed: %s", e->key, err);
        break;
    case MU_ETIMEDOUT:
        mu_fmt(why, cap, "no answer from %s within %d ms", e->key, k->timeout_ms);
        break;
    case MU_ETRANSPORT:
        if (res->unsent)
            mu_fmt(why, cap, "%s reset a kept connection before reading the request: %s", e->key,
                   err);
        else
            mu_fmt(why, cap, "connection to %s failed after the request was sent: %s", e->key,
                   err);
        break;
    default:
        mu_fmt(why, cap, "%s from %s", k->reply.detail, e->key);
        break;
    }
}

/* Remembers an attempt that never reached its provider, for the detail of
 * a call that ends without any provider accepting it. */
static void note_unsent(call_t *k, const mu_endpoint *e, const char *why)
{
    mu_fmt(k->unsent_why, sizeof k->unsent_why, "%s", why);
    if (strstr(k->unsent_eps, e->key))
        return;
    size_t n = strlen(k->unsent_eps);
    if (n + strlen(e->key) + 3 < sizeof k->unsent_eps)
        mu_fmt(k->unsent_eps + n, sizeof k->unsent_eps - n, "%s%s", n ? ", " : "", e->key);
}

static void fail_after_send(call_t *k, const mu_outcome *o, const char *why)
{
    mu_client *c = k->c;
    mu_status st = o->status;
    if (o->retry && retryable_budget(k)) {
        c->stats.retries++;
        mu_log(&c->log, MU_LOG_INFO, "%s: attempt %d: %s; retrying", k->t->g->path, k->attempts,
               why);
        start_attempt(k);
        return;
    }
    int timeoutish = (st == MU_ETIMEDOUT || st == MU_ETRANSPORT) && !k->idempotent;
    if (o->retry && k->sent < k->max_attempts)
        finish(k, st, "%s; deadline reached after %d attempt(s)", why, k->attempts);
    else if (!o->retry && k->attempts > 1 && st != MU_EREMOTE)
        finish(k, st, "%s (attempt %d of %d%s)", why, k->attempts, k->max_attempts,
               timeoutish ? "; not retried: the call is not idempotent" : "");
    else if (!o->retry && timeoutish)
        finish(k, st, "%s; not retried: the call is not idempotent", why);
    else
        finish(k, st, "%s after %d attempt(s)", why, k->attempts);
}

static void on_xfer_done(mu_xfer *x, const mu_xfer_result *res, void *user)
{
    MU_UNUSED(x);
    call_t *k = user;
    mu_endpoint *e = k->ep;
    uint64_t now = mu_now_us();
    run_remove(k);
    e->done_seq++;
    learn_reuse(k, e, res, now);
    /* The connection is free: the next queued attempt goes first. Queued
     * attempts hold e->pending, so e outlives this. */
    e->active--;
    pump(e);
    k->http_status = res->http_status;
    mu_attempt_facts f = {
        .curl_ok = res->code == CURLE_OK,
        .timed_out = res->code == CURLE_OPERATION_TIMEDOUT,
        .too_big = res->too_big,
        .unsent = res->unsent,
        .died_on_reuse = res->died_on_reuse,
        .deadline_cut =
            res->code == CURLE_OPERATION_TIMEDOUT && k->attempt_timeout_ms < k->timeout_ms,
        .http_status = res->http_status,
        .idempotent = k->idempotent,
    };
    if (f.curl_ok && !f.too_big)
        f.decoded = mu_decode_response(&k->dec, res->body, res->len, res->http_status,
                                       k->request_id, &k->reply);
    mu_outcome o = mu_classify(&f);
    note_health(k, e, o.signal);
    if (o.status == MU_OK) {
        terminate_result(k);
        end_attempt(k);
        finish(k, k->status, NULL);
        return;
    }
    char why[300];
    describe(k, e, res, o.status, why, sizeof why);
    if (o.unsent) {
        note_unsent(k, e, why);
        end_attempt(k);
        retry_unsent(k, why);
        return;
    }
    k->sent++;
    end_attempt(k);
    fail_after_send(k, &o, why);
}

static void put_hex(char *p, uint64_t v, int digits)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = digits - 1; i >= 0; i--, v >>= 4)
        p[i] = hex[v & 15];
}

/* What snprintf("%08x-%04x-%04x-%04x-%012llx") of (hi, seq) prints, in a
 * UUID's shape. snprintf took ~2,700 instructions a call here (callgrind),
 * then the largest single item of the SDK's own work. */
static void format_request_id(char out[37], uint64_t hi, uint64_t seq)
{
    put_hex(out, hi >> 32, 8);
    out[8] = '-';
    put_hex(out + 9, (hi >> 16) & 0xffffu, 4);
    out[13] = '-';
    put_hex(out + 14, hi & 0xffffu, 4);
    out[18] = '-';
    put_hex(out + 19, seq >> 48, 4);
    out[23] = '-';
    put_hex(out + 24, seq & 0xffffffffffffull, 12);
    out[36] = '\0';
}

/* The pick for the next attempt; NULL (the call finished) if the group is empty. */
static mu_endpoint *pick(call_t *k, uint64_t now)
{
    mu_client *c = k->c;
    mu_group *g = k->t->g;
    mu_endpoint *e = mu_pool_pick(g->pool, k->policy, k->tried, (size_t)k->ntried, now, &c->rng);
    if (!e) {
        if (g->is_static)
            finish(k, MU_ENOPROVIDER, "no static provider for %s", g->path);
        else
            finish(k, MU_ENOPROVIDER, "no provider registered under %s", g->path);
    }
    return e;
}

static void start_attempt_on(call_t *k, mu_endpoint *e, uint64_t now);

static void start_attempt(call_t *k)
{
    uint64_t now = mu_now_us();
    mu_endpoint *e = pick(k, now);
    if (e)
        start_attempt_on(k, e, now);
}

static int was_tried(const call_t *k, const mu_endpoint *e)
{
    for (int i = 0; i < k->ntried; i++)
        if (k->tried[i] == e)
            return 1;
    return 0;
}

/* A call whose attempt never reached a provider (refused, or a kept
 * connection reset unread) tries another at once. When none is usable
 * (every one was tried this round or is ejected) it waits: jittered
 * exponential backoff from connect_backoff_ms up to connect_backoff_max_ms,
 * never past its deadline, then begins a new round. Providers register
 * about 0.2 s before they listen (docs/protocol.md §6.1). Such attempts do
 * not use up retries; the deadline bounds them. */
static void retry_unsent(call_t *k, const char *why)
{
    mu_client *c = k->c;
    uint64_t now = mu_now_us();
    if (now + 1000 >= k->deadline_us) {
        finish(k, MU_ECONNECT, "%s; deadline reached after %d attempt(s); providers tried: %s", why,
               k->attempts, k->unsent_eps);
        return;
    }
    mu_endpoint *e = pick(k, now);
    if (!e)
        return;
    if (!was_tried(k, e) && e->down_until_us <= now) {
        start_attempt_on(k, e, now);
        return;
    }
    unsigned shift = k->nbackoff < 16 ? (unsigned)k->nbackoff : 16;
    uint64_t ms = (uint64_t)c->s.backoff_ms << shift;
    if (ms > (uint64_t)c->s.backoff_max_ms)
        ms = (uint64_t)c->s.backoff_max_ms;
    /* Half fixed, half random: calls that failed together spread out. */
    uint64_t us = ms * 500u + mu_rand(&c->rng) % (ms * 500u + 1);
    k->nbackoff++;
    k->state = C_BACKOFF;
    mu_log(&c->log, MU_LOG_DEBUG, "%s: %s; no usable provider, waiting %llu us", k->t->g->path, why,
           (unsigned long long)us);
    if (now + us >= k->deadline_us)
        return; /* the deadline ends the call */
    struct timeval tv = {(time_t)(us / 1000000u), (suseconds_t)(us % 1000000u)};
    evtimer_add(k->backoff, &tv);
}

static void on_backoff(evutil_socket_t fd, short what, void *arg)
{
    MU_UNUSED(fd);
    MU_UNUSED(what);
    call_t *k = arg;
    k->state = C_RUNNING;
    k->ntried = 0; /* a new round: every provider may be tried again */
    start_attempt(k);
}

static void start_attempt_on(call_t *k, mu_endpoint *e, uint64_t now)
{
    mu_client *c = k->c;
    if (now >= k->deadline_us) {
        finish(k, MU_ETIMEDOUT, "deadline passed before attempt %d", k->attempts + 1);
        return;
    }

    c->id_seq++;
    format_request_id(k->request_id, c->id_hi, c->id_seq);
    if (mu_encode_request_finish(&k->body, k->prefix_len, k->request_id) != 0) {
        finish(k, MU_ENOMEM, "out of memory encoding the request");
        return;
    }
    const struct curl_slist *hdrs = e->no_reuse ? c->headers_close : c->headers;
    if (c->s.json_headers) {
        char line[128], tok[MU_AUTH_TOKEN_LEN + 1];
        if (k->hdrs)
            curl_slist_free_all(k->hdrs);
        k->hdrs = NULL;
        struct curl_slist *h = NULL;
        if (mu_auth_token(c->s.auth_token, k->request_id, tok) != 0 ||
            !(h = curl_slist_append(NULL, "Content-Type: application/json")) ||
            !(h = curl_slist_append(h, "Accept: application/json")) ||
            !(h = curl_slist_append(h, "Expect:"))) {
            curl_slist_free_all(h);
            finish(k, MU_ENOMEM, "out of memory building headers");
            return;
        }
        k->hdrs = h;
        mu_fmt(line, sizeof line, "micro-request-id: %s", k->request_id);
        h = curl_slist_append(k->hdrs, line);
        mu_fmt(line, sizeof line, "micro-auth-token: %s", tok);
        h = h ? curl_slist_append(h, line) : NULL;
        if (h && e->no_reuse)
            h = curl_slist_append(h, "Connection: close");
        if (!h) {
            finish(k, MU_ENOMEM, "out of memory building headers");
            return;
        }
        hdrs = k->hdrs;
    }
    mu_endpoint_pending_add(e, +1);
    e->calls++;
    k->ep = e;
    if ((size_t)k->ntried < MU_ARRAY_LEN(k->tried) && !was_tried(k, e))
        k->tried[k->ntried++] = e;
    k->attempts++;
    c->stats.attempts++;
    memcpy(k->endpoint, e->key, sizeof k->endpoint);
    k->send_hdrs = hdrs;
    if (e->active < c->s.max_per_host && !e->queue_head) {
        launch(k);
        return;
    }
    k->state = C_QUEUED;
    k->qnext = NULL;
    k->qprev = e->queue_tail;
    if (e->queue_tail)
        e->queue_tail->qnext = k;
    else
        e->queue_head = k;
    e->queue_tail = k;
}

/* ---------------------------------------------------------- entry points */

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    MU_UNUSED(fd);
    MU_UNUSED(what);
    call_t *k = arg;
    mu_client *c = k->c;
    int ms = (int)((k->deadline_us - k->start_us) / 1000);
    if (k->state == C_WAITING) {
        mu_group *g = k->t->g;
        if (c->reg && !mu_registry_connected(c->reg))
            finish(k, MU_EDISCOVERY,
                   "providers of %s not loaded within the %d ms deadline: ZooKeeper %s is not "
                   "reachable",
                   g->path, ms, mu_registry_hosts(c->reg));
        else
            finish(k, MU_EDISCOVERY, "providers of %s not loaded within the %d ms deadline",
                   g->path, ms);
    } else if (k->state == C_QUEUED) {
        char ep[72];
        memcpy(ep, k->endpoint, sizeof ep);
        finish(k, MU_ETIMEDOUT,
               "deadline of %d ms passed while attempt %d waited for a connection to %s", ms,
               k->attempts, ep);
    } else if (k->state == C_RUNNING) {
        char ep[72];
        memcpy(ep, k->endpoint, sizeof ep);
        finish(k, MU_ETIMEDOUT, "deadline of %d ms passed during attempt %d (to %s)", ms,
               k->attempts, ep);
    } else if (k->state == C_BACKOFF) {
        char why[sizeof k->unsent_why], eps[sizeof k->unsent_eps];
        memcpy(why, k->unsent_why, sizeof why);
        memcpy(eps, k->unsent_eps, sizeof eps);
        finish(k, MU_ECONNECT,
               "no provider of %s accepted the call within the %d ms deadline (%d attempt(s), "
               "none sent); providers tried: %s; last: %s",
               k->t->g->path, ms, k->attempts, eps, why);
    }
}

void mu_calls_group_changed(mu_client *c, mu_group *g)
{
    MU_UNUSED(c);
    call_t *k = g->waiters;
    g->waiters = NULL;
    while (k) {
        call_t *next = k->qnext;
        k->qnext = NULL;
        k->state = C_RUNNING; /* no longer waiting; start_attempt sets the rest */
        if (g->state == MU_GROUP_NONODE)
            finish(k, MU_ENOPROVIDER, "no provider registered: %s does not exist", g->path);
        else
            start_attempt(k);
        k = next;
    }
}

static int parse_json_arg(mu_client *c, const char **text, size_t *len, const char *dflt, char want)
{
    if (!*text) {
        *text = dflt;
        *len = 2;
        return 0;
    }
    *len = strlen(*text);
    char err[200];
    if (mu_json_check_cached(&c->ycache, *text, *len, want, err, sizeof err) != 0) {
        mu_fmt(c->errmsg, sizeof c->errmsg, "%s", err);
        return -1;
    }
    return 0;
}

void mu_call_opts_init(mu_call_opts *opts)
{
    static const mu_call_opts init = MU_CALL_OPTS_INIT;
    if (opts)
        *opts = init;
}

mu_status mu_call(mu_client *c, const char *target, const char *args, const char *kwargs,
                  const mu_call_opts *opts, mu_call_cb cb, void *user, mu_call_handle **handle)
{
    if (!c)
        return MU_EINVAL;
    if (c->dying || c->free_requested) {
        mu_fmt(c->errmsg, sizeof c->errmsg, "mu_call: the client is being freed");
        return MU_EINVAL;
    }
    if (c->in_log) {
        mu_fmt(c->errmsg, sizeof c->errmsg, "mu_call: not from inside the log sink");
        return MU_EINVAL;
    }
    if (!target || !cb) {
        mu_fmt(c->errmsg, sizeof c->errmsg, "mu_call: target and callback must not be NULL");
        return MU_EINVAL;
    }
    size_t alen, klen;
    if (parse_json_arg(c, &args, &alen, "[]", '[') != 0 ||
        parse_json_arg(c, &kwargs, &klen, "{}", '{') != 0)
        return MU_EINVAL;
    mu_call_opts o = MU_CALL_OPTS_INIT;
    if (opts) {
        size_t n = opts->size < sizeof o ? opts->size : sizeof o;
        if (n < sizeof(size_t)) {
            mu_fmt(c->errmsg, sizeof c->errmsg, "mu_call: opts->size is not set (use MU_CALL_OPTS_INIT)");
            return MU_EINVAL;
        }
        memcpy(&o, opts, n);
    }
    int policy = -1;
    if (o.policy && (policy = mu_policy_parse(o.policy)) < 0) {
        mu_fmt(c->errmsg, sizeof c->errmsg,
               "mu_call: unknown policy '%s' (round-robin, random, least-pending, p2c)", o.policy);
        return MU_EINVAL;
    }
    if (o.timeout_ms < 0 || o.deadline_ms < 0 || o.retries > 10 || o.retries < -1) {
        mu_fmt(c->errmsg, sizeof c->errmsg,
               "mu_call: bad option (timeout_ms and deadline_ms >= 0, retries -1 to 10)");
        return MU_EINVAL;
    }
    mu_status tst = MU_OK;
    mu_target *t = mu_client_target(c, target, &tst);
    if (!t)
        return tst;

    call_t *k = call_get(c);
    if (!k) {
        mu_fmt(c->errmsg, sizeof c->errmsg, "out of memory");
        return MU_ENOMEM;
    }
    if (mu_encode_request_prefix(&c->enc, &k->body, target + t->split + 1,
                                 strlen(target + t->split + 1), args, alen, kwargs, klen) != 0) {
        recycle(k);
        mu_fmt(c->errmsg, sizeof c->errmsg, "out of memory");
        return MU_ENOMEM;
    }
    k->prefix_len = k->body.len;
    k->t = t;
    k->cb = cb;
    k->user = user;
    k->policy = policy >= 0 ? (mu_policy)policy : t->policy;
    k->idempotent = o.idempotent >= 0 ? (o.idempotent != 0) : t->idempotent;
    k->timeout_ms = o.timeout_ms ? o.timeout_ms : c->s.timeout_ms;
    k->max_attempts = 1 + (o.retries >= 0 ? o.retries : c->s.retries);
    int deadline_ms = o.deadline_ms ? o.deadline_ms : c->s.deadline_ms;
    k->start_us = mu_now_us();
    k->deadline_us = k->start_us + (uint64_t)deadline_ms * 1000u;
    struct timeval tv = {deadline_ms / 1000, (deadline_ms % 1000) * 1000};
    const struct timeval *tvp = &tv;
    /* Calls with the configured deadline share one of libevent's common
     * timeouts: a FIFO, O(1) to add and remove, where the timer heap costs
     * O(log n) each way (callgrind: ~800 instructions a call less at 1,000
     * calls in flight). */
    if (deadline_ms == c->s.deadline_ms) {
        if (!c->deadline_tv)
            c->deadline_tv = event_base_init_common_timeout(c->base, &tv);
        if (c->deadline_tv)
            tvp = c->deadline_tv;
    }
    evtimer_add(k->timer, tvp);
    c->stats.calls_started++;
    if (handle)
        *handle = k;

    mu_group *g = t->g;
    if (g->state == MU_GROUP_LOADING) {
        k->state = C_WAITING;
        k->qnext = g->waiters;
        g->waiters = k;
    } else if (g->state == MU_GROUP_NONODE) {
        k->state = C_RUNNING;
        finish(k, MU_ENOPROVIDER, "no provider registered: %s does not exist", g->path);
    } else {
        start_attempt(k);
    }
    return MU_OK;
}

void mu_call_cancel(mu_call_handle *k)
{
    if (!k || k->state == C_DELIVERING)
        return;
    mu_client *c = k->c;
    if (c->in_log)
        return; /* not from the log sink: it runs inside the client's own work */
    if (k->state == C_DONE) {
        /* The outcome is known but not delivered: take it off the queue so
         * that the callback fires now, as promised, and only now. */
        if (!unlink_from(&c->batch, NULL, k) && !unlink_from(&c->done_head, &c->done_tail, k))
            return;
    }
    stop(k);
    k->status = MU_ECANCELLED;
    mu_fmt(k->detail, sizeof k->detail, "cancelled after %d attempt(s)", k->attempts);
    deliver(k);
    if (c->dying && c->depth == 0)
        mu_client_destroy(c);
}

/* A call whose outcome is known but not delivered, ended by the client's
 * free: as promised, it gets MU_ECANCELLED like every other pending call. */
static void deliver_cancelled(call_t *k)
{
    k->status = MU_ECANCELLED;
    mu_fmt(k->detail, sizeof k->detail, "the client was freed");
    deliver(k);
}

/* Every call not yet delivered ends now with MU_ECANCELLED. Used by
 * mu_client_free(). */
void mu_calls_cancel_all(mu_client *c)
{
    for (;;) {
        call_t *k = c->batch;
        if (k) {
            c->batch = k->qnext;
            deliver_cancelled(k);
            continue;
        }
        k = c->done_head;
        if (k) {
            c->done_head = k->qnext;
            if (!c->done_head)
                c->done_tail = NULL;
            deliver_cancelled(k);
            continue;
        }
        for (k = c->live; k && (k->state == C_DELIVERING || k->state == C_DONE); k = k->next)
            ;
        if (!k)
            break;
        stop(k);
        deliver_cancelled(k);
    }
}
