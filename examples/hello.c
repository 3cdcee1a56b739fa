/* hello: one call, its result printed.
 *
 *   hello [ZK_HOSTS] [SERVICE:METHOD] [ARGS_JSON]
 *   hello 127.0.0.1:2181 micro:HttpRpcService.get_string_v1 '["zhangsan"]'
 */
#include <event2/event.h>
#include <microutil/microutil.h>
#include <stdio.h>

static void done(const mu_result *r, void *user)
{
    int *rc = user;
    *rc = r->status == MU_OK ? 0 : 1;
    if (r->status == MU_OK) {
        printf("%.*s\n", (int)r->result_len, r->result);
    } else if (r->status == MU_EREMOTE) {
        fprintf(stderr, "%s (%lld): %s\n", r->error_name, r->error_code, r->error_message);
    } else {
        fprintf(stderr, "%s: %s\n", mu_strerror(r->status), r->detail);
    }
}

int main(int argc, char **argv)
{
    const char *zk = argc > 1 ? argv[1] : "127.0.0.1:2181";
    const char *target = argc > 2 ? argv[2] : "micro:HttpRpcService.get_string_v1";
    const char *args = argc > 3 ? argv[3] : "[\"zhangsan\"]";

    struct event_base *base = event_base_new();
    mu_config *cfg = mu_config_new();
    if (!base || !cfg || mu_config_set(cfg, "zk_hosts", zk) != MU_OK) {
        fprintf(stderr, "hello: %s\n", cfg ? mu_config_error(cfg) : "out of memory");
        return 2;
    }
    mu_client *client;
    mu_status st = mu_client_new(base, cfg, &client);
    mu_config_free(cfg); /* the client keeps what it needs */
    if (st != MU_OK) {
        fprintf(stderr, "hello: %s\n", mu_strerror(st));
        return 2;
    }
    int rc = -1; /* set by the callback */
    if (mu_call(client, target, args, NULL, NULL, done, &rc, NULL) != MU_OK) {
        fprintf(stderr, "hello: %s\n", mu_client_errmsg(client));
        rc = 2;
    } else {
        /* The callback fires exactly once. The loop would run on for the
         * ZooKeeper session, so run it only until then. */
        while (rc == -1 && event_base_loop(base, EVLOOP_ONCE) == 0)
            ;
    }
    mu_client_free(client);
    event_base_free(base);
    return rc;
}
