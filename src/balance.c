#include "config.h"
#include "balance.h"
#include "common.h"

#include <stdlib.h>
#include <string.h>

/*
 * A pool keeps its endpoints twice over:
 *
 *  - arrays (eps/mem/hot), for round-robin, random, p2c, ewma and hash,
 *    which index them; hot[] holds copies of what picks read (see `hot`);
 *  - per pending count ("level"), a circular doubly linked list of member
 *    nodes, plus the lowest non-empty level, for least-pending. The lists
 *    are built at the pool's first least-pending pick and kept from then
 *    on (lp_on), so that pools of other policies do not pay for them in
 *    every pending change. A pick takes
 *    the head of the lowest level and moves it to that level's tail, so
 *    endpoints with equal pending take turns. mu_endpoint_pending_add moves
 *    the endpoint's node in every pool that holds it (e->members), so the
 *    level is the endpoint's total load, whatever method put it there.
 *
 * Down endpoints get no calls, so their pending falls to 0 and they would
 * gather in the lowest level, where least-pending would have to step over
 * all of them on every pick. So when least-pending meets a down endpoint it
 * "parks" it: the node moves to a second set of levels (still kept by
 * pending, for the all-down case) and into a min-heap on the down_until_us
 * it had then. A pick unparks what is due from the top of the heap; an
 * endpoint whose down_until_us is lowered is unparked when health.c says
 * so (mu_endpoint_sync). Parking is least-pending's bookkeeping only; the
 * other policies read the hot copy of down_until_us directly.
 *
 * Exclusion, in order of preference (mu_pool_pick):
 *   1. neither avoided nor down: the policy's choice, a few alternatives,
 *      then a linear scan (only reached when nearly everything is excluded);
 *   2. not avoided, down allowed ("panic"): when every endpoint not yet tried
 *      is down, the marks are likely stale or the whole service is failing;
 *      spreading by policy over them beats hammering the one that failed
 *      this call already. A scan that finds every endpoint down remembers
 *      until when, so that the picks meanwhile skip step 1's O(n) scan;
 *   3. everything was tried by this call: one that is up before one that is
 *      down, then the one tried longest ago (earliest in avoid[]).
 */

struct mu_member {
    /* what every pending_add reads first, in one cache line */
    mu_endpoint *ep;
    mu_pool *pool;
    struct mu_member *enext;         /* the endpoint's node in its next pool */
    size_t idx;                      /* position in eps/mem/hot */
    size_t level;                    /* pending clamped to [0, cap) */
    unsigned char parked;
    unsigned char fresh; /* made by the running mu_pool_set */
    /* least-pending's index */
    struct mu_member *bnext, *bprev; /* circular list of one level */
    uint64_t park_until;             /* parked: down_until_us when parked */
    size_t hidx;                     /* parked: position in the heap */
    uint64_t gen;                    /* mu_pool_set's mark */
};

typedef struct mu_member member;

/* What picks read of an endpoint, copied into a compact array per pool
 * (hot[i] for eps[i]), so that a pick touches 32 bytes per candidate in
 * one array (320 KB at 10,000 endpoints) instead of a cache line of each
 * endpoint, spread over the heap. The endpoint stays the truth:
 * refresh() copies it whenever pending changes (mu_endpoint_pending_add)
 * or health.c changes the rest (mu_endpoint_sync). */
typedef struct hot {
    uint64_t down_until; /* health.down_until_us */
    uint64_t oldest;     /* health.oldest_us */
    uint64_t ewma_at;    /* health.ewma_at_us */
    uint32_t ewma;       /* health.ewma_us, saturated (an hour and more) */
    int32_t pending;     /* pending */
} hot;

typedef struct levels {
    member **head; /* per level: first node, or NULL; p->cap entries */
    size_t min;    /* lowest non-empty level while count > 0 */
    size_t count;
} levels;

struct mu_pool {
    mu_endpoint **eps;
    member **mem;
    hot *hot;      /* picks read these, not the endpoints */
    size_t n;
    size_t rr;     /* round-robin: next index */
    size_t cap;    /* levels in up and parked */
    levels up;     /* not known to be down */
    levels parked; /* found down by least-pending */
    member **heap; /* parked nodes, min-heap on park_until; room for n */
    size_t nheap;
    uint64_t all_down_until; /* every endpoint is down until then (0: unknown) */
    uint64_t slow_us;        /* slow start: slow_start_ms of the pool's service, in us */
    int lp_on;               /* up and parked are kept: least-pending has picked here */
    uint64_t gen;
    struct ring_point *ring; /* hash: ring_vnodes() points per endpoint, sorted */
    size_t nring;
    uint32_t *ring_owner;    /* hash: per slot (top ring_bits bits of a key), its owner in eps */
    unsigned ring_bits;
    uint64_t ring_gen;       /* the gen it was built for (0: never) */
};

enum { INITIAL_LEVELS = 16, RANDOM_TRIES = 8, P2C_DRAWS = 8, LP_BUDGET = 32 };

/* ------------------------------------------------------------------ names */

static const char *const policy_names[] = {"round-robin", "random", "least-pending", "p2c",
                                           "ewma",        "hash"};

