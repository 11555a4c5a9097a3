/* The lossless float codec's chunk encoder in C: everything
 * floatsplit.encode_split does for one chunk (choose the symbol width and the
 * channel-group model, write the model, code the symbols, split and code or
 * pack the raw bits, checksum the words) in one call that never needs the
 * Python interpreter lock. Calling split.c's kernels one by one from Python
 * took a dozen lock hand-overs per chunk, which held two threads to 1.3-1.6x.
 *
 * floatsplit.encode_split is the reference and this file follows it step by
 * step (the function names say which Python function each mirrors). Its
 * choices rest on float64 sums of log2 terms: here they are the same
 * operations in the same order, with libm's log2 (what numba calls), no
 * contraction into fused multiply-adds, and the k * log2(k) table and the
 * tunables passed in from Python, so both choose the same model and write
 * the same bytes. tests/test_kv_split_native.py compares them.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "split.h"

#define PROB_BITS 12
#define PROB_SCALE (1 << PROB_BITS)
#define LANES32_FLAG 0x80
#define SYM_MAX_BITS 11 /* exponent (<= 8) + KMAX (<= 3) */

/* Tunables, in the order floatsplit._encoder_params passes them */
typedef struct {
    int64_t kmax, groups, sample_rows, cluster_iters, min_rows, part_sample, max_channels, max_symbols;
    double group_min_gain, table_bits;
    const double *nlogn;
    int64_t nlogn_len;
} Params;

/* the encoder's slots of split.h's Scratch */
enum { B_HIST, B_SPARSE, B_GH, B_STREAM, B_TAB, B_PARTS, B_SAMPLE, B_PACKED, B_TOP, B_FREQS };

/* The payload being written; `full` once it would reach the raw size (then it does not pay) */
typedef struct {
    uint8_t *p;
    int64_t len, cap;
    int full;
} Out;

static void put(Out *o, const void *src, int64_t k)
{
    if (o->full || o->len + k > o->cap) {
        o->full = 1;
        return;
    }
    memcpy(o->p + o->len, src, (size_t)k);
    o->len += k;
}

static void put_u8(Out *o, uint8_t b) { put(o, &b, 1); }

