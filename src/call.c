/*
 * call: one call's life (see call.h). The path of a call, one way:
 *
 *   mu_calls_start -> [wait for the group] -> pick (balance) -> lane queue
 *     -> launch (transport) -> on_xfer_done -> decode (codec)
 *     -> classify (outcome) -> report (health) -> retry | finish
 *     -> drain -> the user's callback
 *
 * Owns struct mu_calls and every call object. Reads the view's groups and
 * endpoints, writes only the endpoints' lane and metrics sections
 * (endpoint.h) and its targets' call.c sections (docs/design.md).
 */
#include "config.h"
#include "call.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "outcome.h"

typedef struct mu_call_handle call_t;

/* Sent attempts are at most 1 + 10 retries; rounds of never-sent ones are
 * reset after each backoff. Past the cap an endpoint is simply not
 * remembered (it may be picked again sooner). */
#define MAX_TRIED 16
#define MAX_SPARES 4096
#define KEEP_BYTES (64u * 1024u)

enum call_state {
    C_WAITING,    /* for its group's first load */
    C_QUEUED,     /* an attempt waits for one of its endpoint's connections */
    C_RUNNING,    /* an attempt is in flight, or about to start */
    C_BACKOFF,    /* no provider accepted a connection: waiting to try again */
    C_HEDGED,     /* its hedge carries the call on; it only keeps the id */
    C_DONE,       /* outcome known, queued for delivery */
    C_DELIVERING, /* its callback is running */
    C_SPARE,      /* recycled */
};

struct mu_call_handle {
    mu_calls *m;
    call_t *prev, *next; /* m->live, or m->spare (next only) */
    /* The done queue (qnext only), m->waiting, or the endpoint lane's queue
     * or running list. */
    call_t *qnext, *qprev;
    enum call_state state;
    uint32_t slot;       /* in m->slots: the id's lower half */
    mu_target *t;
    mu_call_cb cb;
    void *user;
    mu_buf body;
    size_t prefix_len;
    mu_xfer *x;
    struct event *timer;   /* the deadline */
    struct event *wake;    /* C_BACKOFF: the wait before trying again; C_RUNNING: a stall check */
    struct event *hedge_ev;/* hedge_ms after the start (made on first use) */
    call_t *hedge;         /* the other of a hedged pair: exactly one of the two delivers */
    int is_hedge;          /* this is the second attempt, not the user's call object */
    int silent;            /* it lost its race: recycled without a callback */
    int hedge_ms;
    int stall_armed;       /* wake is armed for a stall check */
    int hdr_close;         /* send_hdrs say "Connection: close" */
    struct curl_slist *hdrs;            /* per attempt, 1.0.4+ only */
    const struct curl_slist *send_hdrs; /* the headers of the attempt */
    mu_endpoint *ep;     /* the attempt holds ep->pending from pick to end */
    mu_endpoint *tried[MAX_TRIED]; /* this round's endpoints, avoided while others exist */
    int ntried;
    int attempts;        /* every attempt begun, as reported in mu_result */
    int sent;            /* attempts that may have reached a provider: these use up retries */
    int max_attempts;    /* bound on sent */
    int nbackoff;        /* waits so far */
    int starting;        /* inside mu_calls_start: a full queue fails mu_call itself */
    int retry_wait;      /* C_BACKOFF before a retry of a sent attempt (detail says why) */
    int overloaded;      /* so it did */
    int idempotent, timeout_ms;
    long attempt_timeout_ms; /* what the running attempt was given (may be cut by the deadline) */
    mu_policy policy;
    int has_key;          /* the hash policy has a key: hash_key */
    uint64_t hash_key;    /* mu_hash_key() of mu_call_opts.hash_key */
    uint64_t start_us, deadline_us;
    uint64_t launch_us;      /* when the running attempt went to the transport */
    uint64_t reused_before;  /* its endpoint's health.reuse_ok then */
    char request_id[40];
    /* outcome */
    mu_status status;
    long http_status;
    char endpoint[72];
    struct call_io *io;  /* taken with x when the first attempt leaves the queue */
};

/* What only a call that has made an attempt needs, kept out of the call
 * object so that a queued call stays small: made with the transfer in
 * launch(), and kept with the object, spares included. */
typedef struct call_io {
    mu_decoder dec;
    mu_reply reply;
    char unsent_why[200]; /* the last attempt that never reached a provider */
    char unsent_eps[160]; /* "host:port, ..." of those attempts */
    char detail[320];     /* why the call failed (also made for a call that fails queued) */
} call_io;

#define UNSENT_WHY_CAP sizeof(((call_io *)0)->unsent_why)
#define UNSENT_EPS_CAP sizeof(((call_io *)0)->unsent_eps)

static const char *unsent_eps(const call_t *k)
{
    return k->io ? k->io->unsent_eps : "";
}

/* k's io, made if it has none yet; NULL when out of memory. */
static call_io *io_of(call_t *k)
{
    if (!k->io)
        k->io = calloc(1, sizeof *k->io);
    return k->io;
}

struct mu_calls {
    mu_calls_deps d;
    mu_call_settings s;
    call_t *live;                /* every call not yet delivered */
    size_t nlive;                /* max_calls bounds it */
    call_t *waiting, *waiting_tail; /* calls in C_WAITING */
    call_t *done_head, *done_tail;
    call_t *batch;               /* the part of the done queue being delivered now */
    call_t *spare;               /* recycled call objects */
    size_t nspare;
    struct event *drain;         /* delivers queued completions */
    int draining;                /* inside drain(): new completions wait a turn */
    /* ids: slot index + 1 in the low half, the slot's generation in the high */
    call_t **slots;
    uint32_t *gens;
    uint32_t *free_slots;
    size_t nslots, capslots, nfree;
    /* request building */
    mu_encoder enc;
    int enc_ok;
    mu_yajl_cache ycache;        /* yajl's blocks: the args check and every decoder */
    struct curl_slist *headers;       /* 1.0.2 / 1.0.3: fixed */
    struct curl_slist *headers_close; /* the same plus "Connection: close" */
    const struct timeval *deadline_tv; /* libevent's common timeout for deadline_ms */
    uint64_t rng, id_hi, id_seq;
    /* The retry budget, in hundredths of a retry: each call started puts
     * retry_budget_percent in, the floor retry_budget_min_per_s x 100 a
     * second, each retry takes 100 out (Finagle's RetryBudget). */
    int64_t budget;
    uint64_t budget_at_us;
};

static void on_deadline(evutil_socket_t fd, short what, void *arg);
static void on_wake(evutil_socket_t fd, short what, void *arg);
static void on_xfer_done(mu_xfer *x, const mu_xfer_result *res, void *user);
static void on_hedge(evutil_socket_t fd, short what, void *arg);
static int unlink_from(call_t **head, call_t **tail, call_t *k);
static void stop(call_t *k);
static void recycle(call_t *k);
static void arm_hedge(call_t *k);
static void hist_add(mu_lat_hist *h, uint64_t us);
static void watch(mu_calls *m, mu_endpoint *e);
static void retry_after_backoff(call_t *k, const char *why);
static void start_attempt(call_t *k);
static int attempt_headers(call_t *k, int close);
static void finish(call_t *k, mu_status st, const char *fmt, ...) MU_PRINTF(3, 4);

/* ------------------------------------------------------------ call objects */

static void live_unlink(call_t *k)
{
    mu_calls *m = k->m;
    if (k->prev)
        k->prev->next = k->next;
    else
        m->live = k->next;
    if (k->next)
        k->next->prev = k->prev;
    k->prev = k->next = NULL;
    m->nlive--;
}