int mu_policy_parse(const char *name)
{
    if (!name)
        return -1;
    for (size_t i = 0; i < MU_ARRAY_LEN(policy_names); i++)
        if (strcmp(name, policy_names[i]) == 0)
            return (int)i;
    return -1;
}

const char *mu_policy_name(mu_policy p)
{
    if ((unsigned)p < MU_ARRAY_LEN(policy_names))
        return policy_names[p];
    return "unknown";
}

/* ------------------------------------------------------------------ peers */

void mu_endpoint_peers(const mu_endpoint *e, uint64_t now_us, int max_pct, mu_peers *out)
{
    memset(out, 0, sizeof *out);
    for (const member *m = e->members; m; m = m->enext) {
        const mu_pool *p = m->pool;
        size_t down = 1; /* e itself */
        for (size_t i = 0; i < p->n; i++) {
            const mu_endpoint *o = p->eps[i];
            if (o == e)
                continue;
            if (o->health.down_until_us > now_us)
                down++;
            out->calls += o->health.win_calls;
            out->errors += o->health.win_errors;
        }
        int pct = (int)(down * 100 / p->n);
        if (pct > out->down_pct)
            out->down_pct = pct;
        if (max_pct == 0 || (down > 1 && down * 100 > (size_t)max_pct * p->n))
            out->over_cap = 1;
    }
}

/* ------------------------------------------------------------------ random */

/* Uniform in [0, n) for n < 2^32, by multiply-shift on the high (best)
 * bits: no division on the hot path; the bias is below n / 2^32. */
static inline size_t rand_below(uint64_t *rng, size_t n)
{
    return (size_t)(((mu_rand(rng) >> 32) * (uint64_t)n) >> 32);
}

/* ------------------------------------------------------------------ levels */

static void lv_link(levels *L, member *m, size_t lvl)
{
    member *h = L->head[lvl];
    if (!h) {
        m->bnext = m->bprev = m;
        L->head[lvl] = m;
    } else { /* at the tail: the last to get a turn at this level */
        m->bnext = h;
        m->bprev = h->bprev;
        h->bprev->bnext = m;
        h->bprev = m;
    }
    m->level = lvl;
    if (L->count++ == 0 || lvl < L->min)
        L->min = lvl;
}

/* Leaves min possibly pointing at an emptied level: lv_fixmin after. */
static void lv_unlink(levels *L, member *m)
{
    size_t lvl = m->level;
    if (m->bnext == m) {
        L->head[lvl] = NULL;
    } else {
        m->bprev->bnext = m->bnext;
        m->bnext->bprev = m->bprev;
        if (L->head[lvl] == m)
            L->head[lvl] = m->bnext;
    }
    m->bnext = m->bprev = NULL;
    L->count--;
}

/* Every node sits above an emptied min, so the scan ends; after a move
 * by delta it takes at most delta steps. */
static void lv_fixmin(levels *L)
{
    if (L->count)
        while (!L->head[L->min])
            L->min++;
}

/* Gives m's level its next turn to the others: m goes to the tail. */
static void lv_to_tail(levels *L, member *m)
{
    member *h = L->head[m->level];
    if (h == m) {
        L->head[m->level] = m->bnext;
        return;
    }
    if (h->bprev == m)
        return;
    m->bprev->bnext = m->bnext;
    m->bnext->bprev = m->bprev;
    m->bnext = h;
    m->bprev = h->bprev;
    h->bprev->bnext = m;
    h->bprev = m;
}

/* After the level arrays grew: the nodes that a failed growth left in the
 * old top level (with more pending than it stands for) go to the level of
 * their pending count. O(nodes at that level), once per growth. */
static void relevel_top(mu_pool *p, levels *L, size_t top)
{
    member *m = L->head[top];
    size_t k = 0;
    for (member *o = m; o && (k == 0 || o != m); o = o->bnext)
        k++;
    while (k--) {
        member *next = m->bnext;
        size_t want = m->ep->pending > 0 ? (size_t)m->ep->pending : 0;
        want = want < p->cap ? want : p->cap - 1;
        if (want != top) {
            lv_unlink(L, m);
            lv_link(L, m, want);
        }
        m = next;
    }
    lv_fixmin(L);
}

/* The level for a pending count, growing both level sets if needed (rare,
 * amortised). If that fails, counts at the top share the top level: their
 * order among themselves is then only approximate, until a growth that
 * succeeds puts them back in order (relevel_top). */
static size_t level_for(mu_pool *p, int pending)
{
    size_t want = pending > 0 ? (size_t)pending : 0;
    if (want < p->cap)
        return want;
    size_t ncap = p->cap * 2;
    while (ncap <= want)
        ncap *= 2;
    member **a = realloc(p->up.head, ncap * sizeof *a);
    if (!a)
        return p->cap - 1;
    p->up.head = a;
    member **b = realloc(p->parked.head, ncap * sizeof *b);
    if (!b)
        return p->cap - 1; /* up.head is merely larger than needed */
    p->parked.head = b;
    memset(a + p->cap, 0, (ncap - p->cap) * sizeof *a);
    memset(b + p->cap, 0, (ncap - p->cap) * sizeof *b);
    size_t top = p->cap - 1;
    p->cap = ncap;
    relevel_top(p, &p->up, top);
    relevel_top(p, &p->parked, top);
    return want;
}

