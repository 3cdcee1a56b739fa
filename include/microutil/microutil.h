/**
 * @file microutil.h
 * @brief libmicroutil: client-side discovery, load balancing and async RPC
 *        for microutil (Python/Django) providers registered in ZooKeeper.
 *
 * Everything runs on the caller's libevent `struct event_base`: no threads
 * are created and no call blocks the loop. All functions must be called from
 * the thread that runs that loop unless stated otherwise. Several cores:
 * one loop and one client per thread ("Threads and process-wide state",
 * before mu_client_new()).
 */
#ifndef MICROUTIL_MICROUTIL_H
#define MICROUTIL_MICROUTIL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && defined(MU_BUILDING_LIBRARY)
#define MU_EXPORT __attribute__((visibility("default")))
#else
#define MU_EXPORT
#endif

/** Library version, as a string ("0.1.0") and as 0xMMmmpp. */
#define MU_VERSION_STRING "0.1.0"
#define MU_VERSION_NUM 0x000100

/**
 * Status of an operation or a call. The numbers are stable: values are only
 * ever appended, never renumbered. mu_strerror() names each one.
 */
typedef enum mu_status {
    MU_OK = 0,           /**< Success. */
    MU_EINVAL = 1,       /**< Caller misuse: a bad argument. */
    MU_ENOMEM = 2,       /**< Out of memory. */
    MU_ECONFIG = 3,      /**< Bad configuration key or value. */
    MU_ENOPROVIDER = 4,  /**< The method has no usable provider. */
    MU_EDISCOVERY = 5,   /**< ZooKeeper could not be reached or read. */
    MU_ETIMEDOUT = 6,    /**< The attempt timeout or the call deadline passed. */
    MU_ECONNECT = 7,     /**< Connecting to the provider failed (nothing was sent). */
    MU_ETRANSPORT = 8,   /**< The connection failed after the request was sent. */
    MU_EHTTP = 9,        /**< An HTTP status with no decodable microutil body. */
    MU_EPROTOCOL = 10,   /**< The response broke the wire protocol. */
    MU_ETOOBIG = 11,     /**< The response exceeds the configured size cap. */
    MU_EREMOTE = 12,     /**< The provider returned an error (name, code, message). */
    MU_ECANCELLED = 13,  /**< Cancelled by the caller, or the client was freed. */
    MU_EAUTH = 14,       /**< The provider rejected the auth token (HTTP 401). */
    MU_EOVERLOADED = 15, /**< A cap on calls (max_calls, max_queue_per_host) is reached:
                              nothing was sent; try later or shed load. */
    MU_ENOSPACE = 16     /**< The caller's buffer is too small (mu_metrics_write() says
                              how large it must be). */
} mu_status;

/**
 * A short, static English description of @p status ("timed out").
 * Never returns NULL; unknown values give "unknown status". Thread-safe.
 */
MU_EXPORT const char *mu_strerror(mu_status status);

/** The symbolic name of @p status ("MU_ETIMEDOUT"). Never NULL. Thread-safe. */
MU_EXPORT const char *mu_status_name(mu_status status);

/**
 * The version of the library linked at run time, as MU_VERSION_STRING and
 * MU_VERSION_NUM give the one compiled against. Thread-safe.
 */
MU_EXPORT const char *mu_version(void);
/** MU_VERSION_NUM of the library linked at run time: 0xMMmmpp. */
MU_EXPORT unsigned long mu_version_num(void);


/* ================================================================ config */

/**
 * A set of configuration keys. Every tunable has one key, the same in code
 * (mu_config_set()), in files (mu_config_load_file()), on the mucall command
 * line (--set KEY=VALUE) and, for the names microutil users know, in the
 * environment (mu_config_load_env()). See README.md for the table.
 *
 * A config is plain data: mu_client_new() copies what it needs, so the
 * config may be changed or freed after the client is made.
 */
typedef struct mu_config mu_config;

/** A config holding the defaults. NULL on allocation failure. */
MU_EXPORT mu_config *mu_config_new(void);

/** Frees @p cfg. mu_config_free(NULL) is a no-op. */
MU_EXPORT void mu_config_free(mu_config *cfg);

/**
 * Sets @p key to @p value (both copied). Returns MU_OK, or MU_ECONFIG for an
 * unknown key or a bad value; mu_config_error() then names the key, the
 * value and what is allowed. @p cfg is unchanged on error.
 */
MU_EXPORT mu_status mu_config_set(mu_config *cfg, const char *key, const char *value);

