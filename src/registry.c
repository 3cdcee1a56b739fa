#include "config.h"
#include "registry.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <zookeeper/zookeeper.h>

#include "map.h"
#include "zkloop.h"

/* The registry's record of a group it lists and watches. */
typedef struct watched {
    mu_group *g;
    int listing; /* a get_children is outstanding */
    int relist;  /* a watch fired while listing */
    int unwatched; /* its last list or exists check failed: ZooKeeper holds no watch for it */
    int due;     /* the jittered re-list will list it */
} watched;

struct mu_registry {
    mu_map watched; /* group path -> watched (owned) */
    mu_view *view;
    const mu_logger *log;
    mu_client_stats *stats;
    char *hosts;
    int session_ms;
    zhandle_t *zh;
    mu_zkloop *loop;
    struct event *renew; /* replaces an expired handle, outside ZooKeeper callbacks */
    struct event *relist; /* the jittered re-list after a reconnect or a new session */
    int connected;
    int ever_connected;
    uint64_t rng;
    int64_t session_id;
};

/* One outstanding request. Freed by its completion, which the client also
 * calls (with ZCLOSING) when a handle is closed. */
typedef struct req {
    mu_registry *r;
    watched *w;
    mu_group *g;
    char name[];
} req;

static void list_group(mu_registry *r, watched *w);

static req *req_new(mu_registry *r, watched *w, const char *name)
{
    size_t n = name ? strlen(name) + 1 : 1;
    req *q = malloc(sizeof *q + n);
    if (!q)
        return NULL;
    q->r = r;
    q->w = w;
    q->g = w->g;
    memcpy(q->name, name ? name : "", n);
    return q;
}

/* The ZooKeeper client logs to stderr at INFO by default; its messages are
 * about its socket, not our state: our own log lines report what matters. */
static void zk_log_discard(const char *message)
{
    MU_UNUSED(message);
}

/* zookeeper_st formats each log line into static buffers shared by every
 * handle in the process (its zk_log.c keeps per-thread buffers only in the
 * multi-threaded build), before handing it to the handle's callback. With
 * clients in several threads that is a data race, for lines we discard
 * anyway: level 0 skips the formatting altogether. */
void mu_registry_global_init(void)
{
    zoo_set_debug_level((ZooLogLevel)0);
}

static const char *state_name(int state)
{
    if (state == ZOO_CONNECTED_STATE)
        return "connected";
    if (state == ZOO_CONNECTING_STATE)
        return "connecting";
    if (state == ZOO_ASSOCIATING_STATE)
        return "associating";
    if (state == ZOO_EXPIRED_SESSION_STATE)
        return "session expired";
    if (state == ZOO_READONLY_STATE)
        return "read-only";
    if (state == ZOO_NOTCONNECTED_STATE)
        return "not connected";
    return "unknown";
}

/* ------------------------------------------------------------- per group */

static void child_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    MU_UNUSED(state);
    MU_UNUSED(path);
    mu_registry *r = (mu_registry *)zoo_get_context(zh);
    if (!r || r->zh != zh)
        return;
    if (type == ZOO_CHILD_EVENT || type == ZOO_DELETED_EVENT || type == ZOO_CREATED_EVENT)
        list_group(r, ctx);
}

/* Errors that a reconnect or a new session cures; any other one will come
 * back on every retry (no ACL for us, a path ZooKeeper refuses). */
static int transient(int rc)
{
    return rc == ZCONNECTIONLOSS || rc == ZOPERATIONTIMEOUT || rc == ZSESSIONEXPIRED ||
           rc == ZCLOSING || rc == ZINVALIDSTATE || rc == ZSESSIONMOVED;
}

static void data_done(int rc, const char *value, int len, const struct Stat *stat, const void *data)
{
    MU_UNUSED(stat);
    req *q = (req *)data;
    if (rc == ZOK)
        mu_view_child_data(q->r->view, q->g, q->name, value ? value : "", value && len > 0 ? (size_t)len : 0);
    else if (rc == ZNONODE)
        mu_view_child_data(q->r->view, q->g, q->name, NULL, 0);
    else if (transient(rc))
        mu_view_child_failed(q->r->view, q->g, q->name);
    else
        mu_view_child_unreadable(q->r->view, q->g, q->name, zerror(rc));
    free(q);
}

static void fetch_child(mu_group *g, const char *name, void *user)
{
    mu_registry *r = user;
    size_t pl = strlen(g->path) + strlen(name) + 2;
    char *path = malloc(pl);
    req *q = req_new(r, mu_map_get(&r->watched, g->path), name);
    int rc = ZSYSTEMERROR;
    if (path && q) {
        memcpy(path, g->path, strlen(g->path));
        path[strlen(g->path)] = '/';
        memcpy(path + strlen(g->path) + 1, name, strlen(name) + 1);
        rc = zoo_aget(r->zh, path, 0, data_done, q);
        if (rc == ZOK && r->stats)
            r->stats->zk_get++;
    }
    free(path);
    if (rc != ZOK) {
        free(q);
        mu_view_child_failed(r->view, g, name);
    }
}