/* -------------------------------------------------------------------- heap */

static void heap_set(mu_pool *p, size_t i, member *m)
{
    p->heap[i] = m;
    m->hidx = i;
}

static void heap_up(mu_pool *p, size_t i)
{
    member *m = p->heap[i];
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (p->heap[up]->park_until <= m->park_until)
            break;
        heap_set(p, i, p->heap[up]);
        i = up;
    }
    heap_set(p, i, m);
}

static void heap_down(mu_pool *p, size_t i)
{
    member *m = p->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= p->nheap)
            break;
        if (c + 1 < p->nheap && p->heap[c + 1]->park_until < p->heap[c]->park_until)
            c++;
        if (m->park_until <= p->heap[c]->park_until)
            break;
        heap_set(p, i, p->heap[c]);
        i = c;
    }
    heap_set(p, i, m);
}

static void heap_push(mu_pool *p, member *m)
{
    heap_set(p, p->nheap++, m);
    heap_up(p, m->hidx);
}

static void heap_remove(mu_pool *p, member *m)
{
    size_t i = m->hidx;
    member *last = p->heap[--p->nheap];
    if (last == m)
        return;
    heap_set(p, i, last);
    heap_up(p, i);
    heap_down(p, last->hidx);
}

/* ----------------------------------------------------------------- parking */

static void park(mu_pool *p, member *m)
{
    lv_unlink(&p->up, m);
    lv_fixmin(&p->up);
    m->parked = 1;
    m->park_until = p->hot[m->idx].down_until;
    lv_link(&p->parked, m, m->level);
    heap_push(p, m);
}

static void unpark(mu_pool *p, member *m)
{
    heap_remove(p, m);
    lv_unlink(&p->parked, m);
    lv_fixmin(&p->parked);
    m->parked = 0;
    lv_link(&p->up, m, m->level);
}

/* Amortised O(1): each parking is undone once (or re-armed once per
 * extension of its down time). */
static void unpark_due(mu_pool *p, uint64_t now)
{
    while (p->nheap && p->heap[0]->park_until <= now) {
        member *m = p->heap[0];
        uint64_t down = p->hot[m->idx].down_until;
        if (down > now) { /* extended meanwhile */
            m->park_until = down;
            heap_down(p, 0);
        } else {
            unpark(p, m);
        }
    }
}

/* ------------------------------------------------------------ pending */

static void hot_fill(hot *h, const mu_endpoint *e)
{
    h->down_until = e->health.down_until_us;
    h->oldest = e->health.oldest_us;
    h->ewma_at = e->health.ewma_at_us;
    h->ewma = e->health.ewma_us > UINT32_MAX ? UINT32_MAX : (uint32_t)e->health.ewma_us;
    h->pending = e->pending;
}

/* m's pool sees its endpoint as it is now. */
static void refresh(member *m)
{
    mu_pool *p = m->pool;
    mu_endpoint *e = m->ep;
    hot_fill(&p->hot[m->idx], e);
    if (e->health.down_until_us < p->all_down_until)
        p->all_down_until = 0; /* it came back early */
    if (m->parked && e->health.down_until_us < m->park_until)
        unpark(p, m); /* re-parked at the next pick if still down */
}

void mu_endpoint_sync(mu_endpoint *e)
{
    for (member *m = e ? e->members : NULL; m; m = m->enext)
        refresh(m);
}

void mu_endpoint_pending_add(mu_endpoint *e, int delta)
{
    if (!e || delta == 0)
        return;
    e->pending += delta;
    for (member *m = e->members; m; m = m->enext) {
        mu_pool *p = m->pool;
        refresh(m);
        if (!p->lp_on)
            continue;
        size_t lvl = level_for(p, e->pending);
        if (lvl == m->level)
            continue;
        levels *L = m->parked ? &p->parked : &p->up;
        lv_unlink(L, m);
        lv_link(L, m, lvl);
        lv_fixmin(L);
    }
}

/* -------------------------------------------------------------- pool */

mu_pool *mu_pool_new(void)
{
    mu_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->cap = INITIAL_LEVELS;
    p->up.head = calloc(p->cap, sizeof *p->up.head);
    p->parked.head = calloc(p->cap, sizeof *p->parked.head);
    if (!p->up.head || !p->parked.head) {
        free(p->up.head);
        free(p->parked.head);
        free(p);
        return NULL;
    }
    return p;
}

static void endpoint_unlink(member *m)
{
    member **pp = &m->ep->members;
    while (*pp != m)
        pp = &(*pp)->enext;
    *pp = m->enext;
}

void mu_pool_free(mu_pool *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        endpoint_unlink(p->mem[i]);
        free(p->mem[i]);
    }
    free(p->eps);
    free(p->mem);
    free(p->hot);
    free(p->heap);
    free(p->up.head);
    free(p->parked.head);
    free(p->ring);
    free(p->ring_owner);
    free(p);
}

