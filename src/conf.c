#include "config.h"
#include "conf.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>



enum kind { K_STR, K_INT, K_ENUM, K_HOSTS, K_LIST, K_PATH, K_URLPATH, K_PCTL };

typedef struct key_spec {
    const char *name;
    const char *def;
    enum kind kind;
    long min, max;          /* K_INT */
    const char *choices;    /* K_ENUM: "a|b|c" */
    const char *help;
} key_spec;

/* The one table of keys: code, files, --set and the environment all use it. */
static const key_spec keys[] = {
    {"zk_hosts", "127.0.0.1:2181", K_HOSTS, 0, 0, NULL,
     "ZooKeeper connect string host:port[,host:port...]; empty = static providers only"},
    {"zk_session_timeout_ms", "10000", K_INT, 1000, 600000, NULL, "ZooKeeper session timeout"},
    {"zk_root", "/dubbo", K_PATH, 0, 0, NULL, "registry root node"},
    {"layout", "per-method", K_ENUM, 0, 0, "per-method|per-service",
     "registry layout: per-method (microutil 1.0.2) or per-service (1.0.8)"},
    {"protocol", "1.0.2", K_ENUM, 0, 0, "1.0.2|1.0.3|1.0.4|1.0.8",
     "wire variant: 1.0.2 posts to /json/, 1.0.3 and later to /jsonp/; 1.0.4 (to 1.0.7) and "
     "1.0.8 send JSON headers and the auth token; 1.0.8 registers per service"},
    {"path", "", K_URLPATH, 0, 0, NULL,
     "HTTP path override (default from protocol: /json/ for 1.0.2, /jsonp/ after)"},
    {"auth_token", "micromicro", K_STR, 0, 0, NULL,
     "shared secret for the 1.0.4+ micro-auth-token header (never logged)"},
    {"policy", "ewma", K_ENUM, 0, 0, "ewma|round-robin|random|least-pending|p2c|hash",
     "balancing policy; policy.SERVICE overrides per service"},
    {"timeout_ms", "10000", K_INT, 1, 3600000, NULL,
     "per-attempt timeout (env MICRO_CLIENT_TIMEOUT, in seconds)"},
    {"connect_timeout_ms", "1000", K_INT, 1, 600000, NULL, "TCP connect timeout per attempt"},
    {"deadline_ms", "30000", K_INT, 1, 86400000, NULL,
     "bound on a whole call: discovery wait and all attempts"},
    {"retries", "2", K_INT, 0, 10, NULL, "extra attempts, each on another provider when one exists"},
    {"idempotent", "", K_LIST, 0, 0, NULL,
     "comma list of SERVICE:METHOD (or SERVICE:*) safe to retry after a timeout"},
    {"preload", "", K_LIST, 0, 0, NULL, "comma list of SERVICE:METHOD to load at start"},
    {"max_connections_per_host", "32", K_INT, 1, 100000, NULL,
     "keep-alive connections per provider; more calls queue"},
    {"max_calls", "10000", K_INT, 1, 10000000, NULL,
     "calls started and not yet completed, per client; beyond it mu_call() fails at once "
     "with MU_EOVERLOADED"},
    {"max_queue_per_host", "1000", K_INT, 1, 10000000, NULL,
     "attempts waiting for a connection to one provider; beyond it the call fails with "
     "MU_EOVERLOADED"},
    {"max_connections", "1024", K_INT, 1, 1000000, NULL, "connection cache size, all providers"},
    {"max_buffered_bytes", "268435456", K_INT, 1024, 9223372036854775807L, NULL,
     "response bytes being received by all calls of a client at once; past it a response that "
     "is arriving and holds over 64 KiB and its fair share is cut (MU_ETOOBIG, a failure of "
     "its provider's); smaller ones get through (at most 64 KiB more each)"},
    {"max_response_bytes", "67108864", K_INT, 1024, 2147483647L, NULL,
     "largest response accepted (also caps the LZ4 declared size)"},
    {"retry_budget_percent", "20", K_INT, 0, 1000, NULL,
     "retries (after an attempt that reached a provider) are capped at this share of calls "
     "started, plus retry_budget_min_per_s: a fleet that is down gets no retry storm"},
    {"retry_budget_min_per_s", "10", K_INT, 0, 1000000, NULL,
     "retries always allowed per second, whatever the share"},
    {"hedge_ms", "0", K_INT, 0, 3600000, NULL,
     "idempotent calls only: with no answer after this many ms, a second attempt goes to "
     "another provider and the first answer wins (0: off); capped by the retry budget"},
    {"hedge", "", K_PCTL, 0, 0, NULL,
     "idempotent calls only: hedge after the method's own latency percentile (p50 to p99.9, "
     "say p95) instead of a fixed hedge_ms, once 100 answers are known (hedge_ms until then)"},
    {"slow_start_ms", "0", K_INT, 0, 3600000, NULL,
     "a provider that joins, or comes back from ejection, gets a share of the picks that "
     "ramps up over this many ms (0: off)"},
    {"eject_ms", "1000", K_INT, 1, 600000, NULL,
     "how long an ejected provider is skipped: eject_ms x ejections in a row, +0-25% jitter"},
    {"eject_max_ms", "30000", K_INT, 1, 3600000, NULL, "cap on one ejection"},
    {"eject_after_failures", "5", K_INT, 1, 1000, NULL,
     "consecutive failures that eject a provider: timeouts, broken connections, HTTP 5xx errors "
     "without a microutil body, bad or oversized responses, attempts unanswered 8x past its "
     "usual latency (a refused connection ejects at once)"},
    {"max_ejected_percent", "50", K_INT, 0, 100, NULL,
     "most of a method's providers ejected at once; beyond it all are used (the first "
     "ejection is always allowed; 0 turns ejection off)"},
    {"connect_backoff_ms", "5", K_INT, 1, 60000, NULL,
     "first wait when no provider accepts a connection (it registered before listening); "
     "doubles, jittered, within the deadline"},
    {"connect_backoff_max_ms", "250", K_INT, 1, 600000, NULL, "cap on that wait"},
    {"keepalive_stall_ms", "300", K_INT, 10, 3600000, NULL,
     "an attempt on a new connection unanswered this long, while 4 answers came over kept "
     "connections to the same provider, marks a provider that serves one connection per "
     "worker: connections to it are then used once"},
    {"snapshot_file", "", K_STR, 0, 0, NULL,
     "last-known-good view: written (atomically) when the view changes, and read at start; "
     "empty: off"},
    {"snapshot_stale_after_ms", "1000", K_INT, 0, 600000, NULL,
     "when ZooKeeper has not been reached this long after the start, methods it has not listed "
     "use snapshot_file's lists, marked stale, until it answers"},
    {"empty_protection", "off", K_ENUM, 0, 0, "off|on",
     "per-method layout: a method's provider list that becomes empty while other methods of "
     "the same service still have providers is ignored; the last non-empty one is kept"},
    {"tls", "off", K_ENUM, 0, 0, "off|on",
     "on: call the providers over HTTPS (tls.SERVICE for one service), verified against "
     "tls_ca_file or the system's CAs"},
    {"tls_ca_file", "", K_STR, 0, 0, NULL,
     "PEM file of the CAs that sign the providers' certificates; empty: the system's"},
    {"tls_verify", "on", K_ENUM, 0, 0, "on|off",
     "off: accept any certificate and host name (logged as a warning; for tests only)"},
    {"log_level", "warn", K_ENUM, 0, 0, "error|warn|info|debug", "default log sink level"},
};

