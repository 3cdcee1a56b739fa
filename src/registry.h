/*
 * registry: the ZooKeeper session, on the caller's event loop. It lists and
 * watches the provider path of every group it is asked to, fetches the
 * data of new children only, and feeds the view. It survives disconnects
 * (the view keeps serving) and session expiry (a new session re-lists every
 * group; the view swaps a group's set only once its new list is complete).
 * A resumed session keeps its watches (the ZooKeeper client re-arms them):
 * only groups whose request was lost with the connection are listed again.
 * After a new session, every loaded group is, after a random delay in
 * [0, min(session timeout / 4, 2 s)] (see registry.c).
 *
 * mu_registry is private to registry.c and made and freed by client.c
 * (NULL without ZooKeeper). It owns the zhandle_t, its mu_zkloop, one
 * record per watched group and one per outstanding request.
 */
#ifndef MU_REGISTRY_H
#define MU_REGISTRY_H

#include "common.h"
#include "view.h"

struct event_base;
typedef struct mu_registry mu_registry;

/* Turns the ZooKeeper C client's own logging off, process-wide: see
 * registry.c. The client calls it once, under pthread_once. */
void mu_registry_global_init(void);

/* seed: the re-list delays' random state (the client draws it). */
mu_registry *mu_registry_new(struct event_base *base, mu_view *view, const char *hosts,
                             int session_timeout_ms, const mu_logger *log, mu_client_stats *stats,
                             uint64_t seed);
/* Closes the session (pending requests complete as cancelled). */
void mu_registry_free(mu_registry *r);
/* Lists and watches g now, or as soon as a session is up. */
void mu_registry_watch(mu_registry *r, mu_group *g);
int mu_registry_connected(const mu_registry *r);
const char *mu_registry_hosts(const mu_registry *r);
/* The live zhandle_t (or NULL), for tests that expire sessions. */
void *mu_registry_zhandle(const mu_registry *r);

#endif
