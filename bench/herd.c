/*
 * bench/herd: many clients on one ZooKeeper.
 *
 * One process, one event_base, --clients mu_clients (200), each with its own
 * ZooKeeper session, all watching herd:echo, under which a helper session
 * (bench/zkw.h: zookeeper_st on the same base, driven by src/zkloop)
 * creates --providers nodes (100) directly, data {"host": "127.0.0.1",
 * "port": P} (nothing listens: no call is made). The program starts its
 * own ZooKeeper (tests/testbed.c, compiled in) so that it can stop and
 * restart it on the same port and data directory. The server lives in a
 * helper thread that owns it from start to free (testbed's children die
 * with the thread that forked them), so the loop keeps running while the
 * JVM stops and starts.
 *
 *   join:    the helper creates one more node; the time from the create
 *            until every client's watch reports it, and each client's
 *            get_children / get deltas (mu_client_stats, read 300 ms after
 *            the last client saw it, so late duplicates count).
 *   restart: the server is stopped, kept down --down-ms (1000), started
 *            again on the same port and data. Sessions resume (the server
 *            keeps them across a restart). While it runs, a sampler thread
 *            reads the server's zk_packets_received (mntr) every 100 ms,
 *            and the loop sums every client's get_children + get every
 *            100 ms. Reported: the most packets the server received in one
 *            100 ms window (requests, pings and session set-ups alike), the
 *            most get_children + get the clients sent in one window, and the
 *            time from the first client reconnected (and from the server
 *            serving again) until every client has sent its re-list, the
 *            longest any one client took from its reconnect to its re-list
 *            (what a jitter on re-listing spreads), whether
 *            sessions resumed, and then a join to show every watch is back.
 *
 *   herd [--clients 200] [--providers 100] [--joins 3] [--restarts 1]
 *        [--down-ms 1000] [--session-ms 10000]
 *
 * Lines (machine-readable, key=value):
 *   SETUP clients=.. providers=.. cold_ms=..
 *   JOIN rep=.. ms=.. gc_min=.. gc_max=.. get_min=.. get_max=..
 *   JOIN_SUMMARY median_ms=.. max_ms=.. gc_min=.. gc_max=.. get_min=.. get_max=.. clients=..
 *   WINDOW t_ms=.. server_packets=.. client_requests=..   (one per 100 ms, restarts)
 *   RESTART rep=.. peak_server_per_100ms=.. peak_client_per_100ms=.. converge_ms=..
 *           converge_from_up_ms=.. reconnect_spread_ms=.. relist_delay_max_ms=..
 *           new_sessions=.. down_ms=.. rejoin_ms=.. rejoin_gc_max=.. rejoin_get_max=..
 *   RESTART_SUMMARY (the worst of the restarts) ...
 * Exits 1 if anything timed out.
 */
#include "config.h"

#include <event2/event.h>
#include <getopt.h>
#include <microutil/microutil.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zookeeper/zookeeper.h>

#include "../tests/testbed.h"
#include "zkw.h"

#define TARGET "herd:echo"
#define ROOT "/dubbo/herd/echo/provider"
#define BASE_PORT 21000
#define WINDOW_MS 100
#define MAX_WINDOWS 600

typedef struct client {
    mu_client *c;
    size_t seen;
    uint64_t t_hit; /* when seen reached want */
    unsigned long long gc0, get0, sessions0;
    int was_down;         /* seen disconnected since the stop */
    uint64_t t_connected; /* first time connected again after that */
    uint64_t t_relisted;  /* first time its get_children count moved after the stop */
} client;

static struct {
    struct event_base *base;
    struct event *tick;
    zkw helper; /* the helper session (bench/zkw.h) */
    int nclients;
    client *cl;
    size_t want;
    /* restart phase */
    int watching; /* the 10 ms tick follows reconnects and re-lists */
    uint64_t t_next_window;
    unsigned long long last_sum;
    int nwin;
    uint64_t win_t[MAX_WINDOWS];
    unsigned long long win_client[MAX_WINDOWS];
} g;

