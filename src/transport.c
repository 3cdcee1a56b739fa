#include "config.h"
#include "transport.h"
#include "common.h"

#include <assert.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

/* curl's own default would keep 4 connections per added handle and close
 * keep-alive connections as handles come and go (docs/design.md). */
#define MU_DEFAULT_MAX_CONNECTIONS 1024L

/* One per socket curl asks us to watch. Recycled through a free list, so a
 * reconnect costs no malloc once the pool is warm. */
typedef struct mu_sock {
    struct event *ev;
    struct mu_sock *prev, *next; /* live list, or free list (next only) */
} mu_sock;

/* A connection curl opened, by its fd: which URL it was opened for and
 * whether an exchange is using it, so that the idle ones to a provider can
 * be closed (mu_transport_close_idle). */
typedef struct conn_rec {
    char *url;    /* NULL: no connection of ours on this fd */
    int busy;     /* curl watches it for an exchange (its socket callback) */
    int quickack; /* its exchanges want TCP_QUICKACK (mu_xfer_set_quickack) */
} conn_rec;

struct mu_transport {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    mu_transport_opts opts;
    mu_sock *live;        /* sockets curl is watching */
    mu_sock *spare;       /* recycled mu_socks, events not pending */
    conn_rec *conns;      /* indexed by fd */
    size_t nconns;
    uint64_t conns_opened;
    uint64_t resends_refused;
    size_t running;
    size_t nxfers;
    size_t buffered;      /* body bytes held by running transfers (max_buffered caps it) */
    char *ca_file;        /* opts.tls_ca_file, copied; NULL: the system's */
    size_t buffered_peak;
};

struct mu_xfer {
    mu_transport *t;
    CURL *easy;
    mu_buf body;          /* response body, reused across attempts */
    int running;
    int too_big;
    size_t counted;       /* its part of t->buffered */
    int opened_socket;    /* this attempt created a socket */
    int attached;         /* curl gave the exchange a connection (on_curl_socket) */
    int first_reused;     /* ... one kept from an earlier exchange */
    int quickack;         /* re-arm TCP_QUICKACK on its connection */
    int resend_refused;   /* curl wanted to send again; refused (see transport.h) */
    long resend_errno;    /* the OS error that ended the reused connection */
    int reuse;            /* 1: keep-alive; 0: fresh connection, closed after */
    const char *url;      /* of the running exchange (borrowed) */
    mu_xfer_done_fn done;
    void *user;
    mu_xfer_result res;
    char errbuf[CURL_ERROR_SIZE];
};

/* ------------------------------------------------------------ sockets */

static void on_socket(evutil_socket_t fd, short what, void *arg);
static void drain_done(mu_transport *t);
static void quickack(evutil_socket_t fd);
static void attach(CURL *easy, struct conn_rec *c);
static conn_rec *conn_at(mu_transport *t, curl_socket_t fd, int grow);

static void sock_unlink(mu_transport *t, mu_sock *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        t->live = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
}

static mu_sock *sock_get(mu_transport *t)
{
    mu_sock *s = t->spare;
    if (s) {
        t->spare = s->next;
        s->next = NULL;
    } else {
        s = calloc(1, sizeof *s);
        if (!s)
            return NULL;
        /* Placeholder; event_assign() sets the real fd and flags. */
        s->ev = event_new(t->base, -1, 0, on_socket, t);
        if (!s->ev) {
            free(s);
            return NULL;
        }
    }
    s->prev = NULL;
    s->next = t->live;
    if (t->live)
        t->live->prev = s;
    t->live = s;
    return s;
}

static void sock_put(mu_transport *t, mu_sock *s)
{
    event_del(s->ev);
    sock_unlink(t, s);
    s->next = t->spare;
    t->spare = s;
}

