/* A second thread on which a lagged SSM learns from one chunk while the coding
 * kernel (cm.c) codes the next one (ssmzip/engine/ssm.py, "the lagged SSM").
 *
 * One job at a time: learner_give hands it a chunk's context, learner_wait
 * returns once that job is done. Both sides spin a little before they sleep:
 * a job takes a few hundred microseconds, about as long as coding a chunk, so
 * waking from a sleep on every chunk would cost more than the wait.
 * If the thread cannot be started, learner_give learns in the caller's thread:
 * the same result, later. */
#ifndef SSMZIP_LEARNER_H
#define SSMZIP_LEARNER_H

#include <pthread.h>
#include <stdint.h>

typedef void (*learn_fn)(int64_t *ctx);

typedef struct {
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    learn_fn learn;
    int64_t *job;        /* the chunk to learn from; 0: none (under mu) */
    int busy;            /* a job is given and not done (atomic) */
    int quit;            /* under mu */
    int started;         /* the thread runs */
} Learner;

void learner_start(Learner *L, learn_fn learn);
void learner_give(Learner *L, int64_t *ctx);
void learner_wait(Learner *L);
void learner_stop(Learner *L);

#endif
