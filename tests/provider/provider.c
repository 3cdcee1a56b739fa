/*
 * mu-provider: a test stand-in for a Python microutil 1.0.2 provider.
 *
 * One thread, one libevent loop: evhttp serves POST <path>, zookeeper_st
 * (driven by zkloop) registers the provider nodes. Responses are built to be
 * byte-for-byte what the Python provider sends: Python json.dumps text,
 * pickled as CPython's _pickle.c does it, LZ4-compressed above 4096 bytes.
 * Fault switches (--delay-ms, --fail-rate, --hang, --endless (a chunked
 * body that never ends), --drop-rate, --garbage,
 * --bad-znode, --dup) let the tests exercise the SDK's error paths.
 *
 * Network behaviours of real providers (docs/protocol.md §6):
 *   --variant V        1.0.2: /json/, per-method znodes, no token.
 *                      1.0.3: /jsonp/. 1.0.4 (1.0.5..1.0.7 alike): /jsonp/
 *                      and micro-auth-token always checked (TOKEN
 *                      "micromicro" unless --auth): a wrong token gets 401
 *                      "Unauthorized" in plain text, a missing
 *                      micro-auth-token or micro-request-id header gets
 *                      InvalidRequestError (400). 1.0.8: as 1.0.4, and
 *                      per-service znodes. --path, --auth and --layout win
 *                      over what --variant sets. (Plain --auth without
 *                      --variant answers a missing header with 401.)
 *   --listen-delay-ms N  bind at start (so the port is known) but listen()
 *                      only N ms after registering: until then connections
 *                      are refused, as with a provider that registers
 *                      ~0.2 s before its port listens. READY is printed
 *                      once registered, NOT once listening.
 *   --split-writes     Django runserver (wsgiref) on keep-alive: status line
 *                      and headers in one send(), the body in another, Nagle
 *                      on. A keep-alive client then waits for its delayed
 *                      ACK (~40 ms) on every call.
 *   --close-silently   uwsgi --http-socket: HTTP/1.1 answer without
 *                      "Connection: close", then the connection is closed.
 *   --close-after-us N ... N us after the answer, reading nothing meanwhile,
 *                      as uwsgi logs and runs its hooks first: a request
 *                      that comes in that window is reset unread.
 *   --workers N        uwsgi --http11-socket with N workers: N forked
 *                      processes, each serving one keep-alive connection at
 *                      a time until the client closes it; connections beyond
 *                      N wait unserved in the accept queue. The master
 *                      registers once and serves nothing; workers die with
 *                      it (PR_SET_PDEATHSIG) and it reaps them on SIGTERM.
 *                      One send() per answer (no stall) unless
 *                      --split-writes is given too. --close-silently
 *                      combines as well (uwsgi --http-socket, N workers).
 *   --stall-ms S --stall-every-ms P
 *                      the first S ms of every P ms answer nothing (a GC
 *                      pause); what came in is answered when it ends.
 *   --raw              the same server as those, plain: keep-alive, one
 *                      send() per answer. On SIGTERM it closes idle
 *                      connections at once (gunicorn-like), where evhttp
 *                      keeps them until exit.
 * The last four use a small HTTP/1.1 server of our own (evhttp cannot
 * reproduce them); answers come from the same route()/handle_rpc() code.
 *
 * Prints "READY <port>" on stdout once registered (and, without
 * --listen-delay-ms, listening).
 * SIGTERM/SIGINT: stop listening at once (new connections are refused),
 * close the ZooKeeper session (nodes vanish), let the requests already
 * received be answered (--delay-ms too; --hang ones are dropped), then exit
 * 0. A second signal exits at once. The port is bound with SO_REUSEADDR, so
 * a new provider can take the same --port right away.
 */
#define _GNU_SOURCE /* accept4, pipe2 */
#include "zkloop.h"

#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <yajl/yajl_parse.h>
#include <lz4.h>
#include <openssl/evp.h>
#include <zookeeper/zookeeper.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define UNUSED(x) ((void)(x))

/* ------------------------------------------------------------ settings */

enum { BAD_NONE, BAD_EMPTY, BAD_NONJSON, BAD_NOPORT, BAD_BADPORT };

static struct {
    const char *zk;
    const char *service;
    int port;
    const char *host;
    int per_service;
    const char *path;
    size_t path_len;
    int proto;
    const char *auth;
    long delay_ms;
    double fail_rate;
    int hang;
    int endless; /* --endless: a 200 whose chunked body never ends */
    const char *tls_cert, *tls_key; /* --tls-cert/--tls-key: serve HTTPS (evhttp mode) */
    long header_bytes; /* --header-bytes N: every answer carries an X-Pad header of N bytes */
    const char *redirect; /* --redirect URL: every answer is a 302 to URL */
    double drop_rate;
    int garbage;
    int bad_znode;
    int dup;
    int no_register;
    char **methods; /* NULL: all built-ins */
    size_t nmethods;
    int session_ms;
    int auth_missing_400; /* --variant 1.0.4+: missing header is a 400 */
    long listen_delay_ms;
    long stall_ms, stall_every_ms;
    int split_writes;
    int raw;
    int close_silently;
    long close_after_us;
    int workers;
} opt;

/* ------------------------------------------------------------ runtime */

struct pend;
struct rconn;

static struct {
    struct event_base *base;
    struct evhttp *http;
    int port;
    int lfd;                          /* listening socket until handed over */
    struct evhttp_bound_socket *bound; /* evhttp mode, once listening */
    struct event *lev;                /* raw mode: accept events */
    struct event *listen_ev;          /* --listen-delay-ms timer */
    struct event *drain_ev;           /* after SIGTERM: watchdog tick */
    struct event *sigterm, *sigint;
    struct rconn *rconns;             /* raw mode connections */
    int stopping;
    int quiet_ticks;
    long inflight;    /* evhttp requests whose answer is not written yet */
    pid_t *wpids;     /* --workers: the master's children */
    int go_fd;        /* --workers --listen-delay-ms: closed to start them */
    int is_worker;
    zhandle_t *zh;
    mu_zkloop *zl;
    int zk_outstanding;
    int zk_started;
    int ready;
    int exit_code;
    struct event *zk_close_ev;
    struct pend *pends; /* answers not sent yet (delay, slow, drop, hang) */
    uint64_t rng;
} g;

/* ------------------------------------------------------------ byte buffer */

typedef struct {
    char *p;
    size_t len, cap;
} sbuf;

static void die_oom(void)
{
    fputs("mu-provider: out of memory\n", stderr);
    exit(1);
}

static void sb_reserve(sbuf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        die_oom();
    b->p = p;
    b->cap = cap;
}