static void sock_list_free(mu_sock *s)
{
    while (s) {
        mu_sock *next = s->next;
        event_free(s->ev);
        free(s);
        s = next;
    }
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    mu_transport *t = userp;
    mu_sock *s = socketp;
    /* curl watches a connection's socket exactly while an exchange uses it. */
    conn_rec *c = conn_at(t, fd, 0);
    if (c && c->url)
        c->busy = what != CURL_POLL_REMOVE;
    if (what != CURL_POLL_REMOVE)
        attach(easy, c);

    if (what == CURL_POLL_REMOVE) {
        if (s) {
            sock_put(t, s);
            curl_multi_assign(t->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = sock_get(t);
        if (!s)
            return -1; /* curl fails the transfer */
        curl_multi_assign(t->multi, fd, s);
    } else {
        event_del(s->ev);
    }
    short kind = EV_PERSIST;
    if (what & CURL_POLL_IN) {
        /* curl may have read the headers already, in the same action that
         * sent the request: ack them now, or the body waits (quickack). */
        if (c && c->quickack)
            quickack(fd);
        kind |= EV_READ;
    }
    if (what & CURL_POLL_OUT)
        kind |= EV_WRITE;
    if (event_assign(s->ev, t->base, fd, kind, on_socket, t) != 0 || event_add(s->ev, NULL) != 0)
        return -1;
    return 0;
}

/* The exchange of easy has a connection now (c: its record, if ours). The
 * first time, note whether it is a kept one, and make any second
 * connection for the exchange a fresh one: curl resends by itself when a
 * kept connection dies before any answer byte (Curl_retry_request), EOF
 * included, and would do it over another kept connection too; a fresh one
 * goes through on_sockopt, which refuses it (see transport.h). */
static void attach(CURL *easy, conn_rec *c)
{
    void *priv = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
    mu_xfer *x = priv;
    if (!x || !x->running)
        return;
    if (c && c->url)
        c->quickack = x->quickack;
    if (x->attached)
        return;
    x->attached = 1;
    x->first_reused = !x->opened_socket;
    /* Only a kept connection can lead curl to resend (Curl_retry_request
     * needs one). A second socket after a new one is curl trying the
     * host's next address (a name with A and AAAA records): allowed. */
    if (x->first_reused)
        curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L); /* a flag: cannot fail */
}

/* Python's http.server (Django's runserver) writes the headers and the body
 * of a response with two send()s, Nagle on. On a keep-alive connection our
 * kernel is in "pingpong" mode after each request we send, and delays its
 * ACK of the headers segment by up to 40 ms, hoping to piggyback it on our
 * next request; the server's Nagle holds the body back until that ACK: 40
 * ms a call (docs/protocol.md §6.2). Setting TCP_QUICKACK leaves pingpong
 * mode and, once the data is read, sends the pending ACK at once. For the
 * connections of exchanges that ask for it (mu_xfer_set_quickack), it is
 * set before every read event, and whenever curl starts waiting to read,
 * since curl may have read the headers inside the action that sent the
 * request, after which no read event comes until the body does. Not for
 * everyone: an ACK of its own for every answer costs CPU on both sides
 * (bench: about 10 us a call at 64 in flight on loopback). A failure (not
 * TCP, closed) is harmless. */
static void quickack(evutil_socket_t fd)
{
#ifdef TCP_QUICKACK
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
#else
    MU_UNUSED(fd);
#endif
}

static void on_socket(evutil_socket_t fd, short what, void *arg)
{
    mu_transport *t = arg;
    int action = 0, still;
    if (what & EV_READ) {
        conn_rec *c = conn_at(t, fd, 0);
        if (c && c->quickack)
            quickack(fd);
        action |= CURL_CSELECT_IN;
    }
    if (what & EV_WRITE)
        action |= CURL_CSELECT_OUT;
    curl_multi_socket_action(t->multi, fd, action, &still);
    /* No timer deletion here (hiperfifo's bug): a handle re-added from a
     * done callback has just armed it. curl says -1 when it wants it gone. */
    drain_done(t);
}

/* ------------------------------------------------------------ timer */

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    mu_transport *t = userp;
    MU_UNUSED(multi);
    if (timeout_ms < 0) {
        evtimer_del(t->timer);
        return 0;
    }
    struct timeval tv = {
        .tv_sec = (time_t)(timeout_ms / 1000),
        .tv_usec = (suseconds_t)((timeout_ms % 1000) * 1000),
    };
    return evtimer_add(t->timer, &tv) == 0 ? 0 : -1;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    mu_transport *t = arg;
    int still;
    MU_UNUSED(fd);
    MU_UNUSED(what);
    curl_multi_socket_action(t->multi, CURL_SOCKET_TIMEOUT, 0, &still);
    drain_done(t);
}

