/* Unit tests for balance: every policy's distribution, avoid and down
 * handling, pool_set diffs under pending calls, endpoints shared by pools.
 *
 * The consistency checker needs the pool's internals, so this file compiles
 * balance.c itself (the copy in libmicroutil_core is then never pulled from
 * the archive: every symbol it defines is already defined here). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Test hook: balance.c's allocations fail from the fail_at-th one counted
 * (0 first), fail_n of them; off while fail_at < 0. */
static long fail_at = -1, fail_n, nalloc;
static int alloc_fails(void)
{
    if (fail_at < 0)
        return 0;
    long k = nalloc++;
    return k >= fail_at && k < fail_at + fail_n;
}
static void *bal_malloc(size_t n)
{
    return alloc_fails() ? NULL : malloc(n);
}
static void *bal_calloc(size_t a, size_t b)
{
    return alloc_fails() ? NULL : calloc(a, b);
}
static void *bal_realloc(void *ptr, size_t n)
{
    return alloc_fails() ? NULL : realloc(ptr, n);
}
static void fail_from(long at, long n)
{
    fail_at = at, fail_n = n, nalloc = 0;
}
#define malloc bal_malloc
#define calloc bal_calloc
#define realloc bal_realloc
#include "../src/balance.c"
#undef malloc
#undef calloc
#undef realloc

/* ------------------------------------------------------------ checker */

/* Walks every structure of p: once least-pending has picked (lp_on), each
 * endpoint is in exactly one level list, the one of its pending count, in
 * the up set or (parked) in the parked set and the heap, and before that
 * in none; lists are well linked; min and count are right; the array and
 * the endpoints' member lists agree; each hot copy is its endpoint's
 * current state. Returns 0 or a code naming the first fault. */
static int pool_check(const mu_pool *p)
{
    size_t seen = 0, nparked = 0;
    const levels *sets[2] = {&p->up, &p->parked};
    for (int s = 0; s < 2; s++) {
        size_t count = 0, min = SIZE_MAX;
        for (size_t lvl = 0; lvl < p->cap; lvl++) {
            const member *h = sets[s]->head[lvl], *m = h;
            if (!m)
                continue;
            if (min == SIZE_MAX)
                min = lvl;
            do {
                if (m->pool != p || m->level != lvl || m->parked != s)
                    return 1;
                size_t want = m->ep->pending > 0 ? (size_t)m->ep->pending : 0;
                if (want > p->cap - 1)
                    want = p->cap - 1;
                if (want != lvl)
                    return 2; /* not in the level of its pending count */
                if (m->bnext->bprev != m || m->bprev->bnext != m)
                    return 3;
                if (m->idx >= p->n || p->mem[m->idx] != m || p->eps[m->idx] != m->ep)
                    return 4;
                count++;
                m = m->bnext;
            } while (m != h && count <= p->n);
        }
        if (count != sets[s]->count || (count && min != sets[s]->min))
            return 5;
        seen += count;
        if (s == 1)
            nparked = count;
    }
    if (seen != (p->lp_on ? p->n : 0) || nparked != p->nheap)
        return 6;
    for (size_t i = 0; i < p->nheap; i++) {
        const member *m = p->heap[i];
        if (m->hidx != i || !m->parked)
            return 7;
        if (i && p->heap[(i - 1) / 2]->park_until > m->park_until)
            return 8;
    }
    for (size_t i = 0; i < p->n; i++) {
        const member *m = p->mem[i];
        if (m->idx != i || m->ep != p->eps[i] || m->fresh)
            return 9;
        size_t k = 0;
        for (const member *o = m->ep->members; o; o = o->enext)
            if (o->pool == p)
                k++;
        if (k != 1)
            return 10; /* one node per pool per endpoint */
    }
    if (p->rr > p->n)
        return 11;
    for (size_t i = 0; i < p->n; i++) {
        hot want;
        hot_fill(&want, p->eps[i]);
        if (memcmp(&want, &p->hot[i], sizeof want) != 0)
            return 12; /* a change not synced: mu_endpoint_sync missed */
    }
    return 0;
}

#define CHECK(p) assert_int_equal(pool_check(p), 0)

/* ------------------------------------------------------------ fixtures */

static mu_endpoint *eps_new(size_t n)
{
    mu_endpoint *e = calloc(n, sizeof *e);
    assert_non_null(e);
    for (size_t i = 0; i < n; i++) {
        snprintf(e[i].host, sizeof e[i].host, "10.0.%zu.%zu", i / 250, i % 250);
        e[i].port = 8000;
        snprintf(e[i].key, sizeof e[i].key, "%s:%d", e[i].host, e[i].port);
    }
    return e;
}

