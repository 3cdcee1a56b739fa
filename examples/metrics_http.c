/* metrics_http: a program that makes calls in the background and serves
 * its client's metrics at /metrics, for Prometheus to scrape, from its own
 * libevent loop (evhttp): no thread, no other HTTP server.
 *
 *   metrics_http [ZK_HOSTS] [SERVICE:METHOD] [PORT] [SECONDS]
 *   metrics_http 127.0.0.1:2181 micro:echo 9464
 *   curl -s localhost:9464/metrics
 *
 * It makes 10 calls a second (args [1]) and stops after SECONDS (0, the
 * default: never).
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <microutil/microutil.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct app {
    mu_client *client;
    const char *target;
    char *buf;       /* the last text, kept for the next scrape */
    size_t cap;
    unsigned long ok, failed;
} app;

static void on_done(const mu_result *r, void *user)
{
    app *a = user;
    if (r->status == MU_OK)
        a->ok++;
    else
        a->failed++;
}

static void on_tick(evutil_socket_t fd, short what, void *user)
{
    (void)fd;
    (void)what;
    app *a = user;
    if (mu_call(a->client, a->target, "[1]", NULL, NULL, on_done, a, NULL) != MU_OK)
        a->failed++;
}

/* GET /metrics: the text exposition format. The buffer grows to what
 * mu_metrics_write() says it needs, with room for new series. */
static void on_metrics(struct evhttp_request *req, void *user)
{
    app *a = user;
    size_t need = 0;
    mu_status st;
    while ((st = mu_metrics_write(a->client, a->buf, a->cap, &need)) == MU_ENOSPACE) {
        size_t cap = need + need / 4;
        char *b = realloc(a->buf, cap);
        if (!b)
            break;
        a->buf = b;
        a->cap = cap;
    }
    if (st != MU_OK) {
        evhttp_send_error(req, HTTP_INTERNAL, mu_strerror(st));
        return;
    }
    struct evbuffer *body = evbuffer_new();
    if (!body) {
        evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
        return;
    }
    evbuffer_add(body, a->buf, need - 1);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, HTTP_OK, "OK", body);
    evbuffer_free(body);
}

static void on_other(struct evhttp_request *req, void *user)
{
    (void)user;
    evhttp_send_error(req, HTTP_NOTFOUND, "try /metrics");
}

static void on_stop(evutil_socket_t fd, short what, void *user)
{
    (void)fd;
    (void)what;
    event_base_loopexit(user, NULL);
}

int main(int argc, char **argv)
{
    const char *zk = argc > 1 ? argv[1] : "127.0.0.1:2181";
    app a;
    memset(&a, 0, sizeof a);
    a.target = argc > 2 ? argv[2] : "micro:echo";
    int port = argc > 3 ? atoi(argv[3]) : 9464;
    int seconds = argc > 4 ? atoi(argv[4]) : 0;

    struct event_base *base = event_base_new();
    mu_config *cfg = mu_config_new();
    if (!base || !cfg || mu_config_set(cfg, "zk_hosts", zk) != MU_OK) {
        fprintf(stderr, "metrics_http: %s\n", cfg ? mu_config_error(cfg) : "out of memory");
        return 2;
    }
    mu_status st = mu_client_new(base, cfg, &a.client);
    mu_config_free(cfg);
    if (st != MU_OK) {
        fprintf(stderr, "metrics_http: %s\n", mu_strerror(st));
        return 2;
    }
    struct evhttp *http = evhttp_new(base);
    if (!http || evhttp_bind_socket(http, "127.0.0.1", (unsigned short)port) != 0) {
        fprintf(stderr, "metrics_http: cannot listen on 127.0.0.1:%d\n", port);
        return 2;
    }
    evhttp_set_cb(http, "/metrics", on_metrics, &a);
    evhttp_set_gencb(http, on_other, NULL);

    struct event *tick = event_new(base, -1, EV_PERSIST, on_tick, &a);
    struct timeval every = {0, 100000};
    event_add(tick, &every);
    struct event *stop = NULL;
    if (seconds > 0) {
        struct timeval tv = {seconds, 0};
        stop = evtimer_new(base, on_stop, base);
        evtimer_add(stop, &tv);
    }
    printf("serving http://127.0.0.1:%d/metrics, calling %s\n", port, a.target);
    fflush(stdout);
    event_base_dispatch(base);
    printf("%lu ok, %lu failed\n", a.ok, a.failed);

    if (stop)
        event_free(stop);
    event_free(tick);
    evhttp_free(http);
    mu_client_free(a.client); /* pending calls' callbacks fire here */
    free(a.buf);
    event_base_free(base);
    return 0;
}