static void live_link(call_t *k)
{
    mu_calls *m = k->m;
    k->prev = NULL;
    k->next = m->live;
    if (m->live)
        m->live->prev = k;
    m->live = k;
    m->nlive++;
}

static void call_destroy(call_t *k)
{
    mu_calls *m = k->m;
    m->slots[k->slot] = NULL;
    m->free_slots[m->nfree++] = k->slot;
    mu_xfer_free(k->x);
    event_free(k->timer);
    if (k->wake)
        event_free(k->wake);
    if (k->hedge_ev)
        event_free(k->hedge_ev);
    mu_buf_free(&k->body);
    if (k->io) {
        mu_decoder_cleanup(&k->io->dec);
        free(k->io);
    }
    free(k);
}

static void unpair(call_t *k)
{
    if (k->hedge) {
        k->hedge->hedge = NULL;
        k->hedge = NULL;
    }
}

/* Ends a call object that will never deliver: the loser of a hedged race. */
static void discard(call_t *k)
{
    mu_calls *m = k->m;
    if (k->state == C_DONE && !unlink_from(&m->batch, NULL, k))
        unlink_from(&m->done_head, &m->done_tail, k);
    stop(k);
    recycle(k);
}

static void recycle(call_t *k)
{
    mu_calls *m = k->m;
    if (k->hedge) { /* the pair is over: the other one goes too */
        call_t *other = k->hedge;
        unpair(k);
        discard(other);
    }
    live_unlink(k);
    if (k->hdrs) {
        curl_slist_free_all(k->hdrs);
        k->hdrs = NULL;
    }
    if (m->nspare >= MAX_SPARES || m->d.life->state != MU_LIFE_LIVE) {
        call_destroy(k);
        return;
    }
    /* A spare keeps small buffers only: one huge response must not stay
     * resident in every recycled call. */
    mu_xfer_trim(k->x, KEEP_BYTES);
    if (k->io && k->io->dec.plain.cap > KEEP_BYTES)
        mu_buf_free(&k->io->dec.plain);
    if (k->io && k->io->dec.scratch.cap > KEEP_BYTES)
        mu_buf_free(&k->io->dec.scratch);
    if (k->body.cap > KEEP_BYTES)
        mu_buf_free(&k->body);
    k->state = C_SPARE;
    k->next = m->spare;
    m->spare = k;
    m->nspare++;
}

/* A slot for a new call object; its generation moves on at every use. */
static int slot_get(mu_calls *m, uint32_t *out)
{
    if (m->nfree) {
        *out = m->free_slots[--m->nfree];
        return 0;
    }
    if (m->nslots == m->capslots) {
        size_t cap = m->capslots ? m->capslots * 2 : 64;
        call_t **s = realloc(m->slots, cap * sizeof *s);
        if (!s)
            return -1;
        m->slots = s;
        uint32_t *g = realloc(m->gens, cap * sizeof *g);
        if (!g)
            return -1;
        m->gens = g;
        uint32_t *f = realloc(m->free_slots, cap * sizeof *f);
        if (!f)
            return -1;
        m->free_slots = f;
        m->capslots = cap;
    }
    /* A random first generation: ids of different clients (and of earlier
     * uses of a slot) practically never meet. */
    m->gens[m->nslots] = (uint32_t)mu_rand(&m->rng);
    *out = (uint32_t)m->nslots++;
    return 0;
}

static call_t *call_new(mu_calls *m)
{
    uint32_t slot;
    if (slot_get(m, &slot) != 0)
        return NULL;
    call_t *k = calloc(1, sizeof *k);
    if (k) {
        k->m = m;
        k->slot = slot;
        k->timer = evtimer_new(m->d.base, on_deadline, k);
    }
    if (!k || !k->timer) {
        free(k);
        m->free_slots[m->nfree++] = slot;
        return NULL;
    }
    m->slots[slot] = k;
    return k;
}

static call_t *call_get(mu_calls *m)
{
    call_t *k = m->spare;
    if (k) {
        m->spare = k->next;
        m->nspare--;
    } else if (!(k = call_new(m))) {
        return NULL;
    }
    m->gens[k->slot]++;
    k->qnext = k->qprev = NULL;
    k->state = C_RUNNING; /* neither waiting nor queued until told */
    k->ep = NULL;
    k->ntried = k->attempts = k->sent = k->nbackoff = 0;
    k->hedge = NULL;
    k->is_hedge = k->silent = k->retry_wait = 0;
    if (k->io) {
        k->io->unsent_why[0] = k->io->unsent_eps[0] = k->io->detail[0] = '\0';
        memset(&k->io->reply, 0, sizeof k->io->reply);
    }
    k->http_status = 0;
    k->endpoint[0] = '\0';
    k->status = MU_OK;
    mu_buf_reset(&k->body);
    live_link(k);
    return k;
}

static mu_call_id call_id(const call_t *k)
{
    return ((mu_call_id)k->m->gens[k->slot] << 32) | (mu_call_id)(k->slot + 1u);
}

/* The live call with this id, or NULL for a stale or unknown one. */
static call_t *call_find(mu_calls *m, mu_call_id id)
{
    uint64_t low = id & 0xffffffffu;
    if (low == 0 || low > m->nslots)
        return NULL;
    call_t *k = m->slots[low - 1];
    if (!k || m->gens[k->slot] != (uint32_t)(id >> 32) || k->state == C_SPARE)
        return NULL;
    return k;
}

/* ------------------------------------------------------------- lanes */

/* Ends the attempt, if any: gives back the endpoint's pending slot. */
static void end_attempt(call_t *k)
{
    if (!k->ep)
        return;
    mu_endpoint *e = k->ep;
    k->ep = NULL;
    mu_endpoint_pending_add(e, -1);
    mu_view_endpoint_release(k->m->d.view, e);
}

/* Doubly linked lists through qnext/qprev: the lane's queue and running
 * list, and the waiting list. */
static void dl_append(call_t **head, call_t **tail, call_t *k)
{
    k->qnext = NULL;
    k->qprev = *tail;
    if (*tail)
        (*tail)->qnext = k;
    else
        *head = k;
    *tail = k;
}

static void dl_remove(call_t **head, call_t **tail, call_t *k)
{
    if (k->qprev)
        k->qprev->qnext = k->qnext;
    else
        *head = k->qnext;
    if (k->qnext)
        k->qnext->qprev = k->qprev;
    else if (tail)
        *tail = k->qprev;
    k->qnext = k->qprev = NULL;
}

static void queue_remove(call_t *k)
{
    dl_remove(&k->ep->lane.queue_head, &k->ep->lane.queue_tail, k);
    k->ep->lane.queued--;
}

static void run_remove(call_t *k)
{
    mu_endpoint *e = k->ep;
    int was_oldest = e->lane.run_head == k;
    dl_remove(&e->lane.run_head, &e->lane.run_tail, k);
    if (was_oldest)
        mu_health_inflight(k->m->d.health, e, e->lane.run_head ? e->lane.run_head->launch_us : 0);
}

