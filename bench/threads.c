/*
 * bench/threads: calls/s with N threads, each running its own event_base
 * and its own mu_client (as examples/threads.c does), every thread keeping
 * --inflight calls of --target in flight against the providers it finds in
 * ZooKeeper.
 *
 *   threads --zk 127.0.0.1:2181 --target micro:echo --threads 2
 *           [--inflight 16] [--warmup-ms 300] [--duration-ms 2000]
 *
 * Each thread loads the target's providers and warms up (connections
 * opened) for --warmup-ms; then all threads pass a barrier and count the
 * calls that end within the next --duration-ms; no call starts after it.
 * Prints:
 *   RESULT threads=N inflight=C calls=.. wall_s=.. cps=.. failed=..
 * (cps: all threads' calls that ended in the window, per second). Exits 1
 * if a call failed.
 */
#include <event2/event.h>
#include <getopt.h>
#include <microutil/microutil.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *zk, *target;
static int inflight = 16, warmup_ms = 300, duration_ms = 2000;
static pthread_barrier_t barrier;
static uint64_t t_start, t_end; /* written by thread 0 between the barriers */

typedef struct worker {
    pthread_t tid;
    struct event_base *base;
    mu_client *c;
    int inflight;
    int stopping; /* no new calls */
    int measuring;
    long long counted, failed;
    size_t loaded;
} worker;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void start_calls(worker *w);

static void on_call(const mu_result *r, void *user)
{
    worker *w = user;
    w->inflight--;
    if (r->status != MU_OK) {
        if (w->failed++ < 3)
            fprintf(stderr, "threads: call failed: %s: %s\n", mu_status_name(r->status), r->detail);
    } else if (w->measuring && now_us() <= t_end) {
        w->counted++;
    }
    start_calls(w);
}

static void start_calls(worker *w)
{
    while (!w->stopping && w->inflight < inflight) {
        if (mu_call(w->c, target, "[1]", NULL, NULL, on_call, w, NULL) != MU_OK) {
            fprintf(stderr, "threads: mu_call: %s\n", mu_client_errmsg(w->c));
            w->failed++;
            w->stopping = 1;
            return;
        }
        w->inflight++;
    }
}

static void on_watch(const char *t, size_t n, void *user)
{
    (void)t;
    worker *w = user;
    w->loaded = n;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

/* Runs the loop for ms milliseconds, or until cond holds (cond may be NULL). */
static void run_for(worker *w, int ms, int (*cond)(worker *))
{
    struct event *t = evtimer_new(w->base, on_timer, w->base);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(t, &tv);
    if (cond) {
        while (!cond(w) && evtimer_pending(t, NULL))
            event_base_loop(w->base, EVLOOP_ONCE);
    } else {
        event_base_dispatch(w->base);
    }
    event_free(t);
}

static int loaded(worker *w) { return w->loaded > 0; }
static int drained(worker *w) { return w->inflight == 0; }

static void *run(void *arg)
{
    worker *w = arg;
    w->base = event_base_new();
    mu_config *cfg = mu_config_new();
    if (!w->base || !cfg || mu_config_set(cfg, "zk_hosts", zk) != MU_OK ||
        mu_client_new(w->base, cfg, &w->c) != MU_OK) {
        fprintf(stderr, "threads: client setup failed\n");
        exit(1);
    }
    mu_config_free(cfg);
    if (mu_client_watch(w->c, target, on_watch, w) != MU_OK) {
        fprintf(stderr, "threads: %s\n", mu_client_errmsg(w->c));
        exit(1);
    }
    run_for(w, 20000, loaded);
    mu_client_watch(w->c, target, NULL, NULL);
    if (!w->loaded) {
        fprintf(stderr, "threads: no provider of %s within 20 s\n", target);
        exit(1);
    }
    start_calls(w);
    run_for(w, warmup_ms, NULL);
    /* Everyone warm: the window starts at once for all threads. */
    pthread_barrier_wait(&barrier); /* main sets the window */
    pthread_barrier_wait(&barrier);
    w->measuring = 1;
    int left = (int)((t_end - now_us()) / 1000u);
    run_for(w, left > 0 ? left : 0, NULL);
    w->stopping = 1;
    run_for(w, 10000, drained);
    mu_client_free(w->c);
    event_base_free(w->base);
    return NULL;
}

int main(int argc, char **argv)
{
    int nthreads = 1;
    static const struct option lo[] = {
        {"zk", required_argument, NULL, 'z'},          {"target", required_argument, NULL, 't'},
        {"threads", required_argument, NULL, 'n'},     {"inflight", required_argument, NULL, 'i'},
        {"warmup-ms", required_argument, NULL, 'w'},   {"duration-ms", required_argument, NULL, 'd'},
        {NULL, 0, NULL, 0},
    };
    int o, bad = 0;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'z': zk = optarg; break;
        case 't': target = optarg; break;
        case 'n': nthreads = atoi(optarg); break;
        case 'i': inflight = atoi(optarg); break;
        case 'w': warmup_ms = atoi(optarg); break;
        case 'd': duration_ms = atoi(optarg); break;
        default: bad = 1; break;
        }
    }
    if (bad || optind != argc || !zk || !target || nthreads < 1 || nthreads > 64 || inflight < 1 ||
        warmup_ms < 0 || duration_ms < 100) {
        fprintf(stderr, "usage: %s --zk HOSTS --target SVC:METHOD [--threads N] [--inflight C] "
                        "[--warmup-ms MS] [--duration-ms MS]\n", argv[0]);
        return 2;
    }
    worker *w = calloc((size_t)nthreads, sizeof *w);
    if (!w || pthread_barrier_init(&barrier, NULL, (unsigned)nthreads + 1) != 0)
        return 2;
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&w[i].tid, NULL, run, &w[i]) != 0) {
            fprintf(stderr, "threads: pthread_create failed\n");
            return 1;
        }
    /* main takes part in the barriers and sets the window between them */
    pthread_barrier_wait(&barrier);
    t_start = now_us();
    t_end = t_start + (uint64_t)duration_ms * 1000u;
    pthread_barrier_wait(&barrier);
    long long calls = 0, failed = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(w[i].tid, NULL);
        calls += w[i].counted;
        failed += w[i].failed;
    }
    double wall = (double)duration_ms / 1000.0;
    printf("RESULT threads=%d inflight=%d calls=%lld wall_s=%.3f cps=%.0f failed=%lld\n",
           nthreads, inflight, calls, wall, (double)calls / wall, failed);
    free(w);
    return failed ? 1 : 0;
}
