/*
 * testbed: real ZooKeeper servers, test providers and small blocking
 * ZooKeeper helpers for the integration tests. Test code only: it blocks,
 * prints to stderr and is not part of the library.
 *
 * Processes. Every ZooKeeper server (a JVM, in its own process group) and
 * every provider is started with PR_SET_PDEATHSIG=SIGKILL, so none survives
 * the test process, even when the test crashes. Objects that a test forgot
 * to free (for example after a failed assertion) are freed by an atexit
 * handler, which kills their processes with SIGKILL and removes their temp
 * directories. Call everything from the thread that runs main(): the
 * parent-death signal fires when the thread that forked exits.
 *
 * Isolation. Each server lives in its own directory under $TMPDIR (or /tmp),
 * tb-zk.<pid>.XXXXXX or tb-ens.<pid>.XXXXXX, and gets free loopback ports,
 * so tests can run in parallel (make -j check). A test killed by a signal
 * runs no atexit handler: the next start removes directories whose owner
 * process is gone. A server's stdout and stderr (WARN and up, via
 * slf4j-simple) go to <dir>/log, whose tail is printed when it fails.
 *
 * Errors. Functions that fail print one line saying why on stderr (with the
 * tail of the server's log when a server did not come up) and return NULL or
 * a non-zero value. Every _free accepts NULL.
 *
 * Timeouts. Waiting for a server or a provider is bounded by 20 s; each
 * ZooKeeper client operation by 10 s.
 */
#ifndef MU_TESTBED_H
#define MU_TESTBED_H

#include <stdint.h>
#include <sys/types.h>
#include <zookeeper/zookeeper.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------ one server */

typedef struct tb_zk tb_zk;

/* Start a standalone ZooKeeper (tickTime 200 ms, sessions 400 ms to 60 s)
 * on 127.0.0.1 and a free port, and wait until it serves sessions (srvr
 * reports "Mode:" and conf shows our data directory). A port that someone
 * else took meanwhile is retried with another one. NULL on failure. */
tb_zk *tb_zk_start(void);
/* "127.0.0.1:PORT"; owned by zk, valid until tb_zk_free(). */
const char *tb_zk_connstr(const tb_zk *zk);
int tb_zk_port(const tb_zk *zk);
/* Stop the server: SIGTERM, SIGKILL after 5 s, reap. The data directory is
 * kept, so tb_zk_restart() brings back the same tree (and sessions, until
 * they time out). 0 on success; stopping a stopped server is a no-op. */
int tb_zk_stop(tb_zk *zk);
/* Start again on the same port and data directory and wait until it serves.
 * A running server is stopped first. 0 on success. */
int tb_zk_restart(tb_zk *zk);
/* Stop if running and remove the temp directory. */
void tb_zk_free(tb_zk *zk);

/* ------------------------------------------------------------ ensemble */

typedef struct tb_ensemble tb_ensemble;

/* Start n servers (1 <= n <= 9; use 3) on loopback, each with its own
 * directory, myid, client port and quorum/election ports, and wait until
 * every member reports leader or follower. NULL on failure. */
tb_ensemble *tb_ensemble_start(int n);
/* "127.0.0.1:p1,127.0.0.1:p2,..."; owned by the ensemble. */
const char *tb_ensemble_connstr(const tb_ensemble *e);
int tb_ensemble_size(const tb_ensemble *e);
/* Members are numbered 0..n-1 (myid is i + 1). */
int tb_ensemble_member_port(const tb_ensemble *e, int i);
/* "127.0.0.1:PORT" of member i only; owned by the ensemble. */
const char *tb_ensemble_member_connstr(const tb_ensemble *e, int i);
int tb_ensemble_member_running(const tb_ensemble *e, int i);
/* Stop member i (SIGTERM, SIGKILL after 5 s). Does not wait for the others
 * to elect a new leader: use tb_ensemble_wait() for that. 0 on success. */
int tb_ensemble_stop_member(tb_ensemble *e, int i);
/* Start member i again (same ports and data). If a majority of members is
 * then running, wait until every running member serves; otherwise (a quorum
 * is still missing) return as soon as the process is up. 0 on success. */
int tb_ensemble_restart_member(tb_ensemble *e, int i);
/* Wait until every running member reports leader or follower (needs a
 * running majority). 0 on success. */
int tb_ensemble_wait(tb_ensemble *e);
/* Index of the current leader, or -1. */
int tb_ensemble_leader(const tb_ensemble *e);
void tb_ensemble_free(tb_ensemble *e);

/* ------------------------------------------------------------ four-letter words */

/* Send a four-letter word ("ruok", "srvr", "mntr", "cons", ...) to
 * 127.0.0.1:port and return the answer (malloc'd, NUL-terminated; free it),
 * or NULL if the server did not answer within timeout_ms. */
char *tb_zk_4lw(int port, const char *word, int timeout_ms);

/* ------------------------------------------------------------ blocking client */

/* A ZooKeeper session on a private event_base, driven by src/zkloop.
 * Operations block until their completion fires (at most 10 s) and return
 * ZooKeeper's result code: ZOK (0), ZNONODE, ZNODEEXISTS, ... On timeout
 * the handle is closed and ZOPERATIONTIMEOUT is returned; every later call
 * on it returns ZINVALIDSTATE. The first open lowers the ZooKeeper client's
 * log level to ERROR for the whole process (it logs INFO to stderr). */
