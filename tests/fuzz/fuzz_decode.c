/* libFuzzer target: the response decoder, mu_decode_response() (flag byte,
 * LZ4, the pickle subset, the JSON envelope, the HTTP status).
 *
 * Input: one control byte, then the response body.
 *   bits 0-2  HTTP status: 200 200 200 500 400 401 502 404
 *   bit 3     expect request_id "1" (else none)
 *   bit 4     a 1 KiB cap on the body (else the default 64 MiB)
 *   bit 5     decode with a yajl block cache (as calls do)
 * The seeds are the captured bodies of tests/vectors behind byte 0x00 and
 * 0x20 (scripts/fuzz adds them).
 *
 * Invariants: a known status; every failure carries a detail; a remote
 * error carries its name and message; success only for HTTP 200, with a
 * result that is exactly one JSON value; pointers into the body or the
 * decoder; the same answer on a second decode with the same decoder, with
 * a fresh decoder without cache, and without the request_id check. */
#include "fuzz.h"

#include <yajl/yajl_parse.h>

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
        FUZZ_CHECK(r->err_name && r->err_message, "remote error without name or message");
        FUZZ_CHECK(r->err_name[0], "remote error with an empty name");
    }
    if (r->status == MU_OK) {
        FUZZ_CHECK(http == 200, "OK for HTTP %ld", http);
        FUZZ_CHECK(r->doc, "OK without a document");
        FUZZ_CHECK(one_json_value(r->result, r->result_len), "result is not one JSON value: '%.*s'",
                   (int)(r->result_len > 200 ? 200 : r->result_len), r->result);
    }
    if (r->doc) {
        int in_body = inside(r->doc, r->doc_len, body, len);
        int in_plain = d->plain.data && inside(r->doc, r->doc_len, d->plain.data, d->plain.len);
        FUZZ_CHECK(in_body || in_plain, "document outside the body and the decoder");
        if (r->result_len && strcmp(r->result, "null") != 0)
            FUZZ_CHECK(inside(r->result, r->result_len, r->doc, r->doc_len),
                       "result outside the document");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned ctl = data[0];
    long http = http_codes[ctl & 7];
    const char *expect = ctl & 8 ? "1" : NULL;
    size_t cap = ctl & 16 ? 1024 : 0;
    /* The body alone in its own block, so ASan sees a read past its end. */
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    if (!body)
        abort();
    memcpy(body, data + 1, len);

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
