#include "config.h"
#include "common.h"

#include <stdio.h>

void mu_log(const mu_logger *lg, mu_log_level level, const char *fmt, ...)
{
    if (!lg || !lg->fn || level > lg->level)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lg->fn(level, msg, lg->user);
}