static void sb_put(sbuf *b, const void *s, size_t n)
{
    sb_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_putc(sbuf *b, char c)
{
    sb_reserve(b, 1);
    b->p[b->len++] = c;
}

static void sb_printf(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    char tmp[128];
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void sb_free(sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------ random */

static uint64_t rnd_u64(void)
{
    uint64_t x = g.rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    g.rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static int roll(double p)
{
    if (p <= 0)
        return 0;
    if (p >= 1)
        return 1;
    return (double)(rnd_u64() >> 11) * (1.0 / 9007199254740992.0) < p;
}

/* ------------------------------------------------------------ JSON tree
 * A small DOM built from yajl callbacks in a per-request arena: unlike
 * yajl_tree it keeps string lengths (so "\u0000" survives), keeps number
 * text, and allows no comments (Python's json does not). */

enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jnode {
    int type;
    const char *s; /* string bytes or number text */
    size_t len;
    const char *key; /* member name when inside an object */
    size_t klen;
    struct jnode *first, *last, *next;
    size_t count;
} jnode;

struct ablock {
    struct ablock *next;
    size_t used, size;
    /* data follows */
};

static struct ablock *arena;
#define ARENA_BLOCK 65536

static void *arena_alloc(size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!arena || arena->size - arena->used < n) {
        size_t size = n > ARENA_BLOCK ? n : ARENA_BLOCK;
        struct ablock *b = malloc(sizeof *b + 16 + size);
        if (!b)
            die_oom();
        b->size = size;
        b->used = 0;
        b->next = arena;
        arena = b;
    }
    char *base = (char *)(arena + 1);
    base += (16 - ((uintptr_t)base & 15)) & 15;
    void *p = base + arena->used;
    arena->used += n;
    return p;
}

/* Keep one standard block for the next request, free the rest. */
static void arena_reset(int all)
{
    while (arena && (all || arena->next || arena->size != ARENA_BLOCK)) {
        struct ablock *n = arena->next;
        free(arena);
        arena = n;
    }
    if (arena)
        arena->used = 0;
}

#define MAX_DEPTH 1000

struct jparse {
    jnode *root;
    jnode *stack[MAX_DEPTH];
    int depth;
    const char *key;
    size_t klen;
};

static char *arena_dup(const void *s, size_t n)
{
    char *p = arena_alloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

static jnode *jp_add(struct jparse *jp, int type)
{
    jnode *n = arena_alloc(sizeof *n);
    memset(n, 0, sizeof *n);
    n->type = type;
    if (jp->depth == 0) {
        jp->root = n;
        return n;
    }
    jnode *parent = jp->stack[jp->depth - 1];
    if (parent->type == J_OBJ) {
        n->key = jp->key;
        n->klen = jp->klen;
    }
    if (parent->last)
        parent->last->next = n;
    else
        parent->first = n;
    parent->last = n;
    parent->count++;
    return n;
}

static int jp_null(void *ctx) { jp_add(ctx, J_NULL); return 1; }

static int jp_bool(void *ctx, int v)
{
    jp_add(ctx, v ? J_TRUE : J_FALSE);
    return 1;
}

static int jp_number(void *ctx, const char *s, size_t len)
{
    jnode *n = jp_add(ctx, J_NUM);
    n->s = arena_dup(s, len);
    n->len = len;
    return 1;
}

static int jp_string(void *ctx, const unsigned char *s, size_t len)
{
    jnode *n = jp_add(ctx, J_STR);
    n->s = arena_dup(s, len);
    n->len = len;
    return 1;
}

static int jp_key(void *ctx, const unsigned char *s, size_t len)
{
    struct jparse *jp = ctx;
    jp->key = arena_dup(s, len);
    jp->klen = len;
    return 1;
}

static int jp_open(struct jparse *jp, int type)
{
    if (jp->depth >= MAX_DEPTH)
        return 0;
    jnode *n = jp_add(jp, type);
    jp->stack[jp->depth++] = n;
    return 1;
}

static int jp_start_map(void *ctx) { return jp_open(ctx, J_OBJ); }
static int jp_start_array(void *ctx) { return jp_open(ctx, J_ARR); }

static int jp_close(void *ctx)
{
    struct jparse *jp = ctx;
    jp->depth--;
    return 1;
}

static const yajl_callbacks jp_callbacks = {
    jp_null, jp_bool, NULL, NULL, jp_number, jp_string,
    jp_start_map, jp_key, jp_close, jp_start_array, jp_close,
};

static struct jparse jparser;

static jnode *json_parse(const unsigned char *text, size_t len)
{
    /* Python rejects NUL bytes outside strings, and yajl rejects them in */
    memset(&jparser, 0, sizeof jparser);
    yajl_handle h = yajl_alloc(&jp_callbacks, NULL, &jparser);
    if (!h)
        die_oom();
    int ok = yajl_parse(h, text, len) == yajl_status_ok &&
             yajl_complete_parse(h) == yajl_status_ok;
    yajl_free(h);
    return ok ? jparser.root : NULL;
}

static jnode *jobj_get(jnode *obj, const char *key)
{
    jnode *found = NULL;
    size_t kl = strlen(key);
    if (!obj || obj->type != J_OBJ)
        return NULL;
    for (jnode *c = obj->first; c; c = c->next)
        if (c->klen == kl && memcmp(c->key, key, kl) == 0)
            found = c; /* last one wins, as in a Python dict */
    return found;
}

/* ------------------------------------------------------------ json.dumps */

static const char hexd[] = "0123456789abcdef";

static void put_u4(sbuf *b, unsigned u)
{
    char e[6] = {'\\', 'u', hexd[(u >> 12) & 15], hexd[(u >> 8) & 15],
                 hexd[(u >> 4) & 15], hexd[u & 15]};
    sb_put(b, e, 6);
}

/* Python json.dumps(ensure_ascii=True) string: escapes as
 * py_encode_basestring_ascii does; astral characters as surrogate pairs. */
static void json_str(sbuf *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    sb_reserve(b, n + 2);
    b->p[b->len++] = '"';
    size_t i = 0;
    while (i < n) {
        /* copy the run that needs no escaping in one go */
        size_t j = i;
        while (j < n && s[j] >= 0x20 && s[j] < 0x7f && s[j] != '"' && s[j] != '\\')
            j++;
        if (j > i) {
            sb_put(b, s + i, j - i);
            i = j;
            if (i >= n)
                break;
        }
        unsigned c = s[i];
        switch (c) {
        case '"': sb_put(b, "\\\"", 2); i++; continue;
        case '\\': sb_put(b, "\\\\", 2); i++; continue;
        case '\n': sb_put(b, "\\n", 2); i++; continue;
        case '\r': sb_put(b, "\\r", 2); i++; continue;
        case '\t': sb_put(b, "\\t", 2); i++; continue;
        case '\b': sb_put(b, "\\b", 2); i++; continue;
        case '\f': sb_put(b, "\\f", 2); i++; continue;
        default: break;
        }
        unsigned cp;
        size_t k;
        if (c < 0x80) {
            cp = c;
            k = 1;
        } else if ((c & 0xe0) == 0xc0 && i + 1 < n) {
            cp = ((c & 0x1fu) << 6) | (s[i + 1] & 0x3fu);
            k = 2;
        } else if ((c & 0xf0) == 0xe0 && i + 2 < n) {
            cp = ((c & 0x0fu) << 12) | ((s[i + 1] & 0x3fu) << 6) | (s[i + 2] & 0x3fu);
            k = 3;
        } else if ((c & 0xf8) == 0xf0 && i + 3 < n) {
            cp = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3fu) << 12) |
                 ((s[i + 2] & 0x3fu) << 6) | (s[i + 3] & 0x3fu);
            k = 4;
        } else {
            cp = 0xfffd; /* cannot happen: yajl validated the UTF-8 */
            k = 1;
        }
        i += k;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            put_u4(b, 0xd800 | (cp >> 10));
            put_u4(b, 0xdc00 | (cp & 0x3ff));
        } else {
            put_u4(b, cp);
        }
    }
    sb_putc(b, '"');
}

/* repr(float): the shortest text that reads back to d; exponent form when
 * the decimal exponent is below -4 or at least 16; ".0" when integral. */
static void json_double(sbuf *b, double d)
{
    if (isnan(d)) {
        sb_puts(b, "NaN");
        return;
    }
    if (isinf(d)) {
        sb_puts(b, d < 0 ? "-Infinity" : "Infinity");
        return;
    }
    char tmp[64];
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    /* tmp: [-]D[.DDD]e(+|-)XX */
    const char *t = tmp;
    int neg = 0;
    if (*t == '-') {
        neg = 1;
        t++;
    }
    char dig[32];
    size_t nd = 0;
    while (*t && *t != 'e') {
        if (*t != '.' && nd < sizeof dig - 1)
            dig[nd++] = *t;
        t++;
    }
    dig[nd] = 0;
    int e = *t == 'e' ? atoi(t + 1) : 0;
    while (nd > 1 && dig[nd - 1] == '0')
        dig[--nd] = 0;
    if (neg)
        sb_putc(b, '-');
    if (e >= -4 && e < 16) {
        if (e < 0) {
            sb_puts(b, "0.");
            for (int i = 0; i < -e - 1; i++)
                sb_putc(b, '0');
            sb_put(b, dig, nd);
        } else if (nd <= (size_t)e + 1) {
            sb_put(b, dig, nd);
            for (size_t i = nd; i < (size_t)e + 1; i++)
                sb_putc(b, '0');
            sb_puts(b, ".0");
        } else {
            sb_put(b, dig, (size_t)e + 1);
            sb_putc(b, '.');
            sb_put(b, dig + e + 1, nd - (size_t)e - 1);
        }
    } else {
        sb_putc(b, dig[0]);
        if (nd > 1) {
            sb_putc(b, '.');
            sb_put(b, dig + 1, nd - 1);
        }
        sb_printf(b, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
}

static int num_is_int(const jnode *n)
{
    return strpbrk(n->s, ".eE") == NULL;
}

static void json_number(sbuf *b, const jnode *n)
{
    if (num_is_int(n)) {
        /* Python ints are exact: echo the text; only "-0" reads back as 0 */
        if (strcmp(n->s, "-0") == 0)
            sb_putc(b, '0');
        else
            sb_put(b, n->s, n->len);
    } else {
        json_double(b, strtod(n->s, NULL));
    }
}

static void json_node(sbuf *b, const jnode *n)
{
    switch (n->type) {
    case J_NULL: sb_put(b, "null", 4); break;
    case J_FALSE: sb_put(b, "false", 5); break;
    case J_TRUE: sb_put(b, "true", 4); break;
    case J_NUM: json_number(b, n); break;
    case J_STR: json_str(b, n->s, n->len); break;
    case J_ARR:
        sb_putc(b, '[');
        for (const jnode *c = n->first; c; c = c->next) {
            if (c != n->first)
                sb_put(b, ", ", 2);
            json_node(b, c);
        }
        sb_putc(b, ']');
        break;
    case J_OBJ: {
        /* a Python dict: a repeated key keeps its first place and last value */
        int firstout = 1;
        sb_putc(b, '{');
        for (const jnode *c = n->first; c; c = c->next) {
            int seen = 0;
            for (const jnode *p = n->first; p != c; p = p->next)
                if (p->klen == c->klen && memcmp(p->key, c->key, c->klen) == 0) {
                    seen = 1;
                    break;
                }
            if (seen)
                continue;
            const jnode *v = c;
            for (const jnode *q = c->next; q; q = q->next)
                if (q->klen == c->klen && memcmp(q->key, c->key, c->klen) == 0)
                    v = q;
            if (!firstout)
                sb_put(b, ", ", 2);
            firstout = 0;
            json_str(b, c->key, c->klen);
            sb_put(b, ": ", 2);
            json_node(b, v);
        }
        sb_putc(b, '}');
        break;
    }
    }
}

/* ------------------------------------------------------------ response body
 * The JSON text is written at PFX in g_json so that the pickle header can be
 * put in front of it without a copy. */

#define PFX 32

static sbuf g_json; /* flag + pickle, built in place */
static sbuf g_lz;   /* flag + size + LZ4 block */
static sbuf g_raw;  /* a whole HTTP response, for --drop-rate */

static void body_begin(void)
{
    g_json.len = 0;
    sb_reserve(&g_json, PFX);
    g_json.len = PFX;
}

static void le_put(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Pickle the JSON text as CPython's _pickle.c pickles a str, then add the
 * flag byte and compress as microutil does. Returns the body. */
static void body_finish(const char **out, size_t *outlen)
{
    size_t n = g_json.len - PFX;
    unsigned char hdr[PFX];
    size_t h = 0;
    hdr[h++] = 0x80;
    hdr[h++] = (unsigned char)opt.proto;
    if (opt.proto >= 4) {
        size_t oplen = n < 256 ? 2 : n <= 0xffffffffu ? 5 : 9;
        /* A payload of 64 KiB or more bypasses the frame buffer
         * (_Pickler_write_bytes); the MEMOIZE+STOP left after it is too
         * short (< 4 bytes) to get a FRAME of its own. */
        if (n < 65536) {
            hdr[h++] = 0x95;
            le_put(hdr + h, oplen + n + 2, 8);
            h += 8;
        }
        if (n < 256) {
            hdr[h++] = 0x8c;
            hdr[h++] = (unsigned char)n;
        } else if (n <= 0xffffffffu) {
            hdr[h++] = 'X';
            le_put(hdr + h, n, 4);
            h += 4;
        } else {
            hdr[h++] = 0x8d;
            le_put(hdr + h, n, 8);
            h += 8;
        }
        sb_put(&g_json, "\x94.", 2);
    } else {
        hdr[h++] = 'X';
        le_put(hdr + h, n, 4);
        h += 4;
        sb_put(&g_json, "q\0.", 3);
    }
    char *pk = g_json.p + PFX - h;
    memcpy(pk, hdr, h);
    size_t pklen = g_json.len - (PFX - h);
    if (pklen <= 4096) {
        pk[-1] = '0';
        *out = pk - 1;
        *outlen = pklen + 1;
        return;
    }
    int bound = LZ4_compressBound((int)pklen);
    g_lz.len = 0;
    sb_reserve(&g_lz, 5 + (size_t)bound);
    g_lz.p[0] = '1';
    le_put((unsigned char *)g_lz.p + 1, pklen, 4);
    /* python-lz4's lz4.block.compress is LZ4_resetStream() followed by
     * LZ4_compress_fast_continue(): that always uses the 4096-entry byU32
     * hash table. LZ4_compress_default() uses an 8192-entry byU16 table
     * below 64 KiB and so finds other matches: same data, other bytes. */
    static LZ4_stream_t lzs;
    LZ4_initStream(&lzs, sizeof lzs);
    int c = LZ4_compress_fast_continue(&lzs, pk, g_lz.p + 5, (int)pklen, bound, 1);
    if (c <= 0) {
        fputs("mu-provider: LZ4 compression failed\n", stderr);
        exit(1);
    }
    *out = g_lz.p;
    *outlen = 5 + (size_t)c;
}

static void json_envelope_begin(const jnode *rid)
{
    body_begin();
    sb_puts(&g_json, "{\"request_id\": ");
    if (rid)
        json_node(&g_json, rid);
    else
        sb_puts(&g_json, "null");
}

static void json_error(const jnode *rid, const char *name, int code, const char *msg)
{
    json_envelope_begin(rid);
    sb_puts(&g_json, ", \"error\": {\"name\": ");
    json_str(&g_json, name, strlen(name));
    sb_printf(&g_json, ", \"code\": %d, \"message\": ", code);
    json_str(&g_json, msg, strlen(msg));
    sb_puts(&g_json, ", \"data\": null}, \"result\": null}");
}

static void other_error(const jnode *rid)
{
    json_error(rid, "OtherError", 500, "OtherError: Internal Server Error");
}

/* ------------------------------------------------------------ methods */

struct call {
    const jnode *rid;
    const jnode *bound[2]; /* parameters, after binding args and kwargs */
    const jnode *args, *kwargs;
    long delay_ms; /* slow() */
};

/* Each writes the "result" value and returns 0, or returns -1 (raised). */
typedef int (*method_fn)(struct call *c, sbuf *b);

static int m_get_string(struct call *c, sbuf *b) { json_node(b, c->bound[0]); return 0; }

static int m_echo(struct call *c, sbuf *b)
{
    sb_puts(b, "{\"args\": ");
    json_node(b, c->args);
    sb_puts(b, ", \"kwargs\": ");
    json_node(b, c->kwargs);
    sb_putc(b, '}');
    return 0;
}

static int m_unicode(struct call *c, sbuf *b)
{
    UNUSED(c);
    static const char name[] = "\xe5\xbc\xa0\xe4\xb8\x89 \xe2\x98\x83 \xc3\xa9"; /* 张三 ☃ é */
    json_str(b, name, sizeof name - 1);
    return 0;
}

static int m_nothing(struct call *c, sbuf *b)
{
    UNUSED(c);
    sb_puts(b, "null");
    return 0;
}

static int m_mixed(struct call *c, sbuf *b)
{
    UNUSED(c);
    sb_puts(b, "[1, -2, 2.5, true, false, null, {\"a\": [1, {\"b\": \"c\"}]}, "
               "\"q\\\"uote\\\\\\n\"]");
    return 0;
}

#define BIG_MAX (256L * 1024 * 1024)

static int m_big(struct call *c, sbuf *b)
{
    const jnode *a = c->bound[0];
    long long n;
    if (a->type == J_TRUE || a->type == J_FALSE)
        n = a->type == J_TRUE;
    else if (a->type == J_NUM && num_is_int(a)) {
        errno = 0;
        n = strtoll(a->s, NULL, 10);
        if (errno)
            return -1; /* OverflowError */
    } else
        return -1; /* TypeError */
    if (n > BIG_MAX)
        return -1; /* MemoryError, for our purposes */
    if (n < 0)
        n = 0;
    sb_reserve(b, (size_t)n + 2);
    b->p[b->len++] = '"';
    memset(b->p + b->len, 'x', (size_t)n);
    b->len += (size_t)n;
    b->p[b->len++] = '"';
    return 0;
}

static int m_fail(struct call *c, sbuf *b)
{
    UNUSED(c);
    UNUSED(b);
    return -1;
}

static int m_slow(struct call *c, sbuf *b)
{
    const jnode *a = c->bound[0];
    if (a->type != J_NUM)
        return -1;
    double ms = strtod(a->s, NULL);
    if (!(ms >= 0) || ms > 3600e3)
        return -1; /* time.sleep(negative) raises */
    c->delay_ms = (long)ms;
    json_number(b, a);
    return 0;
}

static int m_whoami(struct call *c, sbuf *b)
{
    UNUSED(c);
    sb_printf(b, "%d", g.port);
    return 0;
}

static const struct method {
    const char *name;
    int nparams; /* -1: *args, **kwargs */
    const char *param;
    method_fn fn;
} builtins[] = {
    {"HttpRpcService.get_string_v1", 1, "name", m_get_string},
    {"echo", -1, NULL, m_echo},
    {"unicode_name", 0, NULL, m_unicode},
    {"nothing", 0, NULL, m_nothing},
    {"mixed", 0, NULL, m_mixed},
    {"big", 1, "n", m_big},
    {"fail", 1, "msg", m_fail},
    {"slow", 1, "ms", m_slow},
    {"whoami", 0, NULL, m_whoami},
};
#define NBUILTINS (sizeof builtins / sizeof builtins[0])

/* Python's argument binding for f(*args, **kwargs) against the method's
 * parameter list; a mismatch is a TypeError, which the server turns into
 * a 500 OtherError. */
static int bind_args(const struct method *m, struct call *c)
{
    if (m->nparams < 0)
        return 0;
    size_t np = (size_t)m->nparams, bound = 0;
    if (c->args->count > np)
        return -1; /* takes N positional arguments but M were given */
    for (const jnode *a = c->args->first; a; a = a->next)
        c->bound[bound++] = a;
    if (c->kwargs->count) {
        /* methods here take at most one parameter */
        for (const jnode *k = c->kwargs->first; k; k = k->next)
            if (np == 0 || strlen(m->param) != k->klen || memcmp(m->param, k->key, k->klen) != 0)
                return -1; /* unexpected keyword argument */
        if (bound)
            return -1; /* got multiple values for argument */
        c->bound[bound++] = jobj_get((jnode *)c->kwargs, m->param);
    }
    return bound == np ? 0 : -1; /* missing required argument */
}

/* ------------------------------------------------------------ answers */

enum { P_REPLY, P_DROP, P_HANG, P_ENDLESS };

struct reply {
    int status;
    const char *ctype;
    const char *body;
    size_t len;
    long delay_ms;
};

struct pend {
    struct pend *prev, *next;
    struct evhttp_request *req;
    struct event *ev;    /* the answer's timer; NULL while hanging */
    struct event *watch; /* hang: notices the client closing */
    int kind;
    int status;
    const char *ctype;
    struct evbuffer *body;
};

static const char *reason_of(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    default: return "Internal Server Error";
    }
}

/* After SIGTERM: exit once nothing received is left unanswered. */
static void check_drained(void)
{
    if (g.stopping && !g.pends && !g.rconns && g.inflight <= 0)
        event_base_loopbreak(g.base);
}

static void inflight_done(void)
{
    g.inflight--;
    check_drained();
}

static void pend_free(struct pend *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        g.pends = p->next;
    if (p->next)
        p->next->prev = p->prev;
    if (p->ev)
        event_free(p->ev);
    if (p->watch)
        event_free(p->watch);
    if (p->body)
        evbuffer_free(p->body);
    free(p);
}

/* The connection of a pending request is going away: the client closed it,
 * or evhttp_free() at exit. A request the connection still holds is freed
 * with it; a detached one (network failure before we answered) is ours. */
static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    struct pend *p = arg;
    UNUSED(evcon);
    int answerable = p->kind != P_HANG && p->kind != P_ENDLESS;
    if (evhttp_request_get_connection(p->req) == NULL)
        evhttp_request_free(p->req);
    pend_free(p);
    if (answerable)
        inflight_done();
}

static void send_now(struct evhttp_request *req, int status, const char *ctype,
                     const char *body, size_t len, struct evbuffer *buf)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    if (opt.redirect) { /* a 302 to elsewhere, as a misconfigured proxy might send */
        evhttp_add_header(h, "Location", opt.redirect);
        status = 302;
    }
    evhttp_add_header(h, "Content-Type", ctype);
    if (opt.header_bytes > 0) { /* a huge header, as a broken proxy or framework might send */
        static char *pad;
        if (!pad && (pad = malloc((size_t)opt.header_bytes + 1)) != NULL) {
            memset(pad, 'a', (size_t)opt.header_bytes);
            pad[opt.header_bytes] = '\0';
        }
        if (pad)
            evhttp_add_header(h, "X-Pad", pad);
    }
    if (g.stopping) /* draining: tell the client not to reuse it */
        evhttp_add_header(h, "Connection", "close");
    if (body)
        evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    evhttp_send_reply(req, status, reason_of(status), buf);
}

/* Write the headers and part of the body straight to the socket, then
 * close it. */
static void drop_connection(struct pend *p, struct evhttp_connection *evcon)
{
    size_t blen = evbuffer_get_length(p->body);
    g_raw.len = 0;
    sb_printf(&g_raw, "HTTP/1.1 %d %s\r\n", p->status, reason_of(p->status));
    sb_printf(&g_raw, "Content-Type: %s\r\n", p->ctype);
    sb_printf(&g_raw, "Content-Length: %zu\r\n\r\n", blen);
    /* Cut inside the body: with a cut inside the headers, curl takes what
     * came as a complete 200 with an empty body, and the fault would look
     * like a protocol error instead of a broken transfer. */
    size_t cut = g_raw.len + (blen ? (size_t)(rnd_u64() % blen) : 0);
    sb_reserve(&g_raw, blen);
    evbuffer_copyout(p->body, g_raw.p + g_raw.len, blen);
    g_raw.len += blen;
    evutil_socket_t fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
    if (fd >= 0) {
        ssize_t w = send(fd, g_raw.p, cut, MSG_NOSIGNAL | MSG_DONTWAIT);
        UNUSED(w);
    }
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    pend_free(p);
    evhttp_connection_free(evcon); /* frees the request too */
    inflight_done();
}

static void on_pend_timer(evutil_socket_t fd, short what, void *arg)
{
    struct pend *p = arg;
    UNUSED(fd);
    UNUSED(what);
    struct evhttp_connection *evcon = evhttp_request_get_connection(p->req);
    if (!evcon) { /* not expected: on_conn_close runs first */
        evhttp_request_free(p->req);
        pend_free(p);
        inflight_done();
        return;
    }
    if (p->kind == P_DROP) {
        drop_connection(p, evcon);
        return;
    }
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    send_now(p->req, p->status, p->ctype, NULL, 0, p->body);
    pend_free(p);
}

static void hang_close(struct pend *p)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(p->req);
    if (!evcon) {
        evhttp_request_free(p->req);
        pend_free(p);
        return;
    }
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    pend_free(p);
    evhttp_connection_free(evcon);
}

