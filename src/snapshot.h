/*
 * snapshot: the last-known-good view on disk (snapshot_file).
 *
 * Each change of the view schedules a write of every group's endpoints,
 * 200 ms later, so that a burst of changes is written once; the file is
 * written beside its final name and renamed over it, so a reader (this
 * client at its next start) sees the old file or the new one, never half of
 * one. At start the file is read once; client.c uses its lists for the
 * groups that ZooKeeper has not answered for within
 * snapshot_stale_after_ms, marked stale, until ZooKeeper answers.
 *
 * Format (text, one group a line, at most MU_SNAPSHOT_MAX_BYTES):
 *   # libmicroutil snapshot 1
 *   /dubbo/svc/method/provider 10.0.0.1:8000,10.0.0.2:8000
 * A line that does not parse is skipped with a warning naming the file and
 * the line; nothing else is lost.
 *
 * Ownership: mu_snapshot is private to snapshot.c; made and freed by
 * client.c. It reads the view (never writes it).
 */
#ifndef MU_SNAPSHOT_H
#define MU_SNAPSHOT_H

#include "common.h"
#include "view.h"

struct event_base;

#define MU_SNAPSHOT_MAX_BYTES (16u * 1024u * 1024u)

typedef struct mu_snapshot mu_snapshot;

/* Reads path if it exists. NULL only when out of memory. */
mu_snapshot *mu_snapshot_new(struct event_base *base, const char *path, mu_view *v,
                             const mu_logger *log);
/* Writes a pending change first. */
void mu_snapshot_free(mu_snapshot *s);

/* "host:port,..." the file held for group_path at start, or NULL. */
const char *mu_snapshot_hosts(const mu_snapshot *s, const char *group_path);

/* The view changed: write it within 200 ms. */
void mu_snapshot_changed(mu_snapshot *s);

#endif