/**
 * Reads `key = value` lines from @p path. `#` starts a comment; blank lines
 * are ignored. Stops at the first bad line with MU_ECONFIG, and
 * mu_config_error() gives "path:line: ...". Keys set before the bad line
 * stay set.
 */
MU_EXPORT mu_status mu_config_load_file(mu_config *cfg, const char *path);

/**
 * Applies the environment names of the Python microutil package:
 * MICRO_ZK_HOST and MICRO_ZK_PORT (zk_hosts) and MICRO_CLIENT_TIMEOUT in
 * seconds (timeout_ms), plus MU_<KEY> for any key (MU_POLICY=random).
 * Precedence is the order of calls: the last one to set a key wins.
 */
MU_EXPORT mu_status mu_config_load_env(mu_config *cfg);

/** The value of @p key as text, or NULL for an unknown key. Valid until the next change. */
MU_EXPORT const char *mu_config_get(const mu_config *cfg, const char *key);

/** Why the last failing call on @p cfg failed ("" if none). Valid until the next call. */
MU_EXPORT const char *mu_config_error(const mu_config *cfg);

/** Receives one configuration key, its default and a one-line description. */
typedef void (*mu_config_describe_fn)(const char *key, const char *default_value,
                                      const char *help, void *user);

/**
 * Calls @p fn for each key known to the library with its default and a one
 * line description (used for `mucall --help` and the README table).
 */
MU_EXPORT void mu_config_describe(mu_config_describe_fn fn, void *user);

/* ================================================================ client */

struct event_base;

/**
 * A client: the watched provider view, the balancer and the HTTP transport,
 * all running on one event_base. Not thread-safe: use it from the thread
 * that runs its event_base. A program that wants several cores runs one
 * client per loop.
 */
typedef struct mu_client mu_client;

/** Log levels for mu_client_set_log(). */
typedef enum mu_log_level {
    MU_LOG_ERROR = 0,
    MU_LOG_WARN = 1,
    MU_LOG_INFO = 2,
    MU_LOG_DEBUG = 3
} mu_log_level;

/** A log sink. @p msg is valid during the call only. */
typedef void (*mu_log_fn)(mu_log_level level, const char *msg, void *user);

/*
 * Threads and process-wide state
 *
 * A client is not thread-safe, but clients are independent: a program that
 * wants several cores runs one event_base and one client per thread
 * (examples/threads.c), and may make and free clients in several threads
 * at once. What the libraries below keep per process is dealt with once:
 *
 * - libcurl: the first mu_client_new() calls curl_global_init() exactly
 *   once (pthread_once), and the library never calls curl_global_cleanup().
 *   A program that also uses libcurl itself, from several threads, should
 *   call curl_global_init() before it starts them, unless curl_version_info()
 *   reports CURL_VERSION_THREADSAFE (libcurl 7.84 and later on most
 *   platforms, Debian 12's 7.88 included), where that call is thread-safe.
 * - ZooKeeper: zookeeper_st formats its log lines in static buffers shared by
 *   every handle in the process, a data race as soon as two threads run
 *   clients; the library discards those lines anyway. So the first
 *   mu_client_new() turns ZooKeeper's own logging off for the whole process
 *   (zoo_set_debug_level(0)), once. A program that uses the ZooKeeper C
 *   client itself and wants its log back may set the level again after
 *   making its first client, if only one thread uses ZooKeeper.
 * - Randomness (balancing draws, backoff jitter, call ids) comes from a
 *   generator in each client, seeded from getrandom(); the library never
 *   calls rand(), random(), drand48() or their seeding functions. The
 *   ZooKeeper C client does: it seeds (srandom(), srand48()) and draws from
 *   random() and drand48() itself, to order and pick its servers, so a
 *   program that relies on its own seed of those will see it changed.
 * - yajl and LZ4 keep no global state; yajl's allocator hooks are set per
 *   parser. mu_config_load_env() reads the environment with getenv(): do not
 *   change the environment in another thread meanwhile.
 * - mu_strerror(), mu_status_name(), mu_version(), mu_version_num() and
 *   mu_config_describe() read constant tables and may be called from any
 *   thread. A mu_config is plain data: one thread at a time.
 */

/**
 * Makes a client on @p base configured by @p cfg (NULL: defaults). It starts
 * connecting to ZooKeeper (unless only static providers are configured) and
 * preloads the `preload` targets, without blocking. On success stores the
 * client in @p *out and returns MU_OK; on failure leaves @p *out untouched.
 * @p base must outlive the client. May be called from any thread, for a
 * base that thread runs (see "Threads and process-wide state" above); the
 * first call sets up libcurl and ZooKeeper's process-wide state, once.
 * Returns MU_EINVAL for a NULL @p base or @p out, MU_EDISCOVERY when the
 * ZooKeeper handle cannot be made, and MU_ENOMEM when memory runs out or
 * libcurl's global initialisation failed.
 */
