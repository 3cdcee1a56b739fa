#include "config.h"
#include "common.h"

static const struct {
    const char *name;
    const char *text;
} status_table[] = {
    [MU_OK] = {"MU_OK", "success"},
    [MU_EINVAL] = {"MU_EINVAL", "invalid argument"},
    [MU_ENOMEM] = {"MU_ENOMEM", "out of memory"},
    [MU_ECONFIG] = {"MU_ECONFIG", "bad configuration"},
    [MU_ENOPROVIDER] = {"MU_ENOPROVIDER", "no provider"},
    [MU_EDISCOVERY] = {"MU_EDISCOVERY", "discovery failed"},
    [MU_ETIMEDOUT] = {"MU_ETIMEDOUT", "timed out"},
    [MU_ECONNECT] = {"MU_ECONNECT", "connect failed"},
    [MU_ETRANSPORT] = {"MU_ETRANSPORT", "connection failed after send"},
    [MU_EHTTP] = {"MU_EHTTP", "unexpected HTTP status"},
    [MU_EPROTOCOL] = {"MU_EPROTOCOL", "protocol error"},
    [MU_ETOOBIG] = {"MU_ETOOBIG", "response too big"},
    [MU_EREMOTE] = {"MU_EREMOTE", "remote error"},
    [MU_ECANCELLED] = {"MU_ECANCELLED", "cancelled"},
    [MU_EAUTH] = {"MU_EAUTH", "authentication failed"},
    [MU_EOVERLOADED] = {"MU_EOVERLOADED", "overloaded: too many calls in flight or queued"},
    [MU_ENOSPACE] = {"MU_ENOSPACE", "buffer too small"},
};

#define N_STATUS (sizeof status_table / sizeof status_table[0])

const char *mu_strerror(mu_status status)
{
    if ((unsigned)status < N_STATUS && status_table[status].text)
        return status_table[status].text;
    return "unknown status";
}

const char *mu_status_name(mu_status status)
{
    if ((unsigned)status < N_STATUS && status_table[status].name)
        return status_table[status].name;
    return "MU_UNKNOWN";
}
