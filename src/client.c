/*
 * client: the public face. Owns struct mu_client, which holds the modules
 * (view, registry, transport, health, calls) and what is the client's own:
 * the logger, the counters, the target table, user watches and the life
 * (reentrancy) state. A call enters here, is resolved to a target here
 * (client -> view -> registry), and is handed to the call layer, which
 * never calls back except through the functions handed to it.
 */
#include "config.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "microutil/microutil_yajl.h"

#include "balance.h"
#include "call.h"
#include "client.h"
#include "codec.h"
#include "conf.h"
#include "health.h"
#include "life.h"
#include "map.h"
#include "metrics.h"
#include "registry.h"
#include "transport.h"
#include "snapshot.h"
#include "view.h"

/* A user watch on a target (mu_client_watch). */
typedef struct mu_watch {
    char *target;
    mu_group *g;
    mu_watch_fn fn; /* NULL: removed from inside a callback, unlinked later */
    void *user;
    int dirty;
    struct mu_watch *next;
} mu_watch;

struct mu_client {
    struct event_base *base;
    mu_life life;
    mu_logger log;          /* every module logs through it (log_trampoline) */
    mu_log_fn user_log;
    void *user_log_arg;
    mu_client_stats stats;  /* modules count into it */
    char errmsg[512];
    /* what resolving a target needs */
    char root[256];
    int per_service;
    mu_svc_opts defaults;    /* the global values of the per-service keys */
    int tls_verify;          /* tls_verify = on */
    int tls_warned;          /* the tls_verify = off warning was logged */
    char *auth_token;       /* lent to the call layer */
    mu_map idempotent;      /* "svc:method" / "svc:*" -> (void *)1 */
    mu_map svc_opts;        /* svc -> mu_svc_opts (owned): services with KEY.SERVICE keys */
    mu_map statics;         /* svc -> hosts string (owned) */
    mu_map targets;         /* target -> mu_target (owned) */
    mu_watch *watches;
    struct event *notify;   /* runs watchers; carries out a free asked from the log sink */
    /* the modules */
    mu_view *view;
    mu_registry *reg;       /* NULL without ZooKeeper */
    mu_snapshot *snap;      /* NULL without snapshot_file */
    struct event *stale_ev; /* snapshot_stale_after_ms after the start */
    int stale_ok;           /* it fired with ZooKeeper unreachable: use the snapshot */
    mu_transport *tp;
    mu_health *health;
    mu_calls *calls;
};

static void destroy(void *owner);

/* ------------------------------------------------------------------ log */

static void stderr_log(mu_log_level level, const char *msg, void *user)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    MU_UNUSED(user);
    fprintf(stderr, "microutil %s: %s\n", names[level], msg);
}

/* Every module logs through here, so that the user's sink runs inside the
 * client's life, marked as the sink: it must not free the client under
 * our feet, nor start calls deep inside our own work. */
static void log_trampoline(mu_log_level level, const char *msg, void *user)
{
    mu_client *c = user;
    if (!c->user_log)
        return;
    mu_life_enter(&c->life, 1);
    c->user_log(level, msg, c->user_log_arg);
    mu_life_leave(&c->life, 1); /* never destroys: the sink's free is deferred */
}

/* -------------------------------------------------------------- watches */

static void unlink_removed_watches(mu_client *c)
{
    for (mu_watch **pp = &c->watches; *pp;) {
        mu_watch *w = *pp;
        if (w->fn) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        free(w->target);
        free(w);
    }
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
    MU_UNUSED(fd);
    MU_UNUSED(what);
    mu_client *c = arg;
    if (c->life.state == MU_LIFE_FREE_ASKED) {
        destroy(c);
        return;
    }
    mu_life_enter(&c->life, 0);
    for (mu_watch *w = c->watches; w && c->life.state == MU_LIFE_LIVE; w = w->next) {
        if (!w->dirty || !w->fn)
            continue;
        w->dirty = 0;
        w->fn(w->target, mu_pool_size(w->g->pool), w->user);
    }
    if (c->life.state == MU_LIFE_LIVE)
        unlink_removed_watches(c);
    mu_life_leave(&c->life, 0);
}

