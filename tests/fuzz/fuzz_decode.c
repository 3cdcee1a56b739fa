/* libFuzzer target: the response decoder, mu_decode_response() (flag byte,
 * LZ4, the pickle subset, the JSON envelope, the HTTP status).
 *
 * Input: one control byte, then the response body.
 *   bits 0-2  HTTP status: 200 200 200 500 400 401 502 404
 *   bit 3     expect request_id "1" (else none)
 *   bit 4     a 1 KiB cap on the body (else the default 64 MiB)
 *   bit 5     decode with a yajl block cache (as calls do)
 *   bits 6-7  0: the rest is the body as is; 1: the rest is the JSON text,
 *             sent as '0' + a protocol 4 pickle of it; 2: the same pickle
 *             LZ4-compressed behind flag '1'; 3: as 0
 * Modes 1 and 2 let the fuzzer work on the envelope without having to keep
 * pickle lengths right. The seeds are the captured bodies of tests/vectors
 * behind byte 0x00 and 0x20 (scripts/fuzz adds them) and the envelopes in
 * tests/fuzz/corpus/decode.
 *
 * Invariants: a known status; every failure carries a detail; a remote
 * error carries a name and a message (possibly empty: the provider's); success only for HTTP 200, with a
 * result that is exactly one JSON value; pointers into the body or the
 * decoder; the same answer on a second decode with the same decoder, with
 * a fresh decoder without cache, and without the request_id check; and
 * the remote error's name, message and code, or the result, are what
 * yajl_tree reads in the same document (the last of duplicate keys). */
#include "fuzz.h"

#include <lz4.h>
#include <yajl/yajl_parse.h>
#include <yajl/yajl_tree.h>

#include "codec.h"

static const long http_codes[8] = {200, 200, 200, 500, 400, 401, 502, 404};

typedef struct snap {
    mu_status status;
    char detail[256];
    char *result;
    size_t result_len;
} snap;

static void take(snap *s, const mu_reply *r)
{
    s->status = r->status;
    memcpy(s->detail, r->detail, sizeof s->detail);
    s->result_len = r->result_len;
    s->result = malloc(r->result_len + 1);
    if (!s->result)
        abort();
    memcpy(s->result, r->result, r->result_len);
}

static void same(const snap *a, const mu_reply *b, const char *what)
{
    FUZZ_CHECK(a->status == b->status, "%s: status %d then %d", what, a->status, b->status);
    FUZZ_CHECK(strcmp(a->detail, b->detail) == 0, "%s: detail '%s' then '%s'", what, a->detail,
               b->detail);
    FUZZ_CHECK(a->result_len == b->result_len && memcmp(a->result, b->result, a->result_len) == 0,
               "%s: result differs", what);
}

/* 1 if text[0..len) is exactly one JSON value (yajl's defaults: no comments,
 * nothing after it). */
