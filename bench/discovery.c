/*
 * bench/discovery: what discovery costs with 1,000 providers.
 *
 * A helper session (zookeeper_st on the same event_base, driven by
 * src/zkloop) creates N provider nodes for disco:echo directly in
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
#include <time.h>
#include <zookeeper/zookeeper.h>

#include "zkloop.h"

#define TARGET "disco:echo"
#define ROOT "/dubbo/disco/echo/provider"
#define BASE_PORT 20000

static struct {
    struct event_base *base;
    struct event *deadline;
    zhandle_t *zh;
    mu_zkloop *zl;
    int connected;
    long outstanding;
    int create_errors;
    size_t want; /* endpoints the watch waits for */
    size_t seen;
    uint64_t t_seen;
    int timed_out;
    int hit;
} g;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void die(const char *what)
{
    fprintf(stderr, "discovery: %s\n", what);
    exit(1);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    g.timed_out = 1;
}

static int is_connected(void) { return g.connected; }
static int none_outstanding(void) { return g.outstanding == 0; }
static int watch_hit(void) { return g.hit; }

/* Runs the loop until cond() holds; gives up after 30 s. */
static void wait_for(int (*cond)(void), const char *what)
{
    struct timeval tv = {30, 0};
    g.timed_out = 0;
    evtimer_add(g.deadline, &tv);
    while (!cond() && !g.timed_out)
        event_base_loop(g.base, EVLOOP_ONCE);
    evtimer_del(g.deadline);
    if (!cond()) {
        fprintf(stderr, "discovery: timed out waiting for %s\n", what);
        exit(1);
    }
}

/* ------------------------------------------------------------ helper session */

static void zk_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    (void)zh;
    (void)path;
    (void)ctx;
    if (type == ZOO_SESSION_EVENT && state == ZOO_CONNECTED_STATE)
        g.connected = 1;
}

static void on_created(int rc, const char *value, const void *data)
{
    (void)value;
    if (rc != ZOK && !(rc == ZNODEEXISTS && data != NULL)) {
        if (g.create_errors++ < 3)
            fprintf(stderr, "discovery: create failed: %s\n", zerror(rc));
    }
    g.outstanding--;
}

static void on_deleted(int rc, const void *data)
{
    (void)data;
    if (rc != ZOK && g.create_errors++ < 3)
        fprintf(stderr, "discovery: delete failed: %s\n", zerror(rc));
    g.outstanding--;
}

/* parent != 0: an existing node is fine. */
static void create(const char *path, const char *data, int parent)
{
    int rc = zoo_acreate(g.zh, path, data, data ? (int)strlen(data) : -1, &ZOO_OPEN_ACL_UNSAFE, 0,
                         on_created, parent ? "parent" : NULL);
    if (rc != ZOK)
        die(zerror(rc));
    g.outstanding++;
}

static void create_provider(int i)
{
    char path[256], data[128];
    snprintf(path, sizeof path, ROOT "/p%06d", i);
    snprintf(data, sizeof data, "{\"host\": \"127.0.0.1\", \"port\": %d}", BASE_PORT + i);
    create(path, data, 0);
}

/* ------------------------------------------------------------ the client */

static void on_watch(const char *target, size_t n, void *user)
{
    (void)target;
    (void)user;
    g.seen = n;
    if (n == g.want && !g.hit) {
        g.t_seen = now_us();
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
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'z': zk = optarg; break;
        case 'n': n = atoi(optarg); break;
        case 'r': reps = atoi(optarg); break;
        default: zk = NULL; optind = argc + 1; break;
        }
    }
    if (!zk || optind != argc || n < 1 || n > 40000 || reps < 1 || reps > 100) {
        fprintf(stderr, "usage: %s --zk HOST:PORT [--providers N] [--reps R]\n", argv[0]);
        return 2;
    }

    g.base = event_base_new();
    g.deadline = g.base ? evtimer_new(g.base, on_deadline, NULL) : NULL;
    g.zl = g.base ? mu_zkloop_new(g.base) : NULL;
    if (!g.deadline || !g.zl)
        die("setup failed");
    zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
    g.zh = zookeeper_init(zk, zk_watcher, 10000, NULL, NULL, 0);
    if (!g.zh)
        die("zookeeper_init failed");
    mu_zkloop_attach(g.zl, g.zh);
    wait_for(is_connected, "the helper's ZooKeeper session");

    /* N providers, pipelined: one session runs its requests in order. */
    uint64_t t0 = now_us();
    create("/dubbo", "", 1);
    create("/dubbo/disco", "", 1);
    create("/dubbo/disco/echo", "", 1);
    create(ROOT, "", 1);
    for (int i = 0; i < n; i++)
        create_provider(i);
    mu_zkloop_update(g.zl);
    wait_for(none_outstanding, "the provider nodes to be created");
    if (g.create_errors)
        die("could not create the provider nodes");
    printf("CREATE providers=%d ms=%.1f\n", n, (double)(now_us() - t0) / 1000.0);

    /* Cold loads: a fresh client each time. */
    uint64_t *us = calloc((size_t)reps, sizeof *us);
    unsigned long long gc_max = 0, get_max = 0;
    if (!us)
        die("out of memory");
    for (int r = 0; r < reps; r++) {
        g.want = (size_t)n;
        g.hit = 0;
        g.seen = 0;
        t0 = now_us();
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
        t0 = now_us();
        create_provider(n + r);
        mu_zkloop_update(g.zl);
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
        wait_for(none_outstanding, "the create's completion");

        /* leave */
        char path[256];
        snprintf(path, sizeof path, ROOT "/p%06d", n + r);
        mu_client_stats_get(cl, &a, sizeof a);
        g.want = (size_t)n;
        g.hit = 0;
        t0 = now_us();
        if (zoo_adelete(g.zh, path, -1, on_deleted, NULL) != ZOK)
            die("zoo_adelete failed");
        g.outstanding++;
        mu_zkloop_update(g.zl);
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
        wait_for(none_outstanding, "the delete's completion");
    }
    summary("JOIN", us, reps, gc_max, get_max, (size_t)n + 1);
    summary("LEAVE", leave_us, reps, lgc_max, lget_max, (size_t)n);
    mu_client_free(cl);

    free(us);
    free(leave_us);
    mu_zkloop_attach(g.zl, NULL);
    zookeeper_close(g.zh);
    mu_zkloop_free(g.zl);
    event_free(g.deadline);
    event_base_free(g.base);
    return g.create_errors ? 1 : 0;
}
