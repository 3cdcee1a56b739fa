/* Unit tests for the wire codec: every captured vector, every synthetic
 * pickle protocol, and hostile bodies built here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

#include "codec.h"

static char *slurp(const char *name, size_t *len)
{
    const char *dir = getenv("MU_VECTORS_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir ? dir : "tests/vectors", name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return b;
}

static yajl_val load_manifest(const char *name)
{
    size_t n;
    char *text = slurp(name, &n);
    char err[256];
    yajl_val v = yajl_tree_parse(text, err, sizeof err);
    free(text);
    if (!v)
        fail_msg("manifest %s: %s", name, err);
    assert_true(YAJL_IS_ARRAY(v));
    return v;
}

static const char *str_of(yajl_val obj, const char *key)
{
    const char *path[] = {key, NULL};
    yajl_val v = yajl_tree_get(obj, path, yajl_t_any);
    return v && YAJL_IS_STRING(v) ? YAJL_GET_STRING(v) : NULL;
}

static long long int_of(yajl_val obj, const char *key)
{
    const char *path[] = {key, NULL};
    yajl_val v = yajl_tree_get(obj, path, yajl_t_number);
    assert_non_null(v);
    return YAJL_GET_INTEGER(v);
}

/* The request_id inside a manifest's request body, or NULL. */
static char *request_id_of(const char *request)
{
    if (!request)
        return NULL;
    yajl_val v = yajl_tree_parse(request, NULL, 0);
    if (!v)
        return NULL;
    const char *s = str_of(v, "request_id");
    char *r = s ? strdup(s) : NULL;
    yajl_tree_free(v);
    return r;
}

static char *xs(size_t n)
{
    char *s = malloc(n + 3);
    s[0] = '"';
    memset(s + 1, 'x', n);
    s[n + 1] = '"';
    s[n + 2] = '\0';
    return s;
}

/* Expected "result" text of each successful captured call. */
static char *expected_result(const char *name)
{
    if (strstr(name, "string_result"))
        return strdup("\"zhangsan\"");
    if (strstr(name, "kwargs_echo"))
        return strdup("{\"args\": [1, \"two\", [3]], \"kwargs\": {\"k\": \"v\", \"n\": 5}}");
    if (strstr(name, "unicode_result"))
        return strdup("\"\\u5f20\\u4e09 \\u2603 \\u00e9\"");
    if (strstr(name, "null_result"))
        return strdup("null");
    if (strstr(name, "mixed_result"))
        return strdup("[1, -2, 2.5, true, false, null, {\"a\": [1, {\"b\": \"c\"}]}, "
                      "\"q\\\"uote\\\\\\n\"]");
    if (strstr(name, "medium_300B"))
        return xs(300);
    if (strstr(name, "large_lz4_6000B"))
        return xs(6000);
    if (strstr(name, "huge_lz4_200KB"))
        return xs(200000);
    return NULL;
}

static void check_captured(const char *manifest)
{
    yajl_val m = load_manifest(manifest);
    mu_decoder d;
    mu_decoder_init(&d, 0);
    size_t checked = 0;
    for (size_t i = 0; i < YAJL_GET_ARRAY(m)->len; i++) {
        yajl_val e = YAJL_GET_ARRAY(m)->values[i];
        const char *name = str_of(e, "name");
        size_t len;
        char *body = slurp(str_of(e, "file"), &len);
        assert_int_equal(len, (size_t)int_of(e, "length"));
        assert_int_equal(body[0], str_of(e, "flag")[0]);
        char *rid = request_id_of(str_of(e, "request"));
        long status = (long)int_of(e, "status");
        mu_reply r;
        mu_status st = mu_decode_response(&d, body, len, status, rid, &r);
        char *want = expected_result(name);
        if (status == 200) {
            if (st != MU_OK)
                fail_msg("%s: %s: %s", name, mu_status_name(st), r.detail);
            assert_non_null(want);
            if (r.result_len != strlen(want) || memcmp(r.result, want, r.result_len) != 0)
                fail_msg("%s: result %.*s", name, (int)(r.result_len > 200 ? 200 : r.result_len),
                         r.result);
            assert_null(r.err_name);
        } else {
            if (st != MU_EREMOTE)
                fail_msg("%s: %s: %s", name, mu_status_name(st), r.detail);
            if (status == 400) {
                assert_string_equal(r.err_name, "InvalidRequestError");
                assert_int_equal(r.err_code, -32600);
                assert_non_null(strstr(r.err_message, "InvalidRequestError: "));
            } else {
                assert_string_equal(r.err_name, "OtherError");
                assert_int_equal(r.err_code, 500);
                assert_non_null(strstr(r.err_message, "OtherError: "));
            }
            assert_int_equal(r.result_len, 4); /* "null" */
        }
        /* The whole document is there for tools that print it. */
        assert_true(r.doc_len > 20 && r.doc[0] == '{' && r.doc[r.doc_len - 1] == '}');
        free(want);
        free(rid);
        free(body);
        checked++;
    }
    assert_int_equal(checked, 13);
    mu_decoder_cleanup(&d);
    yajl_tree_free(m);
}