/* The view's news: waiting calls go on, watchers hear of it. */
static void on_group_changed(mu_group *g, void *user)
{
    mu_client *c = user;
    mu_snapshot_changed(c->snap);
    if (c->calls)
        mu_calls_group_changed(c->calls, g);
    int notify = 0;
    for (mu_watch *w = c->watches; w; w = w->next)
        if (w->g == g && w->fn)
            notify = w->dirty = 1;
    if (notify)
        event_active(c->notify, EV_TIMEOUT, 0);
}

static void discovery_state(void *user, char *buf, size_t cap)
{
    mu_client *c = user;
    if (c->reg && !mu_registry_connected(c->reg))
        mu_fmt(buf, cap, "ZooKeeper %s is not reachable", mu_registry_hosts(c->reg));
    else
        buf[0] = '\0';
}

/* --------------------------------------------------------------- settings */

static int put_listed(const char *item, size_t len, void *user)
{
    char key[256];
    if (len && len < sizeof key) {
        memcpy(key, item, len);
        key[len] = '\0';
        mu_map_put(user, key, (void *)1);
    }
    return 0;
}

static void add_static(const char *svc, const char *hosts, void *user)
{
    mu_client *c = user;
    char *h = strdup(hosts);
    if (h && mu_map_put(&c->statics, svc, h) != 0)
        free(h);
}

/* The per-service keys' values from cfg: key "policy" or "KEY" for the
 * client, "KEY.SERVICE" for one service. Values were validated when set.
 * Returns 0 for a key it does not know. */
static int set_svc_opt(mu_svc_opts *o, const char *key, const char *value)
{
    int v = (int)strtol(value, NULL, 10);
    if (strcmp(key, "policy") == 0)
        o->policy = (mu_policy)mu_policy_parse(value);
    else if (strcmp(key, "timeout_ms") == 0)
        o->timeout_ms = v;
    else if (strcmp(key, "deadline_ms") == 0)
        o->deadline_ms = v;
    else if (strcmp(key, "retries") == 0)
        o->retries = v;
    else if (strcmp(key, "hedge_ms") == 0)
        o->hedge_ms = v;
    else if (strcmp(key, "hedge") == 0)
        o->hedge_pm = *value ? mu_parse_percentile(value) : 0;
    else if (strcmp(key, "tls") == 0)
        o->tls = strcmp(value, "on") == 0;
    else if (strcmp(key, "empty_protection") == 0)
        o->empty_protection = strcmp(value, "on") == 0;
    else if (strcmp(key, "slow_start_ms") == 0)
        o->slow_start_ms = v;
    else if (strcmp(key, "eject_ms") == 0)
        o->eject.eject_ms = v;
    else if (strcmp(key, "eject_max_ms") == 0)
        o->eject.eject_max_ms = v;
    else if (strcmp(key, "eject_after_failures") == 0)
        o->eject.eject_after = v;
    else if (strcmp(key, "max_ejected_percent") == 0)
        o->eject.max_ejected_pct = v;
    else
        return 0;
    return 1;
}

static void add_override(const char *key, const char *svc, const char *value, void *user)
{
    mu_client *c = user;
    mu_svc_opts *o = mu_map_get(&c->svc_opts, svc);
    if (!o && (o = malloc(sizeof *o)) != NULL) {
        *o = c->defaults;
        if (mu_map_put(&c->svc_opts, svc, o) != 0) {
            free(o);
            o = NULL;
        }
    }
    if (o) /* out of memory: the service keeps the client's values */
        (void)set_svc_opt(o, key, value); /* known: apply_svc_opts checked every key */
}

/* conf.c's per-service keys, each of which the client must apply: one it
 * does not know (a key added to conf.c alone) fails every client, so that
 * no test run can miss it. */
static mu_status apply_svc_opts(mu_client *c, const mu_config *cfg)
{
    size_t n;
    const char *const *keys = mu_config_service_keys(&n);
    for (size_t i = 0; i < n; i++)
        if (!set_svc_opt(&c->defaults, keys[i], mu_config_str(cfg, keys[i]))) {
            mu_log(&c->log, MU_LOG_ERROR, "per-service key %s: not applied by the client",
                   keys[i]);
            return MU_ECONFIG;
        }
    mu_config_each_override(cfg, add_override, c);
    return MU_OK;
}

