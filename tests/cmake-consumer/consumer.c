/* Links libmicroutil and libevent through microutil::microutil (or
 * pkg-config) and checks that the header and the library agree. */
#include <event2/event.h>
#include <microutil/microutil.h>
#include <microutil/microutil_yajl.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    struct event_base *base = event_base_new();
    mu_config *cfg = mu_config_new();
    mu_client *client = NULL;
    /* Static providers only: no ZooKeeper, nothing is contacted. */
    int ok = base && cfg && mu_config_set(cfg, "zk_hosts", "") == MU_OK &&
             mu_client_new(base, cfg, &client) == MU_OK;
    mu_client_free(client);
    mu_config_free(cfg);
    if (base)
        event_base_free(base);
    mu_result r = {.status = MU_OK, .result = "[1, 2]", .result_len = 6, .detail = ""};
    char err[128];
    yajl_val v = mu_result_parse(&r, err, sizeof err);
    ok = ok && v && YAJL_IS_ARRAY(v);
    yajl_tree_free(v);
    printf("microutil %s (compiled against %s)%s\n", mu_version(), MU_VERSION_STRING,
           ok ? "" : ": FAILED");
    return ok && strcmp(mu_version(), MU_VERSION_STRING) == 0 ? 0 : 1;
}
