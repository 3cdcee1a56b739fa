/* libFuzzer target: the "SERVICE:METHOD" target parser, through the public
 * entry points that take a target (mu_client_endpoints, mu_client_watch,
 * mu_call) on a client without ZooKeeper. Service "micro" has a static
 * provider, a policy of its own and is idempotent ("micro:*"), so an
 * accepted target goes down every path resolve() has; any other service
 * has no provider node (no ZooKeeper), so it loads at once, empty.
 *
 * Input: the target (up to its first NUL).
 *
 * Invariants: every entry point accepts exactly the targets the rule in
 * docs/protocol.md §1 allows (one ':', both parts non-empty znode names
 * without blanks, control characters or '/', in well-formed UTF-8; at most 512 bytes, a service
 * under 256), and gives a message when it refuses; "micro:..." has its one
 * endpoint, any other service none; a call accepted fires its callback exactly once (when the
 * client is freed, as no loop runs), a refused one never; nothing leaks. */
#include "fuzz.h"

#include <event2/event.h>

#include "microutil/microutil.h"

static struct event_base *base;

static int part_ok(const char *s, size_t n)
{
    if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= ' ' || ch == '/' || ch == ':' || ch == 0x7f)
            return 0;
    }
    return 1;
}

/* UTF-8 by the table of well-formed byte sequences (Unicode 15, table
 * 3-7), written independently of client.c's decoder. */
static int wellformed_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char a = s[i];
        unsigned char lo = 0x80, hi = 0xbf;
        size_t more;
        if (a <= 0x7f) {
            i++;
            continue;
        } else if (a >= 0xc2 && a <= 0xdf) {
            more = 1;
        } else if (a >= 0xe0 && a <= 0xef) {
            more = 2;
            if (a == 0xe0)
                lo = 0xa0;
            if (a == 0xed)
                hi = 0x9f;
        } else if (a >= 0xf0 && a <= 0xf4) {
            more = 3;
            if (a == 0xf0)
                lo = 0x90;
            if (a == 0xf4)
                hi = 0x8f;
        } else {
            return 0;
        }
        if (i + more >= n) /* the sequence runs past the end */
            return 0;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= more; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return 0;
        i += more + 1;
    }
    return 1;
}

/* The rule, written independently of client.c. */
static int target_ok(const char *t)
{
    size_t len = strlen(t), colons = 0, at = 0;
    for (size_t i = 0; i < len; i++)
        if (t[i] == ':') {
            colons++;
            at = i;
        }
    return colons == 1 && len <= 512 && at < 256 && wellformed_utf8((const unsigned char *)t, len) &&
           part_ok(t, at) &&
           part_ok(t + at + 1, len - at - 1);
}

typedef struct visit {
    int micro; /* the service with the static provider */
    int visits;
} visit;

static void on_endpoints(const mu_endpoint_info *const *eps, size_t n, void *user)
{
    visit *v = user;
    if (v->micro)
        FUZZ_CHECK(n == 1 && strcmp(eps[0]->address, "127.0.0.1:9") == 0,
                   "micro has %zu endpoints", n);
    else
        FUZZ_CHECK(n == 0, "a service without providers has %zu endpoints", n);
    v->visits++;
}

static void on_watch(const char *target, size_t n, void *user)
{
    (void)target;
    (void)n;
    (void)user;
}

static void on_done(const mu_result *r, void *user)
{
    FUZZ_CHECK(r->status != MU_OK, "a call with no loop run succeeded");
    *(int *)user += 1;
}

static void quiet(mu_log_level level, const char *msg, void *user)
{
    (void)level;
    (void)msg;
    (void)user;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!base && !(base = event_base_new()))
        abort();
    char *target = fuzz_cstr(data, size);
    int ok = target_ok(target);

    mu_config *cfg = mu_config_new();
    if (!cfg || mu_config_set(cfg, "zk_hosts", "") != MU_OK ||
        mu_config_set(cfg, "static.micro", "127.0.0.1:9") != MU_OK ||
        mu_config_set(cfg, "policy.micro", "random") != MU_OK ||
        mu_config_set(cfg, "idempotent", "micro:*") != MU_OK)
        abort();
    mu_client *c;
    if (mu_client_new(base, cfg, &c) != MU_OK)
        abort();
    mu_config_free(cfg);
    mu_client_set_log(c, MU_LOG_ERROR, quiet, NULL);

    visit vis = {strncmp(target, "micro:", 6) == 0, 0};
    mu_status st = mu_client_endpoints(c, target, on_endpoints, &vis);
    if (!ok) {
        FUZZ_CHECK(st == MU_EINVAL, "endpoints: '%s' accepted (%s)", target, mu_status_name(st));
        FUZZ_CHECK(mu_client_errmsg(c)[0], "refused without a message");
    } else {
        /* Without ZooKeeper a service with no static provider has no
         * provider node: loaded at once, with no endpoint. */
        FUZZ_CHECK(st == MU_OK && vis.visits == 1, "endpoints: '%s' gave %s", target,
                   mu_status_name(st));
    }

    st = mu_client_watch(c, target, on_watch, NULL);
    FUZZ_CHECK((st == MU_OK) == ok, "watch: '%s' gave %s", target, mu_status_name(st));
    st = mu_client_watch(c, target, NULL, NULL);
    FUZZ_CHECK((st == MU_OK) == ok, "unwatch: '%s' gave %s", target, mu_status_name(st));

    int fired = 0;
    mu_call_id id;
    st = mu_call(c, target, "[1]", NULL, NULL, on_done, &fired, &id);
    FUZZ_CHECK((st == MU_OK) == ok, "call: '%s' gave %s", target, mu_status_name(st));
    FUZZ_CHECK(fired == 0, "callback inside mu_call");
    mu_client_free(c);
    FUZZ_CHECK(fired == (st == MU_OK), "callback fired %d times", fired);
    free(target);
    return 0;
}
