/*
 * One provider endpoint (host:port), shared by every method view that
 * lists it, so that its load and health are seen across methods. Owned by
 * the view's endpoint table; balance keeps its own index nodes in it.
 */
#ifndef MU_ENDPOINT_H
#define MU_ENDPOINT_H

#include <stdint.h>

struct mu_member;

typedef struct mu_endpoint {
    char key[72];        /* "host:port", the identity */
    char host[64];
    int port;
    char *url;           /* "http://host:port/json/", built by the view */
    unsigned refs;       /* references from method views (view-owned) */
    int pending;         /* calls in flight; change only via mu_endpoint_pending_add() */
    uint64_t calls;      /* attempts sent */
    uint64_t failures;   /* attempts that failed at the transport level */
    unsigned fail_streak;    /* consecutive transport failures */
    uint64_t down_until_us;  /* not picked before this (mu_now_us clock) while others are up */
    struct mu_member *members; /* balance.c: one node per pool that holds this endpoint */
    int active;          /* attempts handed to the transport (call.c) */
    struct mu_call_handle *queue_head, *queue_tail; /* attempts waiting for a connection (call.c) */
    struct mu_call_handle *run_head, *run_tail;     /* attempts handed to curl, oldest first (call.c) */
    uint64_t done_seq;   /* attempts ended on it (call.c) */
    uint64_t reuse_ok;   /* answers that came over a reused connection (call.c) */
    int no_reuse;        /* it does not keep connections usable: one per call (call.c) */
} mu_endpoint;

#endif