MU_EXPORT mu_status mu_client_new(struct event_base *base, const mu_config *cfg, mu_client **out);

/**
 * Frees @p client. Every pending call's callback fires first, exactly once,
 * with MU_ECANCELLED. Safe from inside any callback of this client: the
 * memory is released when that callback returns. mu_client_free(NULL) is a
 * no-op. After it returns, the client must not be used.
 */
MU_EXPORT void mu_client_free(mu_client *client);

/**
 * Sends the client's log lines (ZooKeeper session changes, skipped znodes,
 * retries) at @p level and below to @p fn. The default sink writes WARN and
 * ERROR to stderr. @p fn NULL silences the client.
 *
 * The sink runs in the middle of the client's own work (inside ZooKeeper
 * or curl processing), so from inside it mu_call() is refused with
 * MU_EINVAL, mu_call_cancel() does nothing, and mu_client_free() is carried
 * out when the loop next turns (the client must not be used after it).
 */
MU_EXPORT void mu_client_set_log(mu_client *client, mu_log_level level, mu_log_fn fn, void *user);

/** Why the last synchronous failure of a call on @p client happened ("" if none). */
MU_EXPORT const char *mu_client_errmsg(const mu_client *client);

/* ================================================================= calls */

/**
 * Names a call for mu_call_cancel(). Never 0 for a started call. An id
 * stays harmless forever: once its call's callback has run, cancelling it
 * does nothing, even though the library reuses its call objects (the id
 * carries a generation that cancel checks; generations start at random per
 * client, so another client's id matches a call only by a 1 in 2^32
 * chance).
 */
typedef unsigned long long mu_call_id;

/**
 * The outcome of a call, handed to its callback. Every pointer in it is
 * valid only during the callback: copy what you keep.
 */
typedef struct mu_result {
    mu_status status;        /**< MU_OK, or why the call failed. */
    const char *result;      /**< JSON text of the result ("null" if none); never NULL. */
    size_t result_len;       /**< Length of result (it is also NUL-terminated). */
    const char *error_name;  /**< Remote error name (MU_EREMOTE), else NULL. */
    long long error_code;    /**< Remote error code (MU_EREMOTE), else 0. */
    const char *error_message; /**< Remote error message (MU_EREMOTE), else NULL. */
    const char *endpoint;    /**< "host:port" of the last attempt, or NULL if none was made. */
    int attempts;            /**< Attempts begun, sent or not (0 if none). */
    long http_status;        /**< HTTP status of the last attempt, 0 if none. */
    unsigned long long latency_us; /**< From mu_call() to the callback. */
    const char *detail;      /**< Human explanation; "" on success. Never NULL. */
} mu_result;

/* mu_result_parse(), which hands over a yajl tree, is declared in
 * <microutil/microutil_yajl.h>, so that yajl's types are not part of every
 * user's ABI. */

/** Completion callback: fires exactly once per successful mu_call(). */
typedef void (*mu_call_cb)(const mu_result *result, void *user);

/**
 * Per-call options. Initialise with MU_CALL_OPTS_INIT (or mu_call_opts_init())
 * and change the fields you want; zero / NULL / -1 mean "as configured".
 * New fields are only ever appended; `size` lets the library tell which
 * fields a caller compiled against knows.
 */
typedef struct mu_call_opts {
    size_t size;            /**< sizeof(mu_call_opts), set by the initialiser. */
    int timeout_ms;         /**< Per-attempt timeout; 0 = `timeout_ms`. */
    int deadline_ms;        /**< Bound on the whole call, all attempts; 0 = `deadline_ms`. */
    int retries;            /**< Extra attempts; -1 = `retries`. */
    int idempotent;         /**< 1 = safe to run twice, 0 = not, -1 = the `idempotent` list. */
    const char *policy;     /**< "ewma", "round-robin", "random", "least-pending", "p2c", "hash"; NULL = configured. */
    const char *hash_key;   /**< The "hash" policy's key: calls with equal keys go to the same provider while it is up. NULL: spread like random. */
} mu_call_opts;

#define MU_CALL_OPTS_INIT { sizeof(mu_call_opts), 0, 0, -1, -1, NULL, NULL }

/** Sets @p opts to MU_CALL_OPTS_INIT. */
MU_EXPORT void mu_call_opts_init(mu_call_opts *opts);

