/*
 * bench.h: the measuring harness shared by bench/raw.c and bench/sdk.c, so
 * that both load generators keep the same number of calls in flight, build
 * the same request, and measure time, CPU, latency and RSS the same way.
 * Only the code between "start a call" and "a call ended" differs.
 *
 * Modes (one per run, chosen by options):
 *   throughput: --inflight C --calls N [--warmup W] [--duration-ms D]
 *       W unmeasured calls, then N measured ones with C in flight. With
 *       --duration-ms no call starts D ms after the measured ones began
 *       (those in flight end and count): calls= is then how many ended.
 *       Prints: RESULT inflight=C calls=N wall_s=.. cps=.. cpu_us=.. user_us=..
 *               sleeps=.. p50_us=.. p99_us=.. max_us=.. failed=.. conns=..
 *       (cpu: getrusage user+sys per measured call; sleeps: voluntary context
 *       switches per call; conns: connections opened meanwhile)
 *   memory:     --mem-inflight K --calls N
 *       warm up at 96 in flight (every keep-alive connection opened), let
 *       the calls drain, read RSS (idle); then keep K in flight for N calls,
 *       sampling RSS every 1,000 completions.
 *       Prints: MEM inflight=K calls=N idle_kb=.. peak_kb=.. bytes_per_call=..
 *               failed=.. conns=.. max_ms=..
 *   series:     --series TOTAL --every M [--inflight C]
 *       TOTAL calls with C (64) in flight; RSS every M completions.
 *       Prints: RSS calls=.. rss_kb=.. conns=..   (one line per sample)
 *
 * Every mode exits 1 if a call failed. --timeout-ms sets the per-call
 * timeout (default 10000, the SDK's). --hosts H:P,...: raw's providers; the
 * SDK's static providers of the target's service (static.SERVICE, no
 * ZooKeeper). --fresh (raw only): a new connection per call, closed after
 * it (Connection: close), as microutil's own Python client does.
 * Test code for benchmarks only.
 */
#ifndef MU_BENCH_H
#define MU_BENCH_H

#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define BENCH_WARM_WINDOW 96 /* 3 providers x max_connections_per_host (32) */

typedef struct bench_opts {
    const char *zk;       /* sdk: ZooKeeper connect string */
    const char *target;   /* sdk: "micro:echo" */
    const char *hosts;    /* raw, or sdk without --zk: "127.0.0.1:P1,127.0.0.1:P2,..." */
    const char *policy;   /* sdk: balancing policy */
    long inflight;
    long calls;
    long warmup;
    long mem_inflight;
    long series;
    long every;
    long duration_ms;     /* 0, or stop starting measured calls after this long */
    long timeout_ms;      /* per call (raw: CURLOPT_TIMEOUT_MS; sdk: timeout_ms and deadline_ms) */
    int conns_per_host;   /* CURLMOPT_MAX_HOST_CONNECTIONS (SDK default 32) */
    int host_queue;       /* raw only: queue beyond conns_per_host ourselves, FIFO */
    int max_conns;        /* CURLMOPT_MAXCONNECTS (SDK default 1024) */
    int fresh;            /* raw only: new connection per call, Connection: close */
} bench_opts;

static inline uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* User + system CPU of this process, in microseconds; *user gets the user
 * part, *waits the voluntary context switches (times the loop slept). */
static inline uint64_t bench_cpu_us(uint64_t *user, uint64_t *waits)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    uint64_t u = (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec;
    if (user)
        *user = u;
    if (waits)
        *waits = (uint64_t)ru.ru_nvcsw;
    return u + (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
}

/* Resident set size now, in KiB (from /proc/self/statm). */
static inline long bench_rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &size, &res) != 2)
        res = -1;
    fclose(f);
    return res < 0 ? -1 : res * (sysconf(_SC_PAGESIZE) / 1024);
}

static inline void bench_usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--zk HOST:PORT | --hosts H:P,H:P,...] [--target SVC:METHOD]\n"
            "       [--inflight C] [--calls N] [--warmup W] [--duration-ms D] [--policy NAME]\n"
            "       [--mem-inflight K] [--series TOTAL --every M] [--timeout-ms T]\n"
            "       [--host-queue | --fresh (raw only)]\n",
            prog);
    exit(2);
}

static inline long bench_num(const char *s, const char *prog)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 0)
        bench_usage(prog);
    return v;
}

