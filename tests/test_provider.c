/*
 * Integration test of the test provider (tests/provider/mu-provider) against
 * the captured 1.0.2 vectors and docs/protocol.md, on a real ZooKeeper. The other
 * integration tests trust the provider; this test is why they may.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "testbed.h"

#include <curl/curl.h>
#include <dirent.h>
#include <lz4.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yajl/yajl_tree.h>

static const char *g_vdir;
static yajl_val g_manifest;
static tb_zk *g_zk;
static tb_zkc *g_zkc;
static tb_provider *g_main;
static tb_provider *g_tp[4]; /* per-test providers, freed by teardown */

/* The methods docs/protocol.md §7 says the captured provider served. */
static const char *const k_methods[] = {"HttpRpcService.get_string_v1", "echo", "unicode_name",
                                        "nothing", "mixed", "big", "fail"};
#define N_METHODS (sizeof k_methods / sizeof k_methods[0])

/* ------------------------------------------------------------ helpers */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0)
            break;
        n += r;
    }
    fclose(f);
    buf = realloc(buf, n + 1);
    buf[n] = 0;
    *len = n;
    return buf;
}

static unsigned char *read_vector(const char *file, size_t *len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", g_vdir, file);
    return read_all(path, len);
}

static const char *jstr(yajl_val obj, const char *key)
{
    const char *p[] = {key, NULL};
    yajl_val v = yajl_tree_get(obj, p, yajl_t_string);
    return v ? YAJL_GET_STRING(v) : NULL;
}

static long long jint(yajl_val obj, const char *key)
{
    const char *p[] = {key, NULL};
    yajl_val v = yajl_tree_get(obj, p, yajl_t_number);
    return v && YAJL_IS_INTEGER(v) ? YAJL_GET_INTEGER(v) : -1;
}

static yajl_val manifest_entry(const char *name)
{
    for (size_t i = 0; i < YAJL_GET_ARRAY(g_manifest)->len; i++) {
        yajl_val e = YAJL_GET_ARRAY(g_manifest)->values[i];
        const char *n = jstr(e, "name");
        if (n && strcmp(n, name) == 0)
            return e;
    }
    return NULL;
}

struct resp {
    long status;
    char *body;
    size_t len;
    char ctype[128];
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct resp *r = arg;
    size_t len = size * n;
    char *b = realloc(r->body, r->len + len + 1);
    if (!b)
        return 0;
    memcpy(b + r->len, p, len);
    r->body = b;
    r->len += len;
    r->body[r->len] = 0;
    return len;
}

/* POST body (or GET when body is NULL) to http://127.0.0.1:port/json/.
 * Headers: Content-Type: application/json-rpc unless hdrs gives its own
 * list; always an empty Expect:. 0 on a completed exchange. */
static int http(int port, const char *body, const char *const *hdrs, struct resp *r)
{
    memset(r, 0, sizeof *r);
    CURL *c = curl_easy_init();
    if (!c)
        return -1;
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/json/", port);
    struct curl_slist *h = NULL;
    if (hdrs) {
        for (size_t i = 0; hdrs[i]; i++)
            h = curl_slist_append(h, hdrs[i]);
    } else if (body) {
        h = curl_slist_append(h, "Content-Type: application/json-rpc");
    }
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    } else {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    }
    CURLcode cc = curl_easy_perform(c);
    if (cc == CURLE_OK) {
        char *ct = NULL;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
        curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
        snprintf(r->ctype, sizeof r->ctype, "%s", ct ? ct : "");
    } else {
        print_error("HTTP to port %d: %s\n", port, curl_easy_strerror(cc));
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return cc == CURLE_OK ? 0 : -1;
}

static void resp_free(struct resp *r)
{
    free(r->body);
    r->body = NULL;
}

static void hexdump_at(const char *what, const unsigned char *p, size_t len, size_t off)
{
    size_t from = off >= 8 ? off - 8 : 0;
    size_t to = off + 8 < len ? off + 8 : len;
    char line[128];
    size_t k = 0;
    for (size_t i = from; i < to && k + 4 < sizeof line; i++)
        k += (size_t)snprintf(line + k, sizeof line - k, i == off ? "[%02x]" : " %02x", p[i]);
    print_error("  %s bytes %zu..%zu:%s\n", what, from, to, k ? line : " (none)");
}

