/*
 * Optional: the result of a call as a yajl tree. Include this (and link
 * yajl) only if you want one; <microutil/microutil.h> does not mention
 * yajl, so that its types are not part of every user's ABI.
 */
#ifndef MICROUTIL_MICROUTIL_YAJL_H
#define MICROUTIL_MICROUTIL_YAJL_H

#include <stddef.h>
#include <yajl/yajl_tree.h>

#include "microutil.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The deepest nesting of arrays and objects mu_result_parse() accepts. */
#define MU_RESULT_MAX_DEPTH 512

/**
 * Parses r->result into a yajl tree (see <yajl/yajl_tree.h>), for callers
 * who want a tree rather than text. The caller owns the tree and frees it
 * with yajl_tree_free(). NULL on error, with a message in @p err; a result
 * nested deeper than MU_RESULT_MAX_DEPTH is refused (yajl_tree builds and
 * frees trees by recursion, so a deep one would overflow the stack).
 */
MU_EXPORT yajl_val mu_result_parse(const mu_result *r, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* MICROUTIL_MICROUTIL_YAJL_H */
