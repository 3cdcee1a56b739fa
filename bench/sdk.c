/*
 * bench/sdk: the SDK under the same load as bench/raw: mu_call("micro:echo",
 * "[N]") with C calls in flight, through discovery (ZooKeeper), the balancer
 * and the decoder, with the default configuration (round-robin, 32
 * connections per provider, 1024 in all).
 *
 *   sdk --zk 127.0.0.1:2181 --target micro:echo --inflight 64 --calls 20000
 *   sdk --hosts 127.0.0.1:P1,127.0.0.1:P2 --target micro:echo ...
 *
 * --hosts instead of --zk: the providers of the target's service are static
 * (static.SERVICE = --hosts, zk_hosts empty: no ZooKeeper at all).
 * Waits for the target's providers to load before anything is measured.
 * See bench.h for the modes and the lines printed.
 */
#include <event2/event.h>
#include <microutil/microutil.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static struct {
    mu_client *client;
    const char *target;
    size_t loaded;
    int have_load;
} g;

static void on_call(const mu_result *r, void *user)
{
    if (r->status != MU_OK) {
        static int shown;
        if (shown++ < 5)
            fprintf(stderr, "sdk: call failed: %s: %s\n", mu_status_name(r->status), r->detail);
    }
    bench_ended((long)(intptr_t)user, r->status == MU_OK);
}

static int bench_start_call(long slot, long seq)
{
    char args[32];
    snprintf(args, sizeof args, "[%ld]", seq);
    if (mu_call(g.client, g.target, args, NULL, NULL, on_call, (void *)(intptr_t)slot, NULL) !=
        MU_OK) {
        fprintf(stderr, "sdk: mu_call: %s\n", mu_client_errmsg(g.client));
        return -1;
    }
    return 0;
}

static unsigned long long bench_connections(void)
{
    mu_client_stats st;
    mu_client_stats_get(g.client, &st, sizeof st);
    return st.connections;
}

static void on_watch(const char *target, size_t n, void *user)
{
    (void)target;
    (void)user;
    g.loaded = n;
    g.have_load = 1;
    if (n > 0)
        event_base_loopbreak(bench_base);
}

static void on_give_up(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    event_base_loopbreak(bench_base);
}

int main(int argc, char **argv)
{
    bench_opts o;
    bench_parse(argc, argv, &o);
    if (!o.zk == !o.hosts || o.fresh || o.host_queue) /* --zk or --hosts; no raw-only option */
        bench_usage(argv[0]);
    char skey[128]; /* static.SERVICE, SERVICE the target's part before ':' */
    int sl = (int)strcspn(o.target, ":");
    if (snprintf(skey, sizeof skey, "static.%.*s", sl, o.target) >= (int)sizeof skey)
        bench_usage(argv[0]);
    g.target = o.target;
    bench_base = event_base_new();
    mu_config *cfg = mu_config_new();
    if (!bench_base || !cfg)
        bench_fail("setup failed");
    char ms[32];
    snprintf(ms, sizeof ms, "%ld", o.timeout_ms);
    if (mu_config_set(cfg, "zk_hosts", o.zk ? o.zk : "") != MU_OK ||
        (o.hosts && mu_config_set(cfg, skey, o.hosts) != MU_OK) ||
        mu_config_set(cfg, "policy", o.policy) != MU_OK ||
        mu_config_set(cfg, "timeout_ms", ms) != MU_OK ||
        /* The memory rows hold 10,000+ calls in flight on one provider: the
         * backpressure caps (10,000 calls, 1,000 queued per provider) would
         * refuse them. The comparison with raw libcurl has no caps. */
        mu_config_set(cfg, "max_calls", "10000000") != MU_OK ||
        mu_config_set(cfg, "max_queue_per_host", "10000000") != MU_OK ||
        (o.timeout_ms > 30000 && mu_config_set(cfg, "deadline_ms", ms) != MU_OK)) {
        fprintf(stderr, "sdk: %s\n", mu_config_error(cfg));
        return 2;
    }
    mu_status st = mu_client_new(bench_base, cfg, &g.client);
    mu_config_free(cfg);
    if (st != MU_OK) {
        fprintf(stderr, "sdk: mu_client_new: %s\n", mu_strerror(st));
        return 1;
    }

    /* Providers first: nothing is measured while discovery runs. */
    struct event *give_up = evtimer_new(bench_base, on_give_up, NULL);
    struct timeval tv = {20, 0};
    evtimer_add(give_up, &tv);
    if (mu_client_watch(g.client, g.target, on_watch, NULL) != MU_OK)
        bench_fail(mu_client_errmsg(g.client));
    event_base_dispatch(bench_base);
    event_free(give_up);
    mu_client_watch(g.client, g.target, NULL, NULL);
    if (g.loaded == 0) {
        fprintf(stderr, "sdk: no provider of %s found within 20 s\n", g.target);
        return 1;
    }

    int rc = bench_main(&o);

    mu_client_free(g.client);
    event_base_free(bench_base);
    return rc;
}
