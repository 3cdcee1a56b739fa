/* transport: curl multi on libevent against the test provider. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "testbed.h"
#include "transport.h"

static struct event_base *g_base;
static tb_provider *g_prov;
static char g_url[64];
static struct curl_slist *g_hdrs;

/* ------------------------------------------------------------ helpers */

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

/* Runs the loop until *count reaches want or ms pass. Returns *count. */
static int run_until(const int *count, int want, long ms)
{
    int expired = 0;
    struct event *dl = evtimer_new(g_base, on_deadline, &expired);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    assert_non_null(dl);
    evtimer_add(dl, &tv);
    while (!expired && (!count || *count < want))
        event_base_loop(g_base, EVLOOP_ONCE);
    event_free(dl);
    return count ? *count : 0;
}

static void provider_url(const tb_provider *p, char *dst, size_t cap)
{
    snprintf(dst, cap, "http://127.0.0.1:%d/json/", tb_provider_port(p));
}

/* A port nobody listens on: bound by us, then released. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin;
    socklen_t sl = sizeof sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
    close(fd);
    return ntohs(sin.sin_port);
}

static size_t make_body(char *dst, size_t cap, const char *method, const char *args,
                        const char *rid)
{
    int n = snprintf(dst, cap,
                     "{\"version\": \"1.0\", \"method\": \"%s\", \"args\": %s, "
                     "\"kwargs\": {}, \"request_id\": \"%s\"}",
                     method, args, rid);
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

/* The request_id, quoted, appears verbatim in an uncompressed response. */
static int body_has_rid(const mu_xfer_result *r, const char *rid)
{
    char q[64];
    size_t n = (size_t)snprintf(q, sizeof q, "\"%s\"", rid);
    for (size_t i = 0; i + n <= r->len; i++)
        if (memcmp(r->body + i, q, n) == 0)
            return 1;
    return 0;
}

/* Records one finished exchange. */
typedef struct outcome {
    int calls;
    CURLcode code;
    long status;
    int connected, sent, too_big;
    size_t len;
    char first;
    int has_rid;
    const char *rid;
    uint64_t total_us;
    char error[CURL_ERROR_SIZE];
} outcome;

static void record(mu_xfer *x, const mu_xfer_result *r, void *user)
{
    outcome *o = user;
    (void)x;
    o->calls++;
    o->code = r->code;
    o->status = r->http_status;
    o->connected = r->connected;
    o->sent = r->sent;
    o->too_big = r->too_big;
    o->len = r->len;
    o->first = r->len ? r->body[0] : 0;
    o->has_rid = o->rid ? body_has_rid(r, o->rid) : 0;
    o->total_us = r->total_us;
    snprintf(o->error, sizeof o->error, "%s", r->error);
    assert_int_equal(r->body[r->len], '\0');
}

static mu_transport *transport(long max_host, size_t max_response)
{
    mu_transport_opts o = {0};
    o.max_host_connections = max_host;
    o.connect_timeout_ms = 2000;
    o.max_response = max_response;
    mu_transport *t = mu_transport_new(g_base, &o);
    assert_non_null(t);
    return t;
}

/* ------------------------------------------------------------ fixtures */

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (!getenv("MU_PROVIDER_BIN")) {
        fprintf(stderr, "MU_PROVIDER_BIN is not set\n");
        return -1;
    }
    /* The transport must ignore proxy settings from the environment. */
    setenv("http_proxy", "http://127.0.0.1:1", 1);
    setenv("HTTP_PROXY", "http://127.0.0.1:1", 1);
    setenv("ALL_PROXY", "http://127.0.0.1:1", 1);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -1;
    g_base = event_base_new();
    g_prov = tb_provider_start(NULL, NULL);
    if (!g_base || !g_prov)
        return -1;
    provider_url(g_prov, g_url, sizeof g_url);
    g_hdrs = curl_slist_append(NULL, "Content-Type: application/json-rpc");
    g_hdrs = curl_slist_append(g_hdrs, "Accept: application/json-rpc");
    g_hdrs = curl_slist_append(g_hdrs, "Expect:");
    return g_hdrs ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    curl_slist_free_all(g_hdrs);
    int rc = 0;
    if (g_prov) {
        /* a clean exit: the provider itself runs under the sanitizers */
        rc = tb_provider_kill(g_prov, SIGTERM);
        tb_provider_free(g_prov);
    }
    if (g_base)
        event_base_free(g_base);
    curl_global_cleanup();
    return rc == 0 ? 0 : -1;
}

