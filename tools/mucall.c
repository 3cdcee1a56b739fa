/* mucall: call microutil providers from the command line, load-test them,
 * list what discovery sees, and decode saved response bodies. */
#include "config.h"

#include <errno.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#include "codec.h"
#include "microutil/microutil.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2

static void print_key(const char *key, const char *dflt, const char *help, void *user)
{
    FILE *out = user;
    fprintf(out, "  %-26s %-16s %s\n", key, *dflt ? dflt : "\"\"", help);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: mucall [OPTIONS] SERVICE:METHOD [ARG ...] [--kw NAME=VALUE ...]\n"
            "       mucall [OPTIONS] -n N -c C [--json] [--metrics] SERVICE:METHOD [ARG ...]\n"
            "       mucall [OPTIONS] --rate R -d SECONDS [--json] [--metrics] SERVICE:METHOD [ARG ...]\n"
            "       mucall [OPTIONS] --list SERVICE:METHOD\n"
            "       mucall --decode FILE\n"
            "\n"
            "Each ARG and VALUE is parsed as JSON; if it is not valid JSON it is sent as\n"
            "a string (so `mucall micro:HttpRpcService.get_string_v1 zhangsan` works).\n"
            "\n"
            "options:\n"
            "  --zk HOSTS          ZooKeeper host:port[,...] (default: MICRO_ZK_HOST and\n"
            "                      MICRO_ZK_PORT, then 127.0.0.1:2181)\n"
            "  --hosts H:P,...     static providers for the service; skips ZooKeeper\n"
            "  --config FILE       read `key = value` lines\n"
            "  --set KEY=VALUE     set any configuration key (repeatable)\n"
            "  --policy NAME       ewma, round-robin, random, least-pending, p2c or hash\n"
            "  --timeout MS        per-attempt timeout\n"
            "  --retries N         extra attempts on other providers\n"
            "  --idempotent        the call may safely run twice (retry timeouts too)\n"
            "  --kw NAME=VALUE     a keyword argument\n"
            "  -n N, -c C          load mode: N calls with C in flight; prints a summary\n"
            "  --rate R -d SECONDS open-loop load: R calls/s on a fixed schedule for SECONDS,\n"
            "                      whether or not earlier calls ended; latency counts from\n"
            "                      each call's due time; reports calls that started late\n"
            "  --json              load mode: print the summary as one JSON line\n"
            "  --metrics           after the run, print the client's metrics in Prometheus'\n"
            "                      text format (what mu_metrics_write() gives)\n"
            "  --list TARGET       print the providers discovery sees for TARGET\n"
            "  --decode FILE       decode a saved response body and print its JSON\n"
            "  -v                  log discovery and attempts to stderr\n"
            "  -h, --help          this text;  --version  the version\n"
            "\n"
            "Precedence: defaults, then --config, then the environment (MICRO_ZK_HOST,\n"
            "MICRO_ZK_PORT, MICRO_CLIENT_TIMEOUT in seconds, MU_<KEY>), then options.\n"
            "\n"
            "exit status: 0 success; 1 the call failed (remote error: `name (code):\n"
            "message` on stderr; otherwise the detail); 2 usage or configuration error.\n"
            "\n"
            "configuration keys (key, default, meaning):\n");
    mu_config_describe(print_key, out);
}

/* ------------------------------------------------------------- decode */

static int read_file(const char *path, mu_buf *out)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "mucall: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    char chunk[65536];
    size_t n;
    int rc = 0;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (mu_buf_append(out, chunk, n) != 0) {
            fprintf(stderr, "mucall: out of memory reading %s\n", path);
            rc = -1;
            break;
        }
    }
    if (ferror(f)) {
        fprintf(stderr, "mucall: error reading %s: %s\n", path, strerror(errno));
        rc = -1;
    }
    if (f != stdin)
        fclose(f);
    return rc;
}

static int decode_file(const char *path)
{
    mu_buf body = {0};
    if (read_file(path, &body) != 0) {
        mu_buf_free(&body);
        return EXIT_FAIL;
    }
    mu_decoder d;
    mu_decoder_init(&d, 0);
    mu_reply r;
    mu_status st = mu_decode_response(&d, body.data ? body.data : "", body.len, 200, NULL, &r);
    int rc = 0;
    if (st == MU_OK || st == MU_EREMOTE) {
        fwrite(r.doc, 1, r.doc_len, stdout);
        fputc('\n', stdout);
    } else {
        fprintf(stderr, "mucall: %s: %s: %s\n", path, mu_strerror(st), r.detail);
        rc = EXIT_FAIL;
    }
    mu_decoder_cleanup(&d);
    mu_buf_free(&body);
    return rc;
}