/* The server's thread and the sampler's, and what they share with the loop. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    tb_zk *zk;
    char connstr[64];
    int port;
    int ready;       /* started (1) or failed (-1) */
    int cmd;         /* 1 restart, 2 quit */
    int down_ms;
    atomic_int busy; /* a restart is under way */
    atomic_int failed;
    _Atomic uint64_t t_up; /* the restarted server serves */
    /* sampler */
    atomic_int sampling;
    atomic_int nsamples;
    uint64_t s_t[MAX_WINDOWS * 2];
    long long s_packets[MAX_WINDOWS * 2];
} srv = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void die(const char *what)
{
    fprintf(stderr, "herd: %s\n", what);
    exit(1);
}

/* ------------------------------------------------------------ the server */

static void *server_main(void *arg)
{
    (void)arg;
    tb_zk *zk = tb_zk_start();
    pthread_mutex_lock(&srv.mu);
    srv.zk = zk;
    if (zk) {
        snprintf(srv.connstr, sizeof srv.connstr, "%s", tb_zk_connstr(zk));
        srv.port = tb_zk_port(zk);
    }
    srv.ready = zk ? 1 : -1;
    pthread_cond_broadcast(&srv.cv);
    while (zk) {
        while (srv.cmd == 0)
            pthread_cond_wait(&srv.cv, &srv.mu);
        int cmd = srv.cmd;
        srv.cmd = 0;
        if (cmd == 2)
            break;
        pthread_mutex_unlock(&srv.mu);
        if (tb_zk_stop(zk) != 0)
            atomic_store(&srv.failed, 1);
        usleep((useconds_t)srv.down_ms * 1000);
        if (tb_zk_restart(zk) != 0)
            atomic_store(&srv.failed, 1);
        atomic_store(&srv.t_up, zkw_now_us());
        atomic_store(&srv.busy, 0);
        pthread_mutex_lock(&srv.mu);
    }
    pthread_mutex_unlock(&srv.mu);
    tb_zk_free(zk);
    return NULL;
}

static void server_cmd(int cmd)
{
    pthread_mutex_lock(&srv.mu);
    srv.cmd = cmd;
    pthread_cond_broadcast(&srv.cv);
    pthread_mutex_unlock(&srv.mu);
}

/* zk_packets_received from mntr, or -1 when the server does not answer. */
static long long packets_received(void)
{
    char *a = tb_zk_4lw(srv.port, "mntr", 90);
    long long v = -1;
    const char *p = a ? strstr(a, "zk_packets_received") : NULL;
    if (p)
        v = atoll(p + strlen("zk_packets_received"));
    free(a);
    return v;
}

static void *sampler_main(void *arg)
{
    (void)arg;
    uint64_t next = zkw_now_us();
    while (atomic_load(&srv.sampling)) {
        long long v = packets_received();
        int i = atomic_load(&srv.nsamples);
        if (i < MAX_WINDOWS * 2) {
            srv.s_t[i] = zkw_now_us();
            srv.s_packets[i] = v;
            atomic_store(&srv.nsamples, i + 1);
        }
        next += WINDOW_MS * 1000u;
        uint64_t t = zkw_now_us();
        if (next > t)
            usleep((useconds_t)(next - t));
        else
            next = t;
    }
    return NULL;
}

/* ------------------------------------------------------------ the loop */

static void wait_for(int (*cond)(const zkw *), int seconds, const char *what)
{
    zkw_wait(&g.helper, cond, seconds, what);
}

static void run_for(int ms)
{
    zkw_run_for(&g.helper, ms);
}

static int all_hit(const zkw *w)
{
    (void)w;
    for (int i = 0; i < g.nclients; i++)
        if (!g.cl[i].t_hit)
            return 0;
    return 1;
}

static void on_watch(const char *target, size_t n, void *user)
{
    (void)target;
    client *c = user;
    c->seen = n;
    if (n == g.want && !c->t_hit)
        c->t_hit = zkw_now_us();
}

