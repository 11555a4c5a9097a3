"""Context hashes and the nibble-slotted hash tables of the context models.

At each byte boundary every context model hashes its context (the last n
bytes, the current word, ...) into a 32-bit value. Its hash table is an array
of 16-byte slots: byte 0 holds an 8-bit check value, bytes 1..15 the
bit-history states of the 15 nodes of a nibble's binary tree. A slot is looked
up twice per byte (before bit 7 and before bit 3, the second time with the
first nibble mixed into the key), so one lookup serves four bits.

A lookup probes three slots of the same 64-byte group; a check mismatch on all
three replaces the slot whose first node has seen the fewest bits, so a
collision starts from an empty history instead of sharing a wrong one.
"""
from numba import njit

from . import presets as P

M32 = 0xFFFFFFFF


@njit(cache=True, inline="always")
def word_letter(c):
    """The byte c as a letter of the word contexts (ASCII, folded to lower case), or -1."""
    if 65 <= c <= 90:
        c += 32
    return c if 97 <= c <= 122 else -1


@njit(cache=True, inline="always")
def word_hash(word, letter):
    """The current word's hash after one more letter (0: no word yet)."""
    return ((word + letter + 1) * 0x2F0F3A5B) & M32


@njit(cache=True, inline="always")
def hash32(x):
    """A 32-bit integer mixer (multiply / xor-shift); x is any non-negative int64."""
    x = ((x & M32) * 0x9E3779B1 + (x >> 32)) & M32
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & M32
    x ^= x >> 12
    x = (x * 0x297A2D39) & M32
    x ^= x >> 15
    return x


@njit(cache=True, inline="always")
def hash2(a, b):
    return hash32((hash32(a) * 0x3C6EF372 + b + 1) & 0xFFFFFFFFFFFF)


@njit(cache=True, inline="always")
def context_value(kind, c4, c8, c12, word, word1, word2, wordpre, above, ind1, ind2, tag, line0):
    """The raw context of one model at a byte boundary (before hashing)."""
    if kind == P.CTX_ORDER1:
        return c4 & 0xFF
    if kind == P.CTX_ORDER2:
        return c4 & 0xFFFF
    if kind == P.CTX_ORDER3:
        return c4 & 0xFFFFFF
    if kind == P.CTX_ORDER4:
        return c4
    if kind == P.CTX_ORDER5:
        return hash2(c4, c8 & 0xFF)
    if kind == P.CTX_ORDER6:
        return hash2(c4, c8 & 0xFFFF)
    if kind == P.CTX_ORDER8:
        return hash2(c4, c8)
    if kind == P.CTX_ORDER12:
        return hash2(hash2(c4, c8), c12)
    if kind == P.CTX_WORD:
        return hash2(word, c4 & 0xFF)
    if kind == P.CTX_WORD2:
        return hash2(word, word1)
    if kind == P.CTX_WORDPOS:
        return hash2(word, wordpre)
    if kind == P.CTX_SPARSE2:
        return c4 & 0xFF00
    if kind == P.CTX_SPARSE34:
        return c4 & 0xFFFF0000
    if kind == P.CTX_SPARSE23:
        return c4 & 0xFFFF00
    if kind == P.CTX_COLUMN:
        return (above << 8) | (c4 & 0xFF)
    if kind == P.CTX_INDIRECT1:
        return (ind1 << 8) | (c4 & 0xFF)
    if kind == P.CTX_INDIRECT2:
        return (ind2 << 16) | (c4 & 0xFFFF)
    if kind == P.CTX_TAG:
        return hash2(tag, c4 & 0xFF)
    if kind == P.CTX_LINESTART:
        return hash2(line0, c4 & 0xFFFF)
    if kind == P.CTX_WORD1:
        return hash2(word1, c4 & 0xFF)
    if kind == P.CTX_WORD02:
        return hash2(word, word2 + 7)        # + 7 (and below): unlike values for the same inputs
    if kind == P.CTX_TAGWORD:
        return hash2(tag, word + 5)
    if kind == P.CTX_WORDSTART:
        return hash2(wordpre, c4 & 0xFF)
    if kind == P.CTX_LINEWORD:
        return hash2(line0, word + 11)
    if kind == P.CTX_TAGORDER2:
        return hash2(tag, c4 & 0xFFFF)
    if kind == P.CTX_TAGORDER3:
        return hash2(tag, c4 & 0xFFFFFF)
    return 0


@njit(cache=True, inline="always")
def find_slot(table, base, nslots, key, priority):
    """Offset of the 16-byte slot for `key` in the table region starting at `base`."""
    chk = key & 0xFF
    group = (key >> 8) & (nslots - 1)
    best = -1
    best_pri = 1 << 30
    for k in range(3):
        off = base + ((group ^ k) << 4)
        if table[off] == chk:
            return off
        pri = priority[table[off + 1]]
        if pri < best_pri:
            best_pri = pri
            best = off
    for j in range(16):
        table[best + j] = 0
    table[best] = chk
    return best
