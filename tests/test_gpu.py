"""GPU mode (ssmzip.gpu): the SSM on torch gives the numba kernels' bytes.

Runs on torch's CPU backend (CI installs the CPU wheel); the CUDA test skips
without a CUDA device. The coder tests need the C context-model kernel, which
reads the torch SSM's logits through callbacks.
"""
import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="GPU mode needs torch (pip install 'ssmzip[gpu]')")

import ssmzip  # noqa: E402
from ssmzip.engine import LEVELS, decode_block, encode_block  # noqa: E402
from ssmzip.engine import native  # noqa: E402
from ssmzip.engine import ssm as K  # noqa: E402
from ssmzip.engine.state import BlockState  # noqa: E402
from ssmzip.gpu import inputs  # noqa: E402
from ssmzip.gpu.coder import _groups, decode_blocks, encode_blocks  # noqa: E402
from ssmzip.gpu.ssm_torch import BatchSSM, sqrt_rn, vexp  # noqa: E402

from conftest import random_bytes, text_sample  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden"
needs_c = pytest.mark.skipif(native.cm_kernel() is None,
                             reason="GPU mode codes the context models with the C kernel, not built here")

# level 7's model with small tables and a tiny SSM: every part of both, fast
SMALL = replace(LEVELS[7], table_bits=16, match_bits=14, ssm_dm=8, ssm_di=16, ssm_ds=4, ssm_rank=2,
                ssm_chunk=8, ssm_ngram=3, ssm_ngram_bits=8)


def test_sqrt_rn_is_ieee_sqrt():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.random(200_000).astype(np.float32) * 4,
                        (rng.random(100_000) * 1e-30).astype(np.float32),
                        rng.integers(0, 0x7F800000, 200_000).astype(np.uint32).view(np.float32),
                        np.array([0.0, 1.0, 4.0, 1e-45, 3.4e38, 0.26497888565063477], np.float32)])
    got = sqrt_rn(torch.from_numpy(x)).numpy()
    assert np.array_equal(got.view(np.uint32), np.sqrt(x).view(np.uint32))


def test_vexp_is_the_numba_exp():
    from numba import njit

    @njit
    def ref(x):
        out = np.empty_like(x)
        ib = np.empty(x.shape[0], np.int32)
        K.vexp(x, out, ib)
        return out
    x = np.random.default_rng(4).uniform(-100, 100, 100_000).astype(np.float32)
    assert np.array_equal(vexp(torch.from_numpy(x)).numpy().view(np.uint32), ref(x).view(np.uint32))


def _numba_vs_torch(preset, data: bytes, chunks: int):
    """Run the numba SSM and BatchSSM (two blocks: data and its reverse) chunk by
    chunk over the same inputs; compare logits, parameters and n-gram tables."""
    T, ng = preset.ssm_chunk, preset.ssm_ngram
    blocks = [np.frombuffer(data, np.uint8).copy(), np.frombuffer(data[::-1], np.uint8).copy()]
    n = T * chunks
    dims = preset.ssm_shape().dims
    regs = np.zeros((2, inputs.N_REGS), np.int64)
    tok, rows, tgt = np.zeros((2, n), np.int64), np.zeros((2, n, ng), np.int64), np.zeros((2, n), np.int64)
    for b in range(2):
        inputs.segment_inputs(blocks[b], 0, n, regs, b, dims, tok[b], rows[b].reshape(-1), tgt[b])
    ref = [BlockState(preset) for _ in range(2)]
    ts = BatchSSM(preset, 2)
    lg_at = ref[0].salay[dims[K.D_NL] * K.N_LA + K.G_LG]
    for c in range(chunks):
        sl = slice(c * T, (c + 1) * T)
        ts.forward(0, torch.from_numpy(tok[:, sl]), torch.from_numpy(rows[:, sl]))
        lg = ts.path_logits(0, torch.from_numpy(tgt[:, sl])).numpy()
        ts.learn(torch.from_numpy(tgt[:, sl][:, -1].copy()), _groups(rows[:, sl], preset, "cpu"))
        for b, s in enumerate(ref):
            stok = np.concatenate([tok[b, sl], tgt[b, sl][-1:]])
            srows = rows[b, sl].reshape(-1).copy()
            K.ssm_run_chunk(K.params_in_force(s.sP, s.sPn, s.sflag), s.slay, s.sA, s.salay, dims, s.sS, s.sib,
                            s.sNE, srows, stok, T, s.skern)
            assert np.array_equal(lg[b], s.sA[lg_at:lg_at + 8 * T].reshape(T, 8)), (c, b)
            K.ssm_chunk_end(s.sP, s.sPn, s.sG, s.sV, s.sopt, s.slr[0], s.slay, s.sA, s.salay, dims, s.sS, s.sib,
                            stok, s.sNE, s.sNV, srows, s.sflag, s.sstage, s.skern)
            assert np.array_equal(ts.P[b].numpy(), K.params_in_force(s.sP, s.sPn, s.sflag)), (c, b)
            if preset.ssm_lag:      # the pending step: the other array
                assert np.array_equal(ts.Pn[b].numpy(), K.params_in_force(s.sPn, s.sP, s.sflag)), (c, b)
            assert np.array_equal(ts.V[b].numpy(), s.sV), (c, b)
            assert np.array_equal(ts.NE[b, :-1].numpy().reshape(-1), s.sNE), (c, b)