/* A pool over ep[0..n). */
static mu_pool *pool_of(mu_endpoint *ep, size_t n)
{
    mu_endpoint **v = malloc((n ? n : 1) * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = &ep[i];
    mu_pool *p = mu_pool_new();
    assert_non_null(p);
    assert_int_equal(mu_pool_set(p, v, n), 0);
    free(v);
    CHECK(p);
    return p;
}

static void set_list(mu_pool *p, mu_endpoint *ep, const size_t *idx, size_t n)
{
    mu_endpoint *v[64];
    assert_true(n <= 64);
    for (size_t i = 0; i < n; i++)
        v[i] = &ep[idx[i]];
    assert_int_equal(mu_pool_set(p, v, n), 0);
    CHECK(p);
}

/* Every pool holding ep[0..n) is gone: no member node is left on them. */
static void eps_free(mu_endpoint *ep, size_t n)
{
    for (size_t i = 0; i < n; i++)
        assert_null(ep[i].members);
    free(ep);
}

static size_t idx_of(const mu_endpoint *base, const mu_endpoint *e)
{
    assert_non_null(e);
    return (size_t)(e - base);
}

/* As health.c does: change what picks read, then tell the pools. */
static void set_down(mu_endpoint *e, uint64_t until)
{
    e->health.down_until_us = until;
    mu_endpoint_sync(e);
}

static void set_ewma(mu_endpoint *e, uint64_t ewma_us, uint64_t at_us)
{
    e->health.ewma_us = ewma_us;
    e->health.ewma_at_us = at_us;
    mu_endpoint_sync(e);
}

static void set_oldest(mu_endpoint *e, uint64_t launch_us)
{
    e->health.oldest_us = launch_us;
    mu_endpoint_sync(e);
}

static const mu_policy all_policies[] = {MU_POLICY_ROUND_ROBIN, MU_POLICY_RANDOM,
                                         MU_POLICY_LEAST_PENDING, MU_POLICY_P2C};

#define NOW 1000000000ull

/* ------------------------------------------------------------ names */

static void test_policy_names(void **state)
{
    (void)state;
    for (size_t i = 0; i < MU_ARRAY_LEN(all_policies); i++) {
        mu_policy p = all_policies[i];
        assert_int_equal(mu_policy_parse(mu_policy_name(p)), (int)p);
    }
    assert_string_equal(mu_policy_name(MU_POLICY_LEAST_PENDING), "least-pending");
    assert_int_equal(mu_policy_parse("p2c"), MU_POLICY_P2C);
    assert_int_equal(mu_policy_parse("round-robin"), MU_POLICY_ROUND_ROBIN);
    assert_int_equal(mu_policy_parse("random"), MU_POLICY_RANDOM);
    assert_int_equal(mu_policy_parse("roundrobin"), -1);
    assert_int_equal(mu_policy_parse(""), -1);
    assert_int_equal(mu_policy_parse(NULL), -1);
    assert_string_equal(mu_policy_name((mu_policy)42), "unknown");
}

static void test_empty_and_single(void **state)
{
    (void)state;
    uint64_t rng = 1;
    mu_pool_free(NULL);
    mu_pool *p = mu_pool_new();
    assert_non_null(p);
    for (size_t i = 0; i < MU_ARRAY_LEN(all_policies); i++)
        assert_null(mu_pool_pick(p, all_policies[i], NULL, 0, NOW, &rng));
    assert_int_equal(mu_pool_size(p), 0);
    assert_null(mu_pool_get(p, 0));

    mu_endpoint *ep = eps_new(1);
    assert_int_equal(mu_pool_set(p, (mu_endpoint *[]){&ep[0]}, 1), 0);
    mu_endpoint *avoid[] = {&ep[0]};
    set_down(&ep[0], NOW + 1);
    for (size_t i = 0; i < MU_ARRAY_LEN(all_policies); i++)
        assert_ptr_equal(mu_pool_pick(p, all_policies[i], avoid, 1, NOW, &rng), &ep[0]);
    assert_int_equal(mu_pool_set(p, NULL, 0), 0);
    assert_null(ep[0].members);
    assert_null(mu_pool_pick(p, MU_POLICY_P2C, NULL, 0, NOW, &rng));
    CHECK(p);
    mu_pool_free(p);
    free(ep);
}

static void test_rand(void **state)
{
    (void)state;
    uint64_t s = 0; /* tolerated: a zero state would stick */
    uint64_t a = mu_rand(&s), b = mu_rand(&s);
    assert_true(s != 0 && a != b);
    s = 42;
    uint64_t t = 42;
    for (int i = 0; i < 100; i++)
        assert_true(mu_rand(&s) == mu_rand(&t));
}

/* ------------------------------------------------------------ round-robin */

static void rr_even(size_t n)
{
    mu_endpoint *ep = eps_new(n);
    mu_pool *p = pool_of(ep, n);
    uint64_t rng = 7;
    size_t count[16] = {0};
    for (size_t k = 0; k < 1000 * n; k++) {
        mu_endpoint *e = mu_pool_pick(p, MU_POLICY_ROUND_ROBIN, NULL, 0, NOW, &rng);
        size_t i = idx_of(ep, e);
        /* exactly even at every point: a cursor, in order */
        assert_int_equal(i, k % n);
        count[i]++;
        /* pending does not matter to round-robin */
        mu_endpoint_pending_add(e, (k & 1) ? -1 : +1);
    }
    for (size_t i = 0; i < n; i++)
        assert_int_equal(count[i], 1000);
    CHECK(p);
    mu_pool_free(p);
    eps_free(ep, n);
}

static void test_rr_even_3(void **state)
{
    (void)state;
    rr_even(3);
}

static void test_rr_even_7(void **state)
{
    (void)state;
    rr_even(7);
}

static void test_rr_cursor_survives_set(void **state)
{
    (void)state;
    mu_endpoint *ep = eps_new(6);
    mu_pool *p = pool_of(ep, 4); /* 0 1 2 3 */
    uint64_t rng = 3;
    assert_int_equal(idx_of(ep, mu_pool_pick(p, MU_POLICY_ROUND_ROBIN, NULL, 0, NOW, &rng)), 0);
    assert_int_equal(idx_of(ep, mu_pool_pick(p, MU_POLICY_ROUND_ROBIN, NULL, 0, NOW, &rng)), 1);
    /* next is 2; remove 2, add 5: the next one is 3 (first kept after) */
    set_list(p, ep, (size_t[]){0, 1, 3, 5}, 4);
    assert_int_equal(idx_of(ep, mu_pool_pick(p, MU_POLICY_ROUND_ROBIN, NULL, 0, NOW, &rng)), 3);
    assert_int_equal(idx_of(ep, mu_pool_pick(p, MU_POLICY_ROUND_ROBIN, NULL, 0, NOW, &rng)), 5);
    assert_int_equal(idx_of(ep, mu_pool_pick(p, MU_POLICY_ROUND_ROBIN, NULL, 0, NOW, &rng)), 0);
    /* kept ones keep their order whatever order eps comes in; new ones after */
    set_list(p, ep, (size_t[]){4, 5, 3, 1, 0}, 5);
    assert_ptr_equal(mu_pool_get(p, 0), &ep[0]);
    assert_ptr_equal(mu_pool_get(p, 4), &ep[4]);
    assert_null(mu_pool_get(p, 5));
    assert_int_equal(idx_of(ep, mu_pool_pick(p, MU_POLICY_ROUND_ROBIN, NULL, 0, NOW, &rng)), 1);
    assert_int_equal(idx_of(ep, mu_pool_pick(p, MU_POLICY_ROUND_ROBIN, NULL, 0, NOW, &rng)), 3);
    assert_int_equal(idx_of(ep, mu_pool_pick(p, MU_POLICY_ROUND_ROBIN, NULL, 0, NOW, &rng)), 5);
    /* the cursor's endpoint and all after it go: the new ones are next */
    set_list(p, ep, (size_t[]){0, 1, 3, 2}, 4);
    assert_int_equal(idx_of(ep, mu_pool_pick(p, MU_POLICY_ROUND_ROBIN, NULL, 0, NOW, &rng)), 2);
    assert_int_equal(idx_of(ep, mu_pool_pick(p, MU_POLICY_ROUND_ROBIN, NULL, 0, NOW, &rng)), 0);
    /* duplicates in eps count once */
    set_list(p, ep, (size_t[]){0, 0, 4, 4, 1}, 5);
    assert_int_equal(mu_pool_size(p), 3);
    mu_pool_free(p);
    free(ep);
}

/* ------------------------------------------------------------ random */

static void test_random_uniform(void **state)
{
    (void)state;
    enum { N = 10, PICKS = 100000 };
    mu_endpoint *ep = eps_new(N);
    mu_pool *p = pool_of(ep, N);
    uint64_t rng = 0x1234567;
    size_t count[N] = {0};
    for (int k = 0; k < PICKS; k++) {
        mu_endpoint *e = mu_pool_pick(p, MU_POLICY_RANDOM, NULL, 0, NOW, &rng);
        count[idx_of(ep, e)]++;
        mu_endpoint_pending_add(e, +1); /* pending does not matter to random */
    }
    double expect = PICKS / (double)N, sigma = sqrt(PICKS * (1.0 / N) * (1 - 1.0 / N));
    double chi2 = 0;
    for (int i = 0; i < N; i++) {
        double d = (double)count[i] - expect;
        assert_true(fabs(d) < 5 * sigma);
        chi2 += d * d / expect;
    }
    assert_true(chi2 < 40.0); /* 9 degrees of freedom: p < 1e-5 */
    CHECK(p);
    mu_pool_free(p);
    free(ep);
}

/* ------------------------------------------------------------ least-pending */

static void test_lp_min_and_ties(void **state)
{
    (void)state;
    mu_endpoint *ep = eps_new(4);
    mu_pool *p = pool_of(ep, 4);
    uint64_t rng = 5;
    mu_endpoint_pending_add(&ep[0], 2);
    mu_endpoint_pending_add(&ep[3], 1);
    CHECK(p);
    /* 1 and 2 tie at 0: they take turns */
    size_t a = idx_of(ep, mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng));
    size_t b = idx_of(ep, mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng));
    assert_true((a == 1 && b == 2) || (a == 2 && b == 1));
    for (int k = 0; k < 10; k++) {
        assert_int_equal(idx_of(ep, mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng)),
                         k % 2 ? b : a);
    }
    /* under load: the pick always has the least pending */
    for (int k = 0; k < 1000; k++) {
        mu_endpoint *e = mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng);
        for (int i = 0; i < 4; i++)
            assert_true(e->pending <= ep[i].pending);
        mu_endpoint_pending_add(e, +1);
        if (k % 3 == 2) { /* release on a random endpoint that has some */
            size_t r = rand_below(&rng, 4);
            if (ep[r].pending > 0)
                mu_endpoint_pending_add(&ep[r], -1);
        }
        CHECK(p);
    }
    mu_pool_free(p);
    free(ep);
}

