"""The online SSM (ssmzip/engine/ssm.py): its arithmetic, its gradient, its
place in the presets and the engine."""
import dataclasses
import re
import struct

import numba
import numpy as np
import pytest

from ssmzip.engine import LEVELS, Preset, decode_block, encode_block, ssm_only, without_ssm
from ssmzip.engine import ssm as M
from ssmzip.engine import ssm_layout
from ssmzip.engine.presets import MIXERS_CLASSIC, MIXERS_WIDE

SSM_LEVELS = [lv for lv, p in sorted(LEVELS.items()) if p.has_ssm]


def test_fexp_is_accurate_and_vexp_is_the_same_arithmetic():
    xs = np.linspace(-86, 87, 20001, dtype=np.float32)
    ours = np.array([M.fexp(x) for x in xs[::50]], dtype=np.float64)
    ref = np.exp(xs[::50].astype(np.float64))
    assert np.max(np.abs(ours - ref) / ref) < 5e-7
    out = np.empty_like(xs)
    _vexp(xs, out, np.zeros(xs.shape[0], dtype=np.int32))
    assert np.array_equal(out[::50], ours.astype(np.float32))


@numba.njit
def _vexp(x, out, ib):
    M.vexp(x, out, ib)


def _small_shape():
    return M.Shape(8, 16, 4, 2, 2, 6, 2, 8)


def test_backward_matches_finite_differences():
    """Every parameter block's gradient against central differences of the chunk's
    coding cost (float64 arrays, the same kernels), with a non-zero carried state."""
    sh = _small_shape()
    rng = np.random.default_rng(0)
    P = M.init_params(sh, 3).astype(np.float64)
    g0 = sh.layers * M.N_LP
    for k in (M.G_WH, M.G_HB):                       # the head starts at zero: perturb it
        o = sh.lay[g0 + k]
        n = 256 * (sh.dm if k == M.G_WH else 1)
        P[o:o + n] = rng.normal(0, 0.3, n)
    tokens = rng.integers(0, 256, sh.chunk + 1).astype(np.int64)
    A0 = rng.normal(0, 0.5, sh.n_act)
    ib = np.zeros(sh.di, dtype=np.int32)
    NE = rng.normal(0, 0.5, sh.n_ngram)
    rows = rng.integers(0, 1 << sh.ngram_bits, sh.chunk * sh.ngram).astype(np.int64)
    bits = np.array([[(tokens[t + 1] >> (7 - b)) & 1 for b in range(8)] for t in range(sh.chunk)])
    lg0 = sh.act_lay[sh.layers * M.N_LA + M.G_LG]

    def cost(p):
        A = A0.copy()
        M.ssm_run_chunk(p, sh.lay, A, sh.act_lay, sh.dims, np.zeros(sh.n_scratch), ib, NE, rows,
                        tokens, sh.chunk, np.zeros(M.N_KERNELS, np.int64))
        lg = A[lg0:lg0 + 8 * sh.chunk].reshape(sh.chunk, 8)
        return float(np.sum(np.log1p(np.exp(-(2 * bits - 1) * lg)))), A

    _, A = cost(P)
    G = np.zeros_like(P)
    M.ssm_backward(P, G, sh.lay, A, sh.act_lay, sh.dims, np.zeros(sh.n_scratch), ib, tokens, sh.chunk,
                   np.zeros(M.N_KERNELS, np.int64))
    bounds = list(sh.lay) + [sh.n_params]
    checked = 0
    for b in range(len(sh.lay)):
        lo, hi = bounds[b], bounds[b + 1]
        cand = np.arange(lo, hi)[G[lo:hi] != 0]
        assert cand.size, f"parameter block {b} gets no gradient"
        for i in rng.choice(cand, size=min(3, cand.size), replace=False):
            e = 1e-5
            Pp, Pm = P.copy(), P.copy()
            Pp[i] += e
            Pm[i] -= e
            fd = (cost(Pp)[0] - cost(Pm)[0]) / (2 * e)
            assert abs(fd - G[i]) <= 1e-3 * max(1.0, abs(fd)), (b, i, fd, G[i])
            checked += 1
    assert checked > 30


