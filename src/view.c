#include "config.h"
#include "view.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

#include "conf.h"

enum { Z_FETCHING, Z_OK, Z_BAD };

struct znode {
    int state;
    mu_endpoint *ep; /* Z_OK: holds one ref */
    uint64_t listed; /* the group's list_gen of the last list that named it */
};

struct mu_view {
    mu_map endpoints; /* "host:port" -> mu_endpoint */
    mu_map groups;    /* path -> mu_group */
    char url_path[128];
    const mu_logger *log;
    mu_client_stats *stats;
    mu_view_changed_fn changed;
    void *user;
    uint64_t apply_mark; /* apply()'s count: endpoints seen in the running one carry it */
};

mu_view *mu_view_new(const char *url_path, const mu_logger *log, mu_client_stats *stats,
                     mu_view_changed_fn changed, void *user)
{
    mu_view *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    mu_fmt(v->url_path, sizeof v->url_path, "%s", url_path);
    v->log = log;
    v->stats = stats;
    v->changed = changed;
    v->user = user;
    return v;
}

/* ---------------------------------------------------------------- endpoints */

/* The endpoint for host:port, made if new. Its URL's scheme is that of the
 * group that named it first (a host:port is one endpoint, whichever
 * services list it). */
static mu_endpoint *endpoint_ref(mu_view *v, const char *host, int port, uint64_t joined_us, int tls)
{
    char key[sizeof(((mu_endpoint *)0)->key)];
    mu_fmt(key, sizeof key, "%s:%d", host, port);
    mu_endpoint *e = mu_map_get(&v->endpoints, key);
    if (!e) {
        /* aligned to a cache line: see endpoint.h */
        size_t sz = (sizeof *e + 63) & ~(size_t)63;
        e = aligned_alloc(64, sz);
        if (!e)
            return NULL;
        memset(e, 0, sz);
        e->joined_us = joined_us;
        memcpy(e->key, key, sizeof key);
        mu_fmt(e->host, sizeof e->host, "%s", host);
        e->port = port;
        size_t ul = strlen(key) + strlen(v->url_path) + 9; /* "https://", NUL */
        e->url = malloc(ul);
        if (!e->url || mu_map_put(&v->endpoints, key, e) != 0) {
            free(e->url);
            free(e);
            return NULL;
        }
        snprintf(e->url, ul, "%s://%s%s", tls ? "https" : "http", key, v->url_path);
    }
    e->refs++;
    return e;
}

static void endpoint_maybe_free(mu_view *v, mu_endpoint *e)
{
    if (e->refs || e->pending)
        return;
    mu_map_del(&v->endpoints, e->key);
    free(e->url);
    free(e);
}

static void endpoint_unref(mu_view *v, mu_endpoint *e)
{
    e->refs--;
    endpoint_maybe_free(v, e);
}

void mu_view_endpoint_release(mu_view *v, mu_endpoint *e)
{
    endpoint_maybe_free(v, e);
}

/* ------------------------------------------------------------------- groups */

mu_group *mu_view_group(mu_view *v, const char *path, int create)
{
    mu_group *g = mu_map_get(&v->groups, path);
    if (g || !create)
        return g;
    g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->path = strdup(path);
    g->pool = mu_pool_new();
    if (!g->path || !g->pool || mu_map_put(&v->groups, path, g) != 0) {
        free(g->path);
        mu_pool_free(g->pool);
        free(g);
        return NULL;
    }
    return g;
}

static void group_free(mu_view *v, mu_group *g)
{
    mu_pool_free(g->pool);
    size_t i = 0;
    const char *k;
    void *val;
    while (mu_map_next(&g->znodes, &i, &k, &val)) {
        struct znode *z = val;
        if (z->state == Z_OK)
            endpoint_unref(v, z->ep);
        free(z);
    }
    mu_map_clear(&g->znodes);
    free(g->path);
    free(g);
}

void mu_view_free(mu_view *v)
{
    if (!v)
        return;
    size_t i = 0;
    const char *k;
    void *val;
    while (mu_map_next(&v->groups, &i, &k, &val))
        group_free(v, val);
    mu_map_clear(&v->groups);
    /* Anything left is held by nothing now. */
    i = 0;
    while (mu_map_next(&v->endpoints, &i, &k, &val)) {
        mu_endpoint *e = val;
        free(e->url);
        free(e);
    }
    mu_map_clear(&v->endpoints);
    free(v);
}