/* Hang mode: evhttp does not read while a request is unanswered, so it
 * would not see the client leave. Peek at the socket ourselves. */
static void on_hang_watch(evutil_socket_t fd, short what, void *arg)
{
    struct pend *p = arg;
    UNUSED(what);
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) {
        event_del(p->watch); /* more requests pipelined: stop looking */
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    hang_close(p);
}

/* After SIGTERM: a hanging request will never be answered; close it. */
static void close_hung(void)
{
    struct pend *next;
    for (struct pend *p = g.pends; p; p = next) {
        next = p->next;
        if (p->kind == P_HANG || p->kind == P_ENDLESS)
            hang_close(p);
    }
}

/* --endless: 64 KiB chunks for as long as the client reads, keeping at most
 * 256 KiB queued in our output buffer. */
static void on_endless_tick(evutil_socket_t fd, short what, void *arg)
{
    struct pend *p = arg;
    UNUSED(fd);
    UNUSED(what);
    static char chunk[64 * 1024];
    struct evhttp_connection *evcon = evhttp_request_get_connection(p->req);
    if (!evcon)
        return;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    if (evbuffer_get_length(bufferevent_get_output(bev)) >= 256 * 1024)
        return;
    if (!chunk[0])
        memset(chunk, 'x', sizeof chunk);
    struct evbuffer *b = evbuffer_new();
    if (!b || evbuffer_add(b, chunk, sizeof chunk) != 0)
        die_oom();
    evhttp_send_reply_chunk(p->req, b);
    evbuffer_free(b);
}

