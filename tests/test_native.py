"""The C backend (native/cm.c) against the numba kernel: the same bytes out, at
every level, on inputs that exercise every model (text with words, markup and
lines; repeats for the match model; random and constant bytes; block and
segment boundaries). Golden files are also checked on both (test_golden.py)."""
import dataclasses
import os

import numpy as np
import pytest

from conftest import text_sample
from ssmzip.engine import LEVELS, decode_block, encode_block, native
from ssmzip.engine import cm_layout
from ssmzip.engine.presets import MIXERS_WIDE

pytestmark = pytest.mark.skipif(
    native.cm_kernel() is None and os.environ.get("SSMZIP_EXPECT_NATIVE") != "1",
    reason=f"no C library here: {native.describe()}")


def _inputs():
    rng = np.random.default_rng(7)
    text = text_sample(30_000)
    markup = b"".join(b"<page id=\"%d\">[[Link %d]] {{cite|%d}}\n" % (i, i * 7 % 13, i) for i in range(400))
    return {
        "empty": b"",
        "one": b"A",
        "equal": b"\x00" * 5000,
        "random": rng.integers(0, 256, 8000, dtype=np.uint8).tobytes(),
        "text": text,
        "markup": markup,
        "repeats": text[:3000] * 4,
        "segments": text_sample(cm_layout.SEGMENT + 1234, seed=3),   # crosses a segment boundary
    }


INPUTS = _inputs()


def _numba(monkeypatch):
    monkeypatch.setattr(native, "cm_kernel", lambda: None)


def _same_bytes_as_numba(preset, label, monkeypatch):
    assert native.cm_kernel() is not None, native.describe()
    ours = {k: encode_block(v, preset) for k, v in INPUTS.items()}
    for k, blob in ours.items():
        assert decode_block(blob, len(INPUTS[k]), preset) == INPUTS[k], k
    _numba(monkeypatch)
    for k, v in INPUTS.items():
        theirs = encode_block(v, preset)
        assert theirs == ours[k], f"{label}, {k}: native and numba differ"
        assert decode_block(theirs, len(v), preset) == v


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_same_bytes_as_numba(level, monkeypatch):
    _same_bytes_as_numba(LEVELS[level], f"level {level}", monkeypatch)


@pytest.mark.parametrize("fields", [dict(mixer_skip=0, apm_first=0, apm3_bits=10),
                                    dict(mixer_skip=1024, apm_first=4, apm3_bits=8)])
def test_same_bytes_as_numba_with_layout_3_fields(fields, monkeypatch):
    """Preset layout 3's fields at their extremes, on a level without the SSM (fast)."""
    preset = dataclasses.replace(LEVELS[6], **fields)
    assert preset.to_bytes()[0] == 3
    _same_bytes_as_numba(preset, f"level 6 with {fields}", monkeypatch)


@pytest.mark.parametrize("fields", [dict(mixer_design=MIXERS_WIDE), dict(apms=5),
                                    dict(mixer_design=MIXERS_WIDE, apms=5, mixers=5, apm_rate=4)])
def test_same_bytes_as_numba_with_layout_4_fields(fields, monkeypatch):
    """Preset layout 4: the wide mixer design and the fifth APM, alone and together
    (with every mixer, and the fifth APM at its fastest rate), on level 6 (fast)."""
    preset = dataclasses.replace(LEVELS[6], **fields)
    assert preset.to_bytes()[0] == 4
    _same_bytes_as_numba(preset, f"level 6 with {fields}", monkeypatch)


