#include "config.h"
#include "codec.h"

#include <lz4.h>
#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

/* ============================================================= yajl memory */

/* Each block starts with its usable size; the union keeps what follows
 * aligned as malloc would. Blocks over 64 KiB (a huge escaped string) are
 * not kept. */
typedef union ya_hdr {
    size_t cap;
    max_align_t align;
} ya_hdr;

#define YA_KEEP_MAX (64u * 1024u)

/* Sizes are rounded up to 64 bytes, so that a parse asks for the sizes the
 * last one freed: the best fit is usually an exact one. */
static void *ya_malloc(void *ctx, size_t sz)
{
    mu_yajl_cache *c = ctx;
    if (sz > SIZE_MAX - sizeof(ya_hdr) - 64)
        return NULL;
    size_t want = sz < 64 ? 64 : (sz + 63) & ~(size_t)63;
    size_t best = c->n;
    for (size_t i = 0; i < c->n; i++) {
        size_t cap = ((ya_hdr *)c->blocks[i])->cap;
        if (cap >= want && (best == c->n || cap < ((ya_hdr *)c->blocks[best])->cap)) {
            best = i;
            if (cap == want)
                break;
        }
    }
    ya_hdr *h;
    if (best < c->n) {
        h = c->blocks[best];
        c->blocks[best] = c->blocks[--c->n];
    } else {
        if (!(h = malloc(sizeof *h + want)))
            return NULL;
        h->cap = want;
    }
    return h + 1;
}

static void ya_free(void *ctx, void *p)
{
    mu_yajl_cache *c = ctx;
    if (!p)
        return;
    ya_hdr *h = (ya_hdr *)p - 1;
    if (c->n < MU_YAJL_CACHE_SLOTS && h->cap <= YA_KEEP_MAX)
        c->blocks[c->n++] = h;
    else
        free(h);
}

static void *ya_realloc(void *ctx, void *p, size_t sz)
{
    if (!p)
        return ya_malloc(ctx, sz);
    ya_hdr *h = (ya_hdr *)p - 1;
    if (h->cap >= sz)
        return p;
    void *q = ya_malloc(ctx, sz);
    if (!q)
        return NULL;
    memcpy(q, p, h->cap);
    ya_free(ctx, p);
    return q;
}

void mu_yajl_cache_clear(mu_yajl_cache *c)
{
    while (c->n)
        free(c->blocks[--c->n]);
}

/* yajl_alloc() with the cache's functions, or yajl's own when cache is NULL. */
static yajl_handle ya_parser(mu_yajl_cache *cache, const yajl_callbacks *cb, void *ctx)
{
    if (!cache)
        return yajl_alloc(cb, NULL, ctx);
    yajl_alloc_funcs afs = {ya_malloc, ya_realloc, ya_free, cache};
    return yajl_alloc(cb, &afs, ctx);
}

/* ================================================================ requests */

static void gen_print(void *ctx, const char *s, size_t len)
{
    mu_encoder *e = ctx;
    if (e->target)
        mu_buf_append(e->target, s, len);
}

int mu_encoder_init(mu_encoder *e)
{
    e->target = NULL;
    e->gen = yajl_gen_alloc(NULL);
    if (!e->gen)
        return -1;
    yajl_gen_config(e->gen, yajl_gen_print_callback, gen_print, e);
    return 0;
}

void mu_encoder_cleanup(mu_encoder *e)
{
    if (e->gen)
        yajl_gen_free(e->gen);
    e->gen = NULL;
}

int mu_json_check(const char *text, size_t len, char want, char *err, size_t errcap)
{
    return mu_json_check_cached(NULL, text, len, want, err, errcap);
}