static void exists_done(int rc, const struct Stat *stat, const void *data)
{
    MU_UNUSED(stat);
    req *q = (req *)data;
    /* Created between our list and this check: list again. */
    if (rc == ZOK)
        list_group(q->r, q->w);
    else if (transient(rc))
        q->w->unwatched = 1;
    free(q);
}

static void children_done(int rc, const struct String_vector *strings, const struct Stat *stat,
                          const void *data)
{
    MU_UNUSED(stat);
    req *q = (req *)data;
    mu_registry *r = q->r;
    watched *w = q->w;
    mu_group *g = w->g;
    free(q);
    w->listing = 0;
    w->unwatched = transient(rc);
    if (rc == ZOK) {
        mu_view_children(r->view, g, strings ? strings->data : NULL,
                         strings ? (size_t)strings->count : 0, fetch_child, r);
    } else if (rc == ZNONODE) {
        mu_log(r->log, MU_LOG_INFO, "%s does not exist (no provider registered)", g->path);
        mu_view_nonode(r->view, g);
        /* A watch that fires when the path is created. */
        req *e = req_new(r, w, NULL);
        if (e && zoo_awexists(r->zh, g->path, child_watcher, w, exists_done, e) != ZOK)
            free(e);
    } else if (transient(rc)) {
        /* Listed again once connected. */
        if (rc != ZCLOSING)
            mu_log(r->log, MU_LOG_INFO, "listing %s failed: %s", g->path, zerror(rc));
        return;
    } else {
        /* It would fail the same way every time: say so, and end the wait. */
        mu_log(r->log, MU_LOG_WARN, "cannot list %s: %s", g->path, zerror(rc));
        mu_view_nonode(r->view, g);
    }
    if (w->relist) {
        w->relist = 0;
        list_group(r, w);
    }
}

static void list_group(mu_registry *r, watched *w)
{
    if (!r->zh || !r->connected) {
        w->unwatched = 1; /* listed on (re)connect */
        return;
    }
    if (w->listing) {
        w->relist = 1;
        return;
    }
    mu_group *g = w->g;
    req *q = req_new(r, w, NULL);
    if (!q) {
        w->unwatched = 1; /* no watch set: listed again on the next (re)connect */
        return;
    }
    int rc = zoo_awget_children2(r->zh, g->path, child_watcher, w, children_done, q);
    if (rc != ZOK) {
        free(q);
        w->unwatched = 1;
        if (transient(rc)) {
            mu_log(r->log, MU_LOG_INFO, "listing %s: %s", g->path, zerror(rc));
        } else {
            mu_log(r->log, MU_LOG_WARN, "cannot list %s: %s", g->path, zerror(rc));
            mu_view_nonode(r->view, g);
        }
        return;
    }
    w->listing = 1;
    w->due = 0;
    if (r->stats)
        r->stats->zk_get_children++;
    mu_zkloop_update(r->loop);
}

void mu_registry_watch(mu_registry *r, mu_group *g)
{
    watched *w = mu_map_get(&r->watched, g->path);
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w || mu_map_put(&r->watched, g->path, w) != 0) {
            free(w);
            mu_log(r->log, MU_LOG_ERROR, "out of memory watching %s", g->path);
            mu_view_nonode(r->view, g); /* ends the wait of its calls */
            return;
        }
        w->g = g;
    }
    list_group(r, w);
}

/* --------------------------------------------------------------- session */

static void session_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx);

static int open_handle(mu_registry *r)
{
    r->zh = zookeeper_init2(r->hosts, session_watcher, r->session_ms, NULL, r, 0, zk_log_discard);
    if (!r->zh) {
        mu_log(r->log, MU_LOG_ERROR, "ZooKeeper handle for '%s' could not be made", r->hosts);
        return -1;
    }
    mu_zkloop_attach(r->loop, r->zh);
    return 0;
}

/* On a resumed session the ZooKeeper client has re-armed our watches
 * itself (SetWatches, with the last zxid it saw: a change made while we
 * were away fires at once), so only the groups without one are listed: a
 * list or exists check lost with the connection, a child whose data could
 * not be read, a group still loading or stale. On a new session every
 * watch is gone and every group is listed again. Either way every client of
 * a ZooKeeper that restarts does it at the same moment: the herd. A group
 * already loaded keeps serving its view meanwhile, so its re-list waits a
 * random delay in [0, min(session timeout / 4, 2 s)]; a group never listed
 * yet (calls wait for it) is listed at once, as on the first connection.
 * A watch that fires meanwhile lists its group at once, and the delayed
 * pass skips it. */
static int relist_bound_ms(const mu_registry *r)
{
    int b = r->session_ms / 4;
    return b < 2000 ? b : 2000;
}