/* ------------------------------------------------------------ completion */

/* Established connections only (a refused connect counts 0), as curl counts. */
static void count_connects(mu_xfer *x)
{
    long n = 0;
    if (curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &n) == CURLE_OK && n > 0)
        x->t->conns_opened += (uint64_t)n;
}

static void fill_result(mu_xfer *x, CURLcode code)
{
    mu_xfer_result *r = &x->res;
    CURL *e = x->easy;
    long status = 0, port = 0;
    curl_off_t up = 0, total = 0, connect = 0, first = 0;

    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(e, CURLINFO_SIZE_UPLOAD_T, &up);
    curl_easy_getinfo(e, CURLINFO_TOTAL_TIME_T, &total);
    curl_easy_getinfo(e, CURLINFO_STARTTRANSFER_TIME_T, &first);
    curl_easy_getinfo(e, CURLINFO_CONNECT_TIME_T, &connect);
    curl_easy_getinfo(e, CURLINFO_LOCAL_PORT, &port);

    r->code = code;
    r->http_status = status;
    /* A reused connection has no connect time of its own, but curl records
     * the local port of whatever connection carried the transfer. */
    r->connected = connect > 0 || port > 0;
    r->sent = up > 0 || x->resend_refused;
    r->reused = x->first_reused;
    r->kept = x->reuse;
    /* curl ends a reused connection that died before any response byte by
     * resending on a fresh one; we refuse that resend, or curl gives up by
     * itself once its per-handle count of such resends is spent. */
    r->died_on_reuse =
        x->resend_refused || (code == CURLE_SEND_ERROR && x->first_reused && status == 0);
    long err = x->resend_refused ? x->resend_errno : 0;
    if (!err)
        curl_easy_getinfo(e, CURLINFO_OS_ERRNO, &err);
    r->unsent = !r->sent || (r->died_on_reuse && (err == ECONNRESET || err == EPIPE));
    r->too_big = x->too_big;
    /* libcurl 7.88 rejects a header over 100 KiB with CURLE_OUT_OF_MEMORY
     * and no error text: say what it was (the answer had begun). */
    /* libcurl 7.88 (Debian 12) reports headers over its limits as out of
     * memory; 8.6 and later as CURLE_TOO_LARGE */
    r->bad_headers = (code == CURLE_OUT_OF_MEMORY && status > 0)
#if LIBCURL_VERSION_NUM >= 0x080600
                     || code == CURLE_TOO_LARGE
#endif
        ;
    r->body = x->body.data ? x->body.data : "";
    r->len = x->body.len;
    if (x->errbuf[0])
        r->error = x->errbuf;
    else
        r->error = code == CURLE_OK ? "" : curl_easy_strerror(code);
    r->total_us = total > 0 ? (uint64_t)total : 0;
    r->body_wait_us = total > first && first > 0 ? (uint64_t)(total - first) : 0;
}

/* The done callback may start or cancel xfers (this one included), which
 * adds or removes handles and their queued messages. So every message is
 * consumed and its xfer detached from curl before the callback runs, and
 * nothing about the message or the xfer is touched after it. */
#define SMALL_BODY (64u * 1024u)

/* A transfer's body bytes leave the client-wide count when it ends. */
static void uncount(mu_xfer *x)
{
    x->t->buffered -= x->counted;
    x->counted = 0;
}

static void drain_done(mu_transport *t)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(t->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        CURLcode code = m->data.result;
        void *priv = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
        mu_xfer *x = priv;
        if (!x || !x->running) /* cannot happen: we only add running xfers */
            continue;
        fill_result(x, code);
        count_connects(x);
        curl_multi_remove_handle(t->multi, e);
        x->running = 0;
        t->running--;
        uncount(x);
        mu_xfer_done_fn done = x->done;
        void *user = x->user;
        x->done = NULL;
        x->user = NULL;
        if (done)
            done(x, &x->res, user);
    }
}

