"""The Burrows-Wheeler transform of a block, and its inverse (numba).

Level 1 codes the BWT of a block instead of the block itself: sorting every
suffix groups the bytes that precede similar contexts, so the transformed
block is long runs of few symbols that a tiny, fast model (bwt_coder.py)
predicts well, with no hashed context tables to miss in the cache.

The transform is defined on the block followed by a sentinel that sorts
before every byte. Of its n + 1 rows, the one whose suffix is the whole block
holds the sentinel; the stored transform is the other n bytes in row order and
`primary`, that row's index (1..n for n >= 1). Both are uniquely defined by
the block, so any correct suffix sorter (this one, native/bwt.c's) gives the
same bytes.

The suffix array is built by induced sorting (SA-IS, Nong, Zhang and Chan
2009) in linear time and 9 bytes per input byte; its recursion runs in Python,
one numba call per level (a level is at most half the size of the one above).
"""
import numpy as np
from numba import njit

_S, _L = 1, 0                        # suffix types: smaller / larger than the suffix after it


@njit(cache=True)
def _classify(s):
    n = s.shape[0]
    t = np.zeros(n, np.uint8)
    t[n - 1] = _S
    for i in range(n - 2, -1, -1):
        if s[i] < s[i + 1] or (s[i] == s[i + 1] and t[i + 1] == _S):
            t[i] = _S
    return t


@njit(cache=True, inline="always")
def _is_lms(t, i):
    return i > 0 and t[i] == _S and t[i - 1] == _L


@njit(cache=True)
def _bucket_edges(s, k, ends):
    """Start (or end) of each symbol's bucket in the suffix array."""
    count = np.zeros(k, np.int64)
    for i in range(s.shape[0]):
        count[s[i]] += 1
    edge = np.empty(k, np.int64)
    total = 0
    for c in range(k):
        total += count[c]
        edge[c] = total if ends else total - count[c]
    return edge


@njit(cache=True)
def _induce(s, k, t, sa):
    """From the LMS suffixes in place, sort the L-type suffixes (left to right),
    then the S-type ones (right to left)."""
    n = s.shape[0]
    head = _bucket_edges(s, k, False)
    for i in range(n):
        j = sa[i] - 1
        if j >= 0 and t[j] == _L:
            sa[head[s[j]]] = j
            head[s[j]] += 1
    tail = _bucket_edges(s, k, True)
    for i in range(n - 1, -1, -1):
        j = sa[i] - 1
        if j >= 0 and t[j] == _S:
            tail[s[j]] -= 1
            sa[tail[s[j]]] = j


@njit(cache=True)
def _lms_substrings_equal(s, t, a, b):
    d = 0
    while True:
        if s[a + d] != s[b + d] or t[a + d] != t[b + d]:
            return False
        if d > 0 and (_is_lms(t, a + d) or _is_lms(t, b + d)):
            return _is_lms(t, a + d) and _is_lms(t, b + d)
        d += 1


@njit(cache=True)
def _reduce(s, k):
    """Sort the LMS substrings and name them: returns the types, the reduced
    string (names in text order) and the number of distinct names."""
    n = s.shape[0]
    t = _classify(s)
    sa = np.full(n, -1, np.int32)
    tail = _bucket_edges(s, k, True)
    for i in range(n - 1, 0, -1):
        if _is_lms(t, i):
            tail[s[i]] -= 1
            sa[tail[s[i]]] = i
    _induce(s, k, t, sa)
    m = 0                                   # sorted LMS positions to the front
    for i in range(n):
        if _is_lms(t, sa[i]):
            sa[m] = sa[i]
            m += 1
    sa[m:] = -1
    names = 0
    prev = -1
    for i in range(m):                      # name i at sa[m + pos // 2]: LMS positions are >= 2 apart
        pos = sa[i]
        if prev < 0 or not _lms_substrings_equal(s, t, pos, prev):
            names += 1
            prev = pos
        sa[m + (pos >> 1)] = names - 1
    reduced = np.empty(m, np.int32)
    j = m
    for i in range(n - 1, m - 1, -1):
        if sa[i] >= 0:
            j -= 1
            reduced[j] = sa[i]
    return t, reduced, names


