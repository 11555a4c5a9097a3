"""The context-mixing model's layout: the registers it keeps between segments and
the sizes of its weight sets and tables. Constants only, shared by the numba
kernel (predictor.py, match.py), the state that allocates the arrays
(state.py) and, mirrored by hand, the C kernel (native/cm.c): so that the
kernel depends on this module and not on the state that calls it.
"""
from .presets import (APM4_ROWS, APM5_ROWS, APM_POINTS, MAX_CONTEXTS, MIXER3_WIDE_SETS,  # noqa: F401 (re-exported)
                      RUN_FROM)

ENCODE, DECODE = 0, 1
SEGMENT = 1 << 16            # bytes coded per call into a kernel (progress granularity)

# Registers of the model state kept between segments (an int64 array).
R_X1, R_X2, R_X, R_IO = 0, 1, 2, 3
R_C4, R_C8, R_C12 = 4, 5, 6
R_WORD, R_WORD1, R_WORDPRE = 7, 8, 9
R_LINE, R_PREVLINE = 10, 11
R_MPTR, R_MLEN = 12, 13
R_TAG, R_TAGPOS = 14, 15
R_SSM_ROW = 16               # the SSM's row in its current training chunk
R_LINE0, R_WORD2 = 17, 18    # first byte of the current line; the word before the previous one
N_REGS = 19

# Mixer weight sets (Preset.mixer_design "classic"; "wide" changes mixers 1 and 3)
ORDER_CLASSES = MAX_CONTEXTS + 5     # contexts seen before (0..25), or 5 match-length classes
MIXER1_SETS = ORDER_CLASSES * 8      # x top 3 bits of the last byte
MIXER2_SETS = 256                    # partial byte
MIXER3_SETS = 256 * 8                # last byte x bit position
MIXER4_SETS = 256 * 8                # the byte before last x bit position
MIXER5_SETS = 3 * 16 * 8             # match state (none, expects 0, expects 1) x length class x bit position
KNOWN_CLASSES = 32                   # "wide": contexts seen before (0..25, room for 32) ...
MIXER1_WIDE_SETS = 6 * KNOWN_CLASSES * 8   # ... x (no match, or 5 match-length classes) x top 3 bits of the last byte
RUN_COUNT_CLASSES = 32
LEN_BUCKETS = 32                     # match-length classes (match.length_bucket)
WEIGHT_ONE = 1 << 16                 # mixer weight 1.0 (16.16 fixed point, mixer.py)
