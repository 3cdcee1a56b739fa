/*
 * bench/raw: the limit the SDK is measured against. The same HTTP POSTs to
 * the same providers over libcurl multi driven by libevent, with the SDK's
 * connection settings (CURLMOPT_MAXCONNECTS 1024, CURLMOPT_MAX_HOST_CONNECTIONS
 * 32, TCP_NODELAY, keep-alive, HTTP/1.1, no proxy, 1 s connect timeout), but
 * no discovery (providers come from --hosts), round-robin by a counter, and
 * no decoding: a call is good when curl says CURLE_OK and the status is 200.
 *
 * The request is byte-for-byte the SDK's shape for micro:echo [N]:
 *   {"version": "1.0", "method": "echo", "args": [N], "kwargs": {},
 *    "request_id": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"}
 * with Content-Type and Accept application/json-rpc and an empty Expect:.
 *
 *   raw --hosts 127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3 --inflight 64 --calls 20000
 *
 * --host-queue (an experiment, not the baseline): hand curl at most 32
 * transfers per host and keep the rest in our own FIFO per host, instead of
 * letting curl park them as "pending" (CURLMOPT_MAX_HOST_CONNECTIONS).
 *
 * --fresh: a new connection for every call, closed once it is answered
 * (CURLOPT_FRESH_CONNECT, CURLOPT_FORBID_REUSE and "Connection: close"), as
 * microutil's own Python client does: the baseline for providers that stall
 * keep-alive clients (Django's runserver, mu-provider --split-writes).
 *
 * See bench.h for the modes and the lines printed.
 */
#include <curl/curl.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define MAX_HOSTS 64

typedef struct slot {
    CURL *easy;
    long idx;
    size_t host;
    int ok;
    struct slot *qnext; /* --host-queue, or the done list */
    char body[256];
    size_t body_len;
    char *resp; /* response bytes, reused */
    size_t resp_len, resp_cap;
} slot;

static struct {
    CURLM *multi;
    struct event *timer;
    struct curl_slist *headers;
    char *urls[MAX_HOSTS];
    size_t nurls, rr;
    slot **slots;
    long nslots;
    unsigned long long conns;
    uint64_t id_hi, id_seq;
    long timeout_ms;
    int host_queue;
    int fresh;                        /* --fresh */
    struct event *deliver;            /* ends the calls curl finished, after its callbacks */
    slot *done_head, *done_tail;
    long per_host;
    long active[MAX_HOSTS];           /* --host-queue: transfers curl holds, per host */
    slot *qhead[MAX_HOSTS], *qtail[MAX_HOSTS];
} g;

/* --host-queue: the next queued call of host h gets the slot curl just freed. */
static void queue_next(size_t h)
{
    g.active[h]--;
    slot *q = g.qhead[h];
    if (!q)
        return;
    if (!(g.qhead[h] = q->qnext))
        g.qtail[h] = NULL;
    q->qnext = NULL;
    g.active[h]++;
    if (curl_multi_add_handle(g.multi, q->easy) != CURLM_OK)
        bench_fail("curl_multi_add_handle failed");
}

/* ------------------------------------------------------------ curl <-> libevent */

static void drain(void);

static void on_socket(evutil_socket_t fd, short what, void *arg)
{
    (void)arg;
    int action = 0, still;
    if (what & EV_READ)
        action |= CURL_CSELECT_IN;
    if (what & EV_WRITE)
        action |= CURL_CSELECT_OUT;
    curl_multi_socket_action(g.multi, fd, action, &still);
    drain();
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)userp;
    struct event *ev = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (ev) {
            event_free(ev);
            curl_multi_assign(g.multi, fd, NULL);
        }
        return 0;
    }
    short kind = EV_PERSIST;
    if (what & CURL_POLL_IN)
        kind |= EV_READ;
    if (what & CURL_POLL_OUT)
        kind |= EV_WRITE;
    if (!ev) {
        ev = event_new(bench_base, fd, kind, on_socket, NULL);
        if (!ev)
            return -1;
        curl_multi_assign(g.multi, fd, ev);
    } else {
        event_del(ev);
        event_assign(ev, bench_base, fd, kind, on_socket, NULL);
    }
    return event_add(ev, NULL);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    (void)userp;
    if (timeout_ms < 0)
        return evtimer_del(g.timer);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    return evtimer_add(g.timer, &tv);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    int still;
    curl_multi_socket_action(g.multi, CURL_SOCKET_TIMEOUT, 0, &still);
    drain();
}