int mu_json_check_cached(mu_yajl_cache *cache, const char *text, size_t len, char want, char *err,
                         size_t errcap)
{
    const char *what = want == '[' ? "args" : "kwargs";
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r'))
        i++;
    if (i == len || text[i] != want) {
        mu_fmt(err, errcap, "%s must be a JSON %s", what, want == '[' ? "array" : "object");
        return -1;
    }
    yajl_handle h = ya_parser(cache, NULL, NULL);
    if (!h) {
        mu_fmt(err, errcap, "out of memory");
        return -1;
    }
    yajl_status st = yajl_parse(h, (const unsigned char *)text, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    int rc = 0;
    if (st != yajl_status_ok) {
        unsigned char *msg = yajl_get_error(h, 0, (const unsigned char *)text, len);
        mu_fmt(err, errcap, "%s is not valid JSON: %s", what, msg ? (const char *)msg : "?");
        if (msg)
            yajl_free_error(h, msg);
        rc = -1;
    }
    yajl_free(h);
    return rc;
}

int mu_encode_request_prefix(mu_encoder *e, mu_buf *out, const char *method, size_t method_len,
                             const char *args, size_t args_len, const char *kwargs,
                             size_t kwargs_len)
{
    size_t before = out->len;
    if (mu_buf_append(out, "{\"version\": \"1.0\", \"method\": ", 29) != 0)
        return -1;
    /* yajl does the string escaping; reset so it accepts a new top-level value. */
    yajl_gen_reset(e->gen, NULL);
    e->target = out;
    yajl_gen_status gs = yajl_gen_string(e->gen, (const unsigned char *)method, method_len);
    e->target = NULL;
    if (gs != yajl_gen_status_ok || out->len == before + 29) {
        out->len = before;
        return -1;
    }
    if (mu_buf_append(out, ", \"args\": ", 10) != 0 || mu_buf_append(out, args, args_len) != 0 ||
        mu_buf_append(out, ", \"kwargs\": ", 12) != 0 ||
        mu_buf_append(out, kwargs, kwargs_len) != 0 ||
        mu_buf_append(out, ", \"request_id\": \"", 17) != 0)
        return -1;
    return 0;
}

int mu_encode_request_finish(mu_buf *out, size_t prefix_len, const char *request_id)
{
    out->len = prefix_len;
    if (mu_buf_append(out, request_id, strlen(request_id)) != 0 || mu_buf_append(out, "\"}", 2) != 0)
        return -1;
    return 0;
}

int mu_auth_token(const char *token, const char *request_id, char out[MU_AUTH_TOKEN_LEN + 1])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_md5(), NULL);
    for (int i = 0; ok && i < 3; i++)
        ok = EVP_DigestUpdate(ctx, token, strlen(token)) &&
             EVP_DigestUpdate(ctx, request_id, strlen(request_id));
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) && mdlen == 16;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return -1;
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 16; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[32] = '\0';
    return 0;
}

/* =============================================================== responses */

void mu_decoder_init(mu_decoder *d, size_t max_size)
{
    memset(d, 0, sizeof *d);
    d->max_size = max_size ? max_size : MU_DEFAULT_MAX_RESPONSE;
}

void mu_decoder_cleanup(mu_decoder *d)
{
    mu_buf_free(&d->plain);
    mu_buf_free(&d->scratch);
}

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* ---- the pickle -------------------------------------------------------- */

/* mu_unpickle_str's state: the input, the position, what has been seen. */
typedef struct unpickler {
    const unsigned char *p;
    size_t len;
    size_t i; /* the next byte */
    int proto, have_str, have_memo;
    const char **str; /* the caller's outputs, set by the string opcode */
    size_t *str_len;
    char *err;
    size_t errcap;
} unpickler;

/* What one opcode did: go on to the next, the pickle ended, or it failed
 * (PK_BAD_OP: refused where it stands; PK_FAIL: err is already written). */
enum { PK_NEXT, PK_STOP, PK_BAD_OP, PK_FAIL };

/* 1 if n more bytes are there, else 0 with err saying where it was cut. */
static int pk_need(unpickler *u, size_t n, const char *what)
{
    if (u->len - u->i < n) {
        mu_fmt(u->err, u->errcap, "pickle truncated in %s at offset %zu", what, u->i);
        return 0;
    }
    return 1;
}

/* PROTO 2 to 5, the first two bytes. */
static mu_status pk_header(unpickler *u)
{
    if (!pk_need(u, 2, "PROTO"))
        return MU_EPROTOCOL;
    if (u->p[0] != 0x80) {
        mu_fmt(u->err, u->errcap, "pickle does not start with PROTO (byte 0x%02x)", u->p[0]);
        return MU_EPROTOCOL;
    }
    u->proto = u->p[1];
    if (u->proto < 2 || u->proto > 5) {
        mu_fmt(u->err, u->errcap, "pickle protocol %d is not supported (2 to 5 are)", u->proto);
        return MU_EPROTOCOL;
    }
    u->i = 2;
    return MU_OK;
}

