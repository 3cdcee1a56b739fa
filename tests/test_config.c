/* Unit tests for configuration: keys, validation messages, files with
 * line numbers, and the environment names microutil users know. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"

static void test_defaults_and_set(void **state)
{
    (void)state;
    mu_config *c = mu_config_new();
    assert_string_equal(mu_config_get(c, "zk_hosts"), "127.0.0.1:2181");
    assert_string_equal(mu_config_get(c, "timeout_ms"), "10000");
    assert_string_equal(mu_config_get(c, "retries"), "2");
    assert_string_equal(mu_config_get(c, "policy"), "ewma");
    assert_false(mu_config_is_set(c, "policy"));
    assert_int_equal(mu_config_set(c, "policy", "least-pending"), MU_OK);
    assert_true(mu_config_is_set(c, "policy"));
    assert_string_equal(mu_config_get(c, "policy"), "least-pending");
    assert_int_equal(mu_config_set(c, "zk_hosts", "10.0.0.1:2181,10.0.0.2:2182"), MU_OK);
    assert_int_equal(mu_config_set(c, "zk_hosts", ""), MU_OK); /* static only */
    assert_int_equal(mu_config_set(c, "static.micro", "127.0.0.1:8000, 127.0.0.1:8001"), MU_OK);
    assert_string_equal(mu_config_service(c, "static", "micro"), "127.0.0.1:8000, 127.0.0.1:8001");
    assert_null(mu_config_service(c, "static", "other"));
    assert_int_equal(mu_config_set(c, "policy.svc", "p2c"), MU_OK);
    assert_string_equal(mu_config_service(c, "policy", "svc"), "p2c");
    /* Every per-service key: checked as its global key. */
    assert_int_equal(mu_config_set(c, "timeout_ms.svc", "50"), MU_OK);
    assert_string_equal(mu_config_service(c, "timeout_ms", "svc"), "50");
    assert_int_equal(mu_config_set(c, "eject_after_failures.svc", "3"), MU_OK);
    assert_int_equal(mu_config_set(c, "slow_start_ms.svc", "20"), MU_OK);
    assert_int_equal(mu_config_set(c, "hedge.svc", "p99.9"), MU_OK);
    assert_int_equal(mu_config_set(c, "hedge", "p50"), MU_OK);
    assert_int_equal(mu_config_set(c, "hedge", ""), MU_OK);
    assert_null(mu_config_get(c, "nope"));
    mu_config_free(c);
    mu_config_free(NULL);
}