static mu_log_level level_of(const char *name)
{
    return strcmp(name, "error") == 0   ? MU_LOG_ERROR
           : strcmp(name, "info") == 0  ? MU_LOG_INFO
           : strcmp(name, "debug") == 0 ? MU_LOG_DEBUG
                                        : MU_LOG_WARN;
}

/* What the client itself keeps of the configuration. Keys and values were
 * validated when set, so names parse. */
static mu_status apply_config(mu_client *c, const mu_config *cfg, mu_proto *proto)
{
    const mu_proto_info *pi = mu_proto_find(mu_config_str(cfg, "protocol"), proto);
    c->per_service = mu_config_is_set(cfg, "layout")
                         ? strcmp(mu_config_str(cfg, "layout"), "per-service") == 0
                         : pi->per_service;
    mu_fmt(c->root, sizeof c->root, "%s", mu_config_str(cfg, "zk_root"));
    c->auth_token = strdup(mu_config_str(cfg, "auth_token"));
    if (!c->auth_token)
        return MU_ENOMEM;
    c->log.level = level_of(mu_config_str(cfg, "log_level"));
    mu_list_each(mu_config_str(cfg, "idempotent"), put_listed, &c->idempotent);
    mu_config_each_service(cfg, "static", add_static, c);
    return apply_svc_opts(c, cfg);
}

static mu_call_settings call_settings(const mu_client *c, const mu_config *cfg, mu_proto proto)
{
    mu_call_settings s = {
        .deadline_ms = (int)mu_config_long(cfg, "deadline_ms"),
        .max_per_host = (int)mu_config_long(cfg, "max_connections_per_host"),
        .max_calls = (int)mu_config_long(cfg, "max_calls"),
        .max_queue = (int)mu_config_long(cfg, "max_queue_per_host"),
        .budget_pct = (int)mu_config_long(cfg, "retry_budget_percent"),
        .budget_min_per_s = (int)mu_config_long(cfg, "retry_budget_min_per_s"),
        .backoff_ms = (int)mu_config_long(cfg, "connect_backoff_ms"),
        .backoff_max_ms = (int)mu_config_long(cfg, "connect_backoff_max_ms"),
        .proto = proto,
        .auth_token = c->auth_token,
        .max_response = (size_t)mu_config_long(cfg, "max_response_bytes"),
    };
    if (s.backoff_max_ms < s.backoff_ms)
        s.backoff_max_ms = s.backoff_ms;
    return s;
}

/* ---------------------------------------------------------------- targets */

/* Well-formed UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF): a target goes into the JSON request and the ZooKeeper path as
 * is. */
static int utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                                  : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!len || i + len > n)
            return 0;
        uint32_t cp = len == 1 ? c : (uint32_t)(c & (0x7f >> len));
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

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

/* Checks "svc:method"; copies svc. 0, or -1 with errmsg set. */
static int split_target(mu_client *c, const char *target, char *svc, size_t cap, size_t *split)
{
    const char *colon = strchr(target, ':');
    size_t tl = strlen(target);
    if (tl > 512) {
        mu_fmt(c->errmsg, sizeof c->errmsg,
               "bad target '%.60s...': %zu bytes long, over the 512 allowed", target, tl);
        return -1;
    }
    if (!utf8_ok((const unsigned char *)target, tl)) {
        mu_fmt(c->errmsg, sizeof c->errmsg,
               "bad target (%zu bytes): not valid UTF-8; service and method names are sent "
               "in the JSON request and the ZooKeeper path as they are",
               tl);
        return -1;
    }
    if (!colon || strchr(colon + 1, ':') || !valid_part(target, (size_t)(colon - target)) ||
        !valid_part(colon + 1, tl - (size_t)(colon - target) - 1)) {
        mu_fmt(c->errmsg, sizeof c->errmsg,
               "bad target '%.200s': expected SERVICE:METHOD with exactly one ':' and no "
               "spaces or '/'",
               target);
        return -1;
    }
    *split = (size_t)(colon - target);
    if (*split >= cap) {
        mu_fmt(c->errmsg, sizeof c->errmsg, "bad target '%.200s': service name too long", target);
        return -1;
    }
    memcpy(svc, target, *split);
    svc[*split] = '\0';
    return 0;
}