/* FRAME (protocol 4+): an 8-byte length that must fit in what remains. */
static int pk_frame(unpickler *u, size_t at)
{
    if (u->proto < 4)
        return PK_BAD_OP;
    if (!pk_need(u, 8, "FRAME"))
        return PK_FAIL;
    uint64_t n = le(u->p + u->i, 8);
    u->i += 8;
    if (n > u->len - u->i) {
        mu_fmt(u->err, u->errcap, "pickle FRAME at offset %zu claims %llu bytes, %zu remain", at,
               (unsigned long long)n, u->len - u->i);
        return PK_FAIL;
    }
    return PK_NEXT;
}

/* The one string: SHORT_BINUNICODE (0x8c) or BINUNICODE8 (0x8d), both
 * protocol 4+, or BINUNICODE (0x58); a 1-, 8- or 4-byte length. */
static int pk_string(unpickler *u, unsigned char op, size_t at)
{
    if (u->have_str || (op != 0x58 && u->proto < 4))
        return PK_BAD_OP;
    int w = op == 0x8c ? 1 : op == 0x58 ? 4 : 8;
    if (!pk_need(u, (size_t)w, "string length"))
        return PK_FAIL;
    uint64_t n = le(u->p + u->i, w);
    u->i += (size_t)w;
    if (n > u->len - u->i) {
        mu_fmt(u->err, u->errcap, "pickle string at offset %zu claims %llu bytes, %zu remain", at,
               (unsigned long long)n, u->len - u->i);
        return PK_FAIL;
    }
    *u->str = (const char *)u->p + u->i;
    *u->str_len = (size_t)n;
    u->i += (size_t)n;
    u->have_str = 1;
    return PK_NEXT;
}

/* At most one memo opcode, after the string: MEMOIZE (0x94, protocol 4+),
 * BINPUT (0x71, a 1-byte slot) or LONG_BINPUT (0x72, a 4-byte slot). */
static int pk_memo(unpickler *u, unsigned char op)
{
    if (!u->have_str || u->have_memo)
        return PK_BAD_OP;
    if (op == 0x94) {
        if (u->proto < 4)
            return PK_BAD_OP;
        u->have_memo = 1;
        return PK_NEXT;
    }
    if (!pk_need(u, op == 0x71 ? 1 : 4, "BINPUT"))
        return PK_FAIL;
    u->i += op == 0x71 ? 1u : 4u;
    u->have_memo = 1;
    return PK_NEXT;
}

/* STOP, after the string, and the last byte. */
static int pk_stop(unpickler *u)
{
    if (!u->have_str)
        return PK_BAD_OP;
    if (u->i != u->len) {
        mu_fmt(u->err, u->errcap, "%zu trailing bytes after pickle STOP", u->len - u->i);
        return PK_FAIL;
    }
    return PK_STOP;
}

/* One opcode, op at offset at (u->i is past it). Any opcode not named here
 * is refused. */
static int pk_opcode(unpickler *u, unsigned char op, size_t at)
{
    switch (op) {
    case 0x95: /* FRAME */
        return pk_frame(u, at);
    case 0x8c: /* SHORT_BINUNICODE */
    case 0x58: /* BINUNICODE */
    case 0x8d: /* BINUNICODE8 */
        return pk_string(u, op, at);
    case 0x94: /* MEMOIZE */
    case 0x71: /* BINPUT */
    case 0x72: /* LONG_BINPUT */
        return pk_memo(u, op);
    case 0x2e: /* STOP */
        return pk_stop(u);
    default:
        return PK_BAD_OP;
    }
}

/* The pickle of one Python str, as pickle.dumps(str) writes it with
 * protocols 2 to 5: PROTO, [FRAME], one string opcode, [memo], STOP. Any
 * other opcode is refused before anything else is looked at. */
