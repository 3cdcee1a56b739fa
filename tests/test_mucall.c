/* mucall, run as a user would: exit codes, stdout, stderr. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yajl/yajl_tree.h>

#include "testbed.h"

static tb_zk *zk;
static tb_provider *prov;
static char out[1 << 16], err[1 << 16];

static int setup(void **state)
{
    (void)state;
    zk = tb_zk_start();
    if (!zk)
        return -1;
    const char *args[] = {"--service", "cli", NULL};
    prov = tb_provider_start(tb_zk_connstr(zk), args);
    return prov ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    tb_provider_free(prov);
    tb_zk_free(zk);
    return 0;
}

static void slurp_fd(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fd, buf + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    close(fd);
}

/* Runs mucall with argv (NULL-terminated) and extra environment entries;
 * returns its exit status, stdout in out and stderr in err. */
static int run_env(const char *const *env, const char *first, ...)
{
    const char *bin = getenv("MU_MUCALL_BIN");
    assert_non_null(bin);
    const char *argv[64] = {bin};
    int n = 1;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && n < 63; a = va_arg(ap, const char *))
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    char eo[] = "/tmp/mucall-err-XXXXXX";
    int efd = mkstemp(eo);
    assert_true(efd >= 0);
    unlink(eo);
    int po[2];
    assert_int_equal(pipe(po), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(efd, 2);
        close(po[0]);
        for (const char *const *e = env; e && *e; e++)
            putenv((char *)*e);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    slurp_fd(po[0], out, sizeof out);
    int status = 0;
    waitpid(pid, &status, 0);
    lseek(efd, 0, SEEK_SET);
    slurp_fd(efd, err, sizeof err);
    if (strstr(err, "Sanitizer"))
        fail_msg("sanitizer report from mucall:\n%s", err);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

#define run(...) run_env(NULL, __VA_ARGS__, NULL)

static void test_decode(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/py311_nodebug_kwargs_echo.bin", getenv("MU_VECTORS_DIR"));
    assert_int_equal(run("--decode", path), 0);
    assert_non_null(strstr(out, "\"result\": {\"args\": [1, \"two\", [3]]"));
    /* A remote error decodes: exit 0, the document printed. */
    snprintf(path, sizeof path, "%s/py311_nodebug_method_raises.bin", getenv("MU_VECTORS_DIR"));
    assert_int_equal(run("--decode", path), 0);
    assert_non_null(strstr(out, "OtherError"));
    /* A protocol error: exit 1, a clear message. */
    char bad[] = "/tmp/mucall-bad-XXXXXX";
    int fd = mkstemp(bad);
    assert_int_equal(write(fd, "0\x80\x04K\x05.", 6), 6);
    close(fd);
    assert_int_equal(run("--decode", bad), 1);
    assert_non_null(strstr(err, "opcode 0x4b"));
    unlink(bad);
    assert_int_equal(run("--decode", "/nonexistent/file"), 1);
}

static void test_single_calls(void **state)
{
    (void)state;
    const char *zks = tb_zk_connstr(zk);
    assert_int_equal(run("--zk", zks, "cli:HttpRpcService.get_string_v1", "zhangsan"), 0);
    assert_string_equal(out, "\"zhangsan\"\n");
    assert_int_equal(run("--zk", zks, "cli:echo", "1", "two", "[3]", "--kw", "k=v", "--kw", "n=5"), 0);
    assert_string_equal(out, "{\"args\": [1, \"two\", [3]], \"kwargs\": {\"k\": \"v\", \"n\": 5}}\n");
    /* Remote error: name (code): message on stderr, exit 1. */
    assert_int_equal(run("--zk", zks, "cli:fail", "boom"), 1);
    assert_non_null(strstr(err, "OtherError (500): OtherError: Internal Server Error"));
    /* No provider: the detail names the path. */
    assert_int_equal(run("--zk", zks, "cli:nope"), 1);
    assert_non_null(strstr(err, "/dubbo/cli/nope/provider"));
    /* The environment names microutil users know. */
    char host[64], port[64];
    snprintf(host, sizeof host, "MICRO_ZK_HOST=127.0.0.1");
    snprintf(port, sizeof port, "MICRO_ZK_PORT=%d", tb_zk_port(zk));
    const char *env[] = {host, port, NULL};
    assert_int_equal(run_env(env, "cli:whoami", NULL), 0);
    char want[32];
    snprintf(want, sizeof want, "%d\n", tb_provider_port(prov));
    assert_string_equal(out, want);
    /* Static hosts skip ZooKeeper. */
    char hosts[64];
    snprintf(hosts, sizeof hosts, "127.0.0.1:%d", tb_provider_port(prov));
    assert_int_equal(run("--zk", "127.0.0.1:1", "--hosts", hosts, "cli:whoami"), 0);
    assert_string_equal(out, want);
}

static void test_usage_errors(void **state)
{
    (void)state;
    assert_int_equal(run("--set", "polcy=x", "cli:echo"), 2);
    assert_non_null(strstr(err, "unknown key 'polcy'"));
    assert_int_equal(run("--policy", "fastest", "cli:echo"), 2);
    assert_non_null(strstr(err, "round-robin"));
    assert_int_equal(run("--timeout", "-5", "cli:echo"), 2);
    assert_int_equal(run("--bogus", "cli:echo"), 2);
    assert_int_equal(run("-n"), 2);
    assert_int_equal(run_env(NULL, NULL), 2); /* no target */
    assert_int_equal(run("--zk", tb_zk_connstr(zk), "no-colon"), 2);
    assert_non_null(strstr(err, "SERVICE:METHOD"));
    char cfg[] = "/tmp/mucall-cfg-XXXXXX";
    int fd = mkstemp(cfg);
    const char *text = "# a comment\npolicy = random\n\ntimeout_ms = soon\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(run("--config", cfg, "cli:echo"), 2);
    assert_non_null(strstr(err, ":4: timeout_ms = 'soon'"));
    unlink(cfg);
    assert_int_equal(run("--help"), 0);
    assert_non_null(strstr(out, "max_connections_per_host"));
}

static void test_load_json_and_list(void **state)
{
    (void)state;
    assert_int_equal(run("--zk", tb_zk_connstr(zk), "-n", "500", "-c", "20", "--json", "cli:echo", "7"),
                     0);
    char e[256];
    yajl_val v = yajl_tree_parse(out, e, sizeof e);
    if (!v)
        fail_msg("not JSON: %s: %s", e, out);
    const char *keys[] = {"calls", "ok", "failed", "wall_s", "calls_per_s", "cpu_user_s",
                          "cpu_sys_s", "cpu_us_per_call", "p50_us", "p99_us", "attempts",
                          "retries", "hedges", "ejections", "retries_denied", "overloaded"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *path[] = {keys[i], NULL};
        if (!yajl_tree_get(v, path, yajl_t_number))
            fail_msg("missing %s in %s", keys[i], out);
    }
    const char *calls[] = {"calls", NULL}, *ok[] = {"ok", NULL}, *pe[] = {"per_endpoint", NULL},
               *er[] = {"errors", NULL};
    assert_int_equal(YAJL_GET_INTEGER(yajl_tree_get(v, calls, yajl_t_number)), 500);
    assert_int_equal(YAJL_GET_INTEGER(yajl_tree_get(v, ok, yajl_t_number)), 500);
    const char *att[] = {"attempts", NULL};
    assert_int_equal(YAJL_GET_INTEGER(yajl_tree_get(v, att, yajl_t_number)), 500);
    yajl_val eps = yajl_tree_get(v, pe, yajl_t_object);
    assert_non_null(eps);
    assert_int_equal(YAJL_GET_OBJECT(eps)->len, 1);
    assert_int_equal(YAJL_GET_INTEGER(YAJL_GET_OBJECT(eps)->values[0]), 500);
    assert_non_null(yajl_tree_get(v, er, yajl_t_object));
    yajl_tree_free(v);

    /* Human summary. */
    assert_int_equal(run("--zk", tb_zk_connstr(zk), "-n", "100", "-c", "4", "cli:whoami"), 0);
    assert_non_null(strstr(out, "100 calls (100 ok, 0 failed)"));
    assert_non_null(strstr(out, "p99"));

    assert_int_equal(run("--zk", tb_zk_connstr(zk), "--list", "cli:echo"), 0);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", tb_provider_port(prov));
    assert_non_null(strstr(out, want));
    assert_non_null(strstr(out, "pending=0"));
}

/* Open-loop load: R calls/s on a schedule, latency from each due time. */
static void test_open_loop(void **state)
{
    (void)state;
    assert_int_equal(run("--zk", tb_zk_connstr(zk), "--rate", "200", "-d", "1", "--json",
                         "cli:echo", "7"),
                     0);
    char e[256];
    yajl_val v = yajl_tree_parse(out, e, sizeof e);
    if (!v)
        fail_msg("not JSON: %s: %s", e, out);
    const char *keys[] = {"calls", "rate", "late", "p50_us", "p90_us", "p99_us", "p999_us",
                          "max_us"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *path[] = {keys[i], NULL};
        if (!yajl_tree_get(v, path, yajl_t_number))
            fail_msg("missing %s in %s", keys[i], out);
    }
    const char *calls[] = {"calls", NULL}, *wall[] = {"wall_s", NULL};
    assert_int_equal(YAJL_GET_INTEGER(yajl_tree_get(v, calls, yajl_t_number)), 200);
    /* The schedule spans the second, whatever the calls take. */
    assert_true(YAJL_GET_DOUBLE(yajl_tree_get(v, wall, yajl_t_number)) >= 0.99);
    yajl_tree_free(v);
    assert_int_equal(run("--zk", tb_zk_connstr(zk), "--rate", "50", "-d", "1", "cli:whoami"), 0);
    assert_non_null(strstr(out, "50 calls (50 ok, 0 failed) at 50.0 calls/s"));
    assert_non_null(strstr(out, "started late"));
    assert_non_null(strstr(out, "p99.9"));
    /* Misuse. */
    assert_int_equal(run("--rate", "10", "cli:echo"), 2);
    assert_non_null(strstr(err, "--rate R and -d SECONDS go together"));
    assert_int_equal(run("--rate", "10", "-d", "1", "-n", "5", "cli:echo"), 2);
    assert_int_equal(run("--rate", "nan", "-d", "1", "cli:echo"), 2);
    assert_int_equal(run("--rate", "0.5", "-d", "1", "cli:echo"), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_loop),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_single_calls),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_load_json_and_list),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