static void deliver(struct evhttp_request *req, int kind, const struct reply *r)
{
    if (kind == P_REPLY && r->delay_ms <= 0) {
        send_now(req, r->status, r->ctype, r->body, r->len, NULL);
        return;
    }
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct pend *p = calloc(1, sizeof *p);
    if (!p)
        die_oom();
    p->req = req;
    p->kind = kind;
    p->status = r ? r->status : 0;
    p->ctype = r ? r->ctype : NULL;
    if (r) {
        p->body = evbuffer_new();
        if (!p->body || evbuffer_add(p->body, r->body, r->len) != 0)
            die_oom();
    }
    p->next = g.pends;
    if (g.pends)
        g.pends->prev = p;
    g.pends = p;
    evhttp_connection_set_closecb(evcon, on_conn_close, p);
    if (kind == P_ENDLESS) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          "application/json-rpc");
        evhttp_send_reply_start(req, 200, "OK");
        static const struct timeval tick = {0, 1000};
        p->ev = event_new(g.base, -1, EV_PERSIST, on_endless_tick, p);
        if (!p->ev || event_add(p->ev, &tick) != 0)
            die_oom();
        return;
    }
    if (kind == P_HANG) {
        evutil_socket_t fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
        if (fd >= 0) {
            p->watch = event_new(g.base, fd, EV_READ | EV_PERSIST, on_hang_watch, p);
            if (!p->watch || event_add(p->watch, NULL) != 0)
                die_oom();
        }
        return;
    }
    long ms = r->delay_ms > 0 ? r->delay_ms : 0;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    p->ev = evtimer_new(g.base, on_pend_timer, p);
    if (!p->ev || evtimer_add(p->ev, &tv) != 0)
        die_oom();
}

/* ------------------------------------------------------------ requests */

static const char ctype_rpc[] = "application/json-rpc";

static void set_json_reply(struct reply *r, int status)
{
    r->status = status;
    r->ctype = ctype_rpc;
    body_finish(&r->body, &r->len);
}

enum { AUTH_OK, AUTH_BAD, AUTH_MISSING };

static int auth_check(const char *rid, const char *tok)
{
    if (!rid || !tok)
        return AUTH_MISSING;
    /* md5 hex of (TOKEN + request_id) * 3 */
    sbuf s = {0};
    for (int i = 0; i < 3; i++) {
        sb_puts(&s, opt.auth);
        sb_puts(&s, rid);
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int ok = EVP_Digest(s.p, s.len, md, &mdlen, EVP_md5(), NULL);
    sb_free(&s);
    if (!ok || mdlen != 16)
        return AUTH_BAD;
    char hex[33];
    for (unsigned i = 0; i < 16; i++) {
        hex[2 * i] = hexd[md[i] >> 4];
        hex[2 * i + 1] = hexd[md[i] & 15];
    }
    hex[32] = 0;
    return strcmp(hex, tok) == 0 ? AUTH_OK : AUTH_BAD;
}

static void invalid_request(struct reply *r)
{
    json_error(NULL, "InvalidRequestError", -32600, "InvalidRequestError: Invalid Request.");
    set_json_reply(r, 400);
}

static void handle_rpc(const unsigned char *text, size_t len, struct reply *r)
{
    jnode *root = memchr(text, 0, len) ? NULL : json_parse(text, len);
    if (!root || root->type != J_OBJ) {
        invalid_request(r);
        return;
    }
    struct call c;
    memset(&c, 0, sizeof c);
    c.rid = jobj_get(root, "request_id");
    const jnode *mname = jobj_get(root, "method");
    c.args = jobj_get(root, "args");
    c.kwargs = jobj_get(root, "kwargs");
    const struct method *m = NULL;
    if (mname && mname->type == J_STR)
        for (size_t i = 0; i < NBUILTINS; i++)
            if (strlen(builtins[i].name) == mname->len &&
                memcmp(builtins[i].name, mname->s, mname->len) == 0)
                m = &builtins[i];
    if (!m || !c.args || c.args->type != J_ARR || !c.kwargs || c.kwargs->type != J_OBJ ||
        roll(opt.fail_rate) || bind_args(m, &c) != 0) {
        other_error(c.rid);
        set_json_reply(r, 500);
        return;
    }
    json_envelope_begin(c.rid);
    sb_puts(&g_json, ", \"error\": null, \"result\": ");
    if (m->fn(&c, &g_json) != 0) {
        other_error(c.rid);
        set_json_reply(r, 500);
        return;
    }
    sb_putc(&g_json, '}');
    set_json_reply(r, 200);
    r->delay_ms += c.delay_ms;
}

static const char garbage[] = "\xde\xad\xbe\xef not a microutil body \x00\x01\x02\n";

/* One request, whichever server read it. */
struct rq {
    int get; /* GET or HEAD */
    const char *uri;
    const unsigned char *body;
    size_t blen;
    const char *rid; /* micro-request-id header, NULL when absent */
    const char *tok; /* micro-auth-token header, NULL when absent */
};

/* What the Django provider answers: fills r (its body is static or in
 * g_json/g_lz, valid until the next request) and returns P_REPLY, P_DROP
 * or P_HANG (r unused). */
/* --stall-ms S --stall-every-ms P: the first S ms of every P ms (on the
 * monotonic clock) answer nothing, as a Python process in a GC pause; what
 * arrives then is answered when the pause ends. */
static long stall_left_ms(void)
{
    if (opt.stall_ms <= 0 || opt.stall_every_ms <= 0)
        return 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long now = (long)(ts.tv_sec % 1000000) * 1000 + ts.tv_nsec / 1000000;
    long in = now % opt.stall_every_ms;
    return in < opt.stall_ms ? opt.stall_ms - in : 0;
}

static int route(const struct rq *q, struct reply *r)
{
    memset(r, 0, sizeof *r);
    r->delay_ms = opt.delay_ms + stall_left_ms();
    size_t plen = strcspn(q->uri, "?#");
    if (plen != opt.path_len || memcmp(q->uri, opt.path, plen) != 0) {
        static const char nf[] = "<h1>Not Found</h1><p>The requested resource was not found on this server.</p>";
        r->status = 404;
        r->ctype = "text/html; charset=utf-8";
        r->body = nf;
        r->len = sizeof nf - 1;
        return P_REPLY;
    }
    if (opt.hang)
        return P_HANG;
    if (opt.endless)
        return P_ENDLESS;
    int kind = roll(opt.drop_rate) ? P_DROP : P_REPLY;
    int auth = opt.auth && !opt.garbage && !q->get ? auth_check(q->rid, q->tok) : AUTH_OK;
    if (opt.garbage) {
        r->status = 200;
        r->ctype = ctype_rpc;
        r->body = garbage;
        r->len = sizeof garbage - 1;
    } else if (q->get) {
        json_error(NULL, "InvalidRequestError", -32600,
                   "InvalidRequestError: The method not support GET requests");
        set_json_reply(r, 400);
    } else if (auth == AUTH_MISSING && opt.auth_missing_400) {
        invalid_request(r);
    } else if (auth != AUTH_OK) {
        static const char un[] = "Unauthorized";
        r->status = 401;
        r->ctype = "text/plain; charset=utf-8";
        r->body = un;
        r->len = sizeof un - 1;
    } else {
        handle_rpc(q->blen ? q->body : (const unsigned char *)"", q->blen, r);
        arena_reset(0);
    }
    return kind;
}

static void on_req_complete(struct evhttp_request *req, void *arg)
{
    UNUSED(req);
    UNUSED(arg);
    inflight_done();
}

static void on_request(struct evhttp_request *req, void *arg)
{
    UNUSED(arg);
    struct evkeyvalq *hdrs = evhttp_request_get_input_headers(req);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    struct rq q;
    q.get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;
    q.uri = evhttp_request_get_uri(req);
    q.blen = evbuffer_get_length(in);
    q.body = q.blen ? evbuffer_pullup(in, -1) : NULL;
    q.rid = evhttp_find_header(hdrs, "micro-request-id");
    q.tok = evhttp_find_header(hdrs, "micro-auth-token");
    struct reply r;
    int kind = route(&q, &r);
    if (kind != P_HANG && kind != P_ENDLESS) { /* a hanging request is never answered */
        g.inflight++;
        evhttp_request_set_on_complete_cb(req, on_req_complete, NULL);
    }
    deliver(req, kind, kind == P_HANG || kind == P_ENDLESS ? NULL : &r);
}

/* ------------------------------------------------------------ raw server
 * For what evhttp cannot reproduce (--split-writes, --close-silently,
 * --workers): non-blocking sockets on the same loop, requests served one at
 * a time per connection (like Python's http.server and uwsgi), answered by
 * route() so the bodies are the evhttp mode's bytes. Only Content-Length
 * bodies: anything else gets 400 and the connection is closed. */

#define RAW_HEAD_MAX 65536
#define RAW_BODY_MAX (1024LL * 1024 * 1024)

enum { RC_IDLE, RC_BUSY, RC_HANG, RC_CLOSING };

struct rconn {
    struct rconn *prev, *next;
    evutil_socket_t fd;
    struct event *rev, *wev, *timer;
    struct evbuffer *in, *out;
    int state;
    int close_after; /* close once the answer is written */
    int peer_eof;
    int sent100;
    /* a delayed answer (RC_BUSY) */
    int head; /* HEAD: no body */
    int kind;
    struct reply r;
    struct evbuffer *body;
};

/* A parsed request head. */
struct rhead {
    char method[16];
    char uri[8192];
    char rid[512], tok[512];
    int has_rid, has_tok;
    int minor; /* HTTP/1.minor */
    int conn_close, conn_keep, expect100;
    long long clen; /* -1: no Content-Length */
};

static int name_is(const char *s, size_t n, const char *name)
{
    return strlen(name) == n && strncasecmp(s, name, n) == 0;
}

static int hv_copy(char *dst, size_t cap, const char *v, size_t n, int *has)
{
    if (n >= cap)
        return -1;
    memcpy(dst, v, n);
    dst[n] = 0;
    *has = 1;
    return 0;
}

static int hv_clen(struct rhead *h, const char *v, size_t n)
{
    long long x = 0;
    if (n == 0 || n > 15)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        x = x * 10 + (v[i] - '0');
    }
    if (h->clen >= 0 && h->clen != x)
        return -1;
    h->clen = x;
    return 0;
}

