"""`ssmzip FILE` on a .safetensors file uses the tensor codec (detected by the
header, not the name), and `ssmzip -d`, `-t`, `-l` handle what it wrote."""
import numpy as np
from click.testing import CliRunner

from ssmzip.cli import command
from test_kv_safetensors import bf16, make_st


def run(*args):
    return CliRunner().invoke(command, [str(a) for a in args])


def _model_bytes():
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((128, 64)) * 0.02).astype(np.float32)
    return make_st({
        "layer.0.weight": ("BF16", (128, 64), bf16(w).tobytes()),
        "layer.0.bias": ("F32", (64,), w[0].tobytes()),
    }, metadata={"format": "pt"})


def test_safetensors_round_trip_through_the_cli(tmp_path):
    data = _model_bytes()
    src = tmp_path / "weights.bin"               # any name: detection is by content
    src.write_bytes(data)
    r = run("-v", src)
    assert r.exit_code == 0, r.stderr
    packed = tmp_path / "weights.bin.ssz"
    assert packed.exists() and not src.exists()
    assert packed.read_bytes()[:5] == b"\xfdSSKV"   # the tensor archive, not the byte-stream format
    assert packed.stat().st_size < len(data)

    r = run("-l", packed)
    assert r.exit_code == 0, r.stderr
    assert "layer.0.weight" in r.stdout and "layer.0.bias" in r.stdout

    assert run("-t", packed).exit_code == 0
    r = run("-d", "-k", packed)
    assert r.exit_code == 0, r.stderr
    assert src.read_bytes() == data


def test_corrupt_tensor_archive_is_one_line_error(tmp_path):
    src = tmp_path / "m.safetensors"
    src.write_bytes(_model_bytes())
    assert run("-k", src).exit_code == 0
    packed = tmp_path / "m.safetensors.ssz"
    blob = bytearray(packed.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    packed.write_bytes(bytes(blob))
    r = run("-t", packed)
    assert r.exit_code == 1
    assert r.stderr.startswith("ssmzip: ") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_file_that_only_looks_like_safetensors_takes_the_byte_path(tmp_path):
    src = tmp_path / "fake.safetensors"
    src.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all} and some more bytes")
    assert run("-k", src).exit_code == 0
    packed = tmp_path / "fake.safetensors.ssz"
    assert packed.read_bytes()[:6] == b"\xfdSSMZ\x00"
    assert run("-d", "-c", packed).stdout_bytes == src.read_bytes()