/* The one string a pickle of the subset in docs/protocol.md §4.3 holds. */
struct pickle_info {
    int proto;
    int framed;
    unsigned char strop; /* 0x8c, 'X' or 0x8d */
    const unsigned char *s;
    size_t slen;
};

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int unpickle(const unsigned char *p, size_t n, struct pickle_info *pi)
{
    memset(pi, 0, sizeof *pi);
    if (n < 2 || p[0] != 0x80)
        return -1;
    pi->proto = p[1];
    size_t i = 2;
    while (i < n) {
        unsigned char op = p[i++];
        uint64_t len;
        switch (op) {
        case 0x95: if (n - i < 8) return -1; pi->framed = 1; i += 8; break;
        case 0x8c: if (n - i < 1) return -1; len = p[i]; i += 1; goto str;
        case 'X': if (n - i < 4) return -1; len = le(p + i, 4); i += 4; goto str;
        case 0x8d: if (n - i < 8) return -1; len = le(p + i, 8); i += 8; goto str;
        str:
            if (pi->s || len > n - i)
                return -1;
            pi->strop = op;
            pi->s = p + i;
            pi->slen = (size_t)len;
            i += (size_t)len;
            break;
        case 0x94: break;
        case 'q': i += 1; break;
        case 'r': i += 4; break;
        case '.': return i == n && pi->s ? 0 : -1;
        default: return -1;
        }
    }
    return -1;
}

/* Body (flag byte + payload) to the pickle bytes; *tmp is to be freed. */
static const unsigned char *body_pickle(const unsigned char *b, size_t len, size_t *plen,
                                        unsigned char **tmp)
{
    *tmp = NULL;
    if (len >= 1 && b[0] == '0') {
        *plen = len - 1;
        return b + 1;
    }
    if (len >= 5 && b[0] == '1') {
        size_t size = (size_t)le(b + 1, 4);
        *tmp = malloc(size ? size : 1);
        int r = LZ4_decompress_safe((const char *)b + 5, (char *)*tmp, (int)(len - 5), (int)size);
        if (r < 0 || (size_t)r != size)
            return NULL;
        *plen = size;
        return *tmp;
    }
    return NULL;
}

static void md5_hex(const char *s, size_t len, char out[33])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(s, len, md, &mdlen, EVP_md5(), NULL);
    for (unsigned i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* micro-auth-token of microutil 1.0.4+: md5 hex of (TOKEN + request_id) * 3. */
static void auth_token(const char *token, const char *rid, char out[33])
{
    char s[512];
    int n = snprintf(s, sizeof s, "%s%s%s%s%s%s", token, rid, token, rid, token, rid);
    md5_hex(s, (size_t)n, out);
}

static int is_seq_name(const char *s)
{
    size_t i = 0;
    for (; s[i]; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return i == 10;
}

static char *expected_data(int port)
{
    static char buf[64];
    snprintf(buf, sizeof buf, "{\"host\": \"127.0.0.1\", \"port\": %d}", port);
    return buf;
}

/* A registered child: 10-digit name, ephemeral, data exactly as the
 * provider on port writes it. Returns the number of children of dir. */
static int check_provider_dir(const char *dir, int port, int want_children)
{
    char **names;
    int n;
    assert_int_equal(tb_zkc_children(g_zkc, dir, &names, &n), ZOK);
    if (want_children >= 0 && n != want_children) {
        print_error("%s has %d children, want %d\n", dir, n, want_children);
        tb_strv_free(names, n);
        fail();
    }
    for (int i = 0; i < n; i++) {
        char path[512], data[256];
        int len = (int)sizeof data;
        struct Stat st;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        int ok_name = is_seq_name(names[i]);
        int rc = tb_zkc_get(g_zkc, path, data, &len);
        int rc2 = tb_zkc_stat(g_zkc, path, &st);
        if (!ok_name || rc != ZOK || rc2 != ZOK || len < 0 || len >= (int)sizeof data ||
            strcmp(data, expected_data(port)) != 0 || st.ephemeralOwner == 0) {
            print_error("%s: name ok %d, rc %d/%d, ephemeral %d, data (%d bytes) '%s', want '%s'\n",
                        path, ok_name, rc, rc2, rc2 == ZOK && st.ephemeralOwner != 0, len,
                        len > 0 && len < (int)sizeof data ? data : "", expected_data(port));
            tb_strv_free(names, n);
            fail();
        }
    }
    tb_strv_free(names, n);
    return n;
}

/* A persistent parent with empty data. */
static void check_parent(const char *path)
{
    char data[64];
    int len = (int)sizeof data;
    struct Stat st;
    assert_int_equal(tb_zkc_get(g_zkc, path, data, &len), ZOK);
    assert_int_equal(tb_zkc_stat(g_zkc, path, &st), ZOK);
    if (len > 0 || st.ephemeralOwner != 0) {
        print_error("%s: data length %d, ephemeral owner 0x%llx; want persistent and empty\n",
                    path, len, (unsigned long long)st.ephemeralOwner);
        fail();
    }
}

static int count_children(const char *dir)
{
    char **names;
    int n;
    int rc = tb_zkc_children(g_zkc, dir, &names, &n);
    tb_strv_free(names, n);
    if (rc == ZNONODE)
        return 0;
    assert_int_equal(rc, ZOK);
    return n;
}

/* ------------------------------------------------------------ fixtures */

static int group_setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    g_vdir = getenv("MU_VECTORS_DIR");
    if (!g_vdir)
        g_vdir = "tests/vectors";
    size_t len;
    char path[4096];
    snprintf(path, sizeof path, "%s/py311_nodebug_manifest.json", g_vdir);
    char *text = (char *)read_all(path, &len);
    if (!text) {
        print_error("cannot read %s\n", path);
        return -1;
    }
    char err[256];
    g_manifest = yajl_tree_parse(text, err, sizeof err);
    free(text);
    if (!g_manifest || !YAJL_IS_ARRAY(g_manifest)) {
        print_error("%s: %s\n", path, err);
        return -1;
    }
    long long t0 = now_ms();
    g_zk = tb_zk_start();
    if (!g_zk)
        return -1;
    print_message("ZooKeeper serving on %s after %lld ms\n", tb_zk_connstr(g_zk), now_ms() - t0);
    g_zkc = tb_zkc_open(tb_zk_connstr(g_zk));
    if (!g_zkc)
        return -1;
    g_main = tb_provider_start(tb_zk_connstr(g_zk), NULL);
    return g_main ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    tb_provider_free(g_main);
    tb_zkc_close(g_zkc);
    tb_zk_free(g_zk);
    g_main = NULL;
    g_zkc = NULL;
    g_zk = NULL;
    if (g_manifest)
        yajl_tree_free(g_manifest);
    g_manifest = NULL;
    curl_global_cleanup();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof g_tp / sizeof g_tp[0]; i++) {
        tb_provider_free(g_tp[i]);
        g_tp[i] = NULL;
    }
    return 0;
}

