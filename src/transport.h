/*
 * transport: HTTP POSTs over libcurl multi, driven by the caller's libevent
 * event_base (the multi-event.c pattern: one event per socket, one timer,
 * curl_multi_info_read drained after every action). Easy handles live in
 * xfers that are reused across attempts; connections are kept alive in the
 * multi handle's cache, sized from our own connection budget.
 *
 * Ownership:
 *   mu_transport       private to transport.c; made and freed by client.c.
 *   mu_xfer            private to transport.c; call.c makes one per call
 *                      object and frees it with that object.
 *   mu_xfer_result     inside its mu_xfer.
 *   mu_transport_opts  a value, copied into mu_transport.
 * Socket events and connection records (by fd) are transport.c's own.
 */
#ifndef MU_TRANSPORT_H
#define MU_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <curl/curl.h>

struct event_base;

typedef struct mu_transport_opts {
    long max_host_connections;  /* CURLMOPT_MAX_HOST_CONNECTIONS; 0 = unlimited */
    long max_connections;       /* CURLMOPT_MAXCONNECTS (cache size); 0 = default 1024 */
    long connect_timeout_ms;    /* per attempt; 0 = curl default */
    size_t max_response;        /* body bytes before the transfer is aborted (too_big) */
    size_t max_buffered;        /* body bytes of all transfers being received; 0 = no cap */
    const char *tls_ca_file;    /* https: CA bundle (copied); "" or NULL: the system's */
    int tls_verify;             /* https: check the certificate and host name */
} mu_transport_opts;

typedef struct mu_transport mu_transport;

/* The most body bytes running transfers held at once so far. */
size_t mu_transport_buffered_peak(const mu_transport *t);
typedef struct mu_xfer mu_xfer;

/* What one finished exchange produced. Valid until the xfer is restarted or freed. */
typedef struct mu_xfer_result {
    CURLcode code;          /* CURLE_OK or the failure */
    long http_status;       /* 0 when no response line was received */
    int connected;          /* a TCP connection was established (or reused) */
    int sent;               /* request bytes reached the socket (CURLINFO_SIZE_UPLOAD_T > 0) */
    int too_big;            /* aborted: body exceeded max_response (1) or, with the bodies
                             * of every other transfer being received, max_buffered (2) */
    int reused;             /* the request went over a connection kept from an earlier exchange */
    int unsent;             /* provably never reached the provider's application: see below */
    int died_on_reuse;      /* a reused connection ended before any response byte (reset or EOF) */
    int kept;               /* the exchange left its connection open for reuse, if it could */
    int bad_headers;        /* the answer's headers passed libcurl's limits (CURLE_OUT_OF_MEMORY
                             * after the status line: 100 KiB a header, 300 KiB in all) */
    const char *body;       /* response body (NUL-terminated), len bytes */
    size_t len;
    const char *error;      /* curl's error text, "" if none */
    uint64_t total_us;      /* CURLINFO_TOTAL_TIME_T */
    uint64_t body_wait_us;  /* from the first answer byte to the last (TOTAL - STARTTRANSFER) */
} mu_xfer_result;

/* `unsent` is set when the exchange failed but the request provably never
 * reached the provider's application, so that even a non-idempotent call
 * may be sent again:
 *   - the body was not written (connect refused or timed out);
 *   - a reused connection was reset (ECONNRESET/EPIPE) before any response
 *     byte. Linux answers with RST instead of FIN only when a socket is
 *     closed with unread data in its receive buffer, or receives data after
 *     it was closed. A server that closes an idle keep-alive connection
 *     (uwsgi --http-socket closes after every response without saying so)
 *     therefore resets our request unread. A server that read the request
 *     and then died closes with an empty receive buffer: FIN, seen as EOF,
 *     which stays ambiguous (died_on_reuse without unsent).
 * libcurl resends by itself when a reused connection dies before any
 * response byte (Curl_retry_request), EOF included, on a fresh connection
 * or on another kept one, and keeps its count of such resends across
 * transfers on a reused easy handle. The transport stops every such
 * resend: once an exchange has a connection, any further one it would use
 * must be fresh (CURLOPT_FRESH_CONNECT), and a fresh socket opened then is
 * refused (CURLOPT_SOCKOPTFUNCTION). The call layer alone decides whether
 * to send again. */

/* Called once per started exchange, from inside the transport's event
 * handling (never from within mu_xfer_start). It may start this or another
 * xfer, or cancel other xfers, but must not free the transport. */
typedef void (*mu_xfer_done_fn)(mu_xfer *x, const mu_xfer_result *res, void *user);

/* libcurl's process-wide initialisation (curl_global_init). Not thread-safe
 * in every libcurl: the client calls it once, under pthread_once, before
 * its first transport. 0 on success. */
int mu_transport_global_init(void);

mu_transport *mu_transport_new(struct event_base *base, const mu_transport_opts *opts);
/* All xfers must have been freed first. Not from inside a done callback. */
void mu_transport_free(mu_transport *t);

mu_xfer *mu_xfer_new(mu_transport *t);
/* Cancels the exchange if one is running (no callback), frees the handle. */
void mu_xfer_free(mu_xfer *x);

/* Starts POST url with body[0..len) and headers (all borrowed: they must stay
 * valid until the done callback or mu_xfer_cancel). timeout_ms bounds the
 * whole exchange. Returns 0; -1 if x is already running (it is left
 * running, its callback still due) or curl refused (x is then idle). */
int mu_xfer_start(mu_xfer *x, const char *url, const char *body, size_t len,
                  const struct curl_slist *headers, long timeout_ms, mu_xfer_done_fn done,
                  void *user);
/* Stops a running exchange; the done callback will not fire. No-op if idle. */
void mu_xfer_cancel(mu_xfer *x);
int mu_xfer_running(const mu_xfer *x);
/* Whether the next exchanges of x leave their connection open for reuse
 * (1, the default) or close it when done (0): one exchange per connection.
 * With 0 an exchange may still take a kept connection, once.
 * The caller adds "Connection: close" to its headers in the latter case. */
void mu_xfer_set_reuse(mu_xfer *x, int reuse);
/* Whether x's next exchanges set TCP_QUICKACK on their connection before
 * each read (0, the default: it costs a packet per answer). For servers
 * that hold the body back until the ACK of the headers (Nagle on, two
 * writes: Python's http.server); mu_xfer_result.body_wait_us shows them. */
void mu_xfer_set_quickack(mu_xfer *x, int on);
/* 1 if x's running exchange may have sent some of its request (curl
 * counts request bytes sent); 0 while it is still connecting. */
int mu_xfer_request_sent(const mu_xfer *x);
/* 1 while x's running exchange uses a connection it opened itself (not a
 * kept one). */
int mu_xfer_fresh_connection(const mu_xfer *x);
/* Frees the idle xfer's response buffer if it grew past keep bytes, so that
 * one huge response does not stay resident in a reused xfer. */
void mu_xfer_trim(mu_xfer *x, size_t keep);

/* Shuts down the kept connections to url that no exchange is using, so that
 * a server with one worker per connection gets those workers back. Returns
 * how many. */
int mu_transport_close_idle(mu_transport *t, const char *url);

/* Connections opened so far (sum of CURLINFO_NUM_CONNECTS), for tests and benches. */
uint64_t mu_transport_connections_opened(const mu_transport *t);
/* Exchanges whose second send on a fresh connection libcurl wanted and the
 * transport refused (see unsent above), for tests. */
uint64_t mu_transport_resends_refused(const mu_transport *t);
/* Exchanges currently running. */
size_t mu_transport_running(const mu_transport *t);

#endif