/* Equal pending, each call ending before the next: exactly even. */
static void test_lp_rotation_even(void **state)
{
    (void)state;
    enum { N = 5 };
    mu_endpoint *ep = eps_new(N);
    mu_pool *p = pool_of(ep, N);
    uint64_t rng = 9;
    size_t count[N] = {0};
    for (int k = 0; k < 1000 * N; k++) {
        mu_endpoint *e = mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng);
        count[idx_of(ep, e)]++;
        mu_endpoint_pending_add(e, +1);
        mu_endpoint_pending_add(e, -1);
    }
    for (int i = 0; i < N; i++)
        assert_int_equal(count[i], 1000);
    CHECK(p);
    mu_pool_free(p);
    free(ep);
}

/* One endpoint stuck high is never picked while the others are lower. */
static void test_lp_avoids_loaded(void **state)
{
    (void)state;
    enum { N = 8, HOT = 3, INFLIGHT = 12 };
    mu_endpoint *ep = eps_new(N);
    mu_pool *p = pool_of(ep, N);
    uint64_t rng = 11;
    mu_endpoint_pending_add(&ep[HOT], 50);
    mu_endpoint *inflight[INFLIGHT] = {0};
    for (int k = 0; k < 20000; k++) {
        mu_endpoint *e = mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng);
        assert_ptr_not_equal(e, &ep[HOT]);
        mu_endpoint_pending_add(e, +1);
        size_t slot = rand_below(&rng, INFLIGHT);
        if (inflight[slot])
            mu_endpoint_pending_add(inflight[slot], -1);
        inflight[slot] = e;
    }
    CHECK(p);
    /* once everything else is as loaded, it takes its share again */
    for (int i = 0; i < INFLIGHT; i++)
        if (inflight[i])
            mu_endpoint_pending_add(inflight[i], -1);
    for (int i = 0; i < N; i++)
        if (i != HOT)
            mu_endpoint_pending_add(&ep[i], 50 - ep[i].pending);
    CHECK(p);
    int hot = 0;
    for (int k = 0; k < N; k++)
        hot += mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng) == &ep[HOT];
    assert_int_equal(hot, 1);
    mu_pool_free(p);
    free(ep);
}

/* Pending counts far above the initial level table. */
static void test_lp_deep_levels(void **state)
{
    (void)state;
    mu_endpoint *ep = eps_new(3);
    mu_pool *p = pool_of(ep, 3);
    uint64_t rng = 13;
    mu_endpoint_pending_add(&ep[0], 1000);
    mu_endpoint_pending_add(&ep[1], 500);
    mu_endpoint_pending_add(&ep[2], 999);
    CHECK(p);
    assert_ptr_equal(mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng), &ep[1]);
    mu_endpoint_pending_add(&ep[1], 600);
    CHECK(p);
    assert_ptr_equal(mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng), &ep[2]);
    mu_endpoint_pending_add(&ep[0], -1000);
    mu_endpoint_pending_add(&ep[1], -1100);
    mu_endpoint_pending_add(&ep[2], -999);
    CHECK(p);
    assert_int_equal(p->up.min, 0);
    mu_pool_free(p);
    free(ep);
}

