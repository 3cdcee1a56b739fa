#include "config.h"
#include "snapshot.h"

#include <errno.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "map.h"

#define HEADER "# libmicroutil snapshot 1\n"
#define WRITE_DELAY_US 200000

struct mu_snapshot {
    char *path;
    mu_view *view;
    const mu_logger *log;
    mu_map loaded;        /* group path -> "host:port,..." (owned), as read at start */
    struct event *write;  /* the delayed write */
};

/* ------------------------------------------------------------ reading */

static int check_host(const char *item, size_t len, void *user)
{
    char host[64];
    int port;
    MU_UNUSED(user);
    return mu_parse_hostport(item, len, host, sizeof host, &port) == 0 ? 0 : -1;
}

/* One line "PATH HOSTS": 0 when kept, else -1 with why. */
static int parse_line(mu_snapshot *s, char *line, const char **why)
{
    char *sp = strchr(line, ' ');
    if (line[0] != '/' || !sp || sp == line + 1) {
        *why = "expected '/PATH host:port,...'";
        return -1;
    }
    *sp = '\0';
    const char *hosts = sp + 1;
    if (!*hosts || mu_list_each(hosts, check_host, NULL) != 0) {
        *why = "a provider is not host:port";
        return -1;
    }
    char *copy = strdup(hosts);
    void *old = copy ? mu_map_get(&s->loaded, line) : NULL;
    if (!copy || mu_map_put(&s->loaded, line, copy) != 0) {
        free(copy);
        *why = "out of memory";
        return -1;
    }
    free(old);
    return 0;
}

static void load(mu_snapshot *s)
{
    FILE *f = fopen(s->path, "r");
    if (!f) {
        if (errno != ENOENT)
            mu_log(s->log, MU_LOG_WARN, "snapshot_file %s: %s", s->path, strerror(errno));
        return;
    }
    char *line = NULL;
    size_t cap = 0, total = 0, kept = 0;
    ssize_t n;
    for (unsigned no = 1; (n = getline(&line, &cap, f)) > 0; no++) {
        total += (size_t)n;
        if (total > MU_SNAPSHOT_MAX_BYTES) {
            mu_log(s->log, MU_LOG_WARN, "snapshot_file %s: over %u bytes; the rest is ignored",
                   s->path, MU_SNAPSHOT_MAX_BYTES);
            break;
        }
        if (line[n - 1] == '\n')
            line[--n] = '\0';
        if (n == 0 || line[0] == '#')
            continue;
        const char *why = NULL;
        if (strlen(line) != (size_t)n)
            why = "a NUL byte in the line";
        if (why || parse_line(s, line, &why) != 0)
            mu_log(s->log, MU_LOG_WARN, "snapshot_file %s line %u skipped: %s", s->path, no, why);
        else
            kept++;
    }
    free(line);
    fclose(f);
    mu_log(s->log, MU_LOG_INFO, "snapshot_file %s: %zu group(s) read", s->path, kept);
}

/* ------------------------------------------------------------ writing */

typedef struct writer {
    FILE *f;
    int failed;
} writer;

static void put_group(mu_group *g, void *user)
{
    writer *w = user;
    size_t n = mu_pool_size(g->pool);
    if (g->is_static || g->state != MU_GROUP_READY || n == 0)
        return;
    if (fprintf(w->f, "%s ", g->path) < 0)
        w->failed = 1;
    for (size_t i = 0; i < n; i++)
        if (fprintf(w->f, "%s%s", i ? "," : "", mu_pool_get(g->pool, i)->key) < 0)
            w->failed = 1;
    if (fputc('\n', w->f) == EOF)
        w->failed = 1;
}

/* The lines read at start for methods this run has not listed from
 * ZooKeeper (not called yet, or still loading): kept, so that a method
 * called rarely still has its last known providers at the next start. */
static void put_unlisted(mu_snapshot *s, writer *w)
{
    size_t i = 0;
    const char *path;
    void *hosts;
    while (mu_map_next(&s->loaded, &i, &path, &hosts)) {
        mu_group *g = mu_view_group(s->view, path, 0);
        if (g && g->state == MU_GROUP_READY)
            continue; /* put_group wrote what ZooKeeper (or the snapshot) says now */
        if (fprintf(w->f, "%s %s\n", path, (const char *)hosts) < 0)
            w->failed = 1;
    }
}

/* Written beside, then renamed: a reader sees the old file or the new one.
 * The temporary name is private to this writer (mkstemp), so that the
 * processes of one service sharing a snapshot_file (uwsgi or gunicorn
 * workers, one config) never write into one another's file. */
static void write_now(mu_snapshot *s)
{
    size_t len = strlen(s->path) + 8;
    char *tmp = malloc(len);
    if (!tmp)
        return;
    snprintf(tmp, len, "%s.XXXXXX", s->path);
    int fd = mkstemp(tmp);
    writer w = {fd >= 0 ? fdopen(fd, "w") : NULL, 0};
    int err = errno;
    if (w.f) {
        if (fputs(HEADER, w.f) == EOF)
            w.failed = 1;
        mu_view_each_group(s->view, put_group, &w);
        put_unlisted(s, &w);
        err = errno;
        if (fclose(w.f) != 0)
            w.failed = 1, err = errno;
    } else if (fd >= 0) {
        close(fd);
    }
    if (w.f && !w.failed && rename(tmp, s->path) != 0)
        w.failed = 1, err = errno;
    if (!w.f || w.failed) {
        mu_log(s->log, MU_LOG_WARN, "snapshot_file %s: not written: %s", s->path, strerror(err));
        if (fd >= 0)
            remove(tmp);
    }
    free(tmp);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    MU_UNUSED(fd);
    MU_UNUSED(what);
    write_now(arg);
}

/* ------------------------------------------------------------ the module */

mu_snapshot *mu_snapshot_new(struct event_base *base, const char *path, mu_view *v,
                             const mu_logger *log)
{
    mu_snapshot *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path)) || !(s->write = evtimer_new(base, on_write, s))) {
        if (s)
            free(s->path);
        free(s);
        return NULL;
    }
    s->view = v;
    s->log = log;
    load(s);
    return s;
}

void mu_snapshot_free(mu_snapshot *s)
{
    if (!s)
        return;
    if (evtimer_pending(s->write, NULL))
        write_now(s);
    event_free(s->write);
    size_t i = 0;
    const char *k;
    void *v;
    while (mu_map_next(&s->loaded, &i, &k, &v))
        free(v);
    mu_map_clear(&s->loaded);
    free(s->path);
    free(s);
}

const char *mu_snapshot_hosts(const mu_snapshot *s, const char *group_path)
{
    return s ? mu_map_get(&s->loaded, group_path) : NULL;
}

void mu_snapshot_changed(mu_snapshot *s)
{
    static const struct timeval delay = {0, WRITE_DELAY_US};
    if (s && !evtimer_pending(s->write, NULL))
        evtimer_add(s->write, &delay);
}
