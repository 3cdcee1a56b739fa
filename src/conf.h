/* config: the key table, validation, and typed access for the client.
 * struct mu_config is private to conf.c and owned by the user
 * (mu_config_new / mu_config_free); the client reads it only inside
 * mu_client_new and keeps copies of what it needs. */
#ifndef MU_CONF_H
#define MU_CONF_H

#include "common.h"

/* Typed value of a table key (validated when set). */
const char *mu_config_str(const mu_config *cfg, const char *key);
long mu_config_long(const mu_config *cfg, const char *key);
/* 1 if key was set explicitly (not a default). */
int mu_config_is_set(const mu_config *cfg, const char *key);

/* Per-service keys ("policy.SVC", "static.SVC"): the value for svc, or NULL. */
const char *mu_config_service(const mu_config *cfg, const char *prefix, const char *svc);

/* The table keys that may also be set for one service ("KEY.SVC"); *n
 * gets their number. The one list: the client applies exactly these. */
const char *const *mu_config_service_keys(size_t *n);

/* Calls fn for every "KEY.SVC" key set whose KEY is a per-service table key. */
void mu_config_each_override(const mu_config *cfg,
                             void (*fn)(const char *key, const char *svc, const char *value,
                                        void *user),
                             void *user);

/* Calls fn for every "PREFIX.SVC" key set. */
void mu_config_each_service(const mu_config *cfg, const char *prefix,
                            void (*fn)(const char *svc, const char *value, void *user), void *user);

/* "p95" -> 950, "p99.9" -> 999 (per mille, 500 to 999); -1 if not one. */
int mu_parse_percentile(const char *v);

/* Splits "host:port" into host and port; 0 on success. */
int mu_parse_hostport(const char *s, size_t len, char *host, size_t hostcap, int *port);

#endif
