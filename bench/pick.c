/*
 * bench/pick: nanoseconds per mu_pool_pick for each policy at 10, 1,000 and
 * 10,000 endpoints, with pending counts moving as under load: every
 * iteration picks, starts the call (pending_add +1) and ends a random one of
 * the K*N calls in flight (pending_add -1). The same loop with a trivial
 * pick, an index drawn at random, is the baseline, so "pick" below is the
 * policy's own cost: every pick that spreads load lands on endpoints spread
 * over memory (each is its own 64-byte aligned allocation, as view.c makes
 * them), and the baseline pays for reaching that endpoint too.
 * Each run has a pool of its own, as a client using that policy has: a
 * pool keeps least-pending's index only once least-pending picks from it,
 * and that bookkeeping (in pending_add) is least-pending's cost.
 *
 * Build without sanitizers, e.g. from the top of the tree:
 *   gcc -O2 -I include -I src -I . bench/pick.c src/balance.c -o /tmp/pick
 * Usage: pick [iterations [calls-in-flight-per-endpoint]]
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "balance.h"

enum { PICK_REPS = 15 };

typedef struct bench {
    mu_pool *pool;
    mu_endpoint **v; /* the pool's endpoints, for a fresh pool per run */
    size_t n;
    mu_endpoint **inflight;
    size_t ninflight;
    uint64_t rng;
    uint64_t now;
    size_t navoid;
} bench;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* policy -1: the baseline, an index drawn at random. */
static mu_endpoint *pick(bench *b, int policy, mu_endpoint *const *avoid)
{
    if (policy < 0)
        return b->v[(size_t)(((mu_rand(&b->rng) >> 32) * b->n) >> 32)];
    return mu_pool_pick(b->pool, (mu_policy)policy, avoid, b->navoid, b->now, &b->rng);
}

/* Returns ns per iteration of the load loop. */
static double run(bench *b, int policy, long iters)
{
    mu_endpoint *avoid[1];
    /* a fresh pool, filled with this policy's own picks in flight */
    for (size_t i = 0; i < b->ninflight; i++) {
        if (b->inflight[i])
            mu_endpoint_pending_add(b->inflight[i], -1);
        b->inflight[i] = NULL;
    }
    mu_pool_free(b->pool);
    b->pool = mu_pool_new();
    if (!b->pool || mu_pool_set(b->pool, b->v, b->n) != 0) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < b->ninflight; i++) {
        avoid[0] = b->v[mu_rand(&b->rng) % b->n];
        mu_endpoint *e = pick(b, policy, avoid);
        mu_endpoint_pending_add(e, +1);
        b->inflight[i] = e;
    }
    uint64_t t0 = now_ns();
    for (long k = 0; k < iters; k++) {
        uint64_t r = mu_rand(&b->rng);
        avoid[0] = b->v[(size_t)(((r & 0xffffffffu) * b->n) >> 32)];
        mu_endpoint *e = pick(b, policy, avoid);
        mu_endpoint_pending_add(e, +1);
        size_t slot = (size_t)(((r >> 32) * b->ninflight) >> 32);
        mu_endpoint_pending_add(b->inflight[slot], -1);
        b->inflight[slot] = e;
    }
    uint64_t t1 = now_ns();
    return (double)(t1 - t0) / (double)iters;
}

static void scenario(size_t n, int down_pct, size_t navoid, long iters, int k)
{
    bench b;
    memset(&b, 0, sizeof b);
    b.n = n;
    b.rng = 0x9E3779B97F4A7C15ull ^ n;
    b.now = 1000000000ull;
    b.navoid = navoid;
    mu_endpoint **v = calloc(n, sizeof *v);
    b.v = v;
    b.ninflight = n * (size_t)k;
    b.inflight = calloc(b.ninflight, sizeof *b.inflight);
    if (!v || !b.inflight) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        size_t sz = (sizeof(mu_endpoint) + 63) / 64 * 64;
        mu_endpoint *e = aligned_alloc(64, sz);
        if (!e) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
        memset(e, 0, sizeof *e);
        v[i] = e;
        snprintf(e->key, sizeof e->key, "10.%zu.%zu.%zu:8000", i >> 16,
                 (i >> 8) & 255, i & 255);
        /* as under load: every endpoint has answered (ewma's usual path) */
        e->health.ewma_us = 500 + (i * 37) % 1000;
        e->health.ewma_at_us = b.now;
    }
    size_t ndown = down_pct ? (n * (size_t)down_pct + 99) / 100 : 0;
    for (size_t i = 0; i < ndown; i++) /* spread out, not a block */
        v[(i * 7919) % n]->health.down_until_us = b.now + 3600000000ull;

    /* Short runs interleaved, best of REPS: other load on the machine (a
     * shared VM's neighbours come and go over seconds) hits all policies
     * alike rather than whichever ran at the time. */
    double best[MU_POLICY_HASH + 2]; /* the baseline, then each policy */
    for (int p = 0; p < MU_POLICY_HASH + 2; p++)
        best[p] = 1e30;
    for (int r = 0; r < PICK_REPS; r++)
        for (int p = -1; p <= MU_POLICY_HASH; p++) {
            double t = run(&b, p, iters);
            if (t < best[p + 1])
                best[p + 1] = t;
        }
    double base = best[0];
    printf("%6zu  %5zu  %5zu  %-14s %8.1f\n", n, ndown, navoid, "(baseline)", base);
    for (int p = MU_POLICY_ROUND_ROBIN; p <= MU_POLICY_HASH; p++) {
        double t = best[p + 1];
        printf("%6zu  %5zu  %5zu  %-14s %8.1f %8.1f %6.2fx\n", n, ndown, navoid,
               mu_policy_name((mu_policy)p), t, t - base, t / base);
    }
    for (size_t i = 0; i < b.ninflight; i++)
        mu_endpoint_pending_add(b.inflight[i], -1);
    mu_pool_free(b.pool);
    free(b.inflight);
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 1000000;
    int k = argc > 2 ? atoi(argv[2]) : 2;
    if (iters <= 0 || k <= 0) {
        fprintf(stderr, "usage: %s [iterations [calls-in-flight-per-endpoint]]\n", argv[0]);
        return 2;
    }
    static const size_t sizes[] = {10, 1000, 10000};
    printf("%ld iterations a run, best of %d interleaved runs; %d call(s) in flight per endpoint; each iteration is\n"
           "pick + pending_add(+1) + pending_add(-1) on a random call in flight.\n"
           "ns/iter: the whole iteration; ns/pick: minus the baseline (an index drawn at random).\n\n",
           iters, (int)PICK_REPS, k);
    printf("%6s  %5s  %5s  %-14s %8s %8s %7s\n", "n", "down", "avoid", "policy", "ns/iter",
           "ns/pick", "ratio");
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        scenario(sizes[i], 0, 0, iters, k);
    printf("\n");
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        scenario(sizes[i], 1, 1, iters, k);
    printf("\n"); /* everything down: the "panic" path */
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        scenario(sizes[i], 100, 1, iters, k);
    return 0;
}
