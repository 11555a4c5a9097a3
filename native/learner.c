/* The SSM's learning thread: see learner.h. */
#include "learner.h"

#include <sched.h>

#define SPINS 20000      /* pause instructions before sleeping: tens of microseconds */

/* one turn of a spin; every 256th gives the core away, so that two threads on one
 * core (-T 2 on a one-core machine) do not spin out each other's time slices */
static inline void relax(int i)
{
    if ((i & 255) == 255)
        sched_yield();
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *learner_main(void *arg)
{
    Learner *L = arg;
    for (;;) {
        for (int i = 0; i < SPINS && !__atomic_load_n(&L->busy, __ATOMIC_ACQUIRE); i++)
            relax(i);
        pthread_mutex_lock(&L->mu);
        while (!L->job && !L->quit)
            pthread_cond_wait(&L->cv, &L->mu);
        int64_t *job = L->job;
        pthread_mutex_unlock(&L->mu);
        if (!job)
            return 0;                    /* quit, nothing left to do */
        L->learn(job);
        pthread_mutex_lock(&L->mu);
        L->job = 0;
        __atomic_store_n(&L->busy, 0, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&L->cv);
        pthread_mutex_unlock(&L->mu);
    }
}

void learner_start(Learner *L, learn_fn learn)
{
    L->learn = learn;
    L->job = 0;
    L->busy = 0;
    L->quit = 0;
    pthread_mutex_init(&L->mu, 0);
    pthread_cond_init(&L->cv, 0);
    L->started = pthread_create(&L->tid, 0, learner_main, L) == 0;
}

void learner_give(Learner *L, int64_t *ctx)
{
    if (!L->started) {
        L->learn(ctx);
        return;
    }
    pthread_mutex_lock(&L->mu);
    L->job = ctx;
    __atomic_store_n(&L->busy, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->mu);
}

void learner_wait(Learner *L)
{
    if (!L->started)
        return;
    for (int i = 0; i < SPINS && __atomic_load_n(&L->busy, __ATOMIC_ACQUIRE); i++)
        relax(i);
    pthread_mutex_lock(&L->mu);
    while (L->job)
        pthread_cond_wait(&L->cv, &L->mu);
    pthread_mutex_unlock(&L->mu);
}

void learner_stop(Learner *L)
{
    if (L->started) {
        learner_wait(L);
        pthread_mutex_lock(&L->mu);
        L->quit = 1;
        pthread_cond_broadcast(&L->cv);
        pthread_mutex_unlock(&L->mu);
        pthread_join(L->tid, 0);
    }
    pthread_mutex_destroy(&L->mu);
    pthread_cond_destroy(&L->cv);
}
