"""The compression engine: models, mixer, coder and level presets.

Pure functions over bytes; knows nothing of files, the CLI or progress bars.

    encode_block(data, preset, progress=None) -> bytes
    decode_block(payload, size, preset, progress=None) -> bytes

``progress``, when given, is called with the number of bytes coded so far,
a few times per block (never per byte).

Layout: state.py holds a block coder's arrays and picks the kernel that runs
them: the C library (native.py, native/cm.c) when it is built -- at levels 7-9
it runs the SSM in C too (native/ssm_step.c) -- else the numba kernel
(predictor.py with the models it inlines: coder, contexts, match, mixer, and
ssm.py at levels 7-9). block.py drives a block through it segment by segment.
Nothing imports numba until a numba kernel is needed.

Developers: numba caches each compiled function keyed on its own file alone,
with the code it calls compiled in: the coding kernel on predictor.py (it
inlines coder, contexts, match, mixer and ssm.py), the SSM's numba callbacks
(the tests' reference for native/ssm_step.c) on ssm_callbacks.py (they hold
ssm.py's code). After editing a file that others
compile in, remove ``ssmzip/engine/__pycache__/*.nb[ic]`` or the old code keeps
running. (An installed package rewrites every file, and CI checks the golden
files with an empty cache, so this only bites a checkout being edited.) After editing
native/cm.c, rebuild it: ``pip install -e .`` (or ``python setup.py
build_ext --inplace``).
"""
from .presets import DEFAULT_LEVEL, LEVELS, Preset, preset_for_level, ssm_only, without_ssm
from .block import block_threads, codes_without_gil, decode_block, encode_block, warm_up

__all__ = ["encode_block", "decode_block", "codes_without_gil", "block_threads", "Preset", "LEVELS", "DEFAULT_LEVEL", "preset_for_level",
           "ssm_only", "without_ssm", "warm_up"]