/* Connection: a comma-separated token list. */
static void hv_connection(struct rhead *h, const char *v, size_t n)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ',' || v[i] == ' ' || v[i] == '\t'))
            i++;
        size_t j = i;
        while (j < n && v[j] != ',' && v[j] != ' ' && v[j] != '\t')
            j++;
        if (name_is(v + i, j - i, "close"))
            h->conn_close = 1;
        else if (name_is(v + i, j - i, "keep-alive"))
            h->conn_keep = 1;
        i = j;
    }
}

static int raw_header(struct rhead *h, const char *line, size_t n)
{
    const char *colon = memchr(line, ':', n);
    if (!colon || colon == line)
        return -1;
    size_t kl = (size_t)(colon - line);
    for (size_t i = 0; i < kl; i++)
        if (line[i] <= ' ' || line[i] >= 0x7f)
            return -1; /* also obsolete line folding */
    const char *v = colon + 1;
    size_t vl = n - kl - 1;
    while (vl && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
    if (name_is(line, kl, "content-length"))
        return hv_clen(h, v, vl);
    if (name_is(line, kl, "transfer-encoding"))
        return -1; /* chunked bodies: not supported */
    if (name_is(line, kl, "connection"))
        hv_connection(h, v, vl);
    else if (name_is(line, kl, "expect"))
        h->expect100 = name_is(v, vl, "100-continue");
    else if (name_is(line, kl, "micro-request-id"))
        return hv_copy(h->rid, sizeof h->rid, v, vl, &h->has_rid);
    else if (name_is(line, kl, "micro-auth-token"))
        return hv_copy(h->tok, sizeof h->tok, v, vl, &h->has_tok);
    return 0;
}

/* "METHOD SP URI SP HTTP/1.x" */
static int raw_request_line(struct rhead *h, const char *line, size_t n)
{
    const char *sp1 = memchr(line, ' ', n);
    if (!sp1 || sp1 == line || (size_t)(sp1 - line) >= sizeof h->method)
        return -1;
    const char *u = sp1 + 1;
    const char *sp2 = memchr(u, ' ', n - (size_t)(u - line));
    if (!sp2 || sp2 == u || (size_t)(sp2 - u) >= sizeof h->uri)
        return -1;
    size_t vl = n - (size_t)(sp2 + 1 - line);
    if (vl != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 || (sp2[8] != '0' && sp2[8] != '1'))
        return -1;
    for (const char *m = line; m < sp1; m++)
        if (*m < 'A' || *m > 'Z')
            return -1;
    memcpy(h->method, line, (size_t)(sp1 - line));
    h->method[sp1 - line] = 0;
    memcpy(h->uri, u, (size_t)(sp2 - u));
    h->uri[sp2 - u] = 0;
    h->minor = sp2[8] - '0';
    return 0;
}

/* The head in p[0..n): its length, 0 while incomplete, -1 when malformed. */
static long raw_parse_head(const char *p, size_t n, struct rhead *h)
{
    memset(h, 0, sizeof *h);
    h->clen = -1;
    size_t i = 0;
    while (i < n && (p[i] == '\r' || p[i] == '\n'))
        i++; /* blank lines before a request are ignored */
    size_t start = i;
    if (start > RAW_HEAD_MAX)
        return -1;
    for (int first = 1;; first = 0) {
        const char *nl = memchr(p + i, '\n', n - i);
        if (!nl)
            return n - start > RAW_HEAD_MAX ? -1 : 0;
        size_t e = (size_t)(nl - p), len = e - i;
        if (e - start > RAW_HEAD_MAX)
            return -1;
        if (len && p[e - 1] == '\r')
            len--;
        if (first) {
            if (raw_request_line(h, p + i, len))
                return -1;
        } else if (len == 0) {
            return (long)(e + 1);
        } else if (raw_header(h, p + i, len)) {
            return -1;
        }
        i = e + 1;
    }
}

static void rc_close(struct rconn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        g.rconns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    event_free(c->rev);
    event_free(c->wev);
    event_free(c->timer);
    evbuffer_free(c->in);
    evbuffer_free(c->out);
    evbuffer_free(c->body);
    evutil_closesocket(c->fd);
    free(c);
    if (opt.workers && g.lev && !g.stopping)
        event_add(g.lev, NULL); /* a worker takes the next connection */
    check_drained();
}

/* One send() per call (two calls: two segments, with Nagle deciding when
 * the second leaves); what does not fit waits in c->out. -1: peer gone. */
static int rc_send(struct rconn *c, const char *p, size_t n)
{
    if (evbuffer_get_length(c->out) == 0) {
        ssize_t w;
        do
            w = send(c->fd, p, n, MSG_NOSIGNAL);
        while (w < 0 && errno == EINTR);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        }
    }
    if (n) {
        if (evbuffer_add(c->out, p, n) != 0)
            die_oom();
        event_add(c->wev, NULL);
    }
    return 0;
}

/* Response head as Django's development server (wsgiref) writes it for
 * --split-writes, else as uwsgi passes the application's headers on. */
static void raw_head(sbuf *h, const struct reply *r)
{
    sb_printf(h, "HTTP/1.1 %d %s\r\n", r->status, reason_of(r->status));
    if (opt.split_writes) {
        char date[64];
        time_t t = time(NULL);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        sb_printf(h, "Date: %s\r\n", date);
        sb_puts(h, "Server: WSGIServer/0.2 CPython/3.11.2\r\n");
    }
    sb_puts(h, "Content-Type: ");
    sb_puts(h, r->ctype);
    sb_puts(h, "\r\nX-Frame-Options: DENY\r\n");
    sb_printf(h, "Content-Length: %zu\r\n", r->len);
    sb_puts(h, "X-Content-Type-Options: nosniff\r\nReferrer-Policy: same-origin\r\n");
    if (g.stopping)
        sb_puts(h, "Connection: close\r\n");
    sb_puts(h, "\r\n");
}

/* Write the answer. -1 when c is gone (closed here). */
static int rc_answer(struct rconn *c, int kind, const struct reply *r)
{
    g_raw.len = 0;
    raw_head(&g_raw, r);
    size_t blen = c->head ? 0 : r->len;
    int rc;
    if (kind == P_DROP) { /* headers and part of the body, then close */
        size_t cut = g_raw.len + (blen ? (size_t)(rnd_u64() % blen) : 0);
        sb_put(&g_raw, r->body, blen);
        ssize_t w = send(c->fd, g_raw.p, cut, MSG_NOSIGNAL | MSG_DONTWAIT);
        UNUSED(w);
        rc = -1;
    } else if (opt.split_writes) {
        rc = rc_send(c, g_raw.p, g_raw.len);
        if (rc == 0 && blen)
            rc = rc_send(c, r->body, blen);
    } else {
        sb_put(&g_raw, r->body, blen);
        rc = rc_send(c, g_raw.p, g_raw.len);
    }
    c->state = RC_IDLE;
    if (rc == 0 && c->close_after && opt.close_after_us > 0 && !g.stopping &&
        evbuffer_get_length(c->out) == 0) {
        /* uwsgi logs the request and runs its hooks between the answer and
         * the close, reading nothing meanwhile: a request that comes in
         * that window is closed unread, and the client gets a reset. */
        c->state = RC_CLOSING;
        event_del(c->rev);
        struct timeval tv = {opt.close_after_us / 1000000, opt.close_after_us % 1000000};
        evtimer_add(c->timer, &tv);
        return -1;
    }
    if (rc < 0 || (c->close_after && evbuffer_get_length(c->out) == 0)) {
        rc_close(c);
        return -1;
    }
    return 0;
}

static void rc_bad_request(struct rconn *c)
{
    static const char msg[] = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                              "Content-Length: 11\r\nConnection: close\r\n\r\nBad Request";
    c->close_after = 1;
    if (rc_send(c, msg, sizeof msg - 1) == 0)
        evbuffer_drain(c->in, evbuffer_get_length(c->in));
}

static void on_rc_timer(evutil_socket_t fd, short what, void *arg);

/* Hold the answer for r->delay_ms. */
static void rc_delay(struct rconn *c, int kind, const struct reply *r)
{
    c->state = RC_BUSY;
    c->kind = kind;
    c->r = *r;
    evbuffer_drain(c->body, evbuffer_get_length(c->body));
    if (evbuffer_add(c->body, r->body, r->len) != 0)
        die_oom();
    long ms = r->delay_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* Serve the next buffered request: 1 when one was taken, 0 when more data
 * is needed, -1 when c is gone. */
static int rc_next(struct rconn *c)
{
    size_t have = evbuffer_get_length(c->in);
    size_t look = have < RAW_HEAD_MAX + 2 ? have : RAW_HEAD_MAX + 2;
    const char *p = look ? (const char *)evbuffer_pullup(c->in, (ev_ssize_t)look) : "";
    struct rhead h;
    long hl = raw_parse_head(p, look, &h);
    if (hl == 0)
        return 0;
    if (hl < 0 || h.clen > RAW_BODY_MAX) {
        rc_bad_request(c);
        return 1;
    }
    size_t clen = h.clen > 0 ? (size_t)h.clen : 0, total = (size_t)hl + clen;
    if (have < total) {
        if (h.expect100 && h.minor == 1 && !c->sent100) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            c->sent100 = 1;
            if (rc_send(c, cont, sizeof cont - 1) < 0) {
                rc_close(c);
                return -1;
            }
        }
        return 0;
    }
    c->sent100 = 0;
    p = (const char *)evbuffer_pullup(c->in, (ev_ssize_t)total);
    struct rq q = {0};
    c->head = strcmp(h.method, "HEAD") == 0;
    q.get = c->head || strcmp(h.method, "GET") == 0;
    q.uri = h.uri;
    q.body = (const unsigned char *)p + hl;
    q.blen = clen;
    q.rid = h.has_rid ? h.rid : NULL;
    q.tok = h.has_tok ? h.tok : NULL;
    struct reply r;
    int kind = route(&q, &r);
    evbuffer_drain(c->in, total);
    int keep = h.minor == 1 ? !h.conn_close : h.conn_keep && !h.conn_close;
    c->close_after = !keep || opt.close_silently || g.stopping;
    if (kind == P_HANG || kind == P_ENDLESS) /* --endless is evhttp's: raw hangs */
        c->state = RC_HANG;
    else if (r.delay_ms > 0)
        rc_delay(c, kind, &r);
    else if (rc_answer(c, kind, &r) < 0)
        return -1;
    return 1;
}