def test_float32_kernels_do_no_float64_arithmetic():
    """DESIGN.md: float32 only (a stray Python float would make float64 code,
    which another backend would not reproduce) and no FMA contraction."""
    sh = _small_shape()
    P = M.init_params(sh, 1)
    A = np.zeros(sh.n_act, np.float32)
    S = np.zeros(sh.n_scratch, np.float32)
    ib = np.zeros(sh.di, np.int32)
    tok = np.arange(sh.chunk + 1, dtype=np.int64)
    fresh = {f.__name__: numba.njit(f.py_func)
             for f in (M.ssm_forward, M.ssm_backward, M.adam_step, M.ngram_step)}
    fresh["ssm_forward"](P, sh.lay, A, sh.act_lay, sh.dims, 0, 65, S, ib,
                         np.zeros(sh.n_ngram, np.float32), np.zeros(sh.ngram * sh.chunk, np.int64),
                         np.zeros(M.N_KERNELS, np.int64))
    fresh["ssm_backward"](P, np.zeros_like(P), sh.lay, A, sh.act_lay, sh.dims, S, ib, tok, 1,
                          np.zeros(M.N_KERNELS, np.int64))
    fresh["adam_step"](P, np.zeros_like(P), np.zeros_like(P), np.ones(2, np.float32), np.float32(1e-3), P.copy())
    flag = np.zeros(M.F_ROWS + sh.ngram * sh.chunk, np.int64)
    flag[M.F_LAG] = 1                         # the staging branch too
    fresh["ngram_step"](np.zeros(sh.n_ngram, np.float32), np.zeros(sh.n_ngram, np.float32),
                        np.zeros(sh.ngram * sh.chunk, np.int64), S, sh.dims, 1, np.float32(1e-3),
                        np.full(2, 0.5, np.float32), flag, np.zeros(sh.ngram * sh.chunk * sh.dm, np.float32))
    pattern = re.compile(r"\b(fadd|fsub|fmul|fdiv|fpext|fcmp|frem)\b[^;]*\bdouble\b|llvm\.fma|llvm\.fmuladd")
    for name, f in fresh.items():
        for ir in f.inspect_llvm().values():
            hits = [ln.strip() for ln in ir.splitlines() if pattern.search(ln)]
            assert not hits, f"{name}: {hits[:3]}"


def test_init_is_reproducible_and_seeded():
    sh = _small_shape()
    a, b, c = M.init_params(sh, 1), M.init_params(sh, 1), M.init_params(sh, 2)
    assert a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, c)
    # pinned values: the generator is exact integer arithmetic, so they never change
    assert ssm_layout._uniform(3, 7, 1.0).tolist() == [-0.22034060955047607, -0.966423511505127, 0.8015213012695312]
    assert np.all(np.abs(ssm_layout._uniform(1000, 5, 0.5)) <= 0.5)


def test_presets_serialise_the_ssm():
    p = LEVELS[7]
    assert p.has_ssm and p.to_bytes()[0] == 2
    assert Preset.from_bytes(p.to_bytes()) == p
    q = without_ssm(p)
    assert not q.has_ssm and q.to_bytes()[0] == 1 and Preset.from_bytes(q.to_bytes()) == q
    # level 9 needs layout 4 (its mixer design and fifth APM) without the SSM, and
    # layout 6 with it (its SSM learns a chunk late)
    for r, layout in ((LEVELS[9], 6), (without_ssm(LEVELS[9]), 4), (dataclasses.replace(LEVELS[9], ssm_lag=0), 4)):
        assert r.to_bytes()[0] == layout and Preset.from_bytes(r.to_bytes()) == r
    assert LEVELS[9].memory_estimate() > dataclasses.replace(LEVELS[9], ssm_lag=0).memory_estimate()
    assert Preset.serialized_size(p.to_bytes() + b"xx") == len(p.to_bytes())
    assert p.memory_estimate() > q.memory_estimate()
    for lv in range(1, 7):
        assert not LEVELS[lv].has_ssm, "levels 1-6 stay as fast as they are"


@pytest.mark.parametrize("field,value", [("ssm_dm", 4096), ("ssm_di", 0), ("ssm_layers", 99),
                                         ("ssm_chunk", 1), ("ssm_lr", 0), ("ssm_ds", 1000), ("ssm_lag", 2)])
def test_hostile_ssm_sizes_are_refused(field, value):
    with pytest.raises(ValueError):
        dataclasses.replace(LEVELS[9], **{field: value})
    raw = bytearray(LEVELS[9].to_bytes())
    with pytest.raises(ValueError):
        Preset.from_bytes(bytes(raw[:-1]))


def test_a_lag_needs_an_ssm():
    with pytest.raises(ValueError, match="SSM lag"):
        dataclasses.replace(without_ssm(LEVELS[9]), ssm_lag=1)


