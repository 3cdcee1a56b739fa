/*
 * view: the in-memory picture of every provider in use.
 *
 * A group is the set of providers found under one registry path: a method
 * in the per-method layout, a whole service in the per-service one, or a
 * static list from configuration. Its znodes map child name -> endpoint;
 * several children naming one host:port are one endpoint. Endpoints live in
 * one client-wide table so that their load and health are shared across
 * groups, and they survive refreshes while any child still names them.
 *
 * A refresh never empties a group by accident: a new child list is applied
 * only once the data of every new child has arrived.
 *
 * A change costs work per child of the list, without allocating for the
 * children it already knew: each znode carries the generation of the last
 * list that named it, and each endpoint the mark of the last apply that
 * counted it (ZooKeeper's get_children itself returns the whole list).
 *
 * Ownership:
 *   mu_view      private to view.c; made and freed by client.c.
 *   mu_group     owned by the view (view.c allocates and frees it); only
 *                view.c writes it; call.c, client.c and registry.c read it.
 *                Its pool belongs to it (see balance.h).
 *   mu_endpoint  owned by the view (endpoint.h).
 */
#ifndef MU_VIEW_H
#define MU_VIEW_H

#include "balance.h"
#include "common.h"
#include "endpoint.h"
#include "map.h"

typedef enum mu_group_state {
    MU_GROUP_LOADING = 0, /* never listed yet */
    MU_GROUP_READY = 1,   /* listed; may still have zero endpoints */
    MU_GROUP_NONODE = 2,  /* the provider path does not exist */
} mu_group_state;

typedef struct mu_group {
    char *path;            /* registry path, or "static:SERVICE" */
    mu_group_state state;
    int is_static;
    int stale;             /* its endpoints come from snapshot_file, not (yet) from ZooKeeper */
    int tls;               /* set before loading: its endpoints are called over HTTPS */
    int empty_protection;  /* set before loading: an empty list does not replace a non-empty
                            * one while another method of the service has providers */
    mu_pool *pool;         /* the current endpoints */
    mu_map znodes;         /* child name -> struct znode (view.c) */
    uint64_t list_gen;     /* the last child list: its znodes carry this mark */
    size_t nlatest;        /* how many names it had */
    int have_latest;       /* a list came; it is applied when fetching == 0 */
    int fetching;          /* child gets outstanding */
    int incomplete;        /* a child get failed: wait for the next list */
} mu_group;

typedef struct mu_view mu_view;

/* Called after a group's endpoint set (or state) changed. */
typedef void (*mu_view_changed_fn)(mu_group *g, void *user);

mu_view *mu_view_new(const char *url_path, const mu_logger *log, mu_client_stats *stats,
                     mu_view_changed_fn changed, void *user);
/* Frees every group and every endpoint (callers must have ended their calls). */
void mu_view_free(mu_view *v);

/* The group for path, made (LOADING) if create and absent. NULL if absent
 * or out of memory. */
mu_group *mu_view_group(mu_view *v, const char *path, int create);

/* Fills a static group from "host:port,host:port" (already validated). */
int mu_view_set_static(mu_view *v, mu_group *g, const char *hosts);
/* Fills a group that ZooKeeper has not listed yet from the snapshot's
 * "host:port,..." (validated), marked stale; its first real list replaces
 * it. */
int mu_view_set_stale(mu_view *v, mu_group *g, const char *hosts);

/* Calls fn for every group. */
void mu_view_each_group(mu_view *v, void (*fn)(mu_group *g, void *user), void *user);
/* Calls fn for every endpoint in memory (listed by a group, or still held
 * by an attempt). fn must not change the view. */
void mu_view_each_endpoint(const mu_view *v, void (*fn)(const mu_endpoint *e, void *user),
                           void *user);

/* --- driven by the registry --------------------------------------------- */

/* A new child list. Returns the number of names whose data must be
 * fetched; for each, names[i] is passed to fetch(). Applies at once when
 * nothing needs fetching. */
int mu_view_children(mu_view *v, mu_group *g, char *const *names, size_t n,
                     void (*fetch)(mu_group *g, const char *name, void *user), void *user);
/* The data of one fetched child (data NULL: it vanished, or the get failed). */
void mu_view_child_data(mu_view *v, mu_group *g, const char *name, const char *data, size_t len);
/* A child get failed (connection loss): apply nothing until a new list. */
void mu_view_child_failed(mu_view *v, mu_group *g, const char *name);
/* A child whose data can never be read (no ACL for us): skipped like bad data. */
void mu_view_child_unreadable(mu_view *v, mu_group *g, const char *name, const char *why);
/* The provider path does not exist. */
void mu_view_nonode(mu_view *v, mu_group *g);

/* --- used by calls -------------------------------------------------------- */

/* Called after an attempt let go of e (mu_endpoint_pending_add(e, -1)):
 * frees e if no group lists it and no attempt holds it any more. */
void mu_view_endpoint_release(mu_view *v, mu_endpoint *e);

/* Parses child data {"host": "...", "port": N or "N"}. 0 on success, else
 * -1 with why (for the log line). Exposed for tests. */
int mu_parse_child_data(const char *data, size_t len, char *host, size_t hostcap, int *port,
                        char *why, size_t whycap);

#define MU_MAX_CHILD_DATA 1024

#endif