/* Serve what is buffered, then close when due. -1 when c is gone. */
static int rc_pump(struct rconn *c)
{
    while (c->state == RC_IDLE && !c->close_after && evbuffer_get_length(c->out) == 0) {
        int rc = rc_next(c);
        if (rc < 0)
            return -1;
        if (rc == 0)
            break;
    }
    int idle = c->state == RC_IDLE && evbuffer_get_length(c->out) == 0;
    if ((idle && (c->close_after || c->peer_eof)) || (c->state == RC_HANG && c->peer_eof)) {
        rc_close(c);
        return -1;
    }
    return 0;
}

static void on_rc_timer(evutil_socket_t fd, short what, void *arg)
{
    struct rconn *c = arg;
    UNUSED(fd);
    UNUSED(what);
    if (c->state == RC_CLOSING) {
        rc_close(c);
        return;
    }
    c->r.body = (const char *)evbuffer_pullup(c->body, -1);
    if (rc_answer(c, c->kind, &c->r) == 0)
        rc_pump(c);
}

static void on_rc_read(evutil_socket_t fd, short what, void *arg)
{
    struct rconn *c = arg;
    UNUSED(what);
    char buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            if (evbuffer_add(c->in, buf, (size_t)n) != 0)
                die_oom();
            if ((size_t)n < sizeof buf)
                break;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n < 0) { /* reset: nothing more can be sent either */
            rc_close(c);
            return;
        }
        c->peer_eof = 1;
        event_del(c->rev);
        break;
    }
    rc_pump(c);
}

static void on_rc_write(evutil_socket_t fd, short what, void *arg)
{
    struct rconn *c = arg;
    UNUSED(what);
    int n = evbuffer_write(c->out, fd);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        rc_close(c);
        return;
    }
    if (evbuffer_get_length(c->out) == 0) {
        event_del(c->wev);
        rc_pump(c);
    }
}

static void rc_new(evutil_socket_t fd)
{
    struct rconn *c = calloc(1, sizeof *c);
    if (!c)
        die_oom();
    c->fd = fd;
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    c->body = evbuffer_new();
    c->rev = event_new(g.base, fd, EV_READ | EV_PERSIST, on_rc_read, c);
    c->wev = event_new(g.base, fd, EV_WRITE | EV_PERSIST, on_rc_write, c);
    c->timer = evtimer_new(g.base, on_rc_timer, c);
    if (!c->in || !c->out || !c->body || !c->rev || !c->wev || !c->timer ||
        event_add(c->rev, NULL) != 0)
        die_oom();
    c->next = g.rconns;
    if (g.rconns)
        g.rconns->prev = c;
    g.rconns = c;
}

/* Nagle stays on: accepted sockets never get TCP_NODELAY. A worker takes
 * one connection and leaves the rest in the kernel's accept queue. */
static void on_raw_accept(evutil_socket_t lfd, short what, void *arg)
{
    UNUSED(what);
    UNUSED(arg);
    for (;;) {
        if (opt.workers && g.rconns) {
            event_del(g.lev);
            return;
        }
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                fprintf(stderr, "mu-provider: accept: %s\n", strerror(errno));
            return;
        }
        rc_new(fd);
    }
}

/* After SIGTERM: close idle and hanging connections; the others close once
 * their answer is written. */
static void rc_stop_all(void)
{
    struct rconn *next;
    for (struct rconn *c = g.rconns; c; c = next) {
        next = c->next;
        c->close_after = 1;
        if (c->state == RC_HANG ||
            (c->state == RC_IDLE && evbuffer_get_length(c->out) == 0))
            rc_close(c);
    }
}

/* ------------------------------------------------------------ ZooKeeper */

static void print_ready(void)
{
    if (g.ready)
        return;
    g.ready = 1;
    printf("READY %d\n", g.port);
    fflush(stdout);
    if (opt.listen_delay_ms > 0) { /* registered; the port listens later */
        long ms = opt.listen_delay_ms;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(g.listen_ev, &tv);
    }
}

static void fatal_loop(const char *fmt, ...)
{
    va_list ap;
    fputs("mu-provider: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    g.exit_code = 1;
    event_base_loopbreak(g.base);
}

static const char kind_parent[] = "parent", kind_child[] = "child";

static void on_created(int rc, const char *value, const void *data)
{
    UNUSED(value);
    g.zk_outstanding--;
    if (g.stopping) /* closed on SIGTERM: ZCLOSING is expected */
        return;
    if (rc != ZOK && !(rc == ZNODEEXISTS && data == kind_parent)) {
        if (!g.exit_code)
            fatal_loop("create %s node failed: %s", (const char *)data, zerror(rc));
        return;
    }
    if (g.zk_outstanding == 0 && !g.exit_code)
        print_ready();
}

static int zk_create(const char *path, const char *data, size_t len, int mode, const char *kind)
{
    int rc = zoo_acreate(g.zh, path, data, (int)len, &ZOO_OPEN_ACL_UNSAFE, mode,
                         on_created, kind);
    if (rc != ZOK) {
        fatal_loop("zoo_acreate(%s): %s", path, zerror(rc));
        return -1;
    }
    g.zk_outstanding++;
    mu_zkloop_update(g.zl);
    return 0;
}

static int register_children(const char *provider_path, const char *data, size_t len,
                             const char *bad, size_t badlen)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/", provider_path);
    for (int i = 0; i < opt.dup; i++)
        if (zk_create(path, data, len, ZOO_EPHEMERAL_SEQUENTIAL, kind_child))
            return -1;
    if (bad && zk_create(path, bad, badlen, ZOO_EPHEMERAL_SEQUENTIAL, kind_child))
        return -1;
    return 0;
}

/* Issued all at once: one session executes its requests in order, so each
 * parent exists before its children are created. */
static void zk_register(void)
{
    sbuf d = {0}, bad = {0};
    char path[1024];
    g.zk_started = 1;
    sb_puts(&d, "{\"host\": ");
    json_str(&d, opt.host, strlen(opt.host));
    sb_printf(&d, ", \"port\": %d}", g.port);
    const char *badp = NULL;
    switch (opt.bad_znode) {
    case BAD_EMPTY: badp = ""; break;
    case BAD_NONJSON: sb_puts(&bad, "not json"); break;
    case BAD_NOPORT:
        sb_puts(&bad, "{\"host\": ");
        json_str(&bad, opt.host, strlen(opt.host));
        sb_putc(&bad, '}');
        break;
    case BAD_BADPORT:
        sb_puts(&bad, "{\"host\": ");
        json_str(&bad, opt.host, strlen(opt.host));
        sb_puts(&bad, ", \"port\": 70000}");
        break;
    default: break;
    }
    if (bad.len)
        badp = bad.p;
    g.zk_outstanding++; /* hold READY until every request is issued */
    if (zk_create("/dubbo", "", 0, 0, kind_parent))
        goto out;
    snprintf(path, sizeof path, "/dubbo/%s", opt.service);
    if (zk_create(path, "", 0, 0, kind_parent))
        goto out;
    if (opt.per_service) {
        snprintf(path, sizeof path, "/dubbo/%s/provider", opt.service);
        if (zk_create(path, "", 0, 0, kind_parent) ||
            register_children(path, d.p, d.len, badp, bad.len))
            goto out;
    } else {
        size_t nm = opt.methods ? opt.nmethods : NBUILTINS;
        for (size_t i = 0; i < nm; i++) {
            const char *m = opt.methods ? opt.methods[i] : builtins[i].name;
            snprintf(path, sizeof path, "/dubbo/%s/%s", opt.service, m);
            if (zk_create(path, "", 0, 0, kind_parent))
                goto out;
            snprintf(path, sizeof path, "/dubbo/%s/%s/provider", opt.service, m);
            if (zk_create(path, "", 0, 0, kind_parent) ||
                register_children(path, d.p, d.len, badp, bad.len))
                goto out;
        }
    }
    g.zk_outstanding--;
    if (g.zk_outstanding == 0 && !g.exit_code)
        print_ready();
out:
    sb_free(&d);
    sb_free(&bad);
}

/* Closing the handle is not allowed inside its callbacks: do it from here. */
static void on_zk_close(evutil_socket_t fd, short what, void *arg)
{
    UNUSED(fd);
    UNUSED(what);
    UNUSED(arg);
    if (g.zh) {
        mu_zkloop_attach(g.zl, NULL);
        zookeeper_close(g.zh);
        g.zh = NULL;
    }
}

static void zk_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    UNUSED(zh);
    UNUSED(path);
    UNUSED(ctx);
    if (type != ZOO_SESSION_EVENT)
        return;
    if (state == ZOO_CONNECTED_STATE) {
        if (!g.zk_started)
            zk_register();
    } else if (state == ZOO_EXPIRED_SESSION_STATE || state == ZOO_AUTH_FAILED_STATE) {
        /* Like the Python provider: no re-registration. */
        fprintf(stderr, "mu-provider: ZooKeeper session %s; not registering again\n",
                state == ZOO_EXPIRED_SESSION_STATE ? "expired" : "auth failed");
        if (!g.ready)
            fatal_loop("lost the ZooKeeper session before registering");
        struct timeval tv = {0, 0};
        evtimer_add(g.zk_close_ev, &tv);
    }
}

/* ------------------------------------------------------------ listening */

#define BACKLOG 4096

static int raw_mode(void)
{
    return opt.raw || opt.split_writes || opt.close_silently || opt.workers;
}

/* Bound at start so that the port is known, with SO_REUSEADDR so that a
 * restarted provider gets the same port at once; listen() may come later. */
static int open_socket(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons((uint16_t)opt.port);
    socklen_t sl = sizeof sin;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &sl) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    g.port = ntohs(sin.sin_port);
    return fd;
}

/* Take connections on g.lfd, which listens. Our own backlog: evhttp's of
 * 128 drops SYNs when a benchmark opens thousands of connections at once. */
static int serve_listener(void)
{
    if (raw_mode()) {
        g.lev = event_new(g.base, g.lfd, EV_READ | EV_PERSIST, on_raw_accept, NULL);
        return g.lev && event_add(g.lev, NULL) == 0 ? 0 : -1;
    }
    struct evconnlistener *lis = evconnlistener_new(
        g.base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, g.lfd);
    if (!lis)
        return -1;
    g.lfd = -1; /* the listener owns it now */
    g.bound = evhttp_bind_listener(g.http, lis);
    if (!g.bound) {
        evconnlistener_free(lis);
        return -1;
    }
    return 0;
}

/* --listen-delay-ms: registered a while ago, now the port listens. */
static void on_listen_timer(evutil_socket_t fd, short what, void *arg)
{
    UNUSED(fd);
    UNUSED(what);
    UNUSED(arg);
    if (g.stopping || g.lfd < 0)
        return;
    if (listen(g.lfd, BACKLOG) != 0) {
        fatal_loop("listen on 127.0.0.1:%d: %s", g.port, strerror(errno));
        return;
    }
    if (opt.workers) { /* the master serves nothing: let the workers go */
        close(g.go_fd);
        g.go_fd = -1;
    } else if (serve_listener() != 0) {
        fatal_loop("cannot serve 127.0.0.1:%d", g.port);
    }
}