void mu_view_each_group(mu_view *v, void (*fn)(mu_group *g, void *user), void *user)
{
    size_t i = 0;
    const char *k;
    void *val;
    while (mu_map_next(&v->groups, &i, &k, &val))
        fn(val, user);
}

void mu_view_each_endpoint(const mu_view *v, void (*fn)(const mu_endpoint *e, void *user),
                           void *user)
{
    size_t i = 0;
    const char *k;
    void *val;
    while (mu_map_next(&v->endpoints, &i, &k, &val))
        fn(val, user);
}

/* Another method of g's service (per-method paths ROOT/SVC/METHOD/provider)
 * has providers. O(groups): only when a list would become empty. */
static int service_has_providers(mu_view *v, const mu_group *g)
{
    const char *end = strrchr(g->path, '/'); /* "/provider" */
    size_t len = end ? (size_t)(end - g->path) : 0;
    while (len > 0 && g->path[len - 1] != '/') /* back over METHOD */
        len--;
    if (len == 0)
        return 0;
    size_t i = 0;
    const char *k;
    void *val;
    while (mu_map_next(&v->groups, &i, &k, &val)) {
        const mu_group *o = val;
        if (o != g && !o->stale && strncmp(o->path, g->path, len) == 0 &&
            mu_pool_size(o->pool) > 0)
            return 1; /* a snapshot's list says nothing of the service now */
    }
    return 0;
}

/* The endpoint set is the distinct endpoints of the children the last list
 * named; children it did not name go (their endpoints when unused). One
 * pass over the group's znodes, no allocation but the new set. */
static void apply(mu_view *v, mu_group *g, mu_group_state state)
{
    size_t n = 0, cap = mu_map_size(&g->znodes);
    mu_endpoint **eps = cap ? malloc(cap * sizeof *eps) : NULL;
    if (cap && !eps) {
        mu_log(v->log, MU_LOG_ERROR, "%s: out of memory applying %zu children", g->path, cap);
        return;
    }
    uint64_t mark = ++v->apply_mark;
    size_t it = 0;
    const char *k;
    void *val;
    while (mu_map_next(&g->znodes, &it, &k, &val)) {
        struct znode *z = val;
        if (z->listed == g->list_gen && z->state == Z_OK && z->ep->seen_mark != mark) {
            z->ep->seen_mark = mark; /* several children may name one host:port */
            eps[n++] = z->ep;
        }
    }
    if (n == 0 && state == MU_GROUP_READY && g->empty_protection && !g->is_static && !g->stale &&
        mu_pool_size(g->pool) > 0 && service_has_providers(v, g)) {
        /* Empty-push protection (Dubbo's enable-empty-protection), per-method
         * layout only: see mu_group.empty_protection. */
        mu_log(v->log, MU_LOG_WARN,
               "%s: its provider list became empty while other methods of the service have "
               "providers: keeping its %zu endpoint(s) (empty_protection)",
               g->path, mu_pool_size(g->pool));
        free(eps);
        return;
    }
    if (mu_pool_set(g->pool, eps, n) != 0) {
        mu_log(v->log, MU_LOG_ERROR, "%s: out of memory updating the endpoint set", g->path);
        free(eps);
        return;
    }
    free(eps);
    it = 0;
    while (mu_map_next(&g->znodes, &it, &k, &val)) { /* deleting the current key is fine */
        struct znode *z = val;
        if (z->listed == g->list_gen || z->state == Z_FETCHING)
            continue;
        if (z->state == Z_OK)
            endpoint_unref(v, z->ep);
        free(z);
        mu_map_del(&g->znodes, k);
    }
    g->state = state;
    g->stale = 0;
    mu_log(v->log, MU_LOG_INFO, "%s: %zu endpoint(s) from %zu child(ren)", g->path, n, g->nlatest);
    if (v->changed)
        v->changed(g, v->user);
}

