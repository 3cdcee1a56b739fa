/*
 * balance: picking an endpoint for a call. A pool is one method's set of
 * endpoints plus the per-policy state. Every pick is O(1) (least-pending
 * keeps endpoints in buckets by pending count), independent of pool size.
 *
 * Ownership:
 *   mu_pool    private to balance.c; owned by the view's group (view.c makes
 *              it and frees it); only balance.c touches its fields.
 *   mu_member  private to balance.c; one per endpoint per pool, listed on
 *              the endpoint's `members`; made and freed by balance.c.
 *   hot copies  private to balance.c: per pool, an array of what picks
 *              read of each endpoint (pending and four health fields),
 *              so that a pick stays in cache at 10,000 endpoints. Kept in
 *              step by mu_endpoint_pending_add and mu_endpoint_sync.
 * balance.c also writes the endpoint's `pending` (only through
 * mu_endpoint_pending_add). Picks read the hot copies, never the endpoint,
 * except joined_us while slow start is on.
 */
#ifndef MU_BALANCE_H
#define MU_BALANCE_H

#include <stddef.h>
#include <stdint.h>
#include "endpoint.h"

typedef enum mu_policy {
    MU_POLICY_ROUND_ROBIN = 0,
    MU_POLICY_RANDOM = 1,
    MU_POLICY_LEAST_PENDING = 2,
    MU_POLICY_P2C = 3, /* power of two choices on pending */
    MU_POLICY_EWMA = 4, /* three choices on latency x (pending + 1) */
    MU_POLICY_HASH = 5, /* consistent hashing on the call's hash_key */
} mu_policy;

/* Parses "round-robin", "random", "least-pending", "p2c". -1 if unknown. */
int mu_policy_parse(const char *name);
const char *mu_policy_name(mu_policy p);

typedef struct mu_pool mu_pool;

mu_pool *mu_pool_new(void);
/* Removes its index nodes from every endpoint; endpoints are not freed. */
void mu_pool_free(mu_pool *p);
/* Makes the pool hold exactly eps[0..n) (no duplicates). Endpoints kept
 * keep their position and counters. Returns 0, or -1 on allocation failure
 * (the pool is then unchanged). */
int mu_pool_set(mu_pool *p, mu_endpoint *const *eps, size_t n);
size_t mu_pool_size(const mu_pool *p);
mu_endpoint *mu_pool_get(const mu_pool *p, size_t i);

/* Slow start for the pool's picks: see balance.c's warming(). 0: off. */
void mu_pool_set_slow_start(mu_pool *p, uint64_t us);

/* Picks an endpoint by policy. Endpoints in avoid[0..navoid) (already tried
 * by this call) and endpoints that are down at now_us are skipped while any
 * other endpoint is available; if all are avoided or down, one of them is
 * returned anyway (a down endpoint is better than no attempt). NULL only
 * when the pool is empty. rng is the caller's xorshift state (non-zero). */
mu_endpoint *mu_pool_pick(mu_pool *p, mu_policy policy, mu_endpoint *const *avoid, size_t navoid,
                          uint64_t now_us, uint64_t *rng);

/* The hash policy: the endpoint that owns key (mu_hash_key) on the pool's
 * consistent-hash ring, or the next one along the ring while it is down or
 * avoided. Removing one endpoint of n moves only the keys it owned (about
 * 1/n); an ejected endpoint's keys go to their next choice and come back
 * when it is up. mu_pool_pick with MU_POLICY_HASH hashes a random key.
 * Falls back to ewma if the ring cannot be built (out of memory). */
mu_endpoint *mu_pool_pick_hash(mu_pool *p, uint64_t key, mu_endpoint *const *avoid, size_t navoid,
                               uint64_t now_us, uint64_t *rng);
/* The 64-bit hash of a call's hash_key. */
uint64_t mu_hash_key(const char *key);

/* Changes e->pending by delta (+1 when an attempt starts, -1 when it ends)
 * and updates the least-pending index of every pool holding e. */
void mu_endpoint_pending_add(mu_endpoint *e, int delta);

/* health.c calls this whenever it changes what picks read of e:
 * health.down_until_us, ewma_us, ewma_at_us or oldest_us. Every pool that
 * holds e copies them (and pending); an ejection that ended early is seen
 * at once. O(pools holding e). */
void mu_endpoint_sync(mu_endpoint *e);

/* What health.c needs to know of an endpoint's peers (the other endpoints
 * of every pool that holds it) before it ejects it. O(pool sizes): for
 * ejection decisions only, never per pick. */
typedef struct mu_peers {
    int over_cap;   /* in some pool of e, ejecting e too would leave more than max_pct % of
                     * its endpoints down (being the first one down there is always allowed,
                     * unless max_pct is 0: ejection off) */
    int down_pct;   /* the highest such share, e included */
    uint64_t calls, errors; /* the peers' recent attempts and errors (health windows) */
} mu_peers;
void mu_endpoint_peers(const mu_endpoint *e, uint64_t now_us, int max_pct, mu_peers *out);


#endif
