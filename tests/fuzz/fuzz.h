/* Shared by the libFuzzer targets in tests/fuzz (built by `make fuzz` in a
 * tree configured with CC=clang --enable-fuzzing; run by scripts/fuzz).
 * A broken invariant aborts, which libFuzzer reports as a crash with the
 * input that caused it. */
#ifndef MU_FUZZ_H
#define MU_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond, ...)                                                                     \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "fuzz invariant broken at %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                                         \
            fputc('\n', stderr);                                                                  \
            abort();                                                                              \
        }                                                                                         \
    } while (0)

/* data[0..size) as a NUL-terminated heap string (ASan sees any overread). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* 1 if s[0..cap) holds a NUL and what precedes it is not empty. */
static inline int fuzz_nonempty_cstr(const char *s, size_t cap)
{
    return s && memchr(s, '\0', cap) && s[0] != '\0';
}

#endif
