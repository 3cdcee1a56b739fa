/*
 * codec: the microutil wire format (docs/protocol.md §3 and §4).
 *
 * Requests are built as a prefix that ends just before the request_id value
 * (the last member), so that each attempt only appends a fresh id.
 * Responses are decoded in place: flag byte, optional LZ4 block, a pickle of
 * exactly one str (nothing else is accepted, nothing is ever executed), then
 * the JSON envelope, whose "result" value is returned as a slice.
 *
 * Ownership (codec.c owns no state of its own):
 *   mu_proto_info            a static const table in codec.c.
 *   mu_encoder, mu_yajl_cache
 *                            embedded in mu_calls (call.c), one per client.
 *   mu_decoder, mu_reply     embedded in each call object (call.c).
 */
#ifndef MU_CODEC_H
#define MU_CODEC_H

#include "common.h"
#include <yajl/yajl_gen.h>

#define MU_DEFAULT_MAX_RESPONSE (64u * 1024u * 1024u)
#define MU_AUTH_TOKEN_LEN 32 /* md5 hex digest */

/* ------------------------------------------------------------ variants */

/* The microutil variants (docs/protocol.md §5). */
typedef enum mu_proto {
    MU_PROTO_1_0_2 = 0,
    MU_PROTO_1_0_3,
    MU_PROTO_1_0_4, /* also 1.0.5 to 1.0.7 */
    MU_PROTO_1_0_8,
} mu_proto;

/* What each variant needs: one table row each, in codec.c. */
typedef struct mu_proto_info {
    const char *name;  /* the `protocol` value */
    const char *path;  /* default mount path */
    int json_headers;  /* application/json, micro-request-id, micro-auth-token */
    int per_service;   /* default registry layout */
} mu_proto_info;

/* The row for name, or NULL if unknown. */
const mu_proto_info *mu_proto_find(const char *name, mu_proto *out);
const mu_proto_info *mu_proto_get(mu_proto p);

/* ------------------------------------------------------------ yajl memory */

/* yajl allocates a handle, a lexer and their buffers for every parse and
 * frees them after: some ten malloc/free pairs a call between the args check
 * and the response, about a third of the SDK's own cost per call (bench).
 * A cache keeps those blocks, so that a parse on a warm cache allocates
 * nothing. Zero-initialised is an empty cache. Not thread-safe: one per
 * client (loop); parses that share one must not overlap (ours never do). */
#define MU_YAJL_CACHE_SLOTS 8
typedef struct mu_yajl_cache {
    void *blocks[MU_YAJL_CACHE_SLOTS];
    size_t n;
} mu_yajl_cache;

/* Frees the cached blocks; the cache stays usable. */
void mu_yajl_cache_clear(mu_yajl_cache *c);

/* ------------------------------------------------------------ requests */

/* Reusable request encoder; owns one yajl generator used for escaping. */
typedef struct mu_encoder {
    yajl_gen gen;
    mu_buf *target;
} mu_encoder;

int mu_encoder_init(mu_encoder *e);
void mu_encoder_cleanup(mu_encoder *e);

/* Checks that text[0..len) is one JSON value whose top level is an array
 * (want == '[') or an object (want == '{'). On failure writes why to err. */
int mu_json_check(const char *text, size_t len, char want, char *err, size_t errcap);
/* The same, allocating from cache (NULL: malloc). */
int mu_json_check_cached(mu_yajl_cache *cache, const char *text, size_t len, char want, char *err,
                         size_t errcap);

/* Appends `{"version": "1.0", "method": <method>, "args": <args>,
 * "kwargs": <kwargs>, "request_id": "` to out. args and kwargs are JSON
 * text already checked by mu_json_check(); they are copied verbatim.
 * Returns 0, or -1 on allocation failure. */
int mu_encode_request_prefix(mu_encoder *e, mu_buf *out, const char *method, size_t method_len,
                             const char *args, size_t args_len, const char *kwargs,
                             size_t kwargs_len);

/* Truncates out to prefix_len and appends request_id plus the closing `"}`.
 * request_id must need no JSON escaping (we generate it). */
int mu_encode_request_finish(mu_buf *out, size_t prefix_len, const char *request_id);

/* md5 hex of (token + request_id) repeated three times, as microutil 1.0.4+
 * expects in the micro-auth-token header. out gets 32 hex chars + NUL. */
int mu_auth_token(const char *token, const char *request_id, char out[MU_AUTH_TOKEN_LEN + 1]);

/* ----------------------------------------------------------- responses */

typedef struct mu_decoder {
    size_t max_size;   /* cap on the decompressed size; 0 = default */
    mu_buf plain;      /* LZ4 output, reused */
    mu_buf scratch;    /* unescaped error strings, reused */
    mu_yajl_cache *cache; /* not owned; NULL (as init leaves it): malloc */
} mu_decoder;

typedef struct mu_reply {
    mu_status status; /* OK, EREMOTE, EHTTP, EPROTOCOL, ETOOBIG or EAUTH */
    const char *doc;           /* the whole JSON document, when decoded */
    size_t doc_len;
    const char *result;        /* JSON text of "result"; "null" when absent */
    size_t result_len;
    const char *err_name;      /* remote error (MU_EREMOTE), else NULL */
    const char *err_message;
    long long err_code;
    char detail[256];          /* human explanation of a non-OK status */
} mu_reply;

void mu_decoder_init(mu_decoder *d, size_t max_size);
void mu_decoder_cleanup(mu_decoder *d);

/* Decodes one response body. Pointers in reply point into body or into the
 * decoder's buffers and stay valid until the next decode or cleanup.
 * expect_id, when not NULL, must equal the echoed request_id (a null id is
 * accepted only on an error reply: the server could not parse the request). */
mu_status mu_decode_response(mu_decoder *d, const char *body, size_t len, long http_status,
                             const char *expect_id, mu_reply *reply);

/* Only the pickle layer: finds the single str in a pickle. On success sets
 * *str and *str_len to a slice of p. Exposed for tests and tools. */
mu_status mu_unpickle_str(const unsigned char *p, size_t len, const char **str, size_t *str_len,
                          char *err, size_t errcap);

#endif
