"""Level presets: every parameter the decoder needs, frozen and serialisable.

A preset's bytes are written into each container header, so a file made with
today's `-6` still decodes after the defaults of `-6` change. `Preset.to_bytes`
and `Preset.from_bytes` are the only (de)serialisers; `from_bytes` validates
every field so that a hostile header cannot ask for absurd memory.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, fields, replace

from .ssm_layout import Shape

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
CTX_LINESTART = 18   # the first byte of the current line + last 2 bytes (lists, tables, headings)
CTX_WORD1 = 19       # previous word + last byte
CTX_WORD02 = 20      # current word + the word before the previous one (skips one word)
CTX_TAGWORD = 21     # the opening of the innermost markup + current word
CTX_WORDSTART = 22   # the byte just before the current word + last byte
CTX_LINEWORD = 23    # the first byte of the current line + current word
CTX_TAGORDER2 = 24   # the opening of the innermost markup + last 2 bytes
CTX_TAGORDER3 = 25   # the opening of the innermost markup + last 3 bytes
N_CTX_KINDS = 26

MAX_CONTEXTS = 26
APM_POINTS = 33                              # interpolation points per APM context (mixer.py)
APM4_ROWS = 1 << 18                          # the fourth APM: hashed order 3 (10 bits) x partial byte
RUN_FROM = 2                                 # a preset's first two contexts (its lowest orders) get no run input
APM5_ROWS = 3 * 256 * 256                    # the fifth APM: match state x a byte (see predictor.py) x partial byte
MIXER3_WIDE_SETS = 256 * 256                 # mixer 3's weight sets in the wide design: last byte x partial byte
MIN_APM3_BITS, MAX_APM3_BITS = 8, 12         # the third APM: hashed order 2 (these bits) x partial byte
MIN_TABLE_BITS, MAX_TABLE_BITS = 12, 28      # bytes per context hash table, log2
MIN_MATCH_BITS, MAX_MATCH_BITS = 10, 26      # entries in the match index, log2
MIN_BLOCK_BITS, MAX_BLOCK_BITS = 10, 30      # block size, log2

# Layout of the serialised preset (not the container's version). Layout 2 adds
# the SSM fields; presets without an SSM are still written in layout 1, so files
# made before the SSM existed and files made now at levels 1-6 are the same bytes.
# Layout 3 adds the mixers' update threshold, the first APM's share and the
# third APM's size (all fields, the SSM's zero when there is none); it is
# written only for presets that need it. Layout 4 adds the mixers' design (how
# their weight sets are chosen and how fast each learns), and only it may ask
# for a fifth APM. Layout 5 is a transform preset (level 1's BWT): it holds only the
# transform and the block size, the coder of a transform having no knobs. Layout 6
# adds the SSM's lag.
_LAYOUT_NO_SSM, _LAYOUT_SSM, _LAYOUT_LEARNING, _LAYOUT_MIXERS, _LAYOUT_TRANSFORM, _LAYOUT_LAG = 1, 2, 3, 4, 5, 6
MIXERS_CLASSIC, MIXERS_WIDE = 0, 1           # Preset.mixer_design (predictor.py says what each means)
# Preset.transform: what codes the block. TRANSFORM_NONE: the context-mixing engine;
# TRANSFORM_BWT: the Burrows-Wheeler transform and its small model (bwt.py, bwt_coder.py).
TRANSFORM_NONE, TRANSFORM_BWT = 0, 1

# SSM bounds (see ssm.py): a hostile header cannot ask for a huge network.
MAX_SSM_DM, MAX_SSM_DI, MAX_SSM_DS, MAX_SSM_RANK, MAX_SSM_LAYERS = 256, 512, 64, 64, 8
MIN_SSM_CHUNK, MAX_SSM_CHUNK = 4, 256
MAX_SSM_NGRAM, MIN_SSM_NGRAM_BITS, MAX_SSM_NGRAM_BITS = 6, 8, 22


@dataclass(frozen=True)
class Preset:
    """One compression level of the engine. All fields are small integers."""

    level: int
    contexts: tuple            # context kinds (CTX_*) in mixer-input order
    table_bits: int            # log2 bytes of each context's hash table
    runs: int                  # 1: each context also predicts the byte that last followed it
    match_min: int             # bytes hashed to find a match candidate (0 = no match model)
    match_bits: int            # log2 entries of the match index
    mixers: int                # first-layer mixers (weight-set selectors), 1..5
    mixer_lr: int              # first-layer learning rate
    final_lr: int              # final mixer learning rate
    apms: int                  # APM/SSE stages, 2..5
    apm_rate: int              # APM adaptation shift
    block_bits: int            # default block size = 1 << block_bits
    # The online SSM (ssm.py); ssm_layers = 0: none. With contexts == () the
    # SSM alone drives the coder (an ablation: no context models, mixer or APMs).
    ssm_layers: int = 0
    ssm_dm: int = 0            # model width
    ssm_di: int = 0            # inner width (channels of the recurrence)
    ssm_ds: int = 0            # states per channel
    ssm_rank: int = 0          # rank of the step-size projection
    ssm_chunk: int = 0         # bytes per training step (truncated BPTT length)
    ssm_lr: int = 0            # Adam learning rate, in units of 1e-5
    ssm_seed: int = 0          # initialisation seed
    ssm_ngram: int = 0         # hashed input embeddings: orders 2 .. ssm_ngram, and the word
    ssm_ngram_bits: int = 0    # log2 rows of each n-gram embedding table
    # Layout 3 (level 9's fourth version): how the mixers and the first APM learn.
    # The defaults are what layouts 1 and 2 mean.
    mixer_skip: int = 100      # no mixer update while |bit - p| < mixer_skip / 4096
    apm_first: int = 3         # the first APM's share of its output, in quarters (the mixer's: the rest)
    apm3_bits: int = 8         # the third APM's rows: hashed order 2 (this many bits) x partial byte
    # Layout 4 (level 9's fifth version): which weight sets the mixers choose from.
    mixer_design: int = MIXERS_CLASSIC
    # Layout 6: the SSM learns a chunk late (ssm.py, "the lagged SSM"), so that its
    # learning can run beside the coding.
    ssm_lag: int = 0
    # Layout 5: a transform in place of the context-mixing engine (every field above
    # but the level and the block size then keeps transform_preset's fixed value).
    transform: int = TRANSFORM_NONE

    def __post_init__(self):
        _validate(self)

    @property
    def block_size(self) -> int:
        return 1 << self.block_bits

    @property
    def has_ssm(self) -> bool:
        return self.ssm_layers > 0

    def memory_estimate(self) -> int:
        """Bytes of model tables one block coder holds (not counting the block itself)."""
        if self.transform == TRANSFORM_BWT:
            # the suffix sorter's arrays (about 9 bytes a byte) and the model's 0.6 MB
            return 10 * self.block_size + (1 << 20)
        per_ctx = (1 << self.table_bits) + ((1 << self.table_bits) >> 2 if self.runs else 0)
        ssm = 0
        if self.has_ssm:
            ssm = self.ssm_shape().memory() + (self.ssm_shape().lag_memory() if self.ssm_lag else 0)
        apm5 = 4 * APM5_ROWS * APM_POINTS if self.apms > 4 else 0
        apm4 = 4 * APM4_ROWS * APM_POINTS if self.apms > 3 else 0
        apm3 = 4 * APM_POINTS << (self.apm3_bits + 8) if self.apms > 2 else 0
        # mixer 3's weight sets in the wide design (the other mixers' are under a MB together)
        wide = (4 * MIXER3_WIDE_SETS * self.mixer_inputs()
                if self.mixer_design == MIXERS_WIDE and self.mixers > 2 else 0)
        return (len(self.contexts) * per_ctx + 4 * (1 << self.match_bits) + (4 << 20) + apm3 + apm4 + apm5 + wide
                + ssm)

    def mixer_inputs(self) -> int:
        """Inputs of each first-layer mixer: contexts, match, order 0, bias, runs, SSM."""
        n = len(self.contexts)
        return n + 3 + (n - RUN_FROM if self.runs else 0) + (1 if self.has_ssm else 0)

    def ssm_shape(self) -> Shape:
        return Shape(self.ssm_dm, self.ssm_di, self.ssm_ds, self.ssm_rank, self.ssm_layers, self.ssm_chunk,
                     self.ssm_ngram, self.ssm_ngram_bits)

    def _scalars(self, layout):
        if layout == _LAYOUT_TRANSFORM:
            return [self.transform, self.block_bits]
        n = _N_SCALARS[layout]
        return [getattr(self, f.name) for f in fields(self) if f.name not in ("level", "contexts")][:n]

    def _layout(self) -> int:
        """The oldest layout that can say this preset: files of the presets that
        existed before a layout keep their bytes."""
        if self.transform != TRANSFORM_NONE:
            return _LAYOUT_TRANSFORM
        if self.ssm_lag:
            return _LAYOUT_LAG
        if self.mixer_design != MIXERS_CLASSIC or self.apms > 4:
            return _LAYOUT_MIXERS
        if tuple(getattr(self, n) for n in _LAYOUT3_FIELDS) != _LAYOUT3_DEFAULTS:
            return _LAYOUT_LEARNING
        return _LAYOUT_SSM if self.has_ssm else _LAYOUT_NO_SSM

    def to_bytes(self) -> bytes:
        layout = self._layout()
        scal = self._scalars(layout)
        return (struct.pack("<BBB", layout, self.level, len(self.contexts))
                + bytes(self.contexts) + struct.pack(f"<{len(scal)}H", *scal))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Preset":
        """Parse and validate; raise ValueError with a one-line reason."""
        if len(data) < 3:
            raise ValueError("preset too short")
        layout, level, n = struct.unpack_from("<BBB", data, 0)
        if layout not in _N_SCALARS:
            raise ValueError(f"unknown preset layout {layout}")
        k = _N_SCALARS[layout]
        if len(data) != 3 + n + 2 * k:
            raise ValueError("preset has the wrong length")
        contexts = tuple(data[3:3 + n])
        vals = struct.unpack_from(f"<{k}H", data, 3 + n)
        try:
            if layout == _LAYOUT_TRANSFORM:
                if n:
                    raise ValueError("a transform preset has no contexts")
                p = transform_preset(level, vals[0], vals[1])
            else:
                p = cls(level, contexts, *vals)
        except TypeError as e:
            raise ValueError(str(e)) from None
        if layout != p._layout():      # one preset, one encoding: re-encoding gives the same bytes
            raise ValueError(f"preset written in layout {layout}, but it needs layout {p._layout()}")
        return p

    @classmethod
    def serialized_size(cls, data: bytes, offset: int = 0) -> int:
        """Length of the serialised preset starting at data[offset] (for parsers)."""
        if len(data) < offset + 3:
            raise ValueError("preset too short")
        layout = data[offset]
        if layout not in _N_SCALARS:
            raise ValueError(f"unknown preset layout {layout}")
        return 3 + data[offset + 2] + 2 * _N_SCALARS[layout]


_N_SSM_FIELDS = 10
_LAYOUT3_FIELDS = ("mixer_skip", "apm_first", "apm3_bits")
_N_LAYOUT3_FIELDS = len(_LAYOUT3_FIELDS)
# what layouts 1 and 2 mean: the dataclass's defaults, written once
_LAYOUT3_DEFAULTS = tuple(f.default for f in fields(Preset) if f.name in _LAYOUT3_FIELDS)
_N_LAYOUT4_FIELDS = 1                         # mixer_design
_N_ENGINE_FIELDS = len(fields(Preset)) - 3     # the scalars of layout 6: all but level, contexts, transform
_N_SCALARS = {_LAYOUT_NO_SSM: _N_ENGINE_FIELDS - 1 - _N_SSM_FIELDS - _N_LAYOUT3_FIELDS - _N_LAYOUT4_FIELDS,
              _LAYOUT_SSM: _N_ENGINE_FIELDS - 1 - _N_LAYOUT3_FIELDS - _N_LAYOUT4_FIELDS,
              _LAYOUT_LEARNING: _N_ENGINE_FIELDS - 1 - _N_LAYOUT4_FIELDS,
              _LAYOUT_MIXERS: _N_ENGINE_FIELDS - 1,
              _LAYOUT_TRANSFORM: 2,           # transform, block_bits
              _LAYOUT_LAG: _N_ENGINE_FIELDS}


def _validate(p: Preset) -> None:
    def bad(msg):
        raise ValueError(f"invalid preset: {msg}")

    if not 0 <= p.level <= 9:
        bad("level")
    if p.transform not in (TRANSFORM_NONE, TRANSFORM_BWT):
        bad("transform")
    if p.transform != TRANSFORM_NONE:
        if any(getattr(p, k) != v for k, v in _TRANSFORM_FIXED.items()):
            bad("a transform preset sets only its level and block size")
    elif not isinstance(p.contexts, tuple) or not (0 if p.ssm_layers else 1) <= len(p.contexts) <= MAX_CONTEXTS:
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
    if not 1 <= p.mixers <= 5:
        bad("mixer count")
    if not 1 <= p.mixer_lr <= 16 or not 1 <= p.final_lr <= 48:   # see mixer.py for the bounds
        bad("mixer rate")
    if not 2 <= p.apms <= 5:
        bad("APM count")
    if not 4 <= p.apm_rate <= 10:
        bad("APM rate")
    if not 0 <= p.mixer_skip <= 1024:
        bad("mixer update threshold")
    if not 0 <= p.apm_first <= 4:
        bad("first APM share")
    if not MIN_APM3_BITS <= p.apm3_bits <= MAX_APM3_BITS:
        bad("third APM size")
    if p.mixer_design not in (MIXERS_CLASSIC, MIXERS_WIDE):
        bad("mixer design")
    if not MIN_BLOCK_BITS <= p.block_bits <= MAX_BLOCK_BITS:
        bad("block size")
    if p.ssm_lag not in (0, 1) or (p.ssm_lag and not p.ssm_layers):
        bad("SSM lag")
    if p.ssm_layers == 0:
        if any((p.ssm_dm, p.ssm_di, p.ssm_ds, p.ssm_rank, p.ssm_chunk, p.ssm_lr, p.ssm_seed,
                p.ssm_ngram, p.ssm_ngram_bits)):
            bad("SSM fields without SSM layers")
    elif not (1 <= p.ssm_layers <= MAX_SSM_LAYERS and 1 <= p.ssm_dm <= MAX_SSM_DM
              and 1 <= p.ssm_di <= MAX_SSM_DI and 1 <= p.ssm_ds <= MAX_SSM_DS
              and 1 <= p.ssm_rank <= MAX_SSM_RANK and MIN_SSM_CHUNK <= p.ssm_chunk <= MAX_SSM_CHUNK
              and 1 <= p.ssm_lr <= 10000 and 0 <= p.ssm_ngram <= MAX_SSM_NGRAM
              and (MIN_SSM_NGRAM_BITS <= p.ssm_ngram_bits <= MAX_SSM_NGRAM_BITS if p.ssm_ngram
                   else p.ssm_ngram_bits == 0)):
        bad("SSM sizes")


# What a transform preset's context-mixing fields hold: the smallest valid values
# (unused; fixed so that one transform preset has one encoding).
_TRANSFORM_FIXED = dict(contexts=(), table_bits=MIN_TABLE_BITS, runs=0, match_min=0, match_bits=MIN_MATCH_BITS,
                        mixers=1, mixer_lr=1, final_lr=1, apms=2, apm_rate=4)


def transform_preset(level: int, transform: int, block_bits: int) -> Preset:
    """A preset that codes each block through a transform (TRANSFORM_BWT)."""
    return Preset(level, block_bits=block_bits, transform=transform, **_TRANSFORM_FIXED)


_O = (CTX_ORDER1, CTX_ORDER2, CTX_ORDER3, CTX_ORDER4)

def _level(level, contexts, table_bits, runs, match_min, match_bits, mixers, apms, block_bits, ssm=None,
           mixer_lr=12, final_lr=16, **learning):
    s = {} if ssm is None else dict(zip(("ssm_dm", "ssm_di", "ssm_ds", "ssm_rank", "ssm_layers",
                                         "ssm_chunk", "ssm_lr", "ssm_seed", "ssm_ngram",
                                         "ssm_ngram_bits"), ssm))
    return Preset(level, contexts, table_bits, runs, match_min, match_bits, mixers,
                  mixer_lr=mixer_lr, final_lr=final_lr, apms=apms, apm_rate=7, block_bits=block_bits,
                  **learning, **s)


# SSM sizes: dm, di, ds, rank, layers, chunk, lr (1e-5), seed, n-gram inputs, their table bits
_SSM_SMALL = (32, 64, 8, 4, 2, 32, 300, 1, 6, 17)
_SSM_MEDIUM = (48, 96, 8, 6, 2, 32, 300, 1, 6, 17)
_SSM_LARGE = (64, 128, 8, 8, 2, 32, 300, 1, 6, 17)


_TEXT = (CTX_WORD, CTX_WORD2, CTX_SPARSE2, CTX_COLUMN, CTX_TAG)
_HIGH = (CTX_ORDER5, CTX_ORDER6)

# Level 9's fifth version (preset layout 4): wider mixer weight sets (mixer 3 by the last
# byte x the partial byte, mixer 1 also by the match length; mixers 2-4 learn faster) and a
# fifth APM on the match model's state and its predicted byte: on enwik8_1M 216,013 ->
# 214,972 bytes for its context models alone (-0.48 %; 3M -0.51 %), 212,899 -> 212,235
# with the SSM (-0.31 %).
# Level 9's fourth version (preset layout 3): its mixers learn from errors down to
# 32/4096 (was 100), the first APM counts for 1/4 against the mixer (was 3/4), the
# third APM hashes order 2 to 12 bits (was 8: 138 MB), and two markup contexts (markup +
# order 2, markup + order 3): on enwik8_1M 216,912 -> 216,013 bytes for its context
# models alone (-0.41 %), 213,676 -> 212,899 with the SSM (-0.36 %).
# Level 9 gained two mixers (weight sets by the byte before last, and by the match
# model's state), an APM on hashed order 3 and six text contexts (line start, previous
# word, the word two back, markup + word, the byte before the word, line start + word),
# and its final mixer learns slower (6, was 16; first layer 14, was 12): on enwik8_1M
# 220,265 -> 216,912 bytes for its context models alone (-1.5 %; 3M: -1.8 %), and
# 216,247 -> 213,676 with the SSM (-1.2 %); its context models took 3.5 -> 5.0-7.4 us/byte
# (three runs, C backend, 2-core EPYC VM).
# Levels 1 and 6 were retuned for speed (measured on enwik8_1M, C backend): -1 dropped
# order 3 and hashes 6 bytes for the match model (+1.4 % size, 12 % faster); -6 dropped
# order 1 and the sparse context (+0.2 %, 12 % faster) and swapped the column context for
# the indirect one (-0.2 % on 1M, -0.26 % on 3M, same speed). Files made before still
# decode: every file carries its own preset.
LEVELS = {
    1: transform_preset(1, TRANSFORM_BWT, 22),
    2: _level(2, _O + (CTX_WORD,), 22, 0, 7, 20, 1, 2, 22),
    3: _level(3, _O + (CTX_ORDER6, CTX_WORD), 22, 0, 7, 20, 1, 2, 23),
    4: _level(4, _O + (CTX_ORDER6, CTX_WORD, CTX_TAG), 22, 0, 7, 20, 2, 2, 23),
    5: _level(5, _O + _HIGH + (CTX_WORD, CTX_SPARSE2, CTX_TAG), 22, 1, 7, 20, 2, 3, 24),
    6: _level(6, (CTX_ORDER2, CTX_ORDER3, CTX_ORDER4) + _HIGH + (CTX_WORD, CTX_WORD2, CTX_INDIRECT1, CTX_TAG),
              22, 1, 7, 21, 2, 3, 24),
    7: _level(7, _O + _HIGH + (CTX_ORDER8,) + _TEXT + (CTX_INDIRECT1,), 23, 1, 7, 22, 3, 3, 24,
              _SSM_SMALL),
    8: _level(8, _O + _HIGH + (CTX_ORDER8,) + _TEXT + (CTX_INDIRECT1, CTX_INDIRECT2, CTX_WORDPOS),
              24, 1, 7, 22, 3, 3, 25, _SSM_MEDIUM),
    9: _level(9, _O + _HIGH + (CTX_ORDER8, CTX_ORDER12) + _TEXT
              + (CTX_INDIRECT1, CTX_INDIRECT2, CTX_WORDPOS, CTX_SPARSE23, CTX_SPARSE34,
                 CTX_LINESTART, CTX_WORD1, CTX_WORD02, CTX_TAGWORD, CTX_WORDSTART, CTX_LINEWORD,
                 CTX_TAGORDER2, CTX_TAGORDER3),
              24, 1, 7, 22, 5, 5, 25, _SSM_LARGE, mixer_lr=14, final_lr=6, mixer_skip=32, apm_first=1,
              apm3_bits=12, mixer_design=MIXERS_WIDE, ssm_lag=1),
}
DEFAULT_LEVEL = 6


def without_ssm(preset: Preset) -> Preset:
    """The same level with the SSM off (context models alone): an ablation."""
    return replace(preset, ssm_layers=0, ssm_dm=0, ssm_di=0, ssm_ds=0, ssm_rank=0,
                   ssm_chunk=0, ssm_lr=0, ssm_seed=0, ssm_ngram=0, ssm_ngram_bits=0, ssm_lag=0)


def ssm_only(preset: Preset) -> Preset:
    """The same level's SSM with the context models, match model, mixers and APMs
    off: its probability goes straight to the coder. An ablation."""
    if not preset.has_ssm:
        raise ValueError(f"level {preset.level} has no SSM")
    return replace(preset, contexts=(), match_min=0)


def preset_for_level(level: int) -> Preset:
    try:
        return LEVELS[level]
    except KeyError:
        raise ValueError(f"level must be 1..9, got {level!r}") from None