/* ------------------------------------------------------------ tests */

static void test_round_trip(void **state)
{
    (void)state;
    mu_transport *t = transport(16, 1 << 20);
    mu_xfer *x = mu_xfer_new(t);
    char body[256];
    size_t n = make_body(body, sizeof body, "echo", "[1]", "r1");
    outcome o = {.rid = "r1"};

    assert_int_equal(mu_xfer_start(x, g_url, body, n, g_hdrs, 5000, record, &o), 0);
    assert_true(mu_xfer_running(x));
    assert_int_equal(mu_transport_running(t), 1);
    assert_int_equal(o.calls, 0); /* never from within start */
    assert_int_equal(run_until(&o.calls, 1, 5000), 1);

    assert_int_equal(o.code, CURLE_OK);
    assert_int_equal(o.status, 200);
    assert_int_equal(o.first, '0');
    assert_true(o.has_rid);
    assert_int_equal(o.connected, 1);
    assert_int_equal(o.sent, 1);
    assert_int_equal(o.too_big, 0);
    assert_string_equal(o.error, "");
    assert_true(o.total_us > 0);
    assert_false(mu_xfer_running(x));
    assert_int_equal(mu_transport_running(t), 0);
    assert_int_equal(mu_transport_connections_opened(t), 1);

    /* Same xfer again: the connection is reused. */
    o.calls = 0;
    n = make_body(body, sizeof body, "echo", "[2]", "r2");
    o.rid = "r2";
    assert_int_equal(mu_xfer_start(x, g_url, body, n, g_hdrs, 5000, record, &o), 0);
    assert_int_equal(run_until(&o.calls, 1, 5000), 1);
    assert_int_equal(o.code, CURLE_OK);
    assert_true(o.has_rid);
    assert_int_equal(o.connected, 1);
    assert_int_equal(o.sent, 1);
    assert_int_equal(mu_transport_connections_opened(t), 1);

    mu_xfer_free(x);
    mu_transport_free(t);
}

/* ---- many requests, a fixed number in flight */

#define MANY_TOTAL 2000
#define MANY_INFLIGHT 100
#define MANY_HOSTCONN 16

typedef struct slot {
    mu_xfer *x;
    int id;
    char rid[16];
    char body[192];
} slot;

static struct {
    slot slots[MANY_INFLIGHT];
    int seen[MANY_TOTAL];
    int next, done, bad;
} many;

static void many_done(mu_xfer *x, const mu_xfer_result *r, void *user);

static void many_start(slot *s)
{
    s->id = many.next++;
    snprintf(s->rid, sizeof s->rid, "q%d", s->id);
    size_t n = make_body(s->body, sizeof s->body, "echo", "[1, \"two\"]", s->rid);
    assert_int_equal(mu_xfer_start(s->x, g_url, s->body, n, g_hdrs, 10000, many_done, s), 0);
}

static void many_done(mu_xfer *x, const mu_xfer_result *r, void *user)
{
    slot *s = user;
    assert_ptr_equal(x, s->x);
    many.seen[s->id]++;
    many.done++;
    if (r->code != CURLE_OK || r->http_status != 200 || r->len == 0 || r->body[0] != '0' ||
        !body_has_rid(r, s->rid)) {
        if (many.bad++ < 5)
            fprintf(stderr, "many: %s: code %d status %ld: %s\n", s->rid, (int)r->code,
                    r->http_status, r->error);
    }
    if (many.next < MANY_TOTAL)
        many_start(s); /* restart from inside the callback */
}