/* ------------------------------------------------------------ p2c */

/* ewma: of two, the faster by latency x (pending + 1); a stalled one (an
 * old attempt in flight) loses before anything ends; a new one is costed
 * as its rival; an old slow average decays. */
static size_t ewma_pick_count(mu_pool *p, mu_endpoint *want, uint64_t now, uint64_t *rng)
{
    size_t hits = 0;
    for (int k = 0; k < 2000; k++)
        hits += mu_pool_pick(p, MU_POLICY_EWMA, NULL, 0, now, rng) == want;
    return hits;
}

static void test_ewma(void **state)
{
    (void)state;
    uint64_t rng = 5;
    mu_endpoint *ep = eps_new(2);
    mu_pool *p = pool_of(ep, 2);
    set_ewma(&ep[0], 10000, NOW);
    set_ewma(&ep[1], 1000, NOW);
    assert_int_equal(ewma_pick_count(p, &ep[1], NOW, &rng), 2000);
    /* Pending weighs in: 1 ms x 11 is dearer than 10 ms x 1. */
    mu_endpoint_pending_add(&ep[1], 10);
    assert_int_equal(ewma_pick_count(p, &ep[0], NOW, &rng), 2000);
    mu_endpoint_pending_add(&ep[1], -10);
    /* The fast one stalls: its oldest attempt has run 500 ms. */
    set_oldest(&ep[1], NOW - 500000);
    assert_int_equal(ewma_pick_count(p, &ep[0], NOW, &rng), 2000);
    set_oldest(&ep[1], 0);
    /* A slow average 30 s old has halved 14 times (every 2.1 s): 100 ms -> 6 us. */
    set_ewma(&ep[0], 100000, NOW - 30000000);
    assert_int_equal(ewma_pick_count(p, &ep[0], NOW, &rng), 2000);
    /* A new endpoint (no sample) against a known one: a coin toss. */
    set_ewma(&ep[0], 0, 0);
    size_t hits = ewma_pick_count(p, &ep[0], NOW, &rng);
    assert_true(hits > 800 && hits < 1200);
    CHECK(p);
    mu_pool_free(p);
    free(ep);
}

/* How many of 3000 ewma picks from p go to each of ep[0..n). */
static void ewma_spread(mu_pool *p, mu_endpoint *ep, size_t n, uint64_t *rng, size_t *hits)
{
    memset(hits, 0, n * sizeof *hits);
    for (int i = 0; i < 3000; i++)
        hits[idx_of(ep, mu_pool_pick(p, MU_POLICY_EWMA, NULL, 0, NOW, rng))]++;
    CHECK(p);
}

/* Three or more endpoints: the draw of three distinct by arithmetic and
 * the straight-line comparison (all sampled), or the general one (some
 * new). */
static void test_ewma_three(void **state)
{
    (void)state;
    uint64_t rng = 77;
    size_t hits[6];
    mu_endpoint *ep = eps_new(6);
    mu_pool *p = pool_of(ep, 3);
    set_ewma(&ep[0], 10000, NOW);
    set_ewma(&ep[1], 1000, NOW);
    set_ewma(&ep[2], 5000, NOW);
    ewma_spread(p, ep, 3, &rng, hits); /* three of three: always the cheapest */
    assert_int_equal(hits[1], 3000);
    mu_endpoint_pending_add(&ep[1], 10); /* 1 ms x 11 > 5 ms x 1 */
    ewma_spread(p, ep, 3, &rng, hits);
    assert_int_equal(hits[2], 3000);
    mu_endpoint_pending_add(&ep[1], -10);
    set_oldest(&ep[1], NOW - 50000); /* stalled 50 ms: dearer than 5 ms */
    ewma_spread(p, ep, 3, &rng, hits);
    assert_int_equal(hits[2], 3000);
    set_oldest(&ep[1], 0);
    for (int i = 0; i < 3; i++) /* ties go either way, evenly */
        set_ewma(&ep[i], 2000, NOW);
    ewma_spread(p, ep, 3, &rng, hits);
    for (int i = 0; i < 3; i++)
        assert_true(hits[i] > 800 && hits[i] < 1200);
    set_ewma(&ep[2], 0, 0); /* new: costed as the fastest drawn, a tie */
    ewma_spread(p, ep, 3, &rng, hits);
    for (int i = 0; i < 3; i++)
        assert_true(hits[i] > 800 && hits[i] < 1200);
    /* Six, two of them 20 times slower: a triple is never all slow. */
    mu_pool_free(p);
    p = pool_of(ep, 6);
    for (int i = 0; i < 6; i++)
        set_ewma(&ep[i], i < 2 ? 20000 : 1000, NOW);
    ewma_spread(p, ep, 6, &rng, hits);
    assert_int_equal(hits[0] + hits[1], 0);
    for (int i = 2; i < 6; i++)
        assert_true(hits[i] > 550 && hits[i] < 950);
    set_down(&ep[3], NOW + 1000); /* ejected: never picked while others are up */
    ewma_spread(p, ep, 6, &rng, hits);
    assert_int_equal(hits[3], 0);
    assert_int_equal(hits[0] + hits[1], 0);
    mu_pool_free(p);
    free(ep);
}

/* hash: the owner of each of 100,000 keys among 100 endpoints; then one
 * endpoint leaves: only its keys move (about 1/100). One is ejected: its
 * keys go to their next choice and come back when it is up again. */
enum { HASH_KEYS = 100000, HASH_EPS = 100 };

static void hash_owners(mu_pool *p, mu_endpoint *base, uint64_t now, size_t *owner)
{
    uint64_t rng = 1;
    for (size_t k = 0; k < HASH_KEYS; k++)
        owner[k] = idx_of(base, mu_pool_pick_hash(p, mix64(k), NULL, 0, now, &rng));
}