static void test_captured_nodebug(void **state)
{
    (void)state;
    check_captured("py311_nodebug_manifest.json");
}

static void test_captured_debug(void **state)
{
    (void)state;
    check_captured("py311_debug_manifest.json");
}

static void sha256_hex(const char *p, size_t n, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(p, n, md, &mdlen, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
}

static void test_synthetic_protocols(void **state)
{
    (void)state;
    yajl_val m = load_manifest("synthetic_manifest.json");
    mu_decoder d;
    mu_decoder_init(&d, 0);
    assert_int_equal(YAJL_GET_ARRAY(m)->len, 12);
    for (size_t i = 0; i < YAJL_GET_ARRAY(m)->len; i++) {
        yajl_val e = YAJL_GET_ARRAY(m)->values[i];
        size_t len;
        char *body = slurp(str_of(e, "file"), &len);
        mu_reply r;
        mu_status st = mu_decode_response(&d, body, len, 200, NULL, &r);
        if (st != MU_OK)
            fail_msg("%s: %s", str_of(e, "name"), r.detail);
        assert_int_equal(r.doc_len, (size_t)int_of(e, "json_text_length"));
        char hex[65];
        sha256_hex(r.doc, r.doc_len, hex);
        assert_string_equal(hex, str_of(e, "json_text_sha256"));
        /* The pickle protocol byte is the one the manifest names. */
        const unsigned char *pk = (const unsigned char *)body + 1;
        if (body[0] == '0')
            assert_int_equal(pk[1], int_of(e, "pickle_protocol"));
        free(body);
    }
    mu_decoder_cleanup(&d);
    yajl_tree_free(m);
}

/* Every proper prefix of every vector must fail cleanly (never OK, never
 * a crash or an out-of-bounds read: ASan watches). */
static void test_truncation_every_offset(void **state)
{
    (void)state;
    const char *files[] = {"py311_nodebug_kwargs_echo.bin", "py311_nodebug_large_lz4_6000B.bin",
                           "py311_nodebug_method_raises.bin", "synthetic_p2_small.bin",
                           "synthetic_p3_b300.bin", "synthetic_p5_k70.bin",
                           "py311_debug_get_request.bin"};
    mu_decoder d;
    mu_decoder_init(&d, 0);
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        size_t len;
        char *body = slurp(files[f], &len);
        for (size_t cut = 0; cut < len; cut++) {
            /* A heap copy of exactly cut bytes, so ASan sees any overread. */
            char *part = malloc(cut ? cut : 1);
            memcpy(part, body, cut);
            mu_reply r;
            mu_status st = mu_decode_response(&d, part, cut, 200, NULL, &r);
            if (st == MU_OK)
                fail_msg("%s cut at %zu decoded as OK", files[f], cut);
            assert_true(st == MU_EPROTOCOL || st == MU_ETOOBIG);
            assert_true(r.detail[0] != '\0');
            free(part);
        }
        free(body);
    }
    mu_decoder_cleanup(&d);
}

/* Decodes an exact-size heap copy (so ASan sees overreads). The reply
 * points into the copy and the decoder: both live until the next call. */
static mu_decoder g_dec;
static char *g_copy;

static mu_status decode_bytes(const void *p, size_t n, long http, const char *id, mu_reply *r)
{
    free(g_copy);
    mu_decoder_cleanup(&g_dec);
    mu_decoder_init(&g_dec, 1024 * 1024);
    g_copy = malloc(n ? n : 1);
    memcpy(g_copy, p, n);
    return mu_decode_response(&g_dec, g_copy, n, http, id, r);
}

static int release_decoder(void **state)
{
    (void)state;
    free(g_copy);
    g_copy = NULL;
    mu_decoder_cleanup(&g_dec);
    return 0;
}