/* A group ZooKeeper has not listed, while it cannot be reached: from the
 * snapshot, marked stale, if the snapshot has it. */
static void try_stale(mu_group *g, void *user)
{
    mu_client *c = user;
    const char *hosts = mu_snapshot_hosts(c->snap, g->path);
    if (hosts && g->state == MU_GROUP_LOADING)
        mu_view_set_stale(c->view, g, hosts);
}

static void on_stale(evutil_socket_t fd, short what, void *arg)
{
    MU_UNUSED(fd);
    MU_UNUSED(what);
    mu_client *c = arg;
    if (mu_client_zk_connected(c))
        return;
    c->stale_ok = 1;
    mu_view_each_group(c->view, try_stale, c);
}

/* A new group starts loading: from the static list, or from ZooKeeper. */
static void load_group(mu_client *c, mu_group *g, const char *hosts)
{
    if (hosts)
        mu_view_set_static(c->view, g, hosts);
    else if (c->reg)
        mu_registry_watch(c->reg, g);
    else
        mu_view_nonode(c->view, g);
    if (!hosts && c->stale_ok && c->reg && !mu_client_zk_connected(c))
        try_stale(g, c);
}

/* Resolves "svc:method" (making and loading its group). NULL with
 * c->errmsg and *st (MU_EINVAL or MU_ENOMEM) set on failure. */
static mu_target *resolve(mu_client *c, const char *target, mu_status *st)
{
    *st = MU_EINVAL;
    mu_target *t = mu_map_get(&c->targets, target);
    char svc[256], path[1024], wild[300];
    size_t split;
    if (t || split_target(c, target, svc, sizeof svc, &split) != 0)
        return t;
    const char *hosts = mu_map_get(&c->statics, svc);
    if (hosts)
        mu_fmt(path, sizeof path, "static:%s", svc);
    else if (c->per_service)
        mu_fmt(path, sizeof path, "%s/%s/provider", c->root, svc);
    else
        mu_fmt(path, sizeof path, "%s/%s/%s/provider", c->root, svc, target + split + 1);
    const mu_svc_opts *so = mu_map_get(&c->svc_opts, svc);
    if (!so)
        so = &c->defaults;
    int fresh = mu_view_group(c->view, path, 0) == NULL;
    mu_group *g = mu_view_group(c->view, path, 1);
    if (g && fresh) {
        g->tls = so->tls;
        g->empty_protection = so->empty_protection && !c->per_service;
        if (so->tls && !c->tls_verify && !c->tls_warned++)
            mu_log(&c->log, MU_LOG_WARN,
                   "tls_verify = off: providers' certificates and host names are NOT checked "
                   "(anyone on the path can read and change the calls)");
        load_group(c, g, hosts); /* loading, even if the target cannot be kept */
    }
    t = calloc(1, sizeof *t);
    if (!g || !t || mu_map_put(&c->targets, target, t)) {
        free(t);
        mu_fmt(c->errmsg, sizeof c->errmsg, "out of memory");
        *st = MU_ENOMEM;
        return NULL;
    }
    t->g = g;
    t->split = split;
    mu_fmt(wild, sizeof wild, "%s:*", svc);
    t->idempotent = mu_map_get(&c->idempotent, target) || mu_map_get(&c->idempotent, wild);
    t->o = so;
    mu_pool_set_slow_start(g->pool, (uint64_t)t->o->slow_start_ms * 1000u);
    return t;
}

/* ------------------------------------------------------------ life cycle */

static uint64_t seed(const mu_client *c)
{
    uint64_t s;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) != sizeof s)
        s = mu_now_us() ^ (uint64_t)(uintptr_t)c;
    return s | 1;
}

