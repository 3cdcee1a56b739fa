/* mucall: command-line client for microutil providers.
 * This first piece decodes saved response bodies (--decode FILE). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: mucall --decode FILE\n"
                 "\n"
                 "  --decode FILE   decode a saved microutil response body (flag byte, LZ4,\n"
                 "                  pickle, JSON) and print its JSON document on stdout.\n"
                 "                  Exit 0 when it decodes (also for a remote error),\n"
                 "                  1 on a protocol error, 2 on a usage error.\n"
                 "  --help          this text\n"
                 "  --version       print the version\n");
}

static int read_file(const char *path, mu_buf *out)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "mucall: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    char chunk[65536];
    size_t n;
    int rc = 0;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (mu_buf_append(out, chunk, n) != 0) {
            fprintf(stderr, "mucall: out of memory reading %s\n", path);
            rc = -1;
            break;
        }
    }
    if (ferror(f)) {
        fprintf(stderr, "mucall: error reading %s: %s\n", path, strerror(errno));
        rc = -1;
    }
    if (f != stdin)
        fclose(f);
    return rc;
}

static int decode_file(const char *path)
{
    mu_buf body = {0};
    if (read_file(path, &body) != 0) {
        mu_buf_free(&body);
        return 1;
    }
    mu_decoder d;
    mu_decoder_init(&d, 0);
    mu_reply r;
    mu_status st = mu_decode_response(&d, body.data ? body.data : "", body.len, 200, NULL, &r);
    int rc = 0;
    if (st == MU_OK || st == MU_EREMOTE) {
        fwrite(r.doc, 1, r.doc_len, stdout);
        fputc('\n', stdout);
    } else {
        fprintf(stderr, "mucall: %s: %s: %s\n", path, mu_strerror(st), r.detail);
        rc = 1;
    }
    mu_decoder_cleanup(&d);
    mu_buf_free(&body);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--decode") == 0)
        return decode_file(argv[2]);
    if (argc == 2 && strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("mucall %s\n", MU_VERSION_STRING);
        return 0;
    }
    usage(stderr);
    return 2;
}
