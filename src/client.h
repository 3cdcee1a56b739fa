/*
 * client: what client.c shows the rest of the tree beyond the public
 * header. struct mu_client itself is private to client.c, and owned by the
 * user (mu_client_new / mu_client_free); it holds the modules, the logger,
 * the stats, the target table, the watches (struct mu_watch, also private)
 * and the mu_life.
 */
#ifndef MU_CLIENT_H
#define MU_CLIENT_H

#include "registry.h"

/* The client's registry (NULL without ZooKeeper), for tests that expire
 * its session. */
mu_registry *mu_client_registry(const mu_client *c);

#endif