def test_batch_ssm_is_the_numba_ssm_chunk_by_chunk():
    _numba_vs_torch(SMALL, text_sample(4000, seed=5), chunks=60)


def test_lagged_batch_ssm_is_the_numba_ssm_chunk_by_chunk():
    _numba_vs_torch(replace(SMALL, ssm_lag=1), text_sample(4000, seed=7), chunks=60)


def test_batch_ssm_at_level_9_sizes():
    """The real -9 sizes (wider sums, more layers' worth of parameters), a few chunks."""
    _numba_vs_torch(LEVELS[9], text_sample(400, seed=6), chunks=6)


SIZES = [0, 1, 7, 8, 9, 100, 400]     # empty, one byte, around the chunk (8), several chunks


def _blocks():
    return [text_sample(SIZES[-1], seed=7)[:n] for n in SIZES] + [bytes(300), random_bytes(300)]


@needs_c
def test_encode_blocks_gives_encode_block_bytes():
    blocks = _blocks()
    assert encode_blocks(blocks, SMALL) == [encode_block(b, SMALL) for b in blocks]


@needs_c
@pytest.mark.parametrize("level", [7, 8, 9])
def test_every_ssm_level(level):
    """The real presets (their sizes, tables and block layout), two short blocks."""
    blocks = [text_sample(70, seed=level), random_bytes(40)]
    preset = LEVELS[level]
    payloads = encode_blocks(blocks, preset)
    assert payloads == [encode_block(b, preset) for b in blocks]
    assert decode_blocks(payloads, [len(b) for b in blocks], preset) == blocks


@needs_c
def test_encode_blocks_output_does_not_depend_on_the_batch():
    blocks = _blocks()
    alone = [encode_blocks([b], SMALL)[0] for b in blocks[3:6]]
    assert encode_blocks(blocks[3:6], SMALL) == alone


@needs_c
def test_encode_segments_cross_chunk_and_segment_boundaries(monkeypatch):
    """Segments of 3 chunks (24 bytes): the SSM's and the kernel's runs split mid-block."""
    from ssmzip.gpu import coder
    monkeypatch.setattr(coder, "SEGMENT", 24)
    blocks = [text_sample(200, seed=8), text_sample(77, seed=9)]
    assert coder.encode_blocks(blocks, SMALL) == [encode_block(b, SMALL) for b in blocks]


@needs_c
def test_decode_blocks_round_trip():
    blocks = _blocks()
    payloads = [encode_block(b, SMALL) for b in blocks]
    assert decode_blocks(payloads, [len(b) for b in blocks], SMALL) == blocks


@needs_c
def test_decoding_garbage_gives_garbage_of_the_right_size():
    """A payload that is not what the model expects decodes to wrong bytes of the
    right length (the container's checksum then rejects them): no crash, no NaN trap."""
    junk = [random_bytes(200, seed=15), bytes(50), b"\xff" * 10]
    out = decode_blocks(junk, [300, 120, 64], SMALL)
    assert [len(o) for o in out] == [300, 120, 64]
    assert out == [decode_block(j, n, SMALL) for j, n in zip(junk, [300, 120, 64])]


@needs_c
def test_golden_files_from_torch():
    """The multi-block golden files made with the SSM (-9) come out of torch byte for
    byte, their blocks coded as one batch; the smaller decodes on torch (a byte per
    step: slow on a CPU). The 70 KB one-block -9 golden, through torch, took 3 of
    CI's 15 minutes: the segment boundary it crossed is covered by the next test,
    the file itself by test_golden.py."""
    paths = [p for p in sorted(GOLDEN.glob("*-9.ssz")) if not p.name.startswith("long-")]
    assert len(paths) == 2
    for path in paths:
        blob = path.read_bytes()
        info = ssmzip.info(io.BytesIO(blob))
        assert info.preset.has_ssm and len(info.blocks) > 1
        data = (GOLDEN / (path.stem.rsplit("-", 1)[0] + ".bin")).read_bytes()
        again = ssmzip.compress(data, preset=info.preset, block_size=info.block_size, backend="torch", batch=3)
        assert again == blob, path.name
        if path.name.startswith("binary-"):
            assert ssmzip.decompress(blob, backend="torch", batch=3) == data, path.name


@needs_c
def test_torch_segments_carry_the_model_over(monkeypatch):
    """encode_blocks runs the SSM a segment ahead of the context models; the state
    carried from one segment to the next (registers, n-gram rows) must give the
    bytes of encode_block. Segments of 2 KiB instead of 64 KiB: five boundaries in
    a 10 KB block of level 9."""
    from ssmzip.gpu import coder
    monkeypatch.setattr(coder, "SEGMENT", 2048)
    data = text_sample(10_000, seed=4)
    assert encode_blocks([data], LEVELS[9]) == [encode_block(data, LEVELS[9])]


