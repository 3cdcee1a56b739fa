/* soak: CALLS calls (default 1,000,000) at 256 in flight against a real
 * ZooKeeper while test providers join, leave and fail throughout; run by
 * scripts/soak under AddressSanitizer + LeakSanitizer (and, 50,000 calls,
 * by scripts/test).
 *
 * Churn, one event every 250 ms: two "anchor" providers are always
 * registered (each is replaced by a new one, SIGTERM, every 16th event);
 * up to 5 more join in turn as healthy, --fail-rate 0.3, --hang,
 * --drop-rate 0.1, --garbage, --delay-ms 20, and leave, the oldest first,
 * by SIGKILL (their znodes stay until their 2 s session ends: refused
 * connections) or SIGTERM (deregistered at once), alternately.
 * Odd-numbered calls are idempotent.
 *
 * Checks (exit 1 if one fails, and LSan's exit code 23 for a leak):
 *   - exactly once: each call carries a malloc'd token (a second callback
 *     is a use after free under ASan, a missing one a leak) and marks its
 *     byte in a table; every accepted call's byte must be 1 at the end;
 *   - RSS, read from /proc/self/statm after every CALLS/10 calls, is flat:
 *     no sample exceeds the first by 16 MiB or more (the first is taken
 *     after CALLS/10 calls, so caches, pools and the connection cache are
 *     warm; run under ASAN_OPTIONS=quarantine_size_mb=16, or ASan's
 *     quarantine of freed blocks, 256 MiB by default, fills up over the
 *     run and is all that RSS shows);
 *   - no stall: some call ends in every 30 s.
 * Failed calls are expected (the providers fail on purpose) and counted by
 * status, not judged.
 *
 * Prints one line on stdout:
 *   soak: calls=N ok=N failed=N refused=N lost=0 doubled=0 wall_s=S
 *   calls_per_s=R provider_events=E rss_mib=a,b,...,j growth_mib=G flat=yes
 *   by_status=... result=PASS
 * Providers' and ZooKeeper's own noise goes to stderr. */
#include <event2/event.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "microutil/microutil.h"
#include "testbed.h"

#define INFLIGHT 256
#define ANCHORS 2
#define CHURN 5
#define SAMPLES 10
#define FLAT_MIB 16.0

typedef struct soak {
    struct event_base *base;
    mu_client *c;
    tb_zk *zk;
    long total, started, ended, ok, failed, refused, doubled;
    long by_status[32];
    unsigned char *fired;
    double rss_mib[SAMPLES];
    int nsamples;
    long step;
    /* churn */
    tb_provider *anchor[ANCHORS];
    tb_provider *churn[CHURN];
    int nchurn, events, kinds, leaves, start_failures;
    struct event *tick, *watchdog;
    long seen_ended;
    int stalled;
    unsigned long long t0;
} soak;

typedef struct token {
    soak *s;
    long id;
} token;

static unsigned long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000ull + (unsigned long long)ts.tv_nsec / 1000000ull;
}

static double rss_mib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : (double)resident * (double)sysconf(_SC_PAGESIZE) / 1048576.0;
}

static void quiet(mu_log_level level, const char *msg, void *user)
{
    (void)level;
    (void)msg;
    (void)user;
}

static void next(soak *s);

static void done(const mu_result *r, void *user)
{
    token *t = user;
    soak *s = t->s;
    if (s->fired[t->id]++ != 0)
        s->doubled++;
    free(t);
    s->ended++;
    if (r->status == MU_OK)
        s->ok++;
    else
        s->failed++;
    if ((unsigned)r->status < 32)
        s->by_status[r->status]++;
    if (s->ended % s->step == 0 && s->nsamples < SAMPLES)
        s->rss_mib[s->nsamples++] = rss_mib();
    if (s->ended >= s->total)
        event_base_loopbreak(s->base);
    else
        next(s);
}

/* Starts the next call; one refused by mu_call itself (MU_EOVERLOADED)
 * counts as ended, and the next one is tried. */