static tb_provider *start_tp(int slot, const char *zk, const char *const *args)
{
    g_tp[slot] = tb_provider_start(zk, args);
    assert_non_null(g_tp[slot]);
    return g_tp[slot];
}

/* ------------------------------------------------------------ (a) vectors */

static int vector_listed(const char *file)
{
    for (size_t i = 0; i < YAJL_GET_ARRAY(g_manifest)->len; i++) {
        const char *f = jstr(YAJL_GET_ARRAY(g_manifest)->values[i], "file");
        if (f && strcmp(f, file) == 0)
            return 1;
    }
    return 0;
}

static void test_vectors_byte_identical(void **state)
{
    (void)state;
    int port = tb_provider_port(g_main);
    int failures = 0, checked = 0;

    /* Every py311_nodebug_*.bin must be in the manifest. */
    DIR *d = opendir(g_vdir);
    assert_non_null(d);
    struct dirent *de;
    int files = 0;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (strncmp(de->d_name, "py311_nodebug_", 14) != 0 || l < 5 ||
            strcmp(de->d_name + l - 4, ".bin") != 0)
            continue;
        files++;
        if (!vector_listed(de->d_name)) {
            print_error("%s is not in the manifest\n", de->d_name);
            failures++;
        }
    }
    closedir(d);

    for (size_t i = 0; i < YAJL_GET_ARRAY(g_manifest)->len; i++) {
        yajl_val e = YAJL_GET_ARRAY(g_manifest)->values[i];
        const char *name = jstr(e, "name"), *file = jstr(e, "file");
        const char *method = jstr(e, "http_method"), *ctype = jstr(e, "content_type");
        const char *req = jstr(e, "request"); /* NULL for the GET */
        long long status = jint(e, "status");
        if (!name || !file || !method || strncmp(file, "py311_nodebug_", 14) != 0)
            continue;
        size_t vlen;
        unsigned char *want = read_vector(file, &vlen);
        if (!want) {
            print_error("%s: cannot read %s\n", name, file);
            failures++;
            continue;
        }
        struct resp r;
        int get = strcmp(method, "GET") == 0;
        if (http(port, get ? NULL : (req ? req : ""), NULL, &r) != 0) {
            print_error("%s: no HTTP response\n", name);
            failures++;
            free(want);
            continue;
        }
        checked++;
        if (r.status != status) {
            print_error("%s: HTTP status %ld, want %lld\n", name, r.status, status);
            failures++;
        }
        if (ctype && strcmp(r.ctype, ctype) != 0) {
            print_error("%s: Content-Type '%s', want '%s'\n", name, r.ctype, ctype);
            failures++;
        }
        if (r.len != vlen || memcmp(r.body, want, vlen) != 0) {
            size_t off = 0, min = r.len < vlen ? r.len : vlen;
            while (off < min && (unsigned char)r.body[off] == want[off])
                off++;
            print_error("%s: body differs from %s at offset %zu (got %zu bytes, want %zu)\n",
                        name, file, off, r.len, vlen);
            hexdump_at("got ", (const unsigned char *)r.body, r.len, off);
            hexdump_at("want", want, vlen, off);
            failures++;
        }
        resp_free(&r);
        free(want);
    }
    print_message("%d vector files, %d requests checked, %d failure(s)\n", files, checked,
                  failures);
    assert_int_equal(checked, files);
    assert_int_equal(failures, 0);
}