static void test_many_keepalive(void **state)
{
    (void)state;
    mu_transport *t = transport(MANY_HOSTCONN, 1 << 20);
    memset(&many, 0, sizeof many);
    for (int i = 0; i < MANY_INFLIGHT; i++) {
        many.slots[i].x = mu_xfer_new(t);
        assert_non_null(many.slots[i].x);
    }
    uint64_t t0 = mu_now_us();
    for (int i = 0; i < MANY_INFLIGHT; i++)
        many_start(&many.slots[i]);
    assert_int_equal(mu_transport_running(t), MANY_INFLIGHT);
    run_until(&many.done, MANY_TOTAL, 60000);
    uint64_t el = mu_now_us() - t0;

    uint64_t conns = mu_transport_connections_opened(t);
    fprintf(stderr, "many: %d exchanges in %.3f s, %d in flight, %llu connections opened\n",
            many.done, (double)el / 1e6, MANY_INFLIGHT, (unsigned long long)conns);
    assert_int_equal(many.done, MANY_TOTAL);
    assert_int_equal(many.bad, 0);
    for (int i = 0; i < MANY_TOTAL; i++)
        assert_int_equal(many.seen[i], 1);
    assert_int_equal(mu_transport_running(t), 0);
    assert_true(conns >= 1);
    assert_true(conns <= MANY_HOSTCONN + 2);

    /* Nothing fires after the last callback. */
    run_until(&many.done, MANY_TOTAL + 1, 200);
    assert_int_equal(many.done, MANY_TOTAL);

    for (int i = 0; i < MANY_INFLIGHT; i++)
        mu_xfer_free(many.slots[i].x);
    mu_transport_free(t);
}

/* The connection cache must hold a burst's connections through a quiet
 * spell with one handle added (curl's own default keeps 4 per added handle,
 * and would close all but a few). */
#define BURST 64

static int burst_done;

static void burst_cb(mu_xfer *x, const mu_xfer_result *r, void *user)
{
    (void)x;
    (void)user;
    assert_int_equal(r->code, CURLE_OK);
    burst_done++;
}

static void burst(mu_xfer **xs, int k, const char *body, size_t n)
{
    burst_done = 0;
    for (int i = 0; i < k; i++)
        assert_int_equal(mu_xfer_start(xs[i], g_url, body, n, g_hdrs, 10000, burst_cb, NULL), 0);
    assert_int_equal(run_until(&burst_done, k, 10000), k);
}

static void test_cache_survives_quiet(void **state)
{
    (void)state;
    mu_transport *t = transport(0, 1 << 20); /* no per-host cap */
    mu_xfer *xs[BURST];
    char body[256];
    /* slow: every exchange of a burst is in flight at once */
    size_t n = make_body(body, sizeof body, "slow", "[50]", "b");
    for (int i = 0; i < BURST; i++)
        xs[i] = mu_xfer_new(t);

    burst(xs, BURST, body, n);
    uint64_t first = mu_transport_connections_opened(t);
    for (int i = 0; i < 50; i++)
        burst(xs, 1, body, n);
    burst(xs, BURST, body, n);
    uint64_t total = mu_transport_connections_opened(t);
    fprintf(stderr, "burst: %llu connections for the first burst, %llu in all\n",
            (unsigned long long)first, (unsigned long long)total);
    assert_int_equal(first, BURST);
    assert_true(total <= BURST + 2);

    for (int i = 0; i < BURST; i++)
        mu_xfer_free(xs[i]);
    mu_transport_free(t);
}

