/* TLS and secrets, against a real ZooKeeper and the test provider serving
 * HTTPS (--tls-cert/--tls-key, libevent's OpenSSL bufferevents), with
 * certificates made by the openssl command for each run:
 *   - tls = on with tls_ca_file: calls verified, under load;
 *   - a certificate from another CA: refused, and the failure says why;
 *   - tls_verify = off: accepted, with a warning;
 *   - the auth token never appears in any log line, at DEBUG. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <unistd.h>

#include "fixture.h"
#include "load.h"

static char dir[64];
static char ca[96], ca_other[96], cert[96], key[96];

static int sh(const char *cmd)
{
    char full[2048];
    snprintf(full, sizeof full, "cd %s && { %s; } >/dev/null 2>&1", dir, cmd);
    return system(full);
}

/* A CA, a second CA, and a certificate for 127.0.0.1 signed by the first. */
static int make_certs(void)
{
    snprintf(dir, sizeof dir, "/tmp/mu-tls-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(ca, sizeof ca, "%s/ca.pem", dir);
    snprintf(ca_other, sizeof ca_other, "%s/other.pem", dir);
    snprintf(cert, sizeof cert, "%s/srv.pem", dir);
    snprintf(key, sizeof key, "%s/srv.key", dir);
    static const char ec[] = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "openssl req -x509 %s -keyout ca.key -out ca.pem -days 2 "
                              "-subj /CN=mu-test-ca",
             ec);
    if (sh(cmd) != 0)
        return -1;
    snprintf(cmd, sizeof cmd, "openssl req -x509 %s -keyout other.key -out other.pem -days 2 "
                              "-subj /CN=mu-other-ca",
             ec);
    if (sh(cmd) != 0)
        return -1;
    snprintf(cmd, sizeof cmd, "openssl req %s -keyout srv.key -out srv.csr -subj /CN=127.0.0.1",
             ec);
    if (sh(cmd) != 0 || sh("printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext") != 0)
        return -1;
    return sh("openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
              "-out srv.pem -days 2 -extfile san.ext") == 0
               ? 0
               : -1;
}

static int setup_tls_all(void **state)
{
    if (make_certs() != 0) {
        fprintf(stderr, "test_tls: the openssl command could not make certificates\n");
        return -1;
    }
    return setup_all(state);
}

static int teardown_tls_all(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "test_tls: could not remove %s\n", dir);
    return teardown_all(state);
}

static tb_provider *https_provider(const char *svc)
{
    return provider(svc, "--tls-cert", cert, "--tls-key", key, NULL);
}

/* Log lines, kept for looking at. */
typedef struct logbook {
    char lines[64][512];
    int n, total;
    const char *needle; /* counted wherever it appears */
    int hits;
} logbook;

static void keep_log(mu_log_level level, const char *msg, void *user)
{
    logbook *b = user;
    (void)level;
    if (b->needle && strstr(msg, b->needle))
        b->hits++;
    if (b->n < 64)
        snprintf(b->lines[b->n++], sizeof b->lines[0], "%s", msg);
    b->total++;
}

static void test_tls_verified(void **state)
{
    (void)state;
    tb_provider *p = https_provider("tls1");
    assert_non_null(p);
    mu_client *c = client(tu_config("tls", "on", "tls_ca_file", ca, NULL));
    load l;
    load_begin(&l, c, "tls1:echo", 500, 64);
    load_finish(&l, 30000); /* none failed */
    mu_client_free(c);
    tb_provider_free(p);
}

/* Per service: tls.SERVICE; a plain http client of the same provider fails. */
static void test_tls_per_service(void **state)
{
    (void)state;
    tb_provider *p = https_provider("tls2");
    assert_non_null(p);
    mu_client *c = client(tu_config("tls.tls2", "on", "tls_ca_file", ca, "deadline_ms", "1000",
                                    NULL));
    tu_outcome o;
    tu_call_sync(base, c, "tls2:echo", "[1]", NULL, &o);
    assert_int_equal(o.status, MU_OK);
    mu_client_free(c);
    c = client(tu_config("deadline_ms", "1000", NULL)); /* http to an https port */
    tu_call_sync(base, c, "tls2:echo", "[1]", NULL, &o);
    assert_int_not_equal(o.status, MU_OK);
    mu_client_free(c);
    tb_provider_free(p);
}

static void test_tls_other_ca_refused(void **state)
{
    (void)state;
    tb_provider *p = https_provider("tls3");
    assert_non_null(p);
    mu_client *c = client(tu_config("tls", "on", "tls_ca_file", ca_other, "deadline_ms", "800",
                                    NULL));
    tu_outcome o;
    tu_call_sync(base, c, "tls3:echo", "[1]", NULL, &o);
    fprintf(stderr, "  another CA: %s: %s\n", mu_status_name(o.status), o.detail);
    assert_int_equal(o.status, MU_ECONNECT); /* nothing was sent */
    assert_true(strstr(o.detail, "certificate") || strstr(o.detail, "SSL"));
    mu_client_free(c);
    tb_provider_free(p);
}

static void test_tls_verify_off_warns(void **state)
{
    (void)state;
    tb_provider *p = https_provider("tls4");
    assert_non_null(p);
    mu_client *c = client(tu_config("tls", "on", "tls_ca_file", ca_other, "tls_verify", "off",
                                    NULL));
    logbook b = {.needle = "tls_verify = off"};
    mu_client_set_log(c, MU_LOG_DEBUG, keep_log, &b);
    tu_outcome o;
    tu_call_sync(base, c, "tls4:echo", "[1]", NULL, &o);
    assert_int_equal(o.status, MU_OK);
    assert_int_equal(b.hits, 1);
    mu_client_free(c);
    tb_provider_free(p);
}

/* The token goes in a header of every 1.0.4 request, and never into a log
 * line: not at DEBUG, not when the provider refuses it. */
static void test_token_never_logged(void **state)
{
    (void)state;
    static const char token[] = "s3cr3t-T0KEN-for-the-log-test";
    tb_provider *p = provider("tok", "--variant", "1.0.4", "--auth", token, NULL);
    assert_non_null(p);
    for (int wrong = 0; wrong < 2; wrong++) {
        mu_client *c = client(tu_config("protocol", "1.0.4", "auth_token",
                                        wrong ? "s3cr3t-T0KEN-wrong" : token, NULL));
        logbook b = {.needle = "s3cr3t-T0KEN"};
        mu_client_set_log(c, MU_LOG_DEBUG, keep_log, &b);
        load l;
        load_init(&l, c, "tok:echo", 200, 64);
        load_go(&l);
        load_wait(&l, 30000);
        fprintf(stderr, "  %s token: %d calls, %d failed, %d log lines, %d with the token\n",
                wrong ? "a wrong" : "the right", l.ended, l.failed, b.total, b.hits);
        assert_true(b.total > 0); /* DEBUG was on and said things */
        assert_int_equal(b.hits, 0);
        if (wrong)
            assert_int_equal(l.by_status[MU_EAUTH], 200);
        else
            assert_int_equal(l.failed, 0);
        mu_client_free(c);
    }
    tb_provider_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tls_verified, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_per_service, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_other_ca_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_verify_off_warns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_never_logged, setup, teardown),
    };
    if (getenv("MU_TEST_FILTER"))
        cmocka_set_test_filter(getenv("MU_TEST_FILTER"));
    return cmocka_run_group_tests(tests, setup_tls_all, teardown_tls_all);
}