int mu_view_children(mu_view *v, mu_group *g, char *const *names, size_t n,
                     void (*fetch)(mu_group *g, const char *name, void *user), void *user)
{
    uint64_t gen = ++g->list_gen;
    g->nlatest = n;
    g->have_latest = 1;
    g->incomplete = 0;
    int started = 0;
    for (size_t i = 0; i < n; i++) {
        struct znode *z = mu_map_get(&g->znodes, names[i]);
        if (z) { /* known (data never changes) or already being fetched */
            z->listed = gen;
            continue;
        }
        z = calloc(1, sizeof *z);
        if (!z || mu_map_put(&g->znodes, names[i], z) != 0) {
            free(z);
            g->incomplete = 1; /* out of memory: keep serving the current set */
            continue;
        }
        z->state = Z_FETCHING;
        z->listed = gen;
        g->fetching++;
        started++;
        fetch(g, names[i], user);
    }
    if (g->fetching == 0 && !g->incomplete)
        apply(v, g, MU_GROUP_READY);
    return started;
}

int mu_parse_child_data(const char *data, size_t len, char *host, size_t hostcap, int *port,
                        char *why, size_t whycap)
{
    if (len == 0) {
        mu_fmt(why, whycap, "empty data");
        return -1;
    }
    if (len > MU_MAX_CHILD_DATA) {
        mu_fmt(why, whycap, "data of %zu bytes is over the %d-byte cap", len, MU_MAX_CHILD_DATA);
        return -1;
    }
    char text[MU_MAX_CHILD_DATA + 1];
    memcpy(text, data, len);
    text[len] = '\0';
    if (memchr(text, '\0', len)) {
        mu_fmt(why, whycap, "data contains a NUL byte");
        return -1;
    }
    char err[128];
    yajl_val root = yajl_tree_parse(text, err, sizeof err);
    if (!root) {
        mu_fmt(why, whycap, "data is not JSON");
        return -1;
    }
    int rc = -1;
    const char *hp[] = {"host", NULL}, *pp[] = {"port", NULL};
    yajl_val h = YAJL_IS_OBJECT(root) ? yajl_tree_get(root, hp, yajl_t_string) : NULL;
    yajl_val p = YAJL_IS_OBJECT(root) ? yajl_tree_get(root, pp, yajl_t_any) : NULL;
    long long pn = -1;
    if (p && YAJL_IS_INTEGER(p))
        pn = YAJL_GET_INTEGER(p);
    else if (p && YAJL_IS_STRING(p)) {
        const char *s = YAJL_GET_STRING(p);
        char *end;
        pn = *s ? strtoll(s, &end, 10) : -1;
        if (*s && *end)
            pn = -1;
    }
    const char *hs = h ? YAJL_GET_STRING(h) : NULL;
    char probe[96];
    int probe_port;
    if (!YAJL_IS_OBJECT(root))
        mu_fmt(why, whycap, "data is not a JSON object");
    else if (!hs || !*hs)
        mu_fmt(why, whycap, "no \"host\" string");
    else if (!p)
        mu_fmt(why, whycap, "no \"port\"");
    else if (pn < 1 || pn > 65535)
        mu_fmt(why, whycap, "port is not a number from 1 to 65535");
    else if (mu_fmt(probe, sizeof probe, "%s:%lld", hs, pn),
             mu_parse_hostport(probe, strlen(probe), host, hostcap, &probe_port) != 0)
        mu_fmt(why, whycap, "host \"%.64s\" is not a valid address", hs);
    else {
        *port = probe_port;
        rc = 0;
    }
    yajl_tree_free(root);
    return rc;
}

void mu_view_child_unreadable(mu_view *v, mu_group *g, const char *name, const char *why)
{
    struct znode *z = mu_map_get(&g->znodes, name);
    if (!z || z->state != Z_FETCHING)
        return;
    g->fetching--;
    z->state = Z_BAD;
    if (v->stats)
        v->stats->znodes_skipped++;
    mu_log(v->log, MU_LOG_WARN, "skipping provider znode %s/%s: cannot read it: %s", g->path, name,
           why);
    if (g->fetching == 0 && g->have_latest && !g->incomplete)
        apply(v, g, MU_GROUP_READY);
}