#define DECODE(lit, http, id, r) decode_bytes(lit, sizeof(lit) - 1, http, id, r)

static void test_hostile_pickles(void **state)
{
    (void)state;
    mu_reply r;
    /* os.system("true") the classic way: GLOBAL + REDUCE. */
    assert_int_equal(DECODE("0\x80\x02" "cos\nsystem\nq\x00X\x04\x00\x00\x00true\x85R.", 200, NULL, &r),
                     MU_EPROTOCOL);
    assert_non_null(strstr(r.detail, "opcode 0x63"));
    /* STACK_GLOBAL (protocol 4). */
    assert_int_equal(DECODE("0\x80\x04\x8c\x02os\x8c\x06system\x93.", 200, NULL, &r), MU_EPROTOCOL);
    /* A string followed by REDUCE. */
    assert_int_equal(DECODE("0\x80\x04\x8c\x02{}R.", 200, NULL, &r), MU_EPROTOCOL);
    /* Not a string: an int, a list. */
    assert_int_equal(DECODE("0\x80\x04K\x05.", 200, NULL, &r), MU_EPROTOCOL);
    assert_int_equal(DECODE("0\x80\x04]\x94.", 200, NULL, &r), MU_EPROTOCOL);
    /* Two strings. */
    assert_int_equal(DECODE("0\x80\x04\x8c\x02{}\x8c\x02{}.", 200, NULL, &r), MU_EPROTOCOL);
    /* Protocol 0/1 text pickles and unknown protocols. */
    assert_int_equal(DECODE("0Vabc\np0\n.", 200, NULL, &r), MU_EPROTOCOL);
    assert_int_equal(DECODE("0\x80\x06\x8c\x02{}.", 200, NULL, &r), MU_EPROTOCOL);
    /* Protocol-4 opcodes in a protocol-2 pickle. */
    assert_int_equal(DECODE("0\x80\x02\x8c\x02{}\x94.", 200, NULL, &r), MU_EPROTOCOL);
    /* Trailing bytes after STOP. */
    assert_int_equal(DECODE("0\x80\x04\x8c\x0d{\"result\": 1}\x94.x", 200, NULL, &r), MU_EPROTOCOL);
    assert_non_null(strstr(r.detail, "trailing"));
    /* A string length past the end, a FRAME past the end. */
    assert_int_equal(DECODE("0\x80\x04X\xff\xff\xff\x7f{}.", 200, NULL, &r), MU_EPROTOCOL);
    assert_int_equal(DECODE("0\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\xff\x8c\x02{}.", 200, NULL, &r),
                     MU_EPROTOCOL);
    /* The smallest good one, to show the above fail for their own reason. */
    assert_int_equal(DECODE("0\x80\x04\x8c\x0d{\"result\": 1}\x94.", 200, NULL, &r), MU_OK);
    assert_int_equal(r.result_len, 1);
    assert_int_equal(r.result[0], '1');
}