/* Close the listening socket: connections are refused from now on. */
static void stop_listening(void)
{
    if (g.listen_ev)
        evtimer_del(g.listen_ev);
    if (g.bound) {
        evhttp_del_accept_socket(g.http, g.bound); /* closes the socket */
        g.bound = NULL;
    }
    if (g.lev) {
        event_free(g.lev);
        g.lev = NULL;
    }
    if (g.lfd >= 0) {
        close(g.lfd);
        g.lfd = -1;
    }
    if (g.go_fd >= 0) {
        close(g.go_fd);
        g.go_fd = -1;
    }
}

/* ------------------------------------------------------------ workers */

static void workers_signal(int sig)
{
    for (int i = 0; g.wpids && i < opt.workers; i++)
        if (g.wpids[i] > 0)
            kill(g.wpids[i], sig);
}

/* Wait for the workers; the first failure's exit code, else 0. */
static int reap_workers(void)
{
    int rc = 0;
    for (int i = 0; g.wpids && i < opt.workers; i++) {
        int st, code = 0;
        if (g.wpids[i] <= 0)
            continue;
        while (waitpid(g.wpids[i], &st, 0) < 0)
            if (errno != EINTR)
                goto next;
        if (WIFEXITED(st))
            code = WEXITSTATUS(st);
        else if (WIFSIGNALED(st) && WTERMSIG(st) != SIGTERM)
            code = 128 + WTERMSIG(st);
        if (code) {
            fprintf(stderr, "mu-provider: worker %d ended with status %d\n", (int)g.wpids[i],
                    code);
            if (!rc)
                rc = code;
        }
    next:
        g.wpids[i] = 0;
    }
    free(g.wpids);
    g.wpids = NULL;
    return rc;
}

/* In a worker under --listen-delay-ms: wait for the master to listen. */
static void worker_wait_go(int fd)
{
    char c;
    if (fd < 0)
        return;
    while (read(fd, &c, 1) < 0 && errno == EINTR)
        ;
    close(fd);
    int acc = 0;
    socklen_t len = sizeof acc;
    if (getsockopt(g.lfd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) != 0 || !acc)
        _exit(0); /* the master stopped before listening */
}

/* Fork the workers, once the socket is bound (and listens, unless
 * --listen-delay-ms: then they wait on a pipe the master closes). Before
 * any event base or ZooKeeper handle exists. 1 in a worker, 0 in the
 * master. */
static int spawn_workers(void)
{
    int go[2] = {-1, -1};
    if (opt.listen_delay_ms > 0 && pipe2(go, O_CLOEXEC) != 0) {
        perror("mu-provider: pipe");
        exit(1);
    }
    g.wpids = calloc((size_t)opt.workers, sizeof *g.wpids);
    if (!g.wpids)
        die_oom();
    pid_t master = getpid();
    fflush(NULL);
    for (int i = 0; i < opt.workers; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("mu-provider: fork");
            g.exit_code = 1;
            break;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* die with the master */
            if (getppid() != master)
                _exit(1);
            free(g.wpids);
            g.wpids = NULL;
            g.is_worker = 1;
            if (go[1] >= 0)
                close(go[1]);
            worker_wait_go(go[0]);
            g.rng ^= (uint64_t)getpid() << 32;
            return 1;
        }
        g.wpids[i] = pid;
    }
    if (go[0] >= 0)
        close(go[0]);
    g.go_fd = go[1];
    return 0;
}

/* ------------------------------------------------------------ stopping */

/* evhttp reports no failed write: an answer whose connection died is never
 * "complete". After 2 s with nothing pending, stop waiting for those. */
static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    UNUSED(fd);
    UNUSED(what);
    UNUSED(arg);
    if (g.pends || g.rconns)
        g.quiet_ticks = 0;
    else if (++g.quiet_ticks >= 8)
        event_base_loopbreak(g.base);
}

/* SIGTERM/SIGINT: refuse new connections, end the ZooKeeper session, and
 * exit once the requests already received are answered. A second signal:
 * exit now. */
static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    UNUSED(sig);
    UNUSED(what);
    UNUSED(arg);
    if (g.stopping) {
        event_base_loopbreak(g.base);
        return;
    }
    g.stopping = 1;
    workers_signal(SIGTERM);
    stop_listening();
    on_zk_close(-1, 0, NULL); /* our nodes vanish now */
    close_hung();
    rc_stop_all();
    struct timeval tv = {0, 250000};
    event_add(g.drain_ev, &tv);
    check_drained();
}

/* ------------------------------------------------------------ options */

static void usage(void)
{
    fputs("usage: mu-provider [--zk HOST:PORT[,..]] [--service NAME] [--port N] [--host ADDR]\n"
          "       [--variant 1.0.2|1.0.3|1.0.4|1.0.8]\n"
          "       [--layout per-method|per-service] [--path /json/] [--pickle 2|3|4|5]\n"
          "       [--auth TOKEN] [--delay-ms N] [--fail-rate P] [--hang] [--endless] [--drop-rate P]\n"
          "       [--tls-cert PEM --tls-key PEM] [--header-bytes N] [--redirect URL]\n"
          "       [--garbage] [--bad-znode empty|nonjson|noport|badport] [--dup N]\n"
          "       [--no-register] [--methods a,b,c] [--session-ms N]\n"
          "       [--listen-delay-ms N] [--split-writes] [--close-silently] [--close-after-us N]\n"
          "       [--workers N] [--raw]\n"
          "\n"
          "  --variant V          microutil variant: 1.0.2 /json/; 1.0.3 /jsonp/; 1.0.4\n"
          "                       (..1.0.7) /jsonp/ + micro-auth-token always checked,\n"
          "                       TOKEN micromicro unless --auth (wrong: 401 text,\n"
          "                       missing header: 400 InvalidRequestError); 1.0.8 as\n"
          "                       1.0.4 + per-service layout. --path/--auth/--layout win.\n"
          "  --listen-delay-ms N  register first, listen() N ms later (refused till then);\n"
          "                       READY is printed once registered, before listening\n"
          "  --split-writes       Django runserver: headers and body in two send()s with\n"
          "                       Nagle on (keep-alive clients stall ~40 ms per call)\n"
          "  --close-silently     uwsgi --http-socket: no Connection: close, then close\n"
          "  --close-after-us N   with --close-silently: close N us after the answer,\n"
          "                       reading nothing meanwhile (uwsgi's post-request work)\n"
          "  --workers N          uwsgi --http11-socket: N processes, one keep-alive\n"
          "                       connection each at a time; the master registers once;\n"
          "                       one send() per answer unless --split-writes\n"
          "  --stall-ms S --stall-every-ms P  answer nothing in the first S ms of every\n"
          "                       P ms (a GC pause); held answers go out when it ends\n"
          "  --raw                our own HTTP/1.1 server, plain keep-alive; closes idle\n"
          "                       connections at once on SIGTERM\n"
          "SIGTERM: refuse new connections, deregister, answer what was received, exit 0.\n",
          stderr);
    exit(2);
}

static long parse_long(const char *s, const char *what, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "mu-provider: bad %s: %s\n", what, s);
        usage();
    }
    return v;
}

static double parse_rate(const char *s, const char *what)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0 && v <= 1)) {
        fprintf(stderr, "mu-provider: bad %s (0..1): %s\n", what, s);
        usage();
    }
    return v;
}

static void parse_methods(const char *list)
{
    char *copy = strdup(list);
    if (!copy)
        die_oom();
    size_t n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    opt.methods = calloc(n + 1, sizeof *opt.methods);
    if (!opt.methods)
        die_oom();
    opt.nmethods = 0;
    for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (strchr(t, '/')) {
            fprintf(stderr, "mu-provider: bad method name: %s\n", t);
            usage();
        }
        opt.methods[opt.nmethods] = strdup(t);
        if (!opt.methods[opt.nmethods++])
            die_oom();
    }
    free(copy);
    if (opt.nmethods == 0) {
        fputs("mu-provider: --methods needs at least one name\n", stderr);
        usage();
    }
}

enum {
    OP_ZK = 256, OP_SERVICE, OP_PORT, OP_HOST, OP_LAYOUT, OP_PATH, OP_PICKLE, OP_AUTH,
    OP_DELAY, OP_FAIL, OP_HANG, OP_ENDLESS, OP_DROP, OP_GARBAGE, OP_BAD, OP_DUP, OP_NOREG,
    OP_METHODS, OP_SESSION, OP_VARIANT, OP_LDELAY, OP_SPLIT, OP_CLOSE, OP_CLOSE_US, OP_WORKERS, OP_RAW, OP_STALL, OP_STALL_EVERY, OP_TLS_CERT, OP_TLS_KEY, OP_HEADER_BYTES, OP_REDIRECT, OP_HELP
};

/* What was given explicitly: it wins over --variant. */
struct given {
    const char *variant;
    int path, auth, layout;
};

static int parse_bad_znode(const char *s)
{
    static const char *const names[] = {"empty", "nonjson", "noport", "badport"};
    static const int kinds[] = {BAD_EMPTY, BAD_NONJSON, BAD_NOPORT, BAD_BADPORT};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i]) == 0)
            return kinds[i];
    usage();
    return BAD_NONE;
}

static void parse_opt(int c, const char *arg, struct given *gv)
{
    switch (c) {
    case OP_ZK: opt.zk = arg; break;
    case OP_SERVICE:
        if (!*arg || strchr(arg, '/'))
            usage();
        opt.service = arg;
        break;
    case OP_PORT: opt.port = (int)parse_long(arg, "port", 0, 65535); break;
    case OP_HOST: opt.host = arg; break;
    case OP_LAYOUT:
        if (strcmp(arg, "per-method") != 0 && strcmp(arg, "per-service") != 0)
            usage();
        opt.per_service = strcmp(arg, "per-service") == 0;
        gv->layout = 1;
        break;
    case OP_PATH:
        if (arg[0] != '/')
            usage();
        opt.path = arg;
        gv->path = 1;
        break;
    case OP_PICKLE: opt.proto = (int)parse_long(arg, "pickle protocol", 2, 5); break;
    case OP_AUTH: opt.auth = arg; gv->auth = 1; break;
    case OP_DELAY: opt.delay_ms = parse_long(arg, "delay", 0, 3600000); break;
    case OP_FAIL: opt.fail_rate = parse_rate(arg, "fail rate"); break;
    case OP_HANG: opt.hang = 1; break;
    case OP_ENDLESS: opt.endless = 1; break;
    case OP_TLS_CERT: opt.tls_cert = arg; break;
    case OP_HEADER_BYTES: opt.header_bytes = atol(arg); break;
    case OP_REDIRECT: opt.redirect = arg; break;
    case OP_TLS_KEY: opt.tls_key = arg; break;
    case OP_DROP: opt.drop_rate = parse_rate(arg, "drop rate"); break;
    case OP_GARBAGE: opt.garbage = 1; break;
    case OP_BAD: opt.bad_znode = parse_bad_znode(arg); break;
    case OP_DUP: opt.dup = (int)parse_long(arg, "dup", 0, 10000); break;
    case OP_NOREG: opt.no_register = 1; break;
    case OP_METHODS:
        if (opt.methods)
            usage();
        parse_methods(arg);
        break;
    case OP_SESSION: opt.session_ms = (int)parse_long(arg, "session timeout", 1, 3600000); break;
    case OP_VARIANT: gv->variant = arg; break;
    case OP_LDELAY: opt.listen_delay_ms = parse_long(arg, "listen delay", 0, 3600000); break;
    case OP_SPLIT: opt.split_writes = 1; break;
    case OP_RAW: opt.raw = 1; break;
    case OP_STALL: opt.stall_ms = parse_long(arg, "stall-ms", 0, 3600000); break;
    case OP_STALL_EVERY: opt.stall_every_ms = parse_long(arg, "stall-every-ms", 1, 3600000); break;
    case OP_CLOSE: opt.close_silently = 1; break;
    case OP_CLOSE_US: opt.close_after_us = parse_long(arg, "close-after-us", 0, 10000000); break;
    case OP_WORKERS: opt.workers = (int)parse_long(arg, "workers", 1, 256); break;
    default: usage();
    }
}