static void test_connect_refused(void **state)
{
    (void)state;
    mu_transport *t = transport(16, 1 << 20);
    mu_xfer *x = mu_xfer_new(t);
    char url[64], body[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/json/", closed_port());
    size_t n = make_body(body, sizeof body, "echo", "[1]", "r1");
    outcome o = {0};

    assert_int_equal(mu_xfer_start(x, url, body, n, g_hdrs, 5000, record, &o), 0);
    assert_int_equal(run_until(&o.calls, 1, 5000), 1);
    fprintf(stderr, "refused: %s\n", o.error);
    assert_int_equal(o.code, CURLE_COULDNT_CONNECT);
    assert_int_equal(o.sent, 0);
    assert_int_equal(o.connected, 0);
    assert_int_equal(o.status, 0);
    assert_int_equal(o.len, 0);
    assert_true(o.error[0] != '\0');
    /* curl counts established connections only */
    assert_int_equal(mu_transport_connections_opened(t), 0);

    mu_xfer_free(x);
    mu_transport_free(t);
}

static void test_hang_timeout(void **state)
{
    (void)state;
    const char *args[] = {"--hang", NULL};
    tb_provider *hp = tb_provider_start(NULL, args);
    assert_non_null(hp);
    char url[64], body[256];
    provider_url(hp, url, sizeof url);
    mu_transport *t = transport(16, 1 << 20);
    mu_xfer *x = mu_xfer_new(t);
    size_t n = make_body(body, sizeof body, "echo", "[1]", "r1");
    outcome o = {0};

    uint64_t t0 = mu_now_us();
    assert_int_equal(mu_xfer_start(x, url, body, n, g_hdrs, 300, record, &o), 0);
    assert_int_equal(run_until(&o.calls, 1, 5000), 1);
    uint64_t el = mu_now_us() - t0;
    fprintf(stderr, "hang: %s after %llu ms (curl total %llu ms)\n", o.error,
            (unsigned long long)(el / 1000), (unsigned long long)(o.total_us / 1000));
    assert_int_equal(o.code, CURLE_OPERATION_TIMEDOUT);
    assert_int_equal(o.connected, 1);
    assert_int_equal(o.sent, 1);
    assert_int_equal(o.status, 0);
    assert_true(el >= 290000 && el < 2000000);

    mu_xfer_free(x);
    mu_transport_free(t);
    assert_int_equal(tb_provider_kill(hp, SIGTERM), 0);
    tb_provider_free(hp);
}

static void test_drop(void **state)
{
    (void)state;
    const char *args[] = {"--drop-rate", "1", NULL};
    tb_provider *dp = tb_provider_start(NULL, args);
    assert_non_null(dp);
    char url[64], body[256];
    provider_url(dp, url, sizeof url);
    mu_transport *t = transport(16, 1 << 20);
    mu_xfer *x = mu_xfer_new(t);
    size_t n = make_body(body, sizeof body, "big", "[3000]", "r1");
    outcome o = {0};

    assert_int_equal(mu_xfer_start(x, url, body, n, g_hdrs, 5000, record, &o), 0);
    assert_int_equal(run_until(&o.calls, 1, 5000), 1);
    fprintf(stderr, "drop: code %d: %s\n", (int)o.code, o.error);
    assert_int_not_equal(o.code, CURLE_OK);
    assert_int_equal(o.connected, 1);
    assert_int_equal(o.sent, 1);

    mu_xfer_free(x);
    mu_transport_free(t);
    assert_int_equal(tb_provider_kill(dp, SIGTERM), 0);
    tb_provider_free(dp);
}

static void test_too_big(void **state)
{
    (void)state;
    char body[256];
    size_t n = make_body(body, sizeof body, "big", "[100000]", "r1");

    /* 100,000 'x' compress to a few hundred bytes: a 64-byte cap trips. */
    mu_transport *t = transport(16, 64);
    mu_xfer *x = mu_xfer_new(t);
    outcome o = {0};
    assert_int_equal(mu_xfer_start(x, g_url, body, n, g_hdrs, 5000, record, &o), 0);
    assert_int_equal(run_until(&o.calls, 1, 5000), 1);
    assert_int_equal(o.too_big, 1);
    assert_int_equal(o.code, CURLE_WRITE_ERROR);
    assert_int_equal(o.connected, 1);
    assert_int_equal(o.sent, 1);
    assert_true(o.len <= 64);
    mu_xfer_free(x);
    mu_transport_free(t);

    /* With room, the same answer arrives LZ4-flagged. */
    t = transport(16, 1 << 20);
    x = mu_xfer_new(t);
    memset(&o, 0, sizeof o);
    assert_int_equal(mu_xfer_start(x, g_url, body, n, g_hdrs, 5000, record, &o), 0);
    assert_int_equal(run_until(&o.calls, 1, 5000), 1);
    assert_int_equal(o.code, CURLE_OK);
    assert_int_equal(o.too_big, 0);
    assert_int_equal(o.first, '1');
    mu_xfer_free(x);
    mu_transport_free(t);
}

/* A body of 1 MiB or more. libcurl 7.88 adds "Expect: 100-continue" there
 * unless the caller's empty "Expect:" is passed through. (The test provider,
 * being evhttp, answers 100 Continue at once, so this does not catch a lost
 * header; a server that ignores Expect would cost a one-second stall.) */
static void test_big_request(void **state)
{
    (void)state;
    const size_t fill = 1536 * 1024;
    char *body = malloc(fill + 256);
    char *arg = malloc(fill + 8);
    assert_non_null(body);
    assert_non_null(arg);
    arg[0] = '[';
    arg[1] = '"';
    memset(arg + 2, 'a', fill);
    memcpy(arg + 2 + fill, "\"]", 3);
    size_t n = make_body(body, fill + 256, "echo", arg, "bigreq");

    mu_transport *t = transport(16, 8u << 20);
    mu_xfer *x = mu_xfer_new(t);
    outcome o = {0};
    uint64_t t0 = mu_now_us();
    assert_int_equal(mu_xfer_start(x, g_url, body, n, g_hdrs, 10000, record, &o), 0);
    assert_int_equal(run_until(&o.calls, 1, 10000), 1);
    uint64_t el = mu_now_us() - t0;
    fprintf(stderr, "big request: %zu bytes in %llu ms\n", n, (unsigned long long)(el / 1000));
    assert_int_equal(o.code, CURLE_OK);
    assert_int_equal(o.status, 200);
    assert_int_equal(o.first, '1'); /* the echo is LZ4-compressed */
    assert_true(el < 900000);

    mu_xfer_free(x);
    mu_transport_free(t);
    free(arg);
    free(body);
}

/* ---- cancel */

static void cancel_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    mu_xfer_cancel(arg);
}