mu_status mu_unpickle_str(const unsigned char *p, size_t len, const char **str, size_t *str_len,
                          char *err, size_t errcap)
{
    unpickler u = {p, len, 0, 0, 0, 0, str, str_len, err, errcap};
    if (pk_header(&u) != MU_OK)
        return MU_EPROTOCOL;
    for (;;) {
        if (!pk_need(&u, 1, "opcode"))
            return MU_EPROTOCOL;
        unsigned char op = p[u.i];
        size_t at = u.i++;
        switch (pk_opcode(&u, op, at)) {
        case PK_NEXT:
            continue;
        case PK_STOP:
            return MU_OK;
        case PK_BAD_OP:
            mu_fmt(err, errcap,
                   "pickle opcode 0x%02x at offset %zu refused: only a single str is accepted", op,
                   at);
            return MU_EPROTOCOL;
        default: /* PK_FAIL */
            return MU_EPROTOCOL;
        }
    }
}

/* ---- the JSON envelope ------------------------------------------------- */

enum { K_NONE, K_ID, K_ERROR, K_RESULT, K_ENAME, K_ECODE, K_EMSG };

typedef struct env {
    yajl_handle h;
    const char *text;
    int depth;          /* 1 inside the top-level map */
    int key;            /* which top-level key's value is being read */
    int ekey;           /* which error member's value is being read */
    size_t value_start; /* of the current top-level value */
    int have_result, have_error, error_null, id_null, have_id;
    size_t result_off, result_len;
    size_t id_off, id_len; /* in scratch */
    size_t name_off, msg_off; /* in scratch, (size_t)-1 when absent */
    int have_code;
    long long code;
    mu_buf *scratch;
    int oom;
    const char *reason; /* why a callback stopped the parse */
} env;

static size_t consumed(env *e)
{
    return yajl_get_bytes_consumed(e->h);
}

/* Start of the value that follows a key: skip ':' and blanks, as yajl's
 * lexer counts them (it takes \v and \f too). */
static size_t after_colon(env *e, size_t off)
{
    while (e->text[off] == ' ' || e->text[off] == ':' || e->text[off] == '\t' ||
           e->text[off] == '\n' || e->text[off] == '\r' || e->text[off] == '\v' ||
           e->text[off] == '\f')
        off++;
    return off;
}

static size_t save_str(env *e, const unsigned char *s, size_t n)
{
    size_t off = e->scratch->len;
    if (mu_buf_append(e->scratch, s, n) != 0 || mu_buf_append(e->scratch, "", 1) != 0) {
        e->oom = 1;
        return (size_t)-1;
    }
    return off;
}

/* Called after every complete value; finishes a top-level member. */
static void value_done(env *e)
{
    if (e->depth != 1)
        return;
    if (e->key == K_RESULT) {
        e->result_off = e->value_start;
        e->result_len = consumed(e) - e->value_start;
    }
    e->key = K_NONE;
}

static int on_scalar(env *e)
{
    if (e->depth == 1 && e->key == K_ERROR)
        e->error_null = 0;
    value_done(e);
    return 1;
}

static int cb_null(void *ctx)
{
    env *e = ctx;
    if (e->depth == 1 && e->key == K_ERROR) {
        e->error_null = 1;
        e->key = K_NONE;
        return 1;
    }
    if (e->depth == 1 && e->key == K_ID) {
        e->id_null = 1;
        e->key = K_NONE;
        return 1;
    }
    return on_scalar(e);
}

static int cb_bool(void *ctx, int b)
{
    MU_UNUSED(b);
    return on_scalar(ctx);
}

static int cb_number(void *ctx, const char *s, size_t n)
{
    env *e = ctx;
    if (e->depth == 2 && e->ekey == K_ECODE) {
        char tmp[32];
        if (n < sizeof tmp) {
            memcpy(tmp, s, n);
            tmp[n] = '\0';
            char *end;
            e->code = strtoll(tmp, &end, 10);
            e->have_code = *end == '\0';
        }
    }
    return on_scalar(e);
}

static int cb_string(void *ctx, const unsigned char *s, size_t n)
{
    env *e = ctx;
    if (e->depth == 1 && e->key == K_ID) {
        e->have_id = 1;
        e->id_off = save_str(e, s, n);
        e->id_len = n;
        e->key = K_NONE;
        return !e->oom;
    }
    if (e->depth == 2 && e->ekey == K_ENAME)
        e->name_off = save_str(e, s, n);
    else if (e->depth == 2 && e->ekey == K_EMSG)
        e->msg_off = save_str(e, s, n);
    if (e->oom)
        return 0;
    return on_scalar(e);
}