/* ---------------------------------------------------------- arguments */

static void gen_append(void *ctx, const char *s, size_t n)
{
    mu_buf_append(ctx, s, n);
}

/* Appends text as JSON: verbatim when it is one valid JSON value, else as
 * a JSON string. */
static void append_json_value(mu_buf *out, const char *text)
{
    yajl_val v = yajl_tree_parse(text, NULL, 0);
    if (v) {
        yajl_tree_free(v);
        mu_buf_append(out, text, strlen(text));
        return;
    }
    yajl_gen g = yajl_gen_alloc(NULL);
    yajl_gen_config(g, yajl_gen_print_callback, gen_append, out);
    yajl_gen_string(g, (const unsigned char *)text, strlen(text));
    yajl_gen_free(g);
}

static void append_json_string(mu_buf *out, const char *s, size_t n)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    yajl_gen_config(g, yajl_gen_print_callback, gen_append, out);
    yajl_gen_string(g, (const unsigned char *)s, n);
    yajl_gen_free(g);
}

/* ---------------------------------------------------------- one call */

typedef struct app {
    struct event_base *base;
    mu_client *client;
    const char *target;
    const char *args;
    const char *kwargs;
    mu_call_opts opts;
    int rc;
    /* load mode */
    long total, started, done, ok, window, inflight;
    int refused; /* mu_call() refused the call: a usage error */
    unsigned *lat_us;
    char eps[256][72];
    long ep_counts[256];
    int neps;
    long errors[32];
    struct event *progress;
    int verbose;
    /* open-loop mode (--rate): call i is due at t0_us + i * 1e6 / rate */
    double rate, duration_s;
    uint64_t t0_us;
    long late;             /* calls started more than 1 ms after they were due */
    struct rate_slot *slots;
    struct event *tick;
} app;

/* One open-loop call: whose, and which (its due time follows from i). */
typedef struct rate_slot {
    app *a;
    long i;
} rate_slot;

static void on_single(const mu_result *r, void *user)
{
    app *a = user;
    if (r->status == MU_OK) {
        fwrite(r->result, 1, r->result_len, stdout);
        fputc('\n', stdout);
        a->rc = 0;
    } else if (r->status == MU_EREMOTE) {
        fprintf(stderr, "%s (%lld): %s\n", r->error_name, r->error_code, r->error_message);
        a->rc = EXIT_FAIL;
    } else {
        fprintf(stderr, "mucall: %s: %s\n", mu_strerror(r->status), r->detail);
        a->rc = EXIT_FAIL;
    }
    if (a->verbose)
        fprintf(stderr, "mucall: %s via %s, %d attempt(s), HTTP %ld, %.3f ms\n",
                mu_status_name(r->status), r->endpoint ? r->endpoint : "-", r->attempts,
                r->http_status, (double)r->latency_us / 1000.0);
    event_base_loopbreak(a->base);
}

/* ---------------------------------------------------------- load mode */

static void on_load(const mu_result *r, void *user);

static void load_fill(app *a)
{
    while (a->inflight < a->window && a->started < a->total) {
        if (mu_call(a->client, a->target, a->args, a->kwargs, &a->opts, on_load, a, NULL) != MU_OK) {
            fprintf(stderr, "mucall: %s\n", mu_client_errmsg(a->client));
            a->total = a->started;
            a->refused = 1;
            break;
        }
        a->started++;
        a->inflight++;
    }
    if (a->done == a->total)
        event_base_loopbreak(a->base);
}

static void on_list_timeout(evutil_socket_t fd, short what, void *arg);

/* Counts one ended call of either load mode, with its latency. */
static void record(app *a, const mu_result *r, uint64_t latency_us)
{
    a->inflight--;
    a->lat_us[a->done++] = latency_us > 0xffffffffu ? 0xffffffffu : (unsigned)latency_us;
    if (r->status == MU_OK)
        a->ok++;
    else if ((unsigned)r->status < 32)
        a->errors[r->status]++;
    if (r->endpoint && r->attempts > 0) {
        int i = 0;
        while (i < a->neps && strcmp(a->eps[i], r->endpoint) != 0)
            i++;
        if (i == a->neps && a->neps < 256)
            snprintf(a->eps[a->neps++], sizeof a->eps[0], "%s", r->endpoint);
        if (i < 256)
            a->ep_counts[i]++;
    }
}