static void waiting_remove(call_t *k)
{
    dl_remove(&k->m->waiting, &k->m->waiting_tail, k);
}

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
    int keep = mu_health_keepalive(e);
    /* e may have lost keep-alive while the attempt was queued. */
    if (k->hdr_close == keep && attempt_headers(k, !keep) != 0) {
        end_attempt(k);
        finish(k, MU_ENOMEM, "out of memory building headers");
        return -1;
    }
    /* The transfer (a curl handle, some 5 KB) is taken when the first
     * attempt leaves the queue, not when the call is made: queued calls stay
     * small. It stays with the call object, spares included. */
    if (!k->x && !(k->x = mu_xfer_new(k->m->d.tp))) {
        end_attempt(k);
        finish(k, MU_ENOMEM, "out of memory for a transfer to %s", k->endpoint);
        return -1;
    }
    if (!io_of(k)) {
        end_attempt(k);
        finish(k, MU_ENOMEM, "out of memory for an attempt to %s", k->endpoint);
        return -1;
    }
    if (!k->io->dec.cache) { /* new */
        mu_decoder_init(&k->io->dec, k->m->s.max_response);
        k->io->dec.cache = &k->m->ycache;
    }
    e->lane.active++;
    mu_xfer_set_reuse(k->x, keep);
    mu_xfer_set_quickack(k->x, mu_health_quickack(e));
    if (mu_xfer_start(k->x, e->url, k->body.data, k->body.len, k->send_hdrs, timeout, on_xfer_done,
                      k) != 0) {
        e->lane.active--;
        end_attempt(k);
        finish(k, MU_ETRANSPORT, "the HTTP transport refused the request to %s", k->endpoint);
        return -1;
    }
    k->launch_us = now;
    k->reused_before = e->health.reuse_ok;
    dl_append(&e->lane.run_head, &e->lane.run_tail, k);
    if (e->lane.run_head == k)
        mu_health_inflight(k->m->d.health, e, now);
    watch(k->m, e); /* in-flight age: arms e's oldest attempt's timer unless it is armed */
    return 0;
}

/* At most max_per_host attempts per endpoint are handed to curl; the rest
 * wait in the lane's queue, in order. curl 7.88's own pending queue costs
 * more CPU per call and is unfair (bench: 1.5x the calls/s at 256 in flight
 * with our own queue). The per-attempt timeout starts when the attempt
 * leaves the queue; the call's deadline covers the wait. */
static void pump(mu_endpoint *e)
{
    while (e->lane.queue_head && e->lane.active < e->lane.queue_head->m->s.max_per_host) {
        call_t *k = e->lane.queue_head;
        queue_remove(k);
        launch(k);
    }
}

/* ------------------------------------------------------------ delivery */

static void kick(mu_calls *m)
{
    if (m->draining) {
        /* A timer, not event_active: it runs after the next poll, so the
         * loop's other events get their turn first. */
        static const struct timeval now = {0, 0};
        if (!event_pending(m->drain, EV_TIMEOUT, NULL))
            event_add(m->drain, &now);
    } else {
        event_active(m->drain, EV_TIMEOUT, 0);
    }
}

/* Arms k's wake timer (made on first use: a queued call has none). 0, or
 * -1 when out of memory: then only the deadline will end the wait. */
static int wake_in(call_t *k, uint64_t us)
{
    if (!k->wake && !(k->wake = evtimer_new(k->m->d.base, on_wake, k)))
        return -1;
    struct timeval tv = {(time_t)(us / 1000000u), (suseconds_t)(us % 1000000u)};
    return evtimer_add(k->wake, &tv);
}

static void disarm_stall(call_t *k)
{
    if (k->stall_armed) {
        evtimer_del(k->wake);
        k->stall_armed = 0;
    }
}

/* Stops whatever the call is doing (wait, attempt, deadline). */
static void stop(call_t *k)
{
    evtimer_del(k->timer);
    if (k->hedge_ev)
        evtimer_del(k->hedge_ev);
    disarm_stall(k);
    if (k->state == C_WAITING)
        waiting_remove(k);
    if (k->state == C_BACKOFF && k->wake)
        evtimer_del(k->wake);
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
        e->lane.active--;
        if (k->m->d.life->state == MU_LIFE_LIVE) { /* no new work while freed */
            pump(e);                               /* before end_attempt, which may free e */
            watch(k->m, e);                        /* the next oldest, if k was */
        }
        end_attempt(k);
    }
}

/* A hedged pair, both still racing: settles it when k ends with st.
 * Returns 1 when k now waits for its hedge (nothing to queue). The first
 * answer (a result or a remote error) wins and the other attempt is
 * cancelled; a failure only ends the pair's call if the other is done. */
static int settle(call_t *k, mu_status st)
{
    call_t *o = k->hedge;
    if (!o || o->state == C_HEDGED)
        return 0;
    if (st != MU_OK && st != MU_EREMOTE) { /* the other may still answer */
        if (k->is_hedge) {
            unpair(k);
            k->silent = 1;
            return 0;
        }
        stop(k);
        k->state = C_HEDGED;
        return 1;
    }
    if (k->is_hedge) { /* the primary keeps the user's id until k is delivered */
        stop(o);
        o->state = C_HEDGED;
    } else {
        k->attempts += o->attempts;
        unpair(k);
        discard(o);
    }
    return 0;
}

/* Records the outcome and queues the call for delivery. */
static void finish(call_t *k, mu_status st, const char *fmt, ...)
{
    mu_calls *m = k->m;
    if (settle(k, st))
        return;
    stop(k);
    k->status = st;
    call_io *io = fmt ? io_of(k) : NULL;
    if (io) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(io->detail, sizeof io->detail, fmt, ap);
        va_end(ap);
    }
    k->state = C_DONE;
    k->qnext = NULL;
    if (m->done_tail)
        m->done_tail->qnext = k;
    else
        m->done_head = k;
    m->done_tail = k;
    kick(m);
}

/* Runs the user's callback. Callers: the drain and mu_calls_cancel, inside
 * the client's life, and mu_calls_cancel_all, while the client is freed. */
static void deliver(call_t *k)
{
    mu_calls *m = k->m;
    if (k->silent) {
        recycle(k);
        return;
    }
    mu_result r;
    memset(&r, 0, sizeof r);
    r.status = k->status;
    r.result = "null";
    r.result_len = 4;
    if (k->status == MU_OK && k->io) {
        r.result = k->io->reply.result;
        r.result_len = k->io->reply.result_len;
    } else if (k->status == MU_EREMOTE && k->io) {
        r.error_name = k->io->reply.err_name;
        r.error_code = k->io->reply.err_code;
        r.error_message = k->io->reply.err_message;
    }
    r.endpoint = k->endpoint[0] ? k->endpoint : NULL;
    r.attempts = k->attempts + (k->hedge ? k->hedge->attempts : 0);
    if (k->hedge) { /* no partner may be reached from inside the callback */
        call_t *o = k->hedge;
        unpair(k);
        discard(o);
    }
    r.http_status = k->http_status;
    r.latency_us = mu_now_us() - k->start_us;
    r.detail = k->status == MU_OK ? ""
               : k->io       ? k->io->detail
                             : "out of memory describing the failure";
    if (k->status == MU_OK)
        m->d.stats->calls_ok++;
    else
        m->d.stats->calls_failed++;
    mu_target_metrics *tm = &k->t->met; /* one user call ends: its pair's other half never delivers */
    tm->ended++;
    if (k->status != MU_OK)
        mu_met_count(tm->call_failed, k->status);
    mu_met_hist_add(&tm->lat, r.latency_us);
    k->state = C_DELIVERING;
    k->cb(&r, k->user);
    recycle(k);
}

/* Delivers what is queued now: completions queued by these callbacks wait
 * for the next loop turn, so a callback that keeps failing and retrying
 * synchronously cannot starve the loop. */