static void put_varint(Out *o, uint64_t v)
{
    uint8_t b[10];
    int k = 0;
    while (v >= 0x80) {
        b[k++] = (uint8_t)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    b[k++] = (uint8_t)v;
    put(o, b, k);
}

/* ---------------------------------------------------------------- bit counts (as _rans) */

static double entropy_bits(const int64_t *counts, int64_t m)
{
    int64_t n = 0;
    for (int64_t s = 0; s < m; s++)
        n += counts[s];
    if (n == 0)
        return 0.0;
    double b = 0.0, ln = log2((double)n);
    for (int64_t s = 0; s < m; s++)
        if (counts[s] > 0)
            b += (double)counts[s] * (ln - log2((double)counts[s]));
    return b;
}

static int normalize_freqs(const int64_t *counts, int64_t m, uint32_t *freqs)
{
    int64_t total = 0, present = 0;
    for (int64_t s = 0; s < m; s++) {
        total += counts[s];
        present += counts[s] > 0;
    }
    if (total == 0 || present > PROB_SCALE)
        return 0;
    int64_t fsum = 0;
    for (int64_t s = 0; s < m; s++) {
        int64_t c = counts[s];
        if (c > 0) {
            int64_t f = (c * PROB_SCALE + total / 2) / total;
            if (f < 1)
                f = 1;
            freqs[s] = (uint32_t)f;
            fsum += f;
        } else {
            freqs[s] = 0;
        }
    }
    while (fsum != PROB_SCALE) {
        int64_t best = -1;
        double bestv = 0.0;
        if (fsum > PROB_SCALE) {
            for (int64_t s = 0; s < m; s++) {
                int64_t f = freqs[s];
                if (f > 1) {
                    double v = (double)counts[s] * log2((double)f / ((double)f - 1.0));
                    if (best < 0 || v < bestv) {
                        best = s;
                        bestv = v;
                    }
                }
            }
            freqs[best]--;
            fsum--;
        } else {
            for (int64_t s = 0; s < m; s++) {
                int64_t f = freqs[s];
                if (f > 0) {
                    double v = (double)counts[s] * log2(((double)f + 1.0) / (double)f);
                    if (best < 0 || v > bestv) {
                        best = s;
                        bestv = v;
                    }
                }
            }
            freqs[best]++;
            fsum++;
        }
    }
    return 1;
}

static double quantized_bits(const int64_t *counts, int64_t m, uint32_t *freqs)
{
    if (!normalize_freqs(counts, m, freqs))
        return 0.0;
    double b = 0.0;
    for (int64_t s = 0; s < m; s++)
        if (counts[s] > 0)
            b += (double)counts[s] * ((double)PROB_BITS - log2((double)freqs[s]));
    return b;
}

static double nlogn(int64_t k, const Params *P)
{
    return k < P->nlogn_len ? P->nlogn[k] : (double)k * log2((double)k);
}

static double channel_bits(const int32_t *hist, int64_t C, int64_t nsym, const Params *P)
{
    double b = 0.0;
    for (int64_t c = 0; c < C; c++) {
        int64_t tot = 0, m = 0;
        double s = 0.0;
        for (int64_t j = 0; j < nsym; j++) {
            int64_t h = hist[c * nsym + j];
            if (h) {
                tot += h;
                m++;
                s += nlogn(h, P);
            }
        }
        b += nlogn(tot, P) - s;
        if (m > 1)
            b += (double)(m - 1) * 0.7213475204444817;
    }
    return b;
}

/* ---------------------------------------------------------------- channel groups (as _rans.cluster_channels) */

typedef struct {
    double key;
    int64_t idx;
} Keyed;

static int by_key(const void *a, const void *b)
{
    const Keyed *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx; /* ties in channel order: a stable sort's */
}

/* hist: int32[C][nsym]; assign: int32[C] out; gh: int64[T][nsym] scratch.
 * Returns the order-0 bits of the grouped data, or -1.0 if out of memory. */
static double cluster_channels(const int32_t *hist, int64_t C, int64_t nsym, int64_t T, int64_t iters,
                               int32_t *assign, int64_t *gh, Scratch *x)
{
    int64_t nnz = 0;
    for (int64_t k = 0; k < C * nsym; k++)
        nnz += hist[k] != 0;
    /* one buffer: start[C+1], sym[nnz], cnt[nnz], logp[nsym*T], v[T], order[C] */
    size_t bytes = (size_t)(C + 1 + nnz) * 8 + (size_t)(nnz + nsym * T + T) * 8 + (size_t)C * sizeof(Keyed);
    uint8_t *buf = scratch_get(x, B_SPARSE, bytes);
    if (!buf)
        return -1.0;
    int64_t *start = (int64_t *)buf, *sym = start + C + 1;
    double *cnt = (double *)(sym + nnz), *logp = cnt + nnz, *v = logp + nsym * T;
    Keyed *order = (Keyed *)(v + T);
    int64_t k = 0;
    for (int64_t c = 0; c < C; c++) {
        start[c] = k;
        double s0 = 0.0, s1 = 0.0;
        for (int64_t s = 0; s < nsym; s++) {
            int64_t h = hist[c * nsym + s];
            if (h) {
                sym[k] = s;
                cnt[k] = (double)h;
                k++;
                s0 += (double)h;
                s1 += (double)(h * s);
            }
        }
        order[c].key = s0 > 0 ? s1 / s0 : 0.0;
        order[c].idx = c;
    }
    start[C] = k;
    qsort(order, (size_t)C, sizeof(Keyed), by_key);
    for (int64_t j = 0; j < C; j++)
        assign[order[j].idx] = (int32_t)((j * T) / C);
    for (int64_t it = 0; it <= iters; it++) {
        memset(gh, 0, (size_t)(T * nsym) * sizeof(int64_t));
        for (int64_t c = 0; c < C; c++)
            for (int64_t j = start[c]; j < start[c + 1]; j++)
                gh[assign[c] * nsym + sym[j]] += (int64_t)cnt[j];
        if (it == iters)
            break;
        for (int64_t g = 0; g < T; g++) {
            double tot = 0.0;
            for (int64_t s = 0; s < nsym; s++)
                tot += (double)gh[g * nsym + s];
            /* add-half smoothing so that a symbol new to a group costs finite bits */
            double den = log2(tot + 0.5 * (double)nsym);
            for (int64_t s = 0; s < nsym; s++)
                logp[s * T + g] = den - log2((double)gh[g * nsym + s] + 0.5);
        }
        int64_t moved = 0;
        for (int64_t c = 0; c < C; c++) {
            for (int64_t g = 0; g < T; g++)
                v[g] = 0.0;
            for (int64_t j = start[c]; j < start[c + 1]; j++) {
                double kc = cnt[j];
                const double *row = logp + sym[j] * T;
                for (int64_t g = 0; g < T; g++)
                    v[g] += kc * row[g];
            }
            int32_t best = assign[c];
            double bestv = 1e300;
            for (int64_t g = 0; g < T; g++)
                if (v[g] < bestv) {
                    bestv = v[g];
                    best = (int32_t)g;
                }
            if (best != assign[c]) {
                moved++;
                assign[c] = best;
            }
        }
        if (moved == 0) { /* converged: recount and stop */
            memset(gh, 0, (size_t)(T * nsym) * sizeof(int64_t));
            for (int64_t c = 0; c < C; c++)
                for (int64_t j = start[c]; j < start[c + 1]; j++)
                    gh[assign[c] * nsym + sym[j]] += (int64_t)cnt[j];
            break;
        }
    }
    double bits = 0.0;
    for (int64_t g = 0; g < T; g++)
        bits += entropy_bits(gh + g * nsym, nsym);
    return bits;
}

/* ---------------------------------------------------------------- the model (as floatsplit.choose_model) */

typedef struct {
    int64_t S, nsym, T, C; /* C: channel period of the tables (1 with one table) */
    int64_t used[256];
    uint32_t *freqs;       /* [T][nsym] */
    uint8_t *ctxmap;       /* [C] when T > 1 */
} Model;

/* Returns 0, or -1 if out of memory */
static int64_t choose_model(const void *words, int64_t n, int64_t W, int64_t E, int64_t C, const Params *P, Scratch *x,
                            Model *m)
{
    const int64_t width = W / 8;
    int64_t kmax = P->kmax < W - 1 - E ? P->kmax : W - 1 - E;
    int64_t S0 = E + kmax, R0 = W - 1 - S0;
    int64_t h0[1 << SYM_MAX_BITS], hk[1 << SYM_MAX_BITS], hbest[1 << SYM_MAX_BITS];
    memset(h0, 0, sizeof(int64_t) << S0);
    if (ssmzip_split_hist(words, n, width, R0, (1 << S0) - 1, h0) < 0)
        return -1;
    double bestc = 0.0;
    int64_t S = -1;
    for (int64_t k = 0; k <= kmax; k++) {
        int64_t s = E + k, fold = (int64_t)1 << (kmax - k), nsym = 0;
        for (int64_t i = 0; i < ((int64_t)1 << s); i++) {
            int64_t t = 0;
            for (int64_t j = 0; j < fold; j++)
                t += h0[i * fold + j];
            hk[i] = t;
            nsym += t != 0;
        }
        if (nsym > P->max_symbols)
            continue;
        double cost = entropy_bits(hk, (int64_t)1 << s) + (double)(n * (W - s)) + (double)nsym * P->table_bits;
        if (S < 0 || cost < bestc) {
            bestc = cost;
            S = s;
            memcpy(hbest, hk, sizeof(int64_t) << s);
        }
    }
    if (S < 0)
        return -1;
    int64_t nsym = 0, cu[256];
    for (int64_t i = 0; i < ((int64_t)1 << S); i++)
        if (hbest[i]) {
            m->used[nsym] = i;
            cu[nsym++] = hbest[i];
        }
    m->S = S;
    m->nsym = nsym;
    m->T = 1;
    m->C = 1;
    /* one buffer: the channel assignment int32[C], the single table, up to `groups`
     * grouped tables (uint32[nsym] each) and the channel map uint8[C] */
    uint8_t *fb = scratch_get(x, B_FREQS, (size_t)C * 4 + (size_t)((P->groups + 1) * nsym) * 4 + (size_t)C);
    if (!fb)
        return -1;
    int32_t *assign = (int32_t *)fb;
    m->freqs = (uint32_t *)(fb + (size_t)C * 4);
    uint32_t *gfreqs = m->freqs + nsym;
    m->ctxmap = (uint8_t *)(gfreqs + P->groups * nsym);
    double single = quantized_bits(cu, nsym, m->freqs);
    single += (double)nsym * P->table_bits;
    int64_t rows = C > 1 ? n / C : 0;
    if (!(C > 1 && C <= P->max_channels && n % C == 0 && rows >= P->min_rows && nsym > 1))
        return 0;
    const int64_t R = W - 1 - S, smask = ((int64_t)1 << S) - 1;
    int32_t remap[1 << SYM_MAX_BITS];
    memset(remap, 0, sizeof(int32_t) << S);
    for (int64_t i = 0; i < nsym; i++)
        remap[m->used[i]] = (int32_t)i;
    int64_t step = rows / P->sample_rows > 1 ? rows / P->sample_rows : 1;
    int64_t nrows = (rows + step - 1) / step;
    int32_t *hist = scratch_get(x, B_HIST, (size_t)(C * nsym) * sizeof(int32_t));
    if (!hist)
        return -1;
    memset(hist, 0, (size_t)(C * nsym) * sizeof(int32_t));
    ssmzip_split_hist_channels(words, nrows, step * C, C, width, R, smask, remap, nsym, hist);
    double scale = (double)rows / (double)nrows;
    /* what per-channel tables could save at most, against the cheapest grouped model's side cost */
    double bound = single - scale * channel_bits(hist, C, nsym, P);
    double side = (double)(P->groups * nsym) * P->table_bits + (double)(C * 8), gain = P->group_min_gain * single;
    if (!(bound > (side > gain ? side : gain)))
        return 0;
    int64_t T = P->groups;
    if (T >= C || T < 2)
        return 0;
    int64_t *gh = scratch_get(x, B_GH, (size_t)(T * nsym) * sizeof(int64_t));
    if (!gh)
        return -1;
    double bits = cluster_channels(hist, C, nsym, T, P->cluster_iters, assign, gh, x);
    if (bits < 0)
        return -1;
    bits = scale * bits;
    double gcost = bits + (double)(T * nsym) * P->table_bits + (double)(C * 8);
    if (!(gcost < single))
        return 0;
    memset(gh, 0, (size_t)(T * nsym) * sizeof(int64_t));
    if (step == 1) { /* the sample was the whole chunk: its channel counts add up to the groups' */
        for (int64_t c = 0; c < C; c++)
            for (int64_t s = 0; s < nsym; s++)
                gh[assign[c] * nsym + s] += hist[c * nsym + s];
    } else {
        for (int64_t c = 0; c < C; c++)
            m->ctxmap[c] = (uint8_t)assign[c];
        if (ssmzip_split_hist_groups(words, n, width, R, smask, C, m->ctxmap, remap, nsym, T, gh) < 0)
            return -1;
    }
    int64_t newid[256], kept = 0;
    double total = 0.0;
    for (int64_t g = 0; g < T; g++) {
        int64_t sum = 0;
        for (int64_t s = 0; s < nsym; s++)
            sum += gh[g * nsym + s];
        newid[g] = sum > 0 ? kept : -1;
        if (sum > 0) {
            total += quantized_bits(gh + g * nsym, nsym, gfreqs + kept * nsym);
            kept++;
        }
    }
    /* keep the grouped model only if its exact size wins */
    if (total + (double)(kept * nsym) * P->table_bits + (double)(C * 8) < single) {
        memmove(m->freqs, gfreqs, (size_t)(kept * nsym) * sizeof(uint32_t));
        for (int64_t c = 0; c < C; c++)
            m->ctxmap[c] = (uint8_t)newid[assign[c]];
        m->T = kept;
        m->C = C;
    }
    return 0;
}

/* As floatsplit._write_model */
static void write_model(Out *o, const Model *m)
{
    put_varint(o, (uint64_t)m->nsym);
    int64_t nruns = 1;
    for (int64_t i = 1; i < m->nsym; i++)
        nruns += m->used[i] != m->used[i - 1] + 1;
    put_varint(o, (uint64_t)nruns);
    int64_t prev = 0, i = 0;
    while (i < m->nsym) {
        int64_t start = m->used[i], j = i + 1;
        while (j < m->nsym && m->used[j] == m->used[j - 1] + 1)
            j++;
        put_varint(o, (uint64_t)(start - prev));
        put_varint(o, (uint64_t)(j - i));
        prev = start + (j - i);
        i = j;
    }
    if (m->T > 1) {
        put_varint(o, (uint64_t)m->C);
        put(o, m->ctxmap, m->C);
    }
    for (int64_t k = 0; k < m->T * m->nsym; k++)
        put_varint(o, m->freqs[k]);
}

/* As floatsplit._code_stream followed by writing the stream: rANS-code the
 * symbols into scratch, then put the varint word count, the padding to an
 * even offset, and the words. Returns -1 if out of memory. */
static int64_t put_stream(Out *o, const void *words, int64_t n, int64_t width, int64_t rbits, int64_t sbits,
                          const Model *m, int64_t lanes, Scratch *x)
{
    static const uint8_t zero_map[1] = {0};
    int64_t C = m->T > 1 ? m->C : 1, smask = ((int64_t)1 << sbits) - 1;
    uint64_t *tab = scratch_get(x, B_TAB, (size_t)(m->T * (smask + 1) + ssmzip_split_period(C) / 2 + 1) * 8);
    int64_t outlen = n + 2 * lanes + 1;
    uint16_t *st = scratch_get(x, B_STREAM, (size_t)outlen * 2);
    if (!tab || !st)
        return -1;
    int64_t nw = ssmzip_split_encode(words, n, width, rbits, smask, C, m->T > 1 ? m->ctxmap : zero_map, m->freqs,
                                     m->used, m->T, m->nsym, lanes, tab, st, outlen);
    if (nw < 0)
        return -1;
    put_varint(o, (uint64_t)nw);
    if (o->len & 1)
        put_u8(o, 0);
    put(o, st + outlen - nw, nw * 2);
    return 0;
}

/* ---------------------------------------------------------------- raw-bit parts */

/* As floatsplit._sample_says_raw */
static int sample_says_raw(const int64_t *h, int64_t m, int64_t nbits, const Params *P)
{
    int64_t nz = 0;
    for (int s = 0; s < 256; s++)
        nz += h[s] != 0;
    return entropy_bits(h, 256) + (double)nz * P->table_bits > 0.97 * (double)m * (double)nbits;
}

/* As floatsplit._raw_part, written */
static int64_t put_raw_part(Out *o, const uint8_t *vals, int64_t n, int64_t nbits, Scratch *x)
{
    put_u8(o, 0);
    if (nbits == 8) {
        put(o, vals, n);
        return 0;
    }
    int64_t raw = (n * nbits + 7) / 8;
    uint8_t *packed = scratch_get(x, B_PACKED, (size_t)raw + 8);
    if (!packed)
        return -1;
    ssmzip_split_pack_bits(vals, n, nbits, packed);
    put(o, packed, raw);
    return 0;
}

/* As floatsplit._encode_part, written */
static int64_t put_part(Out *o, const uint8_t *vals, int64_t n, int64_t nbits, int64_t lanes, const Params *P, Scratch *x)
{
    int64_t raw = nbits == 8 ? n : (n * nbits + 7) / 8;
    int64_t m = n < P->part_sample ? n : P->part_sample;
    int64_t h[256] = {0};
    ssmzip_split_hist(vals, m, 1, 0, 255, h);
    if (m < n) {
        if (sample_says_raw(h, m, nbits, P))
            return put_raw_part(o, vals, n, nbits, x);
        ssmzip_split_hist(vals + m, n - m, 1, 0, 255, h);
    }
    Model pm;
    int64_t cu[256];
    pm.nsym = 0;
    for (int s = 0; s < 256; s++)
        if (h[s]) {
            pm.used[pm.nsym] = s;
            cu[pm.nsym++] = h[s];
        }
    double est = entropy_bits(h, 256) + (double)pm.nsym * P->table_bits + (double)(64 * 8);
    if (est < 0.98 * 8 * (double)raw) {
        uint32_t f[256];
        double bits = quantized_bits(cu, pm.nsym, f);
        if (bits + (double)pm.nsym * P->table_bits + (double)(64 * 8) < 0.98 * 8 * (double)raw) {
            pm.T = 1;
            pm.C = 1;
            pm.freqs = f;
            pm.ctxmap = 0;
            put_u8(o, 1);
            write_model(o, &pm);
            return put_stream(o, vals, n, 1, 0, 8, &pm, lanes, x);
        }
    }
    return put_raw_part(o, vals, n, nbits, x);
}

/* As floatsplit._raw_top: the packed top bits straight from the words, if a
 * sample says they are incompressible. Returns their size, 0 if not taken,
 * -1 if out of memory. */
static int64_t raw_top(const void *words, int64_t n, int64_t width, int64_t R, int64_t nbytes, int64_t mbits,
                       const Params *P, Scratch *x, uint8_t **top)
{
    int64_t m = P->part_sample;
    if (!mbits || n <= m)
        return 0;
    uint8_t *sample = scratch_get(x, B_SAMPLE, (size_t)((nbytes + 1) * m));
    if (!sample)
        return -1;
    ssmzip_split_rest(words, m, width, R, nbytes, mbits, 1, sample);
    int64_t h[256] = {0};
    ssmzip_split_hist(sample + nbytes * m, m, 1, 0, 255, h);
    if (!sample_says_raw(h, m, mbits, P))
        return 0;
    int64_t nb = (n * mbits + 7) / 8;
    *top = scratch_get(x, B_TOP, (size_t)nb + 8);
    if (!*top)
        return -1;
    ssmzip_split_pack_top(words, n, width, R, nbytes, mbits, *top);
    return nb;
}

/* ---------------------------------------------------------------- the chunk (as floatsplit.encode_split) */

static int64_t encode_chunk(const void *words, int64_t n, int64_t W, int64_t E, int64_t C, int64_t lanes,
                            const Params *P, Scratch *x, uint8_t *out, int64_t cap)
{
    const int64_t width = W / 8, rawsize = n * width;
    Out o = {out, 0, cap < rawsize ? cap : rawsize, 0};
    Model m;
    if (choose_model(words, n, W, E, C, P, x, &m) < 0)
        return -2;
    const int64_t R = W - 1 - m.S, nbytes = (R + 1) / 8, mbits = (R + 1) % 8;
    put_u8(&o, (uint8_t)(m.S | (lanes == 32 ? LANES32_FLAG : 0)));
    put_u8(&o, (uint8_t)m.T);
    write_model(&o, &m);
    if (put_stream(&o, words, n, width, R, m.S, &m, lanes, x) < 0)
        return -2;
    int64_t nparts = nbytes + (mbits ? 1 : 0);
    if (nparts && !o.full) {
        uint8_t *top = 0;
        int64_t ntop = raw_top(words, n, width, R, nbytes, mbits, P, x, &top);
        if (ntop < 0)
            return -2;
        uint8_t *parts = scratch_get(x, B_PARTS, (size_t)((ntop ? nbytes : nparts) * n));
        if (!parts)
            return -2;
        ssmzip_split_rest(words, n, width, R, nbytes, mbits, ntop == 0, parts);
        for (int64_t j = 0; j < nparts && !o.full; j++) {
            if (j == nbytes && ntop) {
                put_u8(&o, 0);
                put(&o, top, ntop);
            } else if (put_part(&o, parts + j * n, n, j < nbytes ? 8 : mbits, lanes, P, x) < 0) {
                return -2;
            }
        }
    }
    return o.full || o.len >= rawsize ? 0 : o.len;
}

static int params_ok(const Params *P, int64_t W, int64_t E, int64_t lanes, int64_t C)
{
    return (W == 8 || W == 16 || W == 32) && E >= 1 && E <= 8 && E < W - 1 && (lanes == 8 || lanes == 32) &&
           C >= 1 && P->kmax >= 0 && P->kmax <= SYM_MAX_BITS - 8 && P->groups >= 1 && P->groups <= 64 &&
           P->sample_rows >= 1 && P->cluster_iters >= 0 && P->part_sample >= 1 && P->max_symbols <= 256 &&
           P->max_channels >= 1;
}

static Params params_from(const int64_t *ip, const double *fp, const double *nlogn, int64_t nlogn_len)
{
    Params P = {ip[0], ip[1], ip[2], ip[3], ip[4], ip[5], ip[6], ip[7], fp[0], fp[1], nlogn, nlogn_len};
    return P;
}

/* ---------------------------------------------------------------- many chunks, C threads */

typedef struct {
    int64_t count, W, E, lanes;
    const void *const *words;
    const int64_t *ns, *Cs, *caps;
    uint8_t *const *outs;
    int64_t *lens;
    uint64_t *hashes;
    const Params *P;
    int64_t next; /* the next job (ssmzip_split_next_job) */
} Jobs;

static void *jobs_worker(void *arg)
{
    Jobs *b = (Jobs *)arg;
    Scratch x = {{0}, {0}};
    for (int64_t i; (i = ssmzip_split_next_job(&b->next)) < b->count;) {
        b->hashes[i] = ssmzip_xxh64(b->words[i], b->ns[i] * (b->W / 8));
        b->lens[i] = b->ns[i] < 1 || b->Cs[i] < 1 ? -1
                     : encode_chunk(b->words[i], b->ns[i], b->W, b->E, b->Cs[i], b->lanes, b->P, &x, b->outs[i],
                                    b->caps[i]);
    }
    scratch_free(&x);
    return 0;
}

/* `count` chunks of one dtype (W bits, E exponent bits) on `threads` threads
 * (the caller's among them; at most 64), jobs taken in the given order.
 * Chunk i: ns[i] words at words[i], channel period Cs[i], payload into outs[i]
 * (caps[i] bytes, at least the raw size to be useful). ip, fp: the tunables
 * (floatsplit._INT_PARAMS, _FLOAT_PARAMS); nlogn: _rans.NLOGN. hashes[i]:
 * XXH64 of the words; lens[i]: the payload's length, 0 if it would not be
 * smaller than the raw words (the caller stores them raw), -1 for a bad
 * argument, -2 if out of memory. Returns -1 for bad tunables (nothing done),
 * else 0. */
int64_t ssmzip_split_encode_many(int64_t count, const void *const *words, const int64_t *ns, int64_t W, int64_t E,
                                 const int64_t *Cs, int64_t lanes, const int64_t *ip, const double *fp,
                                 const double *nlogn, int64_t nlogn_len, uint8_t *const *outs, const int64_t *caps,
                                 int64_t *lens, uint64_t *hashes, int64_t threads)
{
    Params P = params_from(ip, fp, nlogn, nlogn_len);
    if (!params_ok(&P, W, E, lanes, 1))
        return -1;
    Jobs b = {count, W, E, lanes, words, ns, Cs, caps, outs, lens, hashes, &P, 0};
    ssmzip_split_parallel(jobs_worker, &b, threads < count ? threads : count);
    return 0;
}