static int one_json_value(const char *text, size_t len)
{
    yajl_handle h = yajl_alloc(NULL, NULL, NULL);
    if (!h)
        abort();
    yajl_status st = yajl_parse(h, (const unsigned char *)text, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    yajl_free(h);
    return st == yajl_status_ok;
}

/* The member named key of object o, or NULL; *dup set if there are
 * several (what a decoder keeps of duplicate keys is its own choice: the
 * checks below then leave that member alone). */
static yajl_val member(yajl_val o, const char *key, int *dup)
{
    yajl_val v = NULL;
    if (!YAJL_IS_OBJECT(o))
        return NULL;
    for (size_t i = 0; i < YAJL_GET_OBJECT(o)->len; i++)
        if (strcmp(YAJL_GET_OBJECT(o)->keys[i], key) == 0) {
            if (v)
                *dup = 1;
            v = YAJL_GET_OBJECT(o)->values[i];
        }
    return v;
}

static int same_value(yajl_val a, yajl_val b)
{
    if (!a || !b)
        return a == b;
    if (a->type != b->type)
        return 0;
    switch (a->type) {
    case yajl_t_string:
        return strcmp(YAJL_GET_STRING(a), YAJL_GET_STRING(b)) == 0;
    case yajl_t_number:
        return strcmp(YAJL_GET_NUMBER(a), YAJL_GET_NUMBER(b)) == 0;
    case yajl_t_object:
        if (a->u.object.len != b->u.object.len)
            return 0;
        for (size_t i = 0; i < a->u.object.len; i++)
            if (strcmp(a->u.object.keys[i], b->u.object.keys[i]) != 0 ||
                !same_value(a->u.object.values[i], b->u.object.values[i]))
                return 0;
        return 1;
    case yajl_t_array:
        if (a->u.array.len != b->u.array.len)
            return 0;
        for (size_t i = 0; i < a->u.array.len; i++)
            if (!same_value(a->u.array.values[i], b->u.array.values[i]))
                return 0;
        return 1;
    default:
        return 1;
    }
}

static yajl_val tree_of(const char *text, size_t len)
{
    char *s = fuzz_cstr((const uint8_t *)text, len);
    yajl_val v = yajl_tree_parse(s, NULL, 0);
    free(s);
    return v;
}

static int has_nul_escape(const char *p, size_t n)
{
    for (size_t i = 0; i + 6 <= n; i++)
        if (p[i] == '\\' && memcmp(p + i + 1, "u0000", 5) == 0)
            return 1;
    return 0;
}

/* The reference: the decoded document as a yajl tree. A remote error's
 * name, message and code, and a result, must be what the tree holds.
 * yajl_tree keeps keys and strings as C strings, so a document with an
 * escaped NUL ("result\u0000x" is not "result", but the tree says it is)
 * has no reference: found by the fuzzer, skipped. */
static void check_against_tree(const mu_reply *r)
{
    if (!r->doc || (r->status != MU_OK && r->status != MU_EREMOTE) ||
        memchr(r->doc, '\0', r->doc_len) || has_nul_escape(r->doc, r->doc_len))
        return;
    yajl_val doc = tree_of(r->doc, r->doc_len);
    FUZZ_CHECK(doc && YAJL_IS_OBJECT(doc), "decoded a document yajl_tree cannot read");
    int dup = 0;
    if (r->status == MU_EREMOTE) {
        yajl_val err = member(doc, "error", &dup);
        FUZZ_CHECK(dup || (err && !YAJL_IS_NULL(err)), "remote error with a null error member");
        int dn = 0, dm = 0, dc = 0;
        yajl_val name = member(err, "name", &dn), msg = member(err, "message", &dm);
        yajl_val code = member(err, "code", &dc);
        const char *want_name = YAJL_IS_STRING(name) ? YAJL_GET_STRING(name) : "UnknownError";
        const char *want_msg = YAJL_IS_STRING(msg) ? YAJL_GET_STRING(msg) : "";
        if (!dup && !dn)
            FUZZ_CHECK(strcmp(r->err_name, want_name) == 0, "error name '%s', the JSON says '%s'",
                       r->err_name, want_name);
        if (!dup && !dm)
            FUZZ_CHECK(strcmp(r->err_message, want_msg) == 0,
                       "error message '%s', the JSON says '%s'", r->err_message, want_msg);
        if (!dup && !dc && YAJL_IS_INTEGER(code))
            FUZZ_CHECK(r->err_code == YAJL_GET_INTEGER(code), "error code %lld, the JSON says %lld",
                       r->err_code, (long long)YAJL_GET_INTEGER(code));
        else if (!dup && !code)
            FUZZ_CHECK(r->err_code == 0, "error code %lld without a code member", r->err_code);
    } else {
        yajl_val want = member(doc, "result", &dup);
        yajl_val got = tree_of(r->result, r->result_len);
        FUZZ_CHECK(got, "the result does not parse");
        if (!dup)
            FUZZ_CHECK(want ? same_value(got, want) : YAJL_IS_NULL(got),
                       "result '%.*s' is not the document's",
                       (int)(r->result_len > 200 ? 200 : r->result_len), r->result);
        yajl_tree_free(got);
    }
    yajl_tree_free(doc);
}

static int inside(const char *p, size_t n, const char *base, size_t len)
{
    return p >= base && n <= len && (size_t)(p - base) <= len - n;
}

static void check_reply(const mu_decoder *d, const mu_reply *r, const char *body, size_t len,
                        long http)
{
    switch (r->status) {
    case MU_OK:
    case MU_EREMOTE:
    case MU_EHTTP:
    case MU_EPROTOCOL:
    case MU_ETOOBIG:
    case MU_EAUTH:
        break;
    default:
        FUZZ_CHECK(0, "unexpected status %d (%s)", r->status, mu_status_name(r->status));
    }
    FUZZ_CHECK(memchr(r->detail, '\0', sizeof r->detail), "detail not terminated");
    FUZZ_CHECK(r->status == MU_OK || r->detail[0], "status %s without a detail",
               mu_status_name(r->status));
    FUZZ_CHECK(r->result && r->result_len > 0, "no result text");
    if (r->status == MU_EAUTH)
        FUZZ_CHECK(http == 401, "EAUTH for HTTP %ld", http);
    if (r->status == MU_EREMOTE) {
        /* May be empty: the provider's "name" can be "" (or start with
         * \u0000, cut there as a C string); the detail still says more. */
        FUZZ_CHECK(r->err_name && r->err_message, "remote error without name or message");
        FUZZ_CHECK(strlen(r->detail) >= strlen(" (0): "), "remote error detail '%s'", r->detail);
    }
    if (r->status == MU_OK) {
        FUZZ_CHECK(http == 200, "OK for HTTP %ld", http);
        FUZZ_CHECK(r->doc, "OK without a document");
        FUZZ_CHECK(one_json_value(r->result, r->result_len), "result is not one JSON value: '%.*s'",
                   (int)(r->result_len > 200 ? 200 : r->result_len), r->result);
    }
    check_against_tree(r);
    if (r->doc) {
        int in_body = inside(r->doc, r->doc_len, body, len);
        int in_plain = d->plain.data && inside(r->doc, r->doc_len, d->plain.data, d->plain.len);
        FUZZ_CHECK(in_body || in_plain, "document outside the body and the decoder");
        if (r->result_len && strcmp(r->result, "null") != 0)
            FUZZ_CHECK(inside(r->result, r->result_len, r->doc, r->doc_len),
                       "result outside the document");
    }
}

/* '0' + PROTO 4, SHORT_BINUNICODE or BINUNICODE, the text, MEMOIZE, STOP;
 * with lz4, '1' + the 4-byte size + the LZ4 block of that pickle. */
static char *wrap(const uint8_t *text, size_t n, int lz4, size_t *out_len)
{
    size_t pk_len = 2 + (n < 256 ? 2 : 5) + n + 2;
    unsigned char *pk = malloc(pk_len);
    if (!pk)
        abort();
    size_t i = 0;
    pk[i++] = 0x80;
    pk[i++] = 4;
    if (n < 256) {
        pk[i++] = 0x8c;
        pk[i++] = (unsigned char)n;
    } else {
        pk[i++] = 0x58;
        for (int b = 0; b < 4; b++)
            pk[i++] = (unsigned char)(n >> (8 * b));
    }
    if (n)
        memcpy(pk + i, text, n);
    i += n;
    pk[i++] = 0x94;
    pk[i++] = 0x2e;
    int bound = LZ4_compressBound((int)pk_len);
    char *body = malloc(1 + 4 + (size_t)(bound > 0 ? bound : 0) + pk_len);
    if (!body)
        abort();
    if (!lz4) {
        body[0] = '0';
        memcpy(body + 1, pk, pk_len);
        *out_len = 1 + pk_len;
    } else {
        body[0] = '1';
        for (int b = 0; b < 4; b++)
            body[1 + b] = (char)(pk_len >> (8 * b));
        int c = LZ4_compress_default((const char *)pk, body + 5, (int)pk_len, bound);
        if (c <= 0)
            abort();
        *out_len = 5 + (size_t)c;
    }
    free(pk);
    return body;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned ctl = data[0];
    long http = http_codes[ctl & 7];
    const char *expect = ctl & 8 ? "1" : NULL;
    size_t cap = ctl & 16 ? 1024 : 0;
    int mode = (ctl >> 6) & 3;
    /* The body alone in its own block, so ASan sees a read past its end. */
    size_t len = size - 1;
    char *body;
    if (mode == 1 || mode == 2) {
        body = wrap(data + 1, size - 1, mode == 2, &len);
    } else {
        if (!(body = malloc(len ? len : 1)))
            abort();
        memcpy(body, data + 1, len);
    }

    mu_yajl_cache cache = {0};
    mu_decoder d;
    mu_decoder_init(&d, cap);
    if (ctl & 32)
        d.cache = &cache;
    mu_reply r;
    mu_decode_response(&d, body, len, http, expect, &r);
    check_reply(&d, &r, body, len, http);
    snap first;
    take(&first, &r);

    /* Again with the same (now warm) decoder and cache. */
    mu_decode_response(&d, body, len, http, expect, &r);
    check_reply(&d, &r, body, len, http);
    same(&first, &r, "second decode");

    /* A fresh decoder, no cache. */
    mu_decoder d2;
    mu_decoder_init(&d2, cap);
    mu_decode_response(&d2, body, len, http, expect, &r);
    check_reply(&d2, &r, body, len, http);
    same(&first, &r, "fresh decoder without cache");

    /* Without the request_id check, a success stays the same success. */
    if (expect && first.status == MU_OK) {
        mu_decode_response(&d2, body, len, http, NULL, &r);
        check_reply(&d2, &r, body, len, http);
        same(&first, &r, "without expect_id");
    }

    free(first.result);
    mu_decoder_cleanup(&d2);
    mu_decoder_cleanup(&d);
    mu_yajl_cache_clear(&cache);
    free(body);
    return 0;
}