static void on_load(const mu_result *r, void *user)
{
    app *a = user;
    record(a, r, r->latency_us);
    load_fill(a);
}

/* ------------------------------------------------------ open-loop mode */

/* Calls start on a fixed schedule whether or not earlier ones ended, and
 * each latency counts from the call's due time, not its actual start (as
 * wrk2 and ghz --rps do): a stalled provider shows in the tail instead of
 * slowing the load down and hiding. */
static uint64_t due_us(const app *a, long i)
{
    return a->t0_us + (uint64_t)((double)i * 1e6 / a->rate);
}

static void on_rate_done(const mu_result *r, void *user)
{
    rate_slot *sl = user;
    app *a = sl->a;
    record(a, r, mu_now_us() - due_us(a, sl->i));
    if (a->done == a->total)
        event_base_loopbreak(a->base);
}

static void rate_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    app *a = arg;
    uint64_t now = mu_now_us();
    while (a->started < a->total && due_us(a, a->started) <= now) {
        rate_slot *sl = &a->slots[a->started];
        if (now - due_us(a, a->started) > 1000)
            a->late++;
        sl->a = a;
        sl->i = a->started++;
        a->inflight++;
        if (mu_call(a->client, a->target, a->args, a->kwargs, &a->opts, on_rate_done, sl, NULL) !=
            MU_OK) {
            fprintf(stderr, "mucall: %s\n", mu_client_errmsg(a->client));
            a->refused = 1;
            a->total = a->started - 1;
            a->inflight--;
            break;
        }
    }
    if (a->done >= a->total) {
        event_base_loopbreak(a->base);
        return;
    }
    if (a->started < a->total) {
        uint64_t next = due_us(a, a->started), wait = next > now ? next - now : 0;
        struct timeval tv = {(time_t)(wait / 1000000u), (suseconds_t)(wait % 1000000u)};
        evtimer_add(a->tick, &tv);
    }
}

static void on_loaded(const char *target, size_t n, void *user)
{
    (void)target;
    (void)n;
    event_base_loopbreak(((app *)user)->base);
}

/* Discovery first, so that the schedule measures calls, not the load of
 * the target's providers. */
static void wait_loaded(app *a)
{
    struct event *t = evtimer_new(a->base, on_list_timeout, a);
    struct timeval tv = {10, 0};
    if (mu_client_watch(a->client, a->target, on_loaded, a) == MU_OK && t &&
        evtimer_add(t, &tv) == 0)
        event_base_dispatch(a->base);
    mu_client_watch(a->client, a->target, NULL, NULL);
    if (t)
        event_free(t);
}

static void on_progress(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    app *a = arg;
    fprintf(stderr, "\r  %ld/%ld calls, %ld failed   ", a->done, a->total, a->done - a->ok);
}

static int cmp_u(const void *x, const void *y)
{
    unsigned a = *(const unsigned *)x, b = *(const unsigned *)y;
    return a < b ? -1 : a > b;
}

