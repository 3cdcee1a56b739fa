/* concurrent: keeps C calls in flight until N are done, then prints how
 * they spread over the providers.
 *
 *   concurrent [ZK_HOSTS] [SERVICE:METHOD] [N] [C] [POLICY]
 *   concurrent 127.0.0.1:2181 micro:whoami 10000 64 least-pending
 */
#include <event2/event.h>
#include <microutil/microutil.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EPS 64

struct run {
    mu_client *client;
    const char *target;
    int total, started, done, failed, inflight, window;
    char eps[MAX_EPS][72];
    int counts[MAX_EPS];
    int neps;
};

static void fill(struct run *r);

static void done(const mu_result *res, void *user)
{
    struct run *r = user;
    r->inflight--;
    r->done++;
    if (res->status != MU_OK) {
        r->failed++;
        if (r->failed <= 5)
            fprintf(stderr, "call failed: %s: %s\n", mu_strerror(res->status), res->detail);
    } else if (res->endpoint) {
        int i = 0;
        while (i < r->neps && strcmp(r->eps[i], res->endpoint) != 0)
            i++;
        if (i == r->neps && r->neps < MAX_EPS)
            snprintf(r->eps[r->neps++], sizeof r->eps[0], "%s", res->endpoint);
        if (i < MAX_EPS)
            r->counts[i]++;
    }
    fill(r); /* starting calls from a callback is fine */
}

static void fill(struct run *r)
{
    while (r->inflight < r->window && r->started < r->total) {
        if (mu_call(r->client, r->target, NULL, NULL, NULL, done, r, NULL) != MU_OK) {
            fprintf(stderr, "concurrent: %s\n", mu_client_errmsg(r->client));
            r->total = r->started;
            break;
        }
        r->started++;
        r->inflight++;
    }
}

int main(int argc, char **argv)
{
    struct run r;
    memset(&r, 0, sizeof r);
    const char *zk = argc > 1 ? argv[1] : "127.0.0.1:2181";
    r.target = argc > 2 ? argv[2] : "micro:whoami";
    r.total = argc > 3 ? atoi(argv[3]) : 10000;
    r.window = argc > 4 ? atoi(argv[4]) : 64;
    const char *policy = argc > 5 ? argv[5] : "round-robin";

    struct event_base *base = event_base_new();
    mu_config *cfg = mu_config_new();
    if (mu_config_set(cfg, "zk_hosts", zk) != MU_OK || mu_config_set(cfg, "policy", policy) != MU_OK) {
        fprintf(stderr, "concurrent: %s\n", mu_config_error(cfg));
        return 2;
    }
    mu_status st = mu_client_new(base, cfg, &r.client);
    mu_config_free(cfg);
    if (st != MU_OK) {
        fprintf(stderr, "concurrent: %s\n", mu_strerror(st));
        return 2;
    }
    fill(&r);
    while (r.done < r.total && event_base_loop(base, EVLOOP_ONCE) == 0)
        ;
    printf("%d calls, %d failed, policy %s\n", r.done, r.failed, policy);
    for (int i = 0; i < r.neps; i++)
        printf("  %-22s %6d  %5.1f%%\n", r.eps[i], r.counts[i], 100.0 * r.counts[i] / (r.done ? r.done : 1));
    mu_client_free(r.client);
    event_base_free(base);
    return r.failed ? 1 : 0;
}