typedef struct tb_zkc tb_zkc;

/* Open a session (10 s timeout) and wait until connected. NULL on failure. */
tb_zkc *tb_zkc_open(const char *connstr);
/* The same with a session timeout in ms (the server clamps it to 400..60000)
 * and, if id is not NULL, re-attaching to an existing session. */
tb_zkc *tb_zkc_open_session(const char *connstr, int session_ms, const clientid_t *id);
/* Close the session (its ephemeral nodes go at once). NULL is a no-op. */
void tb_zkc_close(tb_zkc *z);

/* Session id and password of a connected handle (owned by the handle). */
const clientid_t *tb_zkc_client_id(tb_zkc *z);
int64_t tb_zkc_session_id(tb_zkc *z);
/* Last session state the watcher saw: ZOO_CONNECTED_STATE,
 * ZOO_CONNECTING_STATE, ZOO_EXPIRED_SESSION_STATE, ... (0 when closed). */
int tb_zkc_state(const tb_zkc *z);
/* Run the handle's loop for ms milliseconds (lets watches and state changes
 * arrive) and return tb_zkc_state(). */
int tb_zkc_pump(tb_zkc *z, int ms);

/* Create path with data (len bytes; data NULL or len -1 => null data) and
 * flags (0, ZOO_EPHEMERAL, ZOO_SEQUENCE, or both), open ACL. Missing parents
 * are created first as persistent nodes with empty data. If out_path is not
 * NULL the created path (with the sequence suffix) is copied there. */
int tb_zkc_create(tb_zkc *z, const char *path, const char *data, int len,
                  int flags, char *out_path, int out_len);
/* Like tb_zkc_create (parents must exist), but with an ACL that lets only
 * a client at 10.9.9.9 touch the node: reading it gives
 * ZNOAUTH. For tests of znodes a client may list but not read. */
int tb_zkc_create_unreadable(tb_zkc *z, const char *path, const char *data, int len, int flags,
                             char *out_path, int out_len);
/* Create path and all its missing ancestors: persistent, empty data. An
 * existing node is fine (ZOK). */
int tb_zkc_mkdirs(tb_zkc *z, const char *path);
/* Delete one node (any version). */
int tb_zkc_delete(tb_zkc *z, const char *path);
/* Delete path and everything below it. A missing path is ZOK. */
int tb_zkc_delete_tree(tb_zkc *z, const char *path);
/* ZOK if path exists, ZNONODE if not. stat may be NULL. */
int tb_zkc_stat(tb_zkc *z, const char *path, struct Stat *stat);
/* Children of path, sorted by strcmp, as a malloc'd array of malloc'd
 * strings: free with tb_strv_free(names, n). On error *names is NULL and
 * *n is 0. */
int tb_zkc_children(tb_zkc *z, const char *path, char ***names, int *n);
void tb_strv_free(char **names, int n);
/* Data of path. In: *len is the size of buf. Out: *len is the node's data
 * length (-1 for null data); the copy is truncated to the buffer when
 * larger, and NUL-terminated when there is room. */
int tb_zkc_get(tb_zkc *z, const char *path, char *buf, int *len);

/* Expire the session id on the servers at connstr the way ZooKeeper's own
 * tests do: attach a second handle to the same session (id and password) and
 * close it. Waits until the server reports the session as expired (a third
 * attach is refused). The session's owner notices on its next contact with
 * ZOO_EXPIRED_SESSION_STATE. 0 on success. */
int tb_zk_expire_session(const char *connstr, const clientid_t *id);

/* ------------------------------------------------------------ test providers */

typedef struct tb_provider tb_provider;

/* Start $MU_PROVIDER_BIN (tests/provider/mu-provider) with
 * "--zk zk_connstr" (or "--no-register" when zk_connstr is NULL) followed
 * by extra_args (NULL-terminated, may be NULL), e.g.
 *     const char *args[] = {"--service", "svc", "--pickle", "3", NULL};
 * and wait (20 s) for its "READY <port>" line on stdout. Its stderr is the
 * test's stderr. NULL on failure (the child is killed and reaped). */
tb_provider *tb_provider_start(const char *zk_connstr, const char *const *extra_args);
int tb_provider_port(const tb_provider *p);
pid_t tb_provider_pid(const tb_provider *p);
int tb_provider_running(const tb_provider *p);
/* Send sig and, unless it is SIGSTOP, SIGTSTP or SIGCONT, wait for the
 * process to end (10 s, then SIGKILL) and reap it. Returns 0 when it ended
 * as expected: exit status 0 (any signal), or death by sig itself (except
 * SIGTERM and SIGINT, which must give a clean exit). Otherwise it prints why
 * and returns the exit status (1..255; AddressSanitizer reports give 23), or
 * 128 + N for death by another signal N, 124 if it did not end within 10 s
 * (it is then SIGKILLed), or -1 if it was not running. */
int tb_provider_kill(tb_provider *p, int sig);
/* SIGTERM (see tb_provider_kill) if still running, then free. */
void tb_provider_free(tb_provider *p);

#ifdef __cplusplus
}
#endif

#endif