/* The modules, lowest first. */
static mu_status make_modules(mu_client *c, const mu_config *cfg, mu_proto proto)
{
    const char *path = mu_config_str(cfg, "path");
    c->notify = event_new(c->base, -1, 0, on_notify, c);
    c->view = mu_view_new(*path ? path : mu_proto_get(proto)->path, &c->log, &c->stats,
                          on_group_changed, c);
    mu_transport_opts to = {
        .max_host_connections = mu_config_long(cfg, "max_connections_per_host"),
        .max_connections = mu_config_long(cfg, "max_connections"),
        .connect_timeout_ms = mu_config_long(cfg, "connect_timeout_ms"),
        .max_response = (size_t)mu_config_long(cfg, "max_response_bytes"),
        .max_buffered = (size_t)mu_config_long(cfg, "max_buffered_bytes"),
        .tls_ca_file = mu_config_str(cfg, "tls_ca_file"),
        .tls_verify = strcmp(mu_config_str(cfg, "tls_verify"), "on") == 0,
    };
    c->tls_verify = to.tls_verify;
    c->tp = mu_transport_new(c->base, &to);
    mu_health_opts ho = {
        .stall_ms = (int)mu_config_long(cfg, "keepalive_stall_ms"),
        .seed = seed(c) ^ 0x9e3779b97f4a7c15ull,
    };
    c->health = mu_health_new(&ho, &c->log);
    if (!c->notify || !c->view || !c->tp || !c->health)
        return MU_ENOMEM;
    const char *snap = mu_config_str(cfg, "snapshot_file");
    if (*snap && !(c->snap = mu_snapshot_new(c->base, snap, c->view, &c->log)))
        return MU_ENOMEM;
    mu_calls_deps d = {
        .base = c->base, .tp = c->tp, .view = c->view, .health = c->health, .log = &c->log,
        .stats = &c->stats, .life = &c->life, .discovery_state = discovery_state, .user = c,
    };
    mu_call_settings s = call_settings(c, cfg, proto);
    if (!(c->calls = mu_calls_new(&d, &s, seed(c))))
        return MU_ENOMEM;
    const char *zk = mu_config_str(cfg, "zk_hosts");
    if (*zk && !(c->reg = mu_registry_new(c->base, c->view, zk,
                                          (int)mu_config_long(cfg, "zk_session_timeout_ms"),
                                          &c->log, &c->stats, seed(c))))
        return MU_EDISCOVERY;
    if (c->snap && c->reg) {
        long ms = mu_config_long(cfg, "snapshot_stale_after_ms");
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        if (!(c->stale_ev = evtimer_new(c->base, on_stale, c)) || evtimer_add(c->stale_ev, &tv) != 0)
            return MU_ENOMEM;
    }
    return MU_OK;
}

static int preload_one(const char *item, size_t len, void *user)
{
    mu_client *c = user;
    char target[600];
    mu_status st;
    if (len && len < sizeof target) {
        memcpy(target, item, len);
        target[len] = '\0';
        if (!resolve(c, target, &st))
            mu_log(&c->log, MU_LOG_WARN, "preload: %s", c->errmsg);
    }
    return 0;
}

/* Process-wide state of the libraries below, set up exactly once, whatever
 * the number of threads making clients ("Threads and process-wide state"
 * in microutil.h). */
static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_failed;

static void global_init(void)
{
    global_failed = mu_transport_global_init() != 0;
    mu_registry_global_init();
}

mu_status mu_client_new(struct event_base *base, const mu_config *cfg, mu_client **out)
{
    if (!base || !out)
        return MU_EINVAL;
    if (pthread_once(&global_once, global_init) != 0 || global_failed)
        return MU_ENOMEM;
    mu_config *dflt = NULL;
    if (!cfg && !(cfg = dflt = mu_config_new()))
        return MU_ENOMEM;
    mu_client *c = calloc(1, sizeof *c);
    mu_status st = MU_ENOMEM;
    mu_proto proto = MU_PROTO_1_0_2;
    if (c) {
        c->base = base;
        c->life.destroy = destroy;
        c->life.owner = c;
        c->log.fn = log_trampoline;
        c->log.user = c;
        c->user_log = stderr_log;
        st = apply_config(c, cfg, &proto);
    }
    if (st == MU_OK)
        st = make_modules(c, cfg, proto);
    if (st == MU_OK) {
        /* Preload: resolving a target starts its load. */
        mu_list_each(mu_config_str(cfg, "preload"), preload_one, c);
        *out = c;
    } else if (c) {
        destroy(c);
    }
    mu_config_free(dflt);
    return st;
}