@pytest.mark.parametrize("segment", [1000, cm_layout.SEGMENT])
def test_an_ssm_learning_on_a_thread_gives_the_same_bytes(segment, monkeypatch):
    """A lagged SSM learning on the C kernel's second thread (native/learner.c), in
    series, and on numba: the same bytes. Segments of 1000 bytes end inside chunks
    (of 8 bytes), with a step pending: it must carry over to the next call."""
    from ssmzip.engine import block
    monkeypatch.setattr(block, "SEGMENT", segment)
    preset = dataclasses.replace(LEVELS[7], table_bits=16, match_bits=14, ssm_dm=8, ssm_di=16, ssm_ds=4,
                                 ssm_rank=2, ssm_chunk=8, ssm_ngram=3, ssm_ngram_bits=8, ssm_lag=1)
    assert block.block_threads(preset) == 2 and block.block_threads(LEVELS[9]) == 2
    assert block.block_threads(dataclasses.replace(preset, ssm_lag=0)) == 1
    data = INPUTS["segments"][:9000] + INPUTS["random"][:500] + INPUTS["markup"][:3000]
    two = encode_block(data, preset, threads=2)
    assert encode_block(data, preset) == two
    assert decode_block(two, len(data), preset, threads=2) == data
    assert decode_block(two, len(data), preset) == data
    # a damaged stream through the learning thread: the right size out, no crash or hang
    rng = np.random.default_rng(11)
    for bad in (rng.integers(0, 256, len(two), dtype=np.uint8).tobytes(), two[:len(two) // 3]):
        assert len(decode_block(bad, len(data), preset, threads=2)) == len(data)
    _numba(monkeypatch)
    assert block.block_threads(preset) == 1
    assert encode_block(data, preset, threads=2) == two


@pytest.fixture(params=["cpu", "portable"])
def c_path(request):
    """native/ssm.c's loops on the CPU's own path (AVX2 here) and on the portable one."""
    import ctypes
    isa = native.library().ssmzip_ssm_isa
    isa.argtypes, isa.restype = [ctypes.c_int64], ctypes.c_int64
    if request.param == "portable":
        isa(0)
        assert isa(-1) == 0
    yield request.param
    isa(1)


@pytest.mark.parametrize("lag,threads", [(0, 1), (1, 1), (1, 2)])
def test_c_ssm_steps_leave_numbas_state(lag, threads, c_path):
    """native/ssm_step.c against ssm_callbacks.py under the same C kernel: the same
    bytes, and every array the SSM learns (both parameter sets, Adam's moments, the
    n-gram tables and their staged rows, the flags) the same bits afterwards; in
    series (ssm_end), lagged in series, and lagged on the learning thread; with
    the C loops on the CPU's path and the portable one."""
    from ssmzip.engine.block import BlockEncoder
    from ssmzip.engine.state import BlockState
    preset = dataclasses.replace(LEVELS[7], table_bits=16, match_bits=14, ssm_dm=8, ssm_di=16, ssm_ds=4,
                                 ssm_rank=2, ssm_chunk=8, ssm_ngram=3, ssm_ngram_bits=8, ssm_lag=lag)
    data = INPUTS["segments"][:6000] + INPUTS["random"][:300] + INPUTS["markup"][:2000] + b"x" * 5
    out = {}
    for steps in ("native", "numba"):
        enc = BlockEncoder(data, BlockState(preset, threads=threads, ssm_steps=steps))
        assert (type(enc.model.ssm_callbacks).__name__ == "SSMSteps") == (steps == "native")
        enc.code(0, 4321)                 # two calls: state carried between them, a step pending
        enc.code(4321, len(data))
        out[steps] = enc
    c, n = out["native"], out["numba"]
    assert c.finish() == n.finish()
    for name in ("sP", "sPn", "sV", "sopt", "sNE", "sNV", "sstage", "sflag", "stok", "srows"):
        assert np.array_equal(getattr(c.model, name), getattr(n.model, name)), name
    assert not np.array_equal(c.model.sP, BlockState(preset).sP)      # it did learn


def test_c_levels_with_an_ssm_never_import_numba(tmp_path):
    """At levels 7-9 the C backend runs the SSM in C: numba's import and cached
    callbacks (most of a second) are not paid. (Run from an empty directory, so
    that the child imports the same ssmzip as this process, not a checkout.)"""
    import subprocess
    import sys
    import ssmzip
    code = ("import sys; from ssmzip.engine import LEVELS, encode_block, decode_block, native\n"
            "d = bytes(range(256)) * 40\n"
            "for lv in (7, 9):\n"
            "    assert decode_block(encode_block(d, LEVELS[lv], threads=2), len(d), LEVELS[lv]) == d\n"
            "print(native.cm_kernel() is not None, 'numba' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != native.ENV}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(ssmzip.__file__))]
                                        + [p for p in [env.get("PYTHONPATH")] if p])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False"]


def _ssm_loops():
    from numba import njit
    from ssmzip.engine import ssm

    @njit
    def loops(kern, X, Y, W, G, Xb, ta, tb, J, I, T, xs, ys):
        ssm._acc_outer(X, xs, J, Y, ys, I, T, G, kern)
        ssm._back_mat(W, J, I, Y, ys, T, ta, tb, Xb, xs, kern)
        ssm._matvec(X[:J], Y, ys, Xb[:I], kern)          # rows ys apart, the first I columns
    return loops


@pytest.mark.parametrize("J,I,T", [(128, 64, 32), (8, 128, 32), (128, 24, 32), (64, 256, 32),
                                   (5, 19, 7), (13, 37, 33), (7, 16, 16), (4, 16, 48), (1, 1, 1),
                                   (64, 200, 4), (3, 72, 2)])
def test_ssm_matrix_loops_same_bits_as_numba(J, I, T, c_path):
    """native/ssm.c's tiled loops give numba's float32 sums bit for bit, tails included
    (the outer product, the transposed product, the matrix-vector product)."""
    loops = _ssm_loops()
    rng = np.random.default_rng(J * 1000 + I + T)
    xs, ys = J + 3, I + 1                    # row strides wider than the rows, as in the SSM
    f = lambda n: rng.standard_normal(n).astype(np.float32)
    X, Y, W = f(T * xs), f(max(T, J) * ys), f(J * I)
    results = []
    for kern in (np.zeros(4, np.int64), native.ssm_kernels()):
        G = np.arange(J * I, dtype=np.float32) / 7
        Xb = np.arange(max(T * xs, I), dtype=np.float32) / 3
        loops(kern, X, Y, W, G, Xb, np.zeros(I * T, np.float32), np.zeros(J * T, np.float32), J, I, T, xs, ys)
        results.append((G.view(np.uint32), Xb.view(np.uint32)))
    assert native.ssm_kernels()[0] != 0
    assert np.array_equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])