static void relist_all(mu_registry *r, int fresh)
{
    int later = 0;
    size_t i = 0;
    const char *k;
    void *v;
    while (mu_map_next(&r->watched, &i, &k, &v)) {
        watched *w = v;
        if (w->listing) { /* requests of a lost connection never complete as OK */
            w->listing = 0;
            w->unwatched = 1;
        }
        if (!r->ever_connected || w->g->state == MU_GROUP_LOADING || w->g->stale)
            list_group(r, w);
        else if (fresh || w->unwatched || w->g->incomplete)
            later = w->due = 1;
    }
    r->ever_connected = 1;
    if (later) {
        long ms = (long)(mu_rand(&r->rng) % (uint64_t)(relist_bound_ms(r) + 1));
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        event_add(r->relist, &tv);
    }
}

static void on_relist(evutil_socket_t fd, short what, void *arg)
{
    MU_UNUSED(fd);
    MU_UNUSED(what);
    mu_registry *r = arg;
    size_t i = 0;
    const char *k;
    void *v;
    while (mu_map_next(&r->watched, &i, &k, &v)) {
        watched *w = v;
        if (w->due) /* not listed since it became due (a watch would have cleared it) */
            list_group(r, w);
        w->due = 0;
    }
}

static void session_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    MU_UNUSED(path);
    mu_registry *r = ctx;
    if (type != ZOO_SESSION_EVENT || r->zh != zh)
        return;
    if (state == ZOO_CONNECTED_STATE) {
        const clientid_t *id = zoo_client_id(zh);
        int fresh = id && id->client_id != r->session_id;
        r->connected = 1;
        if (fresh) {
            r->session_id = id->client_id;
            if (r->stats)
                r->stats->zk_sessions++;
        }
        mu_log(r->log, MU_LOG_INFO, "ZooKeeper %s: %s session 0x%llx", r->hosts,
               fresh ? "new" : "resumed", (unsigned long long)r->session_id);
        relist_all(r, fresh);
    } else if (state == ZOO_EXPIRED_SESSION_STATE) {
        r->connected = 0;
        mu_log(r->log, MU_LOG_WARN,
               "ZooKeeper session 0x%llx expired; opening a new one (serving from the current view)",
               (unsigned long long)r->session_id);
        event_active(r->renew, EV_TIMEOUT, 0); /* never close a handle inside its callback */
    } else {
        if (r->connected)
            mu_log(r->log, MU_LOG_WARN, "ZooKeeper %s: %s; serving from the current view", r->hosts,
                   state_name(state));
        r->connected = 0;
    }
}

static void on_renew(evutil_socket_t fd, short what, void *arg)
{
    MU_UNUSED(fd);
    MU_UNUSED(what);
    mu_registry *r = arg;
    if (r->zh) {
        zhandle_t *old = r->zh;
        mu_zkloop_attach(r->loop, NULL);
        r->zh = NULL;
        zookeeper_close(old); /* completions run with ZCLOSING */
    }
    size_t i = 0;
    const char *k;
    void *v;
    while (mu_map_next(&r->watched, &i, &k, &v))
        ((watched *)v)->listing = 0;
    if (open_handle(r) != 0) {
        /* A name in zk_hosts that does not resolve right now, say: try again. */
        static const struct timeval again = {1, 0};
        event_add(r->renew, &again);
    }
}

mu_registry *mu_registry_new(struct event_base *base, mu_view *view, const char *hosts,
                             int session_timeout_ms, const mu_logger *log, mu_client_stats *stats,
                             uint64_t seed)
{
    mu_registry *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->view = view;
    r->log = log;
    r->stats = stats;
    r->session_ms = session_timeout_ms;
    r->hosts = strdup(hosts);
    r->loop = mu_zkloop_new(base);
    r->renew = event_new(base, -1, 0, on_renew, r);
    r->relist = evtimer_new(base, on_relist, r);
    r->rng = seed;
    if (!r->hosts || !r->loop || !r->renew || !r->relist || open_handle(r) != 0) {
        mu_registry_free(r);
        return NULL;
    }
    return r;
}

void mu_registry_free(mu_registry *r)
{
    if (!r)
        return;
    if (r->zh) {
        zhandle_t *zh = r->zh;
        mu_zkloop_attach(r->loop, NULL);
        r->zh = NULL;
        zookeeper_close(zh);
    }
    if (r->renew)
        event_free(r->renew);
    if (r->relist)
        event_free(r->relist);
    mu_zkloop_free(r->loop);
    size_t i = 0;
    const char *k;
    void *v;
    while (mu_map_next(&r->watched, &i, &k, &v))
        free(v);
    mu_map_clear(&r->watched);
    free(r->hosts);
    free(r);
}

int mu_registry_connected(const mu_registry *r)
{
    return r && r->connected;
}

const char *mu_registry_hosts(const mu_registry *r)
{
    return r ? r->hosts : "";
}

void *mu_registry_zhandle(const mu_registry *r)
{
    return r ? r->zh : NULL;
}
