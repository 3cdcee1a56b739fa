/*
 * mu-provider: a test stand-in for a Python microutil 1.0.2 provider.
 *
 * One thread, one libevent loop: evhttp serves POST <path>, zookeeper_st
 * (driven by zkloop) registers the provider nodes. Responses are built to be
 * byte-for-byte what the Python provider sends: Python json.dumps text,
 * pickled as CPython's _pickle.c does it, LZ4-compressed above 4096 bytes.
 * Fault switches (--delay-ms, --fail-rate, --hang, --drop-rate, --garbage,
 * --bad-znode, --dup) let the tests exercise the SDK's error paths.
 *
 * Prints "READY <port>" on stdout once listening and registered.
 * SIGTERM/SIGINT: close the ZooKeeper session (nodes vanish) and free all.
 */
#include "zkloop.h"

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
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
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
    double drop_rate;
    int garbage;
    int bad_znode;
    int dup;
    int no_register;
    char **methods; /* NULL: all built-ins */
    size_t nmethods;
    int session_ms;
} opt;

/* ------------------------------------------------------------ runtime */

struct pend;

static struct {
    struct event_base *base;
    struct evhttp *http;
    int port;
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

enum { P_REPLY, P_DROP, P_HANG };

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
    if (evhttp_request_get_connection(p->req) == NULL)
        evhttp_request_free(p->req);
    pend_free(p);
}

static void send_now(struct evhttp_request *req, int status, const char *ctype,
                     const char *body, size_t len, struct evbuffer *buf)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
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

static int auth_ok(struct evhttp_request *req)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *rid = evhttp_find_header(in, "micro-request-id");
    const char *tok = evhttp_find_header(in, "micro-auth-token");
    if (!rid || !tok)
        return 0;
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
        return 0;
    char hex[33];
    for (unsigned i = 0; i < 16; i++) {
        hex[2 * i] = hexd[md[i] >> 4];
        hex[2 * i + 1] = hexd[md[i] & 15];
    }
    hex[32] = 0;
    return strcmp(hex, tok) == 0;
}

