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
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if not func.is_view:
                    counter.n += 1
                return func(*args, **(kwargs or {}))
        self.n = 0
        self.mode = Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def count_ops(preset, block: bytes, device) -> tuple:
    """(ops per encoder chunk, ops per decoder byte), steady state, one block."""
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
    return enc.n, dec.n


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
    ops_chunk, ops_byte = count_ops(preset, blocks[0], device)
    T = preset.ssm_chunk
    out(f"torch operations launched (views excluded): {ops_chunk} per encoder chunk of {T} bytes "
        f"({ops_chunk / T:.0f} per byte), {ops_byte} per decoder byte; the same for any B.")
    out()
    out("## Projection for a GPU (not measured here)")
    out()
    for launch_us, how in ((5.0, "eager launches"), (1.0, "the step captured as a CUDA graph")):
        enc_us = ops_chunk / T * launch_us
        dec_us = ops_byte * launch_us
        for B in (64, 256):
            # SSM: one launch sequence serves B blocks; CM: B blocks per byte on the host
            ssm_kbs = B / enc_us * 1e3
            cm_kbs = 1e3 / cm_us
            out(f"- {how} at {launch_us:g} us each, B = {B}: the SSM encodes {ssm_kbs:.0f} KB/s "
                f"({ssm_kbs / cpu_kbs:.1f}x one core), decodes {B / dec_us * 1e3:.1f} KB/s; the context "
                f"models on one host thread cap both at {cm_kbs:.0f} KB/s ({cm_kbs / cpu_kbs:.1f}x).")
    out()
    out("Assumptions: each torch operation costs its launch time (their tensors are tiny: "
        "B x at most a few hundred thousand floats) and launches do not overlap with the host's "
        "work; the n-gram tables (B x 400 MB at -9) fit in the GPU's memory; the context models run "
        "for one block after another on one host thread, as now (threads over blocks would divide "
        "their share by the thread count).")
    path = Path(a.out) if a.out else ROOT / "bench" / "results" / (
        f"gpu-{os.uname().nodename}-{datetime.now():%Y%m%d-%H%M%S}.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