#define N_KEYS MU_ARRAY_LEN(keys)

/* Keys of the table that may also be set for one service, as
 * "KEY.SERVICE": the value is checked as KEY's. */
static const char *const per_service[] = {
    "policy", "timeout_ms", "deadline_ms", "retries", "hedge_ms", "hedge", "slow_start_ms", "tls",
    "empty_protection",
    "eject_ms", "eject_max_ms", "eject_after_failures", "max_ejected_percent",
};

/* Keys that exist only per service, "PREFIX.SERVICE". */
static const struct {
    const char *prefix;
    enum kind kind;
    const char *help;
} service_keys[] = {
    {"static", K_HOSTS, "static providers host:port,... for one service (no ZooKeeper)"},
};

static int find_key(const char *name);

/* The table key that "KEY.SERVICE" overrides, or -1. */
const char *const *mu_config_service_keys(size_t *n)
{
    *n = MU_ARRAY_LEN(per_service);
    return per_service;
}

static int per_service_key(const char *key)
{
    const char *dot = strchr(key, '.');
    if (!dot)
        return -1;
    for (size_t i = 0; i < MU_ARRAY_LEN(per_service); i++)
        if (strlen(per_service[i]) == (size_t)(dot - key) &&
            strncmp(key, per_service[i], (size_t)(dot - key)) == 0)
            return find_key(per_service[i]);
    return -1;
}