static void test_cancel(void **state)
{
    (void)state;
    mu_transport *t = transport(16, 1 << 20);
    mu_xfer *x = mu_xfer_new(t);
    char body[256];
    size_t n = make_body(body, sizeof body, "slow", "[400]", "c1");
    outcome o = {0};

    assert_int_equal(mu_xfer_start(x, g_url, body, n, g_hdrs, 5000, record, &o), 0);
    struct event *ev = evtimer_new(g_base, cancel_cb, x);
    struct timeval tv = {0, 100000};
    evtimer_add(ev, &tv);
    run_until(&o.calls, 1, 800);
    event_free(ev);
    assert_int_equal(o.calls, 0);
    assert_false(mu_xfer_running(x));
    assert_int_equal(mu_transport_running(t), 0);
    mu_xfer_cancel(x); /* idle: no-op */

    /* The transport and the xfer still work. */
    n = make_body(body, sizeof body, "echo", "[1]", "c2");
    o.rid = "c2";
    assert_int_equal(mu_xfer_start(x, g_url, body, n, g_hdrs, 5000, record, &o), 0);
    assert_int_equal(run_until(&o.calls, 1, 5000), 1);
    assert_int_equal(o.code, CURLE_OK);
    assert_true(o.has_rid);

    /* Cancel right after start, before the loop ran at all. */
    memset(&o, 0, sizeof o);
    assert_int_equal(mu_xfer_start(x, g_url, body, n, g_hdrs, 5000, record, &o), 0);
    mu_xfer_cancel(x);
    run_until(&o.calls, 1, 300);
    assert_int_equal(o.calls, 0);

    /* Free while running: no callback either. */
    mu_xfer *y = mu_xfer_new(t);
    char slow[256];
    size_t sn = make_body(slow, sizeof slow, "slow", "[400]", "c3");
    assert_int_equal(mu_xfer_start(y, g_url, slow, sn, g_hdrs, 5000, record, &o), 0);
    run_until(NULL, 0, 20);
    mu_xfer_free(y);
    run_until(&o.calls, 1, 300);
    assert_int_equal(o.calls, 0);
    assert_int_equal(mu_transport_running(t), 0);
    /* the first cancel closed its connection; y reused c2's */
    assert_int_equal(mu_transport_connections_opened(t), 2);

    mu_xfer_free(x);
    mu_transport_free(t);
}

