#include "config.h"
#include "outcome.h"

static mu_outcome verdict(mu_status st, int retry, int unsent, mu_signal sig)
{
    mu_outcome o = {st, retry, unsent, sig};
    return o;
}

/* An HTTP answer arrived and was decoded. */
static mu_outcome answered(const mu_attempt_facts *f)
{
    switch (f->decoded) {
    case MU_OK:
    case MU_EREMOTE: /* the method ran and raised: never run it again */
    case MU_EAUTH:
        return verdict(f->decoded, 0, 0, MU_SIG_ANSWERED);
    case MU_EPROTOCOL:
        /* A body we cannot read may come from a method that ran. */
        return verdict(MU_EPROTOCOL, f->idempotent, 0, MU_SIG_ANSWERED);
    case MU_EHTTP:
        /* A 5xx without a microutil body may mean the method ran; a 4xx
         * will not change on another provider. */
        return verdict(MU_EHTTP, f->idempotent && f->http_status >= 500, 0, MU_SIG_ANSWERED);
    default:
        return verdict(f->decoded, 0, 0, MU_SIG_ANSWERED);
    }
}

mu_outcome mu_classify(const mu_attempt_facts *f)
{
    if (f->too_big)
        return verdict(MU_ETOOBIG, 0, 0, MU_SIG_NEUTRAL);
    if (f->curl_ok)
        return answered(f);
    if (f->bad_headers) /* an answer, broken: as a body we cannot read */
        return verdict(MU_EPROTOCOL, f->idempotent, 0, MU_SIG_ANSWERED);
    if (f->unsent && f->died_on_reuse)
        /* The server had closed the kept connection: our request was reset
         * unread. Nothing is wrong with the provider. */
        return verdict(MU_ETRANSPORT, 1, 1, MU_SIG_NEUTRAL);
    if (f->unsent)
        /* Refused or connect timeout; one cut by the call's own deadline
         * says nothing about the provider. */
        return verdict(MU_ECONNECT, 1, 1, f->deadline_cut ? MU_SIG_NEUTRAL : MU_SIG_REFUSED);
    if (f->timed_out)
        return verdict(MU_ETIMEDOUT, f->idempotent, 0, MU_SIG_TIMEOUT);
    return verdict(MU_ETRANSPORT, f->idempotent, 0, MU_SIG_BROKEN);
}

const char *mu_signal_name(mu_signal s)
{
    static const char *const names[] = {"answered", "refused", "timeout", "broken", "neutral"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "?";
}
