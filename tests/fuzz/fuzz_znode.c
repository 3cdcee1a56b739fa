/* libFuzzer target: provider registration data, mu_parse_child_data(), and
 * the view that turns a child list and its data into endpoints.
 *
 * Input: the data of up to 8 children, separated by "\n--\n" (a single
 * child's data is the whole input).
 *
 * Invariants, per child: success gives a non-empty host of address
 * characters that fits its buffer and a port from 1 to 65535, and the host
 * is the JSON's "host" string; a refusal says why. For the view: a group
 * has as many endpoints as distinct host:port among the accepted children;
 * dropping half the children and then all of them leaves the right counts;
 * the view frees every endpoint (LeakSanitizer checks). */
#define _GNU_SOURCE
#include "fuzz.h"

#include <ctype.h>
#include <yajl/yajl_tree.h>

#include "balance.h"
#include "view.h"

#define MAX_CHILDREN 8
static const char SEP[] = "\n--\n";

typedef struct child {
    const char *data;
    size_t len;
    int ok;
    char key[80];
} child;

static void check_one(child *c)
{
    char host[64], why[160];
    int port = 0;
    memset(host, 'X', sizeof host);
    why[0] = '\0';
    int rc = mu_parse_child_data(c->data, c->len, host, sizeof host, &port, why, sizeof why);
    FUZZ_CHECK(rc == 0 || rc == -1, "rc %d", rc);
    c->ok = rc == 0;
    if (!c->ok) {
        FUZZ_CHECK(fuzz_nonempty_cstr(why, sizeof why), "refused without a reason");
        return;
    }
    FUZZ_CHECK(fuzz_nonempty_cstr(host, sizeof host), "accepted with no host");
    for (const char *p = host; *p; p++)
        FUZZ_CHECK(isalnum((unsigned char)*p) || *p == '.' || *p == '-' || *p == '_',
                   "host '%s' has a character 0x%02x", host, (unsigned char)*p);
    FUZZ_CHECK(port >= 1 && port <= 65535, "port %d", port);
    /* The reference: the "host" member as yajl reads it. */
    char *text = fuzz_cstr((const uint8_t *)c->data, c->len);
    yajl_val root = yajl_tree_parse(text, NULL, 0);
    const char *hp[] = {"host", NULL};
    yajl_val h = root ? yajl_tree_get(root, hp, yajl_t_string) : NULL;
    FUZZ_CHECK(h && strcmp(YAJL_GET_STRING(h), host) == 0, "host '%s' is not the JSON's", host);
    yajl_tree_free(root);
    free(text);
    snprintf(c->key, sizeof c->key, "%s:%d", host, port);
}

static size_t distinct_ok(const child *cs, size_t n, size_t step)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i += step) {
        if (!cs[i].ok)
            continue;
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j += step)
            seen = cs[j].ok && strcmp(cs[j].key, cs[i].key) == 0;
        count += !seen;
    }
    return count;
}

static void fetch_none(mu_group *g, const char *name, void *user)
{
    (void)g;
    (void)name;
    (void)user;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    child cs[MAX_CHILDREN];
    size_t n = 0;
    const char *p = (const char *)data, *end = p + size;
    while (n < MAX_CHILDREN) {
        const char *s = n + 1 < MAX_CHILDREN ? memmem(p, (size_t)(end - p), SEP, 4) : NULL;
        cs[n].data = p;
        cs[n].len = s ? (size_t)(s - p) : (size_t)(end - p);
        n++;
        if (!s)
            break;
        p = s + 4;
    }
    for (size_t i = 0; i < n; i++) {
        /* Each child's data in its own block, as ZooKeeper hands it over. */
        char *own = malloc(cs[i].len ? cs[i].len : 1);
        if (!own)
            abort();
        memcpy(own, cs[i].data, cs[i].len);
        cs[i].data = own;
        check_one(&cs[i]);
    }

    mu_client_stats stats;
    memset(&stats, 0, sizeof stats);
    mu_logger log = {NULL, NULL, MU_LOG_ERROR};
    mu_view *v = mu_view_new("/json/", &log, &stats, NULL, NULL);
    if (!v)
        abort();
    mu_group *g = mu_view_group(v, "/dubbo/micro/m/provider", 1);
    if (!g)
        abort();
    char names[MAX_CHILDREN][16];
    char *list[MAX_CHILDREN];
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "%010zu", i);
        list[i] = names[i];
    }
    int started = mu_view_children(v, g, list, n, fetch_none, NULL);
    FUZZ_CHECK(started == (int)n, "%d fetches for %zu new children", started, n);
    for (size_t i = 0; i < n; i++)
        mu_view_child_data(v, g, names[i], cs[i].data, cs[i].len);
    FUZZ_CHECK(g->state == MU_GROUP_READY, "group not ready");
    size_t want = distinct_ok(cs, n, 1);
    FUZZ_CHECK(mu_pool_size(g->pool) == want, "%zu endpoints, %zu distinct accepted children",
               mu_pool_size(g->pool), want);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += !cs[i].ok;
    FUZZ_CHECK(stats.znodes_skipped == bad, "%llu skipped, %zu refused",
               (unsigned long long)stats.znodes_skipped, bad);

    /* Every other child leaves, then all of them. */
    size_t half = 0;
    for (size_t i = 0; i < n; i += 2)
        list[half++] = names[i];
    FUZZ_CHECK(mu_view_children(v, g, list, half, fetch_none, NULL) == 0, "refetched known data");
    FUZZ_CHECK(mu_pool_size(g->pool) == distinct_ok(cs, n, 2), "%zu endpoints after half left",
               mu_pool_size(g->pool));
    mu_view_children(v, g, list, 0, fetch_none, NULL);
    FUZZ_CHECK(mu_pool_size(g->pool) == 0, "endpoints left after every child left");

    mu_view_free(v);
    for (size_t i = 0; i < n; i++)
        free((void *)cs[i].data);
    return 0;
}