/* ------------------------------------------------------------ transport */

int mu_transport_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

mu_transport *mu_transport_new(struct event_base *base, const mu_transport_opts *opts)
{
    if (!base)
        return NULL;
    mu_transport *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->base = base;
    if (opts)
        t->opts = *opts;
    if (t->opts.max_connections <= 0)
        t->opts.max_connections = MU_DEFAULT_MAX_CONNECTIONS;
    if (t->opts.max_host_connections < 0)
        t->opts.max_host_connections = 0;
    t->opts.tls_ca_file = NULL; /* borrowed: the copy is ca_file */
    if (opts && opts->tls_ca_file && *opts->tls_ca_file && !(t->ca_file = strdup(opts->tls_ca_file))) {
        free(t);
        return NULL;
    }

    t->timer = evtimer_new(base, on_timer, t);
    t->multi = curl_multi_init();
    if (!t->timer || !t->multi)
        goto fail;
    CURLMcode rc = CURLM_OK;
    if (!rc) rc = curl_multi_setopt(t->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    if (!rc) rc = curl_multi_setopt(t->multi, CURLMOPT_SOCKETDATA, t);
    if (!rc) rc = curl_multi_setopt(t->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    if (!rc) rc = curl_multi_setopt(t->multi, CURLMOPT_TIMERDATA, t);
    if (!rc) rc = curl_multi_setopt(t->multi, CURLMOPT_MAXCONNECTS, t->opts.max_connections);
    if (!rc)
        rc = curl_multi_setopt(t->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                               t->opts.max_host_connections);
    if (rc != CURLM_OK)
        goto fail;
    return t;

fail:
    if (t->multi)
        curl_multi_cleanup(t->multi);
    if (t->timer)
        event_free(t->timer);
    free(t->ca_file);
    free(t);
    return NULL;
}

void mu_transport_free(mu_transport *t)
{
    if (!t)
        return;
    assert(t->nxfers == 0);
    /* Closing the cached connections may still call our socket and timer
     * callbacks, so those stay valid until the multi handle is gone. */
    curl_multi_cleanup(t->multi);
    sock_list_free(t->live);
    sock_list_free(t->spare);
    for (size_t i = 0; i < t->nconns; i++)
        free(t->conns[i].url);
    free(t->conns);
    free(t->ca_file);
    event_free(t->timer);
    free(t);
}

uint64_t mu_transport_connections_opened(const mu_transport *t)
{
    return t ? t->conns_opened : 0;
}

size_t mu_transport_running(const mu_transport *t)
{
    return t ? t->running : 0;
}

/* ------------------------------------------------------------ connections */

static conn_rec *conn_at(mu_transport *t, curl_socket_t fd, int grow)
{
    if (fd < 0)
        return NULL;
    size_t i = (size_t)fd;
    if (i >= t->nconns) {
        if (!grow)
            return NULL;
        size_t n = t->nconns ? t->nconns : 64;
        while (n <= i)
            n *= 2;
        conn_rec *c = realloc(t->conns, n * sizeof *c);
        if (!c)
            return NULL;
        memset(c + t->nconns, 0, (n - t->nconns) * sizeof *c);
        t->conns = c;
        t->nconns = n;
    }
    return &t->conns[i];
}

static int on_closesocket(void *arg, curl_socket_t fd)
{
    conn_rec *c = conn_at(arg, fd, 0);
    if (c) {
        free(c->url);
        c->url = NULL;
        c->busy = 0;
    }
    return close(fd);
}

int mu_transport_close_idle(mu_transport *t, const char *url)
{
    int n = 0;
    for (size_t i = 0; t && i < t->nconns; i++) {
        conn_rec *c = &t->conns[i];
        if (c->url && !c->busy && strcmp(c->url, url) == 0) {
            /* curl still owns the fd: it finds the connection dead before
             * its next use and closes it. */
            shutdown((int)i, SHUT_RDWR);
            n++;
        }
    }
    return n;
}

/* ------------------------------------------------------------ xfers */

/* Notes that this attempt opened a socket, so that a cancel knows whether
 * CURLINFO_NUM_CONNECTS describes this attempt or is left from the last,
 * and records the connection. A socket opened after the exchange was given
 * a kept connection is curl resending on its own: the OS error that ended
 * the kept connection is still recorded then, and the resend is refused. */
static int on_sockopt(void *arg, curl_socket_t fd, curlsocktype purpose)
{
    mu_xfer *x = arg;
    if (purpose != CURLSOCKTYPE_IPCXN)
        return CURL_SOCKOPT_OK;
    x->opened_socket = 1;
    if (!x->attached || !x->first_reused) {
        conn_rec *c = conn_at(x->t, fd, 1);
        if (c) {
            free(c->url);
            c->url = strdup(x->url); /* NULL if out of memory: just not recorded */
            c->busy = 1;
        }
        return CURL_SOCKOPT_OK;
    }
    curl_easy_getinfo(x->easy, CURLINFO_OS_ERRNO, &x->resend_errno);
    x->resend_refused = 1;
    x->t->resends_refused++;
    return CURL_SOCKOPT_ERROR;
}

static size_t on_write(char *p, size_t size, size_t nmemb, void *arg)
{
    mu_xfer *x = arg;
    mu_transport *t = x->t;
    size_t n = size * nmemb;
    size_t max = t->opts.max_response, all = t->opts.max_buffered;
    if (max && (n > max || x->body.len > max - n)) {
        x->too_big = 1;
        return 0; /* CURLE_WRITE_ERROR */
    }
    /* Past the total, the transfer receiving is cut if it holds more than
     * its fair share and more than SMALL_BODY: small answers (nearly all)
     * always get through, so the total may pass the cap by at most
     * SMALL_BODY per transfer. With endless bodies from one provider, the
     * ones cut are its. */
    size_t after = x->body.len + n;
    if (all && (n > all || t->buffered > all - n) && after > SMALL_BODY &&
        after > all / (t->running ? t->running : 1)) {
        x->too_big = 2;
        return 0;
    }
    if (mu_buf_append(&x->body, p, n) != 0)
        return 0;
    t->buffered += n;
    x->counted += n;
    if (t->buffered > t->buffered_peak)
        t->buffered_peak = t->buffered;
    return n;
}

size_t mu_transport_buffered_peak(const mu_transport *t)
{
    return t ? t->buffered_peak : 0;
}

mu_xfer *mu_xfer_new(mu_transport *t)
{
    if (!t)
        return NULL;
    mu_xfer *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->t = t;
    x->easy = curl_easy_init();
    if (!x->easy) {
        free(x);
        return NULL;
    }
    CURL *e = x->easy;
    CURLcode rc = CURLE_OK;
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_PRIVATE, (void *)x);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    /* "" disables proxies, including the http_proxy environment variables. */
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_PROXY, "");
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
#if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85.0 */
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http");
#else
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS, (long)CURLPROTO_HTTP);
#endif
#if LIBCURL_VERSION_NUM >= 0x075700 /* 7.87.0 */
    /* A transfer abandoned while its host name is being resolved (a
     * timeout, a cancel, the client freed) would otherwise join the
     * resolver thread: the loop blocked for the resolver's timeout
     * (measured: 3 s with a resolver that never answers). The thread is
     * left to finish alone instead; what it holds is freed when it ends. */
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L);
#endif
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    /* https providers (tls): verified unless tls_verify = off. */
    if (!rc && t->ca_file)
        rc = curl_easy_setopt(e, CURLOPT_CAINFO, t->ca_file);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, t->opts.tls_verify ? 1L : 0L);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, t->opts.tls_verify ? 2L : 0L);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 0L);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 0L);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_POST, 1L);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_WRITEDATA, (void *)x);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, on_sockopt);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_SOCKOPTDATA, (void *)x);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_closesocket);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, (void *)t);
    if (!rc && t->opts.connect_timeout_ms > 0)
        rc = curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, t->opts.connect_timeout_ms);
    if (rc != CURLE_OK) {
        curl_easy_cleanup(e);
        free(x);
        return NULL;
    }
    x->res.body = "";
    x->res.error = "";
    x->reuse = 1;
    t->nxfers++;
    return x;
}

