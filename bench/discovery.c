/*
 * bench/discovery: what discovery costs with 1,000 providers.
 *
 * A helper session (bench/zkw.h: zookeeper_st on the same event_base,
 * driven by src/zkloop) creates N provider nodes for disco:echo directly in
 * ZooKeeper, data {"host": "127.0.0.1", "port": P} with distinct ports
 * (nothing listens: no call is made). Then:
 *
 *   cold: a new client (mu_client_new) watches disco:echo; the time from
 *         mu_client_new() until the watch reports N endpoints, and the
 *         get_children / get requests it sent (mu_client_stats).
 *   join: with a client holding the N, the helper creates one more node;
 *         the time from the create until the watch reports N + 1, and the
 *         requests that cost.
 *   leave: the helper deletes that node again; the same.
 *
 *   discovery --zk 127.0.0.1:2181 [--providers 1000] [--reps 5]
 *
 * Prints per-repetition lines and summaries:
 *   COLD_SUMMARY median_ms=.. min_ms=.. max_ms=.. get_children=.. get=.. endpoints=..
 *   JOIN_SUMMARY median_ms=.. max_ms=.. get_children_max=.. get_max=.. ...
 *   LEAVE_SUMMARY ...
 */
#include "config.h"

#include <event2/event.h>
#include <getopt.h>
#include <microutil/microutil.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zookeeper/zookeeper.h>

#include "zkw.h"

#define TARGET "disco:echo"
#define ROOT "/dubbo/disco/echo/provider"
#define BASE_PORT 20000

static struct {
    struct event_base *base;
    zkw helper; /* the helper session (bench/zkw.h) */
    size_t want; /* endpoints the watch waits for */
    size_t seen;
    uint64_t t_seen;
    int hit;
} g;

static void die(const char *what)
{
    fprintf(stderr, "discovery: %s\n", what);
    exit(1);
}

static int watch_hit(const zkw *w)
{
    (void)w;
    return g.hit;
}

/* Runs the loop until cond holds; gives up after 30 s. */
static void wait_for(int (*cond)(const zkw *), const char *what)
{
    zkw_wait(&g.helper, cond, 30, what);
}

/* ------------------------------------------------------------ the client */

static void on_watch(const char *target, size_t n, void *user)
{
    (void)target;
    (void)user;
    g.seen = n;
    if (n == g.want && !g.hit) {
        g.t_seen = zkw_now_us();
        g.hit = 1;
    }
}