typedef struct extra {
    char *key;
    char *value;
    struct extra *next;
} extra;

struct mu_config {
    char *values[N_KEYS]; /* NULL = default */
    extra *extras;
    char error[512];
};

mu_config *mu_config_new(void)
{
    return calloc(1, sizeof(mu_config));
}

void mu_config_free(mu_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < N_KEYS; i++)
        free(cfg->values[i]);
    for (extra *e = cfg->extras, *n; e; e = n) {
        n = e->next;
        free(e->key);
        free(e->value);
        free(e);
    }
    free(cfg);
}

const char *mu_config_error(const mu_config *cfg)
{
    return cfg ? cfg->error : "";
}

static int find_key(const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(keys[i].name, name) == 0)
            return (int)i;
    return -1;
}

int mu_parse_percentile(const char *v)
{
    if (v[0] != 'p' || !isdigit((unsigned char)v[1]) || !isdigit((unsigned char)v[2]))
        return -1;
    int pm = ((v[1] - '0') * 10 + (v[2] - '0')) * 10;
    if (v[3] == '.' && isdigit((unsigned char)v[4]) && !v[5])
        pm += v[4] - '0';
    else if (v[3])
        return -1;
    return pm >= 500 && pm <= 999 ? pm : -1;
}

int mu_parse_hostport(const char *s, size_t len, char *host, size_t hostcap, int *port)
{
    const char *colon = NULL;
    for (size_t i = 0; i < len; i++)
        if (s[i] == ':')
            colon = s + i;
    if (!colon || colon == s || (size_t)(colon - s) >= hostcap)
        return -1;
    size_t hl = (size_t)(colon - s);
    for (size_t i = 0; i < hl; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '.' || s[i] == '-' || s[i] == '_'))
            return -1;
    long p = 0;
    const char *d = colon + 1, *end = s + len;
    if (d == end || end - d > 5)
        return -1;
    for (; d < end; d++) {
        if (!isdigit((unsigned char)*d))
            return -1;
        p = p * 10 + (*d - '0');
    }
    if (p < 1 || p > 65535)
        return -1;
    memcpy(host, s, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}

typedef struct hosts_check {
    mu_config *cfg;
    const char *key, *value;
} hosts_check;

static int check_hostport(const char *item, size_t len, void *user)
{
    hosts_check *hc = user;
    char host[64];
    int port;
    if (mu_parse_hostport(item, len, host, sizeof host, &port) == 0)
        return 0;
    mu_fmt(hc->cfg->error, sizeof hc->cfg->error,
           "%s = '%s': '%.*s' is not host:port (port 1 to 65535)", hc->key, hc->value, (int)len,
           item);
    return -1;
}

/* An absolute ZooKeeper path that names a node: ZooKeeper refuses empty,
 * "." and ".." parts and control characters; spaces would break the
 * registry paths the client builds from it. */
static int zk_path_ok(const char *v)
{
    size_t n = strlen(v);
    if (v[0] != '/' || n < 2 || v[n - 1] == '/' || n > 200)
        return 0;
    for (const char *part = v + 1; *part;) {
        size_t len = strcspn(part, "/");
        if (len == 0 || (len == 1 && part[0] == '.') ||
            (len == 2 && part[0] == '.' && part[1] == '.'))
            return 0;
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)part[i] <= ' ' || part[i] == 0x7f)
                return 0;
        part += len + (part[len] == '/');
    }
    return 1;
}