void mu_xfer_free(mu_xfer *x)
{
    if (!x)
        return;
    mu_xfer_cancel(x);
    curl_easy_cleanup(x->easy);
    mu_buf_free(&x->body);
    x->t->nxfers--;
    free(x);
}

int mu_xfer_start(mu_xfer *x, const char *url, const char *body, size_t len,
                  const struct curl_slist *headers, long timeout_ms, mu_xfer_done_fn done,
                  void *user)
{
    /* Starting a running xfer is a caller bug; refuse rather than silently
     * dropping the running exchange's callback. */
    if (!x || x->running || !url)
        return -1;
    CURL *e = x->easy;
    mu_buf_reset(&x->body);
    x->too_big = 0;
    x->opened_socket = 0;
    x->attached = 0;
    x->first_reused = 0;
    x->resend_refused = 0;
    x->resend_errno = 0;
    x->errbuf[0] = '\0';
    memset(&x->res, 0, sizeof x->res);
    x->res.body = "";
    x->res.error = "";

    CURLcode rc = CURLE_OK;
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_URL, url);
    /* Size before data: setting the size can drop a previous POSTFIELDS. */
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 0L); /* attach() sets it */
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_HTTPHEADER, (struct curl_slist *)headers);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : 0L);
    if (rc != CURLE_OK)
        return -1;

    x->done = done;
    x->user = user;
    x->url = url;
    x->running = 1;
    x->t->running++;
    /* Arms the timer (0 ms); the transfer begins from the event loop, so no
     * callback can fire from in here. */
    if (curl_multi_add_handle(x->t->multi, e) != CURLM_OK) {
        x->running = 0;
        x->t->running--;
        x->done = NULL;
        x->user = NULL;
        return -1;
    }
    return 0;
}