def test_a_preset_in_a_later_layout_than_it_needs_is_refused():
    """One preset, one encoding: layout 2 without an SSM, or layout 3 with the
    learning fields at their defaults, would re-encode to other bytes."""
    names = [f.name for f in dataclasses.fields(Preset)][2:]     # the u16 fields after the contexts
    p = without_ssm(LEVELS[6])
    n_ssm = names.index("mixer_skip") - names.index("ssm_layers")
    layout2 = bytearray(b"\x02" + p.to_bytes()[1:] + bytes(2 * n_ssm))
    layout3 = bytearray(b"\x03" + p.to_bytes()[1:] + bytes(2 * n_ssm) + struct.pack("<3H", 100, 3, 8))
    for raw in (layout2, layout3):
        assert Preset.serialized_size(bytes(raw)) == len(raw)
        with pytest.raises(ValueError, match="needs layout 1"):
            Preset.from_bytes(bytes(raw))
    # the same layout 3 bytes with a non-default threshold are a valid preset
    layout3[-6:-4] = struct.pack("<H", 32)
    q = Preset.from_bytes(bytes(layout3))
    assert (q.mixer_skip, q.apm_first, q.apm3_bits, q.has_ssm) == (32, 3, 8, False)
    assert q.to_bytes() == bytes(layout3)
    # layout 4 with the classic mixers and at most four APMs says nothing layout 3 cannot
    layout4 = bytearray(b"\x04" + bytes(layout3[1:]) + struct.pack("<H", MIXERS_CLASSIC))
    assert Preset.serialized_size(bytes(layout4)) == len(layout4)
    with pytest.raises(ValueError, match="needs layout 3"):
        Preset.from_bytes(bytes(layout4))
    layout4[-2:] = struct.pack("<H", MIXERS_WIDE)
    r = Preset.from_bytes(bytes(layout4))
    assert r.mixer_design == MIXERS_WIDE and r.mixer_skip == 32 and r.to_bytes() == bytes(layout4)
    # a fifth APM needs layout 4 even with the classic mixers
    s = dataclasses.replace(q, apms=5)
    assert s.to_bytes()[0] == 4 and Preset.from_bytes(s.to_bytes()) == s
    # layout 6 without a lag says nothing layout 4 cannot
    layout6 = bytearray(LEVELS[9].to_bytes())
    assert layout6[0] == 6 and layout6[-2:] == struct.pack("<H", 1)
    layout6[-2:] = struct.pack("<H", 0)
    with pytest.raises(ValueError, match="needs layout 4"):
        Preset.from_bytes(bytes(layout6))


def test_corrupt_ssm_stream_is_a_clean_error():
    import ssmzip
    from golden.make_golden import text_input

    data = text_input(3000, seed=9)
    blob = bytearray(ssmzip.compress(data, level=SSM_LEVELS[0]))
    assert len(blob) > 1000
    for k in range(60, len(blob) - 40, 37):
        bad = bytearray(blob)
        bad[k] ^= 0x5A
        try:
            out = ssmzip.decompress(bytes(bad))
        except ssmzip.SSMZipError:
            continue
        assert out == data


def test_ssm_fields_without_layers_are_refused():
    with pytest.raises(ValueError):
        dataclasses.replace(LEVELS[6], ssm_dm=32)


def _inputs(T):
    rng = np.random.default_rng(5)
    text = (b"the online model learns the file while it codes it. " * 40)
    return {
        "empty": b"", "one": b"\x00", "equal": b"a" * 1000,
        "random": rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "chunk-1": text[:T - 1], "chunk": text[:T], "chunk+1": text[:T + 1],
        "text": text,
    }


@pytest.mark.parametrize("which", ["ssm_only", "full"])
def test_ssm_round_trips(which):
    p = LEVELS[SSM_LEVELS[0]]
    if which == "ssm_only":
        p = ssm_only(p)
    for name, data in _inputs(p.ssm_chunk).items():
        enc = encode_block(data, p)
        assert decode_block(enc, len(data), p) == data, name
        assert encode_block(data, p) == enc, f"{name}: not deterministic"


def test_the_ssm_learns():
    """Alone (no context models), the SSM must learn a repetitive text far below
    8 bits per byte, and it must change what the full level codes."""
    p = LEVELS[SSM_LEVELS[0]]
    data = b"the online model learns the file while it codes it. " * 200
    alone = len(encode_block(data, ssm_only(p)))
    assert alone * 8 / len(data) < 2.0
    assert encode_block(data, p) != encode_block(data, without_ssm(p))


def test_ssm_level_across_blocks_and_threads():
    """The SSM restarts with every block; several blocks and -T 2 give the same bytes."""
    import io

    import ssmzip

    data = (b"blocks restart the online model; threads must not change a byte. " * 60)[:3500]
    one = ssmzip.compress(data, level=SSM_LEVELS[0], block_size=1024)
    assert len(ssmzip.info(io.BytesIO(one)).blocks) == 4
    assert ssmzip.decompress(one) == data
    assert ssmzip.compress(data, level=SSM_LEVELS[0], block_size=1024, threads=2) == one