static unsigned long long requests_sum(void)
{
    unsigned long long s = 0;
    for (int i = 0; i < g.nclients; i++) {
        mu_client_stats st;
        mu_client_stats_get(g.cl[i].c, &st, sizeof st);
        s += st.zk_get_children + st.zk_get;
    }
    return s;
}

/* Every 10 ms while restarting: who is back, who has re-listed, and every
 * 100 ms the clients' requests in the window. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (!g.watching)
        return;
    uint64_t t = zkw_now_us();
    for (int i = 0; i < g.nclients; i++) {
        client *c = &g.cl[i];
        int up = mu_client_zk_connected(c->c);
        if (!up)
            c->was_down = 1;
        else if (c->was_down && !c->t_connected)
            c->t_connected = t;
        if (!c->t_relisted) {
            mu_client_stats st;
            mu_client_stats_get(c->c, &st, sizeof st);
            if (st.zk_get_children > c->gc0)
                c->t_relisted = t;
        }
    }
    if (t >= g.t_next_window && g.nwin < MAX_WINDOWS) {
        unsigned long long s = requests_sum();
        g.win_t[g.nwin] = t;
        g.win_client[g.nwin] = s - g.last_sum;
        g.last_sum = s;
        g.nwin++;
        g.t_next_window += WINDOW_MS * 1000u;
    }
}

/* Every client has its session back (resumed: its watches re-armed by the
 * ZooKeeper client, so it need not re-list). */
