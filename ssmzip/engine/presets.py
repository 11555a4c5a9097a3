"""Level presets: every parameter the decoder needs, frozen and serialisable.

A preset's bytes are written into each container header, so a file made with
today's `-6` still decodes after the defaults of `-6` change. `Preset.to_bytes`
and `Preset.from_bytes` are the only (de)serialisers; `from_bytes` validates
every field so that a hostile header cannot ask for absurd memory.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, fields

# Context kinds. The numbers are part of the file format: never renumber.
CTX_ORDER1 = 0       # last byte
CTX_ORDER2 = 1       # last 2 bytes
CTX_ORDER3 = 2
CTX_ORDER4 = 3
CTX_ORDER5 = 4
CTX_ORDER6 = 5
CTX_ORDER8 = 6
CTX_WORD = 7         # letters of the current word (case folded) + last byte
CTX_WORD2 = 8        # current word + previous word
CTX_SPARSE2 = 9      # byte 2 alone (skip the last byte)
CTX_SPARSE34 = 10    # bytes 3 and 4
CTX_COLUMN = 11      # byte above (same column, previous line) + last byte
CTX_ORDER12 = 12     # last 12 bytes
CTX_SPARSE23 = 13    # bytes 2 and 3
CTX_WORDPOS = 14     # current word + byte just before the word
CTX_INDIRECT1 = 15   # last byte + the two bytes that followed its previous occurrences
CTX_INDIRECT2 = 16   # last 2 bytes + the two bytes that followed them before
CTX_TAG = 17         # the opening of the innermost markup (<tag, [[, {{) + last byte
N_CTX_KINDS = 18

MAX_CONTEXTS = 20
MIN_TABLE_BITS, MAX_TABLE_BITS = 12, 28      # bytes per context hash table, log2
MIN_MATCH_BITS, MAX_MATCH_BITS = 10, 26      # entries in the match index, log2
MIN_BLOCK_BITS, MAX_BLOCK_BITS = 10, 30      # block size, log2

_MAGIC_VERSION = 1   # layout of the serialised preset (not the container's version)


@dataclass(frozen=True)
class Preset:
    """One compression level of the engine. All fields are small integers."""

    level: int
    contexts: tuple            # context kinds (CTX_*) in mixer-input order
    table_bits: int            # log2 bytes of each context's hash table
    runs: int                  # 1: each context also predicts the byte that last followed it
    match_min: int             # bytes hashed to find a match candidate (0 = no match model)
    match_bits: int            # log2 entries of the match index
    mixers: int                # first-layer mixers (weight-set selectors), 1..3
    mixer_lr: int              # first-layer learning rate
    final_lr: int              # final mixer learning rate
    apms: int                  # APM/SSE stages, 2 or 3
    apm_rate: int              # APM adaptation shift
    block_bits: int            # default block size = 1 << block_bits

    def __post_init__(self):
        _validate(self)

    @property
    def block_size(self) -> int:
        return 1 << self.block_bits

    def memory_estimate(self) -> int:
        """Bytes of model tables one block coder holds (not counting the block itself)."""
        per_ctx = (1 << self.table_bits) + ((1 << self.table_bits) >> 2 if self.runs else 0)
        return len(self.contexts) * per_ctx + 4 * (1 << self.match_bits) + (4 << 20)

    def _scalars(self):
        return [getattr(self, f.name) for f in fields(self) if f.name not in ("level", "contexts")]

    def to_bytes(self) -> bytes:
        scal = self._scalars()
        return (struct.pack("<BBB", _MAGIC_VERSION, self.level, len(self.contexts))
                + bytes(self.contexts) + struct.pack(f"<{len(scal)}H", *scal))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Preset":
        """Parse and validate; raise ValueError with a one-line reason."""
        if len(data) < 3:
            raise ValueError("preset too short")
        ver, level, n = struct.unpack_from("<BBB", data, 0)
        if ver != _MAGIC_VERSION:
            raise ValueError(f"unknown preset layout {ver}")
        if len(data) != 3 + n + 2 * _N_SCALARS:
            raise ValueError("preset has the wrong length")
        contexts = tuple(data[3:3 + n])
        vals = struct.unpack_from(f"<{_N_SCALARS}H", data, 3 + n)
        try:
            return cls(level, contexts, *vals)
        except TypeError as e:
            raise ValueError(str(e)) from None

    @classmethod
    def serialized_size(cls, data: bytes, offset: int = 0) -> int:
        """Length of the serialised preset starting at data[offset] (for parsers)."""
        if len(data) < offset + 3:
            raise ValueError("preset too short")
        return 3 + data[offset + 2] + 2 * _N_SCALARS


_N_SCALARS = len(fields(Preset)) - 2


def _validate(p: Preset) -> None:
    def bad(msg):
        raise ValueError(f"invalid preset: {msg}")

    if not 0 <= p.level <= 9:
        bad("level")
    if not isinstance(p.contexts, tuple) or not 1 <= len(p.contexts) <= MAX_CONTEXTS:
        bad("context count")
    if any(not 0 <= c < N_CTX_KINDS for c in p.contexts) or len(set(p.contexts)) != len(p.contexts):
        bad("context kinds")
    if not MIN_TABLE_BITS <= p.table_bits <= MAX_TABLE_BITS:
        bad("table size")
    if p.runs not in (0, 1):
        bad("runs flag")
    if p.match_min != 0 and not 4 <= p.match_min <= 32:
        bad("match length")
    if not MIN_MATCH_BITS <= p.match_bits <= MAX_MATCH_BITS:
        bad("match table size")
    if not 1 <= p.mixers <= 3:
        bad("mixer count")
    if not 1 <= p.mixer_lr <= 16 or not 1 <= p.final_lr <= 48:   # see mixer.py for the bounds
        bad("mixer rate")
    if not 2 <= p.apms <= 3:
        bad("APM count")
    if not 4 <= p.apm_rate <= 10:
        bad("APM rate")
    if not MIN_BLOCK_BITS <= p.block_bits <= MAX_BLOCK_BITS:
        bad("block size")


_O = (CTX_ORDER1, CTX_ORDER2, CTX_ORDER3, CTX_ORDER4)

def _level(level, contexts, table_bits, runs, match_min, match_bits, mixers, apms, block_bits):
    return Preset(level, contexts, table_bits, runs, match_min, match_bits, mixers,
                  mixer_lr=12, final_lr=16, apms=apms, apm_rate=7, block_bits=block_bits)


_TEXT = (CTX_WORD, CTX_WORD2, CTX_SPARSE2, CTX_COLUMN, CTX_TAG)
_HIGH = (CTX_ORDER5, CTX_ORDER6)

LEVELS = {
    1: _level(1, _O, 22, 0, 7, 20, 1, 2, 22),
    2: _level(2, _O + (CTX_WORD,), 22, 0, 7, 20, 1, 2, 22),
    3: _level(3, _O + (CTX_ORDER6, CTX_WORD), 22, 0, 7, 20, 1, 2, 23),
    4: _level(4, _O + (CTX_ORDER6, CTX_WORD, CTX_TAG), 22, 0, 7, 20, 2, 2, 23),
    5: _level(5, _O + _HIGH + (CTX_WORD, CTX_SPARSE2, CTX_TAG), 22, 1, 7, 20, 2, 3, 24),
    6: _level(6, _O + _HIGH + _TEXT, 22, 1, 7, 21, 2, 3, 24),
    7: _level(7, _O + _HIGH + (CTX_ORDER8,) + _TEXT + (CTX_INDIRECT1,), 23, 1, 7, 22, 3, 3, 24),
    8: _level(8, _O + _HIGH + (CTX_ORDER8,) + _TEXT + (CTX_INDIRECT1, CTX_INDIRECT2, CTX_WORDPOS),
              24, 1, 7, 22, 3, 3, 25),
    9: _level(9, _O + _HIGH + (CTX_ORDER8, CTX_ORDER12) + _TEXT
              + (CTX_INDIRECT1, CTX_INDIRECT2, CTX_WORDPOS, CTX_SPARSE23, CTX_SPARSE34),
              24, 1, 7, 22, 3, 3, 25),
}
DEFAULT_LEVEL = 6


def preset_for_level(level: int) -> Preset:
    try:
        return LEVELS[level]
    except KeyError:
        raise ValueError(f"level must be 1..9, got {level!r}") from None