void mu_view_child_data(mu_view *v, mu_group *g, const char *name, const char *data, size_t len)
{
    struct znode *z = mu_map_get(&g->znodes, name);
    if (!z || z->state != Z_FETCHING)
        return;
    g->fetching--;
    if (!data) {
        /* Gone between the list and the get: drop it. */
        mu_map_del(&g->znodes, name);
        free(z);
    } else {
        char host[64], why[160] = "out of memory";
        int port;
        if (mu_parse_child_data(data, len, host, sizeof host, &port, why, sizeof why) == 0 &&
            (z->ep = endpoint_ref(v, host, port, g->state == MU_GROUP_LOADING ? 0 : mu_now_us(),
                                  g->tls)) != NULL) {
            z->state = Z_OK;
        } else {
            z->state = Z_BAD;
            if (v->stats)
                v->stats->znodes_skipped++;
            mu_log(v->log, MU_LOG_WARN, "skipping provider znode %s/%s: %s", g->path, name, why);
        }
    }
    if (g->fetching == 0 && g->have_latest && !g->incomplete)
        apply(v, g, g->nlatest || g->state != MU_GROUP_NONODE ? MU_GROUP_READY : MU_GROUP_NONODE);
}

void mu_view_child_failed(mu_view *v, mu_group *g, const char *name)
{
    MU_UNUSED(v);
    struct znode *z = mu_map_get(&g->znodes, name);
    if (!z || z->state != Z_FETCHING)
        return;
    mu_map_del(&g->znodes, name);
    free(z);
    g->fetching--;
    g->incomplete = 1; /* keep serving the current set */
}

void mu_view_nonode(mu_view *v, mu_group *g)
{
    g->list_gen++; /* no child is listed */
    g->nlatest = 0;
    g->have_latest = 1;
    g->state = MU_GROUP_NONODE;
    if (g->fetching == 0)
        apply(v, g, MU_GROUP_NONODE);
}

typedef struct static_fill {
    mu_view *v;
    mu_group *g;
    size_t n;
} static_fill;

/* One "host:port" of a static list: a znode-like entry named by it. */
static int add_static(const char *item, size_t len, void *user)
{
    static_fill *sf = user;
    char host[64], key[96];
    int port;
    if (mu_parse_hostport(item, len, host, sizeof host, &port) != 0)
        return 0; /* validated by the config already */
    mu_fmt(key, sizeof key, "%s:%d", host, port);
    sf->n++;
    struct znode *z = mu_map_get(&sf->g->znodes, key);
    if (z) {
        z->listed = sf->g->list_gen;
        return 0;
    }
    z = calloc(1, sizeof *z);
    if (z && (z->ep = endpoint_ref(sf->v, host, port, 0, sf->g->tls)) &&
        mu_map_put(&sf->g->znodes, key, z) == 0) {
        z->state = Z_OK;
        z->listed = sf->g->list_gen;
        return 0;
    }
    if (z && z->ep)
        endpoint_unref(sf->v, z->ep);
    free(z);
    return 0;
}

/* A static or stale list: znode-like entries named "host:port". */
static int set_list(mu_view *v, mu_group *g, const char *hosts)
{
    g->list_gen++;
    static_fill sf = {v, g, 0};
    int rc = mu_list_each(hosts, add_static, &sf);
    g->nlatest = sf.n;
    g->have_latest = 1;
    apply(v, g, MU_GROUP_READY);
    return rc;
}

int mu_view_set_static(mu_view *v, mu_group *g, const char *hosts)
{
    g->is_static = 1;
    return set_list(v, g, hosts);
}

int mu_view_set_stale(mu_view *v, mu_group *g, const char *hosts)
{
    if (g->state != MU_GROUP_LOADING || g->have_latest)
        return 0; /* ZooKeeper has answered: its list wins */
    int rc = set_list(v, g, hosts);
    g->have_latest = 0; /* the first real list is applied as usual */
    g->stale = 1;
    mu_log(v->log, MU_LOG_WARN, "%s: ZooKeeper not reached: using %zu endpoint(s) from "
           "snapshot_file, marked stale, until it answers", g->path, mu_pool_size(g->pool));
    if (v->changed)
        v->changed(g, v->user);
    return rc;
}