static void test_hash_moves_little(void **state)
{
    (void)state;
    mu_endpoint *ep = eps_new(HASH_EPS);
    mu_pool *p = pool_of(ep, HASH_EPS);
    size_t *before = malloc(HASH_KEYS * sizeof *before), *after = malloc(HASH_KEYS * sizeof *after);
    assert_non_null(before);
    assert_non_null(after);
    hash_owners(p, ep, NOW, before);
    /* Endpoint 37 leaves. */
    mu_endpoint *rest[HASH_EPS - 1];
    for (size_t i = 0, n = 0; i < HASH_EPS; i++)
        if (i != 37)
            rest[n++] = &ep[i];
    assert_int_equal(mu_pool_set(p, rest, HASH_EPS - 1), 0);
    hash_owners(p, ep, NOW, after);
    size_t moved = 0;
    for (size_t k = 0; k < HASH_KEYS; k++)
        if (after[k] != before[k]) {
            moved++;
            assert_int_equal(before[k], 37); /* only its keys */
        }
    fprintf(stderr, "  hash: 1 of %d endpoints left, %zu of %d keys moved (%.2f%%)\n", HASH_EPS,
            moved, HASH_KEYS, 100.0 * (double)moved / HASH_KEYS);
    assert_true(moved > 0 && moved * 100 <= HASH_KEYS * 3 / 2); /* ~1%, at most 1.5% */
    /* Endpoint 5 is ejected, then back. */
    set_down(&ep[5], NOW + 1000);
    hash_owners(p, ep, NOW, before);
    for (size_t k = 0; k < HASH_KEYS; k++)
        if (before[k] != after[k])
            assert_int_equal(after[k], 5);
    hash_owners(p, ep, NOW + 2000, before);
    assert_memory_equal(before, after, HASH_KEYS * sizeof *before);
    free(before);
    free(after);
    CHECK(p);
    mu_pool_free(p);
    free(ep);
}

static void test_p2c_never_max(void **state)
{
    (void)state;
    uint64_t rng = 17;
    for (size_t n = 2; n <= 9; n++) {
        mu_endpoint *ep = eps_new(n);
        mu_pool *p = pool_of(ep, n);
        /* distinct pending: a rotation of 0..n-1, the top one raised */
        size_t off = rand_below(&rng, n), max = 0, lo = 0;
        for (size_t i = 0; i < n; i++) {
            mu_endpoint_pending_add(&ep[i], (int)((i + off) % n));
            if (ep[i].pending == (int)n - 1)
                max = i;
            if (ep[i].pending == 0)
                lo = i;
        }
        mu_endpoint_pending_add(&ep[max], 10);
        size_t count[9] = {0};
        for (int k = 0; k < 5000; k++) {
            mu_endpoint *e = mu_pool_pick(p, MU_POLICY_P2C, NULL, 0, NOW, &rng);
            assert_ptr_not_equal(e, &ep[max]);
            count[idx_of(ep, e)]++;
        }
        if (n == 2)
            assert_int_equal(count[1 - max], 5000);
        /* the least loaded wins every pair it is in: 2/n of picks */
        assert_true(count[lo] * n >= 5000 * 2 * 9 / 10);
        CHECK(p);
        mu_pool_free(p);
        free(ep);
    }
}

/* Equal pending: p2c's random tie break is fair. */
static void test_p2c_ties_uniform(void **state)
{
    (void)state;
    enum { N = 4, PICKS = 40000 };
    mu_endpoint *ep = eps_new(N);
    mu_pool *p = pool_of(ep, N);
    uint64_t rng = 19;
    size_t count[N] = {0};
    for (int k = 0; k < PICKS; k++)
        count[idx_of(ep, mu_pool_pick(p, MU_POLICY_P2C, NULL, 0, NOW, &rng))]++;
    double sigma = sqrt(PICKS * 0.25 * 0.75);
    for (int i = 0; i < N; i++)
        assert_true(fabs((double)count[i] - PICKS / N) < 5 * sigma);
    mu_pool_free(p);
    free(ep);
}

/* ------------------------------------------------------------ avoid / down */

static void test_avoid(void **state)
{
    (void)state;
    mu_endpoint *ep = eps_new(3);
    mu_pool *p = pool_of(ep, 3);
    uint64_t rng = 23;
    for (size_t k = 0; k < MU_ARRAY_LEN(all_policies); k++) {
        mu_policy pol = all_policies[k];
        mu_endpoint *one[] = {&ep[1]};
        size_t seen[3] = {0};
        for (int i = 0; i < 300; i++)
            seen[idx_of(ep, mu_pool_pick(p, pol, one, 1, NOW, &rng))]++;
        assert_int_equal(seen[1], 0);
        assert_true(seen[0] > 0 && seen[2] > 0);
        mu_endpoint *two[] = {&ep[2], &ep[0]};
        for (int i = 0; i < 50; i++)
            assert_ptr_equal(mu_pool_pick(p, pol, two, 2, NOW, &rng), &ep[1]);
        /* all tried: the one tried first comes back */
        mu_endpoint *all[] = {&ep[2], &ep[0], &ep[1]};
        assert_ptr_equal(mu_pool_pick(p, pol, all, 3, NOW, &rng), &ep[2]);
        /* ... unless it is down: an up one first */
        set_down(&ep[2], NOW + 10);
        assert_ptr_equal(mu_pool_pick(p, pol, all, 3, NOW, &rng), &ep[0]);
        set_down(&ep[2], 0);
        CHECK(p);
    }
    mu_pool_free(p);
    free(ep);
}

