#include "config.h"
#include "zkloop.h"
#include "common.h"

#include <event2/event.h>
#include <stdlib.h>

struct mu_zkloop {
    struct event_base *base;
    zhandle_t *zh;
    struct event *io;    /* one-shot, for (fd, flags) below */
    evutil_socket_t fd;
    short flags;
    struct event *timer;
    int processing;      /* inside zookeeper_process(): defer re-arming */
};

static void on_event(evutil_socket_t fd, short what, void *arg);

mu_zkloop *mu_zkloop_new(struct event_base *base)
{
    mu_zkloop *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->base = base;
    l->fd = -1;
    l->timer = evtimer_new(base, on_event, l);
    if (!l->timer) {
        free(l);
        return NULL;
    }
    return l;
}

static void drop_io(mu_zkloop *l)
{
    if (l->io) {
        event_free(l->io);
        l->io = NULL;
    }
    l->fd = -1;
    l->flags = 0;
}

void mu_zkloop_update(mu_zkloop *l)
{
    if (!l || l->processing)
        return;
    if (!l->zh) {
        drop_io(l);
        evtimer_del(l->timer);
        return;
    }
    int fd = -1, interest = 0;
    struct timeval tv = {0, 0};
    /* While it backs off between servers this returns no fd, but the
     * timeout must still be honoured or the handle never reconnects. */
    zookeeper_interest(l->zh, &fd, &interest, &tv);
    short flags = 0;
    if (fd >= 0 && (interest & ZOOKEEPER_READ))
        flags |= EV_READ;
    if (fd >= 0 && (interest & ZOOKEEPER_WRITE))
        flags |= EV_WRITE;
    /* Re-create the fd event every time: the client may have closed its
     * socket and opened a new one under the same number, which epoll would
     * silently stop reporting. ZooKeeper traffic is light, so this is cheap. */
    drop_io(l);
    {
        if (fd >= 0 && flags) {
            l->io = event_new(l->base, fd, flags, on_event, l);
            if (l->io && event_add(l->io, NULL) == 0) {
                l->fd = fd;
                l->flags = flags;
            } else {
                drop_io(l);
            }
        }
    }
    if (tv.tv_sec < 0 || (tv.tv_sec == 0 && tv.tv_usec < 1000))
        tv = (struct timeval){0, 1000}; /* never spin the loop */
    evtimer_add(l->timer, &tv);
}

static void on_event(evutil_socket_t fd, short what, void *arg)
{
    mu_zkloop *l = arg;
    MU_UNUSED(fd);
    if (!l->zh)
        return;
    int events = 0;
    if (what & EV_READ)
        events |= ZOOKEEPER_READ;
    if (what & EV_WRITE)
        events |= ZOOKEEPER_WRITE;
    l->processing = 1;
    zookeeper_process(l->zh, events);
    l->processing = 0;
    mu_zkloop_update(l);
}

void mu_zkloop_attach(mu_zkloop *l, zhandle_t *zh)
{
    l->zh = zh;
    drop_io(l);
    if (!zh) {
        evtimer_del(l->timer);
        return;
    }
    if (!l->processing)
        mu_zkloop_update(l);
}

void mu_zkloop_free(mu_zkloop *l)
{
    if (!l)
        return;
    drop_io(l);
    event_free(l->timer);
    free(l);
}
