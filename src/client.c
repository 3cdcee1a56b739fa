#include "config.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <yajl/yajl_tree.h>

#include "client.h"
#include "conf.h"

static void stderr_log(mu_log_level level, const char *msg, void *user)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    MU_UNUSED(user);
    fprintf(stderr, "microutil %s: %s\n", names[level], msg);
}

static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    MU_UNUSED(fd);
    MU_UNUSED(what);
    mu_client *c = arg;
    if (c->free_requested) {
        mu_client_free(c);
        return;
    }
    mu_calls_drain(c);
    if (c->dying && c->depth == 0)
        mu_client_destroy(c);
}

void mu_client_kick(mu_client *c)
{
    if (c->draining) {
        /* A timer, not event_active: it runs after the next poll, so the
         * loop's other events get their turn first. */
        static const struct timeval now = {0, 0};
        if (!event_pending(c->drain, EV_TIMEOUT, NULL))
            event_add(c->drain, &now);
    } else {
        event_active(c->drain, EV_TIMEOUT, 0);
    }
}

/* Every part logs through here, so that the user's sink runs with the
 * client marked busy: it must not free the client under our feet. */
static void log_trampoline(mu_log_level level, const char *msg, void *user)
{
    mu_client *c = user;
    if (!c->user_log)
        return;
    c->in_log++;
    c->user_log(level, msg, c->user_log_arg);
    c->in_log--;
}

static void on_group_changed(mu_group *g, void *user)
{
    mu_client *c = user;
    mu_calls_group_changed(c, g);
    int notify = 0;
    for (mu_watch *w = c->watches; w; w = w->next)
        if (w->g == g && w->fn)
            notify = w->dirty = 1;
    if (notify)
        mu_client_kick(c);
}

/* --------------------------------------------------------------- settings */

static void load_list(mu_map *m, const char *list)
{
    const char *p = list;
    while (p && *p) {
        const char *comma = strchr(p, ',');
        size_t l = comma ? (size_t)(comma - p) : strlen(p);
        char item[256];
        while (l && *p == ' ')
            p++, l--;
        while (l && p[l - 1] == ' ')
            l--;
        if (l && l < sizeof item) {
            memcpy(item, p, l);
            item[l] = '\0';
            mu_map_put(m, item, (void *)1);
        }
        p = comma ? comma + 1 : NULL;
    }
}

static void add_static(const char *svc, const char *hosts, void *user)
{
    mu_client *c = user;
    char *h = strdup(hosts);
    if (h && mu_map_put(&c->statics, svc, h) != 0)
        free(h);
}

static void add_policy(const char *svc, const char *name, void *user)
{
    mu_client *c = user;
    int p = mu_policy_parse(name);
    if (p >= 0)
        mu_map_put(&c->svc_policy, svc, (void *)(intptr_t)(p + 1));
}

static mu_status apply_config(mu_client *c, const mu_config *cfg)
{
    mu_settings *s = &c->s;
    s->timeout_ms = (int)mu_config_long(cfg, "timeout_ms");
    s->connect_timeout_ms = (int)mu_config_long(cfg, "connect_timeout_ms");
    s->deadline_ms = (int)mu_config_long(cfg, "deadline_ms");
    s->retries = (int)mu_config_long(cfg, "retries");
    s->eject_ms = (int)mu_config_long(cfg, "eject_ms");
    s->max_per_host = (int)mu_config_long(cfg, "max_connections_per_host");
    s->backoff_ms = (int)mu_config_long(cfg, "connect_backoff_ms");
    s->backoff_max_ms = (int)mu_config_long(cfg, "connect_backoff_max_ms");
    if (s->backoff_max_ms < s->backoff_ms)
        s->backoff_max_ms = s->backoff_ms;
    s->stall_ms = (int)mu_config_long(cfg, "keepalive_stall_ms");
    s->max_response = (size_t)mu_config_long(cfg, "max_response_bytes");
    s->policy = (mu_policy)mu_policy_parse(mu_config_str(cfg, "policy"));
    const char *proto = mu_config_str(cfg, "protocol");
    /* 1.0.2 mounts /json/; 1.0.3 and every later variant mount /jsonp/. */
    int legacy = strcmp(proto, "1.0.2") == 0;
    s->json_headers = strcmp(proto, "1.0.4") == 0 || strcmp(proto, "1.0.8") == 0;
    s->per_service = strcmp(mu_config_str(cfg, "layout"), "per-service") == 0;
    /* 1.0.8 registers per service unless the layout key says otherwise. */
    if (strcmp(proto, "1.0.8") == 0 && !mu_config_is_set(cfg, "layout"))
        s->per_service = 1;
    const char *path = mu_config_str(cfg, "path");
    mu_fmt(s->url_path, sizeof s->url_path, "%s",
           *path ? path : legacy ? "/json/" : "/jsonp/");
    mu_fmt(s->root, sizeof s->root, "%s", mu_config_str(cfg, "zk_root"));
    s->auth_token = strdup(mu_config_str(cfg, "auth_token"));
    if (!s->auth_token)
        return MU_ENOMEM;
    const char *lvl = mu_config_str(cfg, "log_level");
    c->log.level = strcmp(lvl, "error") == 0  ? MU_LOG_ERROR
                   : strcmp(lvl, "info") == 0  ? MU_LOG_INFO
                   : strcmp(lvl, "debug") == 0 ? MU_LOG_DEBUG
                                               : MU_LOG_WARN;
    load_list(&c->idempotent, mu_config_str(cfg, "idempotent"));
    mu_config_each_service(cfg, "static", add_static, c);
    mu_config_each_service(cfg, "policy", add_policy, c);
    return MU_OK;
}

