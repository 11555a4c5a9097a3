"""GPU mode's throughput against the batch size, beside one CPU core.

    python -m bench.gpu_batch [--corpus PATH] [--level 9] [--block 16K] [--batches 1,2,4,8]
        [--decode-bytes 1024] [--decode-batches 1,4] [--device cpu|cuda] [--torch-threads N]

Blocks are consecutive slices of the corpus (default: enwik8_1M from
$SSMZIP_CORPORA or ../shared/corpora). For each batch size B, B blocks are
encoded together by ssmzip.gpu (the SSM on torch, the context models on the C
kernel, one block after the other in this thread) and every payload is checked
against the CPU backend's (engine.encode_block) byte for byte. Decoding steps
all blocks one byte at a time, so it is measured on the first --decode-bytes
of each block. Throughput = uncompressed bytes of all blocks / wall time.

It also counts the torch operations that launch work (views excluded) per
training chunk of the encoder and per byte of the decoder, and turns them into
a projection for a GPU (written out with its assumptions in the report): on a
GPU these small operations cost their launch, not their arithmetic.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1:], 1)
    return int(s.rstrip("KM")) * mult


def _corpus(path):
    if path:
        return Path(path)
    for d in (os.environ.get("SSMZIP_CORPORA"), ROOT.parent / "shared" / "corpora"):
        if d and (Path(d) / "enwik8_1M").is_file():
            return Path(d) / "enwik8_1M"
    sys.exit("bench.gpu_batch: no corpus (give --corpus or set SSMZIP_CORPORA)")


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


class _OpCounter:
    """Counts torch operations that launch work (not views) while active."""

    def __init__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if not func.is_view:
                    # in-place scatters write their values, not the whole tensor they return
                    written = {"index_put_": 2, "scatter_add_": 3, "index_copy_": 3}.get(
                        func.__name__.split(".")[0])
                    res = args[written] if written is not None else out
                    counter.sizes.append(sum(o.numel() * o.element_size() for o in
                                             (res if isinstance(res, (tuple, list)) else (res,))
                                             if isinstance(o, torch.Tensor)))
                return out
        self.sizes = []                 # bytes written by each operation
        self.mode = Mode()

    @property
    def n(self) -> int:
        return len(self.sizes)

    def seconds(self, batch: int, launch: float, bandwidth: float) -> float:
        """Each operation: its launch, or reading two inputs and writing its output
        (batch times this run's one block) at `bandwidth`, whichever is longer."""
        return sum(max(launch, 3 * batch * b / bandwidth) for b in self.sizes)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def count_ops(preset, block: bytes, device) -> tuple:
    """The operations of one encoder chunk and of one decoder byte (_OpCounter each),
    one block, steady state."""
    import torch

    from ssmzip.gpu import inputs
    from ssmzip.gpu.coder import _groups
    from ssmzip.gpu.ssm_torch import BatchSSM
    T, ng = preset.ssm_chunk, max(preset.ssm_ngram, 1)
    n = 2 * T
    buf = np.frombuffer(block[:n], np.uint8).copy()
    regs = np.zeros((1, inputs.N_REGS), np.int64)
    tok, rows, tgt = np.zeros((1, n), np.int64), np.zeros((1, n, ng), np.int64), np.zeros((1, n), np.int64)
    inputs.segment_inputs(buf, 0, n, regs, 0, preset.ssm_shape().dims, tok[0], rows[0].reshape(-1), tgt[0])
    ssm = BatchSSM(preset, 1, device)
    d = torch.device(device)
    tok_d, rows_d, tgt_d = (torch.from_numpy(a).to(d) for a in (tok, rows, tgt))
    with _OpCounter() as enc:
        ssm.forward(0, tok_d[:, :T], rows_d[:, :T])
        ssm.path_logits(0, tgt_d[:, :T])
        ssm.learn(tgt_d[:, T - 1], _groups(rows[:, :T], preset, d))
    with _OpCounter() as dec:
        t = 0
        ssm.forward(t, tok_d[:, T:T + 1], rows_d[:, T:T + 1])
        table = ssm.node_logits(t)
        ssm.keep_logits(t, table, tgt_d[:, T])
    return enc, dec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus")
    ap.add_argument("--level", type=int, default=9)
    ap.add_argument("--block", type=_size, default=16 << 10)
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--decode-bytes", type=_size, default=1024)
    ap.add_argument("--decode-batches", default="1,4")
    ap.add_argument("--device", default=None)
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="Markdown report (default: bench/results/gpu-HOST-DATE.md)")
    a = ap.parse_args(argv)

    import torch

    from bench.report import machine_info
    from ssmzip.engine import decode_block, encode_block, preset_for_level, without_ssm
    from ssmzip.gpu.coder import decode_blocks, encode_blocks
    from ssmzip.gpu.device import resolve_device

    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    device = resolve_device(a.device)
    preset = preset_for_level(a.level)
    data = _corpus(a.corpus).read_bytes()
    batches = [int(x) for x in a.batches.split(",")]
    dbatches = [int(x) for x in a.decode_batches.split(",")]
    S, D = a.block, a.decode_bytes
    need = max(batches + dbatches) * S
    if len(data) < need:
        sys.exit(f"bench.gpu_batch: the corpus has {len(data)} bytes, {need} needed")
    blocks = [data[i * S:(i + 1) * S] for i in range(max(batches + dbatches))]
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    info = machine_info()
    out(f"# GPU mode: throughput against batch size (level {a.level}, {S} B blocks)")
    out()
    out(f"- machine: {info.get('cpu')}, {info.get('cores')} cores, {info.get('ram')}; "
        f"load average at start {os.getloadavg()[0]:.2f}")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (torch on the CPU)"
    out(f"- torch {torch.__version__}, device {device} ({gpu}), torch threads {torch.get_num_threads()}")
    out(f"- {datetime.now().isoformat(timespec='seconds')}, corpus {_corpus(a.corpus).name}")
    out()

    encode_blocks([blocks[0][:64]], preset, device)        # compile / warm caches
    encode_block(blocks[0][:64], preset)
    refs, t_cpu = [], []
    for b in blocks[:max(batches)]:
        r, t = _timed(lambda: encode_block(b, preset))
        refs.append(r)
        t_cpu.append(t)
    cpu_kbs = S / np.median(t_cpu) / 1e3
    _, t_cm = _timed(lambda: encode_block(blocks[0], without_ssm(preset)))
    cm_us = t_cm / S * 1e6
    out(f"One CPU core (the CPU backend, engine.encode_block): {cpu_kbs:.1f} KB/s "
        f"(median of {len(t_cpu)} blocks); the context models alone: {cm_us:.1f} us/byte.")
    out()
    out("| B (blocks) | encode KB/s | x one core | identical bytes |")
    out("|--:|--:|--:|:-:|")
    for B in batches:
        got, t = _timed(lambda: encode_blocks(blocks[:B], preset, device))
        same = got == refs[:B]
        out(f"| {B} | {B * S / t / 1e3:.2f} | {B * S / t / 1e3 / cpu_kbs:.3f} | {'yes' if same else '**NO**'} |")
    out()
    short = [b[:D] for b in blocks[:max(dbatches)]]
    payloads = [encode_block(b, preset) for b in short]
    _, t_dcpu = _timed(lambda: decode_block(payloads[0], D, preset))
    out(f"Decoding, first {D} B of each block; one CPU core: {D / t_dcpu / 1e3:.1f} KB/s.")
    out()
    out("| B (blocks) | decode KB/s | x one core | identical bytes |")
    out("|--:|--:|--:|:-:|")
    for B in dbatches:
        got, t = _timed(lambda: decode_blocks(payloads[:B], [D] * B, preset, device))
        same = got == short[:B]
        out(f"| {B} | {B * D / t / 1e3:.2f} | {B * D / t / 1e3 / (D / t_dcpu / 1e3):.3f} | "
            f"{'yes' if same else '**NO**'} |")
    out()
    enc, dec = count_ops(preset, blocks[0], device)
    T = preset.ssm_chunk
    out(f"torch operations launched (views excluded): {enc.n} per encoder chunk of {T} bytes "
        f"({enc.n / T:.0f} per byte), {dec.n} per decoder byte; the same for any B.")
    out()
    out("## Projection for a GPU (not measured here)")
    out()
    cores = 16
    bw = 2e12
    cm_enc = cores / cm_us * 1e3          # KB/s: the encoder's context models on `cores` threads
    cm_dec = 1 / cm_us * 1e3              # the decoder's, one block after another on one thread
    out(f"Per operation: its launch time, or moving 3x its output at {bw / 1e12:g} TB/s (B blocks), "
        f"whichever is longer. Context models: {cm_us:.1f} us/byte as measured here; the encoder "
        f"runs them on {cores} host threads ({cm_enc:.0f} KB/s at most), the decoder on one "
        f"({cm_dec:.0f} KB/s at most).")
    out()
    out("| launch | B | SSM encode KB/s | encode, with the context models | x one core | "
        "SSM decode KB/s | decode, with the context models | x one core |")
    out("|--|--:|--:|--:|--:|--:|--:|--:|")
    for launch_us, how in ((5.0, "eager, 5 us"), (1.0, "CUDA graph, 1 us")):
        for B in (64, 256):
            e = B * T / enc.seconds(B, launch_us * 1e-6, bw) / 1e3
            d = B / dec.seconds(B, launch_us * 1e-6, bw) / 1e3
            e_all = 1 / (1 / e + 1 / cm_enc)
            d_all = 1 / (1 / d + 1 / cm_dec)
            out(f"| {how} | {B} | {e:.0f} | {e_all:.0f} | {e_all / cpu_kbs:.1f} | {d:.1f} | {d_all:.1f} | "
                f"{d_all / cpu_kbs:.2f} |")
    out()
    out("Assumptions: the torch side and the context models take turns (no overlap), as the "
        "code does now; the GPU holds B x the n-gram tables (about 400 MB a block at -9) and the "
        "host B x the context models (about 400 MB); 'x one core' is against the CPU backend's "
        "encoding speed above (its decoder does the same work; the short blocks of the decoding "
        "table are dominated by allocating the model). What bounds it: every sum runs in the numba kernels' order, one add per "
        "term, so an operation count per byte, not arithmetic, sets the time.")
    path = Path(a.out) if a.out else ROOT / "bench" / "results" / (
        f"gpu-{os.uname().nodename}-{datetime.now():%Y%m%d-%H%M%S}.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