static member *find_member(mu_endpoint *e, const mu_pool *p)
{
    for (member *m = e->members; m; m = m->enext)
        if (m->pool == p)
            return m;
    return NULL;
}

/* What mu_pool_set builds; it replaces the pool's arrays at the commit. */
typedef struct pool_next {
    mu_endpoint **eps;
    member **mem;  /* until the commit, the new members in mem[0..nnew) */
    member **heap; /* room for n, as the pool's heap needs */
    hot *hot;
    size_t nnew;
    uint64_t gen; /* the mark of the members kept or made */
} pool_next;

/* Allocate: the arrays for n endpoints (none for n == 0). On failure,
 * set_undo frees those that were got. */
static int set_alloc(pool_next *x, size_t n)
{
    if (n) {
        x->eps = malloc(n * sizeof *x->eps);
        x->mem = malloc(n * sizeof *x->mem);
        x->heap = malloc(n * sizeof *x->heap);
        x->hot = malloc(n * sizeof *x->hot);
        if (!x->eps || !x->mem || !x->heap || !x->hot)
            return -1;
    }
    return 0;
}

/* Diff: mark the kept, make the new (linked to their endpoint at once, so a
 * duplicate in eps is seen as one). */
static int set_diff(mu_pool *p, pool_next *x, mu_endpoint *const *eps, size_t n)
{
    x->gen = ++p->gen;
    for (size_t i = 0; i < n; i++) {
        mu_endpoint *e = eps[i];
        member *m = find_member(e, p);
        if (m) {
            m->gen = x->gen;
            continue;
        }
        m = calloc(1, sizeof *m);
        if (!m)
            return -1;
        m->ep = e;
        m->pool = p;
        m->gen = x->gen;
        m->fresh = 1;
        m->enext = e->members;
        e->members = m;
        x->mem[x->nnew++] = m; /* mem's tail is free until the commit */
    }
    return 0;
}

/* A member that the new set no longer has, out of the pool's lists. */
static void set_drop(mu_pool *p, member *m)
{
    if (!p->lp_on) {
        /* in no list */
    } else if (m->parked) {
        heap_remove(p, m);
        lv_unlink(&p->parked, m);
        lv_fixmin(&p->parked);
    } else {
        lv_unlink(&p->up, m);
        lv_fixmin(&p->up);
    }
    endpoint_unlink(m);
    free(m);
}

/* Apply (commit). Kept ones keep their order, then the new ones in eps
 * order. The round-robin cursor goes to the first kept one at or after it,
 * or else to the first new one (where the removed tail was), or else wraps. */
static void set_apply(mu_pool *p, pool_next *x)
{
    member **nmem = x->mem;
    size_t nnew = x->nnew;
    size_t kept = 0;
    for (size_t i = 0; i < p->n; i++)
        if (p->mem[i]->gen == x->gen)
            kept++;
    /* Move the new ones (in nmem[0..nnew)) behind the kept ones. */
    if (nnew)
        memmove(nmem + kept, nmem, nnew * sizeof *nmem);
    size_t k = 0, newrr = SIZE_MAX;
    for (size_t i = 0; i < p->n; i++) {
        member *m = p->mem[i];
        if (m->gen != x->gen) { /* removed */
            set_drop(p, m);
            continue;
        }
        if (i >= p->rr && newrr == SIZE_MAX)
            newrr = k;
        m->idx = k;
        nmem[k] = m;
        hot_fill(&x->hot[k], m->ep);
        x->eps[k++] = m->ep;
    }
    for (size_t i = 0; i < nnew; i++) {
        member *m = nmem[kept + i];
        m->fresh = 0;
        m->idx = k;
        hot_fill(&x->hot[k], m->ep);
        x->eps[k++] = m->ep;
        if (p->lp_on)
            lv_link(&p->up, m, level_for(p, m->ep->pending));
    }
    /* heap: the parked kept ones, in their heap order. */
    if (p->nheap)
        memcpy(x->heap, p->heap, p->nheap * sizeof *x->heap);
    free(p->eps);
    free(p->mem);
    free(p->heap);
    free(p->hot);
    p->eps = x->eps;
    p->mem = nmem;
    p->heap = x->heap;
    p->hot = x->hot;
    p->rr = newrr == SIZE_MAX ? kept : newrr; /* the first new one, or n: wraps */
    p->n = k;
    p->all_down_until = 0;
}

/* After a failed allocation: undo the new members; nothing else changed. */
static void set_undo(mu_pool *p, pool_next *x, mu_endpoint *const *eps, size_t n)
{
    for (size_t i = 0; i < n && x->mem; i++) {
        member *m = find_member(eps[i], p);
        if (m && m->fresh) {
            endpoint_unlink(m);
            free(m);
        }
    }
    free(x->eps);
    free(x->mem);
    free(x->heap);
    free(x->hot);
}

/* Whatever can fail (the arrays, the new members) comes before the commit,
 * which cannot. */
