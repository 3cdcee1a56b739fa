/* threads: one client per thread. Each thread makes its own event_base
 * and its own mu_client, keeps a few calls in flight until it has made its
 * share, then frees both. Nothing is shared between the threads but the
 * process: the library sets its process-wide state up once (see "Threads
 * and process-wide state" in microutil.h).
 *
 *   threads ZK_HOSTS TARGET THREADS CALLS_PER_THREAD
 *   threads 127.0.0.1:2181 micro:whoami 4 1000
 *
 * Prints one line, "N calls, N failed", and exits 0 when none failed.
 */
#include <event2/event.h>
#include <microutil/microutil.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IN_FLIGHT 8 /* calls in flight per thread */

struct worker {
    pthread_t tid;
    int running;
    const char *zk, *target;
    int total, started, done, failed, inflight;
    mu_client *client;
};

static void fill(struct worker *w);

static void done(const mu_result *res, void *user)
{
    struct worker *w = user;
    w->inflight--;
    w->done++;
    if (res->status != MU_OK && ++w->failed <= 3)
        fprintf(stderr, "threads: call failed: %s: %s\n", mu_status_name(res->status), res->detail);
    fill(w);
}

static void fill(struct worker *w)
{
    while (w->inflight < IN_FLIGHT && w->started < w->total) {
        if (mu_call(w->client, w->target, NULL, NULL, NULL, done, w, NULL) != MU_OK) {
            fprintf(stderr, "threads: %s\n", mu_client_errmsg(w->client));
            w->failed += w->total - w->started; /* never started: count them failed */
            w->done += w->total - w->started;
            w->total = w->started;
            break;
        }
        w->started++;
        w->inflight++;
    }
}

static void *run(void *arg)
{
    struct worker *w = arg;
    struct event_base *base = event_base_new();
    mu_config *cfg = mu_config_new();
    mu_status st = MU_ENOMEM;
    if (base && cfg && mu_config_set(cfg, "zk_hosts", w->zk) != MU_OK) {
        fprintf(stderr, "threads: %s\n", mu_config_error(cfg));
        st = MU_ECONFIG;
    } else if (base && cfg) {
        st = mu_client_new(base, cfg, &w->client);
    }
    mu_config_free(cfg);
    if (st != MU_OK) {
        fprintf(stderr, "threads: no client: %s\n", mu_strerror(st));
        w->failed = w->done = w->total;
        if (base)
            event_base_free(base);
        return NULL;
    }
    fill(w);
    while (w->inflight > 0 && event_base_loop(base, EVLOOP_ONCE) == 0)
        ;
    mu_client_free(w->client);
    event_base_free(base);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: threads ZK_HOSTS TARGET THREADS CALLS_PER_THREAD\n");
        return 2;
    }
    int nthreads = atoi(argv[3]), calls = atoi(argv[4]);
    if (nthreads < 1 || nthreads > 1024 || calls < 0) {
        fprintf(stderr, "threads: THREADS must be 1 to 1024 and CALLS_PER_THREAD 0 or more\n");
        return 2;
    }
    struct worker *w = calloc((size_t)nthreads, sizeof *w);
    if (!w)
        return 2;
    int started = 0;
    for (int i = 0; i < nthreads; i++) {
        w[i].zk = argv[1];
        w[i].target = argv[2];
        w[i].total = calls;
        if (pthread_create(&w[i].tid, NULL, run, &w[i]) != 0) {
            fprintf(stderr, "threads: pthread_create failed\n");
            w[i].failed = w[i].done = calls;
            continue;
        }
        w[i].running = 1;
        started++;
    }
    long long n = 0, failed = 0;
    for (int i = 0; i < nthreads; i++) {
        if (w[i].running)
            pthread_join(w[i].tid, NULL);
        n += w[i].done;
        failed += w[i].failed;
    }
    printf("%lld calls, %lld failed\n", n, failed);
    free(w);
    return failed || started < nthreads ? 1 : 0;
}