static void test_hostile_bodies(void **state)
{
    (void)state;
    mu_reply r;
    assert_int_equal(DECODE("", 200, NULL, &r), MU_EPROTOCOL);
    assert_non_null(strstr(r.detail, "empty"));
    assert_int_equal(DECODE("2\x80\x04\x8c\x02{}.", 200, NULL, &r), MU_EPROTOCOL);
    assert_non_null(strstr(r.detail, "flag"));
    /* LZ4 size bomb: declares 4 GiB - 1, capped before any allocation. */
    assert_int_equal(DECODE("1\xff\xff\xff\xff\x00\x00", 200, NULL, &r), MU_ETOOBIG);
    /* Declares 2 MiB, over this decoder's 1 MiB cap. */
    assert_int_equal(DECODE("1\x00\x00\x20\x00\x10\x00", 200, NULL, &r), MU_ETOOBIG);
    /* A declared size no LZ4 block of this length can expand to. */
    assert_int_equal(DECODE("1\x40\x42\x0f\x00\x10\x41\x41\x41", 200, NULL, &r), MU_EPROTOCOL);
    assert_non_null(strstr(r.detail, "compressed bytes can hold"));
    /* Within the cap but the data does not expand to it. */
    assert_int_equal(DECODE("1\x00\x01\x00\x00\x10\x41", 200, NULL, &r), MU_EPROTOCOL);
    /* Invalid UTF-8 inside the JSON string. */
    assert_int_equal(DECODE("0\x80\x04\x8c\x10{\"result\": \"\xff\xfe\"}\x94.", 200, NULL, &r),
                     MU_EPROTOCOL);
    /* Invalid JSON; a JSON array; neither result nor error. */
    assert_int_equal(DECODE("0\x80\x04\x8c\x0c{\"result\": 1\x94.", 200, NULL, &r), MU_EPROTOCOL);
    assert_int_equal(DECODE("0\x80\x04\x8c\x02[]\x94.", 200, NULL, &r), MU_EPROTOCOL);
    assert_int_equal(DECODE("0\x80\x04\x8c\x08{\"a\": 1}\x94.", 200, NULL, &r), MU_EPROTOCOL);
    assert_non_null(strstr(r.detail, "neither"));
    /* request_id mismatch, and a missing id on success. */
    assert_int_equal(DECODE("0\x80\x04\x8c\x20{\"request_id\": \"b\", \"result\": 1}\x94.", 200, "a",
                            &r),
                     MU_EPROTOCOL);
    assert_non_null(strstr(r.detail, "mismatch"));
    assert_int_equal(DECODE("0\x80\x04\x8c\x20{\"request_id\": \"a\", \"result\": 1}\x94.", 200, "a",
                            &r),
                     MU_OK);
    assert_int_equal(DECODE("0\x80\x04\x8c\x0d{\"result\": 1}\x94.", 200, "a", &r), MU_EPROTOCOL);
    /* A proxy's HTML error page: an HTTP failure, not a protocol error. */
    assert_int_equal(DECODE("<html>502 Bad Gateway</html>", 502, NULL, &r), MU_EHTTP);
    assert_non_null(strstr(r.detail, "502"));
    assert_int_equal(DECODE("", 503, NULL, &r), MU_EHTTP);
    /* Garbage with status 200 is a protocol error. */
    assert_int_equal(DECODE("<html>", 200, NULL, &r), MU_EPROTOCOL);
    /* 1.0.4+ wrong token: plain text 401. */
    assert_int_equal(DECODE("Unauthorized", 401, NULL, &r), MU_EAUTH);
    assert_non_null(strstr(r.detail, "Unauthorized"));
}

/* yajl skips \v and \f as blanks too. Around the ':' after "result" they
 * ended up in the result slice, which then was not JSON ("\f:\f1"). Found
 * by tests/fuzz/fuzz_decode's "result is one JSON value" invariant
 * (tests/fuzz/corpus/decode/result_formfeed). */
static void test_result_after_any_blank(void **state)
{
    (void)state;
    mu_reply r;
    assert_int_equal(DECODE("0\x80\x04\x8c\x12{\"result\"\f\v:\v\f[1]}\x94.", 200, NULL, &r), MU_OK);
    assert_int_equal(r.result_len, 3);
    assert_memory_equal(r.result, "[1]", 3);
    assert_int_equal(DECODE("0\x80\x04\x8c\x13{\"result\" \t\r\n:\f\"x\"}\x94.", 200, NULL, &r),
                     MU_OK);
    assert_int_equal(r.result_len, 3);
    assert_memory_equal(r.result, "\"x\"", 3);
}

/* The error object's last member stayed "current" after the object closed,
 * so a later object's member of the same name overwrote the remote error's
 * name or code (here code 5 became 7). Found by tests/fuzz/fuzz_decode's
 * check against a yajl_tree reading of the same document
 * (tests/fuzz/corpus/decode/error_then_result_object). */
static void test_error_members_end_with_the_error(void **state)
{
    (void)state;
    mu_reply r;
    assert_int_equal(DECODE("0\x80\x04\x8c\x59{\"error\": {\"name\": \"x\", \"code\": 5}, "
                            "\"result\": {\"name\": \"zzz\", \"code\": 7, \"message\": \"m\"}}\x94.",
                            500, NULL, &r),
                     MU_EREMOTE);
    assert_string_equal(r.err_name, "x");
    assert_int_equal(r.err_code, 5);
    assert_string_equal(r.err_message, "");
}