/* docs/protocol.md §5: the variants. */
static void apply_variant(const struct given *gv)
{
    const char *v = gv->variant;
    if (!v)
        return;
    if (strncmp(v, "1.0.", 4) != 0 || v[4] < '2' || v[4] > '8' || v[5]) {
        fprintf(stderr, "mu-provider: unknown variant %s\n", v);
        usage();
    }
    int minor = v[4] - '0';
    if (!gv->path)
        opt.path = minor == 2 ? "/json/" : "/jsonp/";
    if (minor >= 4) {
        if (!gv->auth)
            opt.auth = "micromicro";
        opt.auth_missing_400 = 1;
    }
    if (!gv->layout)
        opt.per_service = minor >= 8;
}

static void parse_args(int argc, char **argv)
{
    static const struct option lo[] = {
        {"zk", required_argument, NULL, OP_ZK},
        {"service", required_argument, NULL, OP_SERVICE},
        {"port", required_argument, NULL, OP_PORT},
        {"host", required_argument, NULL, OP_HOST},
        {"layout", required_argument, NULL, OP_LAYOUT},
        {"path", required_argument, NULL, OP_PATH},
        {"pickle", required_argument, NULL, OP_PICKLE},
        {"auth", required_argument, NULL, OP_AUTH},
        {"delay-ms", required_argument, NULL, OP_DELAY},
        {"fail-rate", required_argument, NULL, OP_FAIL},
        {"hang", no_argument, NULL, OP_HANG},
        {"endless", no_argument, NULL, OP_ENDLESS},
        {"drop-rate", required_argument, NULL, OP_DROP},
        {"garbage", no_argument, NULL, OP_GARBAGE},
        {"bad-znode", required_argument, NULL, OP_BAD},
        {"dup", required_argument, NULL, OP_DUP},
        {"no-register", no_argument, NULL, OP_NOREG},
        {"methods", required_argument, NULL, OP_METHODS},
        {"session-ms", required_argument, NULL, OP_SESSION},
        {"variant", required_argument, NULL, OP_VARIANT},
        {"listen-delay-ms", required_argument, NULL, OP_LDELAY},
        {"split-writes", no_argument, NULL, OP_SPLIT},
        {"raw", no_argument, NULL, OP_RAW},
        {"stall-ms", required_argument, NULL, OP_STALL},
        {"stall-every-ms", required_argument, NULL, OP_STALL_EVERY},
        {"close-silently", no_argument, NULL, OP_CLOSE},
        {"close-after-us", required_argument, NULL, OP_CLOSE_US},
        {"workers", required_argument, NULL, OP_WORKERS},
        {"tls-cert", required_argument, NULL, OP_TLS_CERT},
        {"header-bytes", required_argument, NULL, OP_HEADER_BYTES},
        {"redirect", required_argument, NULL, OP_REDIRECT},
        {"tls-key", required_argument, NULL, OP_TLS_KEY},
        {"help", no_argument, NULL, OP_HELP},
        {NULL, 0, NULL, 0},
    };
    struct given gv = {0};
    opt.service = "micro";
    opt.host = "127.0.0.1";
    opt.path = "/json/";
    opt.proto = 4;
    opt.dup = 1;
    opt.session_ms = 10000;
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1)
        parse_opt(c, optarg, &gv);
    if (optind != argc)
        usage();
    apply_variant(&gv);
    opt.path_len = strlen(opt.path);
}

/* ------------------------------------------------------------ main */

/* Options, process limits, the bound (maybe listening) socket, workers. */
static int setup_process(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    g.lfd = g.go_fd = -1;
    g.rng = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ 0x9e3779b97f4a7c15ULL;
    if (!g.rng)
        g.rng = 1;

    /* thousands of concurrent connections need more than 1024 fds */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    g.lfd = open_socket();
    if (g.lfd < 0 || (opt.listen_delay_ms <= 0 && listen(g.lfd, BACKLOG) != 0)) {
        fprintf(stderr, "mu-provider: cannot listen on 127.0.0.1:%d: %s\n", opt.port,
                strerror(errno));
        return -1;
    }
    if (opt.workers)
        spawn_workers();
    return g.exit_code ? -1 : 0;
}

static struct event_base *new_base(void)
{
    /* evhttp enables and disables reading around every request: the epoll
     * changelist folds that into fewer epoll_ctl calls. */
    struct event_base *base = NULL;
    struct event_config *cfg = event_config_new();
    if (cfg) {
        event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
        base = event_base_new_with_config(cfg);
        event_config_free(cfg);
    }
    return base ? base : event_base_new();
}

static void start_zk(void)
{
    if (!opt.zk || opt.no_register) {
        print_ready();
        return;
    }
    zoo_set_debug_level(ZOO_LOG_LEVEL_WARN);
    g.zl = mu_zkloop_new(g.base);
    g.zh = g.zl ? zookeeper_init(opt.zk, zk_watcher, opt.session_ms, NULL, NULL, 0) : NULL;
    if (!g.zh) {
        fprintf(stderr, "mu-provider: zookeeper_init(%s) failed: %s\n", opt.zk, strerror(errno));
        g.exit_code = 1;
    } else {
        mu_zkloop_attach(g.zl, g.zh);
    }
}

/* --tls-cert/--tls-key: every connection evhttp accepts is a TLS server
 * connection (libevent's OpenSSL bufferevents). */
static SSL_CTX *g_tls_ctx; /* freed at exit */
static struct bufferevent *tls_bev(struct event_base *base, void *arg)
{
    SSL *ssl = SSL_new(arg);
    return ssl ? bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE)
               : NULL;
}

static int setup_tls(void)
{
    if (!opt.tls_cert && !opt.tls_key)
        return 0;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx)
        g_tls_ctx = ctx;
    if (!ctx || !opt.tls_cert || !opt.tls_key ||
        SSL_CTX_use_certificate_chain_file(ctx, opt.tls_cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, opt.tls_key, SSL_FILETYPE_PEM) != 1) {
        fputs("mu-provider: --tls-cert and --tls-key need a PEM certificate and its key\n", stderr);
        return -1;
    }
    evhttp_set_bevcb(g.http, tls_bev, ctx);
    g_tls_ctx = ctx;
    return 0;
}

/* The event loop's parts. A worker serves and does not register; the
 * workers' master registers and does not serve. */
static int setup_loop(void)
{
    g.base = new_base();
    if (g.base && !raw_mode()) {
        g.http = evhttp_new(g.base);
        if (g.http) {
            evhttp_set_gencb(g.http, on_request, NULL);
            evhttp_set_allowed_methods(
                g.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                            EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS);
        }
    }
    if (!g.base || (!raw_mode() && !g.http)) {
        fputs("mu-provider: libevent setup failed\n", stderr);
        return -1;
    }
    if (!raw_mode() && setup_tls() != 0)
        return -1;
    g.sigterm = evsignal_new(g.base, SIGTERM, on_signal, NULL);
    g.sigint = evsignal_new(g.base, SIGINT, on_signal, NULL);
    g.zk_close_ev = evtimer_new(g.base, on_zk_close, NULL);
    g.listen_ev = evtimer_new(g.base, on_listen_timer, NULL);
    g.drain_ev = event_new(g.base, -1, EV_PERSIST, on_drain_tick, NULL);
    if (!g.sigterm || !g.sigint || !g.zk_close_ev || !g.listen_ev || !g.drain_ev)
        die_oom();
    event_add(g.sigterm, NULL);
    event_add(g.sigint, NULL);
    int serve = g.is_worker || (!opt.workers && opt.listen_delay_ms <= 0);
    if (serve && serve_listener() != 0) {
        fprintf(stderr, "mu-provider: cannot serve 127.0.0.1:%d\n", g.port);
        return -1;
    }
    if (!g.is_worker)
        start_zk();
    return g.exit_code ? -1 : 0;
}

static void free_event(struct event *ev)
{
    if (ev)
        event_free(ev);
}

static int teardown(void)
{
    if (g.zh) {
        mu_zkloop_attach(g.zl, NULL);
        zookeeper_close(g.zh); /* ends the session: our nodes go at once */
        g.zh = NULL;
    }
    mu_zkloop_free(g.zl);
    stop_listening();
    while (g.rconns)
        rc_close(g.rconns);
    if (g.http)
        evhttp_free(g.http); /* pending answers are released by on_conn_close */
    if (g_tls_ctx)
        SSL_CTX_free(g_tls_ctx);
    while (g.pends)
        pend_free(g.pends);
    int rc = g.exit_code;
    if (g.wpids) {
        if (!g.stopping) /* a second SIGTERM would cut their answers short */
            workers_signal(SIGTERM);
        int w = reap_workers();
        if (!rc)
            rc = w;
    }
    free_event(g.sigterm);
    free_event(g.sigint);
    free_event(g.zk_close_ev);
    free_event(g.listen_ev);
    free_event(g.drain_ev);
    if (g.base)
        event_base_free(g.base);
    libevent_global_shutdown();
    arena_reset(1);
    sb_free(&g_json);
    sb_free(&g_lz);
    sb_free(&g_raw);
    for (size_t i = 0; i < opt.nmethods; i++)
        free(opt.methods[i]);
    free(opt.methods);
    return rc;
}

int main(int argc, char **argv)
{
    if (setup_process(argc, argv) == 0 && setup_loop() == 0)
        event_base_dispatch(g.base);
    else if (!g.exit_code)
        g.exit_code = 1;
    return teardown();
}