static int cb_map_key(void *ctx, const unsigned char *k, size_t n)
{
    env *e = ctx;
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(k, lit, n) == 0)
    if (e->depth == 1) {
        e->key = IS("request_id") ? K_ID : IS("error") ? K_ERROR : IS("result") ? K_RESULT : K_NONE;
        if (e->key == K_RESULT)
            e->have_result = 1;
        if (e->key == K_ERROR)
            e->have_error = 1;
        e->value_start = after_colon(e, consumed(e));
    } else if (e->depth == 2 && e->key == K_ERROR) {
        e->ekey = IS("name") ? K_ENAME : IS("code") ? K_ECODE : IS("message") ? K_EMSG : K_NONE;
    }
#undef IS
    return 1;
}

static int cb_start(void *ctx)
{
    env *e = ctx;
    if (e->depth == 1 && e->key == K_ERROR)
        e->error_null = 0;
    if (e->depth == 1 && e->key == K_ID) {
        e->reason = "request_id is not a string";
        return 0;
    }
    e->depth++;
    if (e->depth == 3 && e->ekey != K_NONE)
        e->ekey = K_NONE;
    return 1;
}

static int cb_start_map(void *ctx)
{
    return cb_start(ctx);
}

static int cb_start_array(void *ctx)
{
    env *e = ctx;
    if (e->depth == 0) {
        e->reason = "the envelope is an array, not an object";
        return 0;
    }
    return cb_start(ctx);
}

static int cb_end(void *ctx)
{
    env *e = ctx;
    e->depth--;
    /* Back in the error object, or out of it: no member is current. */
    if (e->depth <= 2)
        e->ekey = K_NONE;
    value_done(e);
    return 1;
}

static const yajl_callbacks env_callbacks = {
    cb_null, cb_bool, NULL, NULL, cb_number, cb_string, cb_start_map, cb_map_key, cb_end,
    cb_start_array, cb_end,
};

static void printable(char *dst, size_t cap, const char *s, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : '.';
    }
    dst[j < cap ? j : cap - 1] = '\0';
}

/* A body that is not a microutil envelope: for a non-200 status it is an
 * HTTP-level failure (a proxy page, a crash), for 200 a protocol error. */
static mu_status not_envelope(mu_reply *r, long http, mu_status st, const char *why)
{
    if (http != 200 && st == MU_EPROTOCOL) {
        r->status = MU_EHTTP;
        mu_fmt(r->detail, sizeof r->detail, "HTTP %ld without a microutil body (%s)", http, why);
    } else {
        r->status = st;
        mu_fmt(r->detail, sizeof r->detail, "%s", why);
    }
    return r->status;
}

/* ---- the body, top-down ------------------------------------------------ */

enum { WHY_CAP = 200 }; /* for the reason a body is refused */

/* HTTP 401: the provider refused the auth token; the start of the body,
 * printable, says why. */
static mu_status auth_rejected(mu_reply *r, const char *body, size_t len)
{
    char text[80];
    printable(text, sizeof text, body, len < 64 ? len : 64);
    r->status = MU_EAUTH;
    mu_fmt(r->detail, sizeof r->detail, "HTTP 401 (auth token rejected): %s", text);
    return r->status;
}

/* Flag '1': a 4-byte size, then an LZ4 block. *pk, *pk_len: the block with
 * its size, in; the pickle decompressed into d->plain, out. */
