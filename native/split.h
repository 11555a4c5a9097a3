/* The kernels of native/split.c that native/split_encode.c builds on (their
 * comments in split.c say what each computes). */
#ifndef SSMZIP_SPLIT_H
#define SSMZIP_SPLIT_H
#include <stdint.h>
#include <stdlib.h>

void ssmzip_split_rest(const void *words, int64_t n, int64_t width, int64_t rbits, int64_t nbytes, int64_t mbits,
                       int64_t top_too, uint8_t *parts);
int64_t ssmzip_split_pack_bits(const uint8_t *vals, int64_t n, int64_t mbits, uint8_t *out);
int64_t ssmzip_split_pack_top(const void *words, int64_t n, int64_t width, int64_t rbits, int64_t nbytes,
                              int64_t mbits, uint8_t *out);
int64_t ssmzip_split_hist(const void *words, int64_t n, int64_t width, int64_t rbits, int64_t smask, int64_t *hist);
void ssmzip_split_hist_channels(const void *words, int64_t nrows, int64_t stride, int64_t C, int64_t width,
                                int64_t rbits, int64_t smask, const int32_t *remap, int64_t nsym, int32_t *hist);
int64_t ssmzip_split_hist_groups(const void *words, int64_t n, int64_t width, int64_t rbits, int64_t smask,
                                 int64_t C, const uint8_t *ctxmap, const int32_t *remap, int64_t nsym, int64_t T,
                                 int64_t *hist);
int64_t ssmzip_split_encode(const void *words, int64_t n, int64_t width, int64_t rbits, int64_t smask, int64_t C,
                            const uint8_t *ctxmap, const uint32_t *freqs, const int64_t *used, int64_t ntab,
                            int64_t nsym, int64_t lanes, uint64_t *scratch, uint16_t *out, int64_t outlen);
uint64_t ssmzip_xxh64(const uint8_t *data, int64_t n);

/* worker(arg) on `threads` threads, the caller's among them (at most 64; one
 * without pthreads); workers take job numbers from ssmzip_split_next_job */
void ssmzip_split_parallel(void *(*worker)(void *), void *arg, int64_t threads);
int64_t ssmzip_split_next_job(int64_t *next);

/* lcm(C, 32): element positions covered by the coders' table map */
static inline int64_t ssmzip_split_period(int64_t C)
{
    int64_t g = C, b = 32;
    while (b) {
        int64_t t = g % b;
        g = b;
        b = t;
    }
    return C * 32 / g;
}

/* Per-thread buffers, grown as needed and reused from chunk to chunk: a fresh
 * large allocation per chunk cost page faults every time, and its unmapping
 * interrupted the other threads (TLB shootdowns) */
#define SCRATCH_SLOTS 12
typedef struct {
    void *p[SCRATCH_SLOTS];
    size_t cap[SCRATCH_SLOTS];
} Scratch;

/* slot k with room for `bytes` (contents undefined), or 0 if out of memory */
static inline void *scratch_get(Scratch *x, int k, size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    if (x->cap[k] < bytes) {
        free(x->p[k]);
        x->p[k] = malloc(bytes + (bytes >> 3));
        x->cap[k] = x->p[k] ? bytes + (bytes >> 3) : 0;
    }
    return x->p[k];
}

static inline void scratch_free(Scratch *x)
{
    for (int k = 0; k < SCRATCH_SLOTS; k++)
        free(x->p[k]);
}

#endif