static void drain(void)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(g.multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        CURLcode code = m->data.result;
        slot *s = NULL;
        long status = 0, nconn = 0;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&s);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nconn);
        g.conns += (unsigned long long)(nconn > 0 ? nconn : 0);
        curl_multi_remove_handle(g.multi, e);
        if (g.host_queue)
            queue_next(s->host);
        int ok = code == CURLE_OK && status == 200 && s->resp_len > 0;
        if (!ok) {
            static int shown;
            if (shown++ < 5)
                fprintf(stderr, "raw: call failed: %s, HTTP %ld\n", curl_easy_strerror(code),
                        status);
        }
        /* Like the SDK, end calls (and start the next ones) from an event of
         * their own, once every socket event of this loop pass has been fed
         * to curl: new transfers then start in one batch. It is the faster
         * way (re-adding here cost ~14% more CPU per call and ~23% of the
         * throughput at 64 in flight, 8 interleaved runs), so it is the limit. */
        s->ok = ok;
        s->qnext = NULL;
        if (g.done_tail)
            g.done_tail->qnext = s;
        else
            g.done_head = s;
        g.done_tail = s;
        event_active(g.deliver, EV_TIMEOUT, 0);
    }
}

static void on_deliver(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    while (g.done_head) {
        slot *s = g.done_head;
        if (!(g.done_head = s->qnext))
            g.done_tail = NULL;
        s->qnext = NULL;
        bench_ended(s->idx, s->ok);
    }
}

/* ------------------------------------------------------------ calls */

static size_t on_write(char *p, size_t size, size_t nmemb, void *arg)
{
    slot *s = arg;
    size_t n = size * nmemb;
    if (s->resp_len + n > s->resp_cap) {
        size_t cap = s->resp_cap ? s->resp_cap : 256;
        while (cap < s->resp_len + n)
            cap *= 2;
        char *q = realloc(s->resp, cap);
        if (!q)
            return 0;
        s->resp = q;
        s->resp_cap = cap;
    }
    memcpy(s->resp + s->resp_len, p, n);
    s->resp_len += n;
    return n;
}

static CURL *easy_new(slot *s)
{
    CURL *e = curl_easy_init();
    if (!e)
        return NULL;
    CURLcode rc = CURLE_OK;
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_PRIVATE, (void *)s);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_PROXY, "");
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
#if LIBCURL_VERSION_NUM >= 0x075500
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
#else
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)CURLPROTO_HTTP);
#endif
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_POST, 1L);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_HTTPHEADER, g.headers);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_WRITEDATA, (void *)s);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 1000L);
    if (!rc) rc = curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, g.timeout_ms);
    if (!rc && g.fresh) rc = curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    if (!rc && g.fresh) rc = curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    if (rc != CURLE_OK) {
        curl_easy_cleanup(e);
        return NULL;
    }
    return e;
}