int mu_pool_set(mu_pool *p, mu_endpoint *const *eps, size_t n)
{
    pool_next x = {NULL, NULL, NULL, NULL, 0, 0};
    if (set_alloc(&x, n) != 0 || set_diff(p, &x, eps, n) != 0) {
        set_undo(p, &x, eps, n);
        return -1;
    }
    set_apply(p, &x);
    return 0;
}

size_t mu_pool_size(const mu_pool *p)
{
    return p ? p->n : 0;
}

mu_endpoint *mu_pool_get(const mu_pool *p, size_t i)
{
    return p && i < p->n ? p->eps[i] : NULL;
}

/* -------------------------------------------------------------- picking */

typedef struct pick_ctx {
    const mu_pool *p;
    mu_endpoint *const *avoid;
    size_t navoid;
    uint64_t now;
    uint64_t *rng;
    int excl_down; /* step 1 of the preference order */
    const uint64_t *key; /* hash: the call's key, or NULL for a random one */
    uint64_t slow_us;    /* slow start in force (0 in the fallback steps) */
} pick_ctx;

/* Slow start (Envoy's, Dubbo's warm-up): an endpoint that joined a loaded
 * group, or came back from ejection, less than slow_us ago is passed over
 * at random, so that its share of the picks ramps up linearly from 10% to
 * all of it. Returns 1 to pass over e this time. */
static int warming(const pick_ctx *c, size_t i)
{
    /* joined_us is read from the endpoint: only while slow start is on */
    uint64_t joined = c->p->eps[i]->joined_us, down = c->p->hot[i].down_until;
    uint64_t from = joined > down ? joined : down;
    if (!from || c->now >= from + c->slow_us || c->now < from)
        return 0;
    uint64_t share = (c->now - from) * 1024 / c->slow_us; /* of 1024 */
    if (share < 102)
        share = 102;
    return (mu_rand(c->rng) & 1023) >= share;
}

static int is_avoided(const pick_ctx *c, const mu_endpoint *e)
{
    for (size_t i = 0; i < c->navoid; i++)
        if (c->avoid[i] == e)
            return 1;
    return 0;
}

/* eps[i] may be picked at this step. */
static inline int eligible(const pick_ctx *c, size_t i)
{
    if (c->excl_down && c->p->hot[i].down_until > c->now)
        return 0;
    if (c->slow_us && warming(c, i))
        return 0;
    return !c->navoid || !is_avoided(c, c->p->eps[i]);
}

enum { SCAN_UNIFORM, SCAN_MIN_PENDING };

/* The fallback: every eligible endpoint, uniformly, or the least pending
 * with ties broken at random (reservoir sampling: one pass, no memory). */
static mu_endpoint *scan(mu_pool *p, const pick_ctx *c, int mode)
{
    size_t ties = 0, best = SIZE_MAX;
    for (size_t i = 0; i < p->n; i++) {
        if (!eligible(c, i))
            continue;
        if (mode == SCAN_MIN_PENDING && best != SIZE_MAX &&
            p->hot[i].pending != p->hot[best].pending) {
            if (p->hot[i].pending > p->hot[best].pending)
                continue;
            ties = 0;
        }
        if (++ties == 1 || rand_below(c->rng, ties) == 0)
            best = i;
    }
    return best == SIZE_MAX ? NULL : p->eps[best];
}

/* After step 1 found nothing: if no endpoint at all is up (avoided or not),
 * remember until when, so that the next picks go straight to step 2. */
static void note_all_down(mu_pool *p, uint64_t now)
{
    uint64_t until = UINT64_MAX;
    for (size_t i = 0; i < p->n; i++) {
        uint64_t d = p->hot[i].down_until;
        if (d <= now)
            return;
        if (d < until)
            until = d;
    }
    p->all_down_until = until;
}

static mu_endpoint *pick_rr(mu_pool *p, const pick_ctx *c)
{
    size_t n = p->n, i = p->rr < n ? p->rr : 0;
    /* Skipping is amortised: the cursor passes each excluded endpoint once
     * per cycle. */
    for (size_t k = 0; k < n; k++) {
        size_t at = i;
        if (++i == n)
            i = 0;
        if (eligible(c, at)) {
            p->rr = i;
            return p->eps[at];
        }
    }
    return NULL;
}

static mu_endpoint *pick_random(mu_pool *p, const pick_ctx *c)
{
    for (int t = 0; t < RANDOM_TRIES; t++) {
        size_t i = rand_below(c->rng, p->n);
        if (eligible(c, i))
            return p->eps[i];
    }
    return scan(p, c, SCAN_UNIFORM);
}

static mu_endpoint *pick_p2c(mu_pool *p, const pick_ctx *c)
{
    size_t n = p->n, ia = SIZE_MAX;
    for (int t = 0; t < P2C_DRAWS; t++) {
        size_t i;
        if (ia == SIZE_MAX) {
            i = rand_below(c->rng, n);
        } else { /* distinct from the first */
            i = rand_below(c->rng, n - 1);
            if (i >= ia)
                i++;
        }
        if (!eligible(c, i))
            continue;
        if (ia == SIZE_MAX) {
            ia = i;
            continue;
        }
        int32_t pa = p->hot[ia].pending, pi = p->hot[i].pending;
        if (pa != pi)
            return p->eps[pa < pi ? ia : i];
        return p->eps[(mu_rand(c->rng) >> 63) ? ia : i];
    }
    if (ia != SIZE_MAX) /* only one eligible seen: nearly all excluded */
        return p->eps[ia];
    return scan(p, c, SCAN_MIN_PENDING);
}