@njit(cache=True)
def _expand(s, k, t, reduced_sa):
    """The suffix array from the sorted LMS suffixes (reduced_sa: their ranks'
    order over the reduced string)."""
    n = s.shape[0]
    m = reduced_sa.shape[0]
    lms = np.empty(m, np.int32)
    j = 0
    for i in range(1, n):
        if _is_lms(t, i):
            lms[j] = i
            j += 1
    sa = np.full(n, -1, np.int32)
    tail = _bucket_edges(s, k, True)
    for i in range(m - 1, -1, -1):
        p = lms[reduced_sa[i]]
        tail[s[p]] -= 1
        sa[tail[s[p]]] = p
    _induce(s, k, t, sa)
    return sa


@njit(cache=True)
def _invert_names(reduced):
    sa = np.empty(reduced.shape[0], np.int32)
    for i in range(reduced.shape[0]):
        sa[reduced[i]] = i
    return sa


def _sais(s, k):
    """Suffix array of s (int32 symbols < k, ending in a unique smallest symbol)."""
    if s.shape[0] == 1:
        return np.zeros(1, np.int32)
    t, reduced, names = _reduce(s, k)
    if names < reduced.shape[0]:
        reduced_sa = _sais(reduced, names)
    else:
        reduced_sa = _invert_names(reduced)
    return _expand(s, k, t, reduced_sa)


def suffix_array(data) -> np.ndarray:
    """Suffix array of data + sentinel (n + 1 entries; entry 0 is n, the sentinel)."""
    n = len(data)
    s = np.empty(n + 1, np.int32)
    s[:n] = np.frombuffer(data, np.uint8)
    s[:n] += 1
    s[n] = 0
    return _sais(s, 257)


def bwt_forward(data):
    """(transformed bytes as a uint8 array of len(data), primary row)."""
    n = len(data)
    if n == 0:
        return np.zeros(0, np.uint8), 0
    src = np.frombuffer(data, np.uint8)
    sa = suffix_array(data)
    primary = int(np.flatnonzero(sa == 0)[0])
    rows = np.delete(sa, primary)           # every row but the sentinel's
    return src[rows - 1], primary           # rows - 1 >= 0 here; row 0 (sa = n) gives src[n - 1]


@njit(cache=True)
def _bwt_inverse(last, primary):
    n = last.shape[0]
    first = np.zeros(257, np.int64)         # first row of each byte's bucket (row 0: the sentinel)
    for i in range(n):
        first[last[i] + 1] += 1
    first[0] = 1
    for c in range(1, 257):
        first[c] += first[c - 1]
    nxt = np.empty(n + 1, np.int32)         # LF mapping over the n + 1 rows
    seen = first[:256].copy()
    for r in range(n + 1):
        if r == primary:
            nxt[r] = 0
            continue
        c = last[r - 1] if r > primary else last[r]
        nxt[r] = seen[c]
        seen[c] += 1
    out = np.empty(n, np.uint8)
    r = 0
    for i in range(n - 1, -1, -1):          # row 0 ends the block: walk it backwards
        if r == primary:                    # only in a corrupt transform: garbage, not a crash
            out[i] = 0
        else:
            out[i] = last[r - 1] if r > primary else last[r]
        r = nxt[r]
    return out


def bwt_inverse(last, primary: int) -> bytes:
    """The block from its transform. `primary` out of 1..n (a corrupt file) still
    gives n bytes, never a crash: the container's checksum then refuses them."""
    last = np.asarray(last, np.uint8)
    n = last.shape[0]
    if n == 0:
        return b""
    primary = min(max(primary, 1), n)
    return _bwt_inverse(last, primary).tobytes()