static int all_back(const zkw *w)
{
    (void)w;
    if (atomic_load(&srv.busy))
        return 0;
    for (int i = 0; i < g.nclients; i++)
        if (!g.cl[i].t_connected)
            return 0;
    return 1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* One node joins; returns the time until every client saw it (µs) and the
 * per-client request deltas. */
static uint64_t join(int idx, size_t want, unsigned long long *gc_min, unsigned long long *gc_max,
                     unsigned long long *get_min, unsigned long long *get_max)
{
    for (int i = 0; i < g.nclients; i++) {
        mu_client_stats st;
        mu_client_stats_get(g.cl[i].c, &st, sizeof st);
        g.cl[i].gc0 = st.zk_get_children;
        g.cl[i].get0 = st.zk_get;
        g.cl[i].t_hit = 0;
    }
    g.want = want;
    uint64_t t0 = zkw_now_us();
    zkw_create_provider(&g.helper, idx);
    mu_zkloop_update(g.helper.zl);
    wait_for(all_hit, 30, "every client to see a join");
    uint64_t last = 0;
    for (int i = 0; i < g.nclients; i++)
        if (g.cl[i].t_hit > last)
            last = g.cl[i].t_hit;
    wait_for(zkw_idle, 10, "the create's completion");
    run_for(300); /* late duplicates would count */
    *gc_min = *get_min = ~0ull;
    *gc_max = *get_max = 0;
    for (int i = 0; i < g.nclients; i++) {
        mu_client_stats st;
        mu_client_stats_get(g.cl[i].c, &st, sizeof st);
        unsigned long long dgc = st.zk_get_children - g.cl[i].gc0, dget = st.zk_get - g.cl[i].get0;
        if (dgc < *gc_min)
            *gc_min = dgc;
        if (dgc > *gc_max)
            *gc_max = dgc;
        if (dget < *get_min)
            *get_min = dget;
        if (dget > *get_max)
            *get_max = dget;
    }
    return last - t0;
}

int main(int argc, char **argv)
{
    int nclients = 200, nprov = 100, joins = 3, restarts = 1, down_ms = 1000, session_ms = 10000;
    static const struct option lo[] = {
        {"clients", required_argument, NULL, 'c'},  {"providers", required_argument, NULL, 'p'},
        {"joins", required_argument, NULL, 'j'},    {"restarts", required_argument, NULL, 'r'},
        {"down-ms", required_argument, NULL, 'd'},  {"session-ms", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    int o, bad = 0;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'c': nclients = atoi(optarg); break;
        case 'p': nprov = atoi(optarg); break;
        case 'j': joins = atoi(optarg); break;
        case 'r': restarts = atoi(optarg); break;
        case 'd': down_ms = atoi(optarg); break;
        case 's': session_ms = atoi(optarg); break;
        default: bad = 1; break;
        }
    }
    if (bad || optind != argc || nclients < 1 || nclients > 2000 || nprov < 1 || nprov > 10000 ||
        joins < 1 || joins > 100 || restarts < 0 || restarts > 20 || down_ms < 0 ||
        down_ms > 20000 || session_ms < 1000) {
        fprintf(stderr, "usage: %s [--clients N] [--providers P] [--joins J] [--restarts R] "
                        "[--down-ms MS] [--session-ms MS]\n", argv[0]);
        return 2;
    }
    srv.down_ms = down_ms;

    pthread_t server;
    if (pthread_create(&server, NULL, server_main, NULL) != 0)
        die("pthread_create failed");
    pthread_mutex_lock(&srv.mu);
    while (srv.ready == 0)
        pthread_cond_wait(&srv.cv, &srv.mu);
    pthread_mutex_unlock(&srv.mu);
    if (srv.ready < 0)
        die("ZooKeeper did not start");
    const char *zk = srv.connstr;

    g.base = event_base_new();
    g.tick = g.base ? event_new(g.base, -1, EV_PERSIST, on_tick, NULL) : NULL;
    if (!g.tick || zkw_init(&g.helper, g.base, "herd", ROOT, BASE_PORT) != 0)
        die("setup failed");
    if (zkw_open(&g.helper, zk, 4000) != 0)
        die("zookeeper_init failed");
    wait_for(zkw_connected, 30, "the helper's session");
    zkw_create_providers(&g.helper, nprov);
    wait_for(zkw_idle, 30, "the provider nodes");
    if (g.helper.errors)
        die("could not create the provider nodes");

    /* The clients, all at once. */
    g.nclients = nclients;
    g.cl = calloc((size_t)nclients, sizeof *g.cl);
    if (!g.cl)
        die("out of memory");
    char sms[32];
    snprintf(sms, sizeof sms, "%d", session_ms);
    g.want = (size_t)nprov;
    uint64_t t0 = zkw_now_us();
    for (int i = 0; i < nclients; i++) {
        mu_config *cfg = mu_config_new();
        if (!cfg || mu_config_set(cfg, "zk_hosts", zk) != MU_OK ||
            mu_config_set(cfg, "zk_session_timeout_ms", sms) != MU_OK ||
            mu_client_new(g.base, cfg, &g.cl[i].c) != MU_OK)
            die("client setup failed");
        mu_config_free(cfg);
        mu_client_set_log(g.cl[i].c, MU_LOG_ERROR, NULL, NULL);
        if (mu_client_watch(g.cl[i].c, TARGET, on_watch, &g.cl[i]) != MU_OK)
            die(mu_client_errmsg(g.cl[i].c));
    }
    wait_for(all_hit, 60, "every client's first load");
    printf("SETUP clients=%d providers=%d cold_ms=%.1f\n", nclients, nprov,
           (double)(zkw_now_us() - t0) / 1000.0);
    fflush(stdout);
    run_for(500);

    /* Joins. */
    int next = nprov;
    uint64_t *us = calloc((size_t)joins, sizeof *us);
    unsigned long long jgc_min = ~0ull, jgc_max = 0, jget_min = ~0ull, jget_max = 0;
    if (!us)
        die("out of memory");
    for (int r = 0; r < joins; r++) {
        unsigned long long a, b, c, d;
        us[r] = join(next, (size_t)next + 1, &a, &b, &c, &d);
        next++;
        printf("JOIN rep=%d ms=%.2f gc_min=%llu gc_max=%llu get_min=%llu get_max=%llu\n", r,
               (double)us[r] / 1000.0, a, b, c, d);
        jgc_min = a < jgc_min ? a : jgc_min;
        jgc_max = b > jgc_max ? b : jgc_max;
        jget_min = c < jget_min ? c : jget_min;
        jget_max = d > jget_max ? d : jget_max;
    }
    qsort(us, (size_t)joins, sizeof *us, cmp_u64);
    printf("JOIN_SUMMARY median_ms=%.2f max_ms=%.2f gc_min=%llu gc_max=%llu get_min=%llu "
           "get_max=%llu clients=%d reps=%d\n",
           (double)us[joins / 2] / 1000.0, (double)us[joins - 1] / 1000.0, jgc_min, jgc_max,
           jget_min, jget_max, nclients, joins);
    fflush(stdout);

    /* Restarts. */
    double w_peak_srv = 0, w_peak_cli = 0, w_conv = 0, w_conv_up = 0, w_spread = 0, w_rejoin = 0,
           w_delay = 0;
    unsigned long long w_new = 0;
    int w_relisted = 0;
    struct timeval ten_ms = {0, 10000};
    for (int r = 0; r < restarts; r++) {
        for (int i = 0; i < nclients; i++) {
            mu_client_stats st;
            mu_client_stats_get(g.cl[i].c, &st, sizeof st);
            g.cl[i].gc0 = st.zk_get_children;
            g.cl[i].sessions0 = st.zk_sessions;
            g.cl[i].t_connected = g.cl[i].t_relisted = 0;
            g.cl[i].was_down = 0;
        }
        atomic_store(&srv.nsamples, 0);
        atomic_store(&srv.sampling, 1);
        pthread_t sampler;
        if (pthread_create(&sampler, NULL, sampler_main, NULL) != 0)
            die("pthread_create failed");
        g.nwin = 0;
        g.last_sum = requests_sum();
        uint64_t t_stop = zkw_now_us();
        g.t_next_window = t_stop + WINDOW_MS * 1000u;
        g.watching = 1;
        event_add(g.tick, &ten_ms);
        atomic_store(&srv.busy, 1);
        server_cmd(1);
        wait_for(all_back, 60 + down_ms / 1000, "every client to reconnect after the restart");
        run_for(2500); /* past the re-list jitter bound (2 s): any re-list shows */
        uint64_t t_conv = 0, t_first = ~0ull, t_lastc = 0, delay = 0;
        int relisted = 0;
        for (int i = 0; i < nclients; i++) {
            relisted += g.cl[i].t_relisted != 0;
            if (!g.cl[i].t_relisted) /* converged when back */
                g.cl[i].t_relisted = g.cl[i].t_connected;
            uint64_t dl = g.cl[i].t_relisted > g.cl[i].t_connected
                              ? g.cl[i].t_relisted - g.cl[i].t_connected : 0;
            if (dl > delay)
                delay = dl;
            if (g.cl[i].t_relisted > t_conv)
                t_conv = g.cl[i].t_relisted;
            if (g.cl[i].t_connected < t_first)
                t_first = g.cl[i].t_connected;
            if (g.cl[i].t_connected > t_lastc)
                t_lastc = g.cl[i].t_connected;
        }
        g.watching = 0;
        event_del(g.tick);
        atomic_store(&srv.sampling, 0);
        pthread_join(sampler, NULL);
        if (atomic_load(&srv.failed))
            die("the ZooKeeper restart failed");
        uint64_t t_up = atomic_load(&srv.t_up);

        /* The server's windows: deltas of adjacent answered samples. A
         * restarted server counts from 0, so its first answer is a delta
         * from 0 (it started at most one failed sample, ~100 ms, before). */
        double peak_srv = 0, peak_cli = 0;
        int ns = atomic_load(&srv.nsamples);
        long long prev = -1;
        int restarted = 0;
        for (int i = 0; i < ns; i++) {
            long long v = srv.s_packets[i], d = -1;
            if (v < 0) {
                restarted = 1;
                prev = -1;
                continue;
            }
            if (prev >= 0 && v >= prev)
                d = v - prev;
            else if (restarted)
                d = v;
            prev = v;
            if (d >= 0 && i > 0) {
                /* A window the sampler stretched (the server answered mntr
                 * late) counts at its rate per 100 ms; a shorter one as is. */
                double ms = (double)(srv.s_t[i] - srv.s_t[i - 1]) / 1000.0;
                double rate = ms > WINDOW_MS ? (double)d * WINDOW_MS / ms : (double)d;
                printf("SERVER_WINDOW t_ms=%.0f ms=%.0f packets=%lld\n",
                       ((double)srv.s_t[i] - (double)t_stop) / 1000.0, ms, d);
                if (rate > peak_srv)
                    peak_srv = rate;
            }
        }
        for (int i = 0; i < g.nwin; i++) {
            printf("CLIENT_WINDOW t_ms=%.0f requests=%llu\n",
                   ((double)g.win_t[i] - (double)t_stop) / 1000.0, g.win_client[i]);
            if ((double)g.win_client[i] > peak_cli)
                peak_cli = (double)g.win_client[i];
        }
        unsigned long long news = 0;
        for (int i = 0; i < nclients; i++) {
            mu_client_stats st;
            mu_client_stats_get(g.cl[i].c, &st, sizeof st);
            news += st.zk_sessions - g.cl[i].sessions0;
        }
        /* Every watch is back: one more join reaches every client. The
         * helper's own session may still be reconnecting. */
        wait_for(zkw_connected, 30, "the helper's session after the restart");
        unsigned long long a, b, c, d;
        uint64_t rejoin = join(next, (size_t)next + 1, &a, &b, &c, &d);
        next++;
        double conv = (double)(t_conv - t_first) / 1000.0;
        double conv_up = t_conv > t_up ? (double)(t_conv - t_up) / 1000.0 : 0;
        double spread = (double)(t_lastc - t_first) / 1000.0;
        printf("RESTART rep=%d peak_server_per_100ms=%.0f peak_client_per_100ms=%.0f "
               "converge_ms=%.0f converge_from_up_ms=%.0f reconnect_spread_ms=%.0f "
               "relist_delay_max_ms=%.0f relisted=%d new_sessions=%llu down_ms=%d rejoin_ms=%.2f "
               "rejoin_gc_max=%llu rejoin_get_max=%llu\n",
               r, peak_srv, peak_cli, conv, conv_up, spread, (double)delay / 1000.0, relisted, news,
               down_ms, (double)rejoin / 1000.0, b, d);
        fflush(stdout);
        if (peak_srv > w_peak_srv) w_peak_srv = peak_srv;
        if (peak_cli > w_peak_cli) w_peak_cli = peak_cli;
        if (conv > w_conv) w_conv = conv;
        if (conv_up > w_conv_up) w_conv_up = conv_up;
        if (spread > w_spread) w_spread = spread;
        if ((double)delay / 1000.0 > w_delay) w_delay = (double)delay / 1000.0;
        if ((double)rejoin / 1000.0 > w_rejoin) w_rejoin = (double)rejoin / 1000.0;
        w_new += news;
        if (relisted > w_relisted) w_relisted = relisted;
        run_for(500);
    }
    if (restarts > 0)
        printf("RESTART_SUMMARY peak_server_per_100ms=%.0f peak_client_per_100ms=%.0f "
               "converge_ms=%.0f converge_from_up_ms=%.0f reconnect_spread_ms=%.0f "
               "relist_delay_max_ms=%.0f relisted=%d new_sessions=%llu rejoin_ms=%.2f clients=%d "
               "reps=%d\n",
               w_peak_srv, w_peak_cli, w_conv, w_conv_up, w_spread, w_delay, w_relisted, w_new,
               w_rejoin, nclients, restarts);

    for (int i = 0; i < nclients; i++)
        mu_client_free(g.cl[i].c);
    free(g.cl);
    free(us);
    zkw_close(&g.helper);
    event_free(g.tick);
    event_base_free(g.base);
    server_cmd(2);
    pthread_join(server, NULL);
    return g.helper.errors ? 1 : 0;
}
