/*
 * outcome: the one classification of an attempt's end. Pure: facts in,
 * verdict out, no state, so that every case is table-tested
 * (tests/test_outcome.c). Owned by nobody: call.c asks, then acts;
 * mu_attempt_facts and mu_outcome are values on call.c's stack.
 *
 * Inputs are what the transport and the decoder saw, plus whether the call
 * is idempotent. Outputs are the call's status if it ends here, whether
 * sending it again is safe, whether the attempt counts against the retries
 * (an attempt that provably never reached the application does not), and
 * the signal for the provider's health.
 */
#ifndef MU_OUTCOME_H
#define MU_OUTCOME_H

#include "common.h"

/* What one attempt says about its provider. */
typedef enum mu_signal {
    MU_SIG_ANSWERED = 0, /* an HTTP answer came back: the provider is up */
    MU_SIG_REFUSED,      /* connect failed: not listening (yet), or gone */
    MU_SIG_TIMEOUT,      /* sent, no answer within timeout_ms */
    MU_SIG_BROKEN,       /* sent, then the connection failed */
    MU_SIG_NEUTRAL,      /* says nothing: cut by the call's deadline, an idle
                          * keep-alive connection the server had closed, a
                          * response over the size cap */
} mu_signal;

typedef struct mu_attempt_facts {
    int curl_ok;         /* the exchange completed (CURLE_OK) */
    int timed_out;       /* CURLE_OPERATION_TIMEDOUT */
    int too_big;         /* aborted: response over max_response_bytes */
    int unsent;          /* provably never reached the application (transport.h) */
    int died_on_reuse;   /* a reused connection ended before any response byte */
    int deadline_cut;    /* the attempt's timeout was the call's remaining deadline */
    int bad_headers;     /* the answer's headers passed libcurl's limits */
    mu_status decoded;   /* the decoder's verdict, when curl_ok && !too_big */
    long http_status;
    int idempotent;
} mu_attempt_facts;

typedef struct mu_outcome {
    mu_status status;    /* the call's status if it ends with this attempt */
    int retry;           /* sending the call again is safe */
    int unsent;          /* does not use up one of the call's retries */
    mu_signal signal;
} mu_outcome;

mu_outcome mu_classify(const mu_attempt_facts *f);

const char *mu_signal_name(mu_signal s);

#endif