static void next(soak *s)
{
    while (s->started < s->total) {
        long id = s->started++;
        char args[32];
        snprintf(args, sizeof args, "[%ld]", id);
        mu_call_opts o = MU_CALL_OPTS_INIT;
        o.idempotent = (int)(id & 1);
        token *t = malloc(sizeof *t);
        if (!t) {
            fprintf(stderr, "soak: out of memory\n");
            exit(1);
        }
        t->s = s;
        t->id = id;
        mu_status st = mu_call(s->c, "soak:echo", args, NULL, &o, done, t, NULL);
        if (st == MU_OK)
            return;
        free(t);
        s->fired[id] = 1;
        s->refused++;
        s->ended++;
        if ((unsigned)st < 32)
            s->by_status[st]++;
        if (s->ended % s->step == 0 && s->nsamples < SAMPLES)
            s->rss_mib[s->nsamples++] = rss_mib();
        if (s->ended >= s->total) {
            event_base_loopbreak(s->base);
            return;
        }
    }
}

static tb_provider *start_provider(soak *s, const char *const *extra)
{
    const char *args[16] = {"--service", "soak", "--session-ms", "2000"};
    int n = 4;
    for (; extra && *extra && n < 15; extra++)
        args[n++] = *extra;
    args[n] = NULL;
    tb_provider *p = tb_provider_start(tb_zk_connstr(s->zk), args);
    if (!p)
        s->start_failures++;
    return p;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    soak *s = arg;
    (void)fd;
    (void)what;
    s->events++;
    if (s->events % 16 == 0) {
        /* an anchor leaves gracefully and a new one joins */
        int i = (s->events / 16) % ANCHORS;
        tb_provider_free(s->anchor[i]);
        s->anchor[i] = start_provider(s, NULL);
        return;
    }
    if (s->nchurn == CHURN) {
        /* the oldest leaves: killed (znodes stay) or stopped (deregistered) */
        tb_provider *p = s->churn[0];
        memmove(s->churn, s->churn + 1, (CHURN - 1) * sizeof s->churn[0]);
        s->nchurn--;
        if (p) {
            int sig = s->leaves++ % 2 ? SIGTERM : SIGKILL;
            tb_provider_kill(p, sig);
            tb_provider_free(p);
        }
        return;
    }
    static const char *const kinds[][3] = {
        {NULL},
        {"--fail-rate", "0.3", NULL},
        {"--hang", NULL},
        {"--drop-rate", "0.1", NULL},
        {"--garbage", NULL},
        {"--delay-ms", "20", NULL},
    };
    const int nkinds = (int)(sizeof kinds / sizeof kinds[0]);
    s->churn[s->nchurn++] = start_provider(s, kinds[s->kinds++ % nkinds]);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    soak *s = arg;
    (void)fd;
    (void)what;
    if (s->ended == s->seen_ended) {
        s->stalled = 1;
        event_base_loopbreak(s->base);
    }
    s->seen_ended = s->ended;
}

