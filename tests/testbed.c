/*
 * testbed: see testbed.h. Everything here blocks; it is test code.
 */
#define _GNU_SOURCE
#include "testbed.h"
#include "zkloop.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define ZK_SERVER_SH "/usr/share/zookeeper/bin/zkServer.sh"
#define ZK_CLASSPATH "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"
/* The Debian package has no SLF4J binding on the server's class path, so a
 * server that fails says nothing. With slf4j-simple it explains itself. */
#define SLF4J_SIMPLE "/usr/share/java/slf4j-simple.jar"

#define START_TIMEOUT_MS 20000
#define ENSEMBLE_TIMEOUT_MS 30000
#define STOP_GRACE_MS 5000
#define POLL_MS 50
#define ZK_OP_TIMEOUT_MS 10000
#define PROVIDER_READY_MS 20000
#define PROVIDER_EXIT_MS 10000

/* ------------------------------------------------------------ utilities */

static void tb_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void tb_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("testbed: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d) {
        tb_err("out of memory");
        abort();
    }
    return d;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    int r = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (r < 0) {
        tb_err("out of memory");
        abort();
    }
    return s;
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "we");
    if (!f) {
        tb_err("cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    int bad = fputs(text, f) < 0;
    bad |= fclose(f) != 0;
    if (bad)
        tb_err("cannot write %s", path);
    return bad ? -1 : 0;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void rm_tree(const char *dir)
{
    if (dir && *dir)
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Directories are named tb-<what>.<owner pid>.XXXXXX. A test killed by a
 * signal runs no atexit handler (its servers still die: PDEATHSIG), so the
 * next start removes the directories of owners that no longer exist. */
static void remove_stale_dirs(const char *tmp)
{
    DIR *d = opendir(tmp);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        char what[8];
        int pid = 0, used = 0;
        if (strncmp(de->d_name, "tb-", 3) != 0 ||
            sscanf(de->d_name, "tb-%7[a-z].%d.%n", what, &pid, &used) != 2 || used == 0 ||
            strlen(de->d_name + used) != 6 || pid <= 1)
            continue;
        if (kill(pid, 0) == 0 || errno != ESRCH)
            continue;
        char *path = xasprintf("%s/%s", tmp, de->d_name);
        rm_tree(path);
        free(path);
    }
    closedir(d);
}

static char *make_tempdir(const char *what)
{
    static int swept;
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    if (!swept) {
        swept = 1;
        remove_stale_dirs(tmp);
    }
    char *dir = xasprintf("%s/tb-%s.%d.XXXXXX", tmp, what, (int)getpid());
    if (!mkdtemp(dir)) {
        tb_err("mkdtemp %s: %s", dir, strerror(errno));
        free(dir);
        return NULL;
    }
    return dir;
}

/* Print the last bytes of a log file, to explain a failure. */
static void print_log_tail(const char *path, const char *title)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        tb_err("%s: no log at %s", title, path);
        return;
    }
    char buf[4096];
    long start = 0;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        start = size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0;
    }
    fseek(f, start, SEEK_SET);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    fprintf(stderr, "---- %s: tail of %s ----\n%s%s---- end of log ----\n", title, path, buf,
            n && buf[n - 1] != '\n' ? "\n" : "");
    fflush(stderr);
}

/* Free loopback ports: bind all of them at once (so they are distinct),
 * read the numbers, close. Someone may still take one before we use it;
 * callers retry with fresh ports when a server cannot bind. */
static int alloc_ports(int *ports, int n)
{
    int fds[32];
    int ok = 0, i;
    if (n > 32)
        return -1;
    for (i = 0; i < n; i++) {
        struct sockaddr_in a;
        socklen_t len = sizeof a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&a, sizeof a) < 0 ||
            getsockname(fds[i], (struct sockaddr *)&a, &len) < 0) {
            tb_err("cannot allocate a port: %s", strerror(errno));
            if (fds[i] >= 0)
                close(fds[i]);
            break;
        }
        ports[i] = ntohs(a.sin_port);
    }
    ok = i == n;
    while (i-- > 0)
        close(fds[i]);
    return ok ? 0 : -1;
}

/* ------------------------------------------------------------ leftovers at exit */

enum { K_ZK, K_ENSEMBLE, K_PROVIDER, K_ZKC };
struct reg_entry {
    int kind;
    void *obj;
};
static struct reg_entry *g_reg;
static int g_nreg, g_capreg;
static pid_t g_owner;
static int g_exiting; /* in the atexit handler: SIGKILL, do not wait politely */

static void tb_atexit(void);

static void reg_add(int kind, void *obj)
{
    if (!g_owner) {
        g_owner = getpid();
        atexit(tb_atexit);
    }
    if (g_nreg == g_capreg) {
        int cap = g_capreg ? 2 * g_capreg : 16;
        struct reg_entry *r = realloc(g_reg, (size_t)cap * sizeof *r);
        if (!r)
            return; /* the processes still die with us (PDEATHSIG) */
        g_reg = r;
        g_capreg = cap;
    }
    g_reg[g_nreg].kind = kind;
    g_reg[g_nreg].obj = obj;
    g_nreg++;
}

static void reg_del(void *obj)
{
    for (int i = g_nreg - 1; i >= 0; i--) {
        if (g_reg[i].obj == obj) {
            memmove(&g_reg[i], &g_reg[i + 1], (size_t)(g_nreg - i - 1) * sizeof *g_reg);
            g_nreg--;
            return;
        }
    }
}

static void tb_atexit(void)
{
    if (getpid() != g_owner)
        return; /* a forked child that called exit() */
    g_exiting = 1;
    if (g_nreg)
        tb_err("cleaning up %d test-bed object(s) the test did not free", g_nreg);
    while (g_nreg > 0) {
        struct reg_entry e = g_reg[g_nreg - 1];
        switch (e.kind) {
        case K_ZK: tb_zk_free(e.obj); break;
        case K_ENSEMBLE: tb_ensemble_free(e.obj); break;
        case K_PROVIDER: tb_provider_free(e.obj); break;
        case K_ZKC: tb_zkc_close(e.obj); break;
        }
        reg_del(e.obj); /* in case the free function did not */
    }
    free(g_reg);
    g_reg = NULL;
    g_capreg = 0;
}