static void free_maps(mu_client *c)
{
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
    i = 0;
    while (mu_map_next(&c->svc_opts, &i, &k, &v))
        free(v);
    mu_map_clear(&c->svc_opts);
}

/* Ends every call (each callback fires with MU_ECANCELLED), then frees
 * every module, highest first. */
static void destroy(void *owner)
{
    mu_client *c = owner;
    c->life.state = MU_LIFE_GONE;
    if (c->calls)
        mu_calls_cancel_all(c->calls);
    /* Closing ZooKeeper runs its completions, which still use the view. */
    mu_registry_free(c->reg);
    c->reg = NULL;
    if (c->stale_ev)
        event_free(c->stale_ev);
    mu_snapshot_free(c->snap); /* writes a pending change: the view is still whole */
    c->snap = NULL;
    mu_calls_free(c->calls);
    mu_view_free(c->view);
    mu_health_free(c->health);
    mu_transport_free(c->tp);
    if (c->notify)
        event_free(c->notify);
    free(c->auth_token);
    free_maps(c);
    for (mu_watch *w = c->watches, *n; w; w = n) {
        n = w->next;
        free(w->target);
        free(w);
    }
    free(c);
}

void mu_client_free(mu_client *c)
{
    if (!c || c->life.state == MU_LIFE_GONE)
        return;
    if (c->life.sink) {
        /* From the log sink, deep inside the client's own work: the
         * client's event does it as soon as the loop turns (unless a
         * callback below already freed it: then its return does). */
        if (c->life.state == MU_LIFE_LIVE)
            c->life.state = MU_LIFE_FREE_ASKED;
        event_active(c->notify, EV_TIMEOUT, 0);
        return;
    }
    if (mu_life_busy(&c->life)) {
        /* Inside a callback: end the calls now, release the memory when the
         * outermost callback returns. */
        if (c->life.state != MU_LIFE_DYING) {
            c->life.state = MU_LIFE_DYING;
            mu_calls_cancel_all(c->calls);
        }
        return;
    }
    destroy(c);
}

/* --------------------------------------------------------------- calls */

void mu_call_opts_init(mu_call_opts *opts)
{
    static const mu_call_opts init = MU_CALL_OPTS_INIT;
    if (opts)
        *opts = init;
}

/* The caller's options, of whatever version it was compiled against. */
static int read_opts(mu_client *c, const mu_call_opts *opts, mu_call_opts *o)
{
    static const mu_call_opts init = MU_CALL_OPTS_INIT;
    *o = init;
    if (opts) {
        size_t n = opts->size < sizeof *o ? opts->size : sizeof *o;
        if (n < sizeof(size_t)) {
            mu_fmt(c->errmsg, sizeof c->errmsg,
                   "mu_call: opts->size is not set (use MU_CALL_OPTS_INIT)");
            return -1;
        }
        memcpy(o, opts, n);
    }
    if (o->timeout_ms < 0 || o->deadline_ms < 0 || o->retries > 10 || o->retries < -1) {
        mu_fmt(c->errmsg, sizeof c->errmsg,
               "mu_call: bad option (timeout_ms and deadline_ms >= 0, retries -1 to 10)");
        return -1;
    }
    return 0;
}

mu_status mu_call(mu_client *c, const char *target, const char *args, const char *kwargs,
                  const mu_call_opts *opts, mu_call_cb cb, void *user, mu_call_id *id)
{
    if (!c)
        return MU_EINVAL;
    const char *refuse = c->life.state != MU_LIFE_LIVE ? "mu_call: the client is being freed"
                         : c->life.sink                 ? "mu_call: not from inside the log sink"
                         : !target || !cb ? "mu_call: target and callback must not be NULL"
                                          : NULL;
    mu_call_opts o;
    if (refuse) {
        mu_fmt(c->errmsg, sizeof c->errmsg, "%s", refuse);
        return MU_EINVAL;
    }
    if (read_opts(c, opts, &o) != 0)
        return MU_EINVAL;
    mu_status st = MU_OK;
    mu_target *t = resolve(c, target, &st);
    if (!t)
        return st;
    return mu_calls_start(c->calls, t, target + t->split + 1, args, kwargs, &o, cb, user, id,
                          c->errmsg, sizeof c->errmsg);
}