int main(int argc, char **argv)
{
    soak s;
    memset(&s, 0, sizeof s);
    s.total = argc > 1 ? atol(argv[1]) : 1000000;
    if (s.total < SAMPLES * 10) {
        fprintf(stderr, "usage: soak [CALLS >= 100]\n");
        return 2;
    }
    s.step = s.total / SAMPLES;
    s.fired = calloc((size_t)s.total, 1);
    /* Touch the table's pages now, or they join RSS as the calls go
     * (1 MiB over a million calls) and look like growth. */
    for (long i = 0; s.fired && i < s.total; i += 4096)
        ((volatile unsigned char *)s.fired)[i] = 0;
    s.base = event_base_new();
    s.zk = tb_zk_start();
    if (!s.fired || !s.base || !s.zk) {
        fprintf(stderr, "soak: cannot start (ZooKeeper or memory)\n");
        return 1;
    }
    for (int i = 0; i < ANCHORS; i++)
        if (!(s.anchor[i] = start_provider(&s, NULL)))
            return 1;

    mu_config *cfg = mu_config_new();
    const char *kv[][2] = {{"zk_hosts", tb_zk_connstr(s.zk)},
                           {"timeout_ms", "500"},
                           {"deadline_ms", "3000"},
                           {"preload", "soak:echo"}};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        if (mu_config_set(cfg, kv[i][0], kv[i][1]) != MU_OK) {
            fprintf(stderr, "soak: %s\n", mu_config_error(cfg));
            return 1;
        }
    if (mu_client_new(s.base, cfg, &s.c) != MU_OK) {
        fprintf(stderr, "soak: mu_client_new failed\n");
        return 1;
    }
    mu_config_free(cfg);
    mu_client_set_log(s.c, MU_LOG_WARN, getenv("MU_TEST_VERBOSE") ? NULL : quiet, NULL);

    s.tick = event_new(s.base, -1, EV_PERSIST, on_tick, &s);
    s.watchdog = event_new(s.base, -1, EV_PERSIST, on_watchdog, &s);
    /* MU_SOAK_CHURN_MS: the churn period (250 ms); 0 turns churn off, to
     * tell what the churn costs from what the calls cost. */
    long churn_ms = getenv("MU_SOAK_CHURN_MS") ? atol(getenv("MU_SOAK_CHURN_MS")) : 250;
    struct timeval every = {churn_ms / 1000, (churn_ms % 1000) * 1000}, stall = {30, 0};
    if (churn_ms > 0)
        event_add(s.tick, &every);
    event_add(s.watchdog, &stall);

    s.t0 = now_ms();
    for (int i = 0; i < INFLIGHT; i++)
        next(&s);
    if (s.ended < s.total)
        event_base_dispatch(s.base);
    double wall = (double)(now_ms() - s.t0) / 1000.0;

    event_free(s.tick);
    event_free(s.watchdog);
    s.total = s.started; /* no new calls from the cancellations below */
    mu_client_free(s.c); /* cancels whatever is left (a stall), each callback once */

    long lost = 0;
    for (long i = 0; i < s.started; i++)
        lost += s.fired[i] == 0;
    for (int i = 0; i < ANCHORS; i++)
        tb_provider_free(s.anchor[i]);
    for (int i = 0; i < s.nchurn; i++)
        tb_provider_free(s.churn[i]);
    tb_zk_free(s.zk);
    event_base_free(s.base);
    free(s.fired);

    double growth = 0;
    char rss[256] = "";
    size_t off = 0;
    for (int i = 0; i < s.nsamples; i++) {
        if (s.rss_mib[i] - s.rss_mib[0] > growth)
            growth = s.rss_mib[i] - s.rss_mib[0];
        off += (size_t)snprintf(rss + off, sizeof rss - off, "%s%.1f", i ? "," : "",
                                s.rss_mib[i]);
    }
    int flat = s.nsamples == SAMPLES && growth < FLAT_MIB;
    char by[512] = "";
    off = 0;
    for (int i = 0; i < 32; i++)
        if (s.by_status[i] && off < sizeof by)
            off += (size_t)snprintf(by + off, sizeof by - off, "%s%s=%ld", off ? "," : "",
                                    mu_status_name((mu_status)i), s.by_status[i]);
    int pass = !s.stalled && lost == 0 && s.doubled == 0 && s.ended == s.total && flat &&
               s.ok > 0;
    printf("soak: calls=%ld ok=%ld failed=%ld refused=%ld lost=%ld doubled=%ld wall_s=%.1f "
           "calls_per_s=%.0f provider_events=%d start_failures=%d rss_mib=%s growth_mib=%.1f "
           "flat=%s%s by_status=%s result=%s\n",
           s.ended, s.ok, s.failed, s.refused, lost, s.doubled, wall, (double)s.ended / wall,
           s.events, s.start_failures, rss, growth, flat ? "yes" : "no",
           s.stalled ? " STALLED" : "", by, pass ? "PASS" : "FAIL");
    fflush(stdout);
    return pass ? 0 : 1;
}