static int check_value(mu_config *cfg, const char *key, enum kind kind, long min, long max,
                       const char *choices, const char *v)
{
    switch (kind) {
    case K_STR:
    case K_LIST:
        return 0;
    case K_PATH:
        if (!zk_path_ok(v)) {
            mu_fmt(cfg->error, sizeof cfg->error,
                   "%s = '%.200s': expected an absolute path without a trailing slash, like "
                   "/dubbo, under 200 bytes, whose parts are ZooKeeper node names (not empty, "
                   "'.' or '..', no control characters or spaces)",
                   key, v);
            return -1;
        }
        return 0;
    case K_URLPATH: {
        size_t n = strlen(v);
        int ok = n == 0 || (v[0] == '/' && n < 60);
        for (size_t i = 0; ok && i < n; i++)
            ok = v[i] > ' ' && v[i] < 0x7f && v[i] != '?' && v[i] != '#';
        if (!ok) {
            mu_fmt(cfg->error, sizeof cfg->error,
                   "%s = '%s': expected an HTTP path starting with '/', under 60 characters, "
                   "without spaces, '?' or '#'",
                   key, v);
            return -1;
        }
        return 0;
    }
    case K_PCTL:
        if (*v && mu_parse_percentile(v) < 0) {
            mu_fmt(cfg->error, sizeof cfg->error,
                   "%s = '%s': expected a percentile from p50 to p99.9 (p95, p99.9), or empty",
                   key, v);
            return -1;
        }
        return 0;
    case K_INT: {
        errno = 0;
        char *end;
        long n = strtol(v, &end, 10);
        if (errno || end == v || *end || n < min || n > max) {
            mu_fmt(cfg->error, sizeof cfg->error, "%s = '%s': expected an integer from %ld to %ld",
                   key, v, min, max);
            return -1;
        }
        return 0;
    }
    case K_ENUM: {
        size_t vl = strlen(v);
        for (const char *c = choices; *c;) {
            const char *bar = strchr(c, '|');
            size_t cl = bar ? (size_t)(bar - c) : strlen(c);
            if (cl == vl && memcmp(c, v, vl) == 0)
                return 0;
            c += cl + (bar ? 1 : 0);
        }
        mu_fmt(cfg->error, sizeof cfg->error, "%s = '%s': expected one of %s", key, v, choices);
        return -1;
    }
    case K_HOSTS: {
        hosts_check hc = {cfg, key, v};
        return mu_list_each(v, check_hostport, &hc);
    }
    }
    return 0;
}

static int set_extra(mu_config *cfg, const char *key, const char *value)
{
    for (extra *e = cfg->extras; e; e = e->next) {
        if (strcmp(e->key, key) == 0) {
            char *v = strdup(value);
            if (!v)
                return -1;
            free(e->value);
            e->value = v;
            return 0;
        }
    }
    extra *e = calloc(1, sizeof *e);
    if (!e || !(e->key = strdup(key)) || !(e->value = strdup(value))) {
        if (e)
            free(e->key);
        free(e);
        return -1;
    }
    e->next = cfg->extras;
    cfg->extras = e;
    return 0;
}

mu_status mu_config_set(mu_config *cfg, const char *key, const char *value)
{
    if (!cfg)
        return MU_EINVAL;
    if (!key || !value) {
        mu_fmt(cfg->error, sizeof cfg->error, "mu_config_set: key and value must not be NULL");
        return MU_EINVAL;
    }
    cfg->error[0] = '\0';
    int i = find_key(key);
    if (i >= 0) {
        const key_spec *k = &keys[i];
        if (check_value(cfg, key, k->kind, k->min, k->max, k->choices, value) != 0)
            return MU_ECONFIG;
        char *v = strdup(value);
        if (!v)
            return MU_ENOMEM;
        free(cfg->values[i]);
        cfg->values[i] = v;
        return MU_OK;
    }
    int ps = per_service_key(key);
    for (size_t s = 0; ps < 0 && s < MU_ARRAY_LEN(service_keys); s++) {
        size_t pl = strlen(service_keys[s].prefix);
        if (strncmp(key, service_keys[s].prefix, pl) == 0 && key[pl] == '.')
            ps = (int)(N_KEYS + s);
    }
    if (ps >= 0) {
        const char *svc = strchr(key, '.') + 1;
        const key_spec *k = ps < (int)N_KEYS ? &keys[ps] : NULL;
        if (!*svc || strchr(svc, ':') || strchr(svc, '/') || strlen(svc) > 255) {
            mu_fmt(cfg->error, sizeof cfg->error, "%.200s: expected %.*s.SERVICE", key,
                   (int)(svc - 1 - key), key);
            return MU_ECONFIG;
        }
        int bad = k ? check_value(cfg, key, k->kind, k->min, k->max, k->choices, value)
                    : check_value(cfg, key, service_keys[ps - (int)N_KEYS].kind, 0, 0, NULL, value);
        if (bad)
            return MU_ECONFIG;
        return set_extra(cfg, key, value) == 0 ? MU_OK : MU_ENOMEM;
    }
    mu_fmt(cfg->error, sizeof cfg->error,
           "unknown key '%s' (see mucall --help for the list of keys)", key);
    return MU_ECONFIG;
}

