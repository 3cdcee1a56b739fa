/* libFuzzer target: the configuration file parser, mu_config_load_file().
 *
 * Input: the file's bytes. mu_config_load_file() takes a path, so the input
 * is written to a memfd, opened as /proc/self/fd/N (no change to conf.c).
 *
 * Invariants: MU_OK or MU_ECONFIG only; a failure names the file and a line
 * ("PATH:LINE: ...") or says the line is too long; every value a load left
 * in the configuration is one mu_config_set() accepts again (into a fresh
 * configuration), table keys and PREFIX.SERVICE keys alike; a second load
 * of the same file into the loaded configuration gives the same status. */
#define _GNU_SOURCE
#include "fuzz.h"

#include <sys/mman.h>
#include <unistd.h>

#include "conf.h"

static int memfd = -1;
static char path[64];

typedef struct recheck {
    const mu_config *loaded;
    mu_config *fresh;
    const char *prefix;
} recheck;

static void recheck_key(const char *key, const char *def, const char *help, void *user)
{
    (void)def;
    (void)help;
    recheck *rc = user;
    if (strchr(key, '.'))
        return; /* "policy.SERVICE": done by recheck_service */
    const char *v = mu_config_get(rc->loaded, key);
    FUZZ_CHECK(v, "key %s has no value", key);
    mu_config *fresh = mu_config_new();
    if (!fresh)
        abort();
    mu_status st = mu_config_set(fresh, key, v);
    FUZZ_CHECK(st == MU_OK, "%s = '%s' was loaded but is refused when set again: %s", key, v,
               mu_config_error(fresh));
    mu_config_free(fresh);
}

static void recheck_service(const char *svc, const char *value, void *user)
{
    recheck *rc = user;
    char key[4200];
    snprintf(key, sizeof key, "%s.%s", rc->prefix, svc);
    mu_status st = mu_config_set(rc->fresh, key, value);
    FUZZ_CHECK(st == MU_OK, "%s = '%s' was loaded but is refused when set again: %s", key, value,
               mu_config_error(rc->fresh));
    FUZZ_CHECK(strcmp(mu_config_service(rc->fresh, rc->prefix, svc), value) == 0,
               "%s reads back differently", key);
}

static void check_error(const mu_config *cfg, mu_status st)
{
    FUZZ_CHECK(st == MU_OK || st == MU_ECONFIG, "status %s", mu_status_name(st));
    if (st == MU_OK)
        return;
    const char *e = mu_config_error(cfg);
    size_t pl = strlen(path);
    FUZZ_CHECK(strncmp(e, path, pl) == 0 && e[pl] == ':', "error does not name the file: '%s'", e);
    FUZZ_CHECK(e[pl + 1] >= '1' && e[pl + 1] <= '9', "error does not name a line: '%s'", e);
    FUZZ_CHECK(strlen(e) > pl + 4, "error says nothing: '%s'", e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (memfd < 0) {
        memfd = memfd_create("mu-fuzz-config", 0);
        if (memfd < 0)
            abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
    }
    if (ftruncate(memfd, 0) != 0 || pwrite(memfd, data, size, 0) != (ssize_t)size)
        abort();

    mu_config *cfg = mu_config_new();
    if (!cfg)
        abort();
    mu_status st = mu_config_load_file(cfg, path);
    check_error(cfg, st);

    recheck rc = {cfg, NULL, NULL};
    mu_config_describe(recheck_key, &rc);
    static const char *const prefixes[] = {"policy", "static"};
    for (size_t i = 0; i < 2; i++) {
        recheck rs = {cfg, mu_config_new(), prefixes[i]};
        if (!rs.fresh)
            abort();
        mu_config_each_service(cfg, prefixes[i], recheck_service, &rs);
        mu_config_free(rs.fresh);
    }

    mu_status again = mu_config_load_file(cfg, path);
    check_error(cfg, again);
    FUZZ_CHECK(again == st, "the same file loaded twice: %s then %s", mu_status_name(st),
               mu_status_name(again));
    mu_config_free(cfg);
    return 0;
}