void mu_xfer_cancel(mu_xfer *x)
{
    if (!x || !x->running)
        return;
    /* A cancel before the attempt opened a socket may see the previous
     * attempt's info; it cannot have established anything itself. */
    if (x->opened_socket)
        count_connects(x);
    /* Removing the handle also drops a DONE message still queued for it;
     * curl closes a connection left in the middle of an exchange. */
    curl_multi_remove_handle(x->t->multi, x->easy);
    x->running = 0;
    x->t->running--;
    uncount(x);
    x->done = NULL;
    x->user = NULL;
}

void mu_xfer_trim(mu_xfer *x, size_t keep)
{
    if (x && !x->running && x->body.cap > keep)
        mu_buf_free(&x->body);
}

int mu_xfer_running(const mu_xfer *x)
{
    return x ? x->running : 0;
}

void mu_xfer_set_reuse(mu_xfer *x, int reuse)
{
    reuse = reuse != 0;
    if (!x || x->reuse == reuse)
        return;
    /* A kept connection may still carry one more exchange; it is closed
     * after it. Not FRESH_CONNECT: kept connections that nothing uses would
     * stay open, and a server with one worker per connection would keep a
     * worker on each while our new connections wait for one. Only steers
     * curl's connection choice: cannot fail on a valid handle. */
    curl_easy_setopt(x->easy, CURLOPT_FORBID_REUSE, reuse ? 0L : 1L);
    x->reuse = reuse;
}

void mu_xfer_set_quickack(mu_xfer *x, int on)
{
    if (x)
        x->quickack = on != 0;
}

int mu_xfer_request_sent(const mu_xfer *x)
{
    if (!x || !x->running)
        return 0;
    long req = 0;
    curl_off_t up = 0;
    curl_easy_getinfo(x->easy, CURLINFO_REQUEST_SIZE, &req);
    curl_easy_getinfo(x->easy, CURLINFO_SIZE_UPLOAD_T, &up);
    return req > 0 || up > 0;
}

int mu_xfer_fresh_connection(const mu_xfer *x)
{
    return x && x->running && x->opened_socket && !x->resend_refused;
}

uint64_t mu_transport_resends_refused(const mu_transport *t)
{
    return t ? t->resends_refused : 0;
}