/* ------------------------------------------------------------ processes */

/* fork + exec with: stdin from /dev/null, stdout to out_fd and stderr to
 * err_fd when >= 0, no other inherited descriptors, default signal
 * handling, SIGKILL when we die, and optionally a process group of its own.
 * Only async-signal-safe calls between fork and exec. */
static pid_t spawn(const char *path, char *const argv[], char *const envp[], int out_fd,
                   int err_fd, int new_group)
{
    pid_t parent = getpid();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        tb_err("fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        if (new_group)
            setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        const int sigs[] = {SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2};
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
            sigaction(sigs[i], &dfl, NULL);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0 && devnull != 0) {
            dup2(devnull, 0);
            close(devnull);
        }
        if (out_fd >= 0 && out_fd != 1)
            dup2(out_fd, 1);
        if (err_fd >= 0 && err_fd != 2)
            dup2(err_fd, 2);
#ifdef SYS_close_range
        if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
#endif
        {
            for (int fd = 3; fd < 4096; fd++)
                close(fd);
        }
        execve(path, argv, envp);
        int err = errno;
        char num[4] = {(char)('0' + err / 100 % 10), (char)('0' + err / 10 % 10),
                       (char)('0' + err % 10), '\n'};
        const struct iovec parts[] = {{(void *)"testbed: cannot exec ", 21},
                                      {(void *)path, strlen(path)},
                                      {(void *)": errno ", 8},
                                      {num, sizeof num}};
        ssize_t w = writev(2, parts, 4);
        (void)w;
        _exit(127);
    }
    if (new_group)
        setpgid(pid, pid); /* also in the parent: no race with kill(-pid) */
    return pid;
}

/* Has pid exited? Does not reap (WNOWAIT) so that the pid, and with it the
 * process group id, cannot be reused before we sweep the group. */
static int exited_nowait(pid_t pid)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
        return errno == ECHILD ? 1 : 0;
    return si.si_pid == pid;
}

static int reap(pid_t pid)
{
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return st;
}

/* Environment for zkServer.sh: ours plus its settings. */
static char **zk_envp(const char *logdir)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 8, sizeof *env);
    if (!env)
        abort();
    static const char *const drop[] = {"JMXDISABLE=", "ZOO_LOG_DIR=", "ZOO_LOG4J_PROP=",
                                       "JVMFLAGS=", "SERVER_JVMFLAGS=", "ZOOCFGDIR=", NULL};
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int skip = 0;
        for (int d = 0; drop[d]; d++)
            if (strncmp(environ[i], drop[d], strlen(drop[d])) == 0)
                skip = 1;
        if (!skip)
            env[k++] = xstrdup(environ[i]);
    }
    env[k++] = xstrdup("JMXDISABLE=true");
    env[k++] = xasprintf("ZOO_LOG_DIR=%s", logdir);
    env[k++] = xstrdup("ZOO_LOG4J_PROP=WARN,CONSOLE");
    /* Later -cp wins: add a logger. A small heap, the serial collector and
     * the C1 compiler only start faster and weigh less with many servers. */
    int simple = access(SLF4J_SIMPLE, R_OK) == 0;
    env[k++] = xasprintf("JVMFLAGS=-cp %s%s%s -Dorg.slf4j.simpleLogger.defaultLogLevel=warn "
                         "-Dorg.slf4j.simpleLogger.showDateTime=true "
                         "-Djava.net.preferIPv4Stack=true -XX:+UseSerialGC "
                         "-XX:TieredStopAtLevel=1 -XX:-UsePerfData -Xmx256m",
                         ZK_CLASSPATH, simple ? ":" : "", simple ? SLF4J_SIMPLE : "");
    env[k] = NULL;
    return env;
}

static void strv_free_null(char **v)
{
    if (!v)
        return;
    for (size_t i = 0; v[i]; i++)
        free(v[i]);
    free(v);
}

/* ------------------------------------------------------------ four-letter words */

char *tb_zk_4lw(int port, const char *word, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return NULL;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char *out = NULL;
    size_t len = 0, cap = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        if (errno != EINPROGRESS)
            goto fail;
        struct pollfd p = {fd, POLLOUT, 0};
        int left = (int)(deadline - now_ms());
        if (left <= 0 || poll(&p, 1, left) != 1)
            goto fail;
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err)
            goto fail;
    }
    if (send(fd, word, strlen(word), MSG_NOSIGNAL) != (ssize_t)strlen(word))
        goto fail;
    for (;;) {
        /* Early in its start a server may accept and never answer. */
        int left = (int)(deadline - now_ms());
        struct pollfd p = {fd, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, left) != 1)
            goto fail;
        if (cap - len < 4096) {
            cap = cap ? 2 * cap : 8192;
            char *n = realloc(out, cap);
            if (!n)
                goto fail;
            out = n;
        }
        ssize_t r = recv(fd, out + len, cap - len - 1, 0);
        if (r == 0)
            break;
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            goto fail;
        }
        len += (size_t)r;
    }
    close(fd);
    if (!out)
        out = calloc(1, 1);
    else
        out[len] = '\0';
    return out;
fail:
    close(fd);
    free(out);
    return NULL;
}

/* ------------------------------------------------------------ one server process */

struct srv {
    char *dir;      /* the server's own directory: zoo.cfg, log, data/ */
    char *datadir;
    char *cfg;
    char *log;
    int port;       /* client port */
    pid_t pid;      /* JVM (zkServer.sh execs it), leader of its own group */
    char connstr[32];
};

enum { SRV_READY = 0, SRV_DIED = 1, SRV_FOREIGN = 2, SRV_TIMEOUT = 3 };

static int srv_init(struct srv *s, const char *dir)
{
    memset(s, 0, sizeof *s);
    s->dir = xstrdup(dir);
    s->datadir = xasprintf("%s/data", dir);
    s->cfg = xasprintf("%s/zoo.cfg", dir);
    s->log = xasprintf("%s/log", dir);
    if (mkdir(s->datadir, 0700) < 0 && errno != EEXIST) {
        tb_err("mkdir %s: %s", s->datadir, strerror(errno));
        return -1;
    }
    return 0;
}