static void test_down(void **state)
{
    (void)state;
    mu_endpoint *ep = eps_new(4);
    mu_pool *p = pool_of(ep, 4);
    uint64_t rng = 29;
    for (size_t k = 0; k < MU_ARRAY_LEN(all_policies); k++) {
        mu_policy pol = all_policies[k];
        uint64_t now = NOW + k * 1000;
        set_down(&ep[0], now + 100);
        set_down(&ep[2], now + 200);
        /* down ones are skipped while any other is up, even when loaded */
        mu_endpoint_pending_add(&ep[1], 5);
        for (int i = 0; i < 200; i++) {
            mu_endpoint *e = mu_pool_pick(p, pol, NULL, 0, now, &rng);
            assert_true(e == &ep[1] || e == &ep[3]);
        }
        CHECK(p);
        /* the only up one avoided: a down one not tried beats it */
        mu_endpoint *avoid[] = {&ep[1], &ep[3]};
        for (int i = 0; i < 50; i++) {
            mu_endpoint *e = mu_pool_pick(p, pol, avoid, 2, now, &rng);
            assert_true(e == &ep[0] || e == &ep[2]);
        }
        /* all down: still an answer, spread by the policy */
        set_down(&ep[1], now + 300);
        set_down(&ep[3], now + 400);
        size_t seen[4] = {0};
        for (int i = 0; i < 400; i++)
            seen[idx_of(ep, mu_pool_pick(p, pol, NULL, 0, now, &rng))]++;
        if (pol != MU_POLICY_LEAST_PENDING && pol != MU_POLICY_P2C)
            for (int i = 0; i < 4; i++)
                assert_true(seen[i] > 0);
        if (pol == MU_POLICY_LEAST_PENDING)
            assert_int_equal(seen[1], 0); /* the loaded one, even in panic */
        CHECK(p);
        /* time passes: the first to come back is picked as up */
        for (int i = 0; i < 50; i++)
            assert_ptr_equal(mu_pool_pick(p, pol, NULL, 0, now + 150, &rng), &ep[0]);
        /* a success clears one early (call.c clears, then ends the attempt) */
        set_down(&ep[3], 0);
        mu_endpoint_pending_add(&ep[3], +1);
        mu_endpoint_pending_add(&ep[3], -1);
        for (int i = 0; i < 50; i++) {
            mu_endpoint *e = mu_pool_pick(p, pol, NULL, 0, now + 150, &rng);
            assert_true(e == &ep[0] || e == &ep[3]);
        }
        for (int i = 0; i < 4; i++)
            set_down(&ep[i], 0);
        mu_endpoint_pending_add(&ep[1], -5);
        for (int i = 0; i < 8; i++)
            (void)mu_pool_pick(p, pol, NULL, 0, now + 1000, &rng);
        CHECK(p);
    }
    mu_pool_free(p);
    free(ep);
}

/* Least-pending with many down endpoints: they are parked, not walked over
 * on every pick, and come back when their time is up. */
static void test_lp_parking(void **state)
{
    (void)state;
    enum { N = 200 };
    mu_endpoint *ep = eps_new(N);
    mu_pool *p = pool_of(ep, N);
    uint64_t rng = 31;
    for (int i = 0; i < N; i += 2)
        set_down(&ep[i], NOW + 1000 + (uint64_t)(i * 7 % 13));
    size_t inflight_n = 0;
    mu_endpoint *inflight[64];
    for (int k = 0; k < 5000; k++) {
        mu_endpoint *e = mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW + (uint64_t)k / 10, &rng);
        assert_true(idx_of(ep, e) % 2 == 1);
        mu_endpoint_pending_add(e, +1);
        if (inflight_n < 64) {
            inflight[inflight_n++] = e;
        } else {
            size_t r = rand_below(&rng, 64);
            mu_endpoint_pending_add(inflight[r], -1);
            inflight[r] = e;
        }
        if (k % 97 == 0)
            CHECK(p);
    }
    assert_int_equal(p->nheap, N / 2);
    /* one extended while parked, one cleared */
    set_down(&ep[0], NOW + 5000);
    set_down(&ep[2], 0);
    mu_endpoint_pending_add(&ep[2], +1);
    mu_endpoint_pending_add(&ep[2], -1);
    assert_int_equal(p->nheap, N / 2 - 1);
    CHECK(p);
    /* past their time: all back but ep[0] */
    size_t back = 0;
    for (int k = 0; k < 2 * N; k++) {
        mu_endpoint *e = mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW + 2000, &rng);
        assert_ptr_not_equal(e, &ep[0]);
        back += idx_of(ep, e) % 2 == 0;
    }
    assert_true(back > 0);
    assert_int_equal(p->nheap, 1);
    CHECK(p);
    for (size_t i = 0; i < inflight_n; i++)
        mu_endpoint_pending_add(inflight[i], -1);
    CHECK(p);
    mu_pool_free(p);
    free(ep);
}

/* ------------------------------------------------------------ pool_set */

static void test_set_diff_with_pending(void **state)
{
    (void)state;
    mu_endpoint *ep = eps_new(6);
    mu_pool *p = pool_of(ep, 4); /* 0 1 2 3 */
    uint64_t rng = 37;
    mu_endpoint_pending_add(&ep[0], 2);
    mu_endpoint_pending_add(&ep[1], 1);
    mu_endpoint_pending_add(&ep[5], 3); /* not in the pool yet */
    set_down(&ep[2], NOW + 100);
    (void)mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng); /* parks 2 */
    assert_int_equal(p->nheap, 1);
    CHECK(p);

    /* drop 0 (pending) and 2 (parked), keep 1 3, add 4 5 (5 with pending) */
    set_list(p, ep, (size_t[]){5, 3, 1, 4}, 4);
    assert_int_equal(mu_pool_size(p), 4);
    assert_null(ep[0].members);
    assert_null(ep[2].members);
    assert_int_equal(p->nheap, 0);
    assert_int_equal(ep[1].members->level, 1);
    assert_int_equal(ep[5].members->level, 3);
    /* the calls on removed endpoints end later: nothing of the pool is touched */
    mu_endpoint_pending_add(&ep[0], -1);
    mu_endpoint_pending_add(&ep[0], -1);
    CHECK(p);
    for (int k = 0; k < 20; k++) {
        mu_endpoint *e = mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng);
        assert_true(e == &ep[3] || e == &ep[4]);
    }
    /* back in, still pending */
    mu_endpoint_pending_add(&ep[0], 4);
    set_list(p, ep, (size_t[]){0, 1, 3, 4, 5}, 5);
    assert_int_equal(ep[0].members->level, 4);
    mu_endpoint_pending_add(&ep[0], -4);
    mu_endpoint_pending_add(&ep[1], -1);
    mu_endpoint_pending_add(&ep[5], -3);
    CHECK(p);
    assert_int_equal(p->up.min, 0);
    mu_pool_free(p);
    for (int i = 0; i < 6; i++)
        assert_null(ep[i].members);
    /* the pool is gone: ending calls must not reach it (ASan would see it) */
    mu_endpoint_pending_add(&ep[3], +1);
    mu_endpoint_pending_add(&ep[3], -1);
    free(ep);
}

