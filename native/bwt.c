/* Level 1 in C: the Burrows-Wheeler transform of a block and the small
 * context-mixing model that codes it, bit for bit the same as
 * ssmzip/engine/bwt.py (suffix array, forward and inverse transform) and
 * ssmzip/engine/bwt_coder.py (_code, with coder.py's arithmetic coder).
 *
 * Those two modules are the reference (read their docstrings for the why);
 * this file and they must change together. The transform is unique (any
 * correct suffix sorter gives the same bytes), and the coder is all integer
 * arithmetic whose ranges are bounded there, so both backends write the same
 * bytes on every CPU.
 *
 * The caller (Python, through ctypes) owns the input, the output and the
 * squash/stretch tables (counters.SQUASH, counters.STRETCH); the scratch
 * arrays are malloc'ed here and freed before returning. Nothing is kept
 * between calls. Block sizes are below 2^30, so int32 indices suffice.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define M32 0xFFFFFFFFll
#define ERR_CAP (-1)
#define ERR_MEM (-2)

/* ------------------------------------------------------------------------ */
/* Suffix array by induced sorting (SA-IS), as bwt.py: same steps, same names. */

enum { SUF_L = 0, SUF_S = 1 };     /* suffix types: larger / smaller than the suffix after it */

static void classify(const int32_t *s, int32_t n, uint8_t *t)
{
    t[n - 1] = SUF_S;
    for (int32_t i = n - 2; i >= 0; i--)
        t[i] = (s[i] < s[i + 1] || (s[i] == s[i + 1] && t[i + 1] == SUF_S)) ? SUF_S : SUF_L;
}

static inline int is_lms(const uint8_t *t, int32_t i)
{
    return i > 0 && t[i] == SUF_S && t[i - 1] == SUF_L;
}

/* Start (ends == 0) or end of each symbol's bucket in the suffix array. */
static void bucket_edges(const int32_t *s, int32_t n, int32_t k, int ends, int32_t *edge)
{
    memset(edge, 0, (size_t)k * sizeof *edge);
    for (int32_t i = 0; i < n; i++)
        edge[s[i]]++;
    int32_t total = 0;
    for (int32_t c = 0; c < k; c++) {
        int32_t cnt = edge[c];
        total += cnt;
        edge[c] = ends ? total : total - cnt;
    }
}

/* From the LMS suffixes in place, sort the L-type suffixes (left to right),
 * then the S-type ones (right to left). edge: k scratch entries. */
static void induce(const int32_t *s, int32_t n, int32_t k, const uint8_t *t, int32_t *sa, int32_t *edge)
{
    bucket_edges(s, n, k, 0, edge);
    for (int32_t i = 0; i < n; i++) {
        int32_t j = sa[i] - 1;
        if (j >= 0 && t[j] == SUF_L)
            sa[edge[s[j]]++] = j;
    }
    bucket_edges(s, n, k, 1, edge);
    for (int32_t i = n - 1; i >= 0; i--) {
        int32_t j = sa[i] - 1;
        if (j >= 0 && t[j] == SUF_S)
            sa[--edge[s[j]]] = j;
    }
}

/* The string ends in a unique smallest symbol, so this stops before the end. */
static int lms_substrings_equal(const int32_t *s, const uint8_t *t, int32_t a, int32_t b)
{
    for (int32_t d = 0;; d++) {
        if (s[a + d] != s[b + d] || t[a + d] != t[b + d])
            return 0;
        if (d > 0 && (is_lms(t, a + d) || is_lms(t, b + d)))
            return is_lms(t, a + d) && is_lms(t, b + d);
    }
}

/* Suffix array of s (n symbols < k, ending in a unique smallest symbol) into sa
 * (n entries). Returns 0, or ERR_MEM. Each level is at most half the one above. */