/**
 * Calls `SERVICE:METHOD` (@p target) with positional arguments @p args_json
 * (a JSON array, NULL for []) and keyword arguments @p kwargs_json (a JSON
 * object, NULL for {}). All strings are copied; @p opts may be NULL.
 *
 * Returns MU_OK and, if @p id is not NULL, stores the call's id for
 * mu_call_cancel(). @p cb then fires exactly once, never from inside
 * mu_call() itself.
 *
 * Returns MU_EINVAL (bad target, args or kwargs not valid JSON of the right
 * shape, bad option) or MU_ENOMEM without calling @p cb;
 * mu_client_errmsg() says why. Returns MU_EOVERLOADED, also without calling
 * @p cb and with nothing sent, when `max_calls` calls of this client have
 * not completed yet, or when the provider picked already has
 * `max_queue_per_host` attempts waiting for a connection (a retry that meets
 * a full queue ends its call with MU_EOVERLOADED through @p cb).
 *
 * Retries go to another provider. An attempt that provably never reached a
 * provider (connect refused, a kept connection closed or reset unread) is
 * always tried again and does not count against `retries`; when no provider
 * is usable the call waits (connect_backoff_ms) within its deadline. A
 * timeout, a dropped response or an HTTP 5xx without a microutil body is
 * retried only for idempotent calls; a remote error (the method raised)
 * never. mu_result.attempts counts every attempt.
 */
MU_EXPORT mu_status mu_call(mu_client *client, const char *target, const char *args_json,
                            const char *kwargs_json, const mu_call_opts *opts, mu_call_cb cb,
                            void *user, mu_call_id *id);

/**
 * Cancels call @p id of @p client: its callback fires at once, from inside
 * this function, with MU_ECANCELLED, and 1 is returned. The request may
 * already have reached the provider. Returns 0 and does nothing when the
 * call's callback has already run or is running (a stale id), for an id
 * that @p client never gave (see mu_call_id), and from inside the log
 * sink.
 */
MU_EXPORT int mu_call_cancel(mu_client *client, mu_call_id id);

/* ========================================================= introspection */

/**
 * One endpoint of a method, as the view sees it now. Handed over by
 * pointer: fields are only ever appended, so the struct may grow.
 */
typedef struct mu_endpoint_info {
    const char *address;    /**< "host:port" */
    int pending;            /**< Attempts in flight or queued to it (all methods). */
    unsigned long long calls;    /**< Attempts sent to it. */
    unsigned long long failures; /**< Failures of its own: refused connections, timeouts,
                                      connections broken after sending, HTTP 5xx without a
                                      microutil body, protocol errors, oversized responses,
                                      and attempts unanswered past in-flight age. */
    int down;               /**< 1 while it is ejected (outlier detection). */
    unsigned long long ejections; /**< Times it was ejected. */
    long long down_ms;      /**< While down: ms until it is tried again; else 0. */
    int stale;              /**< 1: the list comes from snapshot_file, ZooKeeper not reached yet. */
} mu_endpoint_info;

/**
 * Calls @p fn once with the current endpoints of @p target ("svc:method")
 * if its providers are loaded, and returns MU_OK. If they are not loaded yet,
 * starts loading them and returns MU_ENOPROVIDER without calling @p fn
 * (mu_client_errmsg() says so); mu_client_watch() tells when they arrive.
 * The array and what it points to are valid during @p fn only.
 */
typedef void (*mu_endpoints_fn)(const mu_endpoint_info *const *eps, size_t n, void *user);
MU_EXPORT mu_status mu_client_endpoints(mu_client *client, const char *target,
                                        mu_endpoints_fn fn, void *user);

/**
 * Calls @p fn whenever the endpoint set of @p target changes (and once when
 * it first loads, or is found to have no provider node). Loads @p target if
 * needed. One watcher per target; @p fn NULL removes it, also from inside
 * the watcher itself. The watcher runs from the loop, never inside
 * mu_client_watch().
 */
typedef void (*mu_watch_fn)(const char *target, size_t n_endpoints, void *user);
MU_EXPORT mu_status mu_client_watch(mu_client *client, const char *target, mu_watch_fn fn,
                                    void *user);

