/*
 * zkw.h: the helper session shared by bench/discovery.c and bench/herd.c,
 * which writes provider nodes straight into ZooKeeper (zookeeper_st on the
 * program's event_base, driven by src/zkloop) and runs that loop until a
 * condition holds. Each program keeps one zkw (in its own state) and its
 * own measuring; only the writing and the waiting are here.
 *
 *   zkw_init(w, base, prog, root, base_port)   the timer and the zkloop
 *   zkw_open(w, hosts, session_ms)              the session (zkw_connected)
 *   zkw_create(w, path, data, parent)           one node; parent: an
 *                                               existing node is fine
 *   zkw_create_provider(w, i) / zkw_delete_provider(w, i)
 *       root/p%06d, data {"host": "127.0.0.1", "port": base_port + i}
 *   zkw_create_providers(w, n)                  root, its parents, and
 *                                               providers 0 to n - 1, sent
 *   zkw_wait(w, cond, seconds, what)            exits 1 when it times out
 *   zkw_run_for(w, ms)
 *   zkw_close(w)                                the session, timer, zkloop
 *
 * Requests are counted in w->outstanding until their completion runs
 * (zkw_idle: none left); failures are counted in w->errors, the first three
 * printed as "PROG: create failed: ...". Call mu_zkloop_update(w->zl) after
 * a batch of requests so the loop sends them (zkw_create_providers does).
 * Test code for benchmarks only.
 */
#ifndef MU_BENCH_ZKW_H
#define MU_BENCH_ZKW_H

#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zookeeper/zookeeper.h>

#include "zkloop.h"

typedef struct zkw {
    struct event_base *base;
    struct event *deadline; /* zkw_wait's and zkw_run_for's timer */
    zhandle_t *zh;
    mu_zkloop *zl;
    const char *prog;       /* prefix of messages */
    const char *root;       /* the provider nodes' parent */
    int base_port;          /* provider i's port: base_port + i */
    int connected;          /* the session is connected now */
    int timed_out;
    long outstanding;       /* requests sent, completion not run yet */
    int errors;             /* failed creates and deletes */
} zkw;

static inline uint64_t zkw_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static inline void zkw_die(const zkw *w, const char *what)
{
    fprintf(stderr, "%s: %s\n", w->prog, what);
    exit(1);
}

static inline void zkw_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    zkw *w = arg;
    (void)fd;
    (void)what;
    w->timed_out = 1;
}

/* 0, or -1 when the timer or the zkloop could not be made. */
static inline int zkw_init(zkw *w, struct event_base *base, const char *prog, const char *root,
                           int base_port)
{
    *w = (zkw){.base = base, .prog = prog, .root = root, .base_port = base_port};
    w->deadline = evtimer_new(base, zkw_on_deadline, w);
    w->zl = mu_zkloop_new(base);
    return w->deadline && w->zl ? 0 : -1;
}

static inline void zkw_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    zkw *w = ctx;
    (void)zh;
    (void)path;
    if (type == ZOO_SESSION_EVENT)
        w->connected = state == ZOO_CONNECTED_STATE;
}

/* Starts the session (connected once zkw_connected holds); 0, or -1 when
 * zookeeper_init failed. */
static inline int zkw_open(zkw *w, const char *hosts, int session_ms)
{
    w->zh = zookeeper_init(hosts, zkw_watcher, session_ms, NULL, w, 0);
    if (!w->zh)
        return -1;
    mu_zkloop_attach(w->zl, w->zh);
    return 0;
}

static inline void zkw_close(zkw *w)
{
    mu_zkloop_attach(w->zl, NULL);
    if (w->zh)
        zookeeper_close(w->zh);
    mu_zkloop_free(w->zl);
    event_free(w->deadline);
}

static inline int zkw_connected(const zkw *w) { return w->connected; }
static inline int zkw_idle(const zkw *w) { return w->outstanding == 0; }

/* Runs the loop until cond(w) holds; exits 1 after `seconds`. */
static inline void zkw_wait(zkw *w, int (*cond)(const zkw *), int seconds, const char *what)
{
    struct timeval tv = {seconds, 0};
    w->timed_out = 0;
    evtimer_add(w->deadline, &tv);
    while (!cond(w) && !w->timed_out)
        event_base_loop(w->base, EVLOOP_ONCE);
    evtimer_del(w->deadline);
    if (!cond(w)) {
        fprintf(stderr, "%s: timed out waiting for %s\n", w->prog, what);
        exit(1);
    }
}

/* Runs the loop for ms milliseconds. */
static inline void zkw_run_for(zkw *w, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    w->timed_out = 0;
    evtimer_add(w->deadline, &tv);
    while (!w->timed_out)
        event_base_loop(w->base, EVLOOP_ONCE);
}

/* ------------------------------------------------------------ requests */

static inline void zkw_completed(zkw *w, int rc, int exists_ok, const char *what)
{
    if (rc != ZOK && !(rc == ZNODEEXISTS && exists_ok) && w->errors++ < 3)
        fprintf(stderr, "%s: %s failed: %s\n", w->prog, what, zerror(rc));
    w->outstanding--;
}

/* The completions; data is the zkw (not const: the program's own). */
static inline void zkw_on_created(int rc, const char *value, const void *data)
{
    (void)value;
    zkw_completed((zkw *)data, rc, 0, "create");
}

static inline void zkw_on_created_parent(int rc, const char *value, const void *data)
{
    (void)value;
    zkw_completed((zkw *)data, rc, 1, "create");
}

static inline void zkw_on_deleted(int rc, const void *data)
{
    zkw_completed((zkw *)data, rc, 0, "delete");
}

/* parent != 0: an existing node is fine. */
static inline void zkw_create(zkw *w, const char *path, const char *data, int parent)
{
    int rc = zoo_acreate(w->zh, path, data, data ? (int)strlen(data) : -1, &ZOO_OPEN_ACL_UNSAFE, 0,
                         parent ? zkw_on_created_parent : zkw_on_created, w);
    if (rc != ZOK)
        zkw_die(w, zerror(rc));
    w->outstanding++;
}

static inline void zkw_provider_path(const zkw *w, int i, char *path, size_t size)
{
    snprintf(path, size, "%s/p%06d", w->root, i);
}

static inline void zkw_create_provider(zkw *w, int i)
{
    char path[256], data[128];
    zkw_provider_path(w, i, path, sizeof path);
    snprintf(data, sizeof data, "{\"host\": \"127.0.0.1\", \"port\": %d}", w->base_port + i);
    zkw_create(w, path, data, 0);
}

/* The root and each of its parents (existing ones are fine), then providers
 * 0 to n - 1, pipelined (one session runs its requests in order); sends
 * them. zkw_idle holds when all have completed. */
static inline void zkw_create_providers(zkw *w, int n)
{
    char path[256];
    snprintf(path, sizeof path, "%s", w->root);
    for (char *slash = strchr(path + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        zkw_create(w, path, "", 1);
        *slash = '/';
    }
    zkw_create(w, path, "", 1);
    for (int i = 0; i < n; i++)
        zkw_create_provider(w, i);
    mu_zkloop_update(w->zl);
}

static inline void zkw_delete_provider(zkw *w, int i)
{
    char path[256];
    zkw_provider_path(w, i, path, sizeof path);
    if (zoo_adelete(w->zh, path, -1, zkw_on_deleted, w) != ZOK)
        zkw_die(w, "zoo_adelete failed");
    w->outstanding++;
}

#endif
