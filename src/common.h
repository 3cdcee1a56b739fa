/* Internal helpers shared by every part. Not installed.
 *
 * Ownership:
 *   mu_buf     owned by whatever struct embeds it.
 *   mu_logger  embedded in struct mu_client (client.c); modules keep a
 *              const pointer to it. */
#ifndef MU_COMMON_H
#define MU_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#include "microutil/microutil.h"

#define MU_UNUSED(x) ((void)(x))
#define MU_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#if defined(__GNUC__)
#define MU_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define MU_PRINTF(f, a)
#endif


/* A growable byte buffer. Owned by whoever embeds it. */
typedef struct mu_buf {
    char *data;
    size_t len;
    size_t cap;
} mu_buf;

int mu_buf_reserve(mu_buf *b, size_t extra);
int mu_buf_append(mu_buf *b, const void *p, size_t n);
int mu_buf_appendf(mu_buf *b, const char *fmt, ...) MU_PRINTF(2, 3);
void mu_buf_reset(mu_buf *b);
void mu_buf_free(mu_buf *b);

/* snprintf into a fixed buffer, always terminated, truncation is fine. */
void mu_fmt(char *dst, size_t cap, const char *fmt, ...) MU_PRINTF(3, 4);

/* Calls fn for each item of a comma list, spaces around it trimmed (an
 * item may be empty). Stops at the first non-zero return and returns it;
 * else 0. The one parser of comma lists (config, static hosts). */
int mu_list_each(const char *list, int (*fn)(const char *item, size_t len, void *user),
                 void *user);

/* Monotonic clock in microseconds. */
uint64_t mu_now_us(void);

/* xorshift64*: the one generator of the library (picks, jitter, retry
 * backoff, re-list delays). Each user keeps its own state, seeded by the
 * client; inline because every pick draws. */
static inline uint64_t mu_rand(uint64_t *state)
{
    uint64_t x = *state;
    if (x == 0) /* a zero state would stay zero */
        x = 0x9E3779B97F4A7C15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}



/* Logging: every part logs through the client's sink. */
typedef struct mu_logger {
    mu_log_fn fn;
    void *user;
    mu_log_level level;
} mu_logger;

void mu_log(const mu_logger *lg, mu_log_level level, const char *fmt, ...) MU_PRINTF(3, 4);
#endif
