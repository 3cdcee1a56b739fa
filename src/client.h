/*
 * client: wires config, view, registry, balance, transport and calls
 * together. This header is the parts' shared picture of a client; users see
 * only include/microutil/microutil.h.
 */
#ifndef MU_CLIENT_H
#define MU_CLIENT_H

#include <curl/curl.h>

#include "balance.h"
#include "codec.h"
#include "common.h"
#include "map.h"
#include "registry.h"
#include "transport.h"
#include "view.h"

struct event_base;
struct event;

/* What a target ("svc:method") resolves to; cached so a call costs one lookup. */
typedef struct mu_target {
    mu_group *g;
    int idempotent;
    mu_policy policy;
    size_t split; /* offset of ':' */
} mu_target;

/* A user watch on a target (mu_client_watch). */
typedef struct mu_watch {
    char *target;
    mu_group *g;
    void (*fn)(const char *target, size_t n, void *user);
    void *user;
    int dirty;
    struct mu_watch *next;
} mu_watch;

typedef struct mu_settings {
    int timeout_ms, connect_timeout_ms, deadline_ms, retries, eject_ms;
    int max_per_host; /* attempts handed to curl per endpoint; the rest queue in order */
    int backoff_ms, backoff_max_ms; /* waits when no provider is usable (connect_backoff_*) */
    int stall_ms;     /* keepalive_stall_ms */
    mu_policy policy;
    int per_service;
    int json_headers; /* 1.0.4+: JSON content type, request id and auth token headers */
    char root[256];
    char url_path[64];
    char *auth_token;
    size_t max_response;
} mu_settings;

struct mu_client {
    struct event_base *base;
    mu_logger log;
    mu_client_stats stats;
    char errmsg[512];
    mu_settings s;
    mu_map idempotent;   /* "svc:method" / "svc:*" -> (void *)1 */
    mu_map svc_policy;   /* svc -> mu_policy + 1 */
    mu_map statics;      /* svc -> hosts string (owned) */
    mu_map targets;      /* target -> mu_target (owned) */
    mu_watch *watches;
    mu_view *view;
    mu_registry *reg;    /* NULL without ZooKeeper */
    mu_transport *tp;
    struct curl_slist *headers; /* the fixed headers of 1.0.2 / 1.0.3 */
    struct curl_slist *headers_close; /* the same plus "Connection: close" */
    mu_encoder enc;
    mu_yajl_cache ycache; /* yajl's blocks, shared by the args check and every decoder */
    const struct timeval *deadline_tv; /* libevent's common timeout for deadline_ms, or NULL */
    uint64_t rng;
    uint64_t id_hi, id_seq;
    /* calls */
    struct mu_call_handle *live;      /* every call not yet delivered or recycled */
    struct mu_call_handle *done_head, *done_tail;
    struct mu_call_handle *batch;     /* the part of the done queue being delivered now */
    struct mu_call_handle *spare;     /* recycled call objects */
    size_t nspare;
    struct event *drain;       /* delivers queued completions and watch notices */
    int depth;                 /* user callbacks on the stack */
    int dying;                 /* mu_client_free() was called inside a callback */
    int draining;              /* inside mu_calls_drain: new completions wait a turn */
    int in_log;                /* inside the user's log sink */
    int free_requested;        /* mu_client_free() from the log sink: done by the drain */
    mu_log_fn user_log;        /* the user's sink; c->log calls it through client.c */
    void *user_log_arg;
};

/* call.c */
void mu_calls_group_changed(mu_client *c, mu_group *g);
void mu_calls_drain(mu_client *c);
void mu_calls_cancel_all(mu_client *c);
void mu_calls_free_spares(mu_client *c);
/* Schedules the drain: at once, or on the next loop turn while draining. */
void mu_client_kick(mu_client *c);

/* client.c */
void mu_client_destroy(mu_client *c);
/* Resolves "svc:method" (creating and watching its group). NULL with
 * c->errmsg and *st (MU_EINVAL or MU_ENOMEM) set on failure. */
mu_target *mu_client_target(mu_client *c, const char *target, mu_status *st);

#endif