/* ------------------------------------------------------------ (b) (c) znodes */

static void test_znodes_per_method(void **state)
{
    (void)state;
    int port = tb_provider_port(g_main);
    check_parent("/dubbo");
    check_parent("/dubbo/micro");
    for (size_t i = 0; i < N_METHODS; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, "/dubbo/micro/%s", k_methods[i]);
        check_parent(dir);
        snprintf(dir, sizeof dir, "/dubbo/micro/%s/provider", k_methods[i]);
        check_parent(dir);
        /* One provider process registered once: exactly one child. */
        check_provider_dir(dir, port, 1);
    }
}

static void test_znodes_per_service(void **state)
{
    (void)state;
    const char *args[] = {"--layout", "per-service", "--service", "psvc", NULL};
    tb_provider *p = start_tp(0, tb_zk_connstr(g_zk), args);
    check_parent("/dubbo/psvc");
    check_parent("/dubbo/psvc/provider");
    char **names;
    int n;
    assert_int_equal(tb_zkc_children(g_zkc, "/dubbo/psvc", &names, &n), ZOK);
    int only_provider = n == 1 && strcmp(names[0], "provider") == 0;
    if (!only_provider)
        print_error("/dubbo/psvc has %d children, first '%s'; want only 'provider'\n", n,
                    n ? names[0] : "");
    tb_strv_free(names, n);
    assert_true(only_provider);
    check_provider_dir("/dubbo/psvc/provider", tb_provider_port(p), 1);
}

/* ------------------------------------------------------------ (d) exits */

static void test_sigterm_removes_nodes_at_once(void **state)
{
    (void)state;
    const char *args[] = {"--service", "term", NULL};
    tb_provider *p = start_tp(0, tb_zk_connstr(g_zk), args);
    check_provider_dir("/dubbo/term/echo/provider", tb_provider_port(p), 1);
    assert_int_equal(tb_provider_kill(p, SIGTERM), 0);
    /* No waiting: a clean exit closes the session before the process ends. */
    for (size_t i = 0; i < N_METHODS; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, "/dubbo/term/%s/provider", k_methods[i]);
        int n = count_children(dir);
        if (n)
            print_error("%s still has %d children right after SIGTERM\n", dir, n);
        assert_int_equal(n, 0);
    }
}

static void test_sigkill_keeps_nodes_for_session(void **state)
{
    (void)state;
    const char *args[] = {"--service", "crash", "--session-ms", "1000", NULL};
    tb_provider *p = start_tp(0, tb_zk_connstr(g_zk), args);
    assert_int_equal(tb_provider_kill(p, SIGKILL), 0);
    assert_int_equal(count_children("/dubbo/crash/echo/provider"), 1);
    long long t0 = now_ms();
    while (count_children("/dubbo/crash/echo/provider") && now_ms() - t0 < 10000)
        tb_zkc_pump(g_zkc, 50);
    long long ms = now_ms() - t0;
    print_message("a crashed provider's node (1000 ms session) vanished after %lld ms\n", ms);
    assert_int_equal(count_children("/dubbo/crash/echo/provider"), 0);
    assert_true(ms >= 300); /* it was the session that ended, not the process */
}

/* ------------------------------------------------------------ (e) bad znodes */

