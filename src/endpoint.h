/*
 * One provider endpoint (host:port), shared by every group that lists it,
 * so that its load and health are seen across methods. Allocated and freed
 * by the view (view.c) once no group and no attempt refers to it.
 *
 * Each part is written by one module only:
 *   identity and lifetime  view.c
 *   pending, members       balance.c (pending only via mu_endpoint_pending_add;
 *                          view.c reads pending before freeing)
 *   health                 health.c, which calls mu_endpoint_sync after changing
 *                          what picks read (balance.c copies down_until_us, ewma
 *                          and oldest_us into its pools); call.c reads reuse_ok,
 *                          client.c reads calls and failures
 *   lane (mu_lane)         call.c
 *   metrics                call.c (metrics.h); client.c reads it for
 *                          mu_client_metrics()
 * A separate allocation per module would need the view to call back into
 * each one to free it; embedded sections keep one owner for the memory and
 * one writer per field.
 */
#ifndef MU_ENDPOINT_H
#define MU_ENDPOINT_H

#include <stdint.h>

#include "health.h"
#include "metrics.h"

struct mu_member;
struct mu_call_handle;

/* call.c's per-endpoint state: the attempts on it. */
typedef struct mu_lane {
    int active;  /* attempts handed to the transport */
    int queued;  /* attempts in the queue (max_queue_per_host bounds it) */
    struct mu_call_handle *queue_head, *queue_tail; /* waiting for a connection, in order */
    struct mu_call_handle *run_head, *run_tail;     /* handed to the transport, oldest first */
} mu_lane;

typedef struct mu_endpoint {
    /* What pending_add and health.c's updates read and write comes first,
     * so that it shares one cache line (view.c allocates endpoints aligned
     * to 64 bytes). Picks read balance.c's copies, not this. */
    /* balance.c */
    int pending;         /* attempts holding it (queued or in flight) */
    struct mu_member *members; /* one node per pool that holds it */
    /* view.c */
    uint64_t joined_us;  /* when it joined an already loaded group (slow start counts from
                          * then, or from its revival); 0: it came with a first load */
    uint64_t seen_mark;  /* the view's apply() that last counted it */
    /* health.c: its first fields are the ones picks read */
    mu_health_ep health;
    /* view.c */
    char key[72];        /* "host:port", the identity */
    char host[64];
    int port;
    char *url;           /* "http://host:port/json/" */
    unsigned refs;       /* references from groups */
    /* call.c */
    mu_lane lane;
    /* call.c: counters for mu_client_metrics(), last: no pick reads them */
    mu_ep_metrics metrics;
} mu_endpoint;

#endif