/** Counters for tests, benchmarks and monitoring. */
typedef struct mu_client_stats {
    unsigned long long zk_get_children;  /**< get_children requests sent */
    unsigned long long zk_get;           /**< get (data) requests sent */
    unsigned long long zk_sessions;      /**< sessions established (1 + re-creations) */
    unsigned long long connections;      /**< TCP connections opened to providers */
    unsigned long long calls_started;
    unsigned long long calls_ok;
    unsigned long long calls_failed;
    unsigned long long attempts;
    unsigned long long retries;
    unsigned long long znodes_skipped;   /**< bad child data skipped */
    unsigned long long ejections;        /**< providers ejected (outlier detection) */
    unsigned long long overloaded;       /**< mu_call()s refused with MU_EOVERLOADED */
    unsigned long long retries_denied;   /**< retries and hedges not made: the retry budget was spent */
    unsigned long long hedges;           /**< hedge attempts started (hedge_ms) */
    unsigned long long response_bytes_peak; /**< most response bytes being received at once */
} mu_client_stats;

/**
 * Fills @p stats with the counters so far. @p size is sizeof(*stats) as the
 * caller compiled it: fields are only ever appended, and only the first
 * @p size bytes are written, so an older caller gets the fields it knows.
 */
MU_EXPORT void mu_client_stats_get(const mu_client *client, mu_client_stats *stats, size_t size);

/* =============================================================== metrics */

/** What a metric sample is, as Prometheus names it. */
typedef enum mu_metric_type {
    MU_METRIC_COUNTER = 0,
    MU_METRIC_GAUGE = 1,
    MU_METRIC_HISTOGRAM = 2
} mu_metric_type;

/**
 * One series of one metric family, handed to a mu_metrics_fn by pointer.
 * Fields are only ever appended: @c size is sizeof(mu_metric) as the
 * library was built, so a field is there when its offset is below it.
 * Every pointer is valid during the callback only.
 *
 * The families, their names and labels are listed in README.md
 * ("Metrics"). Per method the labels are `service` and `method`; per
 * endpoint, `endpoint` ("host:port", counting every method and service
 * that lists it); failure counters add `kind` (the failing mu_status,
 * lower case without MU_E, except "timeout" for MU_ETIMEDOUT: "connect", "remote", ...). A label
 * a series does not have is NULL.
 */
typedef struct mu_metric {
    size_t size;             /**< sizeof(mu_metric) of the library. */
    const char *name;        /**< Family name: "microutil_calls_total"; for a histogram the
                                  base name ("microutil_call_duration_seconds"). */
    const char *help;        /**< One line for `# HELP`. */
    mu_metric_type type;
    const char *service;     /**< Label values, or NULL. */
    const char *method;
    const char *endpoint;
    const char *kind;
    double value;            /**< Counter or gauge: the value. */
    size_t nbuckets;         /**< Histogram: number of finite bounds. */
    const double *le;        /**< Histogram: the bounds, in seconds, ascending (fixed). */
    const unsigned long long *buckets; /**< Histogram: cumulative count at each bound. */
    unsigned long long count;/**< Histogram: number of samples (the `+Inf` bucket). */
    double sum;              /**< Histogram: sum of the samples, in seconds. */
} mu_metric;

/** Receives one series. */
typedef void (*mu_metrics_fn)(const mu_metric *metric, void *user);

/**
 * Calls @p fn once per series of every metric family, all the series of a
 * family one after another, families in a fixed order. Counting costs
 * calls nothing but a few increments; this walk costs O(methods +
 * endpoints) per family. From inside @p fn, mu_call() is refused with
 * MU_EINVAL and mu_client_free() is carried out when the loop next turns,
 * as from the log sink. Returns MU_EINVAL for a NULL @p client or @p fn,
 * or a client being freed; else MU_OK.
 */
MU_EXPORT mu_status mu_client_metrics(mu_client *client, mu_metrics_fn fn, void *user);

/**
 * Writes the metrics of @p client in Prometheus' text exposition format
 * (version 0.0.4: `# HELP`, `# TYPE`, then the samples; label values
 * escaped) into @p buf, NUL-terminated, and returns MU_OK. If @p needed
 * is not NULL it receives the bytes the text takes, its NUL included.
 * When @p cap is less than that, returns MU_ENOSPACE, writes "" (when @p cap
 * > 0) and still sets @p *needed: call again with a buffer that large.
 * @p buf may be NULL when @p cap is 0, to ask the size. The size grows as
 * series appear and counts get longer: leave some room. Returns MU_EINVAL
 * for a NULL @p client.
 */
MU_EXPORT mu_status mu_metrics_write(mu_client *client, char *buf, size_t cap, size_t *needed);

/** 1 while the client has a live ZooKeeper session, else 0. */
MU_EXPORT int mu_client_zk_connected(const mu_client *client);

#ifdef __cplusplus
}
#endif

#endif /* MICROUTIL_MICROUTIL_H */