enum { D_GOOD, D_EMPTY, D_NONJSON, D_NOPORT, D_BADPORT, D_OTHER };
static const char *const k_kinds[] = {"good", "empty", "nonjson", "noport", "badport", "other"};

static int classify(const char *data, int len, int port)
{
    if (len <= 0)
        return D_EMPTY;
    if (strcmp(data, expected_data(port)) == 0)
        return D_GOOD;
    yajl_val v = yajl_tree_parse(data, NULL, 0);
    if (!v || !YAJL_IS_OBJECT(v)) {
        if (v)
            yajl_tree_free(v);
        return D_NONJSON;
    }
    const char *pp[] = {"port", NULL};
    yajl_val pv = yajl_tree_get(v, pp, yajl_t_any);
    int kind = D_OTHER;
    if (!pv)
        kind = D_NOPORT;
    else if (YAJL_IS_INTEGER(pv) && (YAJL_GET_INTEGER(pv) < 1 || YAJL_GET_INTEGER(pv) > 65535))
        kind = D_BADPORT;
    else if (!YAJL_IS_INTEGER(pv) && !YAJL_IS_STRING(pv))
        kind = D_BADPORT;
    else if (YAJL_IS_STRING(pv)) {
        const char *ps = pv->u.string;
        char *end;
        long n = ps ? strtol(ps, &end, 10) : 0;
        if (!ps || *end || n < 1 || n > 65535)
            kind = D_BADPORT;
    }
    yajl_tree_free(v);
    return kind;
}

static void test_bad_znodes(void **state)
{
    (void)state;
    const char *const modes[] = {"empty", "nonjson", "noport", "badport"};
    for (int m = 0; m < 4; m++) {
        char svc[32];
        snprintf(svc, sizeof svc, "bad-%s", modes[m]);
        const char *args[] = {"--service", svc, "--bad-znode", modes[m], NULL};
        tb_provider *p = start_tp(m, tb_zk_connstr(g_zk), args);
        for (size_t i = 0; i < N_METHODS; i++) {
            char dir[256];
            snprintf(dir, sizeof dir, "/dubbo/%s/%s/provider", svc, k_methods[i]);
            char **names;
            int n, count[6] = {0};
            assert_int_equal(tb_zkc_children(g_zkc, dir, &names, &n), ZOK);
            for (int c = 0; c < n; c++) {
                char path[512], data[256];
                int len = (int)sizeof data - 1;
                snprintf(path, sizeof path, "%s/%s", dir, names[c]);
                int rc = tb_zkc_get(g_zkc, path, data, &len);
                if (rc != ZOK || !is_seq_name(names[c]) || len >= (int)sizeof data - 1) {
                    count[D_OTHER]++;
                    continue;
                }
                count[classify(data, len, tb_provider_port(p))]++;
            }
            tb_strv_free(names, n);
            int ok = n == 2 && count[D_GOOD] == 1 && count[1 + m] == 1;
            if (!ok) {
                print_error("%s with --bad-znode %s: %d children:", dir, modes[m], n);
                for (int k = 0; k < 6; k++)
                    print_error(" %s=%d", k_kinds[k], count[k]);
                print_error("; want good=1 %s=1\n", modes[m]);
            }
            assert_true(ok);
        }
    }
}

/* ------------------------------------------------------------ (f) pickle protocols */

/* The JSON text inside a body, copied (to be freed). */
static char *body_json(const unsigned char *b, size_t len, struct pickle_info *pi)
{
    unsigned char *tmp;
    size_t plen;
    const unsigned char *pk = body_pickle(b, len, &plen, &tmp);
    char *out = NULL;
    if (pk && unpickle(pk, plen, pi) == 0) {
        out = malloc(pi->slen + 1);
        memcpy(out, pi->s, pi->slen);
        out[pi->slen] = 0;
    }
    free(tmp);
    return out;
}