static int sais(const int32_t *s, int32_t n, int32_t k, int32_t *sa)
{
    if (n == 1) {
        sa[0] = 0;
        return 0;
    }
    int rc = ERR_MEM;
    uint8_t *t = malloc((size_t)n);
    int32_t *edge = malloc((size_t)k * sizeof *edge);
    int32_t *reduced = NULL, *reduced_sa = NULL;
    if (!t || !edge)
        goto done;

    /* reduce: sort the LMS substrings and name them (bwt.py _reduce) */
    classify(s, n, t);
    for (int32_t i = 0; i < n; i++)
        sa[i] = -1;
    bucket_edges(s, n, k, 1, edge);
    for (int32_t i = n - 1; i > 0; i--)
        if (is_lms(t, i))
            sa[--edge[s[i]]] = i;
    induce(s, n, k, t, sa, edge);
    int32_t m = 0;                              /* sorted LMS positions to the front */
    for (int32_t i = 0; i < n; i++)
        if (is_lms(t, sa[i]))
            sa[m++] = sa[i];
    for (int32_t i = m; i < n; i++)
        sa[i] = -1;
    int32_t names = 0, prev = -1;
    for (int32_t i = 0; i < m; i++) {           /* name at sa[m + pos / 2]: LMS positions are >= 2 apart */
        int32_t pos = sa[i];
        if (prev < 0 || !lms_substrings_equal(s, t, pos, prev)) {
            names++;
            prev = pos;
        }
        sa[m + (pos >> 1)] = names - 1;
    }
    reduced = malloc((size_t)m * sizeof *reduced);
    reduced_sa = malloc((size_t)m * sizeof *reduced_sa);
    if (!reduced || !reduced_sa)
        goto done;
    for (int32_t i = n - 1, j = m; i >= m; i--)
        if (sa[i] >= 0)
            reduced[--j] = sa[i];

    /* the order of the LMS suffixes: recurse unless the names are already unique */
    if (names < m) {
        free(edge);                             /* not needed while the level below runs */
        edge = NULL;
        if (sais(reduced, m, names, reduced_sa) != 0)
            goto done;
        edge = malloc((size_t)k * sizeof *edge);
        if (!edge)
            goto done;
    } else {
        for (int32_t i = 0; i < m; i++)
            reduced_sa[reduced[i]] = i;
    }

    /* expand: the LMS positions in sorted order, then induce the rest (bwt.py _expand) */
    int32_t *lms = reduced;                     /* reused: the names are done with */
    for (int32_t i = 1, j = 0; i < n; i++)
        if (is_lms(t, i))
            lms[j++] = i;
    for (int32_t i = 0; i < n; i++)
        sa[i] = -1;
    bucket_edges(s, n, k, 1, edge);
    for (int32_t i = m - 1; i >= 0; i--) {
        int32_t p = lms[reduced_sa[i]];
        sa[--edge[s[p]]] = p;
    }
    induce(s, n, k, t, sa, edge);
    rc = 0;
done:
    free(t);
    free(edge);
    free(reduced);
    free(reduced_sa);
    return rc;
}

/* Forward transform (bwt.py bwt_forward): the n bytes of every row but the
 * sentinel's, in row order, and that row's index (1..n). n >= 1. */
static int bwt_forward(const uint8_t *data, int32_t n, uint8_t *last, int64_t *primary)
{
    int32_t *s = malloc(((size_t)n + 1) * sizeof *s);
    int32_t *sa = malloc(((size_t)n + 1) * sizeof *sa);
    if (!s || !sa) {
        free(s);
        free(sa);
        return ERR_MEM;
    }
    for (int32_t i = 0; i < n; i++)             /* bytes 1..256, the sentinel 0 */
        s[i] = (int32_t)data[i] + 1;
    s[n] = 0;
    int rc = sais(s, n + 1, 257, sa);
    free(s);
    if (rc != 0) {
        free(sa);
        return rc;
    }
    int32_t j = 0;
    for (int32_t r = 0; r <= n; r++) {
        if (sa[r] == 0)
            *primary = r;
        else                                    /* row 0 (sa = n) gives data[n - 1] */
            last[j++] = data[sa[r] - 1];
    }
    free(sa);
    return 0;
}

/* Inverse transform (bwt.py _bwt_inverse). primary in 1..n; a corrupt
 * transform gives garbage, never an access out of bounds. */
