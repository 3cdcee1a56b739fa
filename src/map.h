/* map: a string-keyed hash table (open addressing, linear probing). Keys
 * are copied; values are borrowed pointers.
 * mu_map is embedded by its user (client.c's tables, the view's endpoints
 * and groups, each group's znodes, the registry's watched groups), which
 * frees the values; map.c owns the slots and the key copies. */
#ifndef MU_MAP_H
#define MU_MAP_H

#include <stddef.h>

typedef struct mu_map_slot {
    char *key; /* NULL = empty; (char *)&tombstone = deleted */
    void *value;
} mu_map_slot;

typedef struct mu_map {
    mu_map_slot *slots;
    size_t cap;  /* power of two, or 0 */
    size_t len;  /* live entries */
    size_t used; /* live + deleted */
} mu_map;

void *mu_map_get(const mu_map *m, const char *key);
/* Inserts or replaces. 0, or -1 on allocation failure. */
int mu_map_put(mu_map *m, const char *key, void *value);
/* Removes key; returns its value or NULL. */
void *mu_map_del(mu_map *m, const char *key);
void mu_map_clear(mu_map *m);
/* Live entries. */
size_t mu_map_size(const mu_map *m);
/* Iteration: for (size_t i = 0; mu_map_next(m, &i, &k, &v);) ... ; do not
 * insert while iterating (deleting the current key is fine). */
int mu_map_next(const mu_map *m, size_t *i, const char **key, void **value);

#endif