static void test_free_with_pending(void **state)
{
    (void)state;
    mu_endpoint *ep = eps_new(3);
    mu_pool *p = pool_of(ep, 3);
    mu_pool *q = pool_of(ep, 2);
    mu_endpoint_pending_add(&ep[0], 1);
    mu_endpoint_pending_add(&ep[1], 1);
    mu_pool_free(p);
    assert_non_null(ep[0].members);
    assert_null(ep[2].members);
    mu_endpoint_pending_add(&ep[0], -1);
    mu_endpoint_pending_add(&ep[2], -1);
    CHECK(q);
    mu_pool_free(q);
    mu_endpoint_pending_add(&ep[1], -1);
    assert_null(ep[0].members);
    free(ep);
}

/* ------------------------------------------------------------ shared endpoints */

static void test_two_pools(void **state)
{
    (void)state;
    mu_endpoint *ep = eps_new(4);
    mu_pool *a = pool_of(ep, 3);     /* 0 1 2 */
    mu_pool *b = pool_of(ep + 1, 3); /* 1 2 3 */
    uint64_t rng = 41;
    /* a call of method a on 1 loads it for method b too */
    mu_endpoint_pending_add(&ep[1], 3);
    CHECK(a);
    CHECK(b);
    for (int k = 0; k < 20; k++) {
        assert_ptr_not_equal(mu_pool_pick(a, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng), &ep[1]);
        assert_ptr_not_equal(mu_pool_pick(b, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng), &ep[1]);
    }
    mu_endpoint_pending_add(&ep[2], 5);
    mu_endpoint_pending_add(&ep[3], 5);
    assert_ptr_equal(mu_pool_pick(b, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng), &ep[1]);
    assert_ptr_equal(mu_pool_pick(a, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng), &ep[0]);
    /* p2c in b: 1 wins every pair it is in (2/3 of picks) */
    int ones = 0;
    for (int k = 0; k < 300; k++)
        ones += mu_pool_pick(b, MU_POLICY_P2C, NULL, 0, NOW, &rng) == &ep[1];
    assert_true(ones > 150);
    CHECK(a);
    CHECK(b);
    /* removing it from one pool leaves the other's node */
    set_list(b, ep, (size_t[]){2, 3}, 2);
    assert_non_null(ep[1].members);
    assert_ptr_equal(ep[1].members->pool, a);
    assert_null(ep[1].members->enext);
    mu_endpoint_pending_add(&ep[1], -3);
    CHECK(a);
    CHECK(b);
    mu_pool_free(a);
    mu_pool_free(b);
    free(ep);
}

/* ------------------------------------------------------------ fuzz */

/* v[0..n) holds e. */
static int holds(mu_endpoint *const *v, size_t n, const mu_endpoint *e)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == e)
            return 1;
    return 0;
}

/* Random operations on three pools over N shared endpoints, the checker
 * after each: every policy (ewma and hash included), pools that
 * least-pending never picks from, starts late on, or that are freed and
 * made again, sets with duplicates, health changes told by
 * mu_endpoint_sync alone (no pending_add after them to refresh the
 * copies), and what a pick must honour checked against the endpoints
 * themselves: an up, unavoided endpoint whenever there is one, an
 * unavoided one whenever there is one, and least-pending's minimum. */
static void fuzz(size_t N, uint64_t seed, int steps)
{
    enum { POOLS = 3, NMAX = 40 };
    assert_true(N <= NMAX);
    mu_endpoint *ep = eps_new(N);
    mu_pool *p[POOLS];
    for (int i = 0; i < POOLS; i++)
        p[i] = pool_of(ep, 0);
    uint64_t rng = seed, now = NOW;
    mu_endpoint *inflight[256];
    size_t nin = 0;
    for (int step = 0; step < steps; step++) {
        int op = (int)rand_below(&rng, 100), pi = (int)rand_below(&rng, POOLS);
        mu_pool *q = p[pi];
        if (op < 3) {
            mu_endpoint *v[NMAX + 1];
            size_t n = 0, keep = rand_below(&rng, 4);
            for (size_t i = 0; i < N; i++)
                if (rand_below(&rng, 4) <= keep)
                    v[n++] = &ep[i];
            if (n && rand_below(&rng, 2))
                v[n++] = v[0]; /* a duplicate */
            assert_int_equal(mu_pool_set(q, v, n), 0);
        } else if (op == 3) {
            if (rand_below(&rng, 10) == 0) {
                mu_pool_free(q);
                p[pi] = q = pool_of(ep, 0);
            }
        } else if (op < 10) {
            mu_endpoint *e = &ep[rand_below(&rng, N)];
            switch (rand_below(&rng, 3)) {
            case 0:
                set_down(e, rand_below(&rng, 2) ? now + rand_below(&rng, 5000000) : 0);
                break;
            case 1:
                set_ewma(e, rand_below(&rng, 3) ? 1 + rand_below(&rng, 100000) : 0,
                         now - rand_below(&rng, 10000000));
                break;
            default:
                set_oldest(e, rand_below(&rng, 2) ? now - rand_below(&rng, 1000000) : 0);
            }
        } else if (op < 14) {
            now += rand_below(&rng, 1000000);
        } else if (op < 65 || nin == 0) {
            mu_endpoint *avoid[3];
            size_t na = rand_below(&rng, 4);
            for (size_t i = 0; i < na; i++)
                avoid[i] = &ep[rand_below(&rng, N)];
            mu_policy pol = (mu_policy)rand_below(&rng, 6);
            if (pol == MU_POLICY_LEAST_PENDING && (pi == 0 || (pi == 1 && step < steps / 2)))
                pol = MU_POLICY_EWMA; /* pool 0 never least-pending, pool 1 late */
            mu_endpoint *e = mu_pool_pick(q, pol, avoid, na, now, &rng);
            size_t n = mu_pool_size(q);
            if (!n) {
                assert_null(e);
                continue;
            }
            assert_non_null(e);
            int any_up = 0, any_free = 0, minp = INT32_MAX;
            for (size_t i = 0; i < n; i++) {
                mu_endpoint *o = mu_pool_get(q, i);
                if (holds(avoid, na, o))
                    continue;
                any_free = 1;
                if (o->health.down_until_us > now)
                    continue;
                any_up = 1;
                minp = o->pending < minp ? o->pending : minp;
            }
            int in = 0;
            for (size_t i = 0; i < n; i++)
                in |= mu_pool_get(q, i) == e;
            assert_true(in);
            if (n > 1 && any_free)
                assert_false(holds(avoid, na, e));
            if (n > 1 && any_up) {
                assert_true(e->health.down_until_us <= now);
                if (pol == MU_POLICY_LEAST_PENDING)
                    assert_int_equal(e->pending, minp);
            }
            if (nin < 256) {
                mu_endpoint_pending_add(e, +1);
                inflight[nin++] = e;
            }
        } else {
            size_t r = rand_below(&rng, nin);
            mu_endpoint_pending_add(inflight[r], -1);
            inflight[r] = inflight[--nin];
        }
        for (int i = 0; i < POOLS; i++)
            CHECK(p[i]);
    }
    assert_int_equal(p[0]->lp_on, 0);
    while (nin)
        mu_endpoint_pending_add(inflight[--nin], -1);
    for (int i = 0; i < POOLS; i++) {
        CHECK(p[i]);
        mu_pool_free(p[i]);
    }
    for (size_t i = 0; i < N; i++)
        assert_int_equal(ep[i].pending, 0);
    eps_free(ep, N);
}