static inline void bench_parse(int argc, char **argv, bench_opts *o)
{
    enum { O_ZK = 256, O_TARGET, O_HOSTS, O_POLICY, O_INFLIGHT, O_CALLS, O_WARMUP, O_MEM,
           O_SERIES, O_EVERY, O_TIMEOUT, O_QUEUE, O_DURATION, O_FRESH };
    static const struct option lo[] = {
        {"zk", required_argument, NULL, O_ZK},
        {"target", required_argument, NULL, O_TARGET},
        {"hosts", required_argument, NULL, O_HOSTS},
        {"policy", required_argument, NULL, O_POLICY},
        {"inflight", required_argument, NULL, O_INFLIGHT},
        {"calls", required_argument, NULL, O_CALLS},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"mem-inflight", required_argument, NULL, O_MEM},
        {"series", required_argument, NULL, O_SERIES},
        {"every", required_argument, NULL, O_EVERY},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"host-queue", no_argument, NULL, O_QUEUE},
        {"duration-ms", required_argument, NULL, O_DURATION},
        {"fresh", no_argument, NULL, O_FRESH},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->target = "micro:echo";
    o->policy = "round-robin";
    o->inflight = 64;
    o->calls = 20000;
    o->warmup = -1;
    o->every = 100000;
    o->timeout_ms = 10000; /* the SDK's default timeout_ms */
    o->conns_per_host = 32;
    o->max_conns = 1024;
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_ZK: o->zk = optarg; break;
        case O_TARGET: o->target = optarg; break;
        case O_HOSTS: o->hosts = optarg; break;
        case O_POLICY: o->policy = optarg; break;
        case O_INFLIGHT: o->inflight = bench_num(optarg, argv[0]); break;
        case O_CALLS: o->calls = bench_num(optarg, argv[0]); break;
        case O_WARMUP: o->warmup = bench_num(optarg, argv[0]); break;
        case O_MEM: o->mem_inflight = bench_num(optarg, argv[0]); break;
        case O_SERIES: o->series = bench_num(optarg, argv[0]); break;
        case O_EVERY: o->every = bench_num(optarg, argv[0]); break;
        case O_TIMEOUT: o->timeout_ms = bench_num(optarg, argv[0]); break;
        case O_QUEUE: o->host_queue = 1; break;
        case O_DURATION: o->duration_ms = bench_num(optarg, argv[0]); break;
        case O_FRESH: o->fresh = 1; break;
        default: bench_usage(argv[0]);
        }
    }
    if (optind != argc || o->inflight < 1 || o->calls < 1 || o->every < 1 || o->timeout_ms < 1)
        bench_usage(argv[0]);
    if (o->warmup < 0)
        o->warmup = o->inflight * 20 > 2000 ? o->inflight * 20 : 2000;
}

/* ------------------------------------------------------------ one phase */

/* A phase keeps `window` calls in flight until `total` calls have ended.
 * The program supplies bench_start_call(slot, seq), which begins one call
 * for that slot, and calls bench_ended(slot, ok) when it ends (from its
 * event loop); bench_ended starts the slot's next call. */
typedef struct bench_phase {
    long total, started, ended, failed, window, inflight;
    uint32_t *lat_us;     /* per measured call, NULL when not kept */
    uint64_t *slot_t0;    /* start time of the call in each slot */
    uint64_t stop_ns;     /* 0, or start no call from this time on */
    long sample_every;    /* 0: no RSS samples */
    long peak_rss_kb;
    uint64_t max_lat_us;
    int print_series;
    int done;
} bench_phase;

static inline int bench_u32cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static inline uint32_t bench_pct(uint32_t *v, long n, double q)
{
    if (n <= 0)
        return 0;
    long i = (long)(q * (double)(n - 1) + 0.5);
    return v[i];
}

/* The program's side: begin call number seq in slot (0 or -1), and the
 * number of TCP connections opened so far. */
static int bench_start_call(long slot, long seq);
static unsigned long long bench_connections(void);

static struct event_base *bench_base;
static bench_phase *bench_cur;
static long bench_seq;

static inline void bench_fail(const char *what)
{
    fprintf(stderr, "bench: %s\n", what);
    exit(1);
}

static inline void bench_start_slot(bench_phase *p, long slot)
{
    p->slot_t0[slot] = bench_now_ns();
    p->started++;
    p->inflight++;
    if (bench_start_call(slot, bench_seq++) != 0)
        bench_fail("could not start a call");
}

/* The program calls this when the call in slot has ended. */
static inline void bench_ended(long slot, int ok)
{
    bench_phase *p = bench_cur;
    uint64_t now = bench_now_ns();
    uint64_t lat = (now - p->slot_t0[slot]) / 1000u;
    if (p->lat_us)
        p->lat_us[p->ended] = (uint32_t)lat;
    if (lat > p->max_lat_us)
        p->max_lat_us = lat;
    p->ended++;
    p->inflight--;
    if (!ok)
        p->failed++;
    if (p->sample_every && p->ended % p->sample_every == 0) {
        long rss = bench_rss_kb();
        if (rss > p->peak_rss_kb)
            p->peak_rss_kb = rss;
        if (p->print_series) {
            printf("RSS calls=%ld rss_kb=%ld conns=%llu\n", p->ended, rss, bench_connections());
            fflush(stdout);
        }
    }
    if (p->started < p->total && (!p->stop_ns || now < p->stop_ns))
        bench_start_slot(p, slot);
    else if (p->ended == p->started) {
        p->done = 1;
        event_base_loopbreak(bench_base);
    }
}

