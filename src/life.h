/*
 * life: the client's one reentrancy mechanism. mu_life is embedded in
 * struct mu_client (client.c); the call layer is handed a pointer to it
 * (mu_calls_deps.life).
 *
 * User code (a call's callback, a watcher, the endpoints visitor, the log
 * sink) runs between mu_life_enter() and mu_life_leave(). mu_client_free()
 * from inside user code cannot free memory that frames below it still use,
 * so it only changes the state; the outermost mu_life_leave() then
 * destroys the client through the function it was handed. hiredis does the
 * same with one flag and one wrapper.
 *
 * The log sink is the one kind of user code that runs in the middle of the
 * client's own work (inside curl or ZooKeeper processing), so nothing may be
 * torn down from there: a free asked from the sink is carried out by the
 * client's event on the next loop turn (MU_LIFE_FREE_ASKED).
 */
#ifndef MU_LIFE_H
#define MU_LIFE_H

typedef enum mu_life_state {
    MU_LIFE_LIVE = 0,
    MU_LIFE_FREE_ASKED, /* mu_client_free() from the log sink: done on the next turn */
    MU_LIFE_DYING,      /* calls ended; memory released at the outermost leave */
    MU_LIFE_GONE,       /* being destroyed now: no new work, no second destroy */
} mu_life_state;

typedef struct mu_life {
    mu_life_state state;
    int depth;   /* frames of user code (or of ours around it) on the stack */
    int sink;    /* of which, inside the log sink */
    void (*destroy)(void *owner);
    void *owner;
} mu_life;

static inline void mu_life_enter(mu_life *l, int sink)
{
    l->depth++;
    l->sink += sink != 0;
}

/* Returns 1 if the owner was destroyed: the caller must not touch it, nor
 * anything it owns, again. */
static inline int mu_life_leave(mu_life *l, int sink)
{
    l->depth--;
    l->sink -= sink != 0;
    if (l->depth == 0 && l->state == MU_LIFE_DYING) {
        l->destroy(l->owner);
        return 1;
    }
    return 0;
}

/* User code is on the stack. */
static inline int mu_life_busy(const mu_life *l)
{
    return l->depth > 0;
}

#endif
