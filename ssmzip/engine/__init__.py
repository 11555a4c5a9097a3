"""The compression engine: models, mixer, coder and level presets.

Pure functions over bytes; knows nothing of files, the CLI or progress bars.

    encode_block(data, preset, progress=None) -> bytes
    decode_block(payload, size, preset, progress=None) -> bytes

``progress``, when given, is called with the number of bytes coded so far,
a few times per block (never per byte).
"""
from .presets import DEFAULT_LEVEL, LEVELS, Preset, preset_for_level
from .predictor import decode_block, encode_block, warm_up

__all__ = ["encode_block", "decode_block", "Preset", "LEVELS", "DEFAULT_LEVEL", "preset_for_level", "warm_up"]