/* ewma: three distinct eligible endpoints at random (two if there are
 * two), the cheapest wins: P2C over peak EWMA as in Finagle and Linkerd,
 * with a third choice because microutil fleets are small: with 2 bad
 * providers of 6, a pair is both bad 1 time in 15, and the cheaper bad one
 * then wins (bench: over 1% of calls to a 20 ms provider), where a triple
 * is never all bad. An endpoint with no latency sample yet is costed like
 * the fastest of the others drawn, so a new one is neither flooded
 * (pending weighs in) nor starved. The cost is mu_health_latency() x
 * (pending + 1), from the pool's hot copies.
 *
 * A pick is written to run without unpredictable branches where it can
 * (cachegrind's branch model counted over four mispredictions a pick
 * before): three distinct indices by arithmetic, and the cheapest of three
 * by comparisons the compiler turns into conditional moves, ties broken by
 * random low bits. */
enum { EWMA_CHOICES = 3 };

/* Up to EWMA_CHOICES distinct eligible indices at random into idx; how
 * many. The general case: few endpoints, or some excluded. */
static size_t ewma_draw(mu_pool *p, const pick_ctx *c, size_t *idx)
{
    size_t n = p->n, k = 0, want = n < EWMA_CHOICES ? n : EWMA_CHOICES;
    for (int t = 0; t < 2 * P2C_DRAWS && k < want; t++) {
        size_t i = rand_below(c->rng, n), j = 0;
        while (j < k && idx[j] != i)
            j++;
        if (j < k || !eligible(c, i))
            continue;
        idx[k++] = i;
    }
    return k;
}

/* A cost as a sort key: lat x (pending + 1), then 8 random bits, so that
 * ties go either way. */
static inline uint64_t ewma_sort_key(uint64_t lat, int32_t pending, uint64_t bits)
{
    uint64_t cost = lat * (uint64_t)(pending + 1);
    cost = cost < (1ull << 55) ? cost : (1ull << 55);
    return cost << 8 | (bits & 255);
}

/* The cheapest of idx[0..k), with new endpoints costed as neutral. */
static size_t ewma_cheapest(const mu_pool *p, const pick_ctx *c, const size_t *idx, size_t k)
{
    uint64_t lat[EWMA_CHOICES], neutral = UINT64_MAX;
    for (size_t j = 0; j < k; j++) {
        const hot *h = &p->hot[idx[j]];
        lat[j] = mu_health_latency(h->ewma, h->ewma_at, h->oldest, c->now, 0);
        if (h->ewma && lat[j] < neutral)
            neutral = lat[j];
    }
    neutral = neutral == UINT64_MAX ? 0 : neutral;
    uint64_t r = mu_rand(c->rng), best_key = UINT64_MAX;
    size_t best = idx[0];
    for (size_t j = 0; j < k; j++) {
        const hot *h = &p->hot[idx[j]];
        if (!h->ewma)
            lat[j] = mu_health_latency(0, 0, h->oldest, c->now, neutral);
        uint64_t key = ewma_sort_key(lat[j], h->pending, r >> (8 * j));
        if (key < best_key)
            best = idx[j], best_key = key;
    }
    return best;
}

/* A sampled endpoint's sort key. */
static inline uint64_t ewma_key(const hot *h, uint64_t now, uint64_t bits)
{
    return ewma_sort_key(mu_health_latency(h->ewma, h->ewma_at, h->oldest, now, 0), h->pending,
                         bits);
}

static mu_endpoint *pick_ewma(mu_pool *p, const pick_ctx *c)
{
    size_t n = p->n, idx[EWMA_CHOICES];
    if (n >= EWMA_CHOICES) { /* the usual case: three distinct by arithmetic */
        uint64_t r = mu_rand(c->rng), q = mu_rand(c->rng); /* 32 bits a draw */
        size_t a = (size_t)(((r >> 32) * n) >> 32), b = (size_t)(((r & 0xffffffffu) * (n - 1)) >> 32);
        size_t x = (size_t)(((q >> 32) * (n - 2)) >> 32);
        b += b >= a;
        size_t lo = a < b ? a : b, hi = a < b ? b : a;
        x += x >= lo;
        x += x >= hi;
        const hot *ha = &p->hot[a], *hb = &p->hot[b], *hx = &p->hot[x];
        if (eligible(c, a) && eligible(c, b) && eligible(c, x)) {
            if (ha->ewma && hb->ewma && hx->ewma) { /* all sampled: straight-line */
                uint64_t ka = ewma_key(ha, c->now, q), kb = ewma_key(hb, c->now, q >> 8);
                uint64_t kx = ewma_key(hx, c->now, q >> 16);
                return p->eps[ka <= kb ? (ka <= kx ? a : x) : (kb <= kx ? b : x)];
            }
            idx[0] = a, idx[1] = b, idx[2] = x;
            return p->eps[ewma_cheapest(p, c, idx, EWMA_CHOICES)];
        }
    }
    size_t k = ewma_draw(p, c, idx);
    if (k == 0)
        return scan(p, c, SCAN_MIN_PENDING);
    return p->eps[ewma_cheapest(p, c, idx, k)];
}

