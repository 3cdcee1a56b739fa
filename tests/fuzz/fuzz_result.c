/* libFuzzer target: mu_result_parse(), the public result -> yajl tree.
 *
 * Input: the result text (up to its first NUL: a mu_result's text is
 * NUL-terminated at result_len).
 *
 * Invariants: a text that nests deeper than MU_RESULT_MAX_DEPTH anywhere
 * yajl_tree would go (it builds and frees trees by recursion, comments
 * allowed) is refused; a valid JSON text within the depth gives a tree of
 * the right type; a refusal carries a message; the tree frees cleanly. */
#include "fuzz.h"

#include <yajl/yajl_parse.h>

#include "microutil/microutil_yajl.h"

typedef struct depth {
    int now, max;
} depth;

static int d_open(void *ctx)
{
    depth *d = ctx;
    if (++d->now > d->max)
        d->max = d->now;
    return 1;
}

static int d_close(void *ctx)
{
    ((depth *)ctx)->now--;
    return 1;
}

static const yajl_callbacks depth_cb = {NULL, NULL, NULL, NULL, NULL, NULL, d_open, NULL, d_close,
                                        d_open, d_close};

/* The deepest nesting a parse reaches before it ends or fails, and whether
 * the text is valid. */
static int measure(const char *text, size_t len, int comments, int *valid)
{
    depth d = {0, 0};
    yajl_handle h = yajl_alloc(&depth_cb, NULL, &d);
    if (!h)
        abort();
    yajl_config(h, yajl_allow_comments, comments);
    yajl_status st = yajl_parse(h, (const unsigned char *)text, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    yajl_free(h);
    *valid = st == yajl_status_ok;
    return d.max;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    size_t len = strlen(text);
    mu_result r;
    memset(&r, 0, sizeof r);
    r.status = MU_OK;
    r.result = text;
    r.result_len = len;

    int loose_valid, strict_valid;
    int loose_depth = measure(text, len, 1, &loose_valid);
    int strict_depth = measure(text, len, 0, &strict_valid);

    char err[128] = "";
    yajl_val v = mu_result_parse(&r, err, sizeof err);
    if (loose_depth > MU_RESULT_MAX_DEPTH)
        FUZZ_CHECK(!v, "accepted a text that nests %d levels deep (limit %d)", loose_depth,
                   MU_RESULT_MAX_DEPTH);
    if (strict_valid && strict_depth <= MU_RESULT_MAX_DEPTH) {
        FUZZ_CHECK(v, "refused valid JSON %d levels deep: %s", strict_depth, err);
        size_t i = 0;
        while (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')
            i++;
        if (text[i] == '[')
            FUZZ_CHECK(YAJL_IS_ARRAY(v), "'[' did not give an array");
        else if (text[i] == '{')
            FUZZ_CHECK(YAJL_IS_OBJECT(v), "'{' did not give an object");
        else if (text[i] == '"')
            FUZZ_CHECK(YAJL_IS_STRING(v), "'\"' did not give a string");
    }
    if (!v)
        FUZZ_CHECK(err[0], "refused without a message");
    yajl_tree_free(v);

    /* NULL and no error buffer must be safe too. */
    FUZZ_CHECK(mu_result_parse(NULL, err, sizeof err) == NULL, "NULL result parsed");
    yajl_tree_free(mu_result_parse(&r, NULL, 0));
    free(text);
    return 0;
}
