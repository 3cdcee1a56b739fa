/*
 * zkloop: drive a single-threaded ZooKeeper handle (zookeeper_st) from a
 * libevent event_base. zookeeper_interest() says which fd, which events and
 * how long; we arm one fd event and one timer, and call zookeeper_process()
 * when either fires. The handle is not owned: the caller closes it, but
 * never from inside a ZooKeeper callback (detach first, then close).
 * mu_zkloop is private to zkloop.c; the registry makes and frees its one.
 */
#ifndef MU_ZKLOOP_H
#define MU_ZKLOOP_H

#include <zookeeper/zookeeper.h>

struct event_base;
typedef struct mu_zkloop mu_zkloop;

mu_zkloop *mu_zkloop_new(struct event_base *base);
/* Start driving zh (NULL stops). Safe to call at any time outside a
 * ZooKeeper callback; inside one, only detaching is allowed. */
void mu_zkloop_attach(mu_zkloop *l, zhandle_t *zh);
/* Re-read the handle's interest. Call after every asynchronous request. */
void mu_zkloop_update(mu_zkloop *l);
void mu_zkloop_free(mu_zkloop *l);

#endif