int mu_call_cancel(mu_client *c, mu_call_id id)
{
    return c ? mu_calls_cancel(c->calls, id) : 0;
}

/* -------------------------------------------------------------- the rest */

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

void mu_client_stats_get(const mu_client *c, mu_client_stats *st, size_t size)
{
    if (!c || !st)
        return;
    mu_client_stats all = c->stats;
    all.connections = mu_transport_connections_opened(c->tp);
    all.ejections = mu_health_ejections(c->health);
    all.response_bytes_peak = mu_transport_buffered_peak(c->tp);
    memcpy(st, &all, size < sizeof all ? size : sizeof all);
}

mu_registry *mu_client_registry(const mu_client *c)
{
    return c ? c->reg : NULL;
}

int mu_client_zk_connected(const mu_client *c)
{
    return c && mu_registry_connected(c->reg);
}

const char *mu_version(void)
{
    return MU_VERSION_STRING;
}

unsigned long mu_version_num(void)
{
    return MU_VERSION_NUM;
}

/* One visit of the endpoints: the infos and the pointers handed over. */
static mu_status visit_endpoints(mu_client *c, mu_group *g, mu_endpoints_fn fn, void *user)
{
    size_t n = mu_pool_size(g->pool);
    mu_endpoint_info *info = n ? calloc(n, sizeof *info) : NULL;
    const mu_endpoint_info **ptrs = n ? calloc(n, sizeof *ptrs) : NULL;
    if (n && (!info || !ptrs)) {
        free(info);
        free(ptrs);
        return MU_ENOMEM;
    }
    uint64_t now = mu_now_us();
    for (size_t i = 0; i < n; i++) {
        mu_endpoint *e = mu_pool_get(g->pool, i);
        info[i].address = e->key;
        info[i].pending = e->pending;
        info[i].calls = e->health.calls;
        info[i].failures = e->health.failures;
        info[i].down = !mu_health_up(e, now);
        info[i].ejections = e->health.ejections;
        info[i].stale = g->stale;
        info[i].down_ms = info[i].down ? (long long)((e->health.down_until_us - now) / 1000) : 0;
        ptrs[i] = &info[i];
    }
    mu_life_enter(&c->life, 0);
    fn(ptrs, n, user);
    free(info);
    free(ptrs);
    mu_life_leave(&c->life, 0); /* may destroy the client */
    return MU_OK;
}

mu_status mu_client_endpoints(mu_client *c, const char *target, mu_endpoints_fn fn, void *user)
{
    if (!c || !target || !fn || c->life.state != MU_LIFE_LIVE)
        return MU_EINVAL;
    mu_status tst;
    mu_target *t = resolve(c, target, &tst);
    if (!t)
        return tst;
    if (t->g->state == MU_GROUP_LOADING) {
        mu_fmt(c->errmsg, sizeof c->errmsg, "providers of %s are still loading", t->g->path);
        return MU_ENOPROVIDER;
    }
    return visit_endpoints(c, t->g, fn, user);
}

/* -------------------------------------------------------------- metrics */

/* The rows metrics.c reads: each target ("svc:method") and each endpoint
 * in the view, with the counters their owners keep (metrics.h). */
static void met_targets(void *src, void (*fn)(const mu_met_target_row *row, void *arg), void *arg)
{
    mu_client *c = src;
    size_t i = 0;
    const char *k;
    void *v;
    while (mu_map_next(&c->targets, &i, &k, &v)) {
        const mu_target *t = v;
        char svc[520]; /* split_target: a target is at most 512 bytes */
        size_t n = t->split < sizeof svc ? t->split : sizeof svc - 1;
        memcpy(svc, k, n);
        svc[n] = '\0';
        mu_met_target_row row = {svc, k + t->split + 1, &t->met};
        fn(&row, arg);
    }
}