static unsigned pct(const unsigned *v, long n, double p)
{
    if (n <= 0)
        return 0;
    long i = (long)(p * (double)(n - 1) + 0.5);
    return v[i];
}

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void print_json(const app *a, double wall, double user, double sys)
{
    long n = a->done, failed = a->done - a->ok;
    mu_client_stats cs;
    mu_client_stats_get(a->client, &cs, sizeof cs);
    printf("{\"calls\": %ld, \"ok\": %ld, \"failed\": %ld, ", n, a->ok, failed);
    printf("\"attempts\": %llu, \"retries\": %llu, \"hedges\": %llu, \"ejections\": %llu, "
           "\"retries_denied\": %llu, \"overloaded\": %llu, ",
           cs.attempts, cs.retries, cs.hedges, cs.ejections, cs.retries_denied, cs.overloaded);
    if (a->rate > 0)
        printf("\"rate\": %.1f, \"late\": %ld, ", a->rate, a->late);
    else
        printf("\"in_flight\": %ld, ", a->window);
    printf("\"wall_s\": %.6f, \"calls_per_s\": %.1f, \"cpu_user_s\": %.6f, \"cpu_sys_s\": %.6f, "
           "\"cpu_us_per_call\": %.3f, \"p50_us\": %u, \"p90_us\": %u, \"p99_us\": %u, "
           "\"p999_us\": %u, \"max_us\": %u, \"per_endpoint\": {",
           wall, wall > 0 ? (double)n / wall : 0, user, sys, n ? (user + sys) * 1e6 / (double)n : 0,
           pct(a->lat_us, n, 0.5), pct(a->lat_us, n, 0.9), pct(a->lat_us, n, 0.99),
           pct(a->lat_us, n, 0.999), n ? a->lat_us[n - 1] : 0);
    for (int i = 0; i < a->neps; i++)
        printf("%s\"%s\": %ld", i ? ", " : "", a->eps[i], a->ep_counts[i]);
    printf("}, \"errors\": {");
    int first = 1;
    for (int st = 0; st < 32; st++) {
        if (!a->errors[st])
            continue;
        printf("%s\"%s\": %ld", first ? "" : ", ", mu_status_name((mu_status)st), a->errors[st]);
        first = 0;
    }
    printf("}}\n");
}

static void print_text(const app *a, double wall, double user, double sys)
{
    long n = a->done, failed = a->done - a->ok;
    if (a->rate > 0)
        printf("%ld calls (%ld ok, %ld failed) at %.1f calls/s for %.3f s; %ld started late "
               "(over 1 ms after they were due)\n",
               n, a->ok, failed, a->rate, wall, a->late);
    else
        printf("%ld calls (%ld ok, %ld failed) with %ld in flight in %.3f s\n", n, a->ok, failed,
               a->window, wall);
    mu_client_stats cs;
    mu_client_stats_get(a->client, &cs, sizeof cs);
    printf("  %llu attempts, %llu retries, %llu hedges, %llu ejections (%llu retries or hedges "
           "denied by the budget)\n",
           cs.attempts, cs.retries, cs.hedges, cs.ejections, cs.retries_denied);
    printf("  %.0f calls/s, client CPU %.1f us/call (user %.3f s, sys %.3f s)\n",
           wall > 0 ? (double)n / wall : 0, n ? (user + sys) * 1e6 / (double)n : 0, user, sys);
    printf("  latency%s p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms\n",
           a->rate > 0 ? " from the due time:" : "", pct(a->lat_us, n, 0.5) / 1e3,
           pct(a->lat_us, n, 0.9) / 1e3, pct(a->lat_us, n, 0.99) / 1e3,
           pct(a->lat_us, n, 0.999) / 1e3, (n ? a->lat_us[n - 1] : 0) / 1e3);
    printf("  calls per endpoint:\n");
    for (int i = 0; i < a->neps; i++)
        printf("    %-22s %8ld  %5.1f%%\n", a->eps[i], a->ep_counts[i],
               100.0 * (double)a->ep_counts[i] / (double)(n ? n : 1));
    if (failed) {
        printf("  errors:\n");
        for (int st = 0; st < 32; st++)
            if (a->errors[st])
                printf("    %-16s %8ld\n", mu_status_name((mu_status)st), a->errors[st]);
    }
}

/* The client's metrics, as a /metrics endpoint would serve them. */
static int print_metrics(mu_client *c)
{
    size_t need = 0;
    char *buf = NULL;
    mu_status st = mu_metrics_write(c, NULL, 0, &need);
    while (st == MU_ENOSPACE) {
        free(buf);
        need += need / 4; /* room for a series that appears meanwhile */
        if (!(buf = malloc(need))) {
            fprintf(stderr, "mucall: out of memory\n");
            return -1;
        }
        st = mu_metrics_write(c, buf, need, &need);
    }
    if (st == MU_OK)
        fputs(buf, stdout);
    else
        fprintf(stderr, "mucall: metrics: %s\n", mu_strerror(st));
    free(buf);
    return st == MU_OK ? 0 : -1;
}