static int bwt_inverse(const uint8_t *last, int32_t n, int32_t primary, uint8_t *out)
{
    int32_t *nxt = malloc(((size_t)n + 1) * sizeof *nxt);   /* LF mapping over the n + 1 rows */
    if (!nxt)
        return ERR_MEM;
    int64_t first[257] = {0};                   /* first row of each byte's bucket (row 0: the sentinel) */
    for (int32_t i = 0; i < n; i++)
        first[last[i] + 1]++;
    first[0] = 1;
    for (int c = 1; c < 257; c++)
        first[c] += first[c - 1];
    int64_t seen[256];
    memcpy(seen, first, sizeof seen);
    for (int32_t r = 0; r <= n; r++) {
        if (r == primary) {
            nxt[r] = 0;
            continue;
        }
        int c = r > primary ? last[r - 1] : last[r];
        nxt[r] = (int32_t)seen[c]++;
    }
    int32_t r = 0;
    for (int32_t i = n - 1; i >= 0; i--) {      /* row 0 ends the block: walk it backwards */
        if (r == primary)                       /* only in a corrupt transform */
            out[i] = 0;
        else
            out[i] = r > primary ? last[r - 1] : last[r];
        r = nxt[r];
    }
    free(nxt);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The coder: coder.py, on int64 registers as numba keeps them. */

static inline int64_t split(int64_t x1, int64_t x2, int64_t p)
{
    int64_t r = x2 - x1;
    return x1 + (r >> 12) * p + (((r & 0xFFF) * p) >> 12);
}

static inline uint8_t next_byte(const uint8_t *src, int64_t len, int64_t ip)
{
    return ip < len ? src[ip] : 0xFF;           /* past the end: 0xFF, so a one-byte flush suffices */
}

/* ------------------------------------------------------------------------ */
/* The model: bwt_coder.py _code. Constants are its module constants. */

#define N_INPUTS 5
#define FLAG_INPUTS 4
#define RUN_LENGTHS 16
#define HISTORY_BITS 12
#define TREE_SETS 4
#define RATE_O0 2
#define RATE_O1_FAST 4
#define RATE_O1_SLOW 7
#define RATE_RUN 7
#define RATE_FLAG 5
#define MIXER_RATE 3
#define WEIGHT_INIT (1 << 14)
#define WEIGHT_LIMIT (1 << 22)
#define RUN_INIT 60000
#define ENCODE 0
#define DECODE 1

/* The coder's registers and stream (coder.py's, on int64 as numba keeps them). */
typedef struct {
    int64_t x1, x2, x, ip, op, io_len;
    uint8_t *out;
    const uint8_t *src;
} Coder;

/* Code one binary decision with 12-bit probability p of a 1: encode `bit`, or
 * decode and return it (coder.py encode_bit / decode_bit). */
static inline int64_t code_bit(Coder *k, int mode, int64_t bit, int64_t p)
{
    int64_t xmid = split(k->x1, k->x2, p);
    if (mode == ENCODE) {
        if (bit)
            k->x2 = xmid;
        else
            k->x1 = xmid + 1;
        while (((k->x1 ^ k->x2) & 0xFF000000) == 0) {
            k->out[k->op++] = (uint8_t)(k->x2 >> 24);
            k->x1 = (k->x1 << 8) & M32;
            k->x2 = ((k->x2 << 8) & M32) | 0xFF;
        }
        return bit;
    }
    if (k->x <= xmid) {
        bit = 1;
        k->x2 = xmid;
    } else {
        bit = 0;
        k->x1 = xmid + 1;
    }
    while (((k->x1 ^ k->x2) & 0xFF000000) == 0) {
        k->x1 = (k->x1 << 8) & M32;
        k->x2 = ((k->x2 << 8) & M32) | 0xFF;
        k->x = ((k->x << 8) & M32) | next_byte(k->src, k->io_len, k->ip);
        k->ip++;
    }
    return bit;
}

/* bwt_coder.py _mix: the 12-bit probability of weight set ws over inputs st. */
static inline int64_t mix(const int32_t *st, const int32_t *ws, int n_in, const int32_t *squash)
{
    int64_t dot = 0;
    for (int j = 0; j < n_in; j++)
        dot += (int64_t)st[j] * ws[j];
    int64_t d = dot >> 16;                      /* arithmetic shift, as numba's */
    d = d < -2047 ? -2047 : (d > 2047 ? 2047 : d);
    return squash[d + 2047];
}

/* bwt_coder.py _learn. */
static inline void learn(const int32_t *st, int32_t *ws, int n_in, int64_t bit, int64_t p)
{
    int64_t err = ((bit << 12) - p) * MIXER_RATE;
    for (int j = 0; j < n_in; j++) {
        int64_t v = ws[j] + ((st[j] * err) >> 13);
        ws[j] = (int32_t)(v < -WEIGHT_LIMIT ? -WEIGHT_LIMIT : (v > WEIGHT_LIMIT ? WEIGHT_LIMIT : v));
    }
}

static inline void adapt(int32_t *t, int64_t bit, int rate)
{
    *t += (int32_t)(((bit << 16) - *t) >> rate);
}

/* Encode last[0..n) into out (io_len bytes; returns the bytes written, or
 * ERR_CAP when io_len is too small) or decode into last from src (io_len
 * bytes; returns 0). ERR_MEM: no memory. */
static int64_t code(int mode, uint8_t *last, int64_t n, uint8_t *out, const uint8_t *src,
                    int64_t io_len, const int32_t *squash, const int32_t *stretch)
{
    int32_t *f_byte = malloc(256 * RUN_LENGTHS * sizeof *f_byte);
    int32_t *f_hist = malloc((1 << HISTORY_BITS) * sizeof *f_hist);
    int32_t *o1_fast = malloc(65536 * sizeof *o1_fast);
    int32_t *o1_slow = malloc(65536 * sizeof *o1_slow);
    int32_t *w = malloc(256 * TREE_SETS * N_INPUTS * sizeof *w);
    int64_t result = ERR_MEM;
    if (!f_byte || !f_hist || !o1_fast || !o1_slow || !w)
        goto done;
    int32_t f_len[RUN_LENGTHS], fw[RUN_LENGTHS * FLAG_INPUTS], o0[256], run_p[RUN_LENGTHS];
    for (int i = 0; i < RUN_LENGTHS; i++) {
        f_len[i] = 32768;
        run_p[i] = RUN_INIT;
    }
    for (int i = 0; i < RUN_LENGTHS * FLAG_INPUTS; i++)
        fw[i] = WEIGHT_INIT;
    for (int i = 0; i < 256 * RUN_LENGTHS; i++)
        f_byte[i] = 32768;
    for (int i = 0; i < (1 << HISTORY_BITS); i++)
        f_hist[i] = 32768;
    for (int i = 0; i < 256; i++)
        o0[i] = 32768;
    for (int i = 0; i < 65536; i++)
        o1_fast[i] = o1_slow[i] = 32768;
    for (int i = 0; i < 256 * TREE_SETS * N_INPUTS; i++)
        w[i] = WEIGHT_INIT;
    int32_t fst[FLAG_INPUTS] = {0, 0, 0, 256};  /* fst[3], st[4]: the biases */
    int32_t st[N_INPUTS] = {0, 0, 0, 0, 256};

    Coder k = {0, M32, 0, 0, 0, io_len, out, src};
    if (mode == DECODE) {
        for (int64_t i = 0; i < 4; i++)
            k.x = (k.x << 8) | next_byte(src, io_len, i);
        k.ip = 4;
    }
    int64_t cap = io_len - 16;                  /* room for one byte's output (<= 12 bytes) and the flush */
    int64_t c1 = 0;                             /* previous byte of the transform */
    int64_t before_run = 0;                     /* the byte before the current run of c1 */
    int64_t run = 0;                            /* how many bytes before c1 equal it */
    int64_t hist = 0;                           /* the last 16 flags, newest in bit 0 */
    for (int64_t i = 0; i < n; i++) {
        if (mode == ENCODE && k.op > cap) {
            result = ERR_CAP;
            goto done;
        }
        int64_t c = mode == ENCODE ? last[i] : 0;
        int64_t rl = run < RUN_LENGTHS - 1 ? run : RUN_LENGTHS - 1;
        int64_t kb = c1 * RUN_LENGTHS + rl;
        int64_t kh = hist & ((1 << HISTORY_BITS) - 1);
        fst[0] = stretch[f_len[rl] >> 4];
        fst[1] = stretch[f_byte[kb] >> 4];
        fst[2] = stretch[f_hist[kh] >> 4];
        int32_t *fws = fw + rl * FLAG_INPUTS;
        int64_t p = mix(fst, fws, FLAG_INPUTS, squash);
        int64_t repeat = code_bit(&k, mode, c == c1, p);
        learn(fst, fws, FLAG_INPUTS, repeat, p);
        adapt(&f_len[rl], repeat, RATE_FLAG);
        adapt(&f_byte[kb], repeat, RATE_FLAG);
        adapt(&f_hist[kh], repeat, RATE_FLAG);
        hist = ((hist << 1) | repeat) & 0xFFFF;
        if (repeat) {
            if (mode == DECODE)
                last[i] = (uint8_t)c1;
            run++;
            continue;
        }
        int64_t node = 1;
        int64_t row1 = c1 << 8;
        int64_t wsel = (hist >> 1) & (TREE_SETS - 1);
        for (int b = 7; b >= 0; b--) {
            int64_t k1 = row1 | node;
            st[0] = stretch[o0[node] >> 4];
            st[1] = stretch[o1_fast[k1] >> 4];
            st[2] = stretch[o1_slow[k1] >> 4];
            int on_run = ((before_run | 256) >> (b + 1)) == node;   /* the partial byte is still on it */
            int64_t expect = (before_run >> b) & 1;
            if (on_run) {
                int32_t sv = stretch[run_p[rl] >> 4];
                st[3] = expect ? sv : -sv;
            } else {
                st[3] = 0;
            }
            int32_t *ws = w + (node * TREE_SETS + wsel) * N_INPUTS;
            p = mix(st, ws, N_INPUTS, squash);
            int64_t bit = code_bit(&k, mode, (c >> b) & 1, p);
            learn(st, ws, N_INPUTS, bit, p);
            adapt(&o0[node], bit, RATE_O0);
            adapt(&o1_fast[k1], bit, RATE_O1_FAST);
            adapt(&o1_slow[k1], bit, RATE_O1_SLOW);
            if (on_run)
                adapt(&run_p[rl], bit == expect, RATE_RUN);
            node = (node << 1) | bit;
        }
        c = node & 255;
        if (mode == DECODE)
            last[i] = (uint8_t)c;
        run = 0;                                /* (a corrupt stream may decode c == c1 here: no matter) */
        before_run = c1;
        c1 = c;
    }
    if (mode == ENCODE && n)
        out[k.op++] = (uint8_t)(k.x1 >> 24);     /* coder.py encode_flush */
    result = k.op;
done:
    free(f_byte);
    free(f_hist);
    free(o1_fast);
    free(o1_slow);
    free(w);
    return result;
}

/* ------------------------------------------------------------------------ */
/* Entry points (called through ctypes). */

/* Encode n bytes: BWT then code. Writes the coded transform (not the 4-byte
 * primary) to out and the primary row to *primary. Returns the bytes written,
 * -1 if cap is too small (bwt_coder.py's rule: give up when op > cap - 16 at
 * the start of a byte; retry with 12 * n + 64), -2 if memory runs out.
 * n == 0: returns 0, *primary = 0. */
int64_t ssmzip_bwt_encode(const uint8_t *data, int64_t n, uint8_t *out, int64_t cap,
                          int64_t *primary, const int32_t *squash, const int32_t *stretch)
{
    *primary = 0;
    if (n <= 0)
        return 0;
    uint8_t *last = malloc((size_t)n);
    if (!last)
        return ERR_MEM;
    int64_t rc = bwt_forward(data, (int32_t)n, last, primary);
    if (rc == 0)
        rc = code(ENCODE, last, n, out, NULL, cap, squash, stretch);
    free(last);
    return rc;
}

/* Decode n bytes from src (src_len bytes: the coded transform, without the
 * primary) and invert the transform into out. primary is clamped to 1..n by
 * the caller (and again here, which changes nothing then). Returns 0, or -2 if
 * memory runs out. Any src gives n bytes without a crash. */
int64_t ssmzip_bwt_decode(const uint8_t *src, int64_t src_len, int64_t primary, uint8_t *out,
                          int64_t n, const int32_t *squash, const int32_t *stretch)
{
    if (n <= 0)
        return 0;
    if (src_len < 0)
        src_len = 0;
    primary = primary < 1 ? 1 : (primary > n ? n : primary);
    uint8_t *last = malloc((size_t)n);
    if (!last)
        return ERR_MEM;
    int64_t rc = code(DECODE, last, n, NULL, src, src_len, squash, stretch);
    if (rc == 0)
        rc = bwt_inverse(last, (int32_t)n, (int32_t)primary, out);
    free(last);
    return rc;
}