static void test_bad_values_name_key_value_and_allowed(void **state)
{
    (void)state;
    mu_config *c = mu_config_new();
    struct {
        const char *key, *value, *must_say;
    } cases[] = {
        {"polcy", "random", "unknown key 'polcy'"},
        {"policy", "fastest", "expected one of ewma|round-robin|random|least-pending|p2c|hash"},
        {"timeout_ms", "soon", "timeout_ms = 'soon': expected an integer from 1 to 3600000"},
        {"timeout_ms", "0", "from 1 to"},
        {"retries", "11", "from 0 to 10"},
        {"zk_hosts", "localhost", "'localhost' is not host:port"},
        {"zk_hosts", "h:99999", "port 1 to 65535"},
        {"zk_root", "dubbo", "absolute path"},
        {"layout", "flat", "per-method|per-service"},
        {"protocol", "2.0", "1.0.2|1.0.3|1.0.4|1.0.8"},
        {"static.micro", "127.0.0.1", "not host:port"},
        {"policy.micro", "fast", "expected one of"},
        {"static.", "127.0.0.1:1", "expected static.SERVICE"},
        {"timeout_ms.svc", "0", "timeout_ms.svc = '0': expected an integer from 1 to"},
        {"eject_after_failures.svc", "x", "from 1 to 1000"},
        {"retries.", "1", "expected retries.SERVICE"},
        {"hedge", "95", "expected a percentile from p50 to p99.9"},
        {"hedge.svc", "p100", "expected a percentile"},
        {"hedge", "p99.95", "expected a percentile"},
        {"hedge", "p40", "expected a percentile"},
        {"retries.a:b", "1", "expected retries.SERVICE"},
        {"zk_hosts.svc", "h:1", "unknown key 'zk_hosts.svc'"},
        {"zk_root", "/", "absolute path without a trailing slash"},
        {"zk_root", "/a//b", "ZooKeeper node names"},
        {"zk_root", "/a/../b", "ZooKeeper node names"},
        {"zk_root", "/a b", "ZooKeeper node names"},
        {"zk_root", "/a\tb", "ZooKeeper node names"},
        {"path", "json/", "starting with '/'"},
        {"path", "/a b/", "without spaces"},
        {"eject_ms", "0", "from 1 to"}, /* a 0 ms ejection would still move queues; off is max_ejected_percent = 0 */
        {"eject_max_ms.svc", "0", "from 1 to"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(mu_config_set(c, cases[i].key, cases[i].value), MU_ECONFIG);
        if (!strstr(mu_config_error(c), cases[i].must_say))
            fail_msg("%s = %s: error '%s' lacks '%s'", cases[i].key, cases[i].value,
                     mu_config_error(c), cases[i].must_say);
    }
    /* A refused value leaves the key as it was. */
    assert_string_equal(mu_config_get(c, "timeout_ms"), "10000");
    assert_int_equal(mu_config_set(c, NULL, "x"), MU_EINVAL);
    assert_int_equal(mu_config_set(NULL, "policy", "random"), MU_EINVAL);
    mu_config_free(c);
}

static char *write_tmp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/mu-config-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_file(void **state)
{
    (void)state;
    mu_config *c = mu_config_new();
    char *p = write_tmp("# settings\n\n  policy = random   # trailing comment\n"
                        "timeout_ms=2500\nstatic.micro = 127.0.0.1:9\n");
    assert_int_equal(mu_config_load_file(c, p), MU_OK);
    assert_string_equal(mu_config_get(c, "policy"), "random");
    assert_string_equal(mu_config_get(c, "timeout_ms"), "2500");
    assert_string_equal(mu_config_service(c, "static", "micro"), "127.0.0.1:9");
    unlink(p);

    p = write_tmp("policy = random\nretries = 3\nretries = many\n");
    assert_int_equal(mu_config_load_file(c, p), MU_ECONFIG);
    char want[128];
    snprintf(want, sizeof want, "%s:3: retries = 'many'", p);
    if (!strstr(mu_config_error(c), want))
        fail_msg("'%s' lacks '%s'", mu_config_error(c), want);
    assert_string_equal(mu_config_get(c, "retries"), "3"); /* lines before the bad one applied */
    unlink(p);

    p = write_tmp("policy random\n");
    assert_int_equal(mu_config_load_file(c, p), MU_ECONFIG);
    assert_non_null(strstr(mu_config_error(c), ":1: expected 'key = value'"));
    unlink(p);

    /* '#' begins a comment only at the start or after a blank; quotes keep
     * everything. Nothing is silently cut. */
    p = write_tmp("auth_token = abc#def\nzk_root = /micro # the root\n");
    assert_int_equal(mu_config_load_file(c, p), MU_OK);
    assert_string_equal(mu_config_get(c, "auth_token"), "abc#def");
    assert_string_equal(mu_config_get(c, "zk_root"), "/micro");
    unlink(p);
    p = write_tmp("auth_token = \"a #b \\\"c\\\" \\\\\"  # comment\n");
    assert_int_equal(mu_config_load_file(c, p), MU_OK);
    assert_string_equal(mu_config_get(c, "auth_token"), "a #b \"c\" \\");
    unlink(p);
    p = write_tmp("auth_token = \"open\n");
    assert_int_equal(mu_config_load_file(c, p), MU_ECONFIG);
    assert_non_null(strstr(mu_config_error(c), ":1: a quoted value without its closing quote"));
    unlink(p);
    static const char nul[] = "policy = random\nauth_token = a\0b\n";
    p = write_tmp("");
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(nul, 1, sizeof nul - 1, f), sizeof nul - 1);
    fclose(f);
    assert_int_equal(mu_config_load_file(c, p), MU_ECONFIG);
    assert_non_null(strstr(mu_config_error(c), ":2: a NUL byte in the line"));
    unlink(p);

    assert_int_equal(mu_config_load_file(c, "/nonexistent/mu.conf"), MU_ECONFIG);
    assert_non_null(strstr(mu_config_error(c), "/nonexistent/mu.conf: cannot open"));
    mu_config_free(c);
}