/* ---------------------------------------------------------------- targets */

static int valid_part(const char *s, size_t n)
{
    if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
        return 0; /* not a znode name */
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= ' ' || ch == '/' || ch == ':' || ch == 0x7f)
            return 0;
    }
    return 1;
}

mu_target *mu_client_target(mu_client *c, const char *target, mu_status *st)
{
    *st = MU_EINVAL;
    mu_target *t = mu_map_get(&c->targets, target);
    if (t)
        return t;
    const char *colon = strchr(target, ':');
    size_t tl = strlen(target);
    if (!colon || strchr(colon + 1, ':') || !valid_part(target, (size_t)(colon - target)) ||
        !valid_part(colon + 1, tl - (size_t)(colon - target) - 1) || tl > 512) {
        mu_fmt(c->errmsg, sizeof c->errmsg,
               "bad target '%.200s': expected SERVICE:METHOD with exactly one ':' and no "
               "spaces or '/'",
               target);
        return NULL;
    }
    size_t sl = (size_t)(colon - target);
    char svc[256];
    if (sl >= sizeof svc) {
        mu_fmt(c->errmsg, sizeof c->errmsg, "bad target '%.200s': service name too long", target);
        return NULL;
    }
    memcpy(svc, target, sl);
    svc[sl] = '\0';
    const char *method = colon + 1;

    char path[1024];
    const char *hosts = mu_map_get(&c->statics, svc);
    if (hosts)
        mu_fmt(path, sizeof path, "static:%s", svc);
    else if (c->s.per_service)
        mu_fmt(path, sizeof path, "%s/%s/provider", c->s.root, svc);
    else
        mu_fmt(path, sizeof path, "%s/%s/%s/provider", c->s.root, svc, method);

    t = calloc(1, sizeof *t);
    if (!t) {
        mu_fmt(c->errmsg, sizeof c->errmsg, "out of memory");
        *st = MU_ENOMEM;
        return NULL;
    }
    int fresh = mu_view_group(c->view, path, 0) == NULL;
    t->g = mu_view_group(c->view, path, 1);
    if (!t->g || mu_map_put(&c->targets, target, t) != 0) {
        free(t);
        mu_fmt(c->errmsg, sizeof c->errmsg, "out of memory");
        *st = MU_ENOMEM;
        return NULL;
    }
    t->split = sl;
    char wild[300];
    mu_fmt(wild, sizeof wild, "%s:*", svc);
    t->idempotent = mu_map_get(&c->idempotent, target) || mu_map_get(&c->idempotent, wild);
    void *p = mu_map_get(&c->svc_policy, svc);
    t->policy = p ? (mu_policy)((intptr_t)p - 1) : c->s.policy;
    if (fresh) {
        if (hosts)
            mu_view_set_static(c->view, t->g, hosts);
        else if (c->reg)
            mu_registry_watch(c->reg, t->g);
        else
            mu_view_nonode(c->view, t->g);
    }
    return t;
}