def test_ssm_kernel_table_matches_the_numba_side():
    from ssmzip.engine import ssm
    assert len(native.SSM_KERNELS) == ssm.N_KERNELS
    kern = native.ssm_kernels()
    assert all(kern) and kern[ssm.K_SCAN] == ctypes_address("ssmzip_scan_back")


def ctypes_address(name):
    import ctypes
    return ctypes.cast(getattr(native.library(), name), ctypes.c_void_p).value


def test_cross_decoding(monkeypatch):
    """Made by one backend, decoded by the other, both ways."""
    preset = LEVELS[6]
    data = INPUTS["markup"] + INPUTS["text"][:5000]
    by_native = encode_block(data, preset)
    _numba(monkeypatch)
    assert decode_block(by_native, len(data), preset) == data
    by_numba = encode_block(data, preset)
    monkeypatch.undo()
    assert decode_block(by_numba, len(data), preset) == data


def test_garbage_in_gives_the_right_size_out():
    """As with numba: any payload decodes to `size` bytes (the checksum catches it)."""
    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 300):
        junk = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert len(decode_block(junk, 5000, LEVELS[6])) == 5000


def test_backend_env(monkeypatch):
    monkeypatch.setenv(native.ENV, "numba")
    assert native._load()[0] is None
    monkeypatch.setenv(native.ENV, "nonsense")
    with pytest.raises(native.BackendError):
        native._load()
    monkeypatch.setenv(native.ENV, "native")
    assert native._load()[0] is not None