static void srv_set_port(struct srv *s, int port)
{
    s->port = port;
    snprintf(s->connstr, sizeof s->connstr, "127.0.0.1:%d", port);
}

static char *srv_base_cfg(const struct srv *s)
{
    return xasprintf("tickTime=200\n"
                     "minSessionTimeout=400\n"
                     "maxSessionTimeout=60000\n"
                     "initLimit=10\n"
                     "syncLimit=5\n"
                     "dataDir=%s\n"
                     "clientPort=%d\n"
                     "clientPortAddress=127.0.0.1\n"
                     "admin.enableServer=false\n"
                     "4lw.commands.whitelist=*\n"
                     /* the default, 60 per address, is fewer than
                        bench/herd's clients on loopback */
                     "maxClientCnxns=1000\n",
                     s->datadir, s->port);
}

static int srv_spawn(struct srv *s)
{
    int logfd = open(s->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (logfd < 0) {
        tb_err("open %s: %s", s->log, strerror(errno));
        return -1;
    }
    char head[128];
    int hl = snprintf(head, sizeof head, "==== testbed: starting on port %d ====\n", s->port);
    if (write(logfd, head, (size_t)hl) < 0) {
        /* the log is only for diagnosis */
    }
    char **env = zk_envp(s->dir);
    char *argv[] = {(char *)ZK_SERVER_SH, (char *)"start-foreground", s->cfg, NULL};
    s->pid = spawn(ZK_SERVER_SH, argv, env, logfd, logfd, 1);
    strv_free_null(env);
    close(logfd);
    return s->pid > 0 ? 0 : -1;
}

static int is_serving_mode(const char *srvr, int quorum)
{
    if (!srvr)
        return 0;
    if (strstr(srvr, "Mode: leader") || strstr(srvr, "Mode: follower"))
        return 1;
    return !quorum && strstr(srvr, "Mode: standalone") != NULL;
}

/* Wait until the server serves sessions. A server answers ruok before it
 * accepts sessions, so wait for srvr's Mode:, then check with conf that the
 * answer comes from our server and not from someone else on the port. */
static int srv_wait(struct srv *s, int quorum, int64_t deadline, int *died_status)
{
    char want[PATH_MAX + 32];
    snprintf(want, sizeof want, "dataDir=%s/version-2\n", s->datadir);
    for (;;) {
        if (s->pid <= 0)
            return SRV_DIED;
        if (exited_nowait(s->pid)) {
            kill(-s->pid, SIGKILL);
            int st = reap(s->pid);
            s->pid = 0;
            if (died_status)
                *died_status = st;
            return SRV_DIED;
        }
        int left = (int)(deadline - now_ms());
        if (left <= 0)
            return SRV_TIMEOUT;
        char *ans = tb_zk_4lw(s->port, "srvr", left < 1000 ? left : 1000);
        int mode = is_serving_mode(ans, quorum);
        free(ans);
        if (mode) {
            char *conf = tb_zk_4lw(s->port, "conf", 1000);
            if (conf) {
                int ours = strstr(conf, want) != NULL;
                free(conf);
                return ours ? SRV_READY : SRV_FOREIGN;
            }
        }
        sleep_ms(POLL_MS);
    }
}

/* SIGTERM to the group, SIGKILL after the grace period, reap. */
static int srv_stop(struct srv *s)
{
    if (s->pid <= 0)
        return 0;
    pid_t pid = s->pid;
    if (kill(-pid, g_exiting ? SIGKILL : SIGTERM) < 0)
        kill(pid, g_exiting ? SIGKILL : SIGTERM);
    int64_t deadline = now_ms() + STOP_GRACE_MS;
    while (!exited_nowait(pid) && now_ms() < deadline)
        sleep_ms(10);
    int rc = 0;
    if (!exited_nowait(pid)) {
        tb_err("ZooKeeper pid %d did not stop within %d ms: SIGKILL", (int)pid, STOP_GRACE_MS);
        rc = -1;
    }
    kill(-pid, SIGKILL); /* the group, in case anything else is in it */
    reap(pid);
    s->pid = 0;
    return rc;
}

static void srv_destroy(struct srv *s)
{
    srv_stop(s);
    free(s->datadir);
    free(s->cfg);
    free(s->log);
    free(s->dir);
    memset(s, 0, sizeof *s);
}

static void describe_status(char *buf, size_t len, int st)
{
    if (WIFEXITED(st))
        snprintf(buf, len, "exit status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, len, "signal %d", WTERMSIG(st));
    else
        snprintf(buf, len, "status 0x%x", st);
}

/* ------------------------------------------------------------ standalone server */

struct tb_zk {
    struct srv s;
    char *top; /* temp dir */
};

static int zk_write_cfg(tb_zk *zk)
{
    char *cfg = srv_base_cfg(&zk->s);
    int rc = write_file(zk->s.cfg, cfg);
    free(cfg);
    return rc;
}

static int g_zklog_set;
static void quiet_zk_client_log(void)
{
    if (!g_zklog_set) {
        zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
        g_zklog_set = 1;
    }
}

/* Start on the current port; on a port clash pick new ports when allowed. */
static int zk_launch(tb_zk *zk, int new_port_on_clash)
{
    const int attempts = new_port_on_clash ? 6 : 3;
    for (int a = 0; a < attempts; a++) {
        if (zk_write_cfg(zk) < 0 || srv_spawn(&zk->s) < 0)
            return -1;
        int st = 0;
        int r = srv_wait(&zk->s, 0, now_ms() + START_TIMEOUT_MS, &st);
        if (r == SRV_READY)
            return 0;
        if (r == SRV_TIMEOUT) {
            tb_err("ZooKeeper on port %d did not serve within %d ms", zk->s.port,
                   START_TIMEOUT_MS);
            print_log_tail(zk->s.log, "ZooKeeper");
            srv_stop(&zk->s);
            return -1;
        }
        char why[64];
        if (r == SRV_FOREIGN) {
            snprintf(why, sizeof why, "another server answers on it");
            srv_stop(&zk->s);
        } else {
            describe_status(why, sizeof why, st);
        }
        if (a + 1 == attempts) {
            tb_err("ZooKeeper on port %d failed (%s); giving up", zk->s.port, why);
            print_log_tail(zk->s.log, "ZooKeeper");
            return -1;
        }
        /* Most likely the port was taken between our probe and its bind. */
        tb_err("ZooKeeper on port %d failed (%s); retrying%s", zk->s.port, why,
               new_port_on_clash ? " on another port" : "");
        if (new_port_on_clash) {
            int port;
            if (alloc_ports(&port, 1) < 0)
                return -1;
            srv_set_port(&zk->s, port);
        } else {
            sleep_ms(300);
        }
    }
    return -1;
}

tb_zk *tb_zk_start(void)
{
    quiet_zk_client_log();
    tb_zk *zk = calloc(1, sizeof *zk);
    if (!zk)
        return NULL;
    zk->top = make_tempdir("zk");
    if (!zk->top || srv_init(&zk->s, zk->top) < 0)
        goto fail;
    reg_add(K_ZK, zk);
    int port;
    if (alloc_ports(&port, 1) < 0)
        goto fail;
    srv_set_port(&zk->s, port);
    if (zk_launch(zk, 1) < 0)
        goto fail;
    return zk;
fail:
    tb_zk_free(zk);
    return NULL;
}

const char *tb_zk_connstr(const tb_zk *zk)
{
    return zk->s.connstr;
}

int tb_zk_port(const tb_zk *zk)
{
    return zk->s.port;
}

int tb_zk_stop(tb_zk *zk)
{
    return zk ? srv_stop(&zk->s) : -1;
}

int tb_zk_restart(tb_zk *zk)
{
    if (!zk)
        return -1;
    srv_stop(&zk->s);
    return zk_launch(zk, 0);
}

void tb_zk_free(tb_zk *zk)
{
    if (!zk)
        return;
    reg_del(zk);
    srv_destroy(&zk->s);
    rm_tree(zk->top);
    free(zk->top);
    free(zk);
}

/* ------------------------------------------------------------ ensemble */

struct member {
    struct srv s;
    int quorum_port, election_port;
};

struct tb_ensemble {
    int n;
    char *top;
    struct member *m;
    char *connstr;
};

static int ens_write_cfgs(tb_ensemble *e)
{
    size_t cap = 256 + (size_t)e->n * 64;
    char *servers = calloc(1, cap);
    if (!servers)
        return -1;
    size_t off = 0;
    for (int i = 0; i < e->n; i++)
        off += (size_t)snprintf(servers + off, cap - off, "server.%d=127.0.0.1:%d:%d\n", i + 1,
                                e->m[i].quorum_port, e->m[i].election_port);
    int rc = 0;
    for (int i = 0; i < e->n && rc == 0; i++) {
        struct srv *s = &e->m[i].s;
        char *base = srv_base_cfg(s);
        char *cfg = xasprintf("%s%s", base, servers);
        char *myid_path = xasprintf("%s/myid", s->datadir);
        char myid[16];
        snprintf(myid, sizeof myid, "%d\n", i + 1);
        rc = write_file(s->cfg, cfg);
        if (rc == 0)
            rc = write_file(myid_path, myid);
        free(base);
        free(cfg);
        free(myid_path);
    }
    free(servers);
    return rc;
}

static int ens_new_ports(tb_ensemble *e)
{
    int ports[27];
    if (alloc_ports(ports, 3 * e->n) < 0)
        return -1;
    free(e->connstr);
    size_t cap = (size_t)e->n * 24 + 1;
    e->connstr = calloc(1, cap);
    if (!e->connstr)
        return -1;
    size_t off = 0;
    for (int i = 0; i < e->n; i++) {
        srv_set_port(&e->m[i].s, ports[3 * i]);
        e->m[i].quorum_port = ports[3 * i + 1];
        e->m[i].election_port = ports[3 * i + 2];
        off += (size_t)snprintf(e->connstr + off, cap - off, "%s127.0.0.1:%d", i ? "," : "",
                                ports[3 * i]);
    }
    return 0;
}

static int ens_running(const tb_ensemble *e)
{
    int r = 0;
    for (int i = 0; i < e->n; i++)
        r += e->m[i].s.pid > 0;
    return r;
}

/* Wait until every running member serves. Returns SRV_* of the first
 * member that does not; *bad is its index. */
static int ens_wait_all(tb_ensemble *e, int *bad, int *st)
{
    int64_t deadline = now_ms() + ENSEMBLE_TIMEOUT_MS;
    for (int i = 0; i < e->n; i++) {
        if (e->m[i].s.pid <= 0)
            continue;
        int r = srv_wait(&e->m[i].s, e->n > 1, deadline, st);
        if (r != SRV_READY) {
            *bad = i;
            return r;
        }
    }
    return SRV_READY;
}

static void ens_print_logs(const tb_ensemble *e)
{
    for (int i = 0; i < e->n; i++) {
        char title[64];
        snprintf(title, sizeof title, "ZooKeeper ensemble member %d", i);
        print_log_tail(e->m[i].s.log, title);
    }
}

tb_ensemble *tb_ensemble_start(int n)
{
    quiet_zk_client_log();
    if (n < 1 || n > 9) {
        tb_err("tb_ensemble_start: n must be 1..9");
        return NULL;
    }
    tb_ensemble *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->n = n;
    e->m = calloc((size_t)n, sizeof *e->m);
    e->top = make_tempdir("ens");
    if (!e->m || !e->top)
        goto fail;
    reg_add(K_ENSEMBLE, e);
    for (int i = 0; i < n; i++) {
        char *dir = xasprintf("%s/m%d", e->top, i);
        int rc = mkdir(dir, 0700) < 0 ? -1 : srv_init(&e->m[i].s, dir);
        free(dir);
        if (rc < 0)
            goto fail;
    }
    for (int attempt = 0; attempt < 4; attempt++) {
        if (ens_new_ports(e) < 0 || ens_write_cfgs(e) < 0)
            goto fail;
        for (int i = 0; i < n; i++)
            if (srv_spawn(&e->m[i].s) < 0)
                goto fail;
        int bad = -1, st = 0;
        int r = ens_wait_all(e, &bad, &st);
        if (r == SRV_READY)
            return e;
        if (r == SRV_TIMEOUT) {
            tb_err("ZooKeeper ensemble member %d (port %d) did not serve within %d ms", bad,
                   e->m[bad].s.port, ENSEMBLE_TIMEOUT_MS);
            ens_print_logs(e);
            goto fail;
        }
        char why[64];
        if (r == SRV_FOREIGN)
            snprintf(why, sizeof why, "another server answers on port %d", e->m[bad].s.port);
        else
            describe_status(why, sizeof why, st);
        if (attempt == 3) {
            tb_err("ZooKeeper ensemble member %d failed (%s); giving up", bad, why);
            ens_print_logs(e);
            goto fail;
        }
        tb_err("ZooKeeper ensemble member %d failed (%s); retrying on other ports", bad, why);
        for (int i = 0; i < n; i++) {
            srv_stop(&e->m[i].s);
            rm_tree(e->m[i].s.datadir); /* a clean start: no epoch from the failed try */
            mkdir(e->m[i].s.datadir, 0700);
        }
    }
fail:
    tb_ensemble_free(e);
    return NULL;
}

const char *tb_ensemble_connstr(const tb_ensemble *e)
{
    return e->connstr;
}

int tb_ensemble_size(const tb_ensemble *e)
{
    return e->n;
}

int tb_ensemble_member_port(const tb_ensemble *e, int i)
{
    return i >= 0 && i < e->n ? e->m[i].s.port : -1;
}

const char *tb_ensemble_member_connstr(const tb_ensemble *e, int i)
{
    return i >= 0 && i < e->n ? e->m[i].s.connstr : NULL;
}

int tb_ensemble_member_running(const tb_ensemble *e, int i)
{
    return i >= 0 && i < e->n && e->m[i].s.pid > 0;
}

int tb_ensemble_stop_member(tb_ensemble *e, int i)
{
    if (!e || i < 0 || i >= e->n)
        return -1;
    return srv_stop(&e->m[i].s);
}

int tb_ensemble_wait(tb_ensemble *e)
{
    if (!e)
        return -1;
    if (2 * ens_running(e) <= e->n) {
        tb_err("tb_ensemble_wait: only %d of %d members run: no quorum", ens_running(e), e->n);
        return -1;
    }
    int bad = -1, st = 0;
    int r = ens_wait_all(e, &bad, &st);
    if (r == SRV_READY)
        return 0;
    char why[64] = "timeout";
    if (r == SRV_DIED)
        describe_status(why, sizeof why, st);
    else if (r == SRV_FOREIGN)
        snprintf(why, sizeof why, "another server answers on its port");
    tb_err("ZooKeeper ensemble member %d (port %d) does not serve (%s)", bad, e->m[bad].s.port,
           why);
    print_log_tail(e->m[bad].s.log, "ZooKeeper ensemble member");
    return -1;
}

int tb_ensemble_restart_member(tb_ensemble *e, int i)
{
    if (!e || i < 0 || i >= e->n)
        return -1;
    struct srv *s = &e->m[i].s;
    srv_stop(s);
    if (srv_spawn(s) < 0)
        return -1;
    if (2 * ens_running(e) > e->n)
        return tb_ensemble_wait(e);
    /* No quorum yet: it cannot serve; wait until the process answers. */
    int64_t deadline = now_ms() + START_TIMEOUT_MS;
    while (now_ms() < deadline) {
        if (exited_nowait(s->pid)) {
            reap(s->pid);
            s->pid = 0;
            tb_err("ZooKeeper ensemble member %d exited at restart", i);
            print_log_tail(s->log, "ZooKeeper ensemble member");
            return -1;
        }
        char *ans = tb_zk_4lw(s->port, "ruok", 1000);
        int ok = ans && strcmp(ans, "imok") == 0;
        free(ans);
        if (ok)
            return 0;
        sleep_ms(POLL_MS);
    }
    tb_err("ZooKeeper ensemble member %d did not answer ruok within %d ms", i, START_TIMEOUT_MS);
    print_log_tail(s->log, "ZooKeeper ensemble member");
    return -1;
}

int tb_ensemble_leader(const tb_ensemble *e)
{
    for (int i = 0; i < e->n; i++) {
        if (e->m[i].s.pid <= 0)
            continue;
        char *ans = tb_zk_4lw(e->m[i].s.port, "srvr", 1000);
        int leader = ans && strstr(ans, "Mode: leader");
        free(ans);
        if (leader)
            return i;
    }
    return -1;
}

void tb_ensemble_free(tb_ensemble *e)
{
    if (!e)
        return;
    reg_del(e);
    if (e->m) {
        for (int i = 0; i < e->n; i++) /* signal all first: they stop in parallel */
            if (e->m[i].s.pid > 0)
                kill(-e->m[i].s.pid, g_exiting ? SIGKILL : SIGTERM);
        for (int i = 0; i < e->n; i++)
            srv_destroy(&e->m[i].s);
    }
    rm_tree(e->top);
    free(e->top);
    free(e->m);
    free(e->connstr);
    free(e);
}

/* ------------------------------------------------------------ blocking client */

struct tb_zkc {
    struct event_base *base;
    mu_zkloop *loop;
    zhandle_t *zh;
    int state;
    int quiet; /* drop the client library's log (expected errors) */
};

static void zkc_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    (void)zh;
    (void)path;
    tb_zkc *z = ctx;
    if (type == ZOO_SESSION_EVENT)
        z->state = state;
}

static void zkc_log(const char *msg)
{
    fprintf(stderr, "testbed zk client: %s\n", msg);
}

static void zkc_log_quiet(const char *msg)
{
    (void)msg;
}

/* Close the handle. Outstanding completions fire now with ZCLOSING, while
 * their (stack) contexts are still alive. */
static void zkc_kill(tb_zkc *z)
{
    if (z->zh) {
        mu_zkloop_attach(z->loop, NULL);
        zhandle_t *zh = z->zh;
        z->zh = NULL;
        zookeeper_close(zh);
    }
    z->state = 0;
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

/* Run the loop until *done, the session state is one of the stop states
 * (when stop_states), or timeout. Returns 1 if *done. */
static int zkc_run(tb_zkc *z, const int *done, int stop_on_state, int timeout_ms)
{
    int expired = 0;
    struct event *t = evtimer_new(z->base, on_deadline, &expired);
    if (!t)
        return 0;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(t, &tv);
    while (!expired && !(done && *done)) {
        if (stop_on_state && (z->state == ZOO_CONNECTED_STATE ||
                              z->state == ZOO_EXPIRED_SESSION_STATE ||
                              z->state == ZOO_AUTH_FAILED_STATE))
            break;
        if (event_base_loop(z->base, EVLOOP_ONCE) < 0)
            break;
    }
    event_free(t);
    return done ? *done : 0;
}

static tb_zkc *zkc_open(const char *connstr, int session_ms, const clientid_t *id, int quiet)
{
    quiet_zk_client_log();
    tb_zkc *z = calloc(1, sizeof *z);
    if (!z)
        return NULL;
    z->quiet = quiet;
    z->base = event_base_new();
    z->loop = z->base ? mu_zkloop_new(z->base) : NULL;
    if (!z->loop) {
        tb_err("tb_zkc_open: cannot create an event loop");
        tb_zkc_close(z);
        return NULL;
    }
    z->zh = zookeeper_init2(connstr, zkc_watcher, session_ms, id, z, 0,
                            quiet ? zkc_log_quiet : zkc_log);
    if (!z->zh) {
        tb_err("zookeeper_init(%s): %s", connstr, strerror(errno));
        tb_zkc_close(z);
        return NULL;
    }
    reg_add(K_ZKC, z);
    mu_zkloop_attach(z->loop, z->zh);
    zkc_run(z, NULL, 1, START_TIMEOUT_MS);
    return z;
}

tb_zkc *tb_zkc_open_session(const char *connstr, int session_ms, const clientid_t *id)
{
    tb_zkc *z = zkc_open(connstr, session_ms, id, 0);
    if (z && z->state != ZOO_CONNECTED_STATE) {
        tb_err("ZooKeeper session to %s: %s", connstr,
               z->state == ZOO_EXPIRED_SESSION_STATE ? "session expired"
               : z->state == ZOO_AUTH_FAILED_STATE   ? "authentication failed"
                                                     : "not connected within 20 s");
        tb_zkc_close(z);
        return NULL;
    }
    return z;
}

tb_zkc *tb_zkc_open(const char *connstr)
{
    return tb_zkc_open_session(connstr, 10000, NULL);
}

void tb_zkc_close(tb_zkc *z)
{
    if (!z)
        return;
    reg_del(z);
    zkc_kill(z);
    mu_zkloop_free(z->loop);
    if (z->base)
        event_base_free(z->base);
    free(z);
}

const clientid_t *tb_zkc_client_id(tb_zkc *z)
{
    return z && z->zh ? zoo_client_id(z->zh) : NULL;
}

int64_t tb_zkc_session_id(tb_zkc *z)
{
    const clientid_t *id = tb_zkc_client_id(z);
    return id ? id->client_id : 0;
}

int tb_zkc_state(const tb_zkc *z)
{
    return z ? z->state : 0;
}

int tb_zkc_pump(tb_zkc *z, int ms)
{
    if (!z || !z->zh)
        return 0;
    zkc_run(z, NULL, 0, ms);
    return z->state;
}

struct op {
    int done;
    int rc;
    char *buf;
    int buflen;
    int *outlen;
    struct Stat *stat;
    char ***names;
    int *n;
};

/* Issue (rc of the zoo_a* call) and wait for the completion. */
static int zkc_finish(tb_zkc *z, struct op *op, int rc, const char *what, const char *path)
{
    if (rc != ZOK)
        return rc;
    mu_zkloop_update(z->loop);
    if (!zkc_run(z, &op->done, 0, ZK_OP_TIMEOUT_MS)) {
        tb_err("ZooKeeper %s %s: no answer within %d ms; closing the handle", what, path,
               ZK_OP_TIMEOUT_MS);
        zkc_kill(z);
        return ZOPERATIONTIMEOUT;
    }
    return op->rc;
}

static void string_done(int rc, const char *value, const void *data)
{
    struct op *op = (struct op *)data;
    op->rc = rc;
    if (rc == ZOK && op->buf && op->buflen > 0 && value)
        snprintf(op->buf, (size_t)op->buflen, "%s", value);
    op->done = 1;
}

static void void_done(int rc, const void *data)
{
    struct op *op = (struct op *)data;
    op->rc = rc;
    op->done = 1;
}

static void stat_done(int rc, const struct Stat *stat, const void *data)
{
    struct op *op = (struct op *)data;
    op->rc = rc;
    if (rc == ZOK && op->stat && stat)
        *op->stat = *stat;
    op->done = 1;
}

static void data_done(int rc, const char *value, int value_len, const struct Stat *stat,
                      const void *data)
{
    struct op *op = (struct op *)data;
    (void)stat;
    op->rc = rc;
    if (rc == ZOK) {
        int len = value ? value_len : -1;
        if (len > 0 && op->buflen > 0)
            memcpy(op->buf, value, (size_t)(len < op->buflen ? len : op->buflen));
        if (len >= 0 && len < op->buflen)
            op->buf[len] = '\0';
        else if (len < 0 && op->buflen > 0)
            op->buf[0] = '\0';
        *op->outlen = len;
    }
    op->done = 1;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void strings_done(int rc, const struct String_vector *strings, const void *data)
{
    struct op *op = (struct op *)data;
    op->rc = rc;
    if (rc == ZOK && strings) {
        char **v = calloc((size_t)strings->count + 1, sizeof *v);
        if (!v) {
            op->rc = ZSYSTEMERROR;
        } else {
            for (int i = 0; i < strings->count; i++)
                v[i] = xstrdup(strings->data[i]);
            qsort(v, (size_t)strings->count, sizeof *v, cmp_str);
            *op->names = v;
            *op->n = strings->count;
        }
    }
    op->done = 1;
}

static int zkc_create_acl(tb_zkc *z, const char *path, const char *data, int len, int flags,
                          const struct ACL_vector *acl, char *out_path, int out_len)
{
    if (!z || !z->zh)
        return ZINVALIDSTATE;
    struct op op = {0};
    op.buf = out_path;
    op.buflen = out_len;
    if (!data)
        len = -1;
    int rc = zoo_acreate(z->zh, path, data, len, acl, flags, string_done, &op);
    return zkc_finish(z, &op, rc, "create", path);
}

static int zkc_create1(tb_zkc *z, const char *path, const char *data, int len, int flags,
                       char *out_path, int out_len)
{
    return zkc_create_acl(z, path, data, len, flags, &ZOO_OPEN_ACL_UNSAFE, out_path, out_len);
}

int tb_zkc_create_unreadable(tb_zkc *z, const char *path, const char *data, int len, int flags,
                             char *out_path, int out_len)
{
    /* Only a client connecting from 10.9.9.9 may read it: nobody here. */
    char scheme[] = "ip", who[] = "10.9.9.9";
    struct ACL acl = {ZOO_PERM_ALL, {scheme, who}};
    struct ACL_vector v = {1, &acl};
    return zkc_create_acl(z, path, data, len, flags, &v, out_path, out_len);
}

int tb_zkc_mkdirs(tb_zkc *z, const char *path)
{
    if (!path || path[0] != '/')
        return ZBADARGUMENTS;
    char *p = xstrdup(path);
    int rc = ZOK;
    size_t len = strlen(p);
    while (len > 1 && p[len - 1] == '/')
        p[--len] = '\0';
    for (char *s = p + 1; rc == ZOK && *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        rc = zkc_create1(z, p, "", 0, 0, NULL, 0);
        if (rc == ZNODEEXISTS)
            rc = ZOK;
        *s = '/';
    }
    if (rc == ZOK && len > 1) {
        rc = zkc_create1(z, p, "", 0, 0, NULL, 0);
        if (rc == ZNODEEXISTS)
            rc = ZOK;
    }
    free(p);
    return rc;
}

int tb_zkc_create(tb_zkc *z, const char *path, const char *data, int len, int flags,
                  char *out_path, int out_len)
{
    int rc = zkc_create1(z, path, data, len, flags, out_path, out_len);
    if (rc == ZNONODE) {
        char *parent = xstrdup(path);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) {
            *slash = '\0';
            rc = tb_zkc_mkdirs(z, parent);
            if (rc == ZOK)
                rc = zkc_create1(z, path, data, len, flags, out_path, out_len);
        }
        free(parent);
    }
    return rc;
}

int tb_zkc_delete(tb_zkc *z, const char *path)
{
    if (!z || !z->zh)
        return ZINVALIDSTATE;
    struct op op = {0};
    int rc = zoo_adelete(z->zh, path, -1, void_done, &op);
    return zkc_finish(z, &op, rc, "delete", path);
}

int tb_zkc_delete_tree(tb_zkc *z, const char *path)
{
    char **names = NULL;
    int n = 0;
    int rc = tb_zkc_children(z, path, &names, &n);
    if (rc == ZNONODE)
        return ZOK;
    for (int i = 0; rc == ZOK && i < n; i++) {
        char *child = xasprintf("%s/%s", strcmp(path, "/") ? path : "", names[i]);
        rc = tb_zkc_delete_tree(z, child);
        free(child);
    }
    tb_strv_free(names, n);
    if (rc == ZOK && strcmp(path, "/") != 0 && strcmp(path, "/zookeeper") != 0) {
        rc = tb_zkc_delete(z, path);
        if (rc == ZNONODE)
            rc = ZOK;
    }
    return rc;
}

int tb_zkc_stat(tb_zkc *z, const char *path, struct Stat *stat)
{
    if (!z || !z->zh)
        return ZINVALIDSTATE;
    struct op op = {0};
    op.stat = stat;
    int rc = zoo_aexists(z->zh, path, 0, stat_done, &op);
    return zkc_finish(z, &op, rc, "exists", path);
}

int tb_zkc_children(tb_zkc *z, const char *path, char ***names, int *n)
{
    *names = NULL;
    *n = 0;
    if (!z || !z->zh)
        return ZINVALIDSTATE;
    struct op op = {0};
    op.names = names;
    op.n = n;
    int rc = zoo_aget_children(z->zh, path, 0, strings_done, &op);
    return zkc_finish(z, &op, rc, "get_children", path);
}

void tb_strv_free(char **names, int n)
{
    if (!names)
        return;
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

int tb_zkc_get(tb_zkc *z, const char *path, char *buf, int *len)
{
    if (!z || !z->zh)
        return ZINVALIDSTATE;
    struct op op = {0};
    op.buf = buf;
    op.buflen = *len;
    op.outlen = len;
    int rc = zoo_aget(z->zh, path, 0, data_done, &op);
    return zkc_finish(z, &op, rc, "get", path);
}

int tb_zk_expire_session(const char *connstr, const clientid_t *id)
{
    if (!connstr || !id || !id->client_id) {
        tb_err("tb_zk_expire_session: no session id");
        return -1;
    }
    clientid_t copy = *id; /* id may belong to a handle that changes */
    /* Attach and close; then check that a fresh attach is refused. */
    for (int round = 0; round < 6; round++) {
        tb_zkc *z = zkc_open(connstr, 10000, &copy, 1);
        if (!z)
            return -1;
        int state = z->state;
        tb_zkc_close(z);
        if (state == ZOO_EXPIRED_SESSION_STATE)
            return 0;
        if (state != ZOO_CONNECTED_STATE) {
            tb_err("tb_zk_expire_session: cannot reach %s", connstr);
            return -1;
        }
        if (round)
            sleep_ms(POLL_MS);
    }
    tb_err("tb_zk_expire_session: session 0x%llx still alive", (unsigned long long)copy.client_id);
    return -1;
}

/* ------------------------------------------------------------ test providers */

struct tb_provider {
    pid_t pid;
    int port;
    int out; /* read end of its stdout */
};

/* Show whatever the provider wrote to stdout after READY. */
static void provider_drain(tb_provider *p)
{
    char buf[4096];
    ssize_t r;
    while (p->out >= 0 && (r = read(p->out, buf, sizeof buf)) > 0)
        fprintf(stderr, "testbed: provider stdout: %.*s", (int)r, buf);
}

tb_provider *tb_provider_start(const char *zk_connstr, const char *const *extra_args)
{
    const char *bin = getenv("MU_PROVIDER_BIN");
    if (!bin || !*bin) {
        tb_err("MU_PROVIDER_BIN is not set (make check sets it)");
        return NULL;
    }
    size_t nextra = 0;
    while (extra_args && extra_args[nextra])
        nextra++;
    char **argv = calloc(nextra + 4, sizeof *argv);
    tb_provider *p = calloc(1, sizeof *p);
    int fds[2] = {-1, -1};
    if (!argv || !p || pipe2(fds, O_CLOEXEC) < 0) {
        tb_err("tb_provider_start: %s", strerror(errno));
        free(argv);
        free(p);
        return NULL;
    }
    size_t k = 0;
    argv[k++] = (char *)bin;
    if (zk_connstr) {
        argv[k++] = (char *)"--zk";
        argv[k++] = (char *)zk_connstr;
    } else {
        argv[k++] = (char *)"--no-register";
    }
    for (size_t i = 0; i < nextra; i++)
        argv[k++] = (char *)extra_args[i];
    argv[k] = NULL;
    p->out = fds[0];
    p->pid = spawn(bin, argv, environ, fds[1], -1, 0);
    close(fds[1]);
    if (p->pid <= 0) {
        free(argv);
        close(p->out);
        free(p);
        return NULL;
    }
    reg_add(K_PROVIDER, p);

    /* Read lines until "READY <port>". */
    char line[512];
    size_t len = 0;
    int64_t deadline = now_ms() + PROVIDER_READY_MS;
    const char *why = NULL;
    while (!p->port && !why) {
        int left = (int)(deadline - now_ms());
        struct pollfd pf = {p->out, POLLIN, 0};
        if (left <= 0 || poll(&pf, 1, left) == 0) {
            why = "no READY line within 20 s (does it flush stdout?)";
            break;
        }
        ssize_t r = read(p->out, line + len, sizeof line - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            why = "it exited before READY";
            break;
        }
        len += (size_t)r;
        line[len] = '\0';
        char *nl;
        while (!p->port && (nl = strchr(line, '\n'))) {
            *nl = '\0';
            int port = 0;
            char extra;
            if (sscanf(line, "READY %d%c", &port, &extra) == 1 && port > 0 && port < 65536)
                p->port = port;
            else
                fprintf(stderr, "testbed: provider stdout: %s\n", line);
            size_t used = (size_t)(nl + 1 - line);
            memmove(line, nl + 1, len - used + 1);
            len -= used;
        }
        if (len == sizeof line - 1) {
            why = "stdout line too long";
        }
    }
    if (why) {
        char cmd[1024];
        size_t off = 0;
        for (size_t i = 0; argv[i] && off < sizeof cmd; i++)
            off += (size_t)snprintf(cmd + off, sizeof cmd - off, "%s%s", i ? " " : "", argv[i]);
        tb_err("provider did not start: %s: %s", why, cmd);
        if (!exited_nowait(p->pid))
            kill(p->pid, SIGKILL);
        char st[64];
        describe_status(st, sizeof st, reap(p->pid));
        tb_err("provider pid %d ended with %s", (int)p->pid, st);
        p->pid = 0;
        free(argv);
        tb_provider_free(p);
        return NULL;
    }
    free(argv);
    fcntl(p->out, F_SETFL, fcntl(p->out, F_GETFL) | O_NONBLOCK);
    return p;
}

int tb_provider_port(const tb_provider *p)
{
    return p ? p->port : -1;
}

pid_t tb_provider_pid(const tb_provider *p)
{
    return p ? p->pid : 0;
}

int tb_provider_running(const tb_provider *p)
{
    return p && p->pid > 0;
}

int tb_provider_kill(tb_provider *p, int sig)
{
    if (!p || p->pid <= 0)
        return -1;
    pid_t pid = p->pid;
    /* A stopped process must run to handle sig. SIGCONT goes first: sent
     * after sig it could wake the process out of LeakSanitizer's exit-time
     * stop, and the check then spins until the SIGKILL fallback. */
    if (sig != SIGKILL && sig != SIGSTOP && sig != SIGTSTP && sig != SIGCONT)
        kill(pid, SIGCONT);
    if (kill(pid, sig) < 0) {
        tb_err("kill(%d, %d): %s", (int)pid, sig, strerror(errno));
        return -1;
    }
    if (sig == SIGSTOP || sig == SIGTSTP || sig == SIGCONT)
        return 0;
    int st = 0, timed_out = 0;
    int64_t deadline = now_ms() + PROVIDER_EXIT_MS;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR) {
            tb_err("waitpid(%d): %s", (int)pid, strerror(errno));
            p->pid = 0;
            return -1;
        }
        provider_drain(p);
        if (now_ms() > deadline && !timed_out) {
            tb_err("provider pid %d did not exit within %d ms of signal %d: SIGKILL", (int)pid,
                   PROVIDER_EXIT_MS, sig);
            kill(pid, SIGKILL);
            timed_out = 1;
        }
        sleep_ms(2);
    }
    p->pid = 0;
    provider_drain(p);
    if (timed_out)
        return 124;
    if (WIFEXITED(st)) {
        int code = WEXITSTATUS(st);
        if (code)
            tb_err("provider pid %d exited with status %d after signal %d%s", (int)pid, code, sig,
                   code == 23 ? " (a sanitizer report, see above)" : "");
        return code;
    }
    if (WIFSIGNALED(st)) {
        int s = WTERMSIG(st);
        if (s == sig && sig != SIGTERM && sig != SIGINT)
            return 0;
        tb_err("provider pid %d died from signal %d after signal %d%s", (int)pid, s, sig,
               s == sig ? " (it should exit cleanly)" : "");
        return 128 + s;
    }
    return -1;
}

void tb_provider_free(tb_provider *p)
{
    if (!p)
        return;
    reg_del(p);
    if (p->pid > 0)
        tb_provider_kill(p, g_exiting ? SIGKILL : SIGTERM);
    if (p->out >= 0)
        close(p->out);
    free(p);
}