/* hash: a ring of ring_vnodes() points per endpoint, placed by a hash of
 * its key ("host:port"), so that every client builds the same ring from the
 * same endpoints. The key space is cut into slots by its top ring_bits bits,
 * at least one slot per point; a slot belongs to the first point at or
 * after the slot's start, and so does every key in it. A pick is then one
 * read of the slot table (4 bytes a slot) instead of a search of the ring:
 * at 10,000 endpoints the search cost three cache misses, 450 to 700 ns a
 * pick. Removing an endpoint moves only the slots it owned (about 1/n), as
 * on the ring itself. Rebuilt when the pool's members change: O(n log n). */
enum { RING_VNODES = 64, RING_POINTS_MAX = 20000, RING_VNODES_MIN = 8 };

/* Points per endpoint: 64 for the fleets microutil runs (2 to 50), fewer
 * beyond 312 endpoints so that the tables stay near 20,000 points (up to
 * 2,500 endpoints, where the floor of 8 each is reached). */
static size_t ring_vnodes(size_t n)
{
    size_t v = RING_POINTS_MAX / (n ? n : 1);
    return v > RING_VNODES ? RING_VNODES : v < RING_VNODES_MIN ? RING_VNODES_MIN : v;
}

typedef struct ring_point {
    uint64_t at;
    size_t idx; /* in p->eps */
} ring_point;

static uint64_t mix64(uint64_t x) /* splitmix64's finalizer */
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t mu_hash_key(const char *key)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then mixed */
    for (const unsigned char *s = (const unsigned char *)key; *s; s++)
        h = (h ^ *s) * 0x100000001b3ull;
    return mix64(h);
}

static int cmp_point(const void *a, const void *b)
{
    uint64_t x = ((const ring_point *)a)->at, y = ((const ring_point *)b)->at;
    return x < y ? -1 : x > y;
}

static int ring_build(mu_pool *p)
{
    size_t vnodes = ring_vnodes(p->n);
    ring_point *r = realloc(p->ring, p->n * vnodes * sizeof *r);
    if (!r)
        return -1;
    p->ring = r;
    p->nring = 0;
    for (size_t i = 0; i < p->n; i++) {
        uint64_t h = mu_hash_key(p->eps[i]->key);
        for (uint64_t v = 0; v < vnodes; v++)
            r[p->nring++] = (ring_point){mix64(h + v * 0x9e3779b97f4a7c15ull), i};
    }
    qsort(r, p->nring, sizeof *r, cmp_point);
    unsigned bits = 4;
    while (bits < 22 && ((size_t)1 << bits) < p->nring)
        bits++;
    uint32_t *own = realloc(p->ring_owner, ((size_t)1 << bits) * sizeof *own);
    if (!own)
        return -1;
    p->ring_owner = own;
    p->ring_bits = bits;
    size_t pos = 0;
    for (size_t b = 0; b < ((size_t)1 << bits); b++) {
        uint64_t start = (uint64_t)b << (64 - bits);
        while (pos < p->nring && r[pos].at < start)
            pos++;
        own[b] = (uint32_t)r[pos < p->nring ? pos : 0].idx; /* past the last: wraps */
    }
    p->ring_gen = p->gen;
    return 0;
}

/* The owner of key's slot if eligible, else the next eligible endpoint
 * along the ring after the slot's start (the rare path: a binary search). */
static mu_endpoint *pick_ring(mu_pool *p, const pick_ctx *c, uint64_t key)
{
    if (p->ring_gen != p->gen && ring_build(p) != 0)
        return pick_ewma(p, c);
    uint64_t slot = key >> (64 - p->ring_bits);
    size_t own = p->ring_owner[slot];
    if (eligible(c, own))
        return p->eps[own];
    uint64_t start = slot << (64 - p->ring_bits);
    size_t lo = 0, hi = p->nring;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->ring[mid].at < start)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t k = 0; k < p->nring; k++) {
        size_t i = p->ring[(lo + k) % p->nring].idx;
        if (eligible(c, i))
            return p->eps[i];
    }
    return NULL;
}

/* Least pending among the endpoints not known to be down: walk up from
 * the lowest level, parking the down ones met. Avoided nodes are skipped;
 * once a level has shown more of them than navoid it has been walked round
 * (eligible nodes return, down ones leave), so only avoided ones remain. */