@needs_c
def test_api_backend_torch_same_stream():
    data = text_sample(5000, seed=10)
    ref = ssmzip.compress(data, preset=SMALL, block_size=1024)
    assert ssmzip.compress(data, preset=SMALL, block_size=1024, backend="torch", batch=2) == ref
    assert ssmzip.decompress(ref, backend="torch", batch=3) == data
    # a level without an SSM: nothing for torch to do, the same stream
    assert ssmzip.compress(data[:2000], level=1, block_size=1024, backend="torch") == \
        ssmzip.compress(data[:2000], level=1, block_size=1024)


@needs_c
def test_many_files_share_batches():
    """Blocks of several inputs coded together (batch 4 over 1+2+0+3 blocks), each
    stream as compress() makes it alone; decoded together again."""
    items = [text_sample(700, seed=13), text_sample(2000, seed=14), b"", random_bytes(600) + bytes(1500)]
    blobs = ssmzip.compress_many(items, preset=SMALL, block_size=1024, backend="torch", batch=4)
    assert blobs == [ssmzip.compress(d, preset=SMALL, block_size=1024) for d in items]
    assert ssmzip.decompress_many(blobs, backend="torch", batch=4) == items


@needs_c
def test_api_open_streams_with_torch(tmp_path):
    data = text_sample(3000, seed=11)
    path = tmp_path / "x.ssz"
    with ssmzip.open(path, "wb", preset=SMALL, block_size=1024, backend="torch", batch=2) as f:
        f.write(data[:1000])
        f.write(data[1000:])
    assert path.read_bytes() == ssmzip.compress(data, preset=SMALL, block_size=1024)
    with ssmzip.open(path, backend="torch", batch=2) as f:
        assert f.read() == data


@needs_c
def test_damaged_streams_fail_the_same_way_on_torch():
    """Bad input is the container's business whatever the backend: one SSMZipError."""
    blob = ssmzip.compress(text_sample(3000, seed=17), preset=SMALL, block_size=1024)
    for bad in (blob[:-9], blob[:40], blob[:200] + bytes([blob[200] ^ 0x10]) + blob[201:]):
        with pytest.raises(ssmzip.SSMZipError):
            ssmzip.decompress(bad, backend="torch", batch=2)


def test_api_rejects_bad_backend_arguments():
    with pytest.raises(ValueError, match="backend"):
        ssmzip.compress(b"abc", backend="tpu")
    with pytest.raises(ValueError, match="batch"):
        ssmzip.compress(b"abc", backend="torch", batch=0)
    with pytest.raises(ValueError, match="torch"):
        ssmzip.compress(b"abc", batch=4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_explicit_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(native.BackendError, match="no CUDA device"):
        ssmzip.compress(b"abc", backend="torch", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@needs_c
def test_cuda_gives_the_cpu_bytes():
    blocks = _blocks()
    assert encode_blocks(blocks, SMALL, device="cuda") == [encode_block(b, SMALL) for b in blocks]
    payloads = [encode_block(b, SMALL) for b in blocks]
    assert decode_blocks(payloads, [len(b) for b in blocks], SMALL, device="cuda") == blocks


def _cli(args, tmp_path, input=None, env_extra=None):
    import os
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "ssmzip", *args], input=input, capture_output=True,
                          cwd=tmp_path, env=env, timeout=600)


@needs_c
def test_cli_gpu_round_trip(tmp_path):
    data = text_sample(3000, seed=12)
    (tmp_path / "a").write_bytes(data)
    r = _cli(["--gpu", "-7", "-k", "--block-size", "1K", "a"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a.ssz").read_bytes() == ssmzip.compress(data, level=7, block_size=1024)
    r = _cli(["--gpu", "-d", "-c", "a.ssz"], tmp_path)
    assert r.returncode == 0 and r.stdout == data
    if not torch.cuda.is_available():
        assert b"no CUDA device" in r.stderr


def test_cli_gpu_without_torch_is_one_line_exit_1(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ImportError('no torch here')\n")
    (tmp_path / "a").write_bytes(b"hello " * 100)
    r = _cli(["--gpu", "-7", "-k", "a"], tmp_path, env_extra={"PYTHONPATH": str(fake)})
    assert r.returncode == 1
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "needs torch" in lines[0], lines
    assert not (tmp_path / "a.ssz").exists()


@needs_c
def test_a_batch_too_large_for_memory_is_coded_in_parts(monkeypatch):
    from ssmzip import batching as pool
    from ssmzip.gpu import coder
    monkeypatch.setattr(pool, "_available_memory", lambda: 5 * SMALL.memory_estimate())   # 2 blocks fit
    seen = []
    real = coder.encode_blocks
    monkeypatch.setattr(coder, "encode_blocks", lambda blocks, *a: seen.append(len(blocks)) or real(blocks, *a))
    data = text_sample(5000, seed=16)
    assert ssmzip.compress(data, preset=SMALL, block_size=1024, backend="torch", batch=5) == \
        ssmzip.compress(data, preset=SMALL, block_size=1024)
    assert seen == [2, 2, 1]