/* A done callback cancels another running xfer. */
static struct {
    mu_xfer *victim;
    outcome victim_o;
    int fast_calls;
} xc;

static void cancel_other(mu_xfer *x, const mu_xfer_result *r, void *user)
{
    (void)x;
    (void)user;
    assert_int_equal(r->code, CURLE_OK);
    xc.fast_calls++;
    mu_xfer_cancel(xc.victim);
}

static void test_cancel_from_callback(void **state)
{
    (void)state;
    mu_transport *t = transport(16, 1 << 20);
    mu_xfer *fast = mu_xfer_new(t);
    memset(&xc, 0, sizeof xc);
    xc.victim = mu_xfer_new(t);
    char b1[256], b2[256];
    size_t n1 = make_body(b1, sizeof b1, "echo", "[1]", "f1");
    size_t n2 = make_body(b2, sizeof b2, "slow", "[300]", "s1");

    assert_int_equal(mu_xfer_start(xc.victim, g_url, b2, n2, g_hdrs, 5000, record, &xc.victim_o), 0);
    assert_int_equal(mu_xfer_start(fast, g_url, b1, n1, g_hdrs, 5000, cancel_other, NULL), 0);
    run_until(&xc.victim_o.calls, 1, 700);
    assert_int_equal(xc.fast_calls, 1);
    assert_int_equal(xc.victim_o.calls, 0);
    assert_int_equal(mu_transport_running(t), 0);

    mu_xfer_free(fast);
    mu_xfer_free(xc.victim);
    mu_transport_free(t);
}

/* ---- retry: restart the same xfer from its own callback */

static struct {
    int calls;
    CURLcode first, second;
    int first_sent;
    const char *retry_url;
    const char *body;
    size_t len;
    int has_rid;
} rt;

static void retry_done(mu_xfer *x, const mu_xfer_result *r, void *user)
{
    (void)user;
    rt.calls++;
    if (rt.calls == 1) {
        rt.first = r->code;
        rt.first_sent = r->sent;
        assert_int_equal(mu_xfer_start(x, rt.retry_url, rt.body, rt.len, g_hdrs, 5000,
                                       retry_done, NULL),
                         0);
        assert_true(mu_xfer_running(x));
    } else {
        rt.second = r->code;
        rt.has_rid = body_has_rid(r, "rr");
    }
}