/* Runs either load mode to its end and prints the summary. */
static int run_load(app *a, int json)
{
    a->lat_us = calloc((size_t)a->total + 1, sizeof *a->lat_us);
    a->slots = a->rate > 0 ? calloc((size_t)a->total + 1, sizeof *a->slots) : NULL;
    a->tick = a->rate > 0 ? evtimer_new(a->base, rate_tick, a) : NULL;
    if (!a->lat_us || (a->rate > 0 && (!a->slots || !a->tick))) {
        fprintf(stderr, "mucall: out of memory\n");
        return EXIT_FAIL;
    }
    if (a->rate > 0)
        wait_loaded(a);
    if (isatty(2) && !json) {
        a->progress = event_new(a->base, -1, EV_PERSIST, on_progress, a);
        struct timeval tv = {0, 200000};
        event_add(a->progress, &tv);
    }
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    uint64_t t0 = a->t0_us = mu_now_us();
    if (a->rate > 0)
        rate_tick(-1, 0, a);
    else
        load_fill(a);
    if (a->done < a->total)
        event_base_dispatch(a->base);
    double wall = (double)(mu_now_us() - t0) / 1e6;
    getrusage(RUSAGE_SELF, &ru1);
    if (a->progress) {
        event_free(a->progress);
        fprintf(stderr, "\r%60s\r", "");
    }
    qsort(a->lat_us, (size_t)a->done, sizeof *a->lat_us, cmp_u);
    double user = tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime);
    double sys = tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime);
    if (json)
        print_json(a, wall, user, sys);
    else
        print_text(a, wall, user, sys);
    long failed = a->done - a->ok;
    free(a->lat_us);
    free(a->slots);
    if (a->tick)
        event_free(a->tick);
    if (a->refused)
        return EXIT_USAGE;
    return failed ? EXIT_FAIL : 0;
}

/* ---------------------------------------------------------- list mode */

static void print_eps(const mu_endpoint_info *const *eps, size_t n, void *user)
{
    app *a = user;
    for (size_t i = 0; i < n; i++)
        printf("%-22s pending=%d calls=%llu failures=%llu%s\n", eps[i]->address, eps[i]->pending,
               eps[i]->calls, eps[i]->failures, eps[i]->down ? " down" : "");
    a->rc = n ? 0 : EXIT_FAIL;
    if (!n)
        fprintf(stderr, "mucall: no provider for %s\n", a->target);
}

static void on_watch(const char *target, size_t n, void *user)
{
    app *a = user;
    (void)target;
    (void)n;
    mu_client_endpoints(a->client, a->target, print_eps, a);
    event_base_loopbreak(a->base);
}

static void on_list_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    app *a = arg;
    fprintf(stderr, "mucall: providers of %s not loaded in time (is ZooKeeper reachable?)\n",
            a->target);
    a->rc = EXIT_FAIL;
    event_base_loopbreak(a->base);
}

/* ---------------------------------------------------------- main */

static void log_stderr(mu_log_level level, const char *msg, void *user)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    (void)user;
    fprintf(stderr, "mucall %s: %s\n", names[level], msg);
}