static void test_encode_matches_captures(void **state)
{
    (void)state;
    mu_encoder e;
    assert_int_equal(mu_encoder_init(&e), 0);
    mu_buf b = {0};
    const char *args = "[\"zhangsan\"]", *kw = "{}", *m = "HttpRpcService.get_string_v1";
    assert_int_equal(mu_encode_request_prefix(&e, &b, m, strlen(m), args, strlen(args), kw,
                                              strlen(kw)),
                     0);
    size_t prefix = b.len;
    assert_int_equal(mu_encode_request_finish(&b, prefix, "11111111-0000-0000-0000-000000000001"), 0);
    assert_string_equal(b.data, "{\"version\": \"1.0\", \"method\": \"HttpRpcService.get_string_v1\", "
                                "\"args\": [\"zhangsan\"], \"kwargs\": {}, \"request_id\": "
                                "\"11111111-0000-0000-0000-000000000001\"}");
    /* A second attempt only swaps the id. */
    assert_int_equal(mu_encode_request_finish(&b, prefix, "x2"), 0);
    assert_non_null(strstr(b.data, "\"request_id\": \"x2\"}"));
    assert_int_equal(b.len, prefix + 4);

    mu_buf_reset(&b);
    args = "[1, \"two\", [3]]";
    kw = "{\"k\": \"v\", \"n\": 5}";
    assert_int_equal(mu_encode_request_prefix(&e, &b, "echo", 4, args, strlen(args), kw, strlen(kw)),
                     0);
    mu_encode_request_finish(&b, b.len, "11111111-0000-0000-0000-000000000002");
    assert_string_equal(b.data, "{\"version\": \"1.0\", \"method\": \"echo\", \"args\": [1, \"two\", "
                                "[3]], \"kwargs\": {\"k\": \"v\", \"n\": 5}, \"request_id\": "
                                "\"11111111-0000-0000-0000-000000000002\"}");
    /* Method names are escaped by yajl. */
    mu_buf_reset(&b);
    assert_int_equal(mu_encode_request_prefix(&e, &b, "a\"b", 3, "[]", 2, "{}", 2), 0);
    assert_non_null(strstr(b.data, "\"method\": \"a\\\"b\""));
    mu_buf_free(&b);
    mu_encoder_cleanup(&e);
}

static void test_json_check(void **state)
{
    (void)state;
    char err[128];
    assert_int_equal(mu_json_check("[1, {\"a\": null}]", 16, '[', err, sizeof err), 0);
    assert_int_equal(mu_json_check(" {}", 3, '{', err, sizeof err), 0);
    assert_int_equal(mu_json_check("{}", 2, '[', err, sizeof err), -1);
    assert_non_null(strstr(err, "args must be a JSON array"));
    assert_int_equal(mu_json_check("[1,", 3, '[', err, sizeof err), -1);
    assert_non_null(strstr(err, "not valid JSON"));
    assert_int_equal(mu_json_check("[1] [2]", 7, '[', err, sizeof err), -1);
    assert_int_equal(mu_json_check("", 0, '{', err, sizeof err), -1);
    assert_non_null(strstr(err, "kwargs must be a JSON object"));
}

static void test_auth_token(void **state)
{
    (void)state;
    char tok[MU_AUTH_TOKEN_LEN + 1];
    /* hashlib.md5((("micromicro" + rid) * 3).encode()).hexdigest() */
    assert_int_equal(mu_auth_token("micromicro", "11111111-0000-0000-0000-000000000001", tok), 0);
    assert_string_equal(tok, "34a2d0e3674717416f85f8432cdf33c0");
}

static void test_strerror(void **state)
{
    (void)state;
    for (int s = MU_OK; s <= MU_EAUTH; s++) {
        assert_string_not_equal(mu_strerror((mu_status)s), "unknown status");
        assert_true(strncmp(mu_status_name((mu_status)s), "MU_", 3) == 0);
    }
    assert_string_equal(mu_strerror((mu_status)999), "unknown status");
    assert_string_equal(mu_status_name(MU_ETIMEDOUT), "MU_ETIMEDOUT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_captured_nodebug),
        cmocka_unit_test(test_captured_debug),
        cmocka_unit_test(test_synthetic_protocols),
        cmocka_unit_test(test_truncation_every_offset),
        cmocka_unit_test_teardown(test_hostile_pickles, release_decoder),
        cmocka_unit_test_teardown(test_hostile_bodies, release_decoder),
        cmocka_unit_test_teardown(test_result_after_any_blank, release_decoder),
        cmocka_unit_test_teardown(test_error_members_end_with_the_error, release_decoder),
        cmocka_unit_test(test_encode_matches_captures),
        cmocka_unit_test(test_json_check),
        cmocka_unit_test(test_auth_token),
        cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