static void check_pickle_mode(int proto)
{
    char pstr[4];
    snprintf(pstr, sizeof pstr, "%d", proto);
    const char *args[] = {"--pickle", pstr, NULL};
    tb_provider *p = start_tp(0, NULL, args);
    const char *const cases[] = {"py311_nodebug_string_result", "py311_nodebug_large_lz4_6000B",
                                 "py311_nodebug_huge_lz4_200KB"};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        yajl_val e = manifest_entry(cases[c]);
        assert_non_null(e);
        size_t vlen;
        unsigned char *want = read_vector(jstr(e, "file"), &vlen);
        assert_non_null(want);
        struct resp r;
        assert_int_equal(http(tb_provider_port(p), jstr(e, "request"), NULL, &r), 0);
        assert_int_equal(r.status, 200);
        struct pickle_info got_pi, want_pi;
        char *got_json = body_json((const unsigned char *)r.body, r.len, &got_pi);
        char *want_json = body_json(want, vlen, &want_pi);
        assert_non_null(want_json);
        if (!got_json)
            print_error("--pickle %d, %s: body is not a flag byte + pickled str (%zu bytes, "
                        "first %02x)\n",
                        proto, cases[c], r.len, r.len ? (unsigned char)r.body[0] : 0);
        assert_non_null(got_json);
        /* Same flag (compression depends on the pickle's length, which is
         * within a few bytes of protocol 4's), same JSON text. */
        assert_int_equal(r.body[0], want[0]);
        assert_int_equal(got_pi.proto, proto);
        if (proto == 3) {
            assert_false(got_pi.framed);     /* FRAME came with protocol 4 */
            assert_int_equal(got_pi.strop, 'X'); /* SHORT_BINUNICODE too */
        } else {
            assert_true(got_pi.framed || got_pi.slen > 65536);
            assert_int_equal(got_pi.strop, want_pi.strop);
        }
        if (r.body[0] == '0')
            assert_int_equal((unsigned char)r.body[2], proto); /* the PROTO byte itself */
        if (strcmp(got_json, want_json) != 0)
            print_error("--pickle %d, %s: JSON text differs from the vector's\n", proto,
                        cases[c]);
        assert_string_equal(got_json, want_json);
        free(got_json);
        free(want_json);
        free(want);
        resp_free(&r);
    }
    tb_provider_free(p);
    g_tp[0] = NULL;
}

static void test_pickle_protocols(void **state)
{
    (void)state;
    check_pickle_mode(3);
    check_pickle_mode(5);
}

/* ------------------------------------------------------------ (g) auth */

static void test_auth_token(void **state)
{
    (void)state;
    const char *token = "s3cret";
    const char *args[] = {"--auth", token, NULL};
    tb_provider *p = start_tp(0, NULL, args);
    yajl_val e = manifest_entry("py311_nodebug_string_result");
    assert_non_null(e);
    const char *req = jstr(e, "request");
    const char *rid = "11111111-0000-0000-0000-000000000001"; /* the body's request_id */
    assert_non_null(strstr(req, rid));

    char good[33], bad[33];
    auth_token(token, rid, good);
    auth_token("micromicro", rid, bad); /* microutil's default token */
    char h_rid[128], h_good[128], h_bad[128];
    snprintf(h_rid, sizeof h_rid, "micro-request-id: %s", rid);
    snprintf(h_good, sizeof h_good, "micro-auth-token: %s", good);
    snprintf(h_bad, sizeof h_bad, "micro-auth-token: %s", bad);
    const char *with_good[] = {"Content-Type: application/json", "Accept: application/json",
                               h_rid, h_good, NULL};
    const char *with_bad[] = {"Content-Type: application/json", "Accept: application/json",
                              h_rid, h_bad, NULL};
    const char *with_none[] = {"Content-Type: application/json", h_rid, NULL};
    struct resp r;

    assert_int_equal(http(tb_provider_port(p), req, with_bad, &r), 0);
    assert_int_equal(r.status, 401);
    resp_free(&r);
    assert_int_equal(http(tb_provider_port(p), req, with_none, &r), 0);
    assert_int_equal(r.status, 401);
    resp_free(&r);

    assert_int_equal(http(tb_provider_port(p), req, with_good, &r), 0);
    assert_int_equal(r.status, 200);
    size_t vlen;
    unsigned char *want = read_vector(jstr(e, "file"), &vlen);
    assert_non_null(want);
    int same = r.len == vlen && memcmp(r.body, want, vlen) == 0;
    free(want);
    resp_free(&r);
    assert_true(same);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_vectors_byte_identical, teardown),
        cmocka_unit_test_teardown(test_znodes_per_method, teardown),
        cmocka_unit_test_teardown(test_znodes_per_service, teardown),
        cmocka_unit_test_teardown(test_sigterm_removes_nodes_at_once, teardown),
        cmocka_unit_test_teardown(test_sigkill_keeps_nodes_for_session, teardown),
        cmocka_unit_test_teardown(test_bad_znodes, teardown),
        cmocka_unit_test_teardown(test_pickle_protocols, teardown),
        cmocka_unit_test_teardown(test_auth_token, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