static void handle_rpc(struct evhttp_request *req, struct reply *r)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const unsigned char *text = len ? evbuffer_pullup(in, -1) : (const unsigned char *)"";
    jnode *root = memchr(text, 0, len) ? NULL : json_parse(text, len);
    if (!root || root->type != J_OBJ) {
        json_error(NULL, "InvalidRequestError", -32600, "InvalidRequestError: Invalid Request.");
        set_json_reply(r, 400);
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

static void on_request(struct evhttp_request *req, void *arg)
{
    UNUSED(arg);
    const char *uri = evhttp_request_get_uri(req);
    size_t plen = strcspn(uri, "?#");
    struct reply r = {0};
    r.delay_ms = opt.delay_ms;
    if (plen != opt.path_len || memcmp(uri, opt.path, plen) != 0) {
        static const char nf[] = "<h1>Not Found</h1><p>The requested resource was not found on this server.</p>";
        r.status = 404;
        r.ctype = "text/html; charset=utf-8";
        r.body = nf;
        r.len = sizeof nf - 1;
        deliver(req, P_REPLY, &r);
        return;
    }
    if (opt.hang) {
        deliver(req, P_HANG, NULL);
        return;
    }
    int kind = roll(opt.drop_rate) ? P_DROP : P_REPLY;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (opt.garbage) {
        r.status = 200;
        r.ctype = ctype_rpc;
        r.body = garbage;
        r.len = sizeof garbage - 1;
    } else if (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD) {
        json_error(NULL, "InvalidRequestError", -32600,
                   "InvalidRequestError: The method not support GET requests");
        set_json_reply(&r, 400);
    } else if (opt.auth && !auth_ok(req)) {
        static const char un[] = "Unauthorized";
        r.status = 401;
        r.ctype = "text/plain; charset=utf-8";
        r.body = un;
        r.len = sizeof un - 1;
    } else {
        handle_rpc(req, &r);
        arena_reset(0);
    }
    deliver(req, kind, &r);
}

/* ------------------------------------------------------------ ZooKeeper */

static void print_ready(void)
{
    if (g.ready)
        return;
    g.ready = 1;
    printf("READY %d\n", g.port);
    fflush(stdout);
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

/* ------------------------------------------------------------ main */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    UNUSED(sig);
    UNUSED(what);
    UNUSED(arg);
    event_base_loopbreak(g.base);
}

static void usage(void)
{
    fputs("usage: mu-provider [--zk HOST:PORT[,..]] [--service NAME] [--port N] [--host ADDR]\n"
          "       [--layout per-method|per-service] [--path /json/] [--pickle 2|3|4|5]\n"
          "       [--auth TOKEN] [--delay-ms N] [--fail-rate P] [--hang] [--drop-rate P]\n"
          "       [--garbage] [--bad-znode empty|nonjson|noport|badport] [--dup N]\n"
          "       [--no-register] [--methods a,b,c] [--session-ms N]\n",
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

static void parse_args(int argc, char **argv)
{
    enum {
        O_ZK = 256, O_SERVICE, O_PORT, O_HOST, O_LAYOUT, O_PATH, O_PICKLE, O_AUTH,
        O_DELAY, O_FAIL, O_HANG, O_DROP, O_GARBAGE, O_BAD, O_DUP, O_NOREG,
        O_METHODS, O_SESSION, O_HELP
    };
    static const struct option lo[] = {
        {"zk", required_argument, NULL, O_ZK},
        {"service", required_argument, NULL, O_SERVICE},
        {"port", required_argument, NULL, O_PORT},
        {"host", required_argument, NULL, O_HOST},
        {"layout", required_argument, NULL, O_LAYOUT},
        {"path", required_argument, NULL, O_PATH},
        {"pickle", required_argument, NULL, O_PICKLE},
        {"auth", required_argument, NULL, O_AUTH},
        {"delay-ms", required_argument, NULL, O_DELAY},
        {"fail-rate", required_argument, NULL, O_FAIL},
        {"hang", no_argument, NULL, O_HANG},
        {"drop-rate", required_argument, NULL, O_DROP},
        {"garbage", no_argument, NULL, O_GARBAGE},
        {"bad-znode", required_argument, NULL, O_BAD},
        {"dup", required_argument, NULL, O_DUP},
        {"no-register", no_argument, NULL, O_NOREG},
        {"methods", required_argument, NULL, O_METHODS},
        {"session-ms", required_argument, NULL, O_SESSION},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    opt.service = "micro";
    opt.host = "127.0.0.1";
    opt.path = "/json/";
    opt.proto = 4;
    opt.dup = 1;
    opt.session_ms = 10000;
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_ZK: opt.zk = optarg; break;
        case O_SERVICE:
            if (!*optarg || strchr(optarg, '/'))
                usage();
            opt.service = optarg;
            break;
        case O_PORT: opt.port = (int)parse_long(optarg, "port", 0, 65535); break;
        case O_HOST: opt.host = optarg; break;
        case O_LAYOUT:
            if (strcmp(optarg, "per-method") == 0)
                opt.per_service = 0;
            else if (strcmp(optarg, "per-service") == 0)
                opt.per_service = 1;
            else
                usage();
            break;
        case O_PATH:
            if (optarg[0] != '/')
                usage();
            opt.path = optarg;
            break;
        case O_PICKLE: opt.proto = (int)parse_long(optarg, "pickle protocol", 2, 5); break;
        case O_AUTH: opt.auth = optarg; break;
        case O_DELAY: opt.delay_ms = parse_long(optarg, "delay", 0, 3600000); break;
        case O_FAIL: opt.fail_rate = parse_rate(optarg, "fail rate"); break;
        case O_HANG: opt.hang = 1; break;
        case O_DROP: opt.drop_rate = parse_rate(optarg, "drop rate"); break;
        case O_GARBAGE: opt.garbage = 1; break;
        case O_BAD:
            if (strcmp(optarg, "empty") == 0)
                opt.bad_znode = BAD_EMPTY;
            else if (strcmp(optarg, "nonjson") == 0)
                opt.bad_znode = BAD_NONJSON;
            else if (strcmp(optarg, "noport") == 0)
                opt.bad_znode = BAD_NOPORT;
            else if (strcmp(optarg, "badport") == 0)
                opt.bad_znode = BAD_BADPORT;
            else
                usage();
            break;
        case O_DUP: opt.dup = (int)parse_long(optarg, "dup", 0, 10000); break;
        case O_NOREG: opt.no_register = 1; break;
        case O_METHODS:
            if (opt.methods)
                usage();
            parse_methods(optarg);
            break;
        case O_SESSION: opt.session_ms = (int)parse_long(optarg, "session timeout", 1, 3600000); break;
        default: usage();
        }
    }
    if (optind != argc)
        usage();
    opt.path_len = strlen(opt.path);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    g.rng = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ 0x9e3779b97f4a7c15ULL;
    if (!g.rng)
        g.rng = 1;

    /* thousands of concurrent connections need more than 1024 fds */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    /* evhttp enables and disables reading around every request: the epoll
     * changelist folds that into fewer epoll_ctl calls. */
    struct event_config *cfg = event_config_new();
    if (cfg) {
        event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
        g.base = event_base_new_with_config(cfg);
        event_config_free(cfg);
    }
    if (!g.base)
        g.base = event_base_new();
    g.http = g.base ? evhttp_new(g.base) : NULL;
    if (!g.http) {
        fputs("mu-provider: libevent setup failed\n", stderr);
        return 1;
    }
    evhttp_set_gencb(g.http, on_request, NULL);
    evhttp_set_allowed_methods(g.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                           EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                           EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS);

    /* Our own listener: evhttp_bind_socket's backlog of 128 drops SYNs
     * when a benchmark opens thousands of connections at once. */
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons((uint16_t)opt.port);
    struct evconnlistener *lis = evconnlistener_new_bind(
        g.base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
        4096, (struct sockaddr *)&sin, sizeof sin);
    if (!lis || !evhttp_bind_listener(g.http, lis)) {
        fprintf(stderr, "mu-provider: cannot listen on 127.0.0.1:%d: %s\n", opt.port,
                strerror(errno));
        if (lis)
            evconnlistener_free(lis);
        evhttp_free(g.http);
        event_base_free(g.base);
        return 1;
    }
    socklen_t sl = sizeof sin;
    getsockname(evconnlistener_get_fd(lis), (struct sockaddr *)&sin, &sl);
    g.port = ntohs(sin.sin_port);

    struct event *sigterm = evsignal_new(g.base, SIGTERM, on_signal, NULL);
    struct event *sigint = evsignal_new(g.base, SIGINT, on_signal, NULL);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    g.zk_close_ev = evtimer_new(g.base, on_zk_close, NULL);

    if (opt.zk && !opt.no_register) {
        zoo_set_debug_level(ZOO_LOG_LEVEL_WARN);
        g.zl = mu_zkloop_new(g.base);
        g.zh = g.zl ? zookeeper_init(opt.zk, zk_watcher, opt.session_ms, NULL, NULL, 0) : NULL;
        if (!g.zh) {
            fprintf(stderr, "mu-provider: zookeeper_init(%s) failed: %s\n", opt.zk,
                    strerror(errno));
            g.exit_code = 1;
        } else {
            mu_zkloop_attach(g.zl, g.zh);
        }
    } else {
        print_ready();
    }

    if (!g.exit_code)
        event_base_dispatch(g.base);

    if (g.zh) {
        mu_zkloop_attach(g.zl, NULL);
        zookeeper_close(g.zh); /* ends the session: our nodes go at once */
        g.zh = NULL;
    }
    mu_zkloop_free(g.zl);
    evhttp_free(g.http); /* pending answers are released by on_conn_close */
    while (g.pends)
        pend_free(g.pends);
    event_free(sigterm);
    event_free(sigint);
    event_free(g.zk_close_ev);
    event_base_free(g.base);
    libevent_global_shutdown();
    arena_reset(1);
    sb_free(&g_json);
    sb_free(&g_lz);
    sb_free(&g_raw);
    for (size_t i = 0; i < opt.nmethods; i++)
        free(opt.methods[i]);
    free(opt.methods);
    return g.exit_code;
}