static int set_or_die(mu_config *cfg, const char *k, const char *v)
{
    if (mu_config_set(cfg, k, v) != MU_OK) {
        fprintf(stderr, "mucall: %s\n", mu_config_error(cfg));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    app a;
    memset(&a, 0, sizeof a);
    mu_call_opts_init(&a.opts);
    a.rc = EXIT_FAIL;
    const char *config_file = NULL, *zk = NULL, *hosts = NULL, *list = NULL;
    const char *sets[64];
    int nsets = 0, json = 0, metrics = 0;
    const char *positional[256];
    int npos = 0;
    const char *kws[64];
    int nkw = 0;
    char opt_policy[64] = "", opt_timeout[32] = "", opt_retries[32] = "";

    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VAL()                                                                             \
    do {                                                                                       \
        if (!val) {                                                                            \
            fprintf(stderr, "mucall: %s needs a value (see --help)\n", s);                     \
            return EXIT_USAGE;                                                                 \
        }                                                                                      \
        i++;                                                                                   \
    } while (0)
        if (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(s, "--version") == 0) {
            printf("mucall %s\n", MU_VERSION_STRING);
            return 0;
        } else if (strcmp(s, "--decode") == 0) {
            NEED_VAL();
            return decode_file(val);
        } else if (strcmp(s, "--zk") == 0) {
            NEED_VAL();
            zk = val;
        } else if (strcmp(s, "--hosts") == 0) {
            NEED_VAL();
            hosts = val;
        } else if (strcmp(s, "--config") == 0) {
            NEED_VAL();
            config_file = val;
        } else if (strcmp(s, "--set") == 0) {
            NEED_VAL();
            if (nsets == 64 || !strchr(val, '=')) {
                fprintf(stderr, "mucall: --set takes KEY=VALUE\n");
                return EXIT_USAGE;
            }
            sets[nsets++] = val;
        } else if (strcmp(s, "--policy") == 0) {
            NEED_VAL();
            snprintf(opt_policy, sizeof opt_policy, "%s", val);
        } else if (strcmp(s, "--timeout") == 0) {
            NEED_VAL();
            snprintf(opt_timeout, sizeof opt_timeout, "%s", val);
        } else if (strcmp(s, "--retries") == 0) {
            NEED_VAL();
            snprintf(opt_retries, sizeof opt_retries, "%s", val);
        } else if (strcmp(s, "--idempotent") == 0) {
            a.opts.idempotent = 1;
        } else if (strcmp(s, "--kw") == 0) {
            NEED_VAL();
            if (nkw == 64 || !strchr(val, '=') || val[0] == '=') {
                fprintf(stderr, "mucall: --kw takes NAME=VALUE\n");
                return EXIT_USAGE;
            }
            kws[nkw++] = val;
        } else if (strcmp(s, "-n") == 0 || strcmp(s, "-c") == 0) {
            NEED_VAL();
            char *end;
            long n = strtol(val, &end, 10);
            if (*end || n < 1 || n > 100000000) {
                fprintf(stderr, "mucall: %s takes a number from 1 to 100000000\n", s);
                return EXIT_USAGE;
            }
            if (s[1] == 'n')
                a.total = n;
            else
                a.window = n;
        } else if (strcmp(s, "--rate") == 0 || strcmp(s, "-d") == 0) {
            NEED_VAL();
            char *end;
            double v = strtod(val, &end);
            if (*end || !(v > 0 && v <= 1e6)) {
                fprintf(stderr, "mucall: %s takes a number more than 0 and at most 1000000\n", s);
                return EXIT_USAGE;
            }
            if (s[1] == 'd')
                a.duration_s = v;
            else
                a.rate = v;
        } else if (strcmp(s, "--json") == 0) {
            json = 1;
        } else if (strcmp(s, "--metrics") == 0) {
            metrics = 1;
        } else if (strcmp(s, "--list") == 0) {
            NEED_VAL();
            list = val;
        } else if (strcmp(s, "-v") == 0) {
            a.verbose = 1;
        } else if (strcmp(s, "--") == 0) {
            for (i++; i < argc && npos < 256; i++)
                positional[npos++] = argv[i];
        } else if (s[0] == '-' && s[1] == '-') {
            fprintf(stderr, "mucall: unknown option %s (see --help)\n", s);
            return EXIT_USAGE;
        } else {
            if (npos == 256) {
                fprintf(stderr, "mucall: too many arguments\n");
                return EXIT_USAGE;
            }
            positional[npos++] = s;
        }
#undef NEED_VAL
    }
    a.target = list ? list : npos ? positional[0] : NULL;
    if (!a.target) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if ((a.rate > 0) != (a.duration_s > 0) || (a.rate > 0 && (a.total || a.window))) {
        fprintf(stderr, "mucall: --rate R and -d SECONDS go together, and not with -n or -c\n");
        return EXIT_USAGE;
    }
    if (a.rate > 0 && !(a.rate * a.duration_s >= 1 && a.rate * a.duration_s <= 100000000)) {
        fprintf(stderr, "mucall: --rate times -d must make 1 to 100000000 calls\n");
        return EXIT_USAGE;
    }
    if (a.rate > 0)
        a.total = (long)(a.rate * a.duration_s);
    if (a.window && !a.total)
        a.total = a.window;
    if (a.total && !a.window)
        a.window = 1;

    /* Configuration: defaults < file < environment < options. */
    mu_config *cfg = mu_config_new();
    int bad = !cfg;
    if (!bad && config_file && mu_config_load_file(cfg, config_file) != MU_OK) {
        fprintf(stderr, "mucall: %s\n", mu_config_error(cfg));
        bad = 1;
    }
    if (!bad && mu_config_load_env(cfg) != MU_OK) {
        fprintf(stderr, "mucall: %s\n", mu_config_error(cfg));
        bad = 1;
    }
    if (!bad && zk)
        bad = set_or_die(cfg, "zk_hosts", zk);
    if (!bad && hosts) {
        const char *colon = strchr(a.target, ':');
        char key[300];
        snprintf(key, sizeof key, "static.%.*s", colon ? (int)(colon - a.target) : 0, a.target);
        bad = !colon || set_or_die(cfg, key, hosts) || set_or_die(cfg, "zk_hosts", "");
        if (!colon)
            fprintf(stderr, "mucall: bad target '%s': expected SERVICE:METHOD\n", a.target);
    }
    for (int i = 0; !bad && i < nsets; i++) {
        char key[256];
        const char *eq = strchr(sets[i], '=');
        snprintf(key, sizeof key, "%.*s", (int)(eq - sets[i]), sets[i]);
        bad = set_or_die(cfg, key, eq + 1);
    }
    if (!bad && opt_policy[0])
        bad = set_or_die(cfg, "policy", opt_policy);
    if (!bad && opt_timeout[0])
        bad = set_or_die(cfg, "timeout_ms", opt_timeout);
    if (!bad && opt_retries[0])
        bad = set_or_die(cfg, "retries", opt_retries);
    if (!bad && a.verbose)
        bad = set_or_die(cfg, "log_level", "debug");
    if (bad) {
        mu_config_free(cfg);
        return EXIT_USAGE;
    }

    /* Arguments as JSON. */
    mu_buf args = {0}, kwargs = {0};
    mu_buf_append(&args, "[", 1);
    for (int i = 1; i < npos; i++) {
        if (i > 1)
            mu_buf_append(&args, ", ", 2);
        append_json_value(&args, positional[i]);
    }
    mu_buf_append(&args, "]", 1);
    mu_buf_append(&kwargs, "{", 1);
    for (int i = 0; i < nkw; i++) {
        const char *eq = strchr(kws[i], '=');
        if (i)
            mu_buf_append(&kwargs, ", ", 2);
        append_json_string(&kwargs, kws[i], (size_t)(eq - kws[i]));
        mu_buf_append(&kwargs, ": ", 2);
        append_json_value(&kwargs, eq + 1);
    }
    mu_buf_append(&kwargs, "}", 1);
    a.args = args.data;
    a.kwargs = kwargs.data;

    /* Precise timers (timerfd with epoll): the open-loop schedule must not
     * start calls a millisecond late by rounding. */
    struct event_config *ecfg = event_config_new();
    if (ecfg)
        event_config_set_flag(ecfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    a.base = ecfg ? event_base_new_with_config(ecfg) : NULL;
    if (ecfg)
        event_config_free(ecfg);
    mu_status st = a.base ? mu_client_new(a.base, cfg, &a.client) : MU_ENOMEM;
    mu_config_free(cfg);
    if (st != MU_OK) {
        fprintf(stderr, "mucall: cannot make a client: %s\n", mu_strerror(st));
        if (a.base)
            event_base_free(a.base);
        mu_buf_free(&args);
        mu_buf_free(&kwargs);
        return st == MU_ECONFIG ? EXIT_USAGE : EXIT_FAIL;
    }
    if (a.verbose)
        mu_client_set_log(a.client, MU_LOG_DEBUG, log_stderr, NULL);

    if (list) {
        if (mu_client_watch(a.client, a.target, on_watch, &a) != MU_OK) {
            fprintf(stderr, "mucall: %s\n", mu_client_errmsg(a.client));
            a.rc = EXIT_USAGE;
        } else {
            struct event *t = evtimer_new(a.base, on_list_timeout, &a);
            struct timeval tv = {10, 0};
            evtimer_add(t, &tv);
            event_base_dispatch(a.base);
            event_free(t);
        }
    } else if (a.total) {
        a.rc = run_load(&a, json);
    } else if (mu_call(a.client, a.target, a.args, a.kwargs, &a.opts, on_single, &a, NULL) != MU_OK) {
        fprintf(stderr, "mucall: %s\n", mu_client_errmsg(a.client));
        a.rc = EXIT_USAGE;
    } else {
        event_base_dispatch(a.base);
    }
    if (metrics && !list && print_metrics(a.client) != 0 && a.rc == 0)
        a.rc = EXIT_FAIL;
    mu_client_free(a.client);
    event_base_free(a.base);
    mu_buf_free(&args);
    mu_buf_free(&kwargs);
    return a.rc;
}
