/* Unit test for outcome: the one classification of an attempt's end, as a
 * table. Each row is one situation a real provider or network produces;
 * the columns say what the call does next. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#include "../src/outcome.h"

enum { NI = 0, ID = 1 }; /* the call is not idempotent / idempotent */

typedef struct row {
    const char *what;
    mu_attempt_facts in;
    mu_outcome want;
} row;

#define ANSWER(dec, http, idem) \
    {.curl_ok = 1, .decoded = (dec), .http_status = (http), .idempotent = (idem)}

static const row rows[] = {
    /* Answers: the provider is up whatever the call's status. */
    {"success", ANSWER(MU_OK, 200, NI), {MU_OK, 0, 0, MU_SIG_ANSWERED}},
    {"the method raised (500 with a microutil body)", ANSWER(MU_EREMOTE, 500, ID),
     {MU_EREMOTE, 0, 0, MU_SIG_ANSWERED}},
    {"wrong auth token (401)", ANSWER(MU_EAUTH, 401, ID), {MU_EAUTH, 0, 0, MU_SIG_ANSWERED}},
    {"502 from a proxy, idempotent", ANSWER(MU_EHTTP, 502, ID), {MU_EHTTP, 1, 0, MU_SIG_ANSWERED}},
    {"502 from a proxy, not idempotent", ANSWER(MU_EHTTP, 502, NI),
     {MU_EHTTP, 0, 0, MU_SIG_ANSWERED}},
    {"404: wrong path, never retried", ANSWER(MU_EHTTP, 404, ID), {MU_EHTTP, 0, 0, MU_SIG_ANSWERED}},
    {"garbage body, idempotent", ANSWER(MU_EPROTOCOL, 200, ID),
     {MU_EPROTOCOL, 1, 0, MU_SIG_ANSWERED}},
    {"garbage body, not idempotent", ANSWER(MU_EPROTOCOL, 200, NI),
     {MU_EPROTOCOL, 0, 0, MU_SIG_ANSWERED}},
    {"LZ4 size over the cap", ANSWER(MU_ETOOBIG, 200, ID), {MU_ETOOBIG, 0, 0, MU_SIG_ANSWERED}},
    /* Transport failures. */
    {"body over max_response_bytes", {.too_big = 1, .idempotent = ID},
     {MU_ETOOBIG, 0, 0, MU_SIG_NEUTRAL}},
    {"connection refused", {.unsent = 1, .idempotent = NI}, {MU_ECONNECT, 1, 1, MU_SIG_REFUSED}},
    {"connect timeout", {.unsent = 1, .timed_out = 1, .idempotent = NI},
     {MU_ECONNECT, 1, 1, MU_SIG_REFUSED}},
    {"response headers over libcurl's limits, not idempotent", {.bad_headers = 1, .http_status = 200},
     {MU_EPROTOCOL, 0, 0, MU_SIG_ANSWERED}},
    {"response headers over libcurl's limits, idempotent",
     {.bad_headers = 1, .http_status = 200, .idempotent = 1}, {MU_EPROTOCOL, 1, 0, MU_SIG_ANSWERED}},
    {"connect cut by the call's deadline", {.unsent = 1, .timed_out = 1, .deadline_cut = 1},
     {MU_ECONNECT, 1, 1, MU_SIG_NEUTRAL}},
    {"kept connection reset unread", {.unsent = 1, .died_on_reuse = 1, .idempotent = NI},
     {MU_ETRANSPORT, 1, 1, MU_SIG_NEUTRAL}},
    {"kept connection EOF, not idempotent", {.died_on_reuse = 1, .idempotent = NI},
     {MU_ETRANSPORT, 0, 0, MU_SIG_BROKEN}},
    {"kept connection EOF, idempotent", {.died_on_reuse = 1, .idempotent = ID},
     {MU_ETRANSPORT, 1, 0, MU_SIG_BROKEN}},
    {"timeout after send, not idempotent", {.timed_out = 1, .idempotent = NI},
     {MU_ETIMEDOUT, 0, 0, MU_SIG_TIMEOUT}},
    {"timeout after send, idempotent", {.timed_out = 1, .idempotent = ID},
     {MU_ETIMEDOUT, 1, 0, MU_SIG_TIMEOUT}},
    {"reset after send, not idempotent", {.idempotent = NI}, {MU_ETRANSPORT, 0, 0, MU_SIG_BROKEN}},
    {"reset after send, idempotent", {.idempotent = ID}, {MU_ETRANSPORT, 1, 0, MU_SIG_BROKEN}},
};

static void test_table(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const row *r = &rows[i];
        mu_outcome got = mu_classify(&r->in);
        if (got.status != r->want.status || got.retry != r->want.retry ||
            got.unsent != r->want.unsent || got.signal != r->want.signal) {
            fprintf(stderr, "%s: got %s retry=%d unsent=%d %s, want %s retry=%d unsent=%d %s\n",
                    r->what, mu_status_name(got.status), got.retry, got.unsent,
                    mu_signal_name(got.signal), mu_status_name(r->want.status), r->want.retry,
                    r->want.unsent, mu_signal_name(r->want.signal));
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

/* Whatever the facts, a non-idempotent call that may have reached the
 * application is never sent again. */
static void test_never_twice(void **state)
{
    (void)state;
    static const mu_status decs[] = {MU_OK, MU_EREMOTE, MU_EHTTP, MU_EPROTOCOL, MU_ETOOBIG,
                                     MU_EAUTH};
    for (unsigned bits = 0; bits < 64; bits++)
        for (size_t d = 0; d < sizeof decs / sizeof decs[0]; d++)
            for (long http = 200; http <= 600; http += 100) {
                mu_attempt_facts f = {
                    .curl_ok = bits & 1, .timed_out = (bits >> 1) & 1, .too_big = (bits >> 2) & 1,
                    .unsent = (bits >> 3) & 1, .died_on_reuse = (bits >> 4) & 1,
                    .deadline_cut = (bits >> 5) & 1, .decoded = decs[d], .http_status = http,
                    .idempotent = 0,
                };
                mu_outcome o = mu_classify(&f);
                if (o.retry)
                    assert_true(o.unsent && !f.curl_ok && !f.too_big && f.unsent);
                assert_true(o.status != MU_OK || (f.curl_ok && !f.too_big));
            }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_never_twice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