static mu_status lz4_inflate(mu_decoder *d, long http, mu_reply *r, const unsigned char **pk,
                             size_t *pk_len)
{
    char why[WHY_CAP];
    const unsigned char *in = *pk;
    size_t in_len = *pk_len;
    if (in_len < 4)
        return not_envelope(r, http, MU_EPROTOCOL, "LZ4 body shorter than its size header");
    uint64_t declared = le(in, 4);
    if (declared > d->max_size || declared > (uint64_t)INT32_MAX) {
        mu_fmt(why, sizeof why, "LZ4 body declares %llu bytes, over the cap of %zu",
               (unsigned long long)declared, d->max_size);
        return not_envelope(r, http, MU_ETOOBIG, why);
    }
    if (in_len - 4 > (size_t)INT32_MAX)
        return not_envelope(r, http, MU_ETOOBIG, "LZ4 body too large");
    /* LZ4 expands at most about 255:1; a larger claim is a lie that would
     * only make us reserve memory. */
    if (declared > 255u * (uint64_t)(in_len - 4) + 64u) {
        mu_fmt(why, sizeof why,
               "LZ4 body declares %llu bytes, more than its %zu compressed bytes can hold",
               (unsigned long long)declared, in_len - 4);
        return not_envelope(r, http, MU_EPROTOCOL, why);
    }
    mu_buf_reset(&d->plain);
    if (mu_buf_reserve(&d->plain, (size_t)declared + 1) != 0) {
        r->status = MU_ENOMEM;
        mu_fmt(r->detail, sizeof r->detail, "out of memory for %llu bytes",
               (unsigned long long)declared);
        return r->status;
    }
    int got = LZ4_decompress_safe((const char *)in + 4, d->plain.data, (int)(in_len - 4),
                                  (int)declared);
    if (got < 0 || (uint64_t)got != declared) {
        mu_fmt(why, sizeof why, "LZ4 block is corrupt or does not match its declared size %llu",
               (unsigned long long)declared);
        return not_envelope(r, http, MU_EPROTOCOL, why);
    }
    d->plain.len = (size_t)got;
    *pk = (const unsigned char *)d->plain.data;
    *pk_len = d->plain.len;
    return MU_OK;
}

/* The flag byte of a non-empty body: '0' a pickle (within the size cap)
 * follows, '1' an LZ4 one. Sets *pk, *pk_len to the pickle. */
static mu_status unwrap_body(mu_decoder *d, const char *body, size_t len, long http, mu_reply *r,
                             const unsigned char **pk, size_t *pk_len)
{
    char why[WHY_CAP];
    *pk = (const unsigned char *)body + 1;
    *pk_len = len - 1;
    if (body[0] == '1')
        return lz4_inflate(d, http, r, pk, pk_len);
    if (body[0] != '0') {
        mu_fmt(why, sizeof why, "unknown flag byte 0x%02x (expected '0' or '1')",
               (unsigned char)body[0]);
        return not_envelope(r, http, MU_EPROTOCOL, why);
    }
    if (*pk_len > d->max_size) {
        mu_fmt(why, sizeof why, "body of %zu bytes is over the cap of %zu", len, d->max_size);
        return not_envelope(r, http, MU_ETOOBIG, why);
    }
    return MU_OK;
}

/* The JSON envelope: parses json into e, its strings into d->scratch. */
static mu_status parse_envelope(mu_decoder *d, const char *json, size_t json_len, long http,
                                env *e, mu_reply *r)
{
    char why[WHY_CAP];
    memset(e, 0, sizeof *e);
    e->text = json;
    e->scratch = &d->scratch;
    e->name_off = e->msg_off = e->id_off = (size_t)-1;
    mu_buf_reset(&d->scratch);
    e->h = ya_parser(d->cache, &env_callbacks, e);
    if (!e->h) {
        r->status = MU_ENOMEM;
        mu_fmt(r->detail, sizeof r->detail, "out of memory");
        return r->status;
    }
    yajl_status ys = yajl_parse(e->h, (const unsigned char *)json, json_len);
    if (ys == yajl_status_ok)
        ys = yajl_complete_parse(e->h);
    if (ys != yajl_status_ok) {
        if (e->oom) {
            yajl_free(e->h);
            r->status = MU_ENOMEM;
            mu_fmt(r->detail, sizeof r->detail, "out of memory");
            return r->status;
        }
        unsigned char *msg = yajl_get_error(e->h, 0, (const unsigned char *)json, json_len);
        size_t at = yajl_get_bytes_consumed(e->h);
        mu_fmt(why, sizeof why, "response JSON is invalid near byte %zu: %s", at,
               e->reason ? e->reason : msg ? (const char *)msg : "parse error");
        if (msg)
            yajl_free_error(e->h, msg);
        yajl_free(e->h);
        return not_envelope(r, http, MU_EPROTOCOL, why);
    }
    yajl_free(e->h);
    return MU_OK;
}