static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    MU_UNUSED(fd);
    MU_UNUSED(what);
    mu_calls *m = arg;
    mu_life *life = m->d.life;
    if (life->state != MU_LIFE_LIVE)
        return; /* the client's own event finishes the free */
    mu_life_enter(life, 0);
    m->batch = m->done_head;
    m->done_head = m->done_tail = NULL;
    m->draining = 1;
    while (m->batch && life->state == MU_LIFE_LIVE) {
        call_t *k = m->batch;
        m->batch = k->qnext;
        deliver(k);
    }
    /* Completions queued by these callbacks armed the drain as a timer
     * (kick), which runs after the loop's next poll: the loop is never
     * starved by calls that fail at once and are started again. */
    m->draining = 0;
    mu_life_leave(life, 0); /* may destroy the client, and m with it */
}

/* The result text must be NUL-terminated for users: it is a slice of the
 * decoded document, followed in memory by more JSON, so copy when needed. */
static void terminate_result(call_t *k)
{
    mu_reply *r = &k->io->reply;
    if (k->status != MU_OK || r->result[r->result_len] == '\0')
        return;
    /* The scratch buffer is ours until the next decode. */
    mu_buf *s = &k->io->dec.scratch;
    size_t off = s->len;
    if (mu_buf_append(s, r->result, r->result_len) != 0 || mu_buf_append(s, "", 1) != 0) {
        k->status = MU_ENOMEM;
        mu_fmt(k->io->detail, sizeof k->io->detail, "out of memory copying a result of %zu bytes",
               r->result_len);
        return;
    }
    /* Error strings also point into scratch: they are not used on success. */
    r->result = s->data + off;
}

/* ------------------------------------------------------------- outcomes */

static int retryable_budget(const call_t *k)
{
    return k->sent < k->max_attempts && mu_now_us() + 1000 < k->deadline_us;
}

/* At most 100 retries banked beyond ten seconds of the floor: a quiet
 * spell does not store up a storm. */
static int64_t budget_cap(const mu_calls *m)
{
    return 100 * (100 + 10 * (int64_t)m->s.budget_min_per_s);
}

static void budget_deposit(mu_calls *m)
{
    if (m->budget < budget_cap(m))
        m->budget += m->s.budget_pct;
}

/* Takes one retry from the client's budget; 0 when it is spent. */
static int budget_take(mu_calls *m)
{
    uint64_t now = mu_now_us();
    uint64_t floor = (now - m->budget_at_us) * (uint64_t)m->s.budget_min_per_s / 10000u;
    if (floor) { /* in hundredths: us x per_s x 100 / 1e6; the remainder carries over */
        m->budget += (int64_t)floor;
        m->budget_at_us += floor * 10000u / (uint64_t)m->s.budget_min_per_s;
    }
    if (m->budget > budget_cap(m))
        m->budget = budget_cap(m);
    if (m->budget < 100)
        return 0;
    m->budget -= 100;
    return 1;
}

/* The endpoint was ejected: attempts still waiting in its queue have sent
 * nothing, so they move to another provider now instead of each finding
 * out the slow way. Moving does not use up one of their retries. */
static void reroute_queue(mu_endpoint *e)
{
    /* Take the whole queue first: with no other provider, a call may be
     * queued on e again, and must not be moved twice. */
    call_t *q = e->lane.queue_head;
    e->lane.queue_head = e->lane.queue_tail = NULL;
    e->lane.queued = 0;
    while (q) {
        call_t *next = q->qnext;
        q->qnext = q->qprev = NULL;
        end_attempt(q); /* e stays alive: the call in on_xfer_done still holds it */
        q->attempts--;
        q->m->d.stats->attempts--;
        q->state = C_RUNNING;
        start_attempt(q); /* e is in q->tried, so it is avoided while others exist */
        q = next;
    }
}

static void describe(const call_t *k, const mu_endpoint *e, const mu_xfer_result *res,
                     mu_status st, char *why, size_t cap)
{
    const char *err = res->error[0] ? res->error : curl_easy_strerror(res->code);
    if (res->code == CURLE_OK && !res->too_big) {
        mu_fmt(why, cap, "%s from %s", k->io->reply.detail, e->key);
        return;
    }
    if (res->bad_headers) {
        mu_fmt(why, cap,
               "the answer from %s has response headers over libcurl's limits (100 KiB for one "
               "header, 300 KiB in all)",
               e->key);
        return;
    }
    switch (st) {
    case MU_ETOOBIG:
        if (res->too_big == 2)
            mu_fmt(why, cap,
                   "the responses being received hold over max_buffered_bytes in all: the one "
                   "from %s was cut",
                   e->key);
        else
            mu_fmt(why, cap, "response from %s is over max_response_bytes (%zu)", e->key,
                   k->m->s.max_response);
        break;
    case MU_ECONNECT:
        mu_fmt(why, cap, "connect to %s failed: %s", e->key, err);
        break;
    case MU_ETIMEDOUT:
        mu_fmt(why, cap, "no answer from %s within %d ms", e->key, k->timeout_ms);
        break;
    default:
        if (res->unsent)
            mu_fmt(why, cap, "%s reset a kept connection before reading the request: %s", e->key,
                   err);
        else
            mu_fmt(why, cap, "connection to %s failed after the request was sent: %s", e->key,
                   err);
        break;
    }
}

/* Remembers an attempt that never reached its provider, for the detail of
 * a call that ends without any provider accepting it. */
static void note_unsent(call_t *k, const mu_endpoint *e, const char *why)
{
    call_io *io = k->io; /* there was an attempt */
    mu_fmt(io->unsent_why, sizeof io->unsent_why, "%s", why);
    if (strstr(io->unsent_eps, e->key))
        return;
    size_t n = strlen(io->unsent_eps);
    if (n + strlen(e->key) + 3 < sizeof io->unsent_eps)
        mu_fmt(io->unsent_eps + n, sizeof io->unsent_eps - n, "%s%s", n ? ", " : "", e->key);
}

/* k's attempt has ended but still holds its endpoint (k->ep), which the
 * retry counters are charged to before it is let go. */