/* ------------------------------------------------------------ life cycle */

mu_status mu_client_new(struct event_base *base, const mu_config *cfg, mu_client **out)
{
    if (!base || !out)
        return MU_EINVAL;
    mu_config *dflt = NULL;
    if (!cfg && !(cfg = dflt = mu_config_new()))
        return MU_ENOMEM;
    mu_client *c = calloc(1, sizeof *c);
    mu_status st = MU_ENOMEM;
    if (!c)
        goto fail;
    c->base = base;
    c->log.fn = log_trampoline;
    c->log.user = c;
    c->log.level = MU_LOG_WARN;
    c->user_log = stderr_log;
    if ((st = apply_config(c, cfg)) != MU_OK)
        goto fail;
    st = MU_ENOMEM;
    if (getrandom(&c->rng, sizeof c->rng, GRND_NONBLOCK) != sizeof c->rng)
        c->rng = mu_now_us() ^ (uint64_t)(uintptr_t)c;
    c->rng |= 1;
    c->id_hi = mu_rand(&c->rng);
    if (mu_encoder_init(&c->enc) != 0)
        goto fail;
    c->drain = event_new(base, -1, 0, on_drain, c);
    c->view = mu_view_new(c->s.url_path, &c->log, &c->stats, on_group_changed, c);
    mu_transport_opts to = {
        .max_host_connections = mu_config_long(cfg, "max_connections_per_host"),
        .max_connections = mu_config_long(cfg, "max_connections"),
        .connect_timeout_ms = c->s.connect_timeout_ms,
        .max_response = c->s.max_response,
    };
    c->tp = mu_transport_new(base, &to);
    if (!c->drain || !c->view || !c->tp)
        goto fail;
    if (!c->s.json_headers) {
        struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json-rpc");
        h = h ? curl_slist_append(h, "Accept: application/json-rpc") : NULL;
        h = h ? curl_slist_append(h, "Expect:") : NULL;
        if (!h)
            goto fail;
        c->headers = h;
        h = curl_slist_append(NULL, "Content-Type: application/json-rpc");
        h = h ? curl_slist_append(h, "Accept: application/json-rpc") : NULL;
        h = h ? curl_slist_append(h, "Expect:") : NULL;
        h = h ? curl_slist_append(h, "Connection: close") : NULL;
        if (!h)
            goto fail;
        c->headers_close = h;
    }
    const char *zk = mu_config_str(cfg, "zk_hosts");
    if (*zk) {
        c->reg = mu_registry_new(base, c->view, zk, (int)mu_config_long(cfg, "zk_session_timeout_ms"),
                                 &c->log, &c->stats);
        if (!c->reg) {
            st = MU_EDISCOVERY;
            goto fail;
        }
    }
    /* Preload: resolving a target starts its load. */
    const char *pre = mu_config_str(cfg, "preload");
    mu_map pl = {0};
    load_list(&pl, pre);
    size_t i = 0;
    const char *k;
    void *v;
    while (mu_map_next(&pl, &i, &k, &v)) {
        mu_status pst;
        if (!mu_client_target(c, k, &pst))
            mu_log(&c->log, MU_LOG_WARN, "preload: %s", c->errmsg);
    }
    mu_map_clear(&pl);
    mu_config_free(dflt);
    *out = c;
    return MU_OK;
fail:
    mu_config_free(dflt);
    if (c)
        mu_client_destroy(c);
    return st;
}

void mu_client_destroy(mu_client *c)
{
    c->dying = 1;
    mu_calls_cancel_all(c);
    /* Closing ZooKeeper runs its completions, which still use the view. */
    mu_registry_free(c->reg);
    c->reg = NULL;
    mu_calls_free_spares(c);
    mu_yajl_cache_clear(&c->ycache);
    mu_view_free(c->view);
    mu_transport_free(c->tp);
    if (c->drain)
        event_free(c->drain);
    curl_slist_free_all(c->headers);
    curl_slist_free_all(c->headers_close);
    mu_encoder_cleanup(&c->enc);
    free(c->s.auth_token);
    size_t i = 0;
    const char *k;
    void *v;
    while (mu_map_next(&c->targets, &i, &k, &v))
        free(v);
    mu_map_clear(&c->targets);
    i = 0;
    while (mu_map_next(&c->statics, &i, &k, &v))
        free(v);
    mu_map_clear(&c->statics);
    mu_map_clear(&c->idempotent);
    mu_map_clear(&c->svc_policy);
    for (mu_watch *w = c->watches, *n; w; w = n) {
        n = w->next;
        free(w->target);
        free(w);
    }
    free(c);
}

