/* Small helpers shared by the integration tests (header-only). */
#ifndef MU_TEST_UTIL_H
#define MU_TEST_UTIL_H

#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "microutil/microutil.h"

static inline unsigned long long tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000ull + (unsigned long long)ts.tv_nsec / 1000000ull;
}

/* Runs base until pred(arg) is true or ms pass. Returns 1 if pred held. */
static inline int tu_run_until(struct event_base *base, int (*pred)(void *), void *arg, int ms)
{
    unsigned long long end = tu_now_ms() + (unsigned long long)ms;
    struct timeval tick = {0, 10000};
    while (!pred(arg)) {
        if (tu_now_ms() >= end)
            return 0;
        event_base_loopexit(base, &tick);
        event_base_loop(base, 0);
    }
    return 1;
}

/* Runs base for ms milliseconds. */
static inline void tu_run_for(struct event_base *base, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_loop(base, 0);
}

/* A log sink that keeps quiet unless MU_TEST_VERBOSE is set. */
static inline void tu_log(mu_log_level level, const char *msg, void *user)
{
    (void)user;
    if (getenv("MU_TEST_VERBOSE"))
        fprintf(stderr, "  [log %d] %s\n", (int)level, msg);
}

/* A config from key=value pairs, NULL-terminated. Aborts on a bad key. */
static inline mu_config *tu_config(const char *first, ...)
{
    mu_config *cfg = mu_config_new();
    va_list ap;
    va_start(ap, first);
    for (const char *k = first; k; k = va_arg(ap, const char *)) {
        const char *v = va_arg(ap, const char *);
        if (mu_config_set(cfg, k, v) != MU_OK) {
            fprintf(stderr, "config: %s\n", mu_config_error(cfg));
            abort();
        }
    }
    va_end(ap);
    return cfg;
}

/* One call's outcome, copied out of the callback. */
typedef struct tu_outcome {
    int fired;
    mu_status status;
    char result[512];
    char endpoint[72];
    char detail[400];
    char error_name[64];
    long long error_code;
    int attempts;
    long http_status;
    unsigned long long latency_us;
} tu_outcome;

static inline void tu_record(const mu_result *r, void *user)
{
    tu_outcome *o = user;
    o->fired++;
    o->status = r->status;
    snprintf(o->result, sizeof o->result, "%.*s", (int)(r->result_len < 500 ? r->result_len : 500),
             r->result);
    snprintf(o->endpoint, sizeof o->endpoint, "%s", r->endpoint ? r->endpoint : "");
    snprintf(o->detail, sizeof o->detail, "%s", r->detail);
    snprintf(o->error_name, sizeof o->error_name, "%s", r->error_name ? r->error_name : "");
    o->error_code = r->error_code;
    o->attempts = r->attempts;
    o->http_status = r->http_status;
    o->latency_us = r->latency_us;
}

static inline int tu_fired(void *arg)
{
    return ((tu_outcome *)arg)->fired > 0;
}

/* Makes one call and runs the loop until it completes (or 30 s). */
static inline mu_status tu_call_sync(struct event_base *base, mu_client *c, const char *target,
                                     const char *args, const mu_call_opts *opts, tu_outcome *o)
{
    memset(o, 0, sizeof *o);
    mu_status st = mu_call(c, target, args, NULL, opts, tu_record, o, NULL);
    if (st != MU_OK) {
        o->status = st;
        snprintf(o->detail, sizeof o->detail, "%s", mu_client_errmsg(c));
        return st;
    }
    if (!tu_run_until(base, tu_fired, o, 30000)) {
        o->status = (mu_status)-1;
        snprintf(o->detail, sizeof o->detail, "callback never fired");
    }
    return o->status;
}

#endif