const char *mu_config_get(const mu_config *cfg, const char *key)
{
    if (!key)
        return NULL;
    int i = find_key(key);
    if (i >= 0)
        return cfg && cfg->values[i] ? cfg->values[i] : keys[i].def;
    for (const extra *e = cfg ? cfg->extras : NULL; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e->value;
    return NULL;
}

int mu_config_is_set(const mu_config *cfg, const char *key)
{
    int i = find_key(key);
    return i >= 0 && cfg && cfg->values[i] != NULL;
}

const char *mu_config_str(const mu_config *cfg, const char *key)
{
    const char *v = mu_config_get(cfg, key);
    return v ? v : "";
}

long mu_config_long(const mu_config *cfg, const char *key)
{
    return strtol(mu_config_str(cfg, key), NULL, 10);
}

const char *mu_config_service(const mu_config *cfg, const char *prefix, const char *svc)
{
    size_t pl = strlen(prefix);
    for (const extra *e = cfg ? cfg->extras : NULL; e; e = e->next)
        if (strncmp(e->key, prefix, pl) == 0 && e->key[pl] == '.' && strcmp(e->key + pl + 1, svc) == 0)
            return e->value;
    return NULL;
}

void mu_config_each_override(const mu_config *cfg,
                             void (*fn)(const char *key, const char *svc, const char *value,
                                        void *user),
                             void *user)
{
    for (const extra *e = cfg ? cfg->extras : NULL; e; e = e->next) {
        int i = per_service_key(e->key);
        if (i >= 0)
            fn(keys[i].name, strchr(e->key, '.') + 1, e->value, user);
    }
}

void mu_config_each_service(const mu_config *cfg, const char *prefix,
                            void (*fn)(const char *svc, const char *value, void *user), void *user)
{
    size_t pl = strlen(prefix);
    for (const extra *e = cfg ? cfg->extras : NULL; e; e = e->next)
        if (strncmp(e->key, prefix, pl) == 0 && e->key[pl] == '.')
            fn(e->key + pl + 1, e->value, user);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

#define LINE_MAX_BYTES 4094

/* One "key = value" line, comments and quotes removed in place: a '#' at
 * the start or after a blank begins a comment ("abc#def" is a value); a
 * value in double quotes keeps everything, '#' and blanks included, with
 * \" and \\ for a quote and a backslash. NULL with why set if malformed;
 * *key "" for a blank or comment line. */
static char *split_line(char *line, char **key, const char **why)
{
    char *s = line;
    while (isspace((unsigned char)*s))
        s++;
    *key = s;
    if (!*s || *s == '#') {
        **key = '\0';
        return s;
    }
    char *eq = strchr(s, '=');
    if (!eq) {
        *why = "expected 'key = value'";
        return NULL;
    }
    *eq = '\0';
    *key = trim(s);
    char *v = eq + 1;
    while (isspace((unsigned char)*v))
        v++;
    if (*v == '"') { /* quoted: to the closing quote, then only a comment */
        char *out = v, *in = v + 1;
        for (; *in && *in != '"'; in++) {
            if (*in == '\\' && (in[1] == '"' || in[1] == '\\'))
                in++;
            *out++ = *in;
        }
        if (*in != '"') {
            *why = "a quoted value without its closing quote";
            return NULL;
        }
        *out = '\0';
        for (in++; isspace((unsigned char)*in); in++)
            ;
        if (*in && *in != '#') {
            *why = "text after the closing quote";
            return NULL;
        }
        return v;
    }
    for (char *c = v; *c; c++)
        if (*c == '#' && (c == v || isspace((unsigned char)c[-1]))) {
            *c = '\0';
            break;
        }
    return trim(v);
}

mu_status mu_config_load_file(mu_config *cfg, const char *path)
{
    if (!cfg || !path)
        return MU_EINVAL;
    FILE *f = fopen(path, "r");
    if (!f) {
        mu_fmt(cfg->error, sizeof cfg->error, "%s: cannot open: %s", path, strerror(errno));
        return MU_ECONFIG;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int lineno = 0;
    mu_status st = MU_OK;
    while (st == MU_OK && (n = getline(&line, &cap, f)) > 0) {
        lineno++;
        const char *why = NULL;
        char *k = NULL, *v = NULL;
        if ((size_t)n > LINE_MAX_BYTES + 1)
            why = "line longer than 4094 bytes";
        else if (strlen(line) != (size_t)n)
            why = "a NUL byte in the line";
        else
            v = split_line(line, &k, &why);
        if (why) {
            mu_fmt(cfg->error, sizeof cfg->error, "%s:%d: %s", path, lineno, why);
            st = MU_ECONFIG;
        } else if (*k && (st = mu_config_set(cfg, k, v)) != MU_OK) {
            char msg[sizeof cfg->error];
            memcpy(msg, cfg->error, sizeof msg);
            mu_fmt(cfg->error, sizeof cfg->error, "%s:%d: %s", path, lineno, msg);
        }
    }
    free(line);
    fclose(f);
    return st;
}

mu_status mu_config_load_env(mu_config *cfg)
{
    if (!cfg)
        return MU_EINVAL;
    const char *h = getenv("MICRO_ZK_HOST"), *p = getenv("MICRO_ZK_PORT");
    if ((h && *h) || (p && *p)) {
        char hosts[512];
        /* MICRO_ZK_HOST may already carry ports (an ensemble). */
        int n = h && strchr(h, ':')
                    ? snprintf(hosts, sizeof hosts, "%s", h)
                    : snprintf(hosts, sizeof hosts, "%s:%s", h && *h ? h : "127.0.0.1",
                               p && *p ? p : "2181");
        if (n < 0 || (size_t)n >= sizeof hosts) {
            /* Cut, it could be a different, valid host list. */
            mu_fmt(cfg->error, sizeof cfg->error,
                   "MICRO_ZK_HOST/MICRO_ZK_PORT: the host list is %d characters, over the %zu "
                   "allowed",
                   n, sizeof hosts - 1);
            return MU_ECONFIG;
        }
        if (mu_config_set(cfg, "zk_hosts", hosts) != MU_OK) {
            char why[sizeof cfg->error];
            memcpy(why, cfg->error, sizeof why);
            mu_fmt(cfg->error, sizeof cfg->error, "MICRO_ZK_HOST/MICRO_ZK_PORT: %s", why);
            return MU_ECONFIG;
        }
    }
    const char *t = getenv("MICRO_CLIENT_TIMEOUT");
    if (t && *t) {
        char *end;
        errno = 0;
        double secs = strtod(t, &end);
        if (errno || end == t || *end || !(secs > 0 && secs <= 3600)) { /* NaN fails too */
            mu_fmt(cfg->error, sizeof cfg->error,
                   "MICRO_CLIENT_TIMEOUT = '%s': expected seconds, more than 0 and at most 3600", t);
            return MU_ECONFIG;
        }
        char ms[32];
        mu_fmt(ms, sizeof ms, "%ld", (long)(secs * 1000.0 + 0.5));
        mu_status st = mu_config_set(cfg, "timeout_ms", ms);
        if (st != MU_OK)
            return st;
    }
    for (size_t i = 0; i < N_KEYS; i++) {
        char env[64] = "MU_";
        size_t j = 3;
        for (const char *c = keys[i].name; *c && j + 1 < sizeof env; c++)
            env[j++] = (char)toupper((unsigned char)*c);
        env[j] = '\0';
        const char *v = getenv(env);
        if (!v)
            continue;
        mu_status st = mu_config_set(cfg, keys[i].name, v);
        if (st != MU_OK) {
            char why[sizeof cfg->error];
            memcpy(why, cfg->error, sizeof why);
            mu_fmt(cfg->error, sizeof cfg->error, "environment %s: %s", env, why);
            return st;
        }
    }
    return MU_OK;
}

void mu_config_describe(mu_config_describe_fn fn, void *user)
{
    for (size_t i = 0; i < N_KEYS; i++)
        fn(keys[i].name, keys[i].def, keys[i].help, user);
    for (size_t s = 0; s < MU_ARRAY_LEN(service_keys); s++) {
        char k[32];
        mu_fmt(k, sizeof k, "%s.SERVICE", service_keys[s].prefix);
        fn(k, "", service_keys[s].help, user);
    }
    for (size_t s = 0; s < MU_ARRAY_LEN(per_service); s++) {
        char k[48], help[96];
        mu_fmt(k, sizeof k, "%s.SERVICE", per_service[s]);
        mu_fmt(help, sizeof help, "%s for one service (overrides the global value)",
               per_service[s]);
        fn(k, "", help, user);
    }
}