/* Keeps window calls in flight until total have ended (or, with
 * p->stop_ns set, until the time is up and those in flight have ended). */
static inline void bench_run(bench_phase *p, long window, long total, int keep_latency)
{
    p->total = total;
    p->window = window;
    p->started = p->ended = p->failed = p->inflight = 0;
    p->done = 0;
    p->max_lat_us = 0;
    p->lat_us = keep_latency ? calloc((size_t)total, sizeof *p->lat_us) : NULL;
    p->slot_t0 = calloc((size_t)window, sizeof *p->slot_t0);
    if ((keep_latency && !p->lat_us) || !p->slot_t0)
        bench_fail("out of memory");
    bench_cur = p;
    for (long s = 0; s < window && p->started < total; s++)
        bench_start_slot(p, s);
    while (!p->done)
        if (event_base_dispatch(bench_base) != 0 && !p->done)
            bench_fail("the event loop ran out of events with calls in flight");
    free(p->slot_t0);
    p->slot_t0 = NULL;
}

/* Runs the mode the options ask for and prints its lines. 0 on success. */
static inline int bench_main(const bench_opts *o)
{
    bench_phase p;
    memset(&p, 0, sizeof p);
    if (o->series) {
        bench_run(&p, o->inflight, o->warmup, 0);
        long before = bench_rss_kb();
        printf("RSS calls=0 rss_kb=%ld conns=%llu\n", before, bench_connections());
        p.sample_every = o->every;
        p.print_series = 1;
        bench_run(&p, o->inflight, o->series, 0);
        printf("SERIES calls=%ld failed=%ld conns=%llu\n", o->series, p.failed,
               bench_connections());
        return p.failed ? 1 : 0;
    }
    if (o->mem_inflight) {
        bench_run(&p, BENCH_WARM_WINDOW, o->warmup, 0);
        long idle = bench_rss_kb();
        long calls = o->calls > o->mem_inflight ? o->calls : o->mem_inflight;
        p.sample_every = 1000;
        p.peak_rss_kb = idle;
        bench_run(&p, o->mem_inflight, calls, 0);
        long peak = p.peak_rss_kb;
        printf("MEM inflight=%ld calls=%ld idle_kb=%ld peak_kb=%ld bytes_per_call=%.0f failed=%ld "
               "conns=%llu max_ms=%.0f\n",
               o->mem_inflight, calls, idle, peak,
               (double)(peak - idle) * 1024.0 / (double)o->mem_inflight, p.failed,
               bench_connections(), (double)p.max_lat_us / 1000.0);
        return p.failed ? 1 : 0;
    }
    bench_run(&p, o->inflight, o->warmup, 0);
    if (p.failed)
        fprintf(stderr, "bench: %ld of %ld warm-up calls failed\n", p.failed, o->warmup);
    unsigned long long conns0 = bench_connections();
    uint64_t user0, user1, waits0, waits1;
    uint64_t cpu0 = bench_cpu_us(&user0, &waits0), t0 = bench_now_ns();
    p.stop_ns = o->duration_ms ? t0 + (uint64_t)o->duration_ms * 1000000u : 0;
    bench_run(&p, o->inflight, o->calls, 1);
    uint64_t t1 = bench_now_ns(), cpu1 = bench_cpu_us(&user1, &waits1);
    double wall = (double)(t1 - t0) / 1e9;
    long n = p.ended; /* o->calls, or fewer when --duration-ms cut the run short */
    qsort(p.lat_us, (size_t)n, sizeof *p.lat_us, bench_u32cmp);
    printf("RESULT inflight=%ld calls=%ld wall_s=%.3f cps=%.0f cpu_us=%.2f user_us=%.2f "
           "sleeps=%.3f p50_us=%u p99_us=%u max_us=%llu failed=%ld conns=%llu\n",
           o->inflight, n, wall, (double)n / wall,
           (double)(cpu1 - cpu0) / (double)n, (double)(user1 - user0) / (double)n,
           (double)(waits1 - waits0) / (double)n,
           bench_pct(p.lat_us, n, 0.50),
           bench_pct(p.lat_us, n, 0.99), (unsigned long long)p.max_lat_us, p.failed,
           bench_connections() - conns0);
    free(p.lat_us);
    return p.failed ? 1 : 0;
}

#endif
