#include "config.h"
#include "map.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static char tombstone;
#define DELETED (&tombstone)

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

static mu_map_slot *find(const mu_map *m, const char *key)
{
    if (!m->cap)
        return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = (size_t)hash(key) & mask;; i = (i + 1) & mask) {
        mu_map_slot *s = &m->slots[i];
        if (!s->key)
            return NULL;
        if (s->key != DELETED && strcmp(s->key, key) == 0)
            return s;
    }
}

size_t mu_map_size(const mu_map *m)
{
    return m->len;
}

void *mu_map_get(const mu_map *m, const char *key)
{
    mu_map_slot *s = find(m, key);
    return s ? s->value : NULL;
}

static int grow(mu_map *m)
{
    size_t cap = m->cap ? m->cap : 8;
    while ((m->len + 1) * 4 >= cap * 3)
        cap *= 2;
    mu_map_slot *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return -1;
    for (size_t i = 0; i < m->cap; i++) {
        mu_map_slot *s = &m->slots[i];
        if (!s->key || s->key == DELETED)
            continue;
        size_t j = (size_t)hash(s->key) & (cap - 1);
        while (slots[j].key)
            j = (j + 1) & (cap - 1);
        slots[j] = *s;
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    m->used = m->len;
    return 0;
}

int mu_map_put(mu_map *m, const char *key, void *value)
{
    mu_map_slot *s = find(m, key);
    if (s) {
        s->value = value;
        return 0;
    }
    if ((m->used + 1) * 4 >= m->cap * 3 && grow(m) != 0)
        return -1;
    char *k = strdup(key);
    if (!k)
        return -1;
    size_t mask = m->cap - 1;
    size_t i = (size_t)hash(key) & mask;
    while (m->slots[i].key && m->slots[i].key != DELETED)
        i = (i + 1) & mask;
    if (!m->slots[i].key)
        m->used++;
    m->slots[i].key = k;
    m->slots[i].value = value;
    m->len++;
    return 0;
}

void *mu_map_del(mu_map *m, const char *key)
{
    mu_map_slot *s = find(m, key);
    if (!s)
        return NULL;
    void *v = s->value;
    free(s->key);
    s->key = DELETED;
    s->value = NULL;
    m->len--;
    return v;
}

void mu_map_clear(mu_map *m)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key && m->slots[i].key != DELETED)
            free(m->slots[i].key);
    free(m->slots);
    memset(m, 0, sizeof *m);
}

int mu_map_next(const mu_map *m, size_t *i, const char **key, void **value)
{
    for (; *i < m->cap; (*i)++) {
        mu_map_slot *s = &m->slots[*i];
        if (s->key && s->key != DELETED) {
            *key = s->key;
            *value = s->value;
            (*i)++;
            return 1;
        }
    }
    return 0;
}