def test_ngram_step_sums_a_rows_gradients_once():
    """ngram_step against a plain reference: a row used several times in a chunk
    (same slot) gets one Adam update with its gradients summed in row order; the
    same row number in another slot is another row. Both with and without the lag."""
    sh = _small_shape()                          # dm 8, chunk 6, 2 n-gram slots, 8 bits
    T, ng, dm = sh.chunk, sh.ngram, sh.dm
    rows = np.array([5, 5, 7, 5, 5, 9, 7, 5, 1, 2, 5, 5], np.int64)    # row a: chunk row a // ng, slot a % ng
    rng = np.random.default_rng(11)
    S = np.zeros(sh.n_scratch, np.float32)
    sl = M._sbuf_len(sh.dims)
    S[M.S_DX * sl:M.S_DX * sl + T * dm] = rng.normal(0, 1, T * dm).astype(np.float32)
    NE0 = rng.normal(0, 0.1, sh.n_ngram).astype(np.float32)
    NV0 = np.abs(rng.normal(0, 0.01, sh.n_ngram)).astype(np.float32)
    lr, opt = np.float32(0.003), np.full(2, 0.5, np.float32)

    dX = S[M.S_DX * sl:M.S_DX * sl + T * dm].reshape(T, dm)
    want_e, want_v = NE0.copy(), NV0.copy()
    step = lr * np.sqrt(np.float32(1) - opt[1])
    c2 = np.float32(1) - M.ADAM_B2
    for k in range(ng):
        for r in dict.fromkeys(rows[k::ng]):               # each row once, in order of first use
            g = np.zeros(dm, np.float32)
            for a in range(k, T * ng, ng):
                if rows[a] == r:
                    g = g + dX[a // ng]
            e = ((k << sh.ngram_bits) + r) * dm
            v = M.ADAM_B2 * want_v[e:e + dm] + c2 * g * g
            want_v[e:e + dm] = v
            q = np.minimum(np.maximum(g / (np.sqrt(v) + M.ADAM_EPS), -M.UPDATE_CLIP), M.UPDATE_CLIP)
            want_e[e:e + dm] = want_e[e:e + dm] - step * q
    for lag in (0, 1):
        NE, NV = NE0.copy(), NV0.copy()
        flag = np.zeros(M.F_ROWS + ng * T, np.int64)
        flag[M.F_LAG] = lag
        stage = np.zeros(ng * T * dm, np.float32)
        M.ngram_step(NE, NV, rows, S.copy(), sh.dims, T, lr, opt.copy(), flag, stage)
        if lag:                                            # staged: written by ssm_apply a chunk later
            assert np.array_equal(NE, NE0) and flag[M.F_STAGED] == 6
            flag[M.F_PENDING] = 1
            M.ssm_apply(NE, flag, stage, dm)
        assert np.array_equal(NE.view(np.uint32), want_e.view(np.uint32)), lag
        assert np.array_equal(NV.view(np.uint32), want_v.view(np.uint32)), lag


def test_c_header_layout_matches_ssm_layout():
    """native/ssm.h spells out ssm_layout.py's indices for the C kernels; a name
    whose value drifted on either side would make C read the wrong arrays."""
    from pathlib import Path
    header = (Path(__file__).resolve().parent.parent / "native" / "ssm.h").read_text()
    checked = 0
    for body in re.findall(r"enum\s*\{([^}]*)\}", header):
        for value, name in enumerate(n.strip() for n in body.split(",")):
            assert getattr(ssm_layout, name) == value, name
            checked += 1
    assert int(re.search(r"#define CONV (\d+)", header).group(1)) == ssm_layout.CONV
    assert checked >= 50


def test_c_steps_read_the_ssm_context_in_its_order():
    """native/ssm_step.c names each slot of the SSM's ctx (X_P for sP, ...) and the
    lagged SSM's flags (F_*): the same order as ssm_layout.CTX_ARRAYS and F_*."""
    from pathlib import Path
    src = (Path(__file__).resolve().parent.parent / "native" / "ssm_step.c").read_text()
    slots, flags = re.findall(r"enum\s*\{([^}]*)\}", src)[:2]
    names = [n.strip() for n in slots.split(",") if n.strip()]
    assert names[-1] == "N_CTX_ARRAYS" and len(names) - 1 == len(ssm_layout.CTX_ARRAYS)
    for name, (array, _) in zip(names, ssm_layout.CTX_ARRAYS):
        assert name[2:].lower() == array[1:].lower(), (name, array)
    for value, name in enumerate(n.strip() for n in flags.split(",")):
        assert getattr(ssm_layout, name) == value, name