/* A request_id other than the one sent (rid: NULL when there was none). */
static mu_status id_mismatch(mu_reply *r, long http, const char *expect_id, const char *rid,
                             size_t rid_len)
{
    char why[WHY_CAP];
    char got[80];
    if (rid)
        printable(got, sizeof got, rid, rid_len);
    mu_fmt(why, sizeof why, "request_id mismatch: sent %s, got %s", expect_id,
           rid ? got : "none");
    return not_envelope(r, http, MU_EPROTOCOL, why);
}

/* The reply a parsed envelope makes: the request_id check (a null id only
 * on an error reply), then the remote error, or the result. */
static mu_status envelope_reply(const mu_decoder *d, const env *e, const char *json,
                                size_t json_len, long http, const char *expect_id, mu_reply *r)
{
    if (!e->have_result && !e->have_error)
        return not_envelope(r, http, MU_EPROTOCOL, "response JSON has neither result nor error");
    r->doc = json;
    r->doc_len = json_len;
    const char *rid = e->have_id ? d->scratch.data + e->id_off : NULL;
    int is_error = e->have_error && !e->error_null;

    if (expect_id && !(rid == NULL && is_error) &&
        (rid == NULL || e->id_len != strlen(expect_id) || memcmp(rid, expect_id, e->id_len) != 0))
        return id_mismatch(r, http, expect_id, rid, e->id_len);
    if (is_error) {
        r->status = MU_EREMOTE;
        r->err_name = e->name_off != (size_t)-1 ? d->scratch.data + e->name_off : "UnknownError";
        r->err_message = e->msg_off != (size_t)-1 ? d->scratch.data + e->msg_off : "";
        r->err_code = e->have_code ? e->code : 0;
        mu_fmt(r->detail, sizeof r->detail, "%s (%lld): %.160s", r->err_name, r->err_code,
               r->err_message);
        return r->status;
    }
    if (e->have_result) {
        r->result = json + e->result_off;
        r->result_len = e->result_len;
    }
    if (http != 200) {
        r->status = MU_EHTTP;
        mu_fmt(r->detail, sizeof r->detail, "HTTP %ld with a success envelope", http);
        return r->status;
    }
    r->status = MU_OK;
    return MU_OK;
}

/* flag byte -> [LZ4] -> pickle -> JSON envelope -> result or error. Each
 * step returns MU_OK to go on, else the status it has set in r. */
mu_status mu_decode_response(mu_decoder *d, const char *body, size_t len, long http,
                             const char *expect_id, mu_reply *r)
{
    memset(r, 0, sizeof *r);
    r->result = "null";
    r->result_len = 4;

    if (http == 401)
        return auth_rejected(r, body, len);
    if (len == 0)
        return not_envelope(r, http, MU_EPROTOCOL, "empty body");

    const unsigned char *pk;
    size_t pk_len;
    mu_status st = unwrap_body(d, body, len, http, r, &pk, &pk_len);
    if (st != MU_OK)
        return st;

    char why[WHY_CAP];
    const char *json;
    size_t json_len;
    st = mu_unpickle_str(pk, pk_len, &json, &json_len, why, sizeof why);
    if (st != MU_OK)
        return not_envelope(r, http, st, why);

    env e;
    st = parse_envelope(d, json, json_len, http, &e, r);
    if (st != MU_OK)
        return st;
    return envelope_reply(d, &e, json, json_len, http, expect_id, r);
}

/* ------------------------------------------------------------ variants */

static const mu_proto_info protos[] = {
    [MU_PROTO_1_0_2] = {"1.0.2", "/json/", 0, 0},
    [MU_PROTO_1_0_3] = {"1.0.3", "/jsonp/", 0, 0},
    [MU_PROTO_1_0_4] = {"1.0.4", "/jsonp/", 1, 0},
    [MU_PROTO_1_0_8] = {"1.0.8", "/jsonp/", 1, 1},
};

const mu_proto_info *mu_proto_get(mu_proto p)
{
    return (unsigned)p < MU_ARRAY_LEN(protos) ? &protos[p] : &protos[0];
}

const mu_proto_info *mu_proto_find(const char *name, mu_proto *out)
{
    for (size_t i = 0; i < MU_ARRAY_LEN(protos); i++)
        if (strcmp(protos[i].name, name) == 0) {
            *out = (mu_proto)i;
            return &protos[i];
        }
    return NULL;
}