static mu_client *client_new(const char *zk)
{
    mu_config *cfg = mu_config_new();
    mu_client *c = NULL;
    if (!cfg || mu_config_set(cfg, "zk_hosts", zk) != MU_OK ||
        mu_client_new(g.base, cfg, &c) != MU_OK)
        die("client setup failed");
    mu_config_free(cfg);
    return c;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void summary(const char *name, uint64_t *us, int n, unsigned long long gc_max,
                    unsigned long long get_max, size_t endpoints)
{
    qsort(us, (size_t)n, sizeof *us, cmp_u64);
    printf("%s_SUMMARY median_ms=%.2f min_ms=%.2f max_ms=%.2f get_children=%llu get=%llu "
           "endpoints=%zu reps=%d\n",
           name, (double)us[n / 2] / 1000.0, (double)us[0] / 1000.0, (double)us[n - 1] / 1000.0,
           gc_max, get_max, endpoints, n);
}

int main(int argc, char **argv)
{
    const char *zk = NULL;
    int n = 1000, reps = 5;
    static const struct option lo[] = {
        {"zk", required_argument, NULL, 'z'},
        {"providers", required_argument, NULL, 'n'},
        {"reps", required_argument, NULL, 'r'},
        {NULL, 0, NULL, 0},
    };
    int c, bad = 0;
    while (!bad && (c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'z': zk = optarg; break;
        case 'n': n = atoi(optarg); break;
        case 'r': reps = atoi(optarg); break;
        default: bad = 1; break; /* getopt has named it */
        }
    }
    if (bad || !zk || optind != argc || n < 1 || n > 40000 || reps < 1 || reps > 100) {
        fprintf(stderr, "usage: %s --zk HOST:PORT [--providers N] [--reps R]\n", argv[0]);
        return 2;
    }

    g.base = event_base_new();
    if (!g.base || zkw_init(&g.helper, g.base, "discovery", ROOT, BASE_PORT) != 0)
        die("setup failed");
    zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
    if (zkw_open(&g.helper, zk, 10000) != 0)
        die("zookeeper_init failed");
    wait_for(zkw_connected, "the helper's ZooKeeper session");

    /* N providers, pipelined: one session runs its requests in order. */
    uint64_t t0 = zkw_now_us();
    zkw_create_providers(&g.helper, n);
    wait_for(zkw_idle, "the provider nodes to be created");
    if (g.helper.errors)
        die("could not create the provider nodes");
    printf("CREATE providers=%d ms=%.1f\n", n, (double)(zkw_now_us() - t0) / 1000.0);

    /* Cold loads: a fresh client each time. */
    uint64_t *us = calloc((size_t)reps, sizeof *us);
    unsigned long long gc_max = 0, get_max = 0;
    if (!us)
        die("out of memory");
    for (int r = 0; r < reps; r++) {
        g.want = (size_t)n;
        g.hit = 0;
        g.seen = 0;
        t0 = zkw_now_us();
        mu_client *cl = client_new(zk);
        if (mu_client_watch(cl, TARGET, on_watch, NULL) != MU_OK)
            die(mu_client_errmsg(cl));
        wait_for(watch_hit, "the cold load");
        us[r] = g.t_seen - t0;
        mu_client_stats st;
        mu_client_stats_get(cl, &st, sizeof st);
        printf("COLD rep=%d ms=%.2f get_children=%llu get=%llu endpoints=%zu\n", r,
               (double)us[r] / 1000.0, st.zk_get_children, st.zk_get, g.seen);
        if (st.zk_get_children > gc_max)
            gc_max = st.zk_get_children;
        if (st.zk_get > get_max)
            get_max = st.zk_get;
        mu_client_free(cl);
    }
    summary("COLD", us, reps, gc_max, get_max, (size_t)n);

    /* Joins and leaves, against one client that holds the N. */
    mu_client *cl = client_new(zk);
    g.want = (size_t)n;
    g.hit = 0;
    if (mu_client_watch(cl, TARGET, on_watch, NULL) != MU_OK)
        die(mu_client_errmsg(cl));
    wait_for(watch_hit, "the load before the joins");
    uint64_t *leave_us = calloc((size_t)reps, sizeof *leave_us);
    unsigned long long lgc_max = 0, lget_max = 0;
    if (!leave_us)
        die("out of memory");
    gc_max = get_max = 0;
    for (int r = 0; r < reps; r++) {
        mu_client_stats a, b;
        /* join */
        mu_client_stats_get(cl, &a, sizeof a);
        g.want = (size_t)n + 1;
        g.hit = 0;
        t0 = zkw_now_us();
        zkw_create_provider(&g.helper, n + r);
        mu_zkloop_update(g.helper.zl);
        wait_for(watch_hit, "a join");
        us[r] = g.t_seen - t0;
        mu_client_stats_get(cl, &b, sizeof b);
        unsigned long long dgc = b.zk_get_children - a.zk_get_children, dget = b.zk_get - a.zk_get;
        printf("JOIN rep=%d ms=%.2f get_children=%llu get=%llu endpoints=%zu\n", r,
               (double)us[r] / 1000.0, dgc, dget, g.seen);
        if (dgc > gc_max)
            gc_max = dgc;
        if (dget > get_max)
            get_max = dget;
        /* the create's own completion may still be queued: let it land */
        wait_for(zkw_idle, "the create's completion");

        /* leave */
        mu_client_stats_get(cl, &a, sizeof a);
        g.want = (size_t)n;
        g.hit = 0;
        t0 = zkw_now_us();
        zkw_delete_provider(&g.helper, n + r);
        mu_zkloop_update(g.helper.zl);
        wait_for(watch_hit, "a leave");
        leave_us[r] = g.t_seen - t0;
        mu_client_stats_get(cl, &b, sizeof b);
        dgc = b.zk_get_children - a.zk_get_children;
        dget = b.zk_get - a.zk_get;
        printf("LEAVE rep=%d ms=%.2f get_children=%llu get=%llu endpoints=%zu\n", r,
               (double)leave_us[r] / 1000.0, dgc, dget, g.seen);
        if (dgc > lgc_max)
            lgc_max = dgc;
        if (dget > lget_max)
            lget_max = dget;
        wait_for(zkw_idle, "the delete's completion");
    }
    summary("JOIN", us, reps, gc_max, get_max, (size_t)n + 1);
    summary("LEAVE", leave_us, reps, lgc_max, lget_max, (size_t)n);
    mu_client_free(cl);

    free(us);
    free(leave_us);
    zkw_close(&g.helper);
    event_base_free(g.base);
    return g.helper.errors ? 1 : 0;
}