static int bench_start_call(long idx, long seq)
{
    if (idx >= g.nslots) { /* slots are separate objects: curl holds pointers into them */
        long n = g.nslots ? g.nslots : 64;
        while (n <= idx)
            n *= 2;
        slot **p = realloc(g.slots, (size_t)n * sizeof *p);
        if (!p)
            return -1;
        memset(p + g.nslots, 0, (size_t)(n - g.nslots) * sizeof *p);
        g.slots = p;
        g.nslots = n;
    }
    slot *s = g.slots[idx];
    if (!s) {
        if (!(s = calloc(1, sizeof *s)) || !(s->easy = easy_new(s))) {
            free(s);
            return -1;
        }
        s->idx = idx;
        g.slots[idx] = s;
    }
    g.id_seq++;
    int n = snprintf(s->body, sizeof s->body,
                     "{\"version\": \"1.0\", \"method\": \"echo\", \"args\": [%ld], \"kwargs\": {}, "
                     "\"request_id\": \"%08x-%04x-%04x-%04x-%012llx\"}",
                     seq, (unsigned)(g.id_hi >> 32), (unsigned)(g.id_hi >> 16) & 0xffffu,
                     (unsigned)g.id_hi & 0xffffu, (unsigned)(g.id_seq >> 48) & 0xffffu,
                     (unsigned long long)(g.id_seq & 0xffffffffffffull));
    if (n < 0 || (size_t)n >= sizeof s->body)
        return -1;
    s->body_len = (size_t)n;
    s->resp_len = 0;
    s->host = g.rr;
    const char *url = g.urls[g.rr];
    if (++g.rr == g.nurls)
        g.rr = 0;
    CURL *e = s->easy;
    if (curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->body_len) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, s->body) != CURLE_OK)
        return -1;
    if (g.host_queue) {
        if (g.active[s->host] >= g.per_host) {
            if (g.qtail[s->host])
                g.qtail[s->host]->qnext = s;
            else
                g.qhead[s->host] = s;
            g.qtail[s->host] = s;
            return 0;
        }
        g.active[s->host]++;
    }
    return curl_multi_add_handle(g.multi, e) == CURLM_OK ? 0 : -1;
}

static unsigned long long bench_connections(void)
{
    return g.conns;
}

int main(int argc, char **argv)
{
    bench_opts o;
    bench_parse(argc, argv, &o);
    if (!o.hosts)
        bench_usage(argv[0]);
    for (const char *p = o.hosts; *p && g.nurls < MAX_HOSTS;) {
        size_t l = strcspn(p, ",");
        char *u = malloc(l + 16);
        if (!u)
            return 1;
        snprintf(u, l + 16, "http://%.*s/json/", (int)l, p);
        g.urls[g.nurls++] = u;
        p += l;
        if (*p == ',')
            p++;
    }
    if (!g.nurls)
        bench_usage(argv[0]);
    g.id_hi = 0x5eed5eed12345678ull ^ (uint64_t)bench_now_ns();
    g.timeout_ms = o.timeout_ms;
    g.host_queue = o.host_queue;
    g.fresh = o.fresh;
    if (g.fresh && g.host_queue)
        bench_usage(argv[0]);
    g.per_host = o.conns_per_host;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    bench_base = event_base_new();
    g.multi = curl_multi_init();
    g.timer = bench_base ? evtimer_new(bench_base, on_timer, NULL) : NULL;
    g.deliver = bench_base ? event_new(bench_base, -1, 0, on_deliver, NULL) : NULL;
    g.headers = curl_slist_append(NULL, "Content-Type: application/json-rpc");
    g.headers = curl_slist_append(g.headers, "Accept: application/json-rpc");
    g.headers = curl_slist_append(g.headers, "Expect:");
    if (g.fresh)
        g.headers = curl_slist_append(g.headers, "Connection: close");
    if (!bench_base || !g.multi || !g.timer || !g.deliver || !g.headers)
        bench_fail("setup failed");
    curl_multi_setopt(g.multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(g.multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(g.multi, CURLMOPT_MAXCONNECTS, (long)o.max_conns);
    curl_multi_setopt(g.multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)o.conns_per_host);

    int rc = bench_main(&o);

    for (long i = 0; i < g.nslots; i++) {
        if (!g.slots[i])
            continue;
        curl_easy_cleanup(g.slots[i]->easy);
        free(g.slots[i]->resp);
        free(g.slots[i]);
    }
    free(g.slots);
    curl_multi_cleanup(g.multi);
    curl_slist_free_all(g.headers);
    event_free(g.timer);
    event_free(g.deliver);
    event_base_free(bench_base);
    for (size_t i = 0; i < g.nurls; i++)
        free(g.urls[i]);
    curl_global_cleanup();
    return rc;
}