def test_library_matches_this_version():
    """A library whose Segment layout differs from native.py's is refused, not called."""
    import ctypes
    lib = ctypes.CDLL(str(native._library_path()))
    lib.ssmzip_native_abi.restype = ctypes.c_int64
    assert lib.ssmzip_native_abi() == native.ABI
    assert ctypes.sizeof(native.Segment) == 8 * (len(native._SCALARS) + len(native._POINTERS) + len(native._SSM_FIELDS))


@pytest.mark.parametrize("sizes", [(64, 128, 8, 8, 2, 32), (8, 24, 11, 3, 2, 7), (16, 40, 5, 2, 1, 33)])
def test_ssm_chunk_same_bits_with_c_loops(sizes, c_path):
    """A whole SSM chunk (forward row by row, backward, Adam) with native/ssm.c's
    loops against numba's own: the same logits, gradients and parameters, for
    -9's sizes and for odd ones (state counts that are not a multiple of 8)."""
    from ssmzip.engine import ssm
    dm, di, ds, rank, layers, T = sizes
    sh = ssm.Shape(dm, di, ds, rank, layers, T, 3, 10)
    rng = np.random.default_rng(sum(sizes))
    tokens = rng.integers(0, 256, T + 1).astype(np.int64)
    rows = rng.integers(0, 1 << 10, T * 3).astype(np.int64)
    out = []
    for kern in (np.zeros(ssm.N_KERNELS, np.int64), native.ssm_kernels()):
        P = ssm.init_params(sh, 5)
        A = np.zeros(sh.n_act, np.float32)
        A[sh.act_lay[ssm.A_H]:sh.act_lay[ssm.A_H] + ds * di] = 0.25      # a carried state
        S = np.zeros(sh.n_scratch, np.float32)
        ib = np.zeros(di, np.int32)
        NE = rng.normal(0, 0.1, sh.n_ngram).astype(np.float32) if not out else out[0][3]
        G, V = np.zeros_like(P), np.zeros_like(P)
        for _ in range(3):                      # later chunks start from trained parameters
            ssm.ssm_run_chunk(P, sh.lay, A, sh.act_lay, sh.dims, S, ib, NE, rows, tokens, T, kern)
            ssm.ssm_backward(P, G, sh.lay, A, sh.act_lay, sh.dims, S, ib, tokens, T, kern)
            grad = G.copy()
            ssm.adam_step(P, G, V, np.ones(2, np.float32), np.float32(0.003), P)
        out.append((A.view(np.uint32), grad.view(np.uint32), P.view(np.uint32), NE))
    assert native.ssm_kernels()[ssm.K_SCAN] != 0
    for a, b, what in zip(out[0][:3], out[1][:3], ("activations", "gradient", "parameters")):
        assert np.array_equal(a, b), what


def test_c_exp_same_bits_as_numba_on_edge_values(c_path):
    """native/ssm.c's e^x (8 lanes at a time on AVX2, the rest one by one) against
    ssm.vexp on values that hit its clamps and its rounding: NaN, infinities,
    signed zeros, denormals, the range's ends and a random spread."""
    import ctypes
    from ssmzip.engine import ssm
    edge = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-38, -87.0, -87.5, 88.0, 88.5, -1e30, 1e30,
            0.5, -0.5, 0.34657359, 1.0, -1.0, 20.0, -20.0]
    rng = np.random.default_rng(7)
    x = np.concatenate([np.array(edge, np.float32), rng.uniform(-100, 100, 1000).astype(np.float32),
                        rng.normal(0, 3, 1003).astype(np.float32)])
    want, ib = np.empty_like(x), np.zeros(x.size, np.int32)
    ssm.vexp(x, want, ib)
    fn = native.library().ssmzip_vexp
    fn.restype, fn.argtypes = None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    for n in (x.size, 13, 8, 7, 1):             # lengths that end inside and outside a group of 8
        got, scratch = np.full(n, -1.0, np.float32), np.zeros(n, np.int32)
        fn(x.ctypes.data, got.ctypes.data, scratch.ctypes.data, n)
        assert np.array_equal(got.view(np.uint32), want[:n].view(np.uint32)), n
