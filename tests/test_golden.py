"""Golden files: compressed files made once and committed must decode, and
re-encoding their inputs must reproduce them byte for byte (on any machine,
CPU target and backend). Made by tests/golden/make_golden.py."""
import io
from pathlib import Path

import pytest

import ssmzip
from ssmzip.engine.presets import MIXERS_CLASSIC, MIXERS_WIDE, TRANSFORM_BWT, TRANSFORM_NONE

GOLDEN = Path(__file__).resolve().parent / "golden"
FILES = sorted(GOLDEN.glob("*.ssz"))

pytestmark = pytest.mark.skipif(
    not FILES, reason="no golden files yet: run tests/golden/make_golden.py once the engine "
                      "is final and commit its output")


def _input_for(path: Path) -> bytes:
    name = path.stem.rsplit("-", 1)[0]
    src = GOLDEN / f"{name}.bin"
    assert src.exists(), f"{path.name} has no input {src.name}"
    return src.read_bytes()


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_golden_decodes(path, backend):
    assert ssmzip.decompress(path.read_bytes()) == _input_for(path)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_golden_reencodes_identically(path, backend):
    blob = path.read_bytes()
    info = ssmzip.info(io.BytesIO(blob))
    # the preset stored in the file, not today's defaults for its level
    again = ssmzip.compress(_input_for(path), preset=info.preset, block_size=info.block_size)
    assert again == blob, f"{path.name}: the engine's output changed (a format change)"


def test_golden_set_is_complete():
    from golden.make_golden import INPUTS, LEGACY, LEVELS

    names = {p.name for p in FILES}
    assert names == {f"{n}-{lv}.ssz" for n in INPUTS for lv in LEVELS + LEGACY}


def test_golden_covers_the_ssm():
    """The -9 golden files are made with the SSM on and today's level 9 (its SSM
    learning a chunk late, preset layout 6), the -9v5 ones by its fifth version (five
    mixers of the wide design, five APMs, layout 4), the -9v4 ones by its fourth
    version (layout 3), the -9v3 ones by its third (layout 2), the -9v2 ones with
    the SSM and three mixers, the -9v1 ones without the SSM."""
    for path in FILES:
        preset = ssmzip.info(io.BytesIO(path.read_bytes())).preset
        if path.stem.endswith("-9"):
            assert preset.has_ssm and preset.ssm_lag == 1 and preset.to_bytes()[0] == 6, path.name
            assert preset.mixers == 5 and preset.apms == 5 and preset.mixer_design == MIXERS_WIDE, path.name
        if path.stem.endswith("-9v5"):
            assert preset.has_ssm and preset.mixers == 5 and preset.apms == 5 and not preset.ssm_lag, path.name
            assert preset.to_bytes()[0] == 4 and preset.mixer_design == MIXERS_WIDE, path.name
        if path.stem.endswith("-9v4"):
            assert preset.has_ssm and preset.apms == 4 and preset.mixer_design == MIXERS_CLASSIC, path.name
            assert preset.to_bytes()[0] == 3 and preset.mixer_skip != 100, path.name
        if path.stem.endswith("-9v3"):
            assert preset.has_ssm and preset.mixers == 5 and preset.to_bytes()[0] == 2, path.name
        if path.stem.endswith("-9v2"):
            assert preset.has_ssm and preset.mixers == 3, path.name
        if path.stem.endswith("-9v1"):
            assert not preset.has_ssm, path.name


def test_golden_covers_both_level_1_engines():
    """The -1 golden files are made by today's level 1 (the BWT, preset layout 5),
    the -1v2 ones by level 1 when it was the context-mixing engine (layout 1)."""
    for path in FILES:
        preset = ssmzip.info(io.BytesIO(path.read_bytes())).preset
        if path.stem.endswith("-1"):
            assert preset.transform == TRANSFORM_BWT and preset.to_bytes()[0] == 5, path.name
        if path.stem.endswith("-1v2"):
            assert preset.transform == TRANSFORM_NONE and preset.to_bytes()[0] == 1, path.name
            assert len(preset.contexts) == 3, path.name