/* Few endpoints (deep levels: up to 256 calls in flight over 12) and more
 * (40, wider pools). */
static void test_fuzz(void **state)
{
    (void)state;
    fuzz(12, 7, 40000);
    fuzz(40, 43, 30000);
}

/* Every mu_pool_set allocation failing in turn, for a pool that least-
 * pending uses (a parked member) and one it does not: -1, the pool as it
 * was, nothing leaked (ASan), and the next set works. */
static void test_set_alloc_failures(void **state)
{
    (void)state;
    enum { N = 10 };
    for (int lp = 0; lp < 2; lp++) {
        int done = 0;
        for (long k = 0; !done; k++) {
            mu_endpoint *ep = eps_new(N);
            mu_pool *p = pool_of(ep, 6), *p2 = pool_of(ep, 4);
            uint64_t rng = 5;
            set_down(&ep[1], NOW + 1000);
            mu_endpoint *others[] = {&ep[0], &ep[2], &ep[3], &ep[4], &ep[5]};
            if (lp) /* walks past every other one: parks 1 */
                (void)mu_pool_pick(p, MU_POLICY_LEAST_PENDING, others, 5, NOW, &rng);
            assert_int_equal(p->nheap, (size_t)lp);
            mu_endpoint_pending_add(&ep[2], 3);
            mu_endpoint *v[N - 2];
            for (size_t i = 0; i < N - 2; i++)
                v[i] = &ep[i + 1]; /* 0 leaves, 1..5 stay (1 parked), 6..9 join */
            fail_from(k, 1);
            int rc = mu_pool_set(p, v, N - 2);
            fail_from(-1, 0);
            CHECK(p);
            CHECK(p2);
            assert_int_equal(mu_pool_size(p), rc == 0 ? N - 2 : 6);
            done = rc == 0;
            for (int t = 0; t < 60; t++) {
                mu_endpoint *e = mu_pool_pick(p, (mu_policy)(t % 6), NULL, 0, NOW + t, &rng);
                mu_endpoint_pending_add(e, +1);
                mu_endpoint_pending_add(e, -1);
            }
            CHECK(p);
            mu_endpoint_pending_add(&ep[2], -3);
            mu_pool_free(p);
            mu_pool_free(p2);
            eps_free(ep, N);
        }
    }
}

/* A level array that failed to grow puts higher counts in the top level
 * ("approximate"). But once a later growth succeeds, those nodes stay in
 * the old top level, below endpoints that have less pending: least-pending
 * then prefers an endpoint with 20 in flight to one with 17. (Not from the
 * hot-copies change: level_for was so before.) */
static void test_level_after_failed_growth(void **state)
{
    (void)state;
    uint64_t rng = 3;
    mu_endpoint *ep = eps_new(3);
    mu_pool *p = pool_of(ep, 3);
    (void)mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng); /* lp_on */
    fail_from(0, 1);
    mu_endpoint_pending_add(&ep[0], 20); /* growth fails: the top level, 15 */
    fail_from(-1, 0);
    mu_endpoint_pending_add(&ep[2], 17); /* grows to 32 */
    mu_endpoint_pending_add(&ep[1], 25);
    assert_ptr_equal(mu_pool_pick(p, MU_POLICY_LEAST_PENDING, NULL, 0, NOW, &rng), &ep[2]);
    CHECK(p);
    mu_endpoint_pending_add(&ep[0], -20);
    mu_endpoint_pending_add(&ep[1], -25);
    mu_endpoint_pending_add(&ep[2], -17);
    mu_pool_free(p);
    free(ep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_names),
        cmocka_unit_test(test_empty_and_single),
        cmocka_unit_test(test_rand),
        cmocka_unit_test(test_rr_even_3),
        cmocka_unit_test(test_rr_even_7),
        cmocka_unit_test(test_rr_cursor_survives_set),
        cmocka_unit_test(test_random_uniform),
        cmocka_unit_test(test_lp_min_and_ties),
        cmocka_unit_test(test_lp_rotation_even),
        cmocka_unit_test(test_lp_avoids_loaded),
        cmocka_unit_test(test_lp_deep_levels),
        cmocka_unit_test(test_p2c_never_max),
        cmocka_unit_test(test_ewma),
        cmocka_unit_test(test_ewma_three),
        cmocka_unit_test(test_hash_moves_little),
        cmocka_unit_test(test_p2c_ties_uniform),
        cmocka_unit_test(test_avoid),
        cmocka_unit_test(test_down),
        cmocka_unit_test(test_lp_parking),
        cmocka_unit_test(test_set_diff_with_pending),
        cmocka_unit_test(test_free_with_pending),
        cmocka_unit_test(test_two_pools),
        cmocka_unit_test(test_fuzz),
        cmocka_unit_test(test_set_alloc_failures),
        cmocka_unit_test(test_level_after_failed_growth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