static void test_retry_from_callback(void **state)
{
    (void)state;
    mu_transport *t = transport(16, 1 << 20);
    mu_xfer *x = mu_xfer_new(t);
    char url[64], body[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/json/", closed_port());
    memset(&rt, 0, sizeof rt);
    rt.len = make_body(body, sizeof body, "echo", "[1]", "rr");
    rt.body = body;
    rt.retry_url = g_url;

    assert_int_equal(mu_xfer_start(x, url, body, rt.len, g_hdrs, 5000, retry_done, NULL), 0);
    run_until(&rt.calls, 2, 5000);
    assert_int_equal(rt.calls, 2);
    assert_int_equal(rt.first, CURLE_COULDNT_CONNECT);
    assert_int_equal(rt.first_sent, 0);
    assert_int_equal(rt.second, CURLE_OK);
    assert_true(rt.has_rid);
    assert_int_equal(mu_transport_running(t), 0);

    mu_xfer_free(x);
    mu_transport_free(t);
}

/* A killed provider: the cached keep-alive connection is dead; the next
 * exchange must not hang on it, and a refused reconnect is "not sent". */
static void test_provider_gone(void **state)
{
    (void)state;
    tb_provider *p = tb_provider_start(NULL, NULL);
    assert_non_null(p);
    char url[64], body[256];
    provider_url(p, url, sizeof url);
    mu_transport *t = transport(16, 1 << 20);
    mu_xfer *x = mu_xfer_new(t);
    size_t n = make_body(body, sizeof body, "echo", "[1]", "g1");
    outcome o = {.rid = "g1"};

    assert_int_equal(mu_xfer_start(x, url, body, n, g_hdrs, 5000, record, &o), 0);
    assert_int_equal(run_until(&o.calls, 1, 5000), 1);
    assert_int_equal(o.code, CURLE_OK);

    assert_int_equal(tb_provider_kill(p, SIGKILL), 0);
    tb_provider_free(p);
    usleep(100000);

    memset(&o, 0, sizeof o);
    assert_int_equal(mu_xfer_start(x, url, body, n, g_hdrs, 2000, record, &o), 0);
    assert_int_equal(run_until(&o.calls, 1, 5000), 1);
    fprintf(stderr, "gone: code %d sent %d: %s\n", (int)o.code, o.sent, o.error);
    assert_int_equal(o.code, CURLE_COULDNT_CONNECT);
    assert_int_equal(o.sent, 0);

    mu_xfer_free(x);
    mu_transport_free(t);
}

/* The provider dies holding our request, on a kept connection: the method
 * may have run. curl would send the request again by itself; the transport
 * refuses (never silently twice) and reports a death on a kept connection
 * that is not provably unsent (an EOF, not a reset). */
typedef struct died {
    int calls, died_on_reuse, unsent, sent, reused;
    CURLcode code;
} died;

static void record_died(mu_xfer *x, const mu_xfer_result *r, void *user)
{
    died *d = user;
    (void)x;
    d->calls++;
    d->code = r->code;
    d->died_on_reuse = r->died_on_reuse;
    d->unsent = r->unsent;
    d->sent = r->sent;
    d->reused = r->reused;
}

static void kill_provider(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    kill(tb_provider_pid(arg), SIGKILL);
}

static void test_no_silent_resend(void **state)
{
    (void)state;
    tb_provider *p = tb_provider_start(NULL, NULL);
    assert_non_null(p);
    char url[64], body[256], slow[256];
    provider_url(p, url, sizeof url);
    mu_transport *t = transport(16, 1 << 20);
    mu_xfer *x = mu_xfer_new(t);
    size_t n = make_body(body, sizeof body, "echo", "[1]", "r1");
    size_t sn = make_body(slow, sizeof slow, "slow", "[3000]", "r2");
    outcome o = {.rid = "r1"};
    assert_int_equal(mu_xfer_start(x, url, body, n, g_hdrs, 5000, record, &o), 0);
    assert_int_equal(run_until(&o.calls, 1, 5000), 1);
    assert_int_equal(o.code, CURLE_OK);

    died d = {0};
    struct event *k = evtimer_new(g_base, kill_provider, p);
    struct timeval tv = {0, 300000};
    evtimer_add(k, &tv);
    assert_int_equal(mu_xfer_start(x, url, slow, sn, g_hdrs, 10000, record_died, &d), 0);
    assert_int_equal(run_until(&d.calls, 1, 8000), 1);
    event_free(k);
    assert_int_not_equal(d.code, CURLE_OK);
    assert_int_equal(d.reused, 1);
    assert_int_equal(d.died_on_reuse, 1);
    assert_int_equal(d.sent, 1);
    assert_int_equal(d.unsent, 0);
    assert_int_equal(mu_transport_resends_refused(t), 1);

    tb_provider_kill(p, SIGKILL);
    tb_provider_free(p);
    mu_xfer_free(x);
    mu_transport_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_silent_resend),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_many_keepalive),
        cmocka_unit_test(test_cache_survives_quiet),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_hang_timeout),
        cmocka_unit_test(test_drop),
        cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_big_request),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_cancel_from_callback),
        cmocka_unit_test(test_retry_from_callback),
        cmocka_unit_test(test_provider_gone),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