static void test_environment(void **state)
{
    (void)state;
    mu_config *c = mu_config_new();
    setenv("MICRO_ZK_HOST", "10.1.2.3", 1);
    setenv("MICRO_ZK_PORT", "2999", 1);
    setenv("MICRO_CLIENT_TIMEOUT", "2.5", 1);
    setenv("MU_POLICY", "p2c", 1);
    assert_int_equal(mu_config_load_env(c), MU_OK);
    assert_string_equal(mu_config_get(c, "zk_hosts"), "10.1.2.3:2999");
    assert_string_equal(mu_config_get(c, "timeout_ms"), "2500"); /* seconds, as microutil */
    assert_string_equal(mu_config_get(c, "policy"), "p2c");
    /* An ensemble in MICRO_ZK_HOST is taken as it is. */
    setenv("MICRO_ZK_HOST", "10.0.0.1:2181,10.0.0.2:2181", 1);
    assert_int_equal(mu_config_load_env(c), MU_OK);
    assert_string_equal(mu_config_get(c, "zk_hosts"), "10.0.0.1:2181,10.0.0.2:2181");
    setenv("MICRO_CLIENT_TIMEOUT", "ten", 1);
    assert_int_equal(mu_config_load_env(c), MU_ECONFIG);
    assert_non_null(strstr(mu_config_error(c), "MICRO_CLIENT_TIMEOUT = 'ten'"));
    /* strtod reads "nan" and "inf"; neither is a number of seconds. */
    static const char *const nonsense[] = {"nan", "-nan", "inf", "0", "-1", "3601"};
    for (size_t i = 0; i < sizeof nonsense / sizeof nonsense[0]; i++) {
        setenv("MICRO_CLIENT_TIMEOUT", nonsense[i], 1);
        assert_int_equal(mu_config_load_env(c), MU_ECONFIG);
        assert_non_null(strstr(mu_config_error(c), "MICRO_CLIENT_TIMEOUT"));
    }
    assert_string_equal(mu_config_get(c, "timeout_ms"), "2500"); /* unchanged */
    unsetenv("MICRO_CLIENT_TIMEOUT");
    setenv("MU_RETRIES", "-1", 1);
    assert_int_equal(mu_config_load_env(c), MU_ECONFIG);
    assert_non_null(strstr(mu_config_error(c), "environment MU_RETRIES: retries = '-1'"));
    unsetenv("MU_RETRIES");
    unsetenv("MU_POLICY");
    /* A host list too long to keep is refused, not cut into another one. */
    char longhosts[700];
    size_t n = 0;
    while (n + 16 < sizeof longhosts)
        n += (size_t)snprintf(longhosts + n, sizeof longhosts - n, "10.0.0.%zu:2181,", n % 200);
    longhosts[n - 1] = '\0';
    setenv("MICRO_ZK_HOST", longhosts, 1);
    assert_int_equal(mu_config_load_env(c), MU_ECONFIG);
    assert_non_null(strstr(mu_config_error(c), "MICRO_ZK_HOST"));
    assert_string_equal(mu_config_get(c, "zk_hosts"), "10.0.0.1:2181,10.0.0.2:2181");
    unsetenv("MICRO_ZK_HOST");
    unsetenv("MICRO_ZK_PORT");
    /* A NULL key is a miss, not a crash. */
    assert_null(mu_config_get(c, NULL));
    assert_null(mu_config_get(NULL, NULL));
    mu_config_free(c);
}

static void count_key(const char *key, const char *dflt, const char *help, void *user)
{
    (void)dflt;
    assert_true(strlen(help) > 10);
    (*(int *)user)++;
    assert_true(strstr(key, ".SERVICE") || mu_config_get(NULL, key) != NULL);
}

static void test_describe_covers_every_key(void **state)
{
    (void)state;
    int n = 0;
    mu_config_describe(count_key, &n);
    assert_true(n >= 20);
}

static void test_hostport(void **state)
{
    (void)state;
    char host[64];
    int port;
    assert_int_equal(mu_parse_hostport("127.0.1.1:8000", 14, host, sizeof host, &port), 0);
    assert_string_equal(host, "127.0.1.1");
    assert_int_equal(port, 8000);
    assert_int_equal(mu_parse_hostport("a:0", 3, host, sizeof host, &port), -1);
    assert_int_equal(mu_parse_hostport(":80", 3, host, sizeof host, &port), -1);
    assert_int_equal(mu_parse_hostport("a b:80", 6, host, sizeof host, &port), -1);
    assert_int_equal(mu_parse_hostport("host:8x", 7, host, sizeof host, &port), -1);
    assert_int_equal(mu_parse_hostport("host:123456", 11, host, sizeof host, &port), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_set),
        cmocka_unit_test(test_bad_values_name_key_value_and_allowed),
        cmocka_unit_test(test_file),
        cmocka_unit_test(test_environment),
        cmocka_unit_test(test_describe_covers_every_key),
        cmocka_unit_test(test_hostport),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