static mu_endpoint *pick_lp_up(mu_pool *p, const pick_ctx *c)
{
    levels *L = &p->up;
    unpark_due(p, c->now);
    int budget = LP_BUDGET;
    size_t lvl = L->min;
    while (L->count && lvl < p->cap && budget > 0) {
        member *m = L->head[lvl];
        size_t skips = 0;
        while (m && budget-- > 0) {
            mu_endpoint *e = m->ep;
            if (c->navoid && is_avoided(c, e)) {
                if (++skips > c->navoid)
                    break;
                m = m->bnext;
            } else if (p->hot[m->idx].down_until > c->now) {
                member *next = m->bnext == m ? NULL : m->bnext;
                park(p, m);
                m = next;
            } else if (c->slow_us && warming(c, m->idx)) {
                m = m->bnext;
            } else {
                lv_to_tail(L, m);
                return e;
            }
        }
        for (lvl++; lvl < p->cap && !L->head[lvl] && budget > 0; lvl++)
            budget--;
    }
    return scan(p, c, SCAN_MIN_PENDING);
}

/* The first least-pending pick of the pool: from now on, the level lists
 * are kept. Until then no pending change pays for them (at 10,000
 * endpoints, with the layout of mu_member and mu_endpoint: a call's two
 * pending changes went from 269 to 152 instructions and from 10.6 to 5.7
 * misses in callgrind's cache model). */
static void lp_start(mu_pool *p)
{
    for (size_t i = 0; i < p->n; i++)
        lv_link(&p->up, p->mem[i], level_for(p, p->eps[i]->pending));
    p->lp_on = 1;
}

/* Step 2 for least-pending: down allowed, so both level sets, merged by
 * level; nothing is parked or unparked. */
static mu_endpoint *pick_lp_all(mu_pool *p, const pick_ctx *c)
{
    levels *sets[2] = {&p->up, &p->parked};
    int budget = LP_BUDGET;
    size_t lvl = SIZE_MAX;
    for (int s = 0; s < 2; s++)
        if (sets[s]->count && sets[s]->min < lvl)
            lvl = sets[s]->min;
    for (; lvl < p->cap && budget > 0; lvl++) {
        for (int s = 0; s < 2 && budget > 0; s++) {
            member *h = sets[s]->head[lvl], *m = h;
            if (!m)
                continue;
            do {
                if (!c->navoid || !is_avoided(c, m->ep)) {
                    lv_to_tail(sets[s], m);
                    return m->ep;
                }
                m = m->bnext;
            } while (m != h && --budget > 0);
        }
        budget--;
    }
    return scan(p, c, SCAN_MIN_PENDING);
}

static inline mu_endpoint *pick_step(mu_pool *p, mu_policy policy, const pick_ctx *c)
{
    switch (policy) {
    case MU_POLICY_RANDOM:
        return pick_random(p, c);
    case MU_POLICY_LEAST_PENDING:
        if (!p->lp_on)
            lp_start(p);
        return c->excl_down ? pick_lp_up(p, c) : pick_lp_all(p, c);
    case MU_POLICY_P2C:
        return pick_p2c(p, c);
    case MU_POLICY_EWMA:
        return pick_ewma(p, c);
    case MU_POLICY_HASH:
        return pick_ring(p, c, c->key ? *c->key : mu_rand(c->rng));
    case MU_POLICY_ROUND_ROBIN:
    default:
        return pick_rr(p, c);
    }
}

/* Step 3: everything was tried by this call. */
static mu_endpoint *pick_tried(mu_pool *p, const pick_ctx *c)
{
    mu_endpoint *best = NULL;
    size_t best_rank = SIZE_MAX;
    for (size_t i = 0; i < p->n; i++) {
        mu_endpoint *e = p->eps[i];
        size_t pos = 0;
        while (pos < c->navoid && c->avoid[pos] != e)
            pos++;
        size_t rank = (p->hot[i].down_until > c->now ? c->navoid + 1 : 0) + pos;
        if (rank < best_rank) {
            best_rank = rank;
            best = e;
        }
    }
    return best;
}

static inline mu_endpoint *pick(mu_pool *p, mu_policy policy, const uint64_t *key,
                         mu_endpoint *const *avoid, size_t navoid, uint64_t now_us, uint64_t *rng)
{
    if (!p || !p->n)
        return NULL;
    if (p->n == 1)
        return p->eps[0];
    pick_ctx c = {p, avoid, avoid ? navoid : 0, now_us, rng, 1, key, p->slow_us};
    mu_endpoint *e = NULL;
    if (now_us >= p->all_down_until) {
        e = pick_step(p, policy, &c);
        if (!e)
            note_all_down(p, now_us);
    }
    if (!e) {
        c.excl_down = 0;
        c.slow_us = 0;
        e = pick_step(p, policy, &c);
    }
    if (!e)
        e = pick_tried(p, &c);
    return e;
}

void mu_pool_set_slow_start(mu_pool *p, uint64_t us)
{
    if (p)
        p->slow_us = us;
}

mu_endpoint *mu_pool_pick(mu_pool *p, mu_policy policy, mu_endpoint *const *avoid, size_t navoid,
                          uint64_t now_us, uint64_t *rng)
{
    return pick(p, policy, NULL, avoid, navoid, now_us, rng);
}

mu_endpoint *mu_pool_pick_hash(mu_pool *p, uint64_t key, mu_endpoint *const *avoid, size_t navoid,
                               uint64_t now_us, uint64_t *rng)
{
    return pick(p, MU_POLICY_HASH, &key, avoid, navoid, now_us, rng);
}