static void fail_after_send(call_t *k, const mu_outcome *o, const char *why)
{
    mu_calls *m = k->m;
    mu_status st = o->status;
    int retry = o->retry && retryable_budget(k);
    int budget_spent = retry && !budget_take(m);
    if (retry && !budget_spent) {
        m->d.stats->retries++;
        k->t->met.retries++;
        k->ep->metrics.retries++;
    }
    end_attempt(k);
    if (budget_spent) {
        m->d.stats->retries_denied++;
        finish(k, st, "%s; not retried: the client's retry budget is spent (retry_budget_percent)",
               why);
        return;
    }
    if (retry) {
        mu_log(m->d.log, MU_LOG_INFO, "%s: attempt %d: %s; retrying", k->t->g->path, k->attempts,
               why);
        retry_after_backoff(k, why);
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

static void retry_unsent(call_t *k, const char *why);

static void inflight_of(const call_t *o, uint64_t now, mu_inflight *out)
{
    out->age_us = now - o->launch_us;
    out->reused_before = o->reused_before;
    out->fresh_connection = mu_xfer_fresh_connection(o->x);
}

/* In-flight age: tells health of each attempt on e unanswered past
 * mu_health_silent_after(), oldest first, until it ejects e. Returns the
 * wait until the next attempt passes that age (0: none in flight). */
#define SILENT_RECHECK_US 100000u

static uint64_t check_silent(mu_calls *m, mu_endpoint *e, uint64_t now, int *verdict)
{
    /* The usual case, on every watch: the oldest attempt is still young,
     * so nothing is silent yet; look at it alone (walking every attempt
     * in flight cost a cache miss each: +5% CPU a call at 64 in flight). */
    call_t *h = e->lane.run_head;
    uint64_t first = h ? mu_health_silent_after(h->t->usual_us) : 0;
    if (!verdict && first && h->launch_us + first > now && (!h->qnext || h->qnext->t == h->t))
        return h->launch_us + first - now; /* one method: later attempts pass the age later */
    uint64_t next = 0;
    for (call_t *o = e->lane.run_head; o; o = o->qnext) { /* at most max_per_host */
        uint64_t after = mu_health_silent_after(o->t->usual_us);
        if (!after) { /* no answer to this method yet: look again later */
            if (!next || SILENT_RECHECK_US < next)
                next = SILENT_RECHECK_US;
            continue;
        }
        if (o->launch_us + after > now) {
            uint64_t wait = o->launch_us + after - now;
            if (!next || wait < next)
                next = wait;
        } else if (verdict && !(*verdict & MU_HEALTH_EJECTED)) {
            int v = mu_health_silent(m->d.health, e, &o->t->o->eject, o->launch_us, now);
            if (v & MU_HEALTH_EJECTED)
                o->t->met.ejections++;
            *verdict |= v;
        }
    }
    return next;
}

/* Arms e's oldest attempt's timer for the next look at e: a keep-alive
 * stall (health asks for it) or in-flight age. */
static void watch(mu_calls *m, mu_endpoint *e)
{
    call_t *o = e->lane.run_head;
    if (!o || o->stall_armed)
        return;
    uint64_t now = mu_now_us();
    mu_inflight in;
    inflight_of(o, now, &in);
    uint64_t us = mu_health_stall_wait(m->d.health, e, &in);
    uint64_t silent = check_silent(m, e, now, NULL);
    if (silent && (!us || silent < us))
        us = silent;
    if (us && wake_in(o, us) == 0)
        o->stall_armed = 1;
}

/* Acts on health's verdicts about e, then watches it. kept: the attempt
 * that ended left a connection to e open (it began before e lost
 * keep-alive). An ejected endpoint's queue moves elsewhere. */
static void heed(mu_calls *m, mu_endpoint *e, int verdict, int kept)
{
    if ((verdict & MU_HEALTH_ONE_PER_CALL) || (kept && !mu_health_keepalive(e)))
        mu_transport_close_idle(m->d.tp, e->url);
    if (verdict & MU_HEALTH_EJECTED)
        reroute_queue(e);
    watch(m, e);
}

/* Tells health how the attempt went, with the oldest attempt still in
 * flight on the endpoint (for its stall check). */
static int report(call_t *k, mu_endpoint *e, const mu_xfer_result *res, const mu_outcome *out,
                  uint64_t now)
{
    mu_inflight oldest;
    call_t *o = e->lane.run_head;
    if (o)
        inflight_of(o, now, &oldest);
    mu_attempt_report r = {
        .signal = out->signal,
        .status = out->status,
        .rules = &k->t->o->eject,
        .failed = out->status != MU_OK,
        .now_us = now,
        .latency_us = now - k->launch_us,
        .answered = res->code == CURLE_OK,
        .http_status = res->http_status,
        .reused = res->reused,
        .died_on_reuse = res->died_on_reuse,
        .body_wait_us = res->body_wait_us,
        .body_len = res->len,
        .oldest = o ? &oldest : NULL,
    };
    return mu_health_ended(k->m->d.health, e, &r);
}

static mu_outcome classify(call_t *k, const mu_xfer_result *res)
{
    mu_attempt_facts f = {
        .curl_ok = res->code == CURLE_OK,
        .timed_out = res->code == CURLE_OPERATION_TIMEDOUT,
        .too_big = res->too_big,
        .unsent = res->unsent,
        .died_on_reuse = res->died_on_reuse,
        .deadline_cut =
            res->code == CURLE_OPERATION_TIMEDOUT && k->attempt_timeout_ms < k->timeout_ms,
        .bad_headers = res->bad_headers,
        .http_status = res->http_status,
        .idempotent = k->idempotent,
    };
    if (f.curl_ok && !f.too_big)
        f.decoded = mu_decode_response(&k->io->dec, res->body, res->len, res->http_status,
                                       k->request_id, &k->io->reply);
    return mu_classify(&f);
}

static void on_xfer_done(mu_xfer *x, const mu_xfer_result *res, void *user)
{
    MU_UNUSED(x);
    call_t *k = user;
    mu_endpoint *e = k->ep;
    uint64_t now = mu_now_us();
    run_remove(k);
    disarm_stall(k);
    k->http_status = res->http_status;
    mu_outcome o = classify(k, res);
    /* Queued attempts hold e->pending, so e outlives this. An ejected
     * endpoint's queue moves elsewhere first (heed); else the next queued
     * attempt takes the free connection. */
    int verdict = report(k, e, res, &o, now);
    /* Metrics: the outcome is known here (metrics.h); e is still held. */
    mu_ep_metrics *em = &e->metrics;
    mu_target_metrics *tm = &k->t->met;
    em->attempts++;
    tm->attempts++;
    mu_met_hist_add(&em->lat, now - k->launch_us);
    if (o.status != MU_OK) {
        mu_met_count(em->failed, o.status);
        mu_met_count(tm->failed, o.status);
    }
    if (verdict & MU_HEALTH_EJECTED)
        tm->ejections++;
    heed(k->m, e, verdict, res->kept);
    e->lane.active--;
    pump(e);
    if (o.status == MU_OK) {
        uint64_t lat = now - k->launch_us, *u = &k->t->usual_us;
        *u = *u ? *u - *u / 16 + lat / 16 : (lat ? lat : 1);
        hist_add(&k->t->lat, lat);
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
    fail_after_send(k, &o, why); /* lets e go */
}

/* ------------------------------------------------------------- attempts */

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

/* The headers of the attempt: fixed for 1.0.2 and 1.0.3; 1.0.4+ carry the
 * request id and a token derived from it. 0, or -1 out of memory. */
static int attempt_headers(call_t *k, int close)
{
    mu_calls *m = k->m;
    k->hdr_close = close;
    if (!mu_proto_get(m->s.proto)->json_headers) {
        k->send_hdrs = close ? m->headers_close : m->headers;
        return 0;
    }
    char line[5][128], tok[MU_AUTH_TOKEN_LEN + 1];
    if (k->hdrs)
        curl_slist_free_all(k->hdrs);
    k->hdrs = NULL;
    k->send_hdrs = NULL;
    if (mu_auth_token(m->s.auth_token, k->request_id, tok) != 0)
        return -1;
    mu_fmt(line[0], sizeof line[0], "Content-Type: application/json");
    mu_fmt(line[1], sizeof line[1], "Accept: application/json");
    mu_fmt(line[2], sizeof line[2], "micro-request-id: %s", k->request_id);
    mu_fmt(line[3], sizeof line[3], "micro-auth-token: %s", tok);
    mu_fmt(line[4], sizeof line[4], "%s", close ? "Connection: close" : "Expect:");
    for (size_t i = 0; i < 5; i++) {
        /* curl_slist_append returns NULL and leaves the list alone when out
         * of memory: k->hdrs keeps what was built, freed either way. */
        struct curl_slist *h = curl_slist_append(k->hdrs, line[i]);
        if (!h)
            return -1;
        k->hdrs = h;
    }
    if (close && !curl_slist_append(k->hdrs, "Expect:"))
        return -1;
    k->send_hdrs = k->hdrs;
    return 0;
}

static int was_tried(const call_t *k, const mu_endpoint *e)
{
    for (int i = 0; i < k->ntried; i++)
        if (k->tried[i] == e)
            return 1;
    return 0;
}

/* The pick for the next attempt; NULL (the call finished) if the group is empty. */
static mu_endpoint *pick(call_t *k, uint64_t now)
{
    mu_group *g = k->t->g;
    mu_endpoint *e =
        k->policy == MU_POLICY_HASH && k->has_key
            ? mu_pool_pick_hash(g->pool, k->hash_key, k->tried, (size_t)k->ntried, now, &k->m->rng)
            : mu_pool_pick(g->pool, k->policy, k->tried, (size_t)k->ntried, now, &k->m->rng);
    if (!e) {
        if (g->is_static)
            finish(k, MU_ENOPROVIDER, "no static provider for %s", g->path);
        else
            finish(k, MU_ENOPROVIDER, "no provider registered under %s", g->path);
    }
    return e;
}

static void start_attempt_on(call_t *k, mu_endpoint *e, uint64_t now)
{
    mu_calls *m = k->m;
    if (now >= k->deadline_us) {
        finish(k, MU_ETIMEDOUT, "deadline passed before attempt %d", k->attempts + 1);
        return;
    }
    if (e->lane.queued >= m->s.max_queue) {
        if (k->starting) { /* mu_calls_start undoes the call */
            k->overloaded = 1;
            memcpy(k->endpoint, e->key, sizeof k->endpoint);
        }
        else
            finish(k, MU_EOVERLOADED,
                   "%d attempts already wait for a connection to %s (max_queue_per_host)",
                   e->lane.queued, e->key);
        return;
    }
    m->id_seq++;
    format_request_id(k->request_id, m->id_hi, m->id_seq);
    if (mu_encode_request_finish(&k->body, k->prefix_len, k->request_id) != 0) {
        finish(k, MU_ENOMEM, "out of memory encoding the request");
        return;
    }
    if (attempt_headers(k, !mu_health_keepalive(e)) != 0) {
        finish(k, MU_ENOMEM, "out of memory building headers");
        return;
    }
    mu_endpoint_pending_add(e, +1);
    mu_health_started(m->d.health, e);
    k->ep = e;
    if ((size_t)k->ntried < MU_ARRAY_LEN(k->tried) && !was_tried(k, e))
        k->tried[k->ntried++] = e;
    k->attempts++;
    m->d.stats->attempts++;
    if (k->attempts == 1 && !k->is_hedge)
        arm_hedge(k); /* counted from the first attempt, not from a wait for discovery */
    memcpy(k->endpoint, e->key, sizeof k->endpoint);
    if (e->lane.active < m->s.max_per_host && !e->lane.queue_head) {
        launch(k);
        return;
    }
    k->state = C_QUEUED;
    dl_append(&e->lane.queue_head, &e->lane.queue_tail, k);
    e->lane.queued++;
}

static void start_attempt(call_t *k)
{
    uint64_t now = mu_now_us();
    mu_endpoint *e = pick(k, now);
    if (e)
        start_attempt_on(k, e, now);
}

/* A call whose attempt never reached a provider (refused, or a kept
 * connection closed or reset unread) tries another at once. When none is
 * usable (every one was tried this round or is ejected) it waits: jittered
 * exponential backoff from connect_backoff_ms up to connect_backoff_max_ms,
 * never past its deadline, then begins a new round. Providers register
 * about 0.2 s before they listen (docs/protocol.md §6.1). Such attempts do
 * not use up retries; the deadline bounds them. */
/* The n-th wait (from 0): connect_backoff_ms doubling up to
 * connect_backoff_max_ms, half fixed and half random, so that calls that
 * failed together spread out. */
static uint64_t backoff_us(mu_calls *m, int n)
{
    unsigned shift = n < 16 ? (unsigned)n : 16;
    uint64_t ms = (uint64_t)m->s.backoff_ms << shift;
    if (ms > (uint64_t)m->s.backoff_max_ms)
        ms = (uint64_t)m->s.backoff_max_ms;
    return ms * 500u + mu_rand(&m->rng) % (ms * 500u + 1);
}

/* A retry after a sent attempt failed waits first, as the providers that
 * failed it may be overloaded: the same backoff, by the number of sent
 * attempts, at most half of what is left of the deadline. */
static void retry_after_backoff(call_t *k, const char *why)
{
    mu_calls *m = k->m;
    uint64_t now = mu_now_us(), us = backoff_us(m, k->sent - 1);
    uint64_t left = k->deadline_us > now ? k->deadline_us - now : 0;
    if (us > left / 2)
        us = left / 2;
    mu_fmt(k->io->detail, sizeof k->io->detail, "%s", why); /* there was an attempt */
    k->state = C_BACKOFF;
    k->retry_wait = 1;
    wake_in(k, us);
}

static void retry_unsent(call_t *k, const char *why)
{
    mu_calls *m = k->m;
    uint64_t now = mu_now_us();
    if (now + 1000 >= k->deadline_us) {
        finish(k, MU_ECONNECT, "%s; deadline reached after %d attempt(s); providers tried: %s", why,
               k->attempts, unsent_eps(k));
        return;
    }
    mu_endpoint *e = pick(k, now);
    if (!e)
        return;
    if (!was_tried(k, e) && mu_health_up(e, now)) {
        start_attempt_on(k, e, now);
        return;
    }
    uint64_t us = backoff_us(m, k->nbackoff++);
    k->state = C_BACKOFF;
    k->retry_wait = 0;
    mu_log(m->d.log, MU_LOG_DEBUG, "%s: %s; no usable provider, waiting %llu us", k->t->g->path,
           why, (unsigned long long)us);
    if (now + us >= k->deadline_us)
        return; /* the deadline ends the call */
    wake_in(k, us);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    MU_UNUSED(fd);
    MU_UNUSED(what);
    call_t *k = arg;
    if (k->state == C_RUNNING) { /* a stall check of its attempt */
        k->stall_armed = 0;
        mu_endpoint *e = k->ep;
        if (!e || e->lane.run_head != k)
            return;
        mu_inflight in;
        uint64_t now = mu_now_us();
        inflight_of(k, now, &in);
        int verdict = mu_health_stalled(k->m->d.health, e, &in);
        check_silent(k->m, e, now, &verdict);
        heed(k->m, e, verdict, 0);
        return;
    }
    k->state = C_RUNNING;
    if (!k->retry_wait)
        k->ntried = 0; /* a new round: every provider may be tried again */
    k->retry_wait = 0;
    start_attempt(k);
}

/* ------------------------------------------------------------ deadlines */

/* The deadline passed and no attempt ever reached a provider. */
static void finish_unaccepted(call_t *k, int ms, const char *last)
{
    char eps[UNSENT_EPS_CAP];
    mu_fmt(eps, sizeof eps, "%s", unsent_eps(k)); /* finish() formats into the io */
    finish(k, MU_ECONNECT,
           "no provider of %s accepted the call within the %d ms deadline (%d attempt(s), none "
           "sent); providers tried: %s; last: %s",
           k->t->g->path, ms, k->attempts, eps, last);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    MU_UNUSED(fd);
    MU_UNUSED(what);
    call_t *k = arg;
    mu_calls *m = k->m;
    int ms = (int)((k->deadline_us - k->start_us) / 1000);
    char ep[72], why[UNSENT_WHY_CAP];
    memcpy(ep, k->endpoint, sizeof ep);
    switch (k->state) {
    case C_WAITING: {
        char state[300];
        m->d.discovery_state(m->d.user, state, sizeof state);
        finish(k, MU_EDISCOVERY, "providers of %s not loaded within the %d ms deadline%s%s",
               k->t->g->path, ms, state[0] ? ": " : "", state);
        break;
    }
    case C_QUEUED:
        finish(k, MU_ETIMEDOUT,
               "deadline of %d ms passed while attempt %d waited for a connection to %s", ms,
               k->attempts, ep);
        break;
    case C_RUNNING:
        if (k->sent == 0 && unsent_eps(k)[0] && !mu_xfer_request_sent(k->x)) {
            /* Still connecting after refusals: nothing was ever sent. */
            mu_fmt(why, sizeof why, "the attempt to %s was still connecting", ep);
            finish_unaccepted(k, ms, why);
            break;
        }
        finish(k, MU_ETIMEDOUT, "deadline of %d ms passed during attempt %d (to %s)", ms,
               k->attempts, ep);
        break;
    case C_BACKOFF:
        if (k->retry_wait) { /* waiting to retry a sent attempt */
            char last[sizeof k->io->detail];
            mu_fmt(last, sizeof last, "%s", k->io ? k->io->detail : "");
            finish(k, MU_ETIMEDOUT, "%s; deadline of %d ms reached before the retry", last, ms);
            break;
        }
        mu_fmt(why, sizeof why, "%s", k->io ? k->io->unsent_why : "");
        finish_unaccepted(k, ms, why);
        break;
    default:
        break;
    }
}

/* Calls with the configured deadline share one of libevent's common
 * timeouts: a FIFO, O(1) to add and remove, where the timer heap costs
 * O(log n) each way (callgrind: ~800 instructions a call less at 1,000
 * calls in flight). */
static void arm_deadline(call_t *k, int deadline_ms)
{
    mu_calls *m = k->m;
    struct timeval tv = {deadline_ms / 1000, (deadline_ms % 1000) * 1000};
    const struct timeval *tvp = &tv;
    if (deadline_ms == m->s.deadline_ms) {
        if (!m->deadline_tv)
            m->deadline_tv = event_base_init_common_timeout(m->d.base, &tv);
        if (m->deadline_tv)
            tvp = m->deadline_tv;
    }
    evtimer_add(k->timer, tvp);
}

/* ------------------------------------------------------------- hedging */

/* hedge_ms after an idempotent call started with no answer yet: a second
 * attempt goes to another provider, drawing on the retry budget. The two
 * race (settle()); the hedge is a call object of its own, with the
 * primary's callback, deadline and start time, and one attempt. */
static void on_hedge(evutil_socket_t fd, short what, void *arg)
{
    MU_UNUSED(fd);
    MU_UNUSED(what);
    call_t *k = arg;
    mu_calls *m = k->m;
    if ((k->state != C_RUNNING && k->state != C_QUEUED) || !k->ep || k->hedge ||
        mu_pool_size(k->t->g->pool) < 2 || m->nlive >= (size_t)m->s.max_calls)
        return;
    if (!budget_take(m)) {
        m->d.stats->retries_denied++;
        return;
    }
    call_t *h = call_get(m);
    if (!h)
        return;
    if (mu_buf_append(&h->body, k->body.data, k->prefix_len) != 0) {
        recycle(h);
        return;
    }
    h->prefix_len = k->prefix_len;
    h->cb = k->cb;
    h->user = k->user;
    h->t = k->t;
    h->policy = k->policy;
    h->has_key = k->has_key;
    h->hash_key = k->hash_key;
    h->idempotent = 1;
    h->timeout_ms = k->timeout_ms;
    h->max_attempts = 1;
    h->start_us = k->start_us;
    h->deadline_us = k->deadline_us;
    uint64_t now = mu_now_us(), left = k->deadline_us > now ? k->deadline_us - now : 0;
    struct timeval tv = {(time_t)(left / 1000000u), (suseconds_t)(left % 1000000u)};
    evtimer_add(h->timer, &tv);
    h->is_hedge = 1;
    h->hedge = k;
    k->hedge = h;
    h->tried[0] = k->ep;
    h->ntried = 1;
    m->d.stats->hedges++;
    k->t->met.hedges++;
    k->ep->metrics.hedges++; /* the endpoint that was slow */
    mu_log(m->d.log, MU_LOG_DEBUG, "%s: no answer from %s within %d ms: hedging", k->t->g->path,
           k->endpoint, k->hedge_ms);
    start_attempt(h);
}

/* ------------------------------------------------------------- latency */

static unsigned hist_bucket(uint64_t us)
{
    if (us < 2)
        return 0;
    unsigned top = 63u - (unsigned)__builtin_clzll(us);  /* octave */
    unsigned frac = (unsigned)((us >> (top >= 2 ? top - 2 : 0)) & 3u); /* quarter */
    if (top < 2)
        frac = (unsigned)((us << (2 - top)) & 3u);
    unsigned b = top * 4u + frac;
    return b < MU_LAT_BUCKETS ? b : MU_LAT_BUCKETS - 1;
}

/* The upper bound of bucket b, in microseconds. */
static uint64_t hist_upper(unsigned b)
{
    unsigned top = b / 4u, frac = b % 4u;
    return top >= 2 ? ((uint64_t)(4u + frac + 1u) << (top - 2)) : (uint64_t)(top + 1u) * 2u;
}

static void hist_add(mu_lat_hist *h, uint64_t us)
{
    h->n[hist_bucket(us)]++;
    h->total++;
    if (++h->since_halving >= 1024) {
        h->since_halving = 0;
        h->total = 0;
        for (unsigned i = 0; i < MU_LAT_BUCKETS; i++)
            h->total += h->n[i] /= 2;
    }
}

/* The latency under which pm per mille of the samples fall; 0 with fewer
 * than 100 samples. */
static uint64_t hist_percentile(const mu_lat_hist *h, int pm)
{
    if (h->total < 100)
        return 0;
    uint64_t want = ((uint64_t)h->total * (uint64_t)pm + 999u) / 1000u, seen = 0;
    for (unsigned i = 0; i < MU_LAT_BUCKETS; i++)
        if ((seen += h->n[i]) >= want)
            return hist_upper(i);
    return hist_upper(MU_LAT_BUCKETS - 1);
}

/* The hedge delay: the method's percentile (hedge = pNN) once known, else
 * hedge_ms; 0: no hedge. */
static int hedge_delay_ms(const call_t *k)
{
    const mu_svc_opts *o = k->t->o;
    if (o->hedge_pm) {
        uint64_t us = hist_percentile(&k->t->lat, o->hedge_pm);
        if (us)
            return (int)((us + 999u) / 1000u);
    }
    return o->hedge_ms;
}

static void arm_hedge(call_t *k)
{
    if (!k->idempotent) /* never hedged: no percentile to read */
        return;
    k->hedge_ms = hedge_delay_ms(k);
    if (k->hedge_ms <= 0)
        return;
    if (!k->hedge_ev && !(k->hedge_ev = evtimer_new(k->m->d.base, on_hedge, k)))
        return; /* out of memory: no hedge */
    struct timeval tv = {k->hedge_ms / 1000, (k->hedge_ms % 1000) * 1000};
    evtimer_add(k->hedge_ev, &tv);
}

/* ---------------------------------------------------------- entry points */

void mu_calls_group_changed(mu_calls *m, mu_group *g)
{
    if (g->state == MU_GROUP_LOADING)
        return;
    call_t *k = m->waiting;
    while (k) {
        call_t *next = k->qnext;
        if (k->t->g == g) {
            waiting_remove(k);
            k->state = C_RUNNING; /* no longer waiting; start_attempt sets the rest */
            if (g->state == MU_GROUP_NONODE)
                finish(k, MU_ENOPROVIDER, "no provider registered: %s does not exist", g->path);
            else
                start_attempt(k);
        }
        k = next;
    }
}

static int check_json(mu_calls *m, const char **text, size_t *len, const char *dflt, char want,
                      char *err, size_t errcap)
{
    if (!*text) {
        *text = dflt;
        *len = 2;
        return 0;
    }
    *len = strlen(*text);
    return mu_json_check_cached(&m->ycache, *text, *len, want, err, errcap);
}

/* The call's settings from its options and the target. */
static void call_setup(call_t *k, mu_target *t, const mu_call_opts *o, int policy)
{
    k->t = t;
    k->policy = policy >= 0 ? (mu_policy)policy : t->o->policy;
    k->has_key = o->hash_key != NULL;
    k->hash_key = o->hash_key ? mu_hash_key(o->hash_key) : 0;
    k->idempotent = o->idempotent >= 0 ? (o->idempotent != 0) : t->idempotent;
    k->timeout_ms = o->timeout_ms ? o->timeout_ms : t->o->timeout_ms;
    k->max_attempts = 1 + (o->retries >= 0 ? o->retries : t->o->retries);
    int deadline_ms = o->deadline_ms ? o->deadline_ms : t->o->deadline_ms;
    k->start_us = mu_now_us();
    k->deadline_us = k->start_us + (uint64_t)deadline_ms * 1000u;
    arm_deadline(k, deadline_ms);
}

mu_status mu_calls_start(mu_calls *m, mu_target *t, const char *method, const char *args,
                         const char *kwargs, const mu_call_opts *o, mu_call_cb cb, void *user,
                         mu_call_id *id, char *err, size_t errcap)
{
    size_t alen, klen;
    if (check_json(m, &args, &alen, "[]", '[', err, errcap) != 0 ||
        check_json(m, &kwargs, &klen, "{}", '{', err, errcap) != 0)
        return MU_EINVAL;
    int policy = -1;
    if (o->policy && (policy = mu_policy_parse(o->policy)) < 0) {
        mu_fmt(err, errcap,
               "mu_call: unknown policy '%s' (ewma, round-robin, random, least-pending, p2c, "
               "hash)",
               o->policy);
        return MU_EINVAL;
    }
    if (m->nlive >= (size_t)m->s.max_calls) {
        m->d.stats->overloaded++;
        mu_fmt(err, errcap, "mu_call: %zu calls are already in flight (max_calls)", m->nlive);
        return MU_EOVERLOADED;
    }
    call_t *k = call_get(m);
    if (!k || mu_encode_request_prefix(&m->enc, &k->body, method, strlen(method), args, alen,
                                       kwargs, klen) != 0) {
        if (k)
            recycle(k);
        mu_fmt(err, errcap, "out of memory");
        return MU_ENOMEM;
    }
    k->prefix_len = k->body.len;
    k->cb = cb;
    k->user = user;
    call_setup(k, t, o, policy);
    mu_group *g = t->g;
    if (g->state == MU_GROUP_LOADING) {
        k->state = C_WAITING;
        dl_append(&m->waiting, &m->waiting_tail, k);
    } else if (g->state == MU_GROUP_NONODE) {
        finish(k, MU_ENOPROVIDER, "no provider registered: %s does not exist", g->path);
    } else {
        k->starting = 1;
        k->overloaded = 0;
        start_attempt(k);
        k->starting = 0;
        if (k->overloaded) { /* the pick's queue was full: no call was made */
            mu_fmt(err, errcap,
                   "mu_call: %d attempts already wait for a connection to %s (max_queue_per_host)",
                   m->s.max_queue, k->endpoint);
            evtimer_del(k->timer);
            recycle(k);
            m->d.stats->overloaded++;
            return MU_EOVERLOADED;
        }
    }
    m->d.stats->calls_started++;
    t->met.started++;
    budget_deposit(m);
    if (id)
        *id = call_id(k);
    return MU_OK;
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

/* Ends k now with MU_ECANCELLED and runs its callback. */
static void cancel_now(call_t *k, const char *why)
{
    mu_calls *m = k->m;
    if (k->state == C_HEDGED) { /* the call goes on in its hedge */
        call_t *h = k->hedge;
        unpair(k);
        recycle(k);
        cancel_now(h, why);
        return;
    }
    if (k->state == C_DONE) {
        /* The outcome is known but not delivered: take it off the queue so
         * that the callback fires now, as promised, and only now. */
        if (!unlink_from(&m->batch, NULL, k))
            unlink_from(&m->done_head, &m->done_tail, k);
    }
    stop(k);
    k->status = MU_ECANCELLED;
    if (io_of(k))
        mu_fmt(k->io->detail, sizeof k->io->detail, "%s after %d attempt(s)", why, k->attempts);
    deliver(k);
}

int mu_calls_cancel(mu_calls *m, mu_call_id id)
{
    mu_life *life = m->d.life;
    call_t *k = call_find(m, id);
    /* Not from the log sink (it runs inside the calls' own work), nor while
     * the client is being destroyed (cancel_all is ending every call). */
    if (!k || k->state == C_DELIVERING || life->sink > 0 || life->state == MU_LIFE_GONE)
        return 0;
    mu_life_enter(life, 0);
    cancel_now(k, "cancelled");
    mu_life_leave(life, 0); /* may destroy the client */
    return 1;
}

void mu_calls_cancel_all(mu_calls *m)
{
    for (;;) {
        call_t *k = m->batch ? m->batch : m->done_head;
        if (!k) {
            for (k = m->live; k && k->state == C_DELIVERING; k = k->next)
                ;
        }
        if (!k)
            break;
        cancel_now(k, "the client was freed");
    }
}

/* ------------------------------------------------------------ the module */

static struct curl_slist *fixed_headers(int close)
{
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json-rpc");
    h = h ? curl_slist_append(h, "Accept: application/json-rpc") : NULL;
    h = h ? curl_slist_append(h, "Expect:") : NULL;
    if (h && close)
        h = curl_slist_append(h, "Connection: close");
    return h;
}

mu_calls *mu_calls_new(const mu_calls_deps *deps, const mu_call_settings *s, uint64_t seed)
{
    mu_calls *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->d = *deps;
    m->s = *s;
    m->rng = seed | 1;
    m->budget = 100 * (int64_t)s->budget_min_per_s; /* one second of the floor */
    m->budget_at_us = mu_now_us();
    m->id_hi = mu_rand(&m->rng);
    m->drain = event_new(deps->base, -1, 0, on_drain, m);
    m->headers = fixed_headers(0);
    m->headers_close = fixed_headers(1);
    m->enc_ok = mu_encoder_init(&m->enc) == 0;
    if (!m->drain || !m->headers || !m->headers_close || !m->enc_ok) {
        mu_calls_free(m);
        return NULL;
    }
    return m;
}

void mu_calls_free(mu_calls *m)
{
    if (!m)
        return;
    while (m->live) { /* none after mu_calls_cancel_all; freed all the same */
        call_t *k = m->live;
        live_unlink(k);
        call_destroy(k);
    }
    while (m->spare) {
        call_t *k = m->spare;
        m->spare = k->next;
        call_destroy(k);
    }
    if (m->drain)
        event_free(m->drain);
    curl_slist_free_all(m->headers);
    curl_slist_free_all(m->headers_close);
    if (m->enc_ok)
        mu_encoder_cleanup(&m->enc);
    mu_yajl_cache_clear(&m->ycache);
    free(m->slots);
    free(m->gens);
    free(m->free_slots);
    free(m);
}