void mu_client_free(mu_client *c)
{
    if (!c)
        return;
    if (c->in_log) {
        /* From the log sink, which runs deep inside the client's own work:
         * the drain event does it as soon as the loop turns. */
        c->free_requested = 1;
        event_active(c->drain, EV_TIMEOUT, 0);
        return;
    }
    c->free_requested = 0;
    if (c->depth > 0) {
        /* Inside a callback: end the calls now, release the memory when the
         * outermost callback returns. */
        if (!c->dying) {
            c->dying = 1;
            mu_calls_cancel_all(c);
        }
        return;
    }
    mu_client_destroy(c);
}

void mu_client_set_log(mu_client *c, mu_log_level level, mu_log_fn fn, void *user)
{
    if (!c)
        return;
    c->user_log = fn;
    c->user_log_arg = user;
    c->log.level = level;
}

const char *mu_client_errmsg(const mu_client *c)
{
    return c ? c->errmsg : "";
}

void mu_client_stats_get(const mu_client *c, mu_client_stats *st)
{
    if (!c || !st)
        return;
    *st = c->stats;
    st->connections = mu_transport_connections_opened(c->tp);
}

int mu_client_zk_connected(const mu_client *c)
{
    return c && mu_registry_connected(c->reg);
}

/* ---------------------------------------------------------- introspection */

mu_status mu_client_endpoints(mu_client *c, const char *target,
                              void (*fn)(const mu_endpoint_info *eps, size_t n, void *user),
                              void *user)
{
    if (!c || !target || !fn)
        return MU_EINVAL;
    mu_status tst;
    mu_target *t = mu_client_target(c, target, &tst);
    if (!t)
        return tst;
    if (t->g->state == MU_GROUP_LOADING) {
        mu_fmt(c->errmsg, sizeof c->errmsg, "providers of %s are still loading", t->g->path);
        return MU_ENOPROVIDER;
    }
    size_t n = mu_pool_size(t->g->pool);
    mu_endpoint_info *info = n ? calloc(n, sizeof *info) : NULL;
    if (n && !info)
        return MU_ENOMEM;
    uint64_t now = mu_now_us();
    for (size_t i = 0; i < n; i++) {
        mu_endpoint *e = mu_pool_get(t->g->pool, i);
        info[i].address = e->key;
        info[i].pending = e->pending;
        info[i].calls = e->calls;
        info[i].failures = e->failures;
        info[i].down = e->down_until_us > now;
    }
    c->depth++;
    fn(info, n, user);
    c->depth--;
    free(info);
    if (c->dying && c->depth == 0)
        mu_client_destroy(c);
    return MU_OK;
}

mu_status mu_client_watch(mu_client *c, const char *target,
                          void (*fn)(const char *target, size_t n, void *user), void *user)
{
    if (!c || !target)
        return MU_EINVAL;
    mu_status tst;
    mu_target *t = mu_client_target(c, target, &tst);
    if (!t)
        return tst;
    mu_watch **pp = &c->watches;
    while (*pp && strcmp((*pp)->target, target) != 0)
        pp = &(*pp)->next;
    if (!fn) {
        if (*pp && c->depth > 0) {
            (*pp)->fn = NULL; /* the drain may be walking the list: it unlinks it */
            (*pp)->dirty = 0;
        } else if (*pp) {
            mu_watch *w = *pp;
            *pp = w->next;
            free(w->target);
            free(w);
        }
        return MU_OK;
    }
    mu_watch *w = *pp;
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w || !(w->target = strdup(target))) {
            free(w);
            return MU_ENOMEM;
        }
        *pp = w;
    }
    w->g = t->g;
    w->fn = fn;
    w->user = user;
    if (t->g->state != MU_GROUP_LOADING) {
        w->dirty = 1;
        mu_client_kick(c);
    }
    return MU_OK;
}

struct yajl_val_s *mu_result_parse(const mu_result *r, char *err, size_t errlen)
{
    if (!r || !r->result)
        return NULL;
    return yajl_tree_parse(r->result, err, errlen);
}