typedef struct met_ep_walk {
    void (*fn)(const mu_met_ep_row *row, void *arg);
    void *arg;
} met_ep_walk;

static void met_endpoint(const mu_endpoint *e, void *user)
{
    met_ep_walk *w = user;
    mu_met_ep_row row = {e->key, &e->metrics, e->health.ejections, e->pending};
    w->fn(&row, w->arg);
}

static void met_endpoints(void *src, void (*fn)(const mu_met_ep_row *row, void *arg), void *arg)
{
    mu_client *c = src;
    met_ep_walk w = {fn, arg};
    mu_view_each_endpoint(c->view, met_endpoint, &w);
}

mu_status mu_client_metrics(mu_client *c, mu_metrics_fn fn, void *user)
{
    if (!c || !fn || c->life.state != MU_LIFE_LIVE)
        return MU_EINVAL;
    mu_met_source s = {met_targets, met_endpoints, c};
    /* As the log sink: mu_call() is refused (no new target while the
     * table is walked) and a free waits for the loop's next turn. */
    mu_life_enter(&c->life, 1);
    mu_metrics_visit(&s, fn, user);
    mu_life_leave(&c->life, 1); /* never destroys */
    return MU_OK;
}

mu_status mu_metrics_write(mu_client *c, char *buf, size_t cap, size_t *needed)
{
    if (!c || (!buf && cap))
        return MU_EINVAL;
    mu_met_source s = {met_targets, met_endpoints, c};
    return mu_metrics_text(&s, buf, cap, needed);
}

static void unwatch(mu_client *c, mu_watch **pp)
{
    mu_watch *w = *pp;
    if (!w)
        return;
    if (mu_life_busy(&c->life)) {
        w->fn = NULL; /* the notify event may be walking the list: it unlinks it */
        w->dirty = 0;
        return;
    }
    *pp = w->next;
    free(w->target);
    free(w);
}

mu_status mu_client_watch(mu_client *c, const char *target, mu_watch_fn fn, void *user)
{
    if (!c || !target || c->life.state != MU_LIFE_LIVE)
        return MU_EINVAL;
    mu_status tst;
    mu_target *t = resolve(c, target, &tst);
    if (!t)
        return tst;
    mu_watch **pp = &c->watches;
    while (*pp && strcmp((*pp)->target, target) != 0)
        pp = &(*pp)->next;
    if (!fn) {
        unwatch(c, pp);
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
        event_active(c->notify, EV_TIMEOUT, 0);
    }
    return MU_OK;
}

/* yajl_tree builds and frees a tree by recursion: a result nested 300,000
 * levels deep (600 KB, well under max_response_bytes) overflowed the stack.
 * 1 if text nests deeper than max (brackets outside strings and outside
 * comments, which yajl_tree_parse allows: a '"' in a comment is no string,
 * and hid every bracket after it). */
static int nests_deeper(const char *text, size_t len, size_t max)
{
    size_t depth = 0;
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = text[i];
        if (in_string) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_string = 0;
        } else if (ch == '/' && i + 1 < len && text[i + 1] == '*') {
            for (i += 2; i < len && !(text[i] == '*' && i + 1 < len && text[i + 1] == '/'); i++)
                ;
            i++; /* on the closing '/' (or past the end) */
        } else if (ch == '/' && i + 1 < len && text[i + 1] == '/') {
            while (i < len && text[i] != '\n')
                i++;
        } else if (ch == '"') {
            in_string = 1;
        } else if (ch == '[' || ch == '{') {
            if (++depth > max)
                return 1;
        } else if ((ch == ']' || ch == '}') && depth > 0) {
            depth--;
        }
    }
    return 0;
}

yajl_val mu_result_parse(const mu_result *r, char *err, size_t errlen)
{
    if (!r || !r->result)
        return NULL;
    if (nests_deeper(r->result, r->result_len, MU_RESULT_MAX_DEPTH)) {
        if (err && errlen)
            mu_fmt(err, errlen, "the result nests deeper than %d levels", MU_RESULT_MAX_DEPTH);
        return NULL;
    }
    return yajl_tree_parse(r->result, err, errlen);
}
